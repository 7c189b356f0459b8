"""ColorJitter and RandomErasing on the training device instead of in the loader workers (``aug.jitter_erasing_on``).

On a GPU host the loader, not the GPU, bounds training speed (docs/BENCHMARKS.md, "Data into the step"), and ColorJitter is
about a sixth of a cropped clip's CPU cost. With ``aug.jitter_erasing_on: device`` the worker still makes every
random draw of the seed's pipeline in the same order (so the run's random stream, crops and flips are unchanged),
but instead of applying ColorJitter and RandomErasing it sends their parameters with the clip: 49 float64 values,
laid out below. The training step applies them to the uint8 batch where it lives, just before normalisation.

What the device computes, and how close it is to the loader's pixels (the tests compare whole batches value for
value, and one epoch of training each way ends with the same weights, bit for bit):

- each run of consecutive brightness / contrast / saturation ops is the loader's composed map
  ``x -> A x + P m_t`` (:func:`microact.data.transforms.compose_affine_run`, computed in the worker), applied
  as ``cv2.transform``'s SIMD loop computes it: float32 fused multiply-adds onto the offset, channel 2 first
  (a float64 product and sum rounded once to float32 is a fused multiply-add for these operands), clipped and
  truncated to uint8 (the loader gives each frame a spare row, so no real pixel falls in OpenCV's scalar tail);
- the hue shift restates OpenCV's 8-bit HSV conversions exactly: RGB -> HSV is OpenCV's integer arithmetic and
  lookup tables; HSV -> RGB its float32 sequence with the fused multiply-adds of x86-64 (every machine a GPU sits
  in), truncating in the SIMD part of each row and rounding in the scalar rest of the row, which is measured
  on this machine (:func:`opencv_simd_columns`). Both conversions are tested against ``cv2.cvtColor`` on every
  possible input (2^24 RGB colours, 180 x 256 x 256 HSV triples);
- erasing fills the same rectangle with the same value. The worker has already flipped the clip, so it sends
  the rectangle mirrored and says that it flipped (OpenCV's scalar columns are then on the left); every
  other ColorJitter step treats each pixel alike and contrast's frame mean does not change under a flip.

Two-stream clips (6 channels, RGB then optical flow) carry one parameter block per stream, ``[2 * NUM_PARAMS]``:
the RGB block as above, then the flow block, which holds the flow stream's own RandomErasing and flip (its own
draws; no ColorJitter on flow, SEED.md §5.8, so its affine runs are the identity and its hue flag is off). Each
block is applied to its stream's three channels exactly as to a one-stream clip.

Everything is batched over the clips, with masks instead of per-clip branches: no host-device synchronisation.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from microact.data.transforms import Box, ColorJitter, compose_affine_run, mean_offsets

# Layout of one clip's parameters (float64). A clip's ColorJitter stages are at most
# affine run -> hue -> affine run (one hue op splits the three affine ops into two runs).
RUN1, RUN1_MATRIX, RUN1_MEAN_MAP = 0, slice(1, 10), slice(10, 19)
HUE, HUE_SHIFT = 20, 21
RUN2, RUN2_MATRIX, RUN2_MEAN_MAP = 22, slice(23, 32), slice(32, 41)
ERASE, ERASE_BOX, ERASE_FILL = 42, slice(43, 47), 47
FLIPPED = 48  # OpenCV's hue conversion treats a row's last pixels differently: the device mirrors that too
NUM_PARAMS = 49

_HSV_SHIFT = 12  # OpenCV's fixed-point bits for 8-bit RGB -> HSV
# Per hue sector (0..5): which of (v, p, q, t) becomes r, g and b (OpenCV's sector table, reordered to RGB).
_SECTOR_RGB = ((0, 3, 1), (2, 0, 1), (1, 0, 3), (1, 2, 0), (3, 1, 0), (0, 1, 2))
_F32_HUE_SCALE = float(np.float32(6.0) / np.float32(180.0))  # OpenCV's 6.f / 180, exactly as a float32
_F32_INV_255 = float(np.float32(1.0) / np.float32(255.0))


def deferred_params(order: Optional[Sequence[int]], factors: Optional[dict[str, float]], erase_box: Optional[Box],
                    flipped: bool, width: int, fill: int = 128) -> np.ndarray:
    """The parameters a loader worker sends instead of applying ColorJitter and RandomErasing.

    Args:
        order, factors: one ColorJitter draw (:meth:`ColorJitter.draw`), or ``None`` without ColorJitter.
        erase_box: the RandomErasing rectangle ``(top, left, h, w)`` in the unflipped clip, or ``None``.
        flipped: whether the worker flipped the clip (the rectangle is mirrored to match).
        width: the clip's width.
        fill: the erasing value.

    Returns:
        ``[NUM_PARAMS]`` float64.
    """
    params = np.zeros(NUM_PARAMS)
    params[RUN1_MATRIX] = params[RUN2_MATRIX] = np.eye(3).reshape(-1)  # an absent run is the identity map
    if order is not None:
        stages = ColorJitter.stages(order, factors)
        if stages and stages[0] != "hue":
            _put_run(params, RUN1, RUN1_MATRIX, RUN1_MEAN_MAP, stages.pop(0), factors)
        if stages and stages[0] == "hue":
            params[HUE], params[HUE_SHIFT] = 1.0, int(factors["hue"] * 255)  # int() truncates, as the loader
            stages.pop(0)
        if stages:
            _put_run(params, RUN2, RUN2_MATRIX, RUN2_MEAN_MAP, stages.pop(0), factors)
        assert not stages, "a ColorJitter draw has at most run -> hue -> run"
    if erase_box is not None:
        top, left, h, w = erase_box
        if flipped:
            left = width - left - w
        params[ERASE], params[ERASE_BOX], params[ERASE_FILL] = 1.0, (top, left, h, w), fill
    params[FLIPPED] = float(flipped)
    return params


def _put_run(params: np.ndarray, flag: int, matrix_at: slice, mean_map_at: slice, run: list[str],
             factors: dict[str, float]) -> None:
    matrix, mean_map = compose_affine_run(run, factors)
    params[flag], params[matrix_at], params[mean_map_at] = 1.0, matrix.reshape(-1), mean_map.reshape(-1)


def apply_deferred(video: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply the deferred ColorJitter and RandomErasing to a uint8 batch, on the batch's device.

    Args:
        video: ``[B, 3, T, H, W]`` uint8 (RGB), or ``[B, 6, T, H, W]`` (two-stream: RGB then flow), as the loader
            delivers it.
        params: ``[B, NUM_PARAMS]`` from :func:`deferred_params` (``batch["augment"]``), ``[B, 2 * NUM_PARAMS]``
            for 6 channels (the RGB block, then the flow block); on the CPU it decides, without a device sync,
            which stages any clip of the batch needs.

    Returns:
        A new uint8 tensor of ``video``'s shape.
    """
    if video.ndim != 5 or video.shape[1] not in (3, 6) or video.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 batch [B, 3, T, H, W] or [B, 6, T, H, W], got {tuple(video.shape)} "
                         f"{video.dtype}")
    streams = video.shape[1] // 3
    if params.shape != (video.shape[0], streams * NUM_PARAMS):
        raise ValueError(f"expected parameters [{video.shape[0]}, {streams * NUM_PARAMS}] for {video.shape[1]} "
                         f"channels, got {tuple(params.shape)}")
    if streams == 2:  # each stream's block on its own three channels: [B, 6, ...] -> 2 x [B, 3, ...] -> [B, 6, ...]
        return torch.cat([_apply_stream(video[:, :3], params[:, :NUM_PARAMS]),
                          _apply_stream(video[:, 3:], params[:, NUM_PARAMS:])], dim=1)
    return _apply_stream(video, params)


