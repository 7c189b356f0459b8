"""What kind of file a path is, from its first bytes: for messages when a command is given the wrong file.

Recipes, weights, result dumps and videos are easy to swap on a command line (``microact test WEIGHTS RECIPE``,
``microact submit metrics.json``); each reader then fails in its own terms ("not valid UTF-8", "invalid load
key"), which names a symptom instead of the mistake. :func:`sniff` names the file's kind so that the reader can
say "a safetensors weights file, not a YAML recipe". It only reads the first bytes and never parses the file.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["sniff", "BINARY_KINDS", "TEXT_SUFFIXES"]

SAFETENSORS = "a safetensors weights file"
ZIP = "a zip archive (a PyTorch checkpoint, an .npz, a submission?)"
PICKLE = "a Python pickle (a PyTorch checkpoint or a result dump?)"
VIDEO = "a video"
ONNX = "an ONNX graph"
FOLDER = "a folder"

# kinds no YAML recipe can be
BINARY_KINDS = frozenset({SAFETENSORS, ZIP, PICKLE, VIDEO, ONNX})

TEXT_SUFFIXES = {".yaml": "a YAML file", ".yml": "a YAML file", ".json": "a JSON file", ".csv": "a CSV file",
                  ".txt": "a text file"}


def sniff(path: str | os.PathLike) -> str | None:
    """A short description of what ``path`` holds (``"a safetensors weights file"``, ``"a YAML file"`` ...).

    Returns:
        One of this module's kinds, ``"a YAML file"`` and the like for text files (named by their suffix), or
        ``None`` when the file is missing, unreadable or of no kind recognised here.
    """
    path = Path(path)
    if path.is_dir():
        return FOLDER
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
        size = path.stat().st_size
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return ZIP
    # safetensors: an 8-byte little-endian header length, then the JSON header itself
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return SAFETENSORS
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle protocol 2..5
        return PICKLE
    if head[4:8] == b"ftyp" or head.startswith((b"\x1aE\xdf\xa3", b"RIFF")):  # mp4/mov, mkv/webm, avi
        return VIDEO
    if path.suffix.lower() == ".onnx":
        return ONNX
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 3:  # not merely a character cut at the end of the sample
                return None
        return TEXT_SUFFIXES.get(path.suffix.lower(), "a text file")
    return None
