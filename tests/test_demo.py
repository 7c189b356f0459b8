"""`microact demo` end to end at a reduced size: every stage runs and leaves its files."""
from __future__ import annotations

import json
import shlex
import zipfile

from microact.cli import main


def test_demo_pipeline_small(tmp_path, capsys):
    out = tmp_path / "demo"
    # 3 clips per class: one each for train, val and test (what is checked here does not depend on the counts)
    code = main(["demo", "--out", str(out), "--num-classes", "4", "--clips-per-class", "3", "--epochs", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "demo finished" in printed and "where everything is" in printed

    summary = json.loads((out / "demo_summary.json").read_text())
    assert [s["exit"] for s in summary["steps"]] == [0] * 7
    assert 0.0 <= summary["test_f1_mean"] <= 1.0 and 0.0 <= summary["chance_f1_mean"] <= 1.0
    interval = summary["test_f1_mean_interval"]  # the test report's, as printed
    assert interval["low"] <= summary["test_f1_mean"] <= interval["high"]
    assert f"95 % bootstrap interval {interval['low']:.2f}-{interval['high']:.2f}" in printed

    cropped = out / "data_cropped"
    boxes = json.loads((cropped / "boxes.json").read_text())
    assert len(boxes) == 12 and (cropped / "crop_preview.png").is_file()
    run = out / "run"
    for name in ("config.yaml", "env.json", "log.csv", "metrics.json", "model_final.safetensors"):
        assert (run / name).is_file(), name
    test_dir = run / "test"
    for name in ("metrics.json", "results.pkl", "results.npz", "confusion_fine.png", "per_class_f1.png"):
        assert (test_dir / name).is_file(), name
    with zipfile.ZipFile(out / "submission" / "submission_mac2024.zip") as z:
        rows = z.read("prediction.csv").decode().splitlines()
    test_names = [line.split()[0] for line in (cropped / "test_list_videos.txt").read_text().splitlines() if line]
    assert rows[0] == "id,pred_label_1,pred_label_2" and [r.split(",")[0] for r in rows[1:]] == test_names
    prediction = json.loads((out / "predict.json").read_text())
    assert prediction and (out / "predict_annotated.mp4").is_file()
    # the untrimmed video: 4 classes' clips in a row, windows one clip long every half clip
    timeline = json.loads((out / "timeline.json").read_text())["predictions"][0]
    assert (out / "timeline.png").is_file() and len(timeline["windows"]) == 7 and timeline["segments"]
    t = summary["timeline_windows"]
    assert t["windows"] == 7 and t["within_one_clip"] == 4 and 0.0 <= t["correct"] <= 1.0

    # the "next" commands it prints run as printed, with this demo's files
    assert summary["next"] and all(f"  {command}" in printed for command in summary["next"])
    for command in summary["next"]:
        words = shlex.split(command)
        assert words[0] == "microact" and main(words[1:]) == 0, command
    assert (out / "demo.onnx").is_file() and (run / "val_results" / "metrics.json").is_file()
