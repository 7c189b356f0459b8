"""A synthetic MA-52-style dataset: rendered seated people doing subtle fine actions, as real H.264 clips.

Every clip shows one frontal, seated, cartoon-shaded person (face with eyes, brows, nose, mouth, hair and
ears; neck, torso, arms, hands, thighs, shins, feet; a chair) in front of a static cluttered background.
The person performs one of MA-52's 52 fine actions as a small motion of the right body part: a few pixels
at 256x192, with per-clip variation in size, position, colours, speed, amplitude, phase, start time and a
little global jitter and sensor noise. Labels are MA-52 fine ids, so the whole toolkit (coarse mapping,
metrics, submissions) runs unchanged on it.

Class choice: ``num_classes`` classes are taken round-robin over the 7 body parts (Body, Head, Upper limb,
Lower limb, Body-hand, Head-hand, Leg-hand), each part contributing its classes in the order of
``PART_ORDER`` (the most visually distinct first). With the default 12 that is
``[0, 9, 19, 24, 36, 43, 48, 4, 10, 17, 31, 37]``: shaking body, nodding, waving, shaking legs, arms
akimbo, touching nose, patting legs, rising up, shaking head, stretching arms, tiptoe, crossing arms.

Splits: per class, clips are shuffled and cut into test / val / train by the requested fractions
(train keeps at least one clip per class). Like MA-52 (SEED.md §11.1) the splits are *not*
subject-disjoint: a subject (same appearance, ``SSSS`` prefix of the file name) appears in several
splits. Test lists keep the real labels so a demo can score the test set.

Determinism: each clip draws from its own ``SeedSequence((seed, clip_index))`` and x264 runs with one
thread, so the same seed writes byte-identical files whatever the number of worker processes.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from microact import ma52
from microact.errors import MicroactError

SHIFT = 4  # cv2 sub-pixel bits: coordinates are drawn at 1/16 px
_ONE = 1 << SHIFT

# Per body part, its fine ids in the order they are chosen (most distinct motions first).
PART_ORDER: tuple[tuple[int, ...], ...] = (
    (0, 4, 2, 1, 3),  # Body
    (9, 10, 7, 5, 6, 8),  # Head
    (19, 17, 16, 20, 15, 13, 14, 18, 11, 12, 21, 22, 23),  # Upper limb
    (24, 31, 28, 29, 30, 26, 27, 25),  # Lower limb
    (36, 37, 32, 33, 35, 34),  # Body-hand
    (43, 40, 44, 38, 42, 46, 41, 45, 39, 47),  # Head-hand
    (48, 49, 50, 51),  # Leg-hand
)


class SynthError(MicroactError):
    """Invalid synthetic-dataset parameters."""


def choose_classes(num_classes: int) -> list[int]:
    """MA-52 fine ids for a ``num_classes``-class dataset: round-robin over the 7 body parts (deterministic)."""
    if not 1 <= num_classes <= ma52.NUM_FINE:
        raise SynthError(f"--num-classes must be in 1..{ma52.NUM_FINE}, got {num_classes}")
    chosen: list[int] = []
    depth = 0
    while len(chosen) < num_classes:
        for part in PART_ORDER:
            if depth < len(part) and len(chosen) < num_classes:
                chosen.append(part[depth])
        depth += 1
    return chosen


def class_counts(classes: Sequence[int], clips_per_class: int, long_tail: bool) -> list[int]:
    """Clips per chosen class: ``clips_per_class`` each, or MA-52's train counts scaled to that mean (min 2)."""
    if not long_tail:
        return [clips_per_class] * len(classes)
    raw = np.array([ma52.TRAIN_CLASS_COUNTS[c] for c in classes], dtype=np.float64)
    scaled = raw * (clips_per_class * len(classes) / raw.sum())
    return [max(2, int(round(x))) for x in scaled]


# --------------------------------------------------------------------------------------------
# Appearance and motion parameters
# --------------------------------------------------------------------------------------------


