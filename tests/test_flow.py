"""Optical-flow stream of the two-stream row (SEED.md §2.9, §5.8): flow videos, loading, normalisation, CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import write_labelled_clips
from microact.cli import main
from microact.config import AugConfig, ConfigError, EvalConfig, load_config, save_config
from microact.data.decode import count_frames, read_frames
from microact.data.video_writer import write_video

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "videomae_b_k710_twostream_i3d_trainval.yaml"


def shifted_square_frames(num_frames: int, dx: int, dy: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A grey textured 16x16 square moving (dx, dy) pixels per frame over a flat background."""
    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (16, 16), dtype=np.uint8), (3, 3), 0)
    frames = np.full((num_frames, height, width, 3), 60, dtype=np.uint8)
    for t in range(num_frames):
        y, x = 12 + dy * t, 8 + dx * t
        frames[t, y:y + 16, x:x + 16] = texture[..., None]  # grey: R = G = B, so chroma subsampling loses nothing
    return frames


def independent_flow_hsv(prev_rgb: np.ndarray, next_rgb: np.ndarray) -> np.ndarray:
    """SEED.md §2.9 restated with numpy: hue = angle / 2 (degrees), S = 255, V = min-max magnitude; HSV uint8."""
    a, b = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (prev_rgb, next_rgb))
    flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    angle = np.degrees(np.arctan2(flow[..., 1], flow[..., 0])) % 360.0
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    value = (magnitude - magnitude.min()) / max(float(magnitude.max() - magnitude.min()), 1e-12) * 255.0
    return np.stack([angle / 2.0, np.full_like(angle, 255.0), value], axis=-1)


def hue_distance(a, b):
    """Circular distance between OpenCV hues (0-180)."""
    d = np.abs(np.asarray(a, float) - np.asarray(b, float)) % 180.0
    return np.minimum(d, 180.0 - d)


@pytest.mark.parametrize("dx, dy, hue", [(2, 0, 0.0), (0, 2, 45.0), (-2, 0, 90.0)])
def test_flow_video_shows_the_known_motion(tmp_path, dx, dy, hue):
    from microact.data.flow import write_flow_video

    frames = shifted_square_frames(10, abs(dx), dy)
    if dx < 0:  # the rightward clip played backwards: the square moves left and stays in the frame
        frames = frames[::-1].copy()
    src = tmp_path / "src.mp4"
    write_video(src, frames, fps=15, crf=0)
    written = write_flow_video(src, tmp_path / "flow.mp4")
    assert written == count_frames(tmp_path / "flow.mp4") == len(frames) - 1

    decoded = read_frames(tmp_path / "flow.mp4", np.arange(written))
    for t in (2, 5, 7):
        got = cv2.cvtColor(decoded[t], cv2.COLOR_RGB2HSV).astype(float)
        want = independent_flow_hsv(frames[t], frames[t + 1])
        # the square's interior at time t (where the flow is the square's own motion)
        x0 = 8 + dx * t if dx >= 0 else 8 - dx * (len(frames) - 1 - t)
        y0 = 12 + dy * t
        inner = (slice(y0 + 4, y0 + 12), slice(x0 + 4, x0 + 12))
        assert np.median(hue_distance(got[inner][..., 0], hue)) <= 3  # direction of the known motion
        assert np.median(got[inner][..., 2]) >= 200  # the fastest pixels: value near the top of the range
        assert np.median(hue_distance(got[inner][..., 0], want[inner][..., 0])) <= 3
        assert np.abs(got[..., 2] - want[..., 2]).mean() <= 6  # brightness everywhere, within coding noise
        far = np.ones(got.shape[:2], dtype=bool)  # more than Farneback's window (15 px) away from the square
        for x, y in ((x0, y0), (x0 + dx, y0 + dy)):
            far[max(0, y - 16):y + 32, max(0, x - 16):x + 32] = False
        assert far.any() and got[..., 2][far].mean() <= 20  # the still background is dark


def test_flow_frames_count_and_shared_computation():
    from microact.data.flow import flow_frames, flow_image, grey

    frames = shifted_square_frames(5, 2, 1)
    images = list(flow_frames(frames))
    assert len(images) == 4 and images[0].shape == (48, 64, 3) and images[0].dtype == np.uint8
    assert np.array_equal(images[2], flow_image(grey(frames[2]), grey(frames[3])))
    assert list(flow_frames(frames[:1])) == []


