"""MA-52 constants: the 52 fine actions, the 7 body parts and the fixed fine-to-coarse map.

Everything that needs a class name, a body-part id or the long-tail class distribution imports it
from here, so the mapping exists exactly once (SEED.md §11).
"""
from __future__ import annotations


NUM_FINE = 52
NUM_COARSE = 7

FINE_NAMES: tuple[str, ...] = (
    "shaking body", "sitting straightly", "shrugging", "turning around", "rising up",  # 0-4 body
    "bowing head", "head up", "tilting head", "turning head", "nodding", "shaking head",  # 5-10 head
    "scratching arms", "playing objects", "putting hands together", "rubbing hands",  # 11-23 upper limb
    "pointing oneself", "clenching fist", "stretching arms", "retracting arms", "waving",
    "spreading hands", "hands touching fingers", "other finger movements", "illustrative gestures",
    "shaking legs", "curling legs", "spread legs", "closing legs", "crossing legs",  # 24-31 lower limb
    "stretching feet", "retracting feet", "tiptoe",
    "scratching or touching neck", "scratching or touching chest",  # 32-37 body-hand
    "scratching or touching back", "scratching or touching shoulder", "arms akimbo", "crossing arms",
    "playing or tidying hair", "scratching or touching hindbrain",  # 38-47 head-hand
    "scratching or touching forehead", "scratching or touching face", "rubbing eyes", "touching nose",
    "touching ears", "covering face", "covering mouth", "pushing glasses",
    "patting legs", "touching legs", "scratching legs", "scratching feet",  # 48-51 leg-hand
)

COARSE_NAMES: tuple[str, ...] = ("Body", "Head", "Upper limb", "Lower limb", "Body-hand", "Head-hand", "Leg-hand")

# First fine id of each body part; the parts are contiguous id ranges (SEED.md §11.3).
_COARSE_STARTS = (0, 5, 11, 24, 32, 38, 48, NUM_FINE)

FINE_TO_COARSE: tuple[int, ...] = tuple(
    coarse for coarse in range(NUM_COARSE) for _ in range(_COARSE_STARTS[coarse], _COARSE_STARTS[coarse + 1])
)

# Clips per fine class in the official train list: the long tail (1,283 "nodding" vs 6 "covering face").
TRAIN_CLASS_COUNTS: tuple[int, ...] = (
    309, 150, 20, 9, 156, 337, 242, 456, 962, 1283, 1193, 227, 112, 95, 42, 82, 76, 355, 87, 277, 147, 356, 373,
    397, 238, 66, 92, 97, 60, 231, 259, 398, 63, 82, 53, 33, 43, 43, 89, 82, 58, 126, 66, 147, 52, 6, 25, 68, 421,
    497, 92, 20,
)

# Videos in the official lists; train + val is what the seed's best recipe trains on for 42 epochs.
NUM_TRAIN_VIDEOS = sum(TRAIN_CLASS_COUNTS)  # 11,250
NUM_VAL_VIDEOS = 5_586
NUM_TEST_VIDEOS = 5_586
SEED_BEST_RECIPE_CLIP_PASSES = 42 * (NUM_TRAIN_VIDEOS + NUM_VAL_VIDEOS)  # 707,112 (SEED.md §6, row 6)

assert len(FINE_NAMES) == NUM_FINE and len(FINE_TO_COARSE) == NUM_FINE and len(TRAIN_CLASS_COUNTS) == NUM_FINE


def fine_to_coarse(labels):
    """Map fine ids (int, sequence, numpy array or torch tensor) to body-part ids with g(·)."""
    from microact.taxonomy import MA52  # built from this module's tables

    return MA52.coarse_of(labels)


def coarse_members(coarse: int) -> range:
    """Fine ids belonging to body part ``coarse``."""
    return range(_COARSE_STARTS[coarse], _COARSE_STARTS[coarse + 1])