@dataclass
class Subject:
    """What stays fixed for one person across their clips."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    shoes: tuple[int, int, int]
    chair: tuple[int, int, int]
    scale: float  # body unit relative to the default
    right_handed: bool


def make_subject(rng: np.random.Generator, variation: float) -> Subject:
    skins = np.array([[236, 192, 160], [224, 172, 130], [198, 140, 100], [160, 110, 80], [110, 75, 55]], float)
    base = skins[rng.integers(len(skins))] if variation > 0 else skins[1]

    def colour(lo, hi):
        c = rng.uniform(lo, hi, 3) if variation > 0 else np.full(3, (lo + hi) / 2)
        return tuple(int(v) for v in c)

    skin = tuple(int(np.clip(v + variation * rng.normal(0, 8), 0, 255)) for v in base)
    return Subject(
        skin=skin, hair=colour(10, 90), shirt=colour(30, 230), trousers=colour(20, 140), shoes=colour(10, 60),
        chair=colour(60, 160), scale=float(1.0 + variation * rng.uniform(-0.12, 0.1)),
        right_handed=bool(rng.random() < 0.8 or variation == 0),
    )


def _smooth_bump(t: np.ndarray, start: float, rise: float, hold: float) -> np.ndarray:
    """0 -> 1 (cosine ramp of length ``rise``) -> hold -> 1 -> 0; t in clip fractions."""
    def ramp(x):
        return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))

    up = ramp((t - start) / rise)
    down = ramp((t - start - rise - hold) / rise)
    return up * (1.0 - down)


def _ramp(t: np.ndarray, start: float, rise: float) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.pi * np.clip((t - start) / rise, 0.0, 1.0))


# Pose channels: every value is an offset from the resting pose, in body units ``u`` unless noted.
_CHANNELS = (
    "bx", "by", "sway", "shoulder_up", "yaw_body", "slouch",  # whole body / torso
    "pitch", "yaw", "roll", "head_dy",  # head (pitch/yaw in [-1, 1] of the feature shift; roll in degrees)
    "hand_w_a", "hand_x_a", "hand_y_a", "fist_a",  # active hand: blend weight to target, target offset, fist
    "hand_w_b", "hand_x_b", "hand_y_b", "fist_b",  # other hand
    "knee_a", "ankle_x_a", "ankle_y_a", "heel_a", "foot_a",  # active leg
    "knee_b", "ankle_x_b", "ankle_y_b", "heel_b", "foot_b",  # other leg
)


def _motion(label: int, t: np.ndarray, rng: np.random.Generator, amp: float) -> tuple[dict, dict]:
    """Pose-channel trajectories ``{channel: [T]}`` and hand targets for one fine action.

    ``t`` is time in clip fractions [0, 1); ``amp`` scales every amplitude (per-clip variation).
    Returns (channels, targets) where targets maps "a"/"b" to a named target for the hand.
    """
    n = len(t)
    ch = {k: np.zeros(n) for k in _CHANNELS}
    tg: dict[str, str] = {}
    freq = rng.uniform(2.2, 3.2)  # cycles per clip for oscillations
    phase = rng.uniform(0, 2 * np.pi)
    start = rng.uniform(0.0, 0.2)
    osc = np.sin(2 * np.pi * freq * t + phase) * _ramp(t, start, 0.1)
    fast = np.sin(2 * np.pi * 2.2 * freq * t + phase) * _ramp(t, start, 0.1)
    bump = _smooth_bump(t, start, rng.uniform(0.2, 0.28), rng.uniform(0.25, 0.4))
    hold = _ramp(t, start, rng.uniform(0.25, 0.35))  # goes and stays
    side = 1.0 if rng.random() < 0.5 else -1.0

    def reach(target: str, w=None, hand="a"):
        ch[f"hand_w_{hand}"] = bump if w is None else w
        tg[hand] = target

    if label == 0:  # shaking body: the upper body sways sideways
        ch["sway"] = 0.28 * amp * osc
    elif label == 1:  # sitting straightly: slouched, then straightens up
        ch["slouch"] = 0.45 * amp * (1 - hold)
    elif label == 2:  # shrugging: shoulders up (twice), head sinks a little
        s = np.clip(np.sin(2 * np.pi * 2 * (t - start)), 0, None) * _ramp(t, start, 0.05)
        ch["shoulder_up"] = 0.35 * amp * s
        ch["head_dy"] = 0.15 * amp * s
    elif label == 3:  # turning around: torso and head turn to one side
        ch["yaw_body"] = side * 0.6 * amp * hold
        ch["yaw"] = side * 0.9 * hold
    elif label == 4:  # rising up: the body lifts off the chair and sits back
        ch["by"] = -0.6 * amp * bump
        ch["slouch"] = -0.1 * bump
    elif label == 5:  # bowing head: pitch down, held
        ch["pitch"] = 0.9 * bump
        ch["head_dy"] = 0.25 * amp * bump
    elif label == 6:  # head up: pitch up, held
        ch["pitch"] = -0.9 * bump
        ch["head_dy"] = -0.12 * amp * bump
    elif label == 7:  # tilting head: roll to one side
        ch["roll"] = side * 18 * amp * bump
    elif label == 8:  # turning head: yaw to one side, held
        ch["yaw"] = side * 0.95 * bump
    elif label == 9:  # nodding: pitch oscillation
        ch["pitch"] = 0.7 * np.abs(osc) * np.sign(osc + 0.6)
        ch["head_dy"] = 0.15 * amp * osc
    elif label == 10:  # shaking head: yaw oscillation
        ch["yaw"] = 0.8 * osc
    elif label == 11:  # scratching arms: hand on the other forearm, rubbing
        reach("other_forearm")
        ch["hand_x_a"] = 0.12 * amp * fast
    elif label == 12:  # playing objects: hands together in the lap, fiddling
        reach("lap_center"); reach("lap_center", hand="b")
        ch["hand_y_a"] = 0.12 * amp * fast; ch["hand_x_b"] = 0.1 * amp * osc
    elif label == 13:  # putting hands together in front of the chest
        reach("chest_front"); reach("chest_front", hand="b")
    elif label == 14:  # rubbing hands: together, opposite small oscillation
        reach("lap_high", hold); reach("lap_high", hold, hand="b")
        ch["hand_x_a"] = 0.14 * amp * fast; ch["hand_x_b"] = -0.14 * amp * fast
    elif label == 15:  # pointing oneself: index to the chest
        reach("chest")
        ch["fist_a"] = 0.4 * bump
    elif label == 16:  # clenching fist: both hands shrink and grow
        ch["fist_a"] = 0.45 * amp * (0.5 + 0.5 * osc) * _ramp(t, start, 0.1)
        ch["fist_b"] = ch["fist_a"]
        reach("lap_forward", 0.6 * hold); reach("lap_forward", 0.6 * hold, hand="b")
    elif label == 17:  # stretching arms: both arms extend sideways
        reach("stretch_out", hold); reach("stretch_out", hold, hand="b")
    elif label == 18:  # retracting arms: start extended, pull back in
        reach("stretch_out", 1 - hold); reach("stretch_out", 1 - hold, hand="b")
    elif label == 19:  # waving: forearm up, hand oscillates sideways
        reach("wave", hold)
        ch["hand_x_a"] = 0.35 * amp * fast * hold
    elif label == 20:  # spreading hands: hands move apart, palms up
        reach("spread", bump); reach("spread", bump, hand="b")
    elif label == 21:  # hands touching fingers: hands meet, small vertical tapping
        reach("chest_front", hold); reach("chest_front", hold, hand="b")
        ch["hand_y_a"] = 0.1 * amp * fast
    elif label == 22:  # other finger movements: one raised hand, fingers flicking
        reach("lap_high", hold)
        ch["fist_a"] = 0.35 * amp * np.abs(fast)
    elif label == 23:  # illustrative gestures: a hand circles in front of the chest
        reach("gesture", hold)
        ch["hand_x_a"] = 0.3 * amp * osc * hold
        ch["hand_y_a"] = 0.3 * amp * np.cos(2 * np.pi * freq * t + phase) * hold
    elif label == 24:  # shaking legs: knee and shin oscillate sideways
        ch["knee_a"] = 0.22 * amp * fast
        ch["ankle_x_a"] = 0.12 * amp * fast
    elif label == 25:  # curling legs: feet pulled up under the chair
        ch["ankle_y_a"] = -0.5 * amp * hold; ch["ankle_y_b"] = -0.5 * amp * hold
        ch["foot_a"] = -0.4 * hold; ch["foot_b"] = -0.4 * hold
    elif label == 26:  # spread legs: knees move apart
        ch["knee_a"] = 0.35 * amp * hold; ch["knee_b"] = 0.35 * amp * hold
        ch["ankle_x_a"] = 0.3 * amp * hold; ch["ankle_x_b"] = 0.3 * amp * hold
    elif label == 27:  # closing legs: apart at first, then together
        ch["knee_a"] = 0.35 * amp * (1 - hold); ch["knee_b"] = 0.35 * amp * (1 - hold)
        ch["ankle_x_a"] = 0.3 * amp * (1 - hold); ch["ankle_x_b"] = 0.3 * amp * (1 - hold)
    elif label == 28:  # crossing legs: one knee and ankle swing over the other leg
        ch["knee_a"] = -0.9 * amp * hold
        ch["ankle_x_a"] = -0.8 * amp * hold
        ch["ankle_y_a"] = -0.35 * amp * hold
    elif label == 29:  # stretching feet: feet slide forward (down, longer)
        ch["ankle_y_a"] = 0.3 * amp * hold; ch["ankle_y_b"] = 0.3 * amp * hold
        ch["foot_a"] = 0.5 * hold; ch["foot_b"] = 0.5 * hold
    elif label == 30:  # retracting feet: feet pulled back (up, shorter)
        ch["ankle_y_a"] = -0.3 * amp * hold; ch["ankle_y_b"] = -0.3 * amp * hold
        ch["foot_a"] = -0.5 * hold; ch["foot_b"] = -0.5 * hold
    elif label == 31:  # tiptoe: heels rise, repeatedly
        lift = (0.5 + 0.5 * osc) * _ramp(t, start, 0.1)
        ch["heel_a"] = 0.35 * amp * lift; ch["heel_b"] = 0.35 * amp * lift
    elif label == 32:
        reach("neck")
    elif label == 33:
        reach("chest"); ch["hand_y_a"] = 0.08 * amp * fast * bump
    elif label == 34:  # touching back: the hand disappears behind the torso
        reach("back")
    elif label == 35:
        reach("other_shoulder")
    elif label == 36:  # arms akimbo: both hands on the hips, elbows out
        reach("hip", hold); reach("hip", hold, hand="b")
    elif label == 37:  # crossing arms: wrists to the opposite elbows
        reach("cross", hold); reach("cross", hold, hand="b")
    elif 38 <= label <= 47:
        target = {38: "hair", 39: "hindbrain", 40: "forehead", 41: "cheek", 42: "eye", 43: "nose", 44: "ear",
                  45: "face", 46: "mouth", 47: "glasses"}[label]
        reach(target)
        if label == 45:
            reach("face", hand="b")
        if label in (38, 39, 42):  # rubbing / tidying: a small oscillation at the target
            ch["hand_x_a"] = 0.08 * amp * fast * bump
    elif label == 48:  # patting legs: hand on the thigh, bouncing
        reach("thigh", hold)
        ch["hand_y_a"] = 0.2 * amp * np.abs(fast) * hold
    elif label == 49:  # touching legs: hand slides to the knee and rests
        reach("knee", hold)
    elif label == 50:  # scratching legs: fast small sideways strokes on the thigh
        reach("thigh", hold)
        ch["hand_x_a"] = 0.1 * amp * np.sin(2 * np.pi * 3.5 * freq * t) * hold
    elif label == 51:  # scratching feet: leans down, hand to the ankle
        reach("ankle", bump)
        ch["slouch"] = 0.5 * bump
        ch["hand_x_a"] = 0.08 * amp * fast * bump
    else:  # pragma: no cover - choose_classes only returns 0..51
        raise SynthError(f"no motion for class {label}")
    return ch, tg


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _p(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _shade(c, f: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(v * f, 0, 255)) for v in c)


def _ellipse(img, cx, cy, ax, ay, angle, colour):
    cv2.ellipse(img, _p(cx, cy), _p(max(ax, 0.5), max(ay, 0.5)), float(angle), 0, 360, colour, -1, cv2.LINE_AA, SHIFT)


def _limb(img, a, b, width, colour):
    cv2.line(img, _p(*a), _p(*b), colour, max(1, int(round(width))), cv2.LINE_AA, SHIFT)


def _arm_elbow(shoulder: np.ndarray, wrist: np.ndarray, upper: float, fore: float, out: float) -> np.ndarray:
    """Two-bone IK: the elbow on the outer side (sign ``out``) of the shoulder-wrist line."""
    d = wrist - shoulder
    dist = float(np.hypot(*d))
    dist = min(max(dist, 1e-3), upper + fore - 1e-3)
    a = (upper ** 2 - fore ** 2 + dist ** 2) / (2 * dist)
    h = math.sqrt(max(upper ** 2 - a ** 2, 0.0))
    unit = d / max(float(np.hypot(*d)), 1e-3)
    normal = np.array([-unit[1], unit[0]])
    if normal[0] * out < 0:
        normal = -normal
    return shoulder + unit * a + normal * h


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A static cluttered room: smooth colour gradient, furniture-like blocks, shapes and fine texture."""
    base = rng.uniform(60, 200, 3)
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    tilt = rng.uniform(-0.25, 0.25, (2, 3))
    img = base[None, None, :] + gx[..., None] / width * 60 * tilt[0] + gy[..., None] / height * 60 * tilt[1]
    img = img.astype(np.float32)
    for _ in range(int(rng.integers(5, 10))):
        colour = tuple(float(v) for v in rng.uniform(30, 230, 3))
        x0, y0 = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        w, h = rng.uniform(0.05, 0.35) * width, rng.uniform(0.05, 0.4) * height
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), colour, -1)
        elif kind == 1:
            cv2.circle(img, (int(x0), int(y0)), int(min(w, h) / 2), colour, -1, cv2.LINE_AA)
        else:
            cv2.line(img, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    noise = cv2.resize(rng.normal(0, 12, (height // 8 + 1, width // 8 + 1, 3)).astype(np.float32), (width, height))
    img += noise + rng.normal(0, 3, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass
class Layout:
    """Where the figure sits in the frame (pixels) and its body unit."""

    cx: float
    hip_y: float
    u: float


def _targets(name: str, side: float, j: dict, u: float) -> np.ndarray:
    """Pixel position of a named hand target; ``side`` is the hand's side (+1 image right)."""
    hc, hr = j["head"], j["head_r"]
    sh_other = j["shoulder"][-side]
    table = {
        "nose": hc + [0.0, 0.15 * hr], "mouth": hc + [0.0, 0.5 * hr], "ear": hc + [side * 1.0 * hr, 0.0],
        "forehead": hc + [0.0, -0.6 * hr], "eye": hc + [side * 0.35 * hr, -0.12 * hr],
        "hair": hc + [side * 0.55 * hr, -1.0 * hr], "hindbrain": hc + [side * 0.95 * hr, -0.55 * hr],
        "cheek": hc + [side * 0.5 * hr, 0.3 * hr], "face": hc + [side * 0.3 * hr, 0.1 * hr],
        "glasses": hc + [0.0, -0.15 * hr],
        "neck": j["neck"] + [side * 0.1 * u, 0.05 * u], "chest": j["chest"] + [side * 0.15 * u, 0.0],
        "other_shoulder": sh_other + [side * 0.1 * u, 0.15 * u], "back": j["hip"][side] + [side * 0.2 * u, -1.2 * u],
        "hip": j["hip"][side] + [side * 0.3 * u, -0.35 * u], "cross": j["chest"] + [-side * 0.75 * u, 0.75 * u],
        "other_forearm": j["chest"] + [-side * 0.6 * u, 1.6 * u],
        "lap_center": j["lap"] + [side * 0.2 * u, -0.2 * u], "lap_high": j["lap"] + [side * 0.2 * u, -0.9 * u],
        "lap_forward": j["lap"] + [side * 0.75 * u, -0.3 * u], "chest_front": j["chest"] + [side * 0.18 * u, 0.9 * u],
        "stretch_out": j["shoulder"][side] + [side * 2.0 * u, 0.5 * u],
        "wave": j["shoulder"][side] + [side * 0.9 * u, -1.3 * u],
        "spread": j["lap"] + [side * 2.0 * u, -1.0 * u], "gesture": j["chest"] + [side * 0.6 * u, 0.4 * u],
        "thigh": j["knee"][side] + [-side * 0.25 * u, -0.45 * u], "knee": j["knee"][side] + [0.0, -0.05 * u],
        "ankle": j["ankle"][side] + [0.0, -0.2 * u],
    }
    return np.asarray(table[name], dtype=np.float64)


def render_clip(label: int, subject: Subject, rng: np.random.Generator, num_frames: int, height: int, width: int,
                variation: float = 1.0) -> tuple[np.ndarray, list[float]]:
    """Frames ``[T, H, W, 3]`` uint8 of ``subject`` doing fine action ``label`` and the union person box.

    The box is the union over frames of the drawn figure's extent (head top to feet, hands included),
    ``[x1, y1, x2, y2]`` in pixels.
    """
    v = variation
    u = height / 10.0 * subject.scale * (1 + v * rng.uniform(-0.05, 0.05))
    lay = Layout(cx=width / 2 + v * rng.uniform(-0.18, 0.18) * width,
                 hip_y=height * (0.62 + v * rng.uniform(-0.04, 0.04)), u=u)
    background = make_background(rng, height, width)
    t = (np.arange(num_frames) + rng.uniform(0, 1)) / num_frames * rng.uniform(0.85, 1.15)
    amp = 1.0 + v * rng.uniform(-0.2, 0.25)
    ch, targets = _motion(label, t, rng, amp)
    active = 1.0 if subject.right_handed else -1.0  # the active hand's image side (+1 = image right)
    jitter = v * rng.normal(0, 0.15, (num_frames, 2))
    jitter = np.cumsum(jitter, axis=0) * 0.3  # slow drift: a slightly unsteady camera
    noise_sigma = 1.5 + v * rng.uniform(0, 2)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    box = [np.inf, np.inf, -np.inf, -np.inf]
    for i in range(num_frames):
        pose = {k: float(vals[i]) for k, vals in ch.items()}
        img = background.copy()
        extent = _draw_person(img, lay, subject, pose, targets, active, jitter[i])
        box = [min(box[0], extent[0]), min(box[1], extent[1]), max(box[2], extent[2]), max(box[3], extent[3])]
        noisy = img.astype(np.int16) + rng.normal(0, noise_sigma, img.shape).astype(np.int16)
        frames[i] = np.clip(noisy, 0, 255).astype(np.uint8)
    box = [float(np.clip(box[0], 0, width)), float(np.clip(box[1], 0, height)),
           float(np.clip(box[2], 0, width)), float(np.clip(box[3], 0, height))]
    return frames, [round(b, 1) for b in box]


def _draw_person(img: np.ndarray, lay: Layout, s: Subject, pose: dict, targets: dict, active: float,
                 jitter: np.ndarray) -> list[float]:
    """Draw the chair and the person for one pose; return the person's drawn extent [x1, y1, x2, y2].

    The extent is measured on the pixels the person changed (not estimated from joints), so limb widths,
    hands and hair are all inside it.
    """
    u = lay.u
    ox = lay.cx + jitter[0]
    oy = lay.hip_y + jitter[1]

    def P(x, y):  # body units relative to the hip centre -> pixels
        return np.array([ox + x * u, oy + y * u])

    # Chair (static: not part of the person box)
    chair_dark = _shade(s.chair, 0.7)
    cv2.rectangle(img, _p(ox - 1.5 * u, oy - 3.3 * u), _p(ox + 1.5 * u, oy + 0.2 * u), chair_dark, -1, cv2.LINE_AA,
                  SHIFT)
    cv2.rectangle(img, _p(ox - 1.7 * u, oy - 0.1 * u), _p(ox + 1.7 * u, oy + 0.5 * u), s.chair, -1, cv2.LINE_AA, SHIFT)
    for leg_x in (-1.5, 1.4):
        cv2.rectangle(img, _p(ox + leg_x * u, oy + 0.5 * u), _p(ox + (leg_x + 0.15) * u, oy + 3.0 * u), chair_dark, -1,
                      cv2.LINE_AA, SHIFT)
    before = img.copy()

    bx, by = pose["bx"], pose["by"]
    sway, slouch, yaw_b = pose["sway"], pose["slouch"], pose["yaw_body"]
    torso_half = 1.05 * (1 - 0.35 * abs(yaw_b))
    shoulder_y = -3.0 + 0.5 * slouch - pose["shoulder_up"] + by
    j: dict = {}
    j["hip"] = {-1: P(bx - 0.72, by + 0.05), 1: P(bx + 0.72, by + 0.05)}
    j["shoulder"] = {side: P(bx + sway + yaw_b * 0.35 + side * torso_half, shoulder_y) for side in (-1, 1)}
    j["neck"] = P(bx + sway * 1.1 + yaw_b * 0.35, -3.15 + 0.5 * slouch + by)
    j["chest"] = P(bx + sway * 0.8 + yaw_b * 0.3, -2.2 + 0.4 * slouch + by)
    j["lap"] = P(bx, 0.2 + by)
    head_r = 0.62 * u
    j["head_r"] = head_r
    j["head"] = P(bx + sway * 1.25 + yaw_b * 0.4, -4.25 + 0.75 * slouch + by + pose["head_dy"])
    # Legs: thighs come towards the camera (short in the image), shins go down to the ankles.
    j["knee"], j["ankle"] = {}, {}
    for side in (-1, 1):
        leg = "a" if side == active else "b"
        knee_x = side * (0.7 + pose[f"knee_{leg}"])
        j["knee"][side] = P(bx * 0.3 + knee_x, 0.75 + by * 0.3)
        j["ankle"][side] = P(side * (0.75 + pose[f"ankle_x_{leg}"]),
                             3.05 + pose[f"ankle_y_{leg}"] - pose[f"heel_{leg}"])

    skin, skin_dark = s.skin, _shade(s.skin, 0.8)
    shirt_dark = _shade(s.shirt, 0.75)
    trousers_dark = _shade(s.trousers, 0.8)

    # Legs: shins first, then thighs over them, then shoes.
    for side in (-1, 1):
        leg = "a" if side == active else "b"
        _limb(img, j["knee"][side], j["ankle"][side], 0.55 * u, trousers_dark)
    for side in (-1, 1):
        _limb(img, j["hip"][side], j["knee"][side], 0.85 * u, s.trousers)
        _ellipse(img, *j["knee"][side], 0.45 * u, 0.4 * u, 0, s.trousers)
    for side in (-1, 1):
        leg = "a" if side == active else "b"
        a = j["ankle"][side]
        length = 0.5 * (1 + 0.4 * pose[f"foot_{leg}"])
        heel = pose[f"heel_{leg}"]
        toe = a + np.array([side * 0.12 * u, (0.3 + 0.5 * heel) * u])
        _ellipse(img, *toe, 0.32 * u, length * 0.55 * u, 0, s.shoes)

    # Arms behind the torso (touching the back) are drawn first.
    hands = {}
    for side in (-1, 1):
        hand = "a" if side == active else "b"
        rest = j["knee"][side] + np.array([-side * 0.35 * u, -0.55 * u])
        w = pose[f"hand_w_{hand}"]
        if hand in targets:
            target = _targets(targets[hand], side, j, u)
            wrist = rest * (1 - w) + target * w
        else:
            wrist = rest
        wrist = wrist + np.array([pose[f"hand_x_{hand}"], pose[f"hand_y_{hand}"]]) * u
        elbow = _arm_elbow(j["shoulder"][side], wrist, 1.55 * u, 1.45 * u, side)
        behind = targets.get(hand) == "back" and w > 0.5
        hands[side] = (wrist, elbow, behind, 1 - pose[f"fist_{hand}"] * 0.6)
    for side in (-1, 1):
        wrist, elbow, behind, _ = hands[side]
        if behind:
            _limb(img, j["shoulder"][side], elbow, 0.5 * u, shirt_dark)
            _limb(img, elbow, wrist, 0.42 * u, shirt_dark)

    # Torso: a shirt polygon from the shoulders to the hips, a collar and a shaded side.
    sh_l, sh_r, hp_l, hp_r = j["shoulder"][-1], j["shoulder"][1], j["hip"][-1], j["hip"][1]
    poly = np.array([sh_l + [0, -0.1 * u], sh_r + [0, -0.1 * u], hp_r + [0.1 * u, 0], hp_l + [-0.1 * u, 0]])
    cv2.fillPoly(img, [np.round(poly * _ONE).astype(np.int32)], s.shirt, cv2.LINE_AA, SHIFT)
    shade = np.array([sh_r + [0, -0.1 * u], sh_r + [-0.35 * u, 0], hp_r + [-0.3 * u, 0], hp_r + [0.1 * u, 0]])
    cv2.fillPoly(img, [np.round(shade * _ONE).astype(np.int32)], shirt_dark, cv2.LINE_AA, SHIFT)
    for side in (-1, 1):
        _ellipse(img, *j["shoulder"][side], 0.42 * u, 0.32 * u, 0, s.shirt)

    # Neck and head (hair behind, ears, face, features following pitch / yaw / roll).
    neck_top = j["head"] + np.array([0, 0.55 * head_r])
    _limb(img, j["neck"], neck_top, 0.5 * u, skin_dark)
    cv2.ellipse(img, _p(*j["neck"]), _p(0.35 * u, 0.2 * u), 0, 0, 180, shirt_dark, -1, cv2.LINE_AA, SHIFT)
    _draw_head(img, j["head"], head_r, s, pose["pitch"], pose["yaw"], pose["roll"])

    # Arms in front: sleeves, forearms, hands.
    for side in (-1, 1):
        wrist, elbow, behind, hand_scale = hands[side]
        if behind:
            continue
        _limb(img, j["shoulder"][side], elbow, 0.5 * u, s.shirt)
        _limb(img, elbow, wrist, 0.4 * u, skin_dark)
        _limb(img, elbow, elbow + (wrist - elbow) * 0.45, 0.46 * u, s.shirt)
        _ellipse(img, *wrist, 0.26 * u * hand_scale + 0.1 * u, 0.3 * u * hand_scale + 0.1 * u, 0, skin)
        if hand_scale > 0.8:  # open hand: a thumb
            _limb(img, wrist, wrist + np.array([-side * 0.28 * u, -0.12 * u]) * hand_scale, 0.12 * u, skin_dark)

    changed = np.any(img != before, axis=2)
    cols, rows = np.flatnonzero(changed.any(axis=0)), np.flatnonzero(changed.any(axis=1))
    if cols.size == 0:  # the person is entirely outside the frame
        return [np.inf, np.inf, -np.inf, -np.inf]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _draw_head(img, centre, r, s: Subject, pitch: float, yaw: float, roll: float) -> None:
    """A shaded frontal face; pitch/yaw move the features, roll rotates the head about its centre."""
    rot = math.radians(roll)
    cr, sr = math.cos(rot), math.sin(rot)

    def H(x, y):  # head units (r) -> pixels, rotated by roll
        return centre + np.array([cr * x - sr * y, sr * x + cr * y]) * r

    fx, fy = 0.32 * yaw, 0.22 * pitch  # feature shift from turning / nodding
    hair_dark = _shade(s.hair, 0.7)
    _ellipse(img, *H(0, -0.15), 1.08 * r, 1.22 * r, roll, s.hair)  # hair behind the head
    for side in (-1, 1):  # ears (the far ear hides when the head turns)
        if side * yaw > -0.6:
            ear = H(side * (0.98 - 0.3 * max(0.0, -side * yaw)) + fx * 0.3, 0.05 + fy * 0.3)
            _ellipse(img, *ear, 0.17 * r, 0.27 * r, roll, _shade(s.skin, 0.85))
    _ellipse(img, *H(fx * 0.15, 0.05), 0.9 * r * (1 - 0.12 * abs(yaw)), 1.08 * r, roll, s.skin)
    _ellipse(img, *H(fx * 0.15 - 0.45, 0.25), 0.3 * r, 0.5 * r, roll, _shade(s.skin, 0.93))  # side shading
    _ellipse(img, *H(fx * 0.1, -0.8), 0.95 * r, 0.42 * r, roll, s.hair)  # fringe
    _ellipse(img, *H(0.35 + fx * 0.1, -0.7), 0.45 * r, 0.3 * r, roll - 20, hair_dark)
    for side in (-1, 1):
        ex, ey = side * 0.36 + fx, -0.12 + fy
        # Shaded eye sockets and dark brows: the dark-eyes / light-cheeks contrast face detectors key on.
        _ellipse(img, *H(ex, ey - 0.05), 0.27 * r, 0.19 * r, roll, _shade(s.skin, 0.62))
        _limb(img, H(ex - 0.2, ey - 0.26), H(ex + 0.2, ey - 0.3 - 0.04 * side), 0.12 * r, _shade(s.hair, 0.5))
        _ellipse(img, *H(ex, ey), 0.19 * r, 0.1 * r, roll, (225, 225, 220))
        _ellipse(img, *H(ex + 0.5 * fx * 0.3, ey), 0.1 * r, 0.1 * r, roll, (40, 28, 24))
    nose_dark = _shade(s.skin, 0.72)
    _limb(img, H(fx * 1.2, -0.05 + fy), H(fx * 1.4 + 0.06, 0.3 + fy), 0.08 * r, nose_dark)
    _ellipse(img, *H(fx * 1.3, 0.34 + fy), 0.14 * r, 0.07 * r, roll, nose_dark)
    _ellipse(img, *H(fx * 1.05, 0.62 + fy * 0.9), 0.28 * r, 0.08 * r, roll, (150, 60, 60))  # mouth


# --------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------


@dataclass
class ClipJob:
    index: int
    name: str
    label: int
    subject_id: int
    seed: int
    frames: int
    fps: int
    width: int
    height: int
    variation: float
    out: str


def _subject_for(seed: int, subject_id: int, variation: float) -> Subject:
    return make_subject(np.random.default_rng(np.random.SeedSequence((seed, 1_000_003, subject_id))), variation)


def _write_clip(job: ClipJob) -> tuple[str, list[float]]:
    from microact.data.video_writer import write_video

    cv2.setNumThreads(1)
    rng = np.random.default_rng(np.random.SeedSequence((job.seed, job.index)))
    subject = _subject_for(job.seed, job.subject_id, job.variation)
    frames, box = render_clip(job.label, subject, rng, job.frames, job.height, job.width, job.variation)
    # x264 with one thread: its output then depends only on the input frames (byte-identical reruns).
    write_video(Path(job.out) / job.name, frames, fps=job.fps, crf=20, options={"threads": "1"})
    return job.name, box


def _split(rng: np.random.Generator, indices: list[int], val_fraction: float, test_fraction: float):
    order = list(rng.permutation(indices))
    n = len(order)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n_test + n_val >= n:  # keep at least one training clip per class
        overflow = n_test + n_val - (n - 1)
        take = min(overflow, n_val)
        n_val -= take
        n_test -= overflow - take
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def synthesize(out: str | os.PathLike, num_classes: int = 12, clips_per_class: int = 30, seed: int = 0,
               frames: int = 32, fps: int = 15, width: int = 256, height: int = 192, long_tail: bool = False,
               subject_variation: float = 1.0, val_fraction: float = 0.2, test_fraction: float = 0.2,
               workers: int = 0, progress: bool = True) -> dict:
    """Write a synthetic MA-52-style dataset to ``out`` and return its summary (also saved as synth.json).

    Files: ``<SSSS_VV_NNNN>.mp4`` clips, ``{train,val,test}_list_videos.txt`` (``<file> <fine id>``),
    ``label_name.txt`` (all 52 MA-52 names), ``boxes.json`` (ground-truth union person box per clip),
    ``synth.json`` and ``class_distribution.png``.

    Raises:
        SynthError: invalid parameters.
    """
    if clips_per_class < 1:
        raise SynthError(f"--clips-per-class must be >= 1, got {clips_per_class}")
    if frames < 1 or fps < 1 or width < 32 or height < 32:
        raise SynthError(f"need frames >= 1, fps >= 1 and a frame of at least 32x32, "
                         f"got {frames=} {fps=} {width}x{height}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise SynthError(f"--val-fraction ({val_fraction}) and --test-fraction ({test_fraction}) "
                         "must be >= 0 with a sum < 1")
    if subject_variation < 0:
        raise SynthError(f"--subject-variation must be >= 0, got {subject_variation}")
    width, height = width + width % 2, height + height % 2
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = choose_classes(num_classes)
    counts = class_counts(classes, clips_per_class, long_tail)
    total = sum(counts)
    num_subjects = max(2, min(200, total // 6))
    plan_rng = np.random.default_rng(np.random.SeedSequence((seed, 7)))
    labels = [c for c, k in zip(classes, counts) for _ in range(k)]
    subjects = plan_rng.integers(0, num_subjects, size=total)
    per_subject: dict[int, int] = {}
    jobs = []
    for i, (label, sid) in enumerate(zip(labels, subjects)):
        k = per_subject.get(int(sid), 0)
        per_subject[int(sid)] = k + 1
        name = f"{int(sid) + 1:04d}_{k // 100 + 1:02d}_{k % 100 + 1:04d}.mp4"
        jobs.append(ClipJob(i, name, label, int(sid) + 1, seed, frames, fps, width, height, subject_variation,
                            str(out)))

    splits = {"train": [], "val": [], "test": []}
    for c in classes:
        idx = [j.index for j in jobs if j.label == c]
        tr, va, te = _split(plan_rng, idx, val_fraction, test_fraction)
        splits["train"] += tr
        splits["val"] += va
        splits["test"] += te

    boxes = _run_jobs(jobs, workers, progress)

    for split, idx in splits.items():
        lines = [f"{jobs[i].name} {jobs[i].label}\n" for i in sorted(idx, key=lambda i: jobs[i].name)]
        (out / f"{split}_list_videos.txt").write_text("".join(lines))
    (out / "label_name.txt").write_text("".join(f"{i}\t{n}\n" for i, n in enumerate(ma52.FINE_NAMES)))
    (out / "boxes.json").write_text(json.dumps({name: boxes[name] for name in sorted(boxes)}, indent=1))
    split_counts = {s: {c: sum(1 for i in idx if jobs[i].label == c) for c in classes} for s, idx in splits.items()}
    summary = {
        "params": {"num_classes": num_classes, "clips_per_class": clips_per_class, "seed": seed, "frames": frames,
                   "fps": fps, "width": width, "height": height, "long_tail": long_tail,
                   "subject_variation": subject_variation, "val_fraction": val_fraction,
                   "test_fraction": test_fraction},
        "classes": classes,
        "class_names": [ma52.FINE_NAMES[c] for c in classes],
        "counts": {split: {str(c): n for c, n in sc.items()} for split, sc in split_counts.items()},
        "num_clips": total,
        "num_subjects": int(len(per_subject)),
        "splits": "random per class (not subject-disjoint, like MA-52)",
    }
    (out / "synth.json").write_text(json.dumps(summary, indent=1))
    try:
        from microact.plots.data import plot_class_distribution

        plot_class_distribution({c: sum(sc[c] for sc in split_counts.values()) for c in classes}, ma52.FINE_NAMES,
                                out / "class_distribution.png", log=long_tail,
                                title=f"synthetic dataset: {total} clips, {len(classes)} classes")
    except ImportError:  # matplotlib missing: the dataset itself is complete
        pass
    return summary


def _run_jobs(jobs: list[ClipJob], workers: int, progress: bool) -> dict[str, list[float]]:
    from tqdm import tqdm

    workers = workers or os.cpu_count() or 1
    boxes: dict[str, list[float]] = {}
    bar = tqdm(total=len(jobs), desc="synth", unit="clip", disable=not progress)
    if workers == 1 or len(jobs) < 4:
        for job in jobs:
            name, box = _write_clip(job)
            boxes[name] = box
            bar.update()
    else:
        # not fork: a child forked after OpenCV's thread pool ran in this process (a detector, a resize)
        # hangs on its first cv2 call (see build_loader)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            for name, box in pool.map(_write_clip, jobs, chunksize=4):
                boxes[name] = box
                bar.update()
    bar.close()
    return boxes


def summary_table(summary: dict) -> str:
    """A short text table: class id, name, body part and clips per split."""
    rows = [f"{'id':>3}  {'class':<32} {'body part':<11} {'train':>5} {'val':>5} {'test':>5}"]
    for c in sorted(summary["classes"]):
        n = [summary["counts"][s][str(c)] for s in ("train", "val", "test")]
        rows.append(f"{c:>3}  {ma52.FINE_NAMES[c]:<32} {ma52.COARSE_NAMES[ma52.FINE_TO_COARSE[c]]:<11} "
                    f"{n[0]:>5} {n[1]:>5} {n[2]:>5}")
    totals = [sum(summary["counts"][s].values()) for s in ("train", "val", "test")]
    rows.append(f"{'':>3}  {'total':<32} {'':<11} {totals[0]:>5} {totals[1]:>5} {totals[2]:>5}")
    return "\n".join(rows)


def cli_main(args) -> int:
    """``microact synth OUT ...``: write the dataset and print a summary table."""
    summary = synthesize(
        args.out, num_classes=args.num_classes, clips_per_class=args.clips_per_class, seed=args.seed,
        frames=args.frames, fps=args.fps, width=args.width, height=args.height, long_tail=args.long_tail,
        subject_variation=args.subject_variation, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        workers=args.workers,
    )
    print(summary_table(summary))
    print(f"wrote {summary['num_clips']} clips of {summary['num_subjects']} subjects to {args.out}")
    for split in ("val", "test"):
        empty = sorted(c for c in summary["classes"] if not summary["counts"][split][str(c)])
        if empty:
            print(f"note: {len(empty)} class(es) have no {split} clips ({', '.join(map(str, empty))}); raise "
                  "--clips-per-class or the split fractions for every class to be scored")
    return 0
