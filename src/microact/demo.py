"""`microact demo`: the whole pipeline, end to end, on a synthetic dataset.

synth -> crop (real person detector) -> train (configs/tiny_synth.yaml) -> multi-clip test ->
metrics, plots, result dump, MAC submission -> predict on one video. Every step is the same
subcommand a user would run, so the demo doubles as a walkthrough; the commands are printed.
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

    _run("1/6 synthesise", ["synth", str(raw), "--num-classes", str(num_classes), "--clips-per-class",
                            str(clips_per_class), "--seed", str(seed)], log)
    _run("2/6 person crop", ["crop", str(raw), str(cropped)], log)
    overrides = [f"data.root={cropped}", f"train.seed={seed}"] + ([f"train.epochs={epochs}"] if epochs else [])
    resume = ["--resume"] if (run_dir / "checkpoints").is_dir() else []
    _run("3/6 train", ["train", recipe, *overrides, "--out", str(run_dir), *resume], log)
    weights = run_dir / json.loads((run_dir / "metrics.json").read_text()).get("selected", "model_final.safetensors")
    _run("4/6 test", ["test", recipe, str(weights), f"data.root={cropped}", "--split", "test",
                      "--dump", str(test_dir / "results.pkl"), "--out", str(test_dir)], log)
    _run("5/6 submission", ["submit", str(test_dir / "results.pkl"), "--out", str(submission_dir),
                            "--list", str(cropped / "test_list_videos.txt")], log)
    example = _first_test_video(raw)
    _run("6/6 predict", ["predict", str(example), "--config", recipe, "--checkpoint", str(weights),
                         "--json", str(out / "predict.json"), "--annotate", str(out / "predict_annotated.mp4")], log)

    metrics = json.loads((test_dir / "metrics.json").read_text())
    chance = _chance_f1_mean(cropped)
    summary = {
        "minutes": round((time.perf_counter() - start) / 60, 2),
        "test_f1_mean": metrics.get("f1_mean"),
        "chance_f1_mean": chance,
        "metrics": {k: metrics.get(k) for k in ("f1_mean", "fine_macro", "fine_micro", "coarse_macro", "coarse_micro",
                                                   "top1", "top5")},
        "steps": log,
        "files": {
            "synthetic data": str(raw),
            "cropped data (+ boxes.json, crop_preview.png)": str(cropped),
            "run (config, logs, checkpoints, plots)": str(run_dir),
            "test metrics / plots / dump": str(test_dir),
            "MAC 2024 submission": str(submission_dir),
            "prediction example": str(out / "predict.json"),
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
    print(f"demo finished in {summary['minutes']} min: test F1_mean {f1:.4f} (majority-class baseline {chance:.4f})")
    for k, v in summary["metrics"].items():
        if v is not None:
            print(f"  {k:13s} {v:.4f}")
    print("where everything is:")
    for what, path in summary["files"].items():
        print(f"  {what:48s} {path}")


def cli_main(args) -> int:
    run_demo(args.out, config=args.config, num_classes=args.num_classes, clips_per_class=args.clips_per_class,
             epochs=args.epochs, seed=args.seed)
    return 0
