"""Spatial transforms on uint8 clips ``[T, H, W, 3]`` (RGB), vectorised over frames.

Every random op draws once per clip and applies the same parameters to all frames. Clips stay uint8
until the device; :func:`normalize_batch` turns a batch into network input there.

Defaults reproduce the seed (SEED.md §5.4-§5.7): training is RandomResizedCrop on the raw (person-
cropped) frames -> squash to ``img_size``² -> ColorJitter -> RandomErasing -> Flip; testing is
resize short side 256 -> the seed's (h, w) = (min(H, 373), 224) centre crop -> squash to ``img_size``².
No torchvision: OpenCV (or one ``torch.nn.functional.interpolate`` call) does the resizing.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import torch

from microact.config import AugConfig, EvalConfig
from microact.data.flow import FLOW_MEAN, FLOW_STD

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # the seed's rgb_to_grayscale weights (SEED.md §5.5)

Box = tuple[int, int, int, int]  # top, left, height, width


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def random_resized_crop_box(height: int, width: int, area_range: Sequence[float], aspect_range: Sequence[float],
                            rng: np.random.Generator, max_attempts: int = 10) -> Box:
    """The seed's RandomResizedCrop box (SEED.md §5.4).

    Ten candidates: area fraction ``U(area_range)`` of H*W, aspect w/h log-uniform in ``aspect_range``,
    ``crop_w = round(sqrt(area * ar))``, ``crop_h = round(sqrt(area / ar))``. The first that fits is placed
    at a uniformly random integer offset (both ends inclusive); if none fits, a centred square of side
    ``min(H, W)`` (always the case on 16:9 frames with the seed's ranges).

    Returns:
        ``(top, left, crop_h, crop_w)``.
    """
    ars = np.exp(rng.uniform(math.log(aspect_range[0]), math.log(aspect_range[1]), size=max_attempts))
    areas = rng.uniform(area_range[0], area_range[1], size=max_attempts) * (height * width)
    crop_ws = np.round(np.sqrt(areas * ars)).astype(np.int64)
    crop_hs = np.round(np.sqrt(areas / ars)).astype(np.int64)
    for crop_w, crop_h in zip(crop_ws.tolist(), crop_hs.tolist()):
        if crop_w <= width and crop_h <= height:
            left = int(rng.integers(0, width - crop_w + 1))
            top = int(rng.integers(0, height - crop_h + 1))
            return top, left, crop_h, crop_w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def crop(clip: np.ndarray, box: Box) -> np.ndarray:
    """A view of ``clip[:, top:top+h, left:left+w]``."""
    top, left, h, w = box
    return clip[:, top:top + h, left:left + w]


def resize(clip: np.ndarray, height: int, width: int, backend: str = "cv2") -> np.ndarray:
    """Resize every frame to exactly ``height`` x ``width`` (bilinear, aspect ignored).

    ``cv2`` is OpenCV INTER_LINEAR frame by frame (the seed's kernel); ``torch`` is one
    ``interpolate(mode="bilinear", antialias=False)`` call for the whole clip, which may differ by ±1 grey
    level (SEED.md §12 row 18).
    """
    t, h, w, _ = clip.shape
    if (h, w) == (height, width):
        return np.ascontiguousarray(clip)
    if backend == "cv2":
        out = np.empty((t, height, width, 3), dtype=np.uint8)
        for i in range(t):  # OpenCV reads the crop view in place (rows may be strided) and writes into out[i]
            cv2.resize(clip[i], (width, height), dst=out[i], interpolation=cv2.INTER_LINEAR)
        return out
    if backend == "torch":
        x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float()  # [T,H,W,3] -> [T,3,H,W]
        y = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                                            antialias=False)
        return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # -> [T,H,W,3]
    raise ValueError(f"resize backend must be 'cv2' or 'torch', got {backend!r}")


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """New ``(height, width)`` with the short side ``short``: ``int(x * f + 0.5)`` with ``f = short / min(H, W)``."""
    f = short / min(height, width)
    return int(height * f + 0.5), int(width * f + 0.5)


def resize_short(clip: np.ndarray, short: int, backend: str = "cv2") -> np.ndarray:
    """Resize keeping the aspect so that the short side is ``short`` (mmaction2 ``Resize(scale=(-1, S))``)."""
    h, w = short_side_size(clip.shape[1], clip.shape[2], short)
    return resize(clip, h, w, backend)


def seed_center_crop_box(height: int, width: int, crop_h: int, crop_w: int) -> Box:
    """The seed's modified CenterCrop with crop_size read as (h, w) (SEED.md §5.7).

    ``crop_h`` is clamped to the image height, ``crop_w`` is not clamped in the seed. A frame narrower than
    ``crop_w`` cannot happen after the default resize (short side 256 >= 224); if it does (a smaller
    ``eval.resize_short``), the full width is taken instead of the seed's negative offset, and the
    following squash to ``img_size``² absorbs the difference.
    """
    crop_h = min(height, crop_h)
    crop_w = min(width, crop_w)
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def center_crop_box(height: int, width: int, crop_w: int, crop_h: int) -> Box:
    """Stock mmaction2 CenterCrop: a tuple is (w, h), no clamping (VIDEOMAE.md §5.3).

    Raises:
        ValueError: when the crop is larger than the frame (mmaction2 would silently return a smaller crop).
    """
    if crop_w > width or crop_h > height:
        raise ValueError(f"centre crop {crop_w}x{crop_h} (w x h) is larger than the frame {width}x{height}")
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def three_crop_boxes(height: int, width: int, crop_w: int, crop_h: int) -> list[Box]:
    """mmaction2 ThreeCrop: the crop spans one full side; offsets along the other in the order 0, 2*step, step.

    Raises:
        ValueError: when the crop spans neither side.
    """
    if crop_h == height and crop_w <= width:
        step = (width - crop_w) // 2
        return [(0, 0, crop_h, crop_w), (0, 2 * step, crop_h, crop_w), (0, step, crop_h, crop_w)]
    if crop_w == width and crop_h <= height:
        step = (height - crop_h) // 2
        return [(0, 0, crop_h, crop_w), (2 * step, 0, crop_h, crop_w), (step, 0, crop_h, crop_w)]
    raise ValueError(f"ThreeCrop {crop_w}x{crop_h} must span one full side of the {width}x{height} frame")


def flip(clip: np.ndarray) -> np.ndarray:
    """Horizontal flip of every frame."""
    return clip[:, :, ::-1]


# --------------------------------------------------------------------------------------------
# Photometric
# --------------------------------------------------------------------------------------------


# Brightness, contrast and saturation are affine in the pixel values and no clipping happens between them (SEED.md
# §5.5: only hue and the final cast clip), so a run of them is one 3x4 map per frame: y = A x + o_t. ColorJitter
# composes the maps exactly and applies each with one float32 cv2.transform pass per frame, instead of one pass per
# op (measured with hue included, on a 16x224x224 clip: 20 ms -> about 9 ms).


def saturation_map(factor: float) -> np.ndarray:
    """x -> f x + (1 - f) grey(x), grey = w . x with the seed's weights, as a 3x3 matrix."""
    return factor * np.eye(3) + (1.0 - factor) * np.outer(np.ones(3), GREY_WEIGHTS)


def _truncating_transform(frames: np.ndarray, matrix: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``clip(A x + o_t)`` truncated to uint8 (as ``astype(uint8)`` after ``clip``) for every frame, in place.

    The map runs in float32 (cv2.transform on 8-bit images uses fixed point, off by up to 4 levels), one frame
    at a time so the float copy stays in cache. The frame gets a spare row below it: OpenCV's SIMD loop leaves an
    image's last pixel or few to scalar code that adds in another order, and this way those are spare pixels,
    so every real pixel is computed one way (the way :mod:`microact.data.device_augment` restates).
    """
    m = np.empty((3, 4), dtype=np.float64)
    m[:, :3] = matrix
    h = frames.shape[1]
    buf = np.zeros((h + 1, *frames.shape[2:]), dtype=np.float32)
    for t in range(frames.shape[0]):
        m[:, 3] = offsets[t]
        np.copyto(buf[:h], frames[t])
        cv2.transform(buf, m, dst=buf)
        np.clip(buf[:h], 0, 255, out=buf[:h])
        frames[t] = buf[:h]  # float -> uint8 assignment truncates, as astype(uint8)
    return frames


def adjust_hue(frames: np.ndarray, factor: float) -> np.ndarray:
    """OpenCV 8-bit HSV hue shift by ``int(factor * 255)`` units (of 2°), modulo 180 (SEED.md §5.5), in place on
    uint8 frames ``[T, H, W, 3]``. The frames are stacked into one image so each conversion is one call."""
    t, h, w, _ = frames.shape
    tall = frames.reshape(t * h, w, 3)
    hsv = cv2.cvtColor(tall, cv2.COLOR_RGB2HSV)
    lut = ((np.arange(256) + int(factor * 255)) % 180).astype(np.uint8)  # Python's % keeps negative shifts in [0, 180)
    # Only H changes: a one-channel lookup on H alone costs less than a three-channel one with identity S and V
    # tables (0.7 vs 2.0 ms for 16 frames of 224²).
    hue = cv2.extractChannel(hsv, 0)
    cv2.LUT(hue, lut, dst=hue)
    cv2.insertChannel(hue, hsv, 0)
    cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=tall)
    return frames


def compose_affine_run(run: Sequence[str], factors: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """One map for consecutive brightness / contrast / saturation ops: ``x -> A x + P m_t``.

    ``m_t`` is the run input's mean colour in frame ``t`` (contrast blends with the grey mean of its own
    input, which is an affine function of ``m_t``). Every op is linear in (x, m_t), so the run composes into
    two 3x3 matrices that depend on the factors only; ``P`` is zero without contrast.

    Returns:
        ``(A, P)`` in float64.
    """
    matrix, mean_map = np.eye(3), np.zeros((3, 3))
    grey = np.asarray(GREY_WEIGHTS)
    for name in run:
        f = factors[name]
        if name == "brightness":
            matrix, mean_map = matrix * f, mean_map * f
        elif name == "saturation":
            s = saturation_map(f)
            matrix, mean_map = s @ matrix, s @ mean_map
        elif name == "contrast":  # grey mean of the current frame = w . m_t with w = (A + P)^T grey
            w = (matrix + mean_map).T @ grey
            matrix, mean_map = matrix * f, mean_map * f + (1.0 - f) * np.outer(np.ones(3), w)
        else:
            raise ValueError(f"not an affine ColorJitter op: {name!r}")
    return matrix, mean_map


def mean_offsets(means, mean_map):
    """``P m_t`` for every frame: ``means`` ``[..., T, 3]``, ``mean_map`` ``[..., 3, 3]`` -> ``[..., T, 3]``.

    Written as three products and two sums in a fixed order, for numpy arrays and torch tensors alike, so that
    the loader and :mod:`microact.data.device_augment` round alike (a matmul may sum in any order).
    """
    m = [means[..., c:c + 1] for c in range(3)]  # [..., T, 1]
    p = [mean_map[..., None, :, c] for c in range(3)]  # [..., 1, 3]
    return (m[0] * p[0] + m[1] * p[1]) + m[2] * p[2]


def frame_means(frames: np.ndarray) -> np.ndarray:
    """Mean colour of each uint8 frame ``[T, H, W, 3]`` -> ``[T, 3]`` float64 (exact integer sums)."""
    return np.array([cv2.mean(frame)[:3] for frame in frames])


class ColorJitter:
    """The seed's ColorJitter (SEED.md §5.5): brightness, contrast, saturation U(0.5, 1.5), hue U(-0.1, 0.1).

    Args:
        fixed_order: draw the order of the four ops once here (the seed) instead of per clip.
        rng: generator or seed for the construction-time order.
    """

    OPS = ("brightness", "contrast", "saturation", "hue")

    def __init__(self, brightness=(0.5, 1.5), contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=(-0.1, 0.1),
                 fixed_order: bool = True, rng=None):
        self.ranges = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
        self.fixed_order = fixed_order
        self.order = [int(i) for i in _as_rng(rng).permutation(4)] if fixed_order else None

    def draw(self, rng: np.random.Generator) -> tuple[list[int], dict[str, float]]:
        """One set of factors (and the op order) for a clip."""
        order = self.order if self.fixed_order else [int(i) for i in rng.permutation(4)]
        factors = {name: float(rng.uniform(*self.ranges[name])) for name in self.OPS}
        return order, factors

    @staticmethod
    def active_ops(order: Sequence[int], factors: dict[str, float]) -> list[str]:
        """The ops of ``order`` that change the image: neutral factors are skipped, as in the seed."""
        return [ColorJitter.OPS[i] for i in order
                if factors[ColorJitter.OPS[i]] != (0 if ColorJitter.OPS[i] == "hue" else 1)]

    @staticmethod
    def stages(order: Sequence[int], factors: dict[str, float]) -> list[str | list[str]]:
        """The active ops as stages: ``"hue"``, or a list of consecutive affine ops composed into one map."""
        stages: list[str | list[str]] = []
        for name in ColorJitter.active_ops(order, factors):
            if name == "hue":
                stages.append(name)
            elif stages and isinstance(stages[-1], list):
                stages[-1].append(name)
            else:
                stages.append([name])
        return stages

    @staticmethod
    def apply(clip: np.ndarray, order: Sequence[int], factors: dict[str, float]) -> np.ndarray:
        """Apply the ops in ``order`` to uint8 frames ``[T, H, W, 3]``; returns new uint8 frames.

        Computes what the seed's float32 sequence computes -- the ops one after the other, no clipping in
        between except inside hue, clip and truncate at the end -- up to float rounding at that final cast.
        Neutral factors are skipped, as in the seed.
        """
        out = np.array(clip, order="C")  # always a copy: the ops below work in place
        for stage in ColorJitter.stages(order, factors):
            if stage == "hue":
                adjust_hue(out, factors["hue"])
            else:
                matrix, mean_map = compose_affine_run(stage, factors)
                if "contrast" in stage:
                    offsets = mean_offsets(frame_means(out), mean_map)
                else:
                    offsets = np.zeros((out.shape[0], 3))
                _truncating_transform(out, matrix, offsets)
        return out

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        order, factors = self.draw(rng)
        return self.apply(clip, order, factors)


def random_erasing_box(height: int, width: int, area_range: Sequence[float], rng: np.random.Generator,
                       log_aspect=(math.log(0.3), math.log(1 / 0.3))) -> Box:
    """The seed's RandomErasing rectangle (SEED.md §5.6): area U(area_range)·H·W, log(h/w) uniform."""
    area = rng.uniform(area_range[0], area_range[1]) * height * width
    aspect = math.exp(rng.uniform(*log_aspect))
    h = min(int(round(math.sqrt(area * aspect))), height)
    w = min(int(round(math.sqrt(area / aspect))), width)
    top = int(rng.integers(0, height - h)) if height > h else 0  # upper end exclusive, as the seed
    left = int(rng.integers(0, width - w)) if width > w else 0
    return top, left, h, w


def random_erasing_draw(height: int, width: int, rng: np.random.Generator, prob: float = 0.5,
                       area_range=(0.02, 0.2)) -> Box | None:
    """The random draws of :func:`random_erasing`: its rectangle, or ``None`` when this clip is not erased."""
    if rng.random() >= prob:
        return None
    return random_erasing_box(height, width, area_range, rng)


def random_erasing(clip: np.ndarray, rng: np.random.Generator, prob: float = 0.5, area_range=(0.02, 0.2),
                   fill: int = 128) -> np.ndarray:
    """Fill one rectangle, the same in every frame, with ``fill`` with probability ``prob``."""
    box = random_erasing_draw(clip.shape[1], clip.shape[2], rng, prob, area_range)
    if box is None:
        return clip
    top, left, h, w = box
    clip = clip.copy() if not clip.flags.writeable else clip
    clip[:, top:top + h, left:left + w] = fill
    return clip


def to_channels_first(clip: np.ndarray) -> np.ndarray:
    """``[T, H, W, 3]`` -> ``[3, T, H, W]`` (contiguous)."""
    return np.ascontiguousarray(clip.transpose(3, 0, 1, 2))  # [T,H,W,C] -> [C,T,H,W]


def normalize_batch(x, mean: Sequence[float] = MEAN, std: Sequence[float] = STD,
                    dtype: torch.dtype = torch.float32, flow_mean: Sequence[float] = FLOW_MEAN,
                    flow_std: Sequence[float] = FLOW_STD) -> torch.Tensor:
    """``(x - mean) / std`` per channel on a uint8 batch, on whatever device ``x`` lives.

    The one normalisation of training, validation, testing, prediction and the benchmarks. A two-stream clip
    (6 channels: RGB then optical flow, SEED.md §2.9) is normalised per stream: channels 0-2 with ``mean`` /
    ``std``, channels 3-5 with ``flow_mean`` / ``flow_std``.

    Args:
        x: ``[B, C, T, H, W]`` or ``[B, V, C, T, H, W]`` (tensor or array) with C = 3 or 6; channels at dim -4.
        mean, std: per-channel RGB statistics in pixel units (ImageNet's by default, as the seed).
        dtype: output floating type.
        flow_mean, flow_std: the flow channels' statistics (the seed's by default), used when C = 6.
    """
    x = torch.as_tensor(x)
    if x.ndim not in (5, 6) or x.shape[-4] not in (3, 6):
        raise ValueError(f"expected [B, C, T, H, W] or [B, V, C, T, H, W] with C = 3 (RGB) or 6 (RGB + flow), "
                         f"got {tuple(x.shape)}")
    channels = x.shape[-4]
    mean, std = channel_statistics({"mean": mean, "std": std, "flow_mean": flow_mean, "flow_std": flow_std},
                                   channels)
    m = torch.tensor(mean, dtype=dtype, device=x.device).view(channels, 1, 1, 1)
    s = torch.tensor(std, dtype=dtype, device=x.device).view(channels, 1, 1, 1)
    return (x.to(dtype) - m) / s


def channel_statistics(stats: dict, channels: int) -> tuple[list[float], list[float]]:
    """Per-channel ``(mean, std)`` lists in pixel units that :func:`normalize_batch` applies to ``channels`` channels.

    Args:
        stats: :func:`normalize_batch`'s statistics keywords (``mean``, ``std``, ``flow_mean``, ``flow_std``; those
            left out take its defaults), e.g. :func:`stream_statistics`' answer.
        channels: 3 (the RGB statistics, or the flow ones passed as ``mean``/``std`` for flow-alone clips) or 6
            (RGB then the flow stream's).
    """
    mean, std = list(stats.get("mean", MEAN)), list(stats.get("std", STD))
    if channels == 6:
        mean += list(stats.get("flow_mean", FLOW_MEAN))
        std += list(stats.get("flow_std", FLOW_STD))
    return [float(v) for v in mean], [float(v) for v in std]


def stream_statistics(data, streams: Sequence[str] = ("rgb", "flow")) -> dict:
    """:func:`normalize_batch`'s statistics keyword arguments from a config's ``data`` section.

    Args:
        data: the ``data`` section (``flow_mean``, ``flow_std``).
        streams: what the clips hold (``Preset.streams``): RGB clips and two-stream clips get the flow channels'
            statistics (used when C = 6); flow-only clips (``("flow",)``) are normalised with them as their mean
            and std.
    """
    if tuple(streams) == ("flow",):
        return {"mean": tuple(data.flow_mean), "std": tuple(data.flow_std)}
    return {"flow_mean": tuple(data.flow_mean), "flow_std": tuple(data.flow_std)}


# --------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------


class TrainTransform:
    """The seed's training pipeline (SEED.md §5.4): RRC -> squash -> ColorJitter -> RandomErasing -> Flip.

    Args:
        aug: augmentation section of the config.
        img_size: square output size.
        rng: generator or integer seed for the construction-time draws (the ColorJitter op order when
            ``aug.cj_fixed_order``); pass the run's seed for reproducible runs. ``None`` draws fresh entropy.

    Call with a clip ``[T, H, W, 3]`` uint8 and a per-clip generator; returns ``[3, T, img_size, img_size]`` uint8.
    With ``aug.jitter_erasing_on == "device"`` it returns ``(clip, params)`` instead: the clip cropped, resized and
    flipped, and the ColorJitter / RandomErasing parameters that :func:`microact.data.device_augment.apply_deferred`
    applies on the training device. Both ways draw the same random numbers in the same order.
    """

    def __init__(self, aug: AugConfig, img_size: int, rng=None):
        self.aug = aug
        self.img_size = img_size
        self.color_jitter = ColorJitter(fixed_order=aug.cj_fixed_order, rng=rng) if aug.color_jitter else None
        self.defers_to_device = aug.jitter_erasing_on == "device"

    def __call__(self, clip: np.ndarray, rng: np.random.Generator):
        a = self.aug
        box = random_resized_crop_box(clip.shape[1], clip.shape[2], a.rrc_area, a.rrc_aspect, rng)
        x = resize(crop(clip, box), self.img_size, self.img_size, a.resize_backend)
        if not self.defers_to_device:
            if self.color_jitter is not None:
                x = self.color_jitter(x, rng)
            x = random_erasing(x, rng, prob=a.erase_prob, area_range=a.erase_area)
            if rng.random() < a.flip_prob:
                x = flip(x)
            return to_channels_first(x)
        from microact.data.device_augment import deferred_params

        order, factors = self.color_jitter.draw(rng) if self.color_jitter is not None else (None, None)
        erase_box = random_erasing_draw(x.shape[1], x.shape[2], rng, prob=a.erase_prob, area_range=a.erase_area)
        flipped = rng.random() < a.flip_prob
        if flipped:
            x = flip(x)
        return to_channels_first(x), deferred_params(order, factors, erase_box, flipped, x.shape[2])


def flow_train_transform(aug: AugConfig, img_size: int) -> TrainTransform:
    """The flow branch's training pipeline (SEED.md §5.8): RRC with ``aug.flow_rrc_area`` / ``flow_rrc_aspect``
    -> squash to ``img_size``² -> RandomErasing -> flip, on flow frames ``[T, H, W, 3]``.

    No ColorJitter: the colours are the flow's direction and speed. The seed resized the short side to 256 before
    the crop; that only rescales the frame, whose crop is then squashed to ``img_size``², so the crop is taken on
    the decoded frame (as for the RGB branch, up to a pixel of rounding). With ``aug.jitter_erasing_on=device`` it
    returns ``(clip, params)`` like the RGB branch: the same draws, RandomErasing left to the training device.
    """
    import dataclasses

    flow_aug = dataclasses.replace(aug, rrc_area=aug.flow_rrc_area, rrc_aspect=aug.flow_rrc_aspect,
                                   color_jitter=False)
    return TrainTransform(flow_aug, img_size)


class TestTransform:
    """Deterministic test views (SEED.md §5.7, §12 row 10).

    ``eval.view``:
        ``portrait373`` (seed): resize short side to ``eval.resize_short`` -> centre crop (h, w) =
        (min(H, ``eval.crop_height``), ``img_size``) -> squash to ``img_size``².
        ``center224``: resize short side to ``eval.resize_short`` -> centre ``img_size``² crop.
        ``three_crop``: resize short side to ``img_size`` -> three ``img_size``² crops along the long side.
    ``eval.flip_tta`` appends the horizontally flipped version of every view.

    Call with one clip ``[T, H, W, 3]`` to get its views (a list of ``[3, T, S, S]`` uint8); :meth:`views`
    handles several clips at once in the crop-major, clip-minor order of mmaction2.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, eval: EvalConfig, img_size: int, resize_backend: str = "cv2"):
        self.eval = eval
        self.img_size = img_size
        self.backend = resize_backend

    @property
    def num_crops(self) -> int:
        return (3 if self.eval.view == "three_crop" else 1) * (2 if self.eval.flip_tta else 1)

    def _crops(self, frames: np.ndarray) -> list[np.ndarray]:
        e, s = self.eval, self.img_size
        if e.view == "three_crop":
            x = resize_short(frames, s, self.backend)
            crops = [crop(x, b) for b in three_crop_boxes(x.shape[1], x.shape[2], s, s)]
        else:
            x = resize_short(frames, e.resize_short, self.backend)
            if e.view == "portrait373":
                box = seed_center_crop_box(x.shape[1], x.shape[2], e.crop_height, s)
            elif e.view == "center224":
                box = center_crop_box(x.shape[1], x.shape[2], s, s)
            else:
                raise ValueError(f"eval.view: unknown view {e.view!r}")
            crops = [resize(crop(x, box), s, s, self.backend)]
        if e.flip_tta:
            crops += [flip(c) for c in crops]
        return crops

    def __call__(self, clip: np.ndarray) -> list[np.ndarray]:
        return [to_channels_first(c) for c in self._crops(clip)]

    def views(self, frames: np.ndarray, num_clips: int) -> np.ndarray:
        """All views of a video whose ``num_clips`` clips are stacked clip-major in ``frames``.

        Args:
            frames: ``[num_clips * T, H, W, 3]`` uint8.

        Returns:
            ``[V, 3, T, S, S]`` uint8 with ``V = crops * num_clips``, crop-major, clip-minor.
        """
        n = frames.shape[0]
        if n % num_clips:
            raise ValueError(f"{n} frames cannot be split into {num_clips} clips")
        out = []
        for c in self._crops(frames):  # one resize per video, not per clip
            t = n // num_clips
            clips = np.ascontiguousarray(c).reshape(num_clips, t, *c.shape[1:])  # [n*T,S,S,3] -> [clips,T,S,S,3]
            out.append(clips.transpose(0, 4, 1, 2, 3))  # -> [clips, 3, T, S, S]
        return np.ascontiguousarray(np.concatenate(out, axis=0))
