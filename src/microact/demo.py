"""`microact demo`: the whole pipeline, end to end, on a synthetic dataset.

synth -> crop (real person detector) -> train (configs/tiny_synth.yaml) -> multi-clip test ->
metrics, plots, result dump, MAC submission -> predict on one video -> predict an untrimmed video (test clips of
several classes played one after another) as a timeline. Every step is the same subcommand a user would run, so
the demo doubles as a walkthrough; the commands are printed.
"""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from microact.errors import MicroactError


def find_recipe(name: str = "tiny_synth.yaml") -> Path:
    """Locate a recipe shipped in the repository's ``configs/`` folder."""
    candidates = [Path.cwd() / "configs" / name, Path(__file__).resolve().parents[2] / "configs" / name]
    for path in candidates:
        if path.is_file():
            return path
    raise MicroactError(f"recipe {name} not found (looked in {', '.join(str(c.parent) for c in candidates)}); "
                        "pass --config PATH")


def _run(step: str, argv: list[str], log: list[dict]) -> None:
    from microact.cli import main

    print(f"\n=== {step}: microact {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    log.append({"step": step, "command": "microact " + " ".join(argv), "seconds": round(seconds, 1), "exit": code})
    if code != 0:
        raise MicroactError(f"demo step '{step}' failed with exit code {code}")


def run_demo(out: str | Path, config: str | Path | None = None, num_classes: int = 12, clips_per_class: int = 30,
             epochs: int | None = None, seed: int = 0) -> dict:
    """Run every stage and return a summary dict (also written to ``OUT/demo_summary.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = str(config or find_recipe())
    raw, cropped, run_dir = out / "data_raw", out / "data_cropped", out / "run"
    test_dir, submission_dir = run_dir / "test", out / "submission"
    log: list[dict] = []
    start = time.perf_counter()

    _run("1/7 synthesise", ["synth", str(raw), "--num-classes", str(num_classes), "--clips-per-class",
                            str(clips_per_class), "--seed", str(seed)], log)
    _run("2/7 person crop", ["crop", str(raw), str(cropped)], log)
    overrides = [f"data.root={cropped}", f"train.seed={seed}"] + ([f"train.epochs={epochs}"] if epochs else [])
    resume = ["--resume"] if (run_dir / "checkpoints").is_dir() else []
    _run("3/7 train", ["train", recipe, *overrides, "--out", str(run_dir), *resume], log)
    weights = run_dir / json.loads((run_dir / "metrics.json").read_text()).get("selected", "model_final.safetensors")
    _run("4/7 test", ["test", recipe, str(weights), f"data.root={cropped}", "--split", "test",
                      "--dump", str(test_dir / "results.pkl"), "--out", str(test_dir)], log)
    _run("5/7 submission", ["submit", str(test_dir / "results.pkl"), "--out", str(submission_dir),
                            "--list", str(cropped / "test_list_videos.txt")], log)
    example = _first_test_video(raw)
    _run("6/7 predict", ["predict", str(example), "--config", recipe, "--checkpoint", str(weights),
                         "--json", str(out / "predict.json"), "--annotate", str(out / "predict_annotated.mp4")], log)

    untrimmed, truth, clip_s = _untrimmed_video(raw, out / "untrimmed.mp4")
    _run("7/7 timeline", ["predict", str(untrimmed), "--config", recipe, "--checkpoint", str(weights),
                          "--window", f"{clip_s:.3f}", "--stride", f"{clip_s / 2:.3f}",
                          "--timeline", str(out / "timeline.png"), "--json", str(out / "timeline.json")], log)

    # what to try next, with this run's files: the weights record their recipe, so predict and export need no --config
    next_steps = [
        ["predict", str(example), "--checkpoint", str(weights)],
        ["test", str(run_dir / "config.yaml"), str(weights), "--split", "val"],
        ["export", str(weights), str(out / "demo.onnx")],
    ]
    metrics = json.loads((test_dir / "metrics.json").read_text())
    chance = _chance_f1_mean(cropped)
    summary = {
        "minutes": round((time.perf_counter() - start) / 60, 2),
        "test_f1_mean": metrics.get("f1_mean"),
        "test_f1_mean_interval": metrics.get("f1_mean_interval"),
        "chance_f1_mean": chance,
        "metrics": {k: metrics.get(k) for k in ("f1_mean", "fine_macro", "fine_micro", "coarse_macro", "coarse_micro",
                                                   "top1", "top5")},
        "timeline_windows": _timeline_accuracy(out / "timeline.json", truth),
        "steps": log,
        "weights": str(weights),
        "next": ["microact " + " ".join(shlex.quote(a) for a in argv) for argv in next_steps],
        "files": {
            "synthetic data": str(raw),
            "cropped data (+ boxes.json, crop_preview.png)": str(cropped),
            "run (config, logs, checkpoints, plots)": str(run_dir),
            "test metrics / plots / dump": str(test_dir),
            "MAC 2024 submission": str(submission_dir),
            "prediction example": str(out / "predict.json"),
            "untrimmed video, its timeline (json, plot)": str(out / "timeline.png"),
        },
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary)
    return summary


def _labels(root: Path, list_name: str):
    from microact.data.annotations import load_list

    return load_list(root / list_name, video_dir=root, num_classes=52, check_files=False)


def _first_test_video(root: Path) -> Path:
    records = _labels(root, "test_list_videos.txt")
    if not records:
        raise MicroactError(f"{root / 'test_list_videos.txt'}: empty test list")
    return root / records[0].path


def _untrimmed_video(root: Path, path: Path, max_clips: int = 6) -> tuple[Path, list[tuple[float, float, int]], float]:
    """One video of the first test clip of up to ``max_clips`` classes, one after another.

    Returns:
        ``(path, [(start_s, end_s, label)] per clip, length of the first clip in seconds)``.
    """
    import numpy as np

    from microact.data.decode import iter_frames, probe_video
    from microact.data.video_writer import write_video

    chosen, seen = [], set()
    for record in _labels(root, "test_list_videos.txt"):
        if record.label not in seen:
            seen.add(record.label)
            chosen.append(record)
        if len(chosen) == max_clips:
            break
    fps = probe_video(root / chosen[0].path).fps
    truth, frames, start = [], [], 0
    for record in chosen:
        clip = [f for _, f in iter_frames(root / record.path)]
        frames.extend(clip)
        truth.append((start / fps, (start + len(clip)) / fps, record.label))
        start += len(clip)
    write_video(path, np.stack(frames), fps=fps)  # synthetic clips share one size
    return path, truth, truth[0][1] - truth[0][0]


def _timeline_accuracy(timeline_json: Path, truth: list[tuple[float, float, int]]) -> dict:
    """Windows that lie within one clip (at least 90 % of their span; the others straddle two actions), and the
    share of those whose top-1 is that clip's class."""
    windows = json.loads(timeline_json.read_text())["predictions"][0]["windows"]
    inside = hits = 0
    for w in windows:
        length = w["end_s"] - w["start_s"]
        for start, end, label in truth:
            if min(end, w["end_s"]) - max(start, w["start_s"]) >= 0.9 * length:
                inside += 1
                hits += w["top_k"][0]["id"] == label
    return {"windows": len(windows), "within_one_clip": inside, "correct": round(hits / max(inside, 1), 4)}


def _chance_f1_mean(root: Path) -> float:
    """F1_mean of always predicting the most frequent training class, scored on the test list: the bar to beat."""
    import numpy as np

    from microact.metrics import f1_mean

    train, test = (np.array([r.label for r in _labels(root, name)])
                   for name in ("train_list_videos.txt", "test_list_videos.txt"))
    majority = np.bincount(train).argmax()
    return round(float(f1_mean(test, np.full_like(test, majority))["f1_mean"]), 4)


def _print_summary(summary: dict) -> None:
    print("\n" + "=" * 72)
    f1, chance = summary["test_f1_mean"], summary["chance_f1_mean"]
    interval = summary.get("test_f1_mean_interval")
    spread = f", 95 % bootstrap interval {interval['low']:.2f}-{interval['high']:.2f}" if interval else ""
    print(f"demo finished in {summary['minutes']} min: test F1_mean {f1:.4f}{spread} "
          f"(majority-class baseline {chance:.4f})")
    for k, v in summary["metrics"].items():
        if v is not None:
            print(f"  {k:13s} {v:.4f}")
    t = summary["timeline_windows"]
    print(f"untrimmed video: {t['windows']} windows, {t['within_one_clip']} of them within one clip; the top-1 of "
          f"{100 * t['correct']:.0f}% of those is that clip's class")
    print("where everything is:")
    for what, path in summary["files"].items():
        print(f"  {what:48s} {path}")
    print(f"next: the trained weights are {summary['weights']}; they record their recipe, so predict and export "
          "need no --config:")
    for command in summary["next"]:
        print(f"  {command}")
    print("  your own videos and classes: README.md, 'Your own dataset' (microact train RECIPE data.root=... "
          "data.classes=... --out RUN)")


def cli_main(args) -> int:
    run_demo(args.out, config=args.config, num_classes=args.num_classes, clips_per_class=args.clips_per_class,
             epochs=args.epochs, seed=args.seed)
    return 0
