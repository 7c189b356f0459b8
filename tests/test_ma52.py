"""MA-52 constants against the real annotation files shipped in shared/data/ma52."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from microact import ma52

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ma52"


def test_fine_to_coarse_ranges():
    expected = {0: range(0, 5), 1: range(5, 11), 2: range(11, 24), 3: range(24, 32), 4: range(32, 38),
                5: range(38, 48), 6: range(48, 52)}
    for coarse, fines in expected.items():
        assert list(ma52.coarse_members(coarse)) == list(fines)
        for f in fines:
            assert ma52.FINE_TO_COARSE[f] == coarse
    assert ma52.fine_to_coarse(9) == 1
    assert ma52.fine_to_coarse([0, 51]).tolist() == [0, 6]
    assert ma52.fine_to_coarse(torch.tensor([38, 24])).tolist() == [5, 3]
    assert ma52.fine_to_coarse(np.array([11])).tolist() == [2]


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data/ma52 is not beside this checkout")
def test_names_and_counts_match_the_official_files():
    lines = (SHARED / "label_name.txt").read_text().splitlines()
    names = [line.split("\t", 1)[1].strip() for line in lines if line.strip()]
    assert tuple(names) == ma52.FINE_NAMES
    counts = Counter(int(line.split()[1]) for line in (SHARED / "train_list_videos.txt").read_text().splitlines()
                     if line.strip())
    assert tuple(counts[i] for i in range(52)) == ma52.TRAIN_CLASS_COUNTS
    for split, expected in (("train", ma52.NUM_TRAIN_VIDEOS), ("val", ma52.NUM_VAL_VIDEOS),
                            ("test", ma52.NUM_TEST_VIDEOS)):
        lines = (SHARED / f"{split}_list_videos.txt").read_text().splitlines()
        assert sum(1 for line in lines if line.strip()) == expected, split


def test_body_part_names_match_fine_groups():
    # Spot-check the semantics of the mapping with the names (SEED.md §11.2).
    assert ma52.COARSE_NAMES[ma52.fine_to_coarse(ma52.FINE_NAMES.index("nodding"))] == "Head"
    assert ma52.COARSE_NAMES[ma52.fine_to_coarse(ma52.FINE_NAMES.index("touching nose"))] == "Head-hand"
    assert ma52.COARSE_NAMES[ma52.fine_to_coarse(ma52.FINE_NAMES.index("shaking legs"))] == "Lower limb"
    assert ma52.COARSE_NAMES[ma52.fine_to_coarse(ma52.FINE_NAMES.index("scratching feet"))] == "Leg-hand"
