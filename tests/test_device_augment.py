"""ColorJitter and RandomErasing on the training device (aug.jitter_erasing_on=device) against the loader's.

The device restates OpenCV's 8-bit HSV conversions and cv2.transform's float32 arithmetic; these tests hold it
to OpenCV itself on every possible input of the conversions, and to the loader's pixels on whole clips.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import write_labelled_clips
from microact.config import AugConfig, load_config
from microact.data.dataset import VideoDataset, collate
from microact.data.device_augment import (ERASE, HUE, NUM_PARAMS, RUN1, RUN2, apply_deferred, hsv_to_rgb_u8,
                                          opencv_simd_columns, rgb_to_hsv_u8)
from microact.data.transforms import TrainTransform

CV_CPU_FMA3 = 12  # OpenCV's CPU feature id


def test_the_machine_is_one_the_restatement_is_for():
    # OpenCV computes 1 - s*f with a fused multiply-add where the CPU has FMA3 (every x86-64 GPU host does).
    assert cv2.checkHardwareSupport(CV_CPU_FMA3)


def test_rgb_to_hsv_matches_opencv_on_every_colour():
    values = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([(values >> 16) & 255, (values >> 8) & 255, values & 255], -1).astype(np.uint8)
    expected = cv2.cvtColor(rgb.reshape(4096, 4096, 3), cv2.COLOR_RGB2HSV).reshape(-1, 3)
    h, s, v = rgb_to_hsv_u8(torch.from_numpy(np.ascontiguousarray(rgb.T)).view(1, 3, 1, 1 << 24))
    got = torch.stack([h, s, v]).view(3, -1).T.numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("width", [256, 1, 240])  # all SIMD, all scalar tail, both in every row
def test_hsv_to_rgb_matches_opencv_on_every_triple(width):
    h, s, v = np.meshgrid(np.arange(180), np.arange(256), np.arange(256), indexing="ij")
    hsv = np.stack([h, s, v], -1).astype(np.uint8).reshape(-1, width, 3)
    expected = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    planes = [torch.from_numpy(hsv[..., c].astype(np.int32))[None] for c in range(3)]
    simd = torch.arange(width) < opencv_simd_columns(width)
    got = hsv_to_rgb_u8(*planes, simd=simd)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


def test_simd_columns_are_measured():
    assert opencv_simd_columns(1) == 0
    block = opencv_simd_columns(1024)
    assert block == 1024
    widths = [opencv_simd_columns(w) for w in range(1, 200)]
    assert widths == sorted(widths) and all(c <= w for c, w in zip(widths, range(1, 200)))


def _clip(seed, t=8, h=90, w=120):
    """Smooth colour gradients plus sensor noise: every hue, saturations near 0 and 255, mid-range means."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 2.1 + seed * 11) % 256, (yy * 2.7 + xx) % 256, 255 - (yy * 1.3 + seed) % 256], -1)
    return np.clip(base[None] + rng.normal(0, 10, (t, h, w, 3)), 0, 255).astype(np.uint8)


def _both_ways(aug: dict, img_size: int, seed: int):
    clip = _clip(seed)
    loader = TrainTransform(AugConfig(**aug), img_size, rng=seed)
    device = TrainTransform(AugConfig(**aug, jitter_erasing_on="device"), img_size, rng=seed)
    rng_loader, rng_device = np.random.default_rng([seed, 7]), np.random.default_rng([seed, 7])
    expected = loader(clip, rng_loader)
    video, params = device(clip, rng_device)
    assert rng_loader.random() == rng_device.random(), "the two ways must draw the same random numbers"
    return expected, video, params


@pytest.mark.parametrize("img_size", [64, 56])  # 56: the hue's HSV -> RGB has a scalar tail in every row
@pytest.mark.parametrize("aug", [
    {},  # the seed: order drawn once per run
    {"cj_fixed_order": False},  # per-clip order: every stage layout occurs
    {"erase_prob": 1.0, "flip_prob": 1.0},  # erased and flipped: the rectangle is mirrored
    {"color_jitter": False, "erase_prob": 1.0},  # erasing alone
])
def test_device_batch_equals_the_loaders_pixels(aug, img_size):
    expected, videos, params = [], [], []
    for seed in range(12):
        e, v, p = _both_ways(aug, img_size, seed)
        expected.append(e), videos.append(v), params.append(p)
    params = torch.from_numpy(np.stack(params))
    assert params.shape == (12, NUM_PARAMS) and params.dtype == torch.float64
    got = apply_deferred(torch.from_numpy(np.stack(videos)), params)
    np.testing.assert_array_equal(got.numpy(), np.stack(expected))
    if aug.get("color_jitter", True):
        assert params[:, HUE].all() and (params[:, RUN1] + params[:, RUN2]).all()
    else:
        assert not params[:, [RUN1, HUE, RUN2]].any()
    if "erase_prob" in aug:
        assert params[:, ERASE].all()