def _apply_stream(video: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """:func:`apply_deferred` on one stream: ``[B, 3, T, H, W]`` uint8 with ``[B, NUM_PARAMS]``."""
    host = params.detach().cpu() if params.device.type != "cpu" else params
    on_device = params.to(device=video.device, dtype=torch.float64, non_blocking=True)
    out = video
    # A clip without an affine run has the identity map there (A = I, P = 0: exact on integer pixels), and one
    # without hue or erasing is masked out of those stages, so one pass serves the whole batch whatever each
    # clip drew. Float64 intermediates make this ~2 GB of transient GPU memory for 24 clips of 16 x 224², freed
    # before the forward pass.
    if bool(host[:, RUN1].any()):
        out = _affine(out, on_device[:, RUN1_MATRIX], on_device[:, RUN1_MEAN_MAP])
    if bool(host[:, HUE].any()):
        shifted = _shift_hue(out, on_device[:, HUE_SHIFT], on_device[:, FLIPPED])
        out = torch.where(on_device[:, HUE].view(-1, 1, 1, 1, 1) > 0, shifted, out)
    if bool(host[:, RUN2].any()):
        out = _affine(out, on_device[:, RUN2_MATRIX], on_device[:, RUN2_MEAN_MAP])
    if bool(host[:, ERASE].any()):
        out = _erase(out, on_device[:, ERASE], on_device[:, ERASE_BOX], on_device[:, ERASE_FILL])
    return out.clone() if out is video else out


def _affine(video: torch.Tensor, matrix: torch.Tensor, mean_map: torch.Tensor) -> torch.Tensor:
    """``clip(A x + P m_t)`` truncated to uint8, per clip; ``m_t`` the input's mean colour of frame ``t``."""
    b, _, t, h, w = video.shape
    matrix, mean_map = matrix.view(b, 3, 3), mean_map.view(b, 3, 3)
    # Exact integer sums times 1/n, as cv2.mean; float64 like the loader's offsets.
    means = video.sum(dim=(3, 4), dtype=torch.int64).double() * (1.0 / (h * w))  # [B, 3, T]
    offsets = mean_offsets(means.transpose(1, 2), mean_map).float().transpose(1, 2)  # [B, 3, T]
    a = matrix.float()  # cv2.transform rounds the matrix to float32
    x = video.double()  # exact, and what the float64 fused multiply-add needs anyway
    out = torch.empty_like(video)
    for i in range(3):  # as cv2.transform's SIMD loop: fused multiply-adds onto the offset, channel 2 first
        y = offsets[:, i].view(b, t, 1, 1).expand(b, t, h, w)
        for c in (2, 1, 0):
            y = _fma(x[:, c], a[:, i, c].view(b, 1, 1, 1), y)
        out[:, i] = y.clamp_(0, 255)  # the copy into uint8 truncates, as the loader's cast
    return out


def rgb_to_hsv_u8(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's 8-bit ``COLOR_RGB2HSV`` (H in [0, 180)), channels at dim 1; returns int32 ``h, s, v``."""
    r, g, b = (rgb[:, c].to(torch.int32) for c in range(3))
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    s_table, h_table = _hsv_tables(rgb.device)
    half = 1 << (_HSV_SHIFT - 1)
    s = torch.div(diff * s_table[v] + half, 1 << _HSV_SHIFT, rounding_mode="floor")
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = torch.div(h * h_table[diff] + half, 1 << _HSV_SHIFT, rounding_mode="floor")  # an arithmetic shift
    h = torch.where(h < 0, h + 180, h)
    return h, s, v


def hsv_to_rgb_u8(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor,
                  simd: Optional[torch.Tensor] = None) -> torch.Tensor:
    """OpenCV's 8-bit ``COLOR_HSV2RGB`` (H in [0, 180)) from integer ``h, s, v``; returns uint8 with channels at dim 1.

    OpenCV converts most of each image row with SIMD code that truncates the final ``x * 255`` and the rest of
    the row (fewer pixels than one SIMD block) with scalar code that rounds it; both compute ``1 - s f`` and
    ``1 - s (1 - f)`` with fused multiply-adds on x86-64. ``simd``: a boolean mask broadcastable to ``h``, true
    where OpenCV's SIMD loop converts the pixel (:func:`opencv_simd_columns`); ``None``: everywhere.
    """
    hue = h.float() * _F32_HUE_SCALE
    sector = torch.floor(hue)  # 0..5: H < 180
    frac = hue - sector
    sat = s.float() * _F32_INV_255
    val = v.float() * _F32_INV_255
    p = val * (1.0 - sat)
    q = val * _fma(-sat, frac, 1.0)
    t = val * _fma(-sat, 1.0 - frac, 1.0)
    in_sector = [sector == sector_no for sector_no in range(6)]
    rgb = torch.empty((h.shape[0], 3, *h.shape[1:]), dtype=torch.uint8, device=h.device)
    for channel, picks in enumerate(zip(*_SECTOR_RGB)):  # r, g, b: which of (v, p, q, t) each sector takes
        out = val
        for sector_no, pick in enumerate(picks):
            if pick:
                out = torch.where(in_sector[sector_no], (val, p, q, t)[pick], out)
        out = out * 255.0  # s = 0 needs no branch: p = q = t = v there
        out = torch.trunc(out) if simd is None else torch.where(simd, torch.trunc(out), torch.round(out))
        rgb[:, channel] = out.clamp_(0, 255)  # the copy into uint8 is the cast
    return rgb


def opencv_simd_columns(width: int) -> int:
    """How many leading pixels of a ``width``-pixel row OpenCV's 8-bit HSV -> RGB converts with its SIMD loop on
    this machine (32-pixel blocks with AVX2, 16 with SSE4.1 or NEON). Measured, not assumed: a row of a colour
    whose green is 0.996 truncates to 0 in the SIMD loop and rounds to 1 in the scalar tail."""
    import cv2

    probe = np.zeros((1, width, 3), np.uint8)
    probe[..., 1] = probe[..., 2] = 1  # H 0, S 1, V 1
    green = cv2.cvtColor(probe, cv2.COLOR_HSV2RGB)[0, :, 1]
    return int((green == 0).sum())


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | float) -> torch.Tensor:
    """``a * b + c`` rounded once to float32, as a fused multiply-add: the float64 product of two float32 values
    is exact, so only the sum rounds before the final cast (a second rounding that the tests show never matters
    for these operands)."""
    if isinstance(c, torch.Tensor):  # one kernel; fused or not, the float64 product is exact
        return torch.addcmul(c.double(), a.double(), b.double()).float()
    return (a.double() * b.double() + c).float()  # a Python constant: no tensor made, no copy to the device


def _shift_hue(video: torch.Tensor, shift: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """The loader's hue op: H -> (H + shift) mod 180 in OpenCV's 8-bit HSV, per clip. The loader shifted the hue
    before flipping, so in a flipped clip OpenCV's SIMD columns are the last ones."""
    b, width = video.shape[0], video.shape[-1]
    h, s, v = rgb_to_hsv_u8(video)
    h = torch.remainder(h + shift.to(torch.int32).view(b, 1, 1, 1), 180)  # Python's sign convention, as the LUT
    n = opencv_simd_columns(width)
    if n >= width:  # the whole row in the SIMD loop (224 px with AVX2): nothing to mirror
        return hsv_to_rgb_u8(h, s, v)
    columns = torch.arange(width, device=video.device)
    simd = torch.where(flipped.view(b, 1, 1, 1) > 0, columns >= width - n, columns < n)  # [B, 1, 1, W]
    return hsv_to_rgb_u8(h, s, v, simd=simd)


def _erase(video: torch.Tensor, flag: torch.Tensor, box: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    b, _, _, h, w = video.shape
    top, left, height, width = (box[:, i].view(b, 1, 1) for i in range(4))
    rows = torch.arange(h, device=video.device, dtype=torch.float64).view(1, h, 1)
    cols = torch.arange(w, device=video.device, dtype=torch.float64).view(1, 1, w)
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width) & (flag.view(b, 1, 1) > 0)
    filled = fill.to(torch.uint8).view(b, 1, 1, 1, 1).expand_as(video)
    return torch.where(inside.view(b, 1, 1, h, w), filled, video)


def _hsv_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's 8-bit RGB -> HSV reciprocal tables, round(255 * 2^12 / i) and round(180 * 2^12 / (6 i)), entry 0
    zero; made on ``device`` (float64 division and round-half-even as OpenCV's table setup) so nothing is copied."""
    i = torch.arange(256, device=device, dtype=torch.float64)
    s_table = torch.round((255 << _HSV_SHIFT) / i).to(torch.int32)
    h_table = torch.round((180 << _HSV_SHIFT) / (6.0 * i)).to(torch.int32)
    s_table[0] = h_table[0] = 0  # 1/0 would be inf: diff = 0 means grey, where OpenCV's tables hold 0
    return s_table, h_table
