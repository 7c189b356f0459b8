"""``microact crop``: one static person box per video, cropped H.264 copies, resumable and parallel.

Per video: ``sample_frames`` uniformly spaced frames go to the detector; the best box of each frame is
united over the frames, then margins, aspect padding and even sizes are applied (:mod:`.boxes`). Every
frame is cropped to that box, optionally downscaled (short side), and re-encoded at the source fps.

Bookkeeping: ``OUT_DIR/boxes.json`` maps file name -> ``{"box", "detector", "frames_with_person",
"source_size", ...}``. Each finished video is also appended (and flushed) to ``OUT_DIR/.boxes.partial.jsonl``,
and ``boxes.json`` is rewritten atomically every few seconds and at the end, so a killed run loses no
finished video: the next run merges the journal and skips every file already recorded whose output exists.
Videos that cannot be decoded are reported (``crop_errors.txt``), counted and skipped, never fatal.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from microact.config import CropConfig
from microact.data.crop.boxes import crop_box, short_side_size, union_boxes
from microact.data.crop.detectors import PersonDetector, create_detector
from microact.errors import MicroactError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
_JOURNAL = ".boxes.partial.jsonl"
_DETECT_MAX_SIDE = 640  # detectors see frames downscaled to this long side (boxes are scaled back)


class CropError(MicroactError):
    """Invalid crop input (missing folder, no videos)."""


def compute_box(frames: np.ndarray | Sequence[np.ndarray], detector: PersonDetector,
                margins: Sequence[float] = (-60, -100, 80, 60), min_aspect: float = 0.6) -> dict:
    """The static crop box of a video from some of its frames.

    Args:
        frames: RGB uint8 frames ``[T, H, W, 3]`` (the sampled frames of one video).
        detector: any :class:`PersonDetector`; its best box per frame is used.
        margins: ``(x0, y0, x1, y1)`` at 1080p, scaled by ``H / 1080``.
        min_aspect: minimum ``w / h`` of the final box.

    Returns:
        ``{"box": [x1, y1, x2, y2] (ints, exclusive end, even size), "raw_box": detector union or None,
        "frames_with_person": int, "source_size": [W, H]}``; the full frame when nobody was found.
    """
    import cv2

    height, width = frames[0].shape[:2]
    scale = min(1.0, _DETECT_MAX_SIDE / max(height, width))
    found = []
    for frame in frames:
        small = frame if scale == 1.0 else cv2.resize(frame, (int(round(width * scale)), int(round(height * scale))),
                                                       interpolation=cv2.INTER_AREA)
        boxes = detector.detect(small)
        if boxes:
            best = max(boxes, key=lambda b: (b.score, b.area))
            found.append([best.x1 / scale, best.y1 / scale, best.x2 / scale, best.y2 / scale])
    raw = union_boxes(found)
    box = crop_box(raw, width, height, margins, min_aspect)
    return {"box": box, "raw_box": None if raw is None else [round(v, 1) for v in raw],
            "frames_with_person": len(found), "source_size": [width, height]}


def crop_video(path: str | os.PathLike, out_path: str | os.PathLike, detector: PersonDetector,
               cfg: CropConfig | None = None) -> dict:
    """Detect, box and write the cropped copy of one video; returns its ``boxes.json`` entry.

    Raises:
        VideoDecodeError: the video cannot be opened or decoded.
    """
    from microact.data.decode import iter_frames, probe_video, read_frames
    from microact.data.video_writer import write_video

    cfg = cfg or CropConfig()
    path, out_path = Path(path), Path(out_path)
    info = probe_video(path)
    idx = np.unique(np.linspace(0, info.num_frames - 1, max(1, cfg.sample_frames)).round().astype(int))
    frames = read_frames(path, idx)
    entry = compute_box(frames, detector, cfg.margins, cfg.min_aspect)
    if entry["frames_with_person"] == 0:
        warnings.warn(f"{path}: no person found by {detector.name}; using the full frame", stacklevel=2)
    x1, y1, x2, y2 = entry["box"]
    out_w, out_h = short_side_size(x2 - x1, y2 - y1, cfg.short_side)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fps = info.fps if info.fps > 0 else 30.0
    encoding = crop_encoding(cfg)
    written = write_video(out_path, (crop_frame(f, entry["box"], cfg.short_side) for _, f in iter_frames(path)),
                          fps=fps, **encoding)
    entry.update(detector=detector.name, output_size=[out_w, out_h], frames=written,
                 encoding={"codec": "libx264", "preset": encoding["preset"], "crf": cfg.crf,
                           "fast_decode": cfg.fast_decode, "options": encoding["options"] or {}})
    return entry


# x264's defaults are a B-pyramid (the middle B-frame of a group is a reference) and at most 3 B-frames in a row.
FAST_DECODE_X264_PARAMS = "b-pyramid=none:bframes=8"


def crop_encoding(cfg: CropConfig) -> dict:
    """:func:`~microact.data.video_writer.write_video` settings of cropped videos.

    Training decodes every cropped video once per epoch, so ``fast_decode`` chooses the encoding for decoding
    speed: x264's ``tune=fastdecode`` drops CABAC and the deblocking filter, and B-frames that no other frame
    references (no B-pyramid, up to 8 in a row) are not decoded by the loader unless it samples them
    (:func:`microact.data.decode.read_frames`); on static footage about 9 frames in 10 are such B-frames. A clip
    decodes 2-5x faster than from x264's default encoding, in files no larger (docs/BENCHMARKS.md, "Data pipeline").
    """
    options = {"tune": "fastdecode", "x264-params": FAST_DECODE_X264_PARAMS} if cfg.fast_decode else None
    return {"crf": cfg.crf, "preset": "veryfast", "options": options}


def crop_frame(frame: np.ndarray, box, short_side: int | None) -> np.ndarray:
    """Cut ``box`` ``[x1, y1, x2, y2]`` out of one ``[H, W, 3]`` frame and shrink its short side to ``short_side``.

    The one rule shared by ``microact crop`` and ``microact predict``, so a predicted video is framed exactly
    like the training videos.
    """
    import cv2

    x1, y1, x2, y2 = box
    out_w, out_h = short_side_size(x2 - x1, y2 - y1, short_side)
    crop = frame[y1:y2, x1:x2]  # [H, W, 3] -> [h, w, 3]
    if crop.shape[1] != out_w or crop.shape[0] != out_h:
        crop = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return crop


# --------------------------------------------------------------------------------------------
# Folder runner
# --------------------------------------------------------------------------------------------


@dataclass
class _Task:
    src: str
    dst: str


# One detector per worker process, created by the pool initializer (building a MediaPipe graph costs ~100 ms).
_worker_detector: Optional[PersonDetector] = None
_worker_cfg: Optional[CropConfig] = None


def _init_worker(detector_name: str, weights: Optional[str], cfg: CropConfig) -> None:
    global _worker_detector, _worker_cfg
    import cv2

    cv2.setNumThreads(1)
    _worker_detector = create_detector(detector_name, weights)
    _worker_cfg = cfg


def _work(task: _Task) -> tuple[str, dict]:
    name = Path(task.src).name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entry = crop_video(task.src, task.dst, _worker_detector, _worker_cfg)
        return name, entry
    except MicroactError as e:
        return name, {"error": str(e)}
    except Exception as e:  # noqa: BLE001 - any failure of one video is reported, the run goes on
        return name, {"error": f"{task.src}: {type(e).__name__}: {e}"}


def _load_boxes(out_dir: Path) -> dict:
    boxes = {}
    main = out_dir / "boxes.json"
    if main.exists():
        try:
            boxes = json.loads(main.read_text())
        except json.JSONDecodeError as e:
            raise CropError(f"{main}: not valid JSON ({e}); delete it or pass --overwrite") from None
    journal = out_dir / _JOURNAL
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                name, entry = json.loads(line)
                boxes[name] = entry
            except (json.JSONDecodeError, ValueError):
                continue  # a line cut by a kill
    return boxes


def _save_boxes(out_dir: Path, boxes: dict) -> None:
    tmp = out_dir / ".boxes.json.tmp"
    tmp.write_text(json.dumps({k: boxes[k] for k in sorted(boxes)}, indent=1))
    os.replace(tmp, out_dir / "boxes.json")


def list_videos(in_dir: Path) -> list[Path]:
    return sorted(p for p in in_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
                  and not p.name.startswith("."))


def run_crop(in_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: CropConfig | None = None, workers: int = 0,
             preview: int = 8, overwrite: bool = False, progress: bool = True) -> dict:
    """Crop every video of ``in_dir`` into ``out_dir`` (see the module docstring).

    Returns:
        ``{"done": n, "skipped": n, "failed": n, "no_person": [names], "errors": [messages], "detector": name}``
        (the detector used: what ``auto`` resolved to).

    Raises:
        CropError: ``in_dir`` is missing or holds no videos.
        DetectorError: the detector cannot be created.
    """
    from tqdm import tqdm

    cfg = cfg or CropConfig()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise CropError(f"{in_dir}: no such folder")
    videos = list_videos(in_dir)
    if not videos:
        raise CropError(f"{in_dir}: no videos ({', '.join(VIDEO_EXTENSIONS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Fail early (bad detector name, missing weights or package) before forking workers; the probe also names the
    # detector that "auto" resolves to (the workers resolve it the same way).
    probe = create_detector(cfg.detector, cfg.weights)
    detector_name = probe.name
    probe.close()

    for f in in_dir.iterdir():  # list files and class names travel with the videos
        if f.is_file() and (f.name.endswith("_list_videos.txt") or f.name == "label_name.txt"):
            shutil.copyfile(f, out_dir / f.name)

    boxes = {} if overwrite else _load_boxes(out_dir)
    tasks = [_Task(str(v), str(out_dir / v.name)) for v in videos
             if overwrite or v.name not in boxes or not (out_dir / v.name).exists()]
    summary = {"done": 0, "skipped": len(videos) - len(tasks), "failed": 0, "no_person": [], "errors": [],
               "detector": detector_name}
    journal_path = out_dir / _JOURNAL
    if overwrite and journal_path.exists():
        journal_path.unlink()
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))
    bar = tqdm(total=len(tasks), desc="crop", unit="video", disable=not progress)
    last_save = time.monotonic()
    with open(journal_path, "a") as journal:
        def record(name: str, entry: dict):
            nonlocal last_save
            bar.update()
            if "error" in entry:
                summary["failed"] += 1
                summary["errors"].append(entry["error"])
                bar.write(f"skipped (cannot decode): {entry['error']}", file=sys.stderr)
                return
            summary["done"] += 1
            if entry["frames_with_person"] == 0:
                summary["no_person"].append(name)
                bar.write(f"warning: {name}: no person found; cropped to the full frame", file=sys.stderr)
            boxes[name] = entry
            journal.write(json.dumps([name, entry]) + "\n")
            journal.flush()
            if time.monotonic() - last_save > 5.0:
                _save_boxes(out_dir, boxes)
                last_save = time.monotonic()

        if tasks and workers == 1:
            _init_worker(cfg.detector, cfg.weights, cfg)
            for task in tasks:
                record(*_work(task))
        elif tasks:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers, _init_worker, (cfg.detector, cfg.weights, cfg)) as pool:
                for name, entry in pool.imap_unordered(_work, tasks):
                    record(name, entry)
    bar.close()
    _save_boxes(out_dir, boxes)
    journal_path.unlink(missing_ok=True)
    if summary["errors"]:
        (out_dir / "crop_errors.txt").write_text("".join(e + "\n" for e in summary["errors"]))
    if preview > 0:
        _write_preview(in_dir, out_dir, boxes, preview)
    return summary


def _write_preview(in_dir: Path, out_dir: Path, boxes: dict, count: int) -> Optional[Path]:
    from microact.data.decode import VideoDecodeError, probe_video, read_frames
    from microact.plots.data import plot_crop_preview

    names = sorted(boxes)
    if not names:
        return None
    picks = [names[int(i)] for i in np.unique(np.linspace(0, len(names) - 1, min(count, len(names))).round())]
    items = []
    for name in picks:
        try:
            n = probe_video(in_dir / name).num_frames
            frame = read_frames(in_dir / name, [n // 2])[0]
        except VideoDecodeError:
            continue
        items.append((frame, boxes[name]["box"], boxes[name].get("raw_box"), name))
    return plot_crop_preview(items, out_dir / "crop_preview.png") if items else None


def _detector_text(name: str, cfg: CropConfig) -> str:
    """The detector used, and why when ``--detector auto`` chose it."""
    if cfg.detector != "auto":
        return name
    why = "mediapipe is installed" if name == "mediapipe" else "mediapipe is not installed"
    return f"{name} (picked by --detector auto: {why})"


def cli_main(args) -> int:
    """``microact crop IN_DIR OUT_DIR ...``."""
    cfg = CropConfig(detector=args.detector, margins=tuple(args.margins), min_aspect=args.min_aspect,
                     sample_frames=args.sample_frames, short_side=args.short_side or None, weights=args.weights,
                     crf=args.crf, fast_decode=args.fast_decode)
    cfg.validate()
    s = run_crop(args.in_dir, args.out_dir, cfg, workers=args.workers, preview=args.preview, overwrite=args.overwrite)
    print(f"cropped {s['done']}, skipped {s['skipped']} (already done), failed {s['failed']}, "
          f"no person found in {len(s['no_person'])} -> {args.out_dir}; detector {_detector_text(s['detector'], cfg)}")
    for e in s["errors"]:
        print(f"  failed: {e}")
    return 1 if s["failed"] else 0
