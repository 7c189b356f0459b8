"""`microact data check`: a broken folder exits 1 and names each problem; a clean one exits 0."""
from __future__ import annotations

import json

from microact.cli import main


def _dataset(folder, make_video):
    for i in range(3):
        make_video(f"0003_01_000{i}.mp4", num_frames=10 + 2 * i, height=48, width=32, fps=15, seed=i, folder=folder)
    make_video("0003_01_0009.mp4", num_frames=8, height=32, width=64, fps=10, folder=folder)
    (folder / "train_list_videos.txt").write_bytes(
        b"0003_01_0000.mp4 1\r\n0003_01_0001.mp4 2\r\n0003_01_0009.mp4 2\r\n")
    (folder / "val_list_videos.txt").write_bytes(b"0003_01_0002.mp4 5")


def test_clean_folder_exits_0(tmp_path, make_video, capsys):
    _dataset(tmp_path, make_video)
    report_file = tmp_path / "report.json"
    code = main(["data", "check", str(tmp_path), "--workers", "1", "--json", str(report_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "no problems found" in out and "48x32" not in out and "32x48 (3)" in out and "64x32 (1)" in out
    report = json.loads(report_file.read_text())
    assert report["videos_checked"] == 4 and report["videos_bad"] == 0
    assert report["num_frames"] == {"min": 8, "median": 11, "max": 14}
    assert report["fps"]["min"] == 10 and report["fps"]["max"] == 15
    assert report["lists"]["train_list_videos.txt"]["class_counts"] == {"1": 1, "2": 2}


def test_broken_folder_exits_1_naming_each_problem(tmp_path, make_video, capsys):
    _dataset(tmp_path, make_video)
    (tmp_path / "0003_01_0001.mp4").write_bytes(b"\x00\x00\x00 garbage" * 100)  # corrupt video
    with open(tmp_path / "val_list_videos.txt", "ab") as f:
        f.write(b"\n0003_01_0003.mp4\n0003_01_0004.mp4 77\n0003_01_0000.mp4 1\nnot_there.mp4 3\n")
    code = main(["data", "check", str(tmp_path), "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 1
    val = tmp_path / "val_list_videos.txt"
    for needle in (f"{val}:2: expected '<file> <label>'", f"{val}:3: label 77 is outside [0, 52)",
                   f"{val}:4: duplicate of {tmp_path / 'train_list_videos.txt'}:1", f"{val}:5: video not found",
                   f"{tmp_path / '0003_01_0001.mp4'}: not a readable video", "5 problem(s)"):
        assert needle in out, needle
    # list-only mode does not open videos, so only the four list problems remain
    assert main(["data", "check", str(tmp_path), "--no-decode"]) == 1
    assert "4 problem(s)" in capsys.readouterr().out


def test_flow_videos_are_checked_against_their_videos(tmp_path, make_video, capsys):
    """--flow-dir: a missing flow video and one written from another video (a frame count other than its video's
    minus one) are problems; flow videos `microact flow` wrote from these videos pass."""
    from microact.data.flow import run_flow

    _dataset(tmp_path, make_video)
    assert run_flow(tmp_path, tmp_path / "flow", workers=1, progress=False)["done"] == 4
    report_file = tmp_path / "report.json"
    assert main(["data", "check", str(tmp_path), "--flow-dir", "flow", "--workers", "1",
                 "--json", str(report_file)]) == 0
    out = capsys.readouterr().out
    assert "flow videos (" in out and "4 of 4 present, 4 checked, 0 bad, 0 with a frame count" in out
    report = json.loads(report_file.read_text())
    assert report["videos_checked"] == 4 and report["num_frames"] == {"min": 8, "median": 11, "max": 14}

    (tmp_path / "flow" / "0003_01_0000.mp4").unlink()
    # the flow of the 14-frame video written where the 12-frame video's belongs
    (tmp_path / "flow" / "0003_01_0002.mp4").replace(tmp_path / "flow" / "0003_01_0001.mp4")
    assert main(["data", "check", str(tmp_path), "--flow-dir", "flow", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"train_list_videos.txt:1: flow video not found: {tmp_path / 'flow' / '0003_01_0000.mp4'}" in out
    assert f"`microact flow {tmp_path} {tmp_path / 'flow'}`" in out
    assert f"{tmp_path / 'flow' / '0003_01_0001.mp4'}: 13 frames, but its video has 12" in out
    assert "val_list_videos.txt:1: flow video not found" in out  # 0003_01_0002's flow was moved away
    assert "2 of 4 present" in out


def test_a_classes_file_in_the_folder_is_named_when_no_classes_are_given(tmp_path, make_video, capsys):
    """Without --classes the labels are checked against MA-52: a classes file of another dataset beside the lists
    gets a hint naming --classes FILE; MA-52's own label_name.txt (and a copy of it), list files and text that is no
    classes file do not."""
    from microact.ma52 import FINE_NAMES

    _dataset(tmp_path, make_video)
    ma52_names = "".join(f"{i}\t{n}\n" for i, n in enumerate(FINE_NAMES))
    (tmp_path / "label_name.txt").write_text(ma52_names)
    (tmp_path / "ma52_copy.txt").write_text(ma52_names)
    (tmp_path / "notes.txt").write_text("recorded in March\n")
    assert main(["data", "check", str(tmp_path), "--no-decode"]) == 0
    assert "hint" not in capsys.readouterr().out  # a real MA-52 folder
    (tmp_path / "my_classes.txt").write_text("".join(f"{i}\tgesture {i}\n" for i in range(80)))
    with open(tmp_path / "val_list_videos.txt", "ab") as f:
        f.write(b"\n0003_01_0000.mp4 77\n")  # a label MA-52 does not have
    assert main(["data", "check", str(tmp_path), "--no-decode"]) == 1
    out = capsys.readouterr().out
    assert "label 77 is outside [0, 52)" in out
    hints = [line for line in out.splitlines() if line.startswith("hint:")]
    assert len(hints) == 1 and str(tmp_path / "my_classes.txt") in hints[0]
    assert "80 classes without groups" in hints[0] and "run again with --classes my_classes.txt" in hints[0]
    # given, the file is used and nothing is hinted (the duplicate line is the one problem left)
    assert main(["data", "check", str(tmp_path), "--no-decode", "--classes", "my_classes.txt"]) == 1
    out = capsys.readouterr().out
    assert "hint" not in out and "outside" not in out and "1 problem(s)" in out
