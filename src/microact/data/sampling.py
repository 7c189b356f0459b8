"""Temporal sampling: which frame indices a clip is made of.

``uniform_sample`` is the seed's ``UniformSample`` (SEED.md §5.3), the default for every recipe;
``sample_frames`` follows mmaction2's ``SampleFrames`` (VIDEOMAE.md §5.2) for other recipes.
"""
from __future__ import annotations

from typing import Literal, Optional

import numpy as np


def _check(num_frames: int, clip_len: int, num_clips: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if clip_len < 1 or num_clips < 1:
        raise ValueError(f"clip_len and num_clips must be >= 1, got {clip_len}, {num_clips}")


def uniform_sample(num_frames: int, clip_len: int, num_clips: int = 1, test_mode: bool = False,
                   rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Segment-based sampling of the seed (SEED.md §5.3).

    The video is cut into ``clip_len`` segments of ``seg = (num_frames - 1) / clip_len`` frames. Training
    draws one frame per segment uniformly from ``[round(seg*i), round(seg*(i+1))]`` (both ends inclusive);
    testing takes ``round(seg*i) + int(seg/(num_clips+1) * (k+1))`` for clip ``k``. ``round`` is NumPy's
    half-to-even. Short videos repeat indices (no looping).

    Args:
        num_frames: verified number of frames of the video.
        clip_len: frames per clip (16 in the seed).
        num_clips: clips per video (1 for training; 2 for val, 3 for test in the seed).
        test_mode: deterministic offsets instead of random draws.
        rng: random generator for training draws (``None``: a fresh ``default_rng()``).

    Returns:
        int64 indices ``[num_clips * clip_len]``, clip-major.
    """
    _check(num_frames, clip_len, num_clips)
    seg = (num_frames - 1) / clip_len
    starts = np.round(seg * np.arange(clip_len)).astype(np.int64)
    if test_mode:
        step = seg / (num_clips + 1)
        offsets = np.array([int(step * (k + 1)) for k in range(num_clips)], dtype=np.int64)  # int() truncates
        return (offsets[:, None] + starts[None, :]).reshape(-1)  # [num_clips, clip_len] -> clip-major flat
    rng = np.random.default_rng() if rng is None else rng
    ends = np.round(seg * np.arange(1, clip_len + 1)).astype(np.int64)
    # integers(low, high + 1): the seed draws with an inclusive upper end
    return np.concatenate([rng.integers(starts, ends + 1) for _ in range(num_clips)]).astype(np.int64)


def sample_frames(num_frames: int, clip_len: int, frame_interval: int = 1, num_clips: int = 1,
                  test_mode: bool = False, rng: Optional[np.random.Generator] = None,
                  out_of_bound: Literal["loop", "repeat_last"] = "loop") -> np.ndarray:
    """mmaction2 ``SampleFrames`` semantics (VIDEOMAE.md §5.2): clips of ``clip_len`` frames, ``frame_interval`` apart.

    Training: window ``clip_len * frame_interval``; clip offsets spread over ``num_clips`` equal parts with a
    random offset inside each part (or sorted random / evenly rounded offsets when the video is short).
    Testing: window ``(clip_len - 1) * frame_interval + 1``; offsets ``round(k * max_offset / (num_clips - 1))``,
    or ``max_offset // 2`` for one clip. Indices past the end wrap (``loop``) or repeat the clip's last valid
    index (``repeat_last``).

    Returns:
        int64 indices ``[num_clips * clip_len]``, clip-major.
    """
    _check(num_frames, clip_len, num_clips)
    if out_of_bound not in ("loop", "repeat_last"):
        raise ValueError(f"out_of_bound must be 'loop' or 'repeat_last', got {out_of_bound!r}")
    rng = np.random.default_rng() if rng is None else rng
    if test_mode:
        window = (clip_len - 1) * frame_interval + 1
        max_offset = max(num_frames - window, 0)
        if num_clips > 1:
            offsets = np.round(np.arange(num_clips) * (max_offset / (num_clips - 1)))
        else:
            offsets = np.array([max_offset // 2])
    else:
        window = clip_len * frame_interval
        part = (num_frames - window + 1) // num_clips
        if part > 0:
            offsets = np.arange(num_clips) * part + rng.integers(0, part, size=num_clips)
        elif num_frames > max(num_clips, window):
            offsets = np.sort(rng.integers(0, num_frames - window + 1, size=num_clips))
        elif part == 0:
            offsets = np.round(np.arange(num_clips) * ((num_frames - window + 1) / num_clips))
        else:
            offsets = np.zeros(num_clips)
    inds = offsets.astype(np.int64)[:, None] + np.arange(clip_len, dtype=np.int64)[None, :] * frame_interval
    # inds: [num_clips, clip_len]
    if out_of_bound == "loop":
        inds = inds % num_frames
    else:
        valid = inds < num_frames
        last = np.max(np.where(valid, inds, 0), axis=1, keepdims=True)  # last in-range index of each clip
        inds = np.where(valid, inds, last)
    return inds.reshape(-1)
