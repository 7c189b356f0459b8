"""Spatial transforms: the seed's worked examples, and ops checked against plain per-pixel re-implementations."""
from __future__ import annotations


import cv2
import numpy as np
import pytest
import torch

from microact.config import AugConfig, EvalConfig
from microact.data import TestTransform, TrainTransform, normalize_batch
from microact.data.transforms import (ColorJitter, random_erasing, random_resized_crop_box, resize,
                                      seed_center_crop_box, short_side_size, three_crop_boxes)


def clip_of(t, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("w,h,resized,crop,offset", [
    (600, 1000, (256, 427), (224, 373), (16, 27)),
    (800, 800, (256, 256), (224, 256), (16, 0)),
    (1920, 1080, (455, 256), (224, 256), (115, 0)),
])
def test_seed_test_crop_worked_examples(w, h, resized, crop, offset):
    rh, rw = short_side_size(h, w, 256)
    assert (rw, rh) == resized
    top, left, ch, cw = seed_center_crop_box(rh, rw, 373, 224)
    assert (cw, ch) == crop and (left, top) == offset


def test_portrait373_view_equals_manual_pipeline():
    clip = clip_of(3, 100, 60)  # w/h 0.6: resize to 256x427 (w x h), crop 224x373 at (16, 27)
    views = TestTransform(EvalConfig(), 224)(clip)
    assert len(views) == 1 and views[0].shape == (3, 3, 224, 224) and views[0].dtype == np.uint8
    for t in range(3):
        big = cv2.resize(clip[t], (256, 427), interpolation=cv2.INTER_LINEAR)
        want = cv2.resize(np.ascontiguousarray(big[27:27 + 373, 16:16 + 224]), (224, 224),
                          interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(views[0][:, t].transpose(1, 2, 0), want)


def test_views_three_crop_order_and_multi_clip_layout():
    assert three_crop_boxes(224, 300, 224, 224) == [(0, 0, 224, 224), (0, 76, 224, 224), (0, 38, 224, 224)]
    assert three_crop_boxes(300, 224, 224, 224) == [(0, 0, 224, 224), (76, 0, 224, 224), (38, 0, 224, 224)]
    frames = clip_of(2 * 4, 48, 64)
    tt = TestTransform(EvalConfig(view="three_crop"), 32)
    v = tt.views(frames, num_clips=2)
    assert v.shape == (6, 3, 4, 32, 32)
    # crop-major, clip-minor: view 1 is crop 0 of clip 1, view 2 is crop 1 of clip 0
    per_clip = [tt(frames[k * 4:(k + 1) * 4]) for k in range(2)]
    np.testing.assert_array_equal(v[1], per_clip[1][0])
    np.testing.assert_array_equal(v[2], per_clip[0][1])
    center = TestTransform(EvalConfig(view="center224", resize_short=40, flip_tta=True), 32).views(frames, 2)
    assert center.shape == (4, 3, 4, 32, 32)
    np.testing.assert_array_equal(center[2], center[0][..., ::-1])


def test_rrc_falls_back_to_centred_square_on_16_9():
    for seed in range(300):
        box = random_resized_crop_box(1080, 1920, (0.6, 1.0), (1 / 3, 1.0), np.random.default_rng(seed))
        assert box == (0, 420, 1080, 1080)


def test_rrc_on_portrait_crops_follows_the_rule():
    rng = np.random.default_rng(0)
    fallbacks = 0
    for _ in range(2000):
        top, left, h, w = random_resized_crop_box(1000, 600, (0.6, 1.0), (1 / 3, 1.0), rng)
        assert 0 <= top and top + h <= 1000 and 0 <= left and left + w <= 600
        if (top, left, h, w) == (200, 0, 600, 600):
            fallbacks += 1
            continue
        assert 0.6 * 600000 * 0.99 <= h * w <= 600000 * 1.01
        assert 1 / 3 * 0.98 <= w / h <= 1.0 * 1.02
    assert fallbacks < 40  # SEED.md §5.4: about 0.4 % for 600x1000


def _ref_jitter(clip, order, f):
    """SEED.md §5.5 restated in float64, one op after the other, whole frames at a time; hue through OpenCV."""
    x = clip.astype(np.float64)
    w = np.array([0.2989, 0.587, 0.114])
    for op in order:
        name, v = ColorJitter.OPS[op], f[ColorJitter.OPS[op]]
        if name == "brightness":
            x = x * v
        elif name == "contrast":
            x = x * v + (x @ w).mean(axis=(1, 2))[:, None, None, None] * (1 - v)
        elif name == "saturation":
            x = x * v + (x @ w)[..., None] * (1 - v)
        else:
            for t in range(len(x)):
                hsv = cv2.cvtColor(np.clip(x[t], 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(int)
                hsv[..., 0] = (hsv[..., 0] + int(v * 255)) % 180
                x[t] = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return np.clip(x, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_color_jitter_matches_the_reference(seed):
    clip = clip_of(2, 5, 6, seed)
    cj = ColorJitter(rng=seed)
    order, factors = cj.draw(np.random.default_rng(seed + 10))
    factors["hue"] = -0.1 if seed == 0 else factors["hue"]  # a negative offset (NumPy 2 overflow trap)
    out = ColorJitter.apply(clip, order, factors)
    ref = _ref_jitter(clip, order, factors)
    diff = np.abs(out.astype(int) - ref)
    assert diff.max() <= 1 and diff.mean() < 0.05  # float32 vs float64 rounding at the uint8 cast only


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (2, 0, 1, 3), (1, 3, 0, 2), (3, 2, 1, 0), (2, 1, 3, 0)])
def test_composed_color_jitter_matches_the_sequential_ops_on_a_full_clip(order):
    """ColorJitter composes brightness / contrast / saturation into one map; the ops run one by one agree."""
    clip = clip_of(4, 64, 80, seed=sum(order))
    rng = np.random.default_rng(len(order) + order[0])
    for _ in range(4):
        factors = ColorJitter(fixed_order=False).draw(rng)[1]
        out = ColorJitter.apply(clip, list(order), factors)
        diff = np.abs(out.astype(int) - _ref_jitter(clip, order, factors))
        if order[0] == 3:  # hue sees the input itself: only the final cast rounds
            assert diff.max() <= 1 and diff.mean() < 0.01
        else:  # a one-level difference before hue can move a hue bin, which moves a pixel by a few levels
            assert (diff > 1).mean() < 1e-3 and diff.mean() < 0.01


def test_color_jitter_order_fixed_or_per_clip():
    cj = ColorJitter(rng=5)
    rng = np.random.default_rng(0)
    assert len({tuple(cj.draw(rng)[0]) for _ in range(20)}) == 1
    assert sorted(cj.order) == [0, 1, 2, 3] and cj.order == ColorJitter(rng=5).order
    free = ColorJitter(fixed_order=False)
    assert len({tuple(free.draw(rng)[0]) for _ in range(50)}) > 5
    clip = clip_of(1, 4, 4)
    neutral = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
    np.testing.assert_array_equal(ColorJitter.apply(clip, [0, 1, 2, 3], neutral), clip)


def test_random_erasing_same_box_every_frame():
    clip = clip_of(4, 40, 50)
    erased_any = 0
    for seed in range(40):
        out = random_erasing(clip.copy(), np.random.default_rng(seed), prob=0.5, area_range=(0.02, 0.2))
        mask = (out != clip).any(axis=-1)  # [T, H, W]
        if not mask.any():
            continue
        erased_any += 1
        assert (mask == mask[0]).all()
        ys, xs = np.nonzero(mask[0])
        box = out[:, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert (box == 128).all()
        area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert 0.02 * 2000 * 0.5 <= area <= 0.2 * 2000 * 1.5
    assert 8 <= erased_any <= 32  # p = 0.5


def test_train_transform_shapes_flip_and_reproducibility():
    clip = clip_of(4, 50, 30)
    tf = TrainTransform(AugConfig(), 32, rng=0)
    a = tf(clip, np.random.default_rng(1))
    b = tf(clip, np.random.default_rng(1))
    assert a.shape == (3, 4, 32, 32) and a.dtype == np.uint8 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    # flip only: one decision for the whole clip, about half of the clips
    only_flip = TrainTransform(AugConfig(color_jitter=False, erase_prob=0.0, rrc_area=(1.0, 1.0),
                                         rrc_aspect=(1.0, 1.0)), 30, rng=0)
    square = clip_of(4, 30, 30)
    flips = 0
    for s in range(40):
        out = only_flip(square, np.random.default_rng(s)).transpose(1, 2, 3, 0)
        if (out == square[:, :, ::-1]).all():
            flips += 1
        else:
            np.testing.assert_array_equal(out, square)
    assert 8 <= flips <= 32


def test_torch_resize_close_to_cv2():
    clip = clip_of(3, 57, 41)
    a = resize(clip, 32, 32, "cv2").astype(int)
    b = resize(clip, 32, 32, "torch").astype(int)
    assert a.shape == b.shape == (3, 32, 32, 3)
    assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.5


def test_normalize_batch():
    x = torch.from_numpy(clip_of(2 * 3 * 3, 4, 4).reshape(2, 3, 3, 4, 4, 3)[..., 0].copy())  # [B, 3, T, H, W]
    y = normalize_batch(x)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    for c in range(3):
        np.testing.assert_allclose(y[:, c].numpy(), (x[:, c].numpy() - mean[c]) / std[c], rtol=1e-6, atol=1e-6)
    assert normalize_batch(x[:, None].expand(2, 2, 3, 3, 4, 4)).shape == (2, 2, 3, 3, 4, 4)
    with pytest.raises(ValueError):
        normalize_batch(x[:, :2])


def test_channel_statistics_per_stream():
    """The per-channel statistics normalize_batch applies: RGB (ImageNet's unless given), then the flow stream's for
    6 channels; flow-alone clips pass the flow statistics as mean/std."""
    from microact.data.transforms import channel_statistics

    imagenet = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
    assert channel_statistics({}, 3) == imagenet
    flow = {"flow_mean": (100, 110, 120), "flow_std": (30, 40, 50)}
    assert channel_statistics(flow, 3) == imagenet
    assert channel_statistics(flow, 6) == (imagenet[0] + [100.0, 110.0, 120.0], imagenet[1] + [30.0, 40.0, 50.0])
    assert channel_statistics({"mean": (1, 2, 3), "std": (4, 5, 6)}, 3) == ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert all(isinstance(v, float) for v in channel_statistics(flow, 6)[0])
    # normalize_batch uses them: a 6-channel clip against the numbers written out
    x = torch.full((1, 6, 1, 1, 1), 200, dtype=torch.uint8)
    got = normalize_batch(x, flow_mean=(100, 110, 120), flow_std=(30, 40, 50)).flatten().tolist()
    want = [(200 - m) / s for m, s in zip(imagenet[0] + [100, 110, 120], imagenet[1] + [30, 40, 50])]
    assert got == pytest.approx(want, rel=1e-6)
