"""``microact data check ROOT``: scan list files and videos, print a report, exit 1 when anything is wrong.

Checks every line of the list files (format, labels, duplicates, missing files) and opens every listed
video in parallel: frame count (demuxed packets), resolution, fps, duration, and one decoded frame.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import statistics
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

from microact.data.annotations import scan_list
from microact.data.decode import VideoDecodeError, probe_video, read_frames
from microact.errors import MicroactError


def _probe_one(job: tuple[str, str]) -> dict:
    path, decoder = job
    try:
        info = probe_video(path, decoder=decoder)
        read_frames(path, [0], decoder=decoder)  # demuxing alone does not prove the stream decodes
        return {"path": path, "num_frames": info.num_frames, "width": info.width, "height": info.height,
                "fps": info.fps, "duration": info.duration, "rotation": info.rotation}
    except VideoDecodeError as e:
        return {"path": path, "error": e.reason}
    except Exception as e:  # report, never crash the scan
        return {"path": path, "error": f"{type(e).__name__}: {e}"}


def _stats(values: list[float]) -> Optional[dict]:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


_CLASSES_FILE_MAX_BYTES = 1 << 20  # a classes file of thousands of classes is tens of KB; larger files are skipped


def find_classes_files(root: Path, exclude: set[Path] = frozenset()) -> list[tuple[Path, object]]:
    """The ``*.txt`` files directly in ``root`` that read as a classes file other than MA-52's, with their taxonomy.

    List files (``*_list_videos.txt`` and ``exclude``) and MA-52's ``label_name.txt`` are not looked at, nor files
    over 1 MiB; a file that names MA-52's 52 classes (e.g. a copy of ``label_name.txt``) is no news either.
    """
    from microact.taxonomy import MA52, load_classes

    found = []
    for path in sorted(root.glob("*.txt")):
        if (path.name == "label_name.txt" or path.name.endswith("_list_videos.txt") or path in exclude
                or not path.is_file() or path.stat().st_size > _CLASSES_FILE_MAX_BYTES):
            continue
        try:
            taxonomy = load_classes(path)
        except MicroactError:  # any text file may sit here: one that is no classes file is no hint, never a failure
            continue
        if taxonomy.fine_names != MA52.fine_names:
            found.append((path, taxonomy))
    return found


def check_dataset(root: str | os.PathLike, lists: Optional[list[str]] = None, video_dir: str = "",
                  num_classes: Optional[int] = None, decoder: str = "pyav", decode: bool = True, workers: int = 0,
                  progress: bool = True, classes: Optional[str | os.PathLike] = None,
                  flow_dir: Optional[str] = None) -> dict:
    """Scan a dataset folder and return the report as a dict (``report["problems"]`` empty when all is well).

    Args:
        root: dataset folder with the list files.
        lists: list files (relative to ``root`` or absolute); default every ``*_list_videos.txt`` in root.
        video_dir: folder of the videos relative to root.
        num_classes: labels must lie in ``[0, num_classes)`` (default: the classes file's count, else 52).
        decoder: library used to open the videos.
        decode: open every video (otherwise only the lists and file presence are checked).
        workers: parallel processes (0 = all cores).
        progress: show a progress bar.
        classes: classes file (``id<TAB>name[<TAB>group]``, relative to ``root`` or absolute); its problems are
            reported with the others, and its count bounds the labels.
        flow_dir: folder of the optical-flow videos (``data.flow_dir``, relative to ``root``): every listed video
            needs one, and with ``decode`` it must open and have one frame fewer than its video (``microact flow``
            writes flow frame i from frames i and i + 1), which catches flow written from other videos.
    """
    from tqdm import tqdm

    from microact.data.annotations import AnnotationError
    from microact.taxonomy import MA52, load_classes

    root = Path(root)
    problems: list[str] = []
    taxonomy = MA52 if classes is None else None
    if classes is not None:
        classes_file = Path(classes) if Path(classes).is_absolute() else root / classes
        try:
            taxonomy = load_classes(classes_file)
        except AnnotationError as e:
            problems += e.problems
        if taxonomy is not None and num_classes is not None and num_classes != taxonomy.num_fine:
            problems.append(f"{classes_file}: lists {taxonomy.num_fine} classes but --num-classes is {num_classes}")
    if num_classes is None:
        num_classes = taxonomy.num_fine if taxonomy is not None else 52
    if lists is None:
        list_files = sorted(root.glob("*_list_videos.txt"))
    else:
        list_files = [Path(p) if Path(p).is_absolute() else root / p for p in lists]
    videos_root = root / video_dir
    if not list_files:
        problems.append(f"{root}: no list files (*_list_videos.txt)")
    per_list = {}
    records = []
    seen: dict[str, str] = {}  # shared: a video listed in two lists (e.g. train and val) is a problem too
    for lf in list_files:
        # presence is checked here, not by scan_list, so that lines naming missing videos still count per class
        recs, probs = scan_list(lf, video_dir=videos_root, num_classes=num_classes, check_files=False, seen=seen)
        if not recs and not probs:  # an empty list trains or tests on nothing; almost always a mistake
            probs.append(f"{lf}: the list names no videos (empty file?)")
        missing = [r for r in recs if not (videos_root / r.path).is_file()]
        probs += [f"{r.source}: video not found: {videos_root / r.path}" for r in missing]
        problems += probs
        records += [r for r in recs if (videos_root / r.path).is_file()]
        per_list[lf.name] = {"lines": len(recs), "missing_videos": len(missing), "problems": len(probs),
                             "class_counts": dict(sorted(Counter(r.label for r in recs).items()))}
    hints = []
    if classes is None:  # MA-52 assumed: say so when the folder holds a classes file of its own
        for path, found in find_classes_files(root, exclude=set(list_files)):
            hints.append(f"no --classes given, so the labels were checked against MA-52's 52 classes, but {path} "
                         f"reads as a classes file ({found.describe(with_source=False)}): if it is this dataset's, "
                         f"run again with --classes {path.name}")
    flow_root = None if flow_dir is None else root / flow_dir
    flow_missing = [] if flow_root is None else [r for r in records if not (flow_root / r.path).is_file()]
    problems += [f"{r.source}: flow video not found: {flow_root / r.path} (write the flow videos with "
                 f"`microact flow {videos_root} {flow_root}`)" for r in flow_missing]
    flow_jobs = set() if flow_root is None else {str(flow_root / r.path) for r in records} - {
        str(flow_root / r.path) for r in flow_missing}
    videos = {}
    if decode and records:
        jobs = sorted({str(videos_root / r.path) for r in records} | flow_jobs)
        n_workers = workers or os.cpu_count() or 1
        bar = tqdm(total=len(jobs), desc="probing videos", unit="video", disable=not progress)
        if n_workers == 1 or len(jobs) < 4:
            results = []
            for job in jobs:
                results.append(_probe_one((job, decoder)))
                bar.update()
        else:
            # not fork: a child forked after OpenCV's thread pool ran in this process (a detector, a resize)
            # hangs on its first cv2 call (see build_loader)
            with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
                results = []
                for res in pool.map(_probe_one, [(j, decoder) for j in jobs], chunksize=8):
                    results.append(res)
                    bar.update()
        bar.close()
        for res in results:
            videos[res["path"]] = res
            if "error" in res:
                problems.append(f"{res['path']}: {res['error']}")
    flows = {path: videos.pop(path) for path in flow_jobs if path in videos}  # reported apart from the videos
    flow_mismatched = 0
    for r in records if flows else []:
        video, flow = videos.get(str(videos_root / r.path)), flows.get(str(flow_root / r.path))
        if video and flow and "error" not in video and "error" not in flow \
                and flow["num_frames"] != video["num_frames"] - 1:
            flow_mismatched += 1
            problems.append(f"{flow['path']}: {flow['num_frames']} frames, but its video has {video['num_frames']}: "
                            "a flow video has one frame fewer than its video; write it again with `microact flow` "
                            "from these videos")
    good = [v for v in videos.values() if "error" not in v]
    report = {
        "root": str(root),
        "classes": (taxonomy.describe() if taxonomy is not None
                    else f"classes file {classes} has problems (listed below)"),
        # the names of a classes file, to say which of its classes have no clips (None for MA-52 by default)
        "class_names": list(taxonomy.fine_names) if taxonomy is not None and classes is not None else None,
        "lists": per_list,
        "videos_checked": len(videos),
        "videos_bad": len(videos) - len(good),
        "num_frames": _stats([v["num_frames"] for v in good]),
        "fps": _stats([v["fps"] for v in good]),
        "duration_s": _stats([v["duration"] for v in good]),
        "resolutions": dict(Counter(f"{v['width']}x{v['height']}" for v in good).most_common()),
        "rotated": sum(1 for v in good if v["rotation"]),
        "problems": problems,
        "hints": hints,
    }
    if flow_root is not None:
        report["flow"] = {"dir": str(flow_root), "listed": len(records), "missing": len(flow_missing),
                          "checked": len(flows), "bad": sum(1 for f in flows.values() if "error" in f),
                          "frame_count_mismatch": flow_mismatched}
    return report


def format_report(report: dict, max_problems: int = 50) -> str:
    """Human-readable text of :func:`check_dataset`'s report."""
    out = [f"dataset {report['root']}"]
    if "classes" in report:
        out.append(f"  classes: {report['classes']}")
    names = report.get("class_names")
    for name, info in report["lists"].items():
        counts = info["class_counts"]
        spread = (f"{len(counts)} classes, {min(counts.values())}..{max(counts.values())} per class"
                  if counts else "empty")
        out.append(f"  {name}: {info['lines']} well-formed lines ({info['missing_videos']} missing videos), "
                   f"{info['problems']} problem(s); {spread}")
        if names and counts and len(counts) < len(names) and len(names) <= 60:
            absent = [f"{i} {names[i]}" for i in range(len(names)) if i not in counts]
            out.append(f"    no clips of: {', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}")
    if report["videos_checked"]:
        out.append(f"videos: {report['videos_checked']} checked, {report['videos_bad']} bad")
        for key, unit in (("num_frames", ""), ("fps", ""), ("duration_s", " s")):
            s = report[key]
            if s:
                out.append(f"  {key:<11} min {s['min']:.4g}{unit}  median {s['median']:.4g}{unit}  "
                           f"max {s['max']:.4g}{unit}")
        res = list(report["resolutions"].items())
        shown = ", ".join(f"{k} ({v})" for k, v in res[:8]) + (f", ... {len(res) - 8} more" if len(res) > 8 else "")
        out.append(f"  resolutions {shown}")
        if report["rotated"]:
            out.append(f"  {report['rotated']} video(s) carry a rotation")
    if "flow" in report:
        f = report["flow"]
        out.append(f"flow videos ({f['dir']}): {f['listed'] - f['missing']} of {f['listed']} present"
                   + (f", {f['checked']} checked, {f['bad']} bad, {f['frame_count_mismatch']} with a frame count "
                      "other than their video's minus one" if f["checked"] else ""))
    out += [f"hint: {h}" for h in report.get("hints", [])]
    problems = report["problems"]
    if problems:
        out.append(f"{len(problems)} problem(s):")
        out += [f"  {p}" for p in problems[:max_problems]]
        if len(problems) > max_problems:
            out.append(f"  ... and {len(problems) - max_problems} more (see --json)")
    else:
        out.append("no problems found")
    return "\n".join(out)


def cli_main(args) -> int:
    """Handler of ``microact data check``; exit code 1 when any problem is found."""
    report = check_dataset(args.root, lists=args.lists, video_dir=args.video_dir, num_classes=args.num_classes,
                           decoder=args.decoder, decode=not args.no_decode, workers=args.workers,
                           classes=getattr(args, "classes", None), flow_dir=getattr(args, "flow_dir", None))
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if report["problems"] else 0
