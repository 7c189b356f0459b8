"""Optical-flow videos of the two-stream row (SEED.md §2.9) and ``microact flow``.

Flow frame ``i`` is Farnebäck's dense flow from frame ``i`` to frame ``i + 1`` of the source (grey frames;
pyr_scale 0.5, 3 levels, window 15, 3 iterations, poly_n 5, poly_sigma 1.2), drawn as a colour image: hue = the
flow's angle / 2 (OpenCV's 8-bit hue counts units of 2 degrees), saturation 255, value = the magnitude
min-max normalised over the frame to 0-255. A flow video therefore has one frame fewer than its source and
is written at 30 fps, as the seed wrote them.

:func:`flow_image` is the one computation: ``microact flow`` writes its frames to disk and ``microact predict``
computes the same frames on the fly for a two-stream model.

``microact flow IN_DIR OUT_DIR`` writes the flow video of every video under ``IN_DIR`` to the same relative
path under ``OUT_DIR``. Every output is written under a temporary name and renamed when complete, so an
existing output is a finished one: a second run skips it (resumable after a kill). A video that cannot be
decoded is reported, counted and listed in ``OUT_DIR/flow_errors.txt``, never fatal.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from microact.errors import MicroactError

# SEED.md §2.9: cv2.calcOpticalFlowFarneback(prev, next, None, pyr_scale, levels, winsize, iterations, poly_n,
# poly_sigma, flags)
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2,
             "flags": 0}
FLOW_FPS = 30.0  # the seed wrote every flow video at 30 fps whatever the source's rate
# Per-channel statistics of the seed's flow videos on the 0-255 scale (SEED.md §2.9): most pixels barely move,
# so the images are mostly black.
FLOW_MEAN = (0.955, 1.023, 1.040)
FLOW_STD = (7.474, 8.112, 8.170)

# Encoding of flow videos. Direction lives in the hue and speed in the brightness, so compression error is
# error in the flow itself: CRF 12 keeps decoded pixels within a few grey levels of the computed images (the
# default CRF 23 smears the thin, dim motion edges that carry most of the signal). yuv420p still halves the
# colour resolution, which blurs the direction only across one-pixel borders between opposite motions. The
# loader decodes every flow video once per epoch like the RGB ones, so they get the same fast-decode
# options as ``microact crop`` (no CABAC / deblocking, unreferenced B-frames).
FLOW_CRF = 12


def flow_encoding() -> dict:
    """:func:`~microact.data.video_writer.write_video` settings of flow videos (see ``FLOW_CRF``)."""
    from microact.data.crop.run import FAST_DECODE_X264_PARAMS

    return {"fps": FLOW_FPS, "crf": FLOW_CRF, "preset": "veryfast",
            "options": {"tune": "fastdecode", "x264-params": FAST_DECODE_X264_PARAMS}}


class FlowError(MicroactError):
    """Invalid ``microact flow`` input (missing folder, no videos) or a video too short for flow."""


def grey(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` -> grey ``[H, W]`` (OpenCV's weights, as the seed's BGR2GRAY on BGR frames)."""
    import cv2

    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def flow_image(prev_grey: np.ndarray, next_grey: np.ndarray) -> np.ndarray:
    """The flow image between two grey frames ``[H, W]``: RGB uint8 ``[H, W, 3]`` (SEED.md §2.9).

    The seed wrote ``HSV -> BGR`` images with OpenCV, which stores them as colours; decoding gives those colours in
    RGB order, which is what this returns (and what the loader sees).
    """
    import cv2

    flow = cv2.calcOpticalFlowFarneback(prev_grey, next_grey, None, FARNEBACK["pyr_scale"], FARNEBACK["levels"],
                                        FARNEBACK["winsize"], FARNEBACK["iterations"], FARNEBACK["poly_n"],
                                        FARNEBACK["poly_sigma"], FARNEBACK["flags"])  # [H, W, 2] (dx, dy)
    magnitude, angle = cv2.cartToPolar(flow[..., 0], flow[..., 1], angleInDegrees=True)
    hsv = np.empty((*prev_grey.shape, 3), dtype=np.uint8)
    hsv[..., 0] = angle / 2  # degrees in [0, 360) -> OpenCV's 8-bit hue [0, 180), truncated as the seed's cast
    hsv[..., 1] = 255
    hsv[..., 2] = cv2.normalize(magnitude, None, 0, 255, cv2.NORM_MINMAX)  # float -> truncated on assignment
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def flow_frames(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Flow images of consecutive RGB frames: ``n`` frames give ``n - 1`` images (frame ``i`` -> ``i + 1``)."""
    previous = None
    for frame in frames:
        current = grey(np.asarray(frame))
        if previous is not None:
            yield flow_image(previous, current)
        previous = current


def write_flow_video(path: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """Write the flow video of ``path`` to ``out_path`` (atomically); returns its number of frames.

    Raises:
        VideoDecodeError: the source cannot be decoded.
        FlowError: the source has fewer than two frames.
    """
    from microact.data.decode import iter_frames
    from microact.data.video_writer import write_video

    path, out_path = Path(path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    images = flow_frames(frame for _, frame in iter_frames(path))
    first = next(images, None)
    if first is None:
        raise FlowError(f"{path}: fewer than two frames, no flow to compute")

    def all_images():
        yield first
        yield from images

    return write_video(out_path, all_images(), **flow_encoding())


# --------------------------------------------------------------------------------------------
# Folder runner
# --------------------------------------------------------------------------------------------


@dataclass
class _Task:
    src: str
    dst: str
    name: str  # relative path, as reported


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # the pool's processes are the parallelism


def _work(task: _Task) -> tuple[str, Optional[str]]:
    """``(relative name, None)`` when written, ``(name, error message)`` when the video could not be done."""
    from microact.data.decode import VideoDecodeError

    try:
        write_flow_video(task.src, task.dst)
        return task.name, None
    except VideoDecodeError as e:
        return task.name, f"{task.src}: {e.reason}"
    except MicroactError as e:
        return task.name, str(e)
    except Exception as e:  # noqa: BLE001 - one bad video is reported, the run goes on
        return task.name, f"{task.src}: {type(e).__name__}: {e}"


def list_videos_recursive(in_dir: Path) -> list[Path]:
    """Videos anywhere under ``in_dir`` (hidden files and folders, e.g. partial writes, excluded), sorted."""
    from microact.data.crop.run import VIDEO_EXTENSIONS

    found = []
    for p in in_dir.rglob("*"):
        rel = p.relative_to(in_dir)
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not any(s.startswith(".") for s in rel.parts):
            found.append(p)
    return sorted(found)


def run_flow(in_dir: str | os.PathLike, out_dir: str | os.PathLike, workers: int = 0, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Write the flow video of every video under ``in_dir`` to the same relative path under ``out_dir``.

    Args:
        workers: parallel processes (0: all cores).
        overwrite: redo outputs that already exist.
        progress: show a progress bar.

    Returns:
        ``{"done": n, "skipped": n (outputs already there), "failed": n, "errors": [messages]}``.

    Raises:
        FlowError: ``in_dir`` is missing or holds no videos, or ``out_dir`` is inside it.
    """
    from tqdm import tqdm

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise FlowError(f"{in_dir}: no such folder")
    if out_dir.resolve() == in_dir.resolve():
        raise FlowError(f"{out_dir}: the output folder must differ from the input folder (same file names)")
    # An output folder inside the input folder: its flow videos are outputs, never sources of a later run.
    videos = [v for v in list_videos_recursive(in_dir) if not v.resolve().is_relative_to(out_dir.resolve())]
    if not videos:
        from microact.data.crop.run import VIDEO_EXTENSIONS

        raise FlowError(f"{in_dir}: no videos ({', '.join(VIDEO_EXTENSIONS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = []
    for v in videos:
        rel = v.relative_to(in_dir)
        dst = out_dir / rel
        if overwrite or not dst.exists():  # outputs appear only complete (atomic rename): existing = finished
            tasks.append(_Task(str(v), str(dst), rel.as_posix()))
    summary = {"done": 0, "skipped": len(videos) - len(tasks), "failed": 0, "errors": []}
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))
    bar = tqdm(total=len(tasks), desc="flow", unit="video", disable=not progress)

    def record(name: str, error: Optional[str]) -> None:
        bar.update()
        if error is None:
            summary["done"] += 1
            return
        summary["failed"] += 1
        summary["errors"].append(error)
        bar.write(f"skipped: {error}", file=sys.stderr)

    if tasks and workers == 1:
        import cv2

        threads = cv2.getNumThreads()
        _init_worker()
        try:
            for task in tasks:
                record(*_work(task))
        finally:
            cv2.setNumThreads(threads)  # the caller's OpenCV keeps its threads
    elif tasks:
        import multiprocessing as mp

        # spawn: a worker forked after OpenCV's thread pool ran in the parent can hang on its first cv2 call
        with mp.get_context("spawn").Pool(workers, _init_worker) as pool:
            for name, error in pool.imap_unordered(_work, tasks):
                record(name, error)
    bar.close()
    errors_file = out_dir / "flow_errors.txt"
    if summary["errors"]:
        errors_file.write_text("".join(e + "\n" for e in summary["errors"]))
    elif errors_file.exists() and not summary["failed"]:
        errors_file.unlink()  # a rerun that fixed every failure leaves no stale report
    return summary


def cli_main(args) -> int:
    """``microact flow IN_DIR OUT_DIR [--workers N] [--overwrite]``."""
    s = run_flow(args.in_dir, args.out_dir, workers=args.workers, overwrite=args.overwrite)
    print(f"flow videos: wrote {s['done']}, skipped {s['skipped']} (already done), failed {s['failed']} "
          f"-> {args.out_dir}" + (f" (failures listed in {Path(args.out_dir) / 'flow_errors.txt'})"
                                  if s["failed"] else ""))
    for e in s["errors"]:
        print(f"  failed: {e}")
    return 1 if s["failed"] else 0