@pytest.mark.parametrize("aug", [
    {},  # the seed's settings: RGB jittered, both streams erased with probability 0.25, flipped with 0.5
    {"cj_fixed_order": False, "erase_prob": 1.0, "flip_prob": 0.5},  # every clip erased, in both streams
])
def test_two_stream_device_batch_equals_the_loaders_pixels(aug):
    """6-channel clips: the RGB stream with ColorJitter + RandomErasing, the flow stream (flow_train_transform, its
    own generator) with RandomErasing only; the device batch equals the loader's batch value for value."""
    from microact.data.transforms import flow_train_transform

    img_size, expected, videos, params = 56, [], [], []
    transforms = {}
    for where in ("loader", "device"):
        cfg = AugConfig(**aug, jitter_erasing_on=where)
        transforms[where] = TrainTransform(cfg, img_size, rng=0), flow_train_transform(cfg, img_size)
    for seed in range(12):
        clip, flow = _clip(seed), _clip(100 + seed, h=88, w=118)  # flow frames: a frame smaller, other content
        draws = {where: (np.random.default_rng([seed, 7]), np.random.default_rng([seed, 7, 1]))
                 for where in ("loader", "device")}
        rgb_t, flow_t = transforms["loader"]
        rgb_rng, flow_rng = draws["loader"]
        expected.append(np.concatenate([rgb_t(clip, rgb_rng), flow_t(flow, flow_rng)]))  # [6, T, S, S]
        rgb_t, flow_t = transforms["device"]
        (rgb, rgb_p), (fl, flow_p) = rgb_t(clip, draws["device"][0]), flow_t(flow, draws["device"][1])
        videos.append(np.concatenate([rgb, fl]))
        params.append(np.concatenate([rgb_p, flow_p]))
        for a, b in zip(draws["loader"], draws["device"]):
            assert a.random() == b.random(), "the two ways must draw the same random numbers in each stream"
    params = torch.from_numpy(np.stack(params))
    assert params.shape == (12, 2 * NUM_PARAMS)
    flow_block = params[:, NUM_PARAMS:]
    assert not flow_block[:, [RUN1, HUE, RUN2]].any()  # no ColorJitter on flow
    if aug.get("erase_prob") == 1.0:
        assert flow_block[:, ERASE].all()
        assert not torch.equal(flow_block[:, ERASE + 1:ERASE + 5], params[:, ERASE + 1:ERASE + 5])  # own draws
    got = apply_deferred(torch.from_numpy(np.stack(videos)), params)
    assert got.shape == (12, 6, 8, img_size, img_size)
    np.testing.assert_array_equal(got.numpy(), np.stack(expected))


def test_per_clip_orders_cover_every_stage_layout():
    layouts = {tuple(_both_ways({"cj_fixed_order": False}, 32, seed)[2][[RUN1, HUE, RUN2]]) for seed in range(40)}
    assert layouts == {(1, 1, 0), (1, 1, 1), (0, 1, 1)}  # hue last, in the middle, first


def test_apply_deferred_leaves_its_input_alone_and_rejects_bad_shapes():
    _, video, params = _both_ways({"erase_prob": 1.0}, 32, 0)
    batch, p = torch.from_numpy(video)[None], torch.from_numpy(params)[None]
    before = batch.clone()
    apply_deferred(batch, p)
    assert torch.equal(batch, before)
    with pytest.raises(ValueError, match=r"uint8 batch \[B, 3, T, H, W\]"):
        apply_deferred(batch.float(), p)
    with pytest.raises(ValueError, match=rf"parameters \[1, {NUM_PARAMS}\]"):
        apply_deferred(batch, p[:, :10])
    with pytest.raises(ValueError, match=rf"parameters \[1, {2 * NUM_PARAMS}\] for 6 channels"):
        apply_deferred(torch.cat([batch, batch], dim=1), p)  # two streams need two blocks
    with pytest.raises(ValueError, match=r"\[B, 6, T, H, W\]"):
        apply_deferred(batch[:, :2], p)


def test_dataset_items_and_batches_carry_the_parameters(tmp_path):
    lines = write_labelled_clips(tmp_path, 3)
    records = _records(tmp_path, lines)
    transform = TrainTransform(AugConfig(jitter_erasing_on="device"), 32, rng=0)
    dataset = VideoDataset(records, tmp_path, clip_len=4, transform=transform)
    items = [dataset[i] for i in range(3)]
    assert all(it["video"].shape == (3, 4, 32, 32) and it["augment"].shape == (NUM_PARAMS,) for it in items)
    batch = collate(items + [{"video": None, "label": 0, "index": 9, "error": "x.mp4: unreadable"}])
    assert batch["augment"].shape == (3, NUM_PARAMS) and batch["skipped"] == ["x.mp4: unreadable"]
    assert "augment" not in collate([{k: v for k, v in items[0].items() if k != "augment"}])


def _records(root, lines):
    from microact.data.annotations import load_list

    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return load_list(root / "list.txt", video_dir=root, num_classes=4)


def test_training_on_the_device_path_gives_the_same_weights(tmp_path):
    """One epoch with ColorJitter and RandomErasing each way: the same pixels, so the same weights, bit for bit."""
    from pathlib import Path

    from microact.engine.train import train
    from test_train import CONFIGS, assert_same_weights, overrides

    (tmp_path / "data").mkdir()
    lines = write_labelled_clips(tmp_path / "data", 8)
    (tmp_path / "data" / "train.txt").write_text("\n".join(lines) + "\n")
    runs = {}
    for where in ("loader", "device"):
        cfg = load_config(CONFIGS / "tiny_synth.yaml", overrides(
            tmp_path / "data", "train.epochs=1", "aug.color_jitter=true", "aug.erase_prob=0.5",
            f"aug.jitter_erasing_on={where}"))
        torch.manual_seed(0)
        assert train(cfg, tmp_path / where) == 0
        runs[where] = Path(tmp_path / where / "model_final.safetensors")
    assert_same_weights(runs["loader"], runs["device"])
