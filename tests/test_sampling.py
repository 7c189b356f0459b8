"""Temporal sampling against plain re-statements of SEED.md §5.3 and VIDEOMAE.md §5.2."""
from __future__ import annotations

import numpy as np
import pytest

from microact.data import uniform_sample
from microact.data.sampling import sample_frames


def ref_uniform_test(F, L, n):
    seg = (F - 1) / L
    # builtin round() is half-to-even like NumPy's
    return [round(seg * i) + int(seg / (n + 1) * (k + 1)) for k in range(n) for i in range(L)]


@pytest.mark.parametrize("F", [1, 2, 9, 16, 17, 33, 100, 120, 301])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_uniform_test_mode_matches_formula(F, n):
    out = uniform_sample(F, 16, num_clips=n, test_mode=True)
    assert out.dtype == np.int64 and out.shape == (16 * n,)
    assert out.tolist() == ref_uniform_test(F, 16, n)
    assert out.min() >= 0 and out.max() <= F - 1


def test_uniform_worked_values():
    # F = 100: seg = 6.1875; 3 clips at int(1.546875 * k) = 1, 3, 4 frames into each segment
    out = uniform_sample(100, 16, num_clips=3, test_mode=True).reshape(3, 16)
    starts = [0, 6, 12, 19, 25, 31, 37, 43, 50, 56, 62, 68, 74, 80, 87, 93]
    assert out.tolist() == [[s + 1 for s in starts], [s + 3 for s in starts], [s + 4 for s in starts]]
    # F = 9: seg = 0.5, starts use half-to-even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2); d = 0.25 -> int 0
    assert uniform_sample(9, 16, test_mode=True).tolist() == [0, 0, 1, 2, 2, 2, 3, 4, 4, 4, 5, 6, 6, 6, 7, 8]


def test_uniform_train_draws_cover_inclusive_segments():
    F, L = 50, 16
    seg = (F - 1) / L
    lo = np.array([round(seg * i) for i in range(L)])
    hi = np.array([round(seg * (i + 1)) for i in range(L)])
    rng = np.random.default_rng(0)
    draws = np.stack([uniform_sample(F, L, rng=rng) for _ in range(400)])
    assert ((draws >= lo) & (draws <= hi)).all()
    assert (draws.min(0) == lo).all() and (draws.max(0) == hi).all()  # both ends are reachable


def test_uniform_train_reproducible_and_short_videos():
    a = uniform_sample(80, 16, rng=np.random.default_rng(3))
    b = uniform_sample(80, 16, rng=np.random.default_rng(3))
    assert a.tolist() == b.tolist()
    assert uniform_sample(1, 16, rng=np.random.default_rng(0)).tolist() == [0] * 16
    short = uniform_sample(4, 16, rng=np.random.default_rng(0))
    assert short.max() <= 3 and (np.diff(short) >= 0).all()  # repeats, never loops back
    assert uniform_sample(5, 16, num_clips=2, rng=np.random.default_rng(0)).shape == (32,)
    with pytest.raises(ValueError):
        uniform_sample(0, 16)


def test_sample_frames_test_mode():
    # 16x4, 3 clips, 100 frames: window 61, max_offset 39 -> offsets round(0, 19.5, 39) = 0, 20, 39
    out = sample_frames(100, 16, 4, num_clips=3, test_mode=True).reshape(3, 16)
    for row, off in zip(out, [0, 20, 39]):
        assert row.tolist() == [off + 4 * j for j in range(16)]
    one = sample_frames(100, 16, 4, num_clips=1, test_mode=True)
    assert one.tolist() == [19 + 4 * j for j in range(16)]  # max_offset // 2
    looped = sample_frames(50, 16, 4, num_clips=1, test_mode=True)
    assert looped.tolist() == [(4 * j) % 50 for j in range(16)]
    last = sample_frames(50, 16, 4, num_clips=1, test_mode=True, out_of_bound="repeat_last")
    assert last.tolist() == [min(4 * j, 48) for j in range(16)]


def test_sample_frames_train_mode():
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = sample_frames(300, 16, 4, num_clips=2, rng=rng).reshape(2, 16)
        part = (300 - 64 + 1) // 2
        for k, row in enumerate(out):
            assert k * part <= row[0] < (k + 1) * part
            assert (np.diff(row) == 4).all()
    short = sample_frames(30, 16, 4, num_clips=1, rng=rng)  # window 64 > 30: offset 0, indices loop
    assert short.tolist() == [(4 * j) % 30 for j in range(16)]
