"""MA-52 annotation files: ``<file> <label>`` video lists and ``label_name.txt``.

The original lists use CRLF line ends and the test list has no final newline (SEED.md §11.1); both
are accepted, as are blank lines. Every problem found in a list (bad lines, wrong column counts,
labels that are not integers or out of range, duplicates within or across lists, missing files,
bytes that are not UTF-8, paths leaving the dataset folder) is collected first and reported in one
:class:`AnnotationError`, so a user fixes a broken list in one pass instead of one error per run.
"""
from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from microact.errors import MicroactError

MAX_LISTED_PROBLEMS = 20


class AnnotationError(MicroactError, ValueError):
    """One or more problems in annotation files; the message lists each as ``file:line: problem``."""

    def __init__(self, problems: Sequence[str], limit: int = MAX_LISTED_PROBLEMS):
        self.problems = list(problems)
        shown = self.problems[:limit]
        lines = [f"{len(self.problems)} problem(s) in the annotation files:"] + [f"  {p}" for p in shown]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class VideoRecord:
    """One annotated video.

    Attributes:
        path: file name relative to the video folder, as written in the list (``/``-separated).
        label: fine class id in ``[0, num_classes)``.
        source: ``"list_file:line"`` where the record was read, for error messages.
    """

    path: str
    label: int
    source: str


def scan_list(list_file: str | os.PathLike, *, video_dir: str | os.PathLike, num_classes: int,
              check_files: bool = True, allow_absolute_paths: bool = False,
              seen: dict[str, str] | None = None) -> tuple[list[VideoRecord], list[str]]:
    """Parse a list file without raising: the good records and the problems, each ``file:line: problem``.

    Args:
        list_file: ``<file> <label>`` list.
        video_dir: folder the file names are relative to (used for the existence check and the root check).
        num_classes: labels must lie in ``[0, num_classes)``.
        check_files: report listed videos that do not exist.
        allow_absolute_paths: accept absolute paths and paths that leave ``video_dir``.
        seen: normalised path -> source of records already read (duplicates across lists); updated in place.

    Returns:
        ``(records, problems)``.
    """
    list_file = Path(list_file)
    seen = {} if seen is None else seen
    records: list[VideoRecord] = []
    problems: list[str] = []
    try:
        data = list_file.read_bytes()
    except FileNotFoundError:
        return [], [f"{list_file}: list file not found"]
    except OSError as e:
        return [], [f"{list_file}: cannot read list file ({e.strerror or e})"]
    video_dir = Path(video_dir)
    data = data.removeprefix(codecs.BOM_UTF8)  # Windows editors save "UTF-8" with a byte order mark
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{list_file}:{number}"
        try:
            line = raw.decode("utf-8").strip()  # strip() also removes the CR of CRLF files
        except UnicodeDecodeError as e:
            problems.append(f"{where}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})")
            continue
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            problems.append(f"{where}: expected '<file> <label>', got {len(parts)} column(s): {line[:80]!r}")
            continue
        name, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            problems.append(f"{where}: label {label_text!r} is not an integer")
            continue
        if not 0 <= label < num_classes:
            problems.append(f"{where}: label {label} is outside [0, {num_classes})")
            continue
        problem = _path_problem(name, allow_absolute_paths)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        key = os.path.normpath(name)
        if key in seen:
            problems.append(f"{where}: duplicate of {seen[key]} ({name})")
            continue
        seen[key] = where
        if check_files and not (video_dir / name).is_file():
            problems.append(f"{where}: video not found: {video_dir / name}")
            continue
        records.append(VideoRecord(path=name, label=label, source=where))
    return records, problems


def _path_problem(name: str, allow_absolute_paths: bool) -> str | None:
    if allow_absolute_paths:
        return None
    if os.path.isabs(name) or PurePosixPath(name).is_absolute():
        return f"absolute path {name!r} not allowed (set data.allow_absolute_paths=true to accept it)"
    normalised = os.path.normpath(name)
    if normalised == ".." or normalised.startswith(".." + os.sep) or normalised.startswith("../"):
        return f"path {name!r} leaves the dataset folder (set data.allow_absolute_paths=true to accept it)"
    return None


def load_list(list_file: str | os.PathLike, *, video_dir: str | os.PathLike, num_classes: int,
              check_files: bool = True, allow_absolute_paths: bool = False) -> list[VideoRecord]:
    """Read one ``<file> <label>`` list.

    Args:
        list_file: the list file.
        video_dir: folder that the file names are relative to.
        num_classes: labels must lie in ``[0, num_classes)``.
        check_files: fail when a listed video does not exist.
        allow_absolute_paths: accept absolute paths and ``..`` paths leaving ``video_dir``.

    Returns:
        The records in file order.

    Raises:
        AnnotationError: listing every problem as ``file:line: problem``.
    """
    return load_lists([list_file], video_dir=video_dir, num_classes=num_classes, check_files=check_files,
                      allow_absolute_paths=allow_absolute_paths)


def load_lists(list_files: Iterable[str | os.PathLike], *, video_dir: str | os.PathLike, num_classes: int,
               check_files: bool = True, allow_absolute_paths: bool = False) -> list[VideoRecord]:
    """Read several lists into one record list (e.g. train + val for the seed's train+val runs).

    A video listed twice, in the same list or in two of them, is an error.

    Raises:
        AnnotationError: listing every problem of every list.
    """
    seen: dict[str, str] = {}
    records: list[VideoRecord] = []
    problems: list[str] = []
    for list_file in list_files:
        r, p = scan_list(list_file, video_dir=video_dir, num_classes=num_classes, check_files=check_files,
                         allow_absolute_paths=allow_absolute_paths, seen=seen)
        records += r
        problems += p
    if problems:
        raise AnnotationError(problems)
    return records


def load_label_names(path: str | os.PathLike) -> list[str]:
    """Read ``label_name.txt`` (``<id><TAB><name>`` per line, ids 0..K-1 in any order, CRLF accepted): the names of
    a classes file (:func:`microact.taxonomy.load_classes`, which also reads a third, group column).

    Returns:
        Names indexed by class id.

    Raises:
        AnnotationError: for unreadable files, bad lines, duplicate or missing ids.
    """
    from microact.taxonomy import load_classes

    return list(load_classes(path).fine_names)
