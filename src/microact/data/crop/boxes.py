"""Pure box arithmetic for the static per-video person crop (SEED.md §5.1, §12 row 9).

Boxes are ``[x1, y1, x2, y2]`` in pixels. Detector boxes are floats; the final crop box is integers with an
exclusive end (the crop is ``frame[y1:y2, x1:x2]``), so its size is ``(x2 - x1, y2 - y1)``.

The seed's rule, step by step, and where microact differs:

1. union of the per-frame boxes over the sampled frames (the seed unites over all frames);
2. margins ``(x0, y0, x1, y1) = (-60, -100, +80, +60)`` px *at 1080p*; microact scales them by
   ``frame_height / 1080`` so the same head room is kept on smaller videos (the seed's videos were 1080p);
3. clamp to the image;
4. if ``w / h < min_aspect``: pad both sides by ``int((min_aspect * h - w) / 2)``. The seed clamps after
   padding, which can leave the ratio below ``min_aspect`` at an image border; microact instead shifts the
   padded box back inside the image when the image is wide enough, so the ratio holds whenever possible
   (the box only gets clipped when the image itself is too narrow);
5. even width and height (H.264 with yuv420p needs them), shrinking by one pixel at most; then, with the
   shift, the width grows by the pixel or two that step 4's ``int()`` and this rounding can cost the ratio.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

SEED_HEIGHT = 1080  # the margins are given in pixels of a 1080p frame


def union_boxes(boxes: Iterable[Sequence[float]]) -> Optional[list[float]]:
    """Smallest box containing every box (``None`` when there is none)."""
    result = None
    for b in boxes:
        x1, y1, x2, y2 = (float(v) for v in b[:4])
        if result is None:
            result = [x1, y1, x2, y2]
        else:
            result = [min(result[0], x1), min(result[1], y1), max(result[2], x2), max(result[3], y2)]
    return result


def scale_margins(margins: Sequence[float], frame_height: int) -> tuple[float, float, float, float]:
    """Margins given at 1080p, scaled to a frame of ``frame_height`` pixels."""
    f = frame_height / SEED_HEIGHT
    return tuple(float(m) * f for m in margins)  # type: ignore[return-value]


def apply_margins(box: Sequence[float], margins: Sequence[float], width: int, height: int) -> list[float]:
    """Add ``(x0, y0, x1, y1)`` offsets to the box edges and clamp to ``[0, width] x [0, height]``."""
    x1, y1, x2, y2 = box[:4]
    mx0, my0, mx1, my1 = margins
    return [min(max(x1 + mx0, 0.0), width), min(max(y1 + my0, 0.0), height),
            min(max(x2 + mx1, 0.0), width), min(max(y2 + my1, 0.0), height)]


def pad_to_aspect(box: Sequence[float], min_aspect: float, width: int, height: int, shift: bool = True) -> list[float]:
    """Widen the box so that ``w / h >= min_aspect``: both sides by ``int((min_aspect * h - w) / 2)``.

    With ``shift=True`` a box pushed past an image border is moved back inside (keeping its width) when the
    image is wide enough; with ``shift=False`` it is clamped like the seed, which can leave ``w/h`` short.
    """
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    w, h = x2 - x1, y2 - y1
    if h <= 0 or w / h >= min_aspect:
        return [x1, y1, x2, y2]
    pad = int((min_aspect * h - w) / 2)
    x1, x2 = x1 - pad, x2 + pad
    if shift:
        if x1 < 0:
            x2, x1 = x2 - x1, 0.0
        if x2 > width:
            x1, x2 = x1 - (x2 - width), float(width)
    return [max(x1, 0.0), y1, min(x2, float(width)), y2]


def to_even_int_box(box: Sequence[float], width: int, height: int) -> list[int]:
    """Integer box (outward rounding, clamped) whose width and height are even and at least 2."""
    x1 = max(0, int(math.floor(box[0])))
    y1 = max(0, int(math.floor(box[1])))
    x2 = min(width, int(math.ceil(box[2])))
    y2 = min(height, int(math.ceil(box[3])))
    x2, y2 = max(x2, min(x1 + 2, width)), max(y2, min(y1 + 2, height))
    if (x2 - x1) % 2:
        x2 = x2 + 1 if x2 < width else x2 - 1
    if (y2 - y1) % 2:
        y2 = y2 + 1 if y2 < height else y2 - 1
    return [x1, y1, x2, y2]


def crop_box(raw_box: Optional[Sequence[float]], width: int, height: int,
             margins: Sequence[float] = (-60, -100, 80, 60), min_aspect: float = 0.6, shift: bool = True) -> list[int]:
    """The final static crop box from the detector's union box (full frame when ``raw_box`` is None).

    ``margins`` are at 1080p and scaled by ``height / 1080`` (see the module docstring).
    """
    if raw_box is None:
        return to_even_int_box([0, 0, width, height], width, height)
    box = apply_margins(raw_box, scale_margins(margins, height), width, height)
    box = pad_to_aspect(box, min_aspect, width, height, shift=shift)
    box = to_even_int_box(box, width, height)
    return widen_to_aspect(box, min_aspect, width) if shift else box


def widen_to_aspect(box: Sequence[int], min_aspect: float, width: int) -> list[int]:
    """Widen an even integer box by whole pixel pairs until ``w / h >= min_aspect``, moved inside the image.

    The padding's ``int()`` and the rounding to even integers can each leave the box a pixel or two short of
    the ratio; this makes it hold whenever the image is wide enough (else the box spans the even image width).
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    w, h = x2 - x1, y2 - y1
    need = math.ceil(min_aspect * h - 1e-9)
    need = min(need + need % 2, width - width % 2)  # even, and no wider than the image
    if w >= need:
        return [x1, y1, x2, y2]
    grow = need - w
    x1 -= grow // 2
    x2 += grow - grow // 2
    if x1 < 0:
        x1, x2 = 0, x2 - x1
    if x2 > width:
        x1, x2 = x1 - (x2 - width), width
    return [x1, y1, x2, y2]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def short_side_size(width: int, height: int, short_side: Optional[int]) -> tuple[int, int]:
    """Output size after downscaling so the short side is at most ``short_side`` (never upscales); even sizes."""
    if not short_side or min(width, height) <= short_side:
        return width - width % 2, height - height % 2
    f = short_side / min(width, height)
    w, h = int(round(width * f)), int(round(height * f))
    return max(2, w - w % 2), max(2, h - h % 2)
