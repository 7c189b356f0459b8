"""Synthetic MA-52-style dataset: class choice, counts, files, determinism and ground-truth boxes."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest

from microact import ma52
from microact.data import synth
from microact.data.annotations import load_label_names, load_list


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.suffix in (".mp4", ".txt", ".json")}


def test_choose_classes_round_robin_over_body_parts():
    assert synth.choose_classes(12) == [0, 9, 19, 24, 36, 43, 48, 4, 10, 17, 31, 37]
    seven = synth.choose_classes(7)
    assert sorted(ma52.fine_to_coarse(seven).tolist()) == list(range(7))  # one class per body part
    assert sorted(synth.choose_classes(52)) == list(range(52))
    assert synth.choose_classes(3) == [0, 9, 19]
    for bad in (0, 53):
        with pytest.raises(synth.SynthError, match="num-classes"):
            synth.choose_classes(bad)


def test_long_tail_counts_follow_ma52():
    classes = synth.choose_classes(12)
    counts = synth.class_counts(classes, 20, long_tail=True)
    raw = np.array([ma52.TRAIN_CLASS_COUNTS[c] for c in classes], float)
    expected = np.maximum(2, np.round(raw / raw.mean() * 20)).astype(int)  # plain re-statement of the rule
    assert counts == expected.tolist()
    assert abs(np.mean(counts) - 20) < 1.5 and min(counts) >= 2
    assert counts[classes.index(9)] == max(counts)  # nodding, MA-52's largest class
    assert synth.class_counts(classes, 5, long_tail=False) == [5] * 12


def test_person_extent_is_exactly_the_drawn_pixels():
    # On a black frame with a black chair, every non-zero pixel is the person: the extent must be their bbox.
    lay = synth.Layout(cx=128, hip_y=119, u=19.2)
    t = np.linspace(0, 1, 6)
    for label in (9, 19, 28, 36, 45, 51):
        rng = np.random.default_rng(label)
        subject = dataclasses.replace(synth.make_subject(rng, 1.0), chair=(0, 0, 0))
        channels, targets = synth._motion(label, t, rng, 1.0)
        for i in range(len(t)):
            img = np.zeros((192, 256, 3), np.uint8)
            pose = {k: float(v[i]) for k, v in channels.items()}
            extent = synth._draw_person(img, lay, subject, pose, targets, 1.0, np.zeros(2))
            ys, xs = np.nonzero(img.max(axis=2))
            assert extent == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_every_class_moves_the_figure():
    # Each of the 52 motions must change the rendered person over time (no class is a still image).
    lay = synth.Layout(cx=128, hip_y=119, u=19.2)
    t = np.linspace(0, 1, 12)
    subject = synth.make_subject(np.random.default_rng(0), 0.0)
    for label in range(52):
        channels, targets = synth._motion(label, t, np.random.default_rng(label), 1.0)
        frames = []
        for i in range(len(t)):
            img = np.zeros((192, 256, 3), np.uint8)
            synth._draw_person(img, lay, subject, {k: float(v[i]) for k, v in channels.items()}, targets, 1.0,
                               np.zeros(2))
            frames.append(img.astype(np.int16))
        changed = (np.abs(np.stack(frames) - frames[0]).max(axis=(0, 3)) > 40).sum()
        assert changed >= 30, f"class {label} ({ma52.FINE_NAMES[label]}) barely moves: {changed} px"


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = synth.synthesize(out, num_classes=5, clips_per_class=3, seed=3, frames=8, fps=10, width=128,
                               height=96, workers=1, progress=False)
    return out, summary


def test_dataset_files_lists_and_clips(small_dataset):
    out, summary = small_dataset
    classes = synth.choose_classes(5)
    assert summary["classes"] == classes
    names = load_label_names(out / "label_name.txt")
    assert names == list(ma52.FINE_NAMES)
    records = {split: load_list(out / f"{split}_list_videos.txt", video_dir=out, num_classes=52)
               for split in ("train", "val", "test")}
    # 3 clips per class, fractions 0.2 / 0.2: round(0.6) = 1 test, 1 val, 1 train clip per class.
    for split, recs in records.items():
        assert sorted(r.label for r in recs) == sorted(classes), split
    all_names = [Path(r.path).name for recs in records.values() for r in recs]
    assert len(set(all_names)) == 15
    for name in all_names:
        assert len(name) == 16 and name[4] == "_" and name[7] == "_" and name.endswith(".mp4")
    boxes = json.loads((out / "boxes.json").read_text())
    assert sorted(boxes) == sorted(all_names)
    frames = _decode(out / all_names[0])
    assert frames.shape == (8, 96, 128, 3)
    for x1, y1, x2, y2 in boxes.values():
        assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 96
        assert y2 - y1 > 0.6 * 96  # a whole seated person, head to feet
    meta = json.loads((out / "synth.json").read_text())
    assert meta["params"]["seed"] == 3 and meta["num_clips"] == 15
    assert (out / "class_distribution.png").stat().st_size > 1000


def test_same_seed_same_bytes_whatever_the_workers(small_dataset, tmp_path):
    out, _ = small_dataset
    again = tmp_path / "again"
    synth.synthesize(again, num_classes=5, clips_per_class=3, seed=3, frames=8, fps=10, width=128, height=96,
                     workers=2, progress=False)
    assert _hashes(out) == _hashes(again)
    other = tmp_path / "other"
    synth.synthesize(other, num_classes=5, clips_per_class=3, seed=4, frames=8, fps=10, width=128, height=96,
                     workers=1, progress=False)
    a, b = _hashes(out), _hashes(other)
    assert a["label_name.txt"] == b["label_name.txt"]
    assert sum(a[k] != b.get(k) for k in a if k.endswith(".mp4")) >= 10


def test_long_tail_dataset_and_cli(tmp_path, capsys):
    from microact.cli import main

    out = tmp_path / "lt"
    rc = main(["synth", str(out), "--num-classes", "7", "--clips-per-class", "3", "--long-tail", "--frames", "2",
               "--width", "64", "--height", "48", "--workers", "1", "--val-fraction", "0", "--test-fraction", "0"])
    assert rc == 0
    assert "nodding" in capsys.readouterr().out
    labels = [int(line.split()[1]) for line in (out / "train_list_videos.txt").read_text().splitlines()]
    classes = synth.choose_classes(7)
    got = [labels.count(c) for c in classes]
    assert got == synth.class_counts(classes, 3, long_tail=True)
    assert got[classes.index(9)] == max(got) and min(got) == 2


def test_bad_parameters_are_clear_errors(tmp_path):
    with pytest.raises(synth.SynthError, match="fraction"):
        synth.synthesize(tmp_path, val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(synth.SynthError, match="clips-per-class"):
        synth.synthesize(tmp_path, clips_per_class=0)


SCRIPT_AFTER_OPENCV_THREADS = """
import sys
import numpy as np
from microact.data.crop.detectors import create_detector
from microact.data.check import check_dataset
from microact.data.synth import synthesize

if __name__ == "__main__":
    detector = create_detector("haar", None)  # runs OpenCV's thread pool in this process
    for _ in range(3):
        detector.detect(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    synthesize(sys.argv[1], num_classes=2, clips_per_class=5, frames=8, width=64, height=48, workers=2,
               progress=False)
    report = check_dataset(sys.argv[1], workers=2, progress=False)
    print("done, problems:", len(report["problems"]))
"""


def test_worker_pools_survive_opencv_threads_in_the_parent(tmp_path):
    """Forked workers hang on their first OpenCV call once the parent ran OpenCV's thread pool (a detector); the
    synthesis and data-check pools start their workers from a clean server process instead."""
    import subprocess
    import sys

    script = tmp_path / "after_detector.py"
    script.write_text(SCRIPT_AFTER_OPENCV_THREADS)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "data")], capture_output=True, text=True,
                          timeout=90)  # a few seconds when it works; a hang is the failure
    assert done.returncode == 0, done.stderr[-2000:]
    assert "done, problems: 0" in done.stdout
    assert len(list((tmp_path / "data").glob("*.mp4"))) == 10