# --------------------------------------------------------------------------------------------
# microact flow
# --------------------------------------------------------------------------------------------


def test_run_flow_is_resumable_and_counts_bad_videos(tmp_path, capsys):
    src, out = tmp_path / "videos", tmp_path / "flow"
    (src / "sub").mkdir(parents=True)
    write_video(src / "a.mp4", shifted_square_frames(8, 2, 0), fps=15)
    write_video(src / "sub" / "b.mp4", shifted_square_frames(10, 0, 2), fps=15)
    (src / "bad.mp4").write_bytes(b"not a video" * 50)

    assert main(["flow", str(src), str(out), "--workers", "1"]) == 1  # one failure: exit 1, never a crash
    assert count_frames(out / "a.mp4") == 7 and count_frames(out / "sub" / "b.mp4") == 9
    assert not (out / "bad.mp4").exists()
    assert "bad.mp4" in (out / "flow_errors.txt").read_text()
    printed = capsys.readouterr().out
    assert "wrote 2, skipped 0 (already done), failed 1" in printed

    stamp = (out / "a.mp4").stat().st_mtime_ns
    (out / "sub" / "b.mp4").unlink()
    from microact.data.flow import run_flow

    summary = run_flow(src, out, workers=1, progress=False)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (1, 1, 1)
    assert (out / "a.mp4").stat().st_mtime_ns == stamp  # finished outputs are not redone
    assert count_frames(out / "sub" / "b.mp4") == 9
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no partial files left behind

    (src / "bad.mp4").unlink()
    summary = run_flow(src, out, workers=1, progress=False, overwrite=True)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (2, 0, 0)
    assert not (out / "flow_errors.txt").exists()


def test_run_flow_refuses_missing_or_empty_folders(tmp_path):
    from microact.data.flow import FlowError, run_flow

    with pytest.raises(FlowError, match="no such folder"):
        run_flow(tmp_path / "nope", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlowError, match="no videos"):
        run_flow(tmp_path / "empty", tmp_path / "out", progress=False)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_stream_root(tmp_path_factory):
    """8 labelled 40x32 clips of 10 frames, their flow videos under flow/, and train/test lists."""
    from microact.data.flow import run_flow

    root = tmp_path_factory.mktemp("twostream")
    lines = write_labelled_clips(root, 8)
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "test.txt").write_text("\n".join(lines[:4]) + "\n")
    summary = run_flow(root, root / "flow", workers=1, progress=False)
    assert summary["done"] == 8
    return root


def _records(root):
    from microact.data.annotations import load_list

    return load_list(root / "train.txt", video_dir=root, num_classes=52)


def test_training_item_has_rgb_then_independently_drawn_flow(two_stream_root):
    from microact.data.dataset import FLOW_STREAM, VideoDataset
    from microact.data.sampling import uniform_sample
    from microact.data.transforms import TrainTransform, flow_train_transform

    root = two_stream_root
    aug = AugConfig(color_jitter=False, erase_prob=0.5, flow_rrc_area=(0.6, 1.0))
    kwargs = dict(clip_len=4, seed=7)
    one = VideoDataset(_records(root), root, transform=TrainTransform(aug, 24), **kwargs)
    two = VideoDataset(_records(root), root, transform=TrainTransform(aug, 24), flow_root=root / "flow",
                       flow_transform=flow_train_transform(aug, 24), **kwargs)
    for epoch, index in ((0, 1), (3, 5)):
        item = two[(epoch, index)]
        video = item["video"]
        assert video.dtype == torch.uint8 and tuple(video.shape) == (6, 4, 24, 24)
        assert torch.equal(video[:3], one[(epoch, index)]["video"])  # the RGB branch draws as a one-stream run

        # independent decode + transform of the flow video with the flow branch's own generator
        flow_path = root / "flow" / f"v{index:02d}.mp4"
        n = count_frames(flow_path)
        assert n == count_frames(root / f"v{index:02d}.mp4") - 1
        rng = np.random.default_rng([7, epoch, index, FLOW_STREAM])
        frames = read_frames(flow_path, uniform_sample(n, 4, 1, False, rng))
        want = flow_train_transform(aug, 24)(frames, rng)
        assert np.array_equal(video[3:].numpy(), want)


