"""MA-52 list files: the real lists parse; every problem is collected with file:line."""
from __future__ import annotations

from pathlib import Path

import pytest

from microact.data.annotations import AnnotationError, VideoRecord, load_label_names, load_list, load_lists
from microact.errors import MicroactError
from microact.ma52 import FINE_NAMES

MA52 = Path("/work/shared/data/ma52")
if not MA52.is_dir():  # the repository's copy when the shared folder is absent
    MA52 = Path(__file__).parent / "data" / "ma52"


def _plain_parse(path):
    text = Path(path).read_text()
    return [(line.split()[0], int(line.split()[1])) for line in text.splitlines() if line.strip()]


@pytest.mark.skipif(not (MA52 / "train_list_videos.txt").is_file(), reason="MA-52 list files not available")
def test_real_ma52_lists():
    train = load_list(MA52 / "train_list_videos.txt", video_dir=MA52, num_classes=52, check_files=False)
    val = load_list(MA52 / "val_list_videos.txt", video_dir=MA52, num_classes=52, check_files=False)
    test = load_list(MA52 / "test_list_videos.txt", video_dir=MA52, num_classes=52, check_files=False)
    assert (len(train), len(val), len(test)) == (11250, 5586, 5586)
    assert [(r.path, r.label) for r in train] == _plain_parse(MA52 / "train_list_videos.txt")
    assert {r.label for r in test} == {0} and test[-1].path == "test5585.mp4"
    assert train[0] == VideoRecord("0003_01_0001.mp4", 9, f"{MA52 / 'train_list_videos.txt'}:1")
    both = load_lists([MA52 / "train_list_videos.txt", MA52 / "val_list_videos.txt"], video_dir=MA52,
                      num_classes=52, check_files=False)
    assert len(both) == 16836 and both[11250] == val[0]
    names = load_label_names(MA52 / "label_name.txt")
    assert len(names) == 52 and names[0] == "shaking body"
    assert names == list(FINE_NAMES)


def test_crlf_blank_lines_and_missing_final_newline(tmp_path):
    (tmp_path / "a.mp4").touch()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.mp4").touch()
    lst = tmp_path / "l.txt"
    lst.write_bytes(b"a.mp4 3\r\n\r\n  \n sub/b.mp4  51 ")
    recs = load_list(lst, video_dir=tmp_path, num_classes=52)
    assert recs == [VideoRecord("a.mp4", 3, f"{lst}:1"), VideoRecord("sub/b.mp4", 51, f"{lst}:4")]


def test_every_problem_is_reported_at_once(tmp_path):
    for name in ("ok.mp4", "dup.mp4", "x.mp4"):
        (tmp_path / name).touch()
    lst = tmp_path / "bad.txt"
    lst.write_bytes(b"ok.mp4 1\n"           # 1 fine
                    b"dup.mp4 2\n"          # 2 fine
                    b"dup.mp4 2\n"          # 3 duplicate
                    b"x.mp4\n"              # 4 missing column
                    b"x.mp4 1 extra\n"      # 5 extra column
                    b"x.mp4 one\n"          # 6 not an integer
                    b"x.mp4 52\n"           # 7 out of range
                    b"x.mp4 -1\n"           # 8 out of range
                    b"gone.mp4 0\n"         # 9 missing file
                    b"caf\xe9.mp4 0\n"      # 10 not UTF-8
                    b"../up.mp4 0\n"        # 11 leaves the root
                    b"/etc/abs.mp4 0\n")    # 12 absolute
    with pytest.raises(AnnotationError) as info:
        load_list(lst, video_dir=tmp_path, num_classes=52)
    err = info.value
    assert isinstance(err, MicroactError)
    lines = sorted(int(p.split(":")[1]) for p in err.problems)
    assert lines == list(range(3, 13))
    msg = str(err)
    for needle in (f"{lst}:3: duplicate of {lst}:2", f"{lst}:4: expected", f"{lst}:5: expected",
                   f"{lst}:6: label 'one' is not an integer", f"{lst}:7: label 52 is outside [0, 52)",
                   f"{lst}:9: video not found", f"{lst}:10: not valid UTF-8", f"{lst}:11: path '../up.mp4' leaves",
                   f"{lst}:12: absolute path"):
        assert needle in msg


def test_duplicates_across_lists_and_allowed_paths(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("v.mp4 1\nw.mp4 2\n")
    b.write_text("./v.mp4 3\n")
    with pytest.raises(AnnotationError, match=f"{b}:1: duplicate of {a}:1"):
        load_lists([a, b], video_dir=tmp_path, num_classes=52, check_files=False)
    c = tmp_path / "c.txt"
    c.write_text("../outside.mp4 0\n/abs/path.mp4 1\n")
    recs = load_list(c, video_dir=tmp_path, num_classes=52, check_files=False, allow_absolute_paths=True)
    assert [r.path for r in recs] == ["../outside.mp4", "/abs/path.mp4"]


def test_listing_is_capped_and_missing_list_named(tmp_path):
    lst = tmp_path / "many.txt"
    lst.write_text("".join(f"v{i}.mp4 99\n" for i in range(30)))
    with pytest.raises(AnnotationError) as info:
        load_list(lst, video_dir=tmp_path, num_classes=52, check_files=False)
    assert len(info.value.problems) == 30
    assert "... and 10 more" in str(info.value) and str(info.value).count("is outside") == 20
    with pytest.raises(AnnotationError, match="nothere.txt: list file not found"):
        load_list(tmp_path / "nothere.txt", video_dir=tmp_path, num_classes=52)


def test_label_names_errors(tmp_path):
    good = tmp_path / "names.txt"
    good.write_bytes(b"1\tb thing\r\n0\ta thing\r\n")
    assert load_label_names(good) == ["a thing", "b thing"]
    bad = tmp_path / "bad.txt"
    bad.write_text("0\ta\n0\tb\nx\tc\n3\td\n")
    with pytest.raises(AnnotationError) as info:
        load_label_names(bad)
    msg = str(info.value)
    assert f"{bad}:2: id 0 appears twice" in msg and f"{bad}:3: id 'x'" in msg and "ids missing: 1, 2" in msg


def test_utf8_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    """Windows editors (the tools that write CRLF lists) may save UTF-8 with a byte order mark: the first record
    and the first class id must read as on every other line, not as a missing '\\ufeffa.mp4' or an id '\\ufeff0'."""
    (tmp_path / "a.mp4").touch()
    (tmp_path / "b.mp4").touch()
    text = "a.mp4 3\r\nb.mp4 4\r\n"
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_bytes(text.encode("utf-8"))
    marked.write_bytes(text.encode("utf-8-sig"))
    expected = [(r.path, r.label) for r in load_list(plain, video_dir=tmp_path, num_classes=52)]
    assert [(r.path, r.label) for r in load_list(marked, video_dir=tmp_path, num_classes=52)] == expected
    names = "0\ta thing\r\n1\tb thing\r\n"
    (tmp_path / "n.txt").write_bytes(names.encode("utf-8"))
    (tmp_path / "n_bom.txt").write_bytes(names.encode("utf-8-sig"))
    assert load_label_names(tmp_path / "n_bom.txt") == load_label_names(tmp_path / "n.txt")