def test_flow_branch_has_no_color_jitter_and_its_own_crop_ranges():
    from microact.data.transforms import flow_train_transform

    aug = AugConfig(color_jitter=True, flow_rrc_area=(0.7, 0.9), flow_rrc_aspect=(0.5, 2.0))
    t = flow_train_transform(aug, 32)
    assert t.color_jitter is None and t.aug.rrc_area == (0.7, 0.9) and t.aug.rrc_aspect == (0.5, 2.0)
    assert (t.aug.erase_prob, t.aug.erase_area, t.aug.flip_prob) == (aug.erase_prob, aug.erase_area, aug.flip_prob)


def test_test_item_has_six_channel_views_sampled_over_the_flow_frames(two_stream_root):
    from microact.data.dataset import VideoDataset
    from microact.data.sampling import uniform_sample
    from microact.data.transforms import TestTransform

    root = two_stream_root
    transform = TestTransform(EvalConfig(resize_short=36, crop_height=40, flip_tta=True), 32)
    ds = VideoDataset(_records(root), root, clip_len=4, transform=transform, num_clips=2, test_mode=True,
                      flow_root=root / "flow", flow_transform=transform)
    video = ds[2]["video"]
    assert tuple(video.shape) == (4, 6, 4, 32, 32)  # 2 clips x 2 crops (flip TTA)
    rgb_frames = read_frames(root / "v02.mp4", uniform_sample(10, 4, 2, True))
    assert np.array_equal(video[:, :3].numpy(), transform.views(rgb_frames, 2))
    flow_frames = read_frames(root / "flow" / "v02.mp4", uniform_sample(9, 4, 2, True))
    assert np.array_equal(video[:, 3:].numpy(), transform.views(flow_frames, 2))


def test_missing_or_corrupt_flow_video_skips_the_item(two_stream_root, tmp_path):
    from microact.data.dataset import VideoDataset, collate
    from microact.data.transforms import TrainTransform, flow_train_transform

    root = two_stream_root
    flow = tmp_path / "flow"
    flow.mkdir()
    for i in (0, 2):
        (flow / f"v{i:02d}.mp4").write_bytes((root / "flow" / f"v{i:02d}.mp4").read_bytes())
    (flow / "v01.mp4").write_bytes(b"garbage" * 40)  # corrupt; v03 is missing
    aug = AugConfig(color_jitter=False)
    ds = VideoDataset(_records(root)[:4], root, clip_len=4, transform=TrainTransform(aug, 24), flow_root=flow,
                      flow_transform=flow_train_transform(aug, 24))
    with pytest.warns(RuntimeWarning, match="flow video"):
        items = [ds[i] for i in range(4)]
    batch = collate(items)
    assert tuple(batch["video"].shape) == (2, 6, 4, 24, 24) and batch["index"].tolist() == [0, 2]
    assert len(batch["skipped"]) == 2
    assert str(flow / "v01.mp4") in batch["skipped"][0] and str(flow / "v03.mp4") in batch["skipped"][1]
    assert "microact flow" in batch["skipped"][1]


def test_two_stream_items_leave_both_streams_augmentation_to_the_device(two_stream_root):
    """Real RGB and flow videos through the dataset and collate: the device path's batch (one parameter block per
    stream) augmented by apply_deferred equals the loader path's batch value for value."""
    from microact.data.dataset import VideoDataset, collate
    from microact.data.device_augment import ERASE, NUM_PARAMS, apply_deferred
    from microact.data.transforms import TrainTransform, flow_train_transform

    root = two_stream_root
    batches = {}
    for where in ("loader", "device"):
        aug = AugConfig(color_jitter=True, erase_prob=0.7, jitter_erasing_on=where)
        ds = VideoDataset(_records(root), root, clip_len=4, seed=3, transform=TrainTransform(aug, 24, rng=3),
                          flow_root=root / "flow", flow_transform=flow_train_transform(aug, 24))
        batches[where] = collate([ds[(1, i)] for i in range(8)])
    assert "augment" not in batches["loader"] and batches["device"]["augment"].shape == (8, 2 * NUM_PARAMS)
    augment = batches["device"]["augment"]
    assert augment[:, NUM_PARAMS + ERASE].any()  # some flow clip was erased on the device
    got = apply_deferred(batches["device"]["video"], augment)
    assert got.shape == (8, 6, 4, 24, 24)
    assert torch.equal(got, batches["loader"]["video"])
    assert not torch.equal(batches["device"]["video"], batches["loader"]["video"])  # it did change the pixels
    deferring = TrainTransform(AugConfig(jitter_erasing_on="device"), 24)
    with pytest.raises(ValueError, match="both .* or neither"):  # one stream deferring alone is a caller's bug
        VideoDataset(_records(root), root, clip_len=4, transform=deferring, flow_root=root / "flow",
                     flow_transform=flow_train_transform(AugConfig(), 24))


def test_two_stream_training_on_the_device_path_gives_the_same_weights(two_stream_root, tmp_path):
    """The tiny two-stream recipe trained a few steps with ColorJitter / RandomErasing in the loader and on the
    device: the same pixels reach the model, so the same weights, bit for bit."""
    from microact.engine.train import train
    from test_train import assert_same_weights

    recipe = _tiny_recipe(two_stream_root, tmp_path)
    for where in ("loader", "device"):
        cfg = load_config(recipe, ["aug.color_jitter=true", "aug.erase_prob=0.5", f"aug.jitter_erasing_on={where}"])
        torch.manual_seed(0)
        assert train(cfg, tmp_path / where) == 0
    assert_same_weights(tmp_path / "loader" / "model_final.safetensors",
                        tmp_path / "device" / "model_final.safetensors")


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


def test_normalize_batch_uses_each_stream_statistics():
    from microact.data.transforms import MEAN, STD, normalize_batch

    x = torch.randint(0, 256, (2, 3, 6, 2, 3, 3), dtype=torch.uint8)  # [B, V, 6, T, H, W]
    flow_mean, flow_std = (1.0, 2.0, 3.0), (4.0, 5.0, 6.0)
    got = normalize_batch(x, flow_mean=flow_mean, flow_std=flow_std)
    means, stds = list(MEAN) + list(flow_mean), list(STD) + list(flow_std)
    for c in range(6):
        want = (x[:, :, c].double() - means[c]) / stds[c]
        assert torch.allclose(got[:, :, c].double(), want, atol=1e-5), c
    seed_flow = normalize_batch(x[:, 0])  # [B, 6, T, H, W] with the seed's flow statistics by default
    assert torch.allclose(seed_flow[:, 4].double(), (x[:, 0, 4].double() - 1.023) / 8.112, atol=1e-5)
    rgb_only = normalize_batch(x[:, 0, :3])
    assert torch.equal(rgb_only, seed_flow[:, :3])  # three channels: the RGB statistics only, as before
    with pytest.raises(ValueError, match="C = 3"):
        normalize_batch(x[:, 0, :4])


def test_score_views_normalises_flow_with_the_given_statistics():
    from microact.engine.evaluate import score_views

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(x.shape[0], 5)

    video = torch.full((1, 2, 6, 2, 4, 4), 10, dtype=torch.uint8)
    score_views(Probe(), video, torch.device("cpu"), input_stats={"flow_mean": (2, 2, 2), "flow_std": (4, 4, 4)})
    assert torch.allclose(seen[0][:, 3:], torch.full((2, 3, 2, 4, 4), 2.0))
    assert torch.allclose(seen[0][:, 0], torch.full((2, 2, 4, 4), (10 - 123.675) / 58.395))


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_recipe_sets_the_flow_stream():
    cfg = load_config(RECIPE)
    assert cfg.data.flow_dir == "flow"
    assert cfg.data.flow_mean == (0.955, 1.023, 1.040) and cfg.data.flow_std == (7.474, 8.112, 8.170)
    assert cfg.aug.flow_rrc_area == (0.6, 1.0) and math.isclose(cfg.aug.flow_rrc_aspect[1], 4 / 3)
    assert "Not runnable" not in RECIPE.read_text() and "microact flow" in RECIPE.read_text()


@pytest.mark.parametrize("overrides, message", [
    (["data.flow_dir=null"], r"two-stream .*data\.flow_dir is not set.*microact flow"),
    (["model.preset=videomae_b_k710_frame_coarse_tsn"], r"data\.flow_dir=flow is set but .* RGB only"),
    (["data.flow_std=[1, 0, 1]"], r"override 'data\.flow_std=\[1, 0, 1\]': each must be > 0"),
    (["data.flow_mean=[1, 2]"], r"override 'data\.flow_mean=\[1, 2\]': expected 3 values"),
    (["aug.flow_rrc_area=[0.9, 0.2]"], r"override 'aug\.flow_rrc_area=\[0\.9, 0\.2\]': expected \[min, max\]"),
    (["aug.flow_rrc_aspect=[0, 0]"], r"aug\.flow_rrc_aspect"),
    (["data.flow_dir=''"], r"override .data\.flow_dir=''.: empty"),
])
def test_flow_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RECIPE, overrides)


def test_two_stream_recipes_accept_the_device_augmentation():
    assert load_config(RECIPE, ["aug.jitter_erasing_on=device"]).aug.jitter_erasing_on == "device"


def test_one_stream_recipes_are_unchanged_by_the_flow_keys():
    cfg = load_config(REPO / "configs" / "tiny_synth.yaml")
    assert cfg.data.flow_dir is None


# --------------------------------------------------------------------------------------------
# End to end: microact train, test and predict with the tiny two-stream model
# --------------------------------------------------------------------------------------------


def _tiny_recipe(root: Path, tmp_path: Path) -> Path:
    cfg = load_config(RECIPE, [
        f"data.root={root}", "data.train_lists=[train.txt]", "data.test_list=test.txt", "data.clip_len=4",
        "data.img_size=32", "data.num_workers=0", "model.pretrained=null", "model.overrides={backbone: videomae_test}",
        "train.epochs=1", "train.global_batch=4", "train.micro_batch=4", "train.max_steps=2", "train.precision=fp32",
        "train.log_every=1", "train.tensorboard=false", "train.device=cpu", "eval.resize_short=36",
        "eval.crop_height=40", "eval.batch_size=2", "crop.short_side=null"])
    path = tmp_path / "tiny_twostream.yaml"
    save_config(cfg, path)
    return path


def test_train_test_and_predict_end_to_end(two_stream_root, tmp_path, capsys):
    recipe = _tiny_recipe(two_stream_root, tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    weights = run / "model_final.safetensors"
    assert weights.is_file()

    assert main(["test", str(recipe), str(weights), "--out", str(tmp_path / "test")]) == 0
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics  # a labelled list: metrics written for every video
    from microact.results import load_results

    results = load_results(tmp_path / "test" / "results.pkl")
    assert results.scores.shape == (4, 52) and np.allclose(results.scores.sum(1), 1.0, atol=1e-4)
    printed = capsys.readouterr().out
    assert "could not be decoded" not in printed and "2 clips" in printed

    out = tmp_path / "pred.json"
    assert main(["predict", str(two_stream_root / "v00.mp4"), "--config", str(recipe), "--checkpoint",
                 str(weights), "--detector", "none", "--json", str(out), "--device", "cpu"]) == 0
    pred = json.loads(out.read_text())["predictions"][0]
    assert pred["num_views"] == 2 and len(pred["probs"]) == 52


def test_predict_two_stream_flow_views_match_the_flow_video(two_stream_root):
    """The on-the-fly flow of ``predict`` is the flow ``microact flow`` writes (up to its H.264 coding)."""
    from microact.data.sampling import uniform_sample
    from microact.data.transforms import TestTransform
    from microact.predict import build_predictor_config, flow_views

    cfg = build_predictor_config(config=str(RECIPE), overrides=["data.clip_len=4", "data.img_size=32",
                                                                 "eval.resize_short=36", "eval.crop_height=40",
                                                                 "crop.short_side=null"])
    transform = TestTransform(cfg.eval, 32)
    path = two_stream_root / "v03.mp4"
    views = flow_views(path, cfg, 10, (0, 0, 32, 40), transform)
    decoded = read_frames(two_stream_root / "flow" / "v03.mp4", uniform_sample(9, 4, cfg.eval.test_clips, True))
    assert views.shape == (cfg.eval.test_clips, 3, 4, 32, 32)
    assert np.abs(views.astype(float) - transform.views(decoded, cfg.eval.test_clips)).mean() < 4


def _timeline_setup(num_frames, height=64, width=48, seed=0):
    """A tiny random two-stream model, its recipe, and a real H.264 mp4 of a moving square at 15 fps."""
    from microact.predict import build_predictor_config, load_model

    cfg = build_predictor_config(config=str(RECIPE), overrides=[
        "data.clip_len=4", "data.img_size=32", "eval.resize_short=36", "eval.crop_height=40", "eval.test_clips=2",
        "eval.batch_size=3", "crop.short_side=null", "model.pretrained=null",
        "model.overrides={backbone: videomae_test}"])
    torch.manual_seed(seed)
    model = load_model(cfg, None, torch.device("cpu"))
    return cfg, model


def _lossless_video(path: Path, frames: np.ndarray, fps: int = 15) -> Path:
    """RGB frames written losslessly (libx264rgb, qp 0): decoding gives these pixels back exactly."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=fps, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert np.array_equal(read_frames(path, np.arange(len(frames))), frames)
    return path


def test_two_stream_timeline_equals_predict_on_each_window_cut_out(make_video, tmp_path, monkeypatch):
    """Every window of a two-stream timeline scores what `microact predict` gives the window's frames cut out as
    their own (lossless) video: the same RGB frames and the same flow frames, sampled over the window's own count.
    Each flow frame some window samples is computed once, however many windows sample it."""
    import microact.data.flow as flow
    from microact.data.sampling import uniform_sample
    from microact.predict import predict_timeline, predict_video

    cfg, model = _timeline_setup(40)
    video = make_video("long.mp4", num_frames=40)
    frames = read_frames(video, np.arange(40))  # the decoded pixels the timeline sees
    calls = []
    real_flow_image = flow.flow_image
    monkeypatch.setattr(flow, "flow_image", lambda a, b: calls.append(1) or real_flow_image(a, b))  # counts only
    pred = predict_timeline(model, cfg, video, torch.device("cpu"), window_s=1.0, stride_s=0.5, detector="none")
    monkeypatch.undo()
    ranges = [(w["start_frame"], w["end_frame"]) for w in pred["windows"]]
    assert ranges == [(0, 15), (8, 23), (16, 31), (24, 39), (25, 40)]
    sampled = [start + uniform_sample(end - start - 1, 4, 2, test_mode=True) for start, end in ranges]
    assert len(calls) == len(set(np.concatenate(sampled).tolist())) < sum(map(len, sampled))  # shared by windows
    assert pred["num_views"] == 2
    probs = np.array([w["probs"] for w in pred["windows"]])
    assert np.abs(probs - probs[0]).max() > 1e-4  # the windows see different content
    for w, p in zip(pred["windows"], probs):
        cut = _lossless_video(tmp_path / f"cut_{w['start_frame']}.mp4", frames[w["start_frame"]:w["end_frame"]])
        alone = predict_video(model, cfg, cut, torch.device("cpu"), detector="none")
        np.testing.assert_allclose(p, alone["probs"], rtol=0, atol=1e-6)


def test_two_stream_timeline_memory_is_bounded(make_video):
    """A longer video: the frames, grey frames and flow frames held at once (traced numpy and Python memory) stay
    well below one whole-video array of its frames, which holding every flow frame alone would take."""
    import tracemalloc

    from microact.predict import predict_timeline

    n, h, w = 160, 96, 128
    cfg, model = _timeline_setup(n)
    cpu = torch.device("cpu")
    predict_timeline(model, cfg, make_video("warm.mp4", num_frames=20), cpu, window_s=1.0, detector="none")  # imports
    video = make_video("longer.mp4", num_frames=n, height=h, width=w)
    whole = n * h * w * 3  # bytes of one whole-video array of cropped frames (the crop is the full frame here)
    tracemalloc.start()
    try:
        pred = predict_timeline(model, cfg, video, cpu, window_s=1.0, detector="none")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(pred["windows"]) == 20 and pred["num_frames"] == n
    assert peak < whole / 2, f"peak {peak / 1e6:.1f} MB of numpy/Python memory for a {whole / 1e6:.1f} MB video"


def test_two_stream_timeline_needs_two_frames_per_window(make_video):
    from microact.predict import PredictError, predict_timeline

    cfg, model = _timeline_setup(10)
    with pytest.raises(PredictError, match=r"--window 0\.05 s is 1 frame\(s\) at 15 fps.*at least 2 frames"):
        predict_timeline(model, cfg, make_video("short.mp4", num_frames=10), torch.device("cpu"), window_s=0.05)


def test_missing_flow_videos_are_reported_before_training(two_stream_root, tmp_path):
    from microact.engine.builders import build_train_dataset
    from microact.errors import MicroactError

    cfg = load_config(_tiny_recipe(two_stream_root, tmp_path), ["data.flow_dir=no_flow_here"])
    with pytest.raises(MicroactError, match=r"8 of 8 listed videos have no flow video.*microact flow"):
        build_train_dataset(cfg)
    skipping = load_config(_tiny_recipe(two_stream_root, tmp_path), ["data.flow_dir=no_flow_here",
                                                                      "data.check_files=false"])
    assert len(build_train_dataset(skipping)) == 8  # the items are skipped one by one instead


def test_bench_e2e_refuses_two_stream_presets():
    from microact.bench.e2e import run
    from microact.errors import MicroactError

    with pytest.raises(MicroactError, match=r"sees optical flow \(rgb \+ flow\).*no flow videos"):
        run("videomae_b_k710_twostream_i3d", workers=0, batch=2, steps=1, device_name="cpu")
    with pytest.raises(MicroactError, match=r"sees optical flow \(flow\)"):
        run("videomae_b_k710_flow_i3d", workers=0, batch=2, steps=1, device_name="cpu")


def test_the_stand_in_for_an_unreadable_micro_batch_fits_the_two_stream_model(two_stream_root, tmp_path):
    """Under DDP a rank whose micro-batch could not be read replays a stand-in clip with weight 0; before any good
    batch that is a zero clip, which must have the loader's 6 channels for a two-stream model."""
    from microact.data.transforms import normalize_batch, stream_statistics
    from microact.engine.train import stand_in_batch
    from microact.models.presets import create_model_from_config

    cfg = load_config(_tiny_recipe(two_stream_root, tmp_path))
    batch = stand_in_batch(cfg)
    assert batch["video"].shape == (1, 6, 4, 32, 32) and batch["video"].dtype == torch.uint8
    model = create_model_from_config(cfg, pretrained=False)
    out = model(normalize_batch(batch["video"], **stream_statistics(cfg.data)), batch["label"])
    assert out.fine.shape == (1, 52)
    assert stand_in_batch(load_config(None))["video"].shape[1] == 3  # one stream: RGB


# --------------------------------------------------------------------------------------------
# Optical flow alone (SEED.md §7 "optical flow alone", val 67.61): one backbone on the flow videos only
# --------------------------------------------------------------------------------------------

FLOW_ALONE = REPO / "configs" / "videomae_b_k710_flow_i3d_train.yaml"


def _flow_alone_recipe(root: Path, tmp_path: Path) -> Path:
    cfg = load_config(_tiny_recipe(root, tmp_path), ["model.preset=videomae_b_k710_flow_i3d"])
    path = tmp_path / "tiny_flow_alone.yaml"
    save_config(cfg, path)
    return path


def test_flow_alone_recipe_needs_flow_videos_and_loads_the_final_norm():
    from microact.models.presets import get_preset

    cfg = load_config(FLOW_ALONE)
    assert get_preset(cfg.model.preset).streams == ("flow",) and cfg.data.flow_dir == "flow"
    with pytest.raises(ConfigError, match=r"is an optical-flow model but data\.flow_dir is not set.*microact flow"):
        load_config(FLOW_ALONE, ["data.flow_dir=null"])
    with pytest.raises(ConfigError, match=r"input_mode=rgb_diff is not supported"):
        load_config(FLOW_ALONE, ["model.input_mode=rgb_diff"])


def test_flow_alone_items_are_the_flow_videos_through_the_flow_pipeline(two_stream_root, tmp_path):
    """Training items are 3-channel clips of the flow video (the RGB videos are not read: they may be absent),
    sampled over the flow's frame count and put through the flow branch's pipeline (no ColorJitter)."""
    import shutil

    from microact.data.sampling import uniform_sample
    from microact.data.transforms import flow_train_transform
    from microact.engine.builders import build_train_dataset
    from microact.engine.evaluate import build_test_loader
    from microact.data.transforms import TestTransform

    flow_only_root = tmp_path / "only_flow"
    shutil.copytree(two_stream_root / "flow", flow_only_root / "flow")
    for name in ("train.txt", "test.txt"):
        shutil.copy(two_stream_root / name, flow_only_root / name)
    cfg = load_config(_flow_alone_recipe(flow_only_root, tmp_path))
    dataset = build_train_dataset(cfg)
    item = dataset[(0, 3)]
    assert "error" not in item and item["video"].shape == (3, 4, 32, 32)
    rng = dataset.rng_for(3, 0)
    flow_path = flow_only_root / "flow" / dataset.records[3].path
    frames = read_frames(flow_path, uniform_sample(count_frames(flow_path), 4, 1, False, rng))
    want = flow_train_transform(cfg.aug, 32)(frames, rng)
    assert np.array_equal(item["video"].numpy(), want)

    batch = next(iter(build_test_loader(cfg, flow_only_root / "test.txt", num_clips=2)))
    transform = TestTransform(cfg.eval, 32, cfg.aug.resize_backend)
    first = flow_only_root / "flow" / "v00.mp4"
    views = transform.views(read_frames(first, uniform_sample(count_frames(first), 4, 2, True)), 2)
    assert batch["video"].shape[2] == 3 and np.array_equal(batch["video"][0].numpy(), views)


def test_flow_alone_train_test_and_predict_end_to_end(two_stream_root, tmp_path, capsys):
    """microact train / test / predict on the flow-alone recipe; predict computes the video's flow itself and
    scores it normalised with the flow statistics, as an independent forward pass of those views does."""
    from microact.data.transforms import TestTransform
    from microact.predict import build_predictor_config, flow_views, load_model

    recipe = _flow_alone_recipe(two_stream_root, tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    weights = run / "model_final.safetensors"
    assert main(["test", str(recipe), str(weights), "--out", str(tmp_path / "test")]) == 0
    from microact.results import load_results

    assert load_results(tmp_path / "test" / "results.pkl").scores.shape == (4, 52)

    out = tmp_path / "pred.json"
    video = two_stream_root / "v02.mp4"
    assert main(["predict", str(video), "--checkpoint", str(weights), "--detector", "none", "--json", str(out),
                 "--device", "cpu"]) == 0  # the recipe recorded in the weights: flow alone
    assert "4 frames at 32 px, input optical flow" in capsys.readouterr().err
    pred = json.loads(out.read_text())["predictions"][0]

    cfg = build_predictor_config(config=str(recipe))
    model = load_model(cfg, str(weights), torch.device("cpu"))
    transform = TestTransform(cfg.eval, 32, cfg.aug.resize_backend)
    views = torch.from_numpy(flow_views(video, cfg, count_frames(video), tuple(pred["box"]), transform)).float()
    mean = torch.tensor(cfg.data.flow_mean).view(3, 1, 1, 1)
    std = torch.tensor(cfg.data.flow_std).view(3, 1, 1, 1)
    with torch.no_grad():
        want = torch.softmax(model((views - mean) / std).fine, dim=-1).mean(0)
    np.testing.assert_allclose(pred["probs"], want.numpy(), rtol=0, atol=1e-5)


def test_flow_alone_timeline_equals_predict_on_each_window_cut_out(make_video, tmp_path):
    from microact.predict import build_predictor_config, load_model, predict_timeline, predict_video

    cfg = build_predictor_config(config=str(FLOW_ALONE), overrides=[
        "data.clip_len=4", "data.img_size=32", "eval.resize_short=36", "eval.crop_height=40", "eval.test_clips=2",
        "eval.batch_size=3", "crop.short_side=null", "model.pretrained=null",
        "model.overrides={backbone: videomae_test}"])
    torch.manual_seed(3)
    model = load_model(cfg, None, torch.device("cpu"))
    video = make_video("long_flow.mp4", num_frames=30)
    frames = read_frames(video, np.arange(30))
    pred = predict_timeline(model, cfg, video, torch.device("cpu"), window_s=1.0, stride_s=0.5, detector="none")
    assert pred["num_views"] == 2 and len(pred["windows"]) >= 3
    for w in pred["windows"]:
        cut = _lossless_video(tmp_path / f"cut_{w['start_frame']}.mp4", frames[w["start_frame"]:w["end_frame"]])
        alone = predict_video(model, cfg, cut, torch.device("cpu"), detector="none")
        np.testing.assert_allclose(w["probs"], alone["probs"], rtol=0, atol=1e-6)
