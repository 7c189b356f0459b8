"""Decode-once frame cache (``data.cache_dir``): decoded frames of each video kept on disk between epochs.

Two formats:

- ``npy`` (default, lossless): one uncompressed ``.npy`` file per entry, memory-mapped, so a clip reads only
  its sampled frames. Costs frames x H x W x 3 bytes per video (a 3-second 320x534 crop: 46 MB).
- ``jpeg`` (lossy, opt-in): every frame JPEG-compressed at ``jpeg_quality`` in one ``.jpgs`` file per entry;
  a clip reads and decodes only its sampled frames. On the benchmark's 320x534 crops 10-20x smaller than ``npy``;
  reading a clip from it costs about as much as decoding a crop written by ``microact crop`` (which skips most
  frames), so it pays off for videos that decode slowly. The price is JPEG's loss on top of the video's own (at
  quality 95, 34-44 dB PSNR to the decoded frames; docs/BENCHMARKS.md, "Data pipeline", has the figures).

Entries are keyed by the video's resolved path, size and mtime, the decoder, what was cached (every frame or
a test clip's sampled indices) and the format, so an edited video is decoded again. Files are written under a
temporary name and renamed, so concurrent DataLoader workers never read half an entry; a damaged entry is
decoded and written again.

``.jpgs`` layout (little-endian): the magic ``b"MAJPEG1\\0"``, ``uint32`` frame count N, height, width, then
``uint64`` offsets[N + 1] of the JPEG streams relative to the end of the header, then the streams.
"""
from __future__ import annotations

import hashlib
import os
import struct
import warnings
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import numpy as np

CacheFormat = Literal["npy", "jpeg"]
CACHE_FORMATS = ("npy", "jpeg")
_MAGIC = b"MAJPEG1\0"
_HEAD = struct.Struct("<8sIII")


class FrameCache:
    """Frames of videos cached in ``folder`` in one of :data:`CACHE_FORMATS`.

    Args:
        folder: cache folder (created on the first write).
        format: ``"npy"`` (lossless, large) or ``"jpeg"`` (lossy, compact).
        jpeg_quality: JPEG quality 1-100 of the ``jpeg`` format.
    """

    def __init__(self, folder: str | os.PathLike, format: CacheFormat = "npy", jpeg_quality: int = 95):
        if format not in CACHE_FORMATS:
            raise ValueError(f"cache format must be one of {CACHE_FORMATS}, got {format!r}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
        self.folder = Path(folder)
        self.format = format
        self.jpeg_quality = int(jpeg_quality)

    def frames(self, path: Path, key: str, decode: Callable[[], np.ndarray],
               indices: Optional[Sequence[int] | np.ndarray] = None) -> np.ndarray:
        """The cached frames ``[N, H, W, 3]`` uint8 of ``(path, key)``, decoding and storing them on a miss.

        Args:
            path: the video (its path, size and mtime are part of the entry's name).
            key: what is cached and how it was decoded, e.g. ``"pyav|all"``.
            decode: returns the frames to store when the entry is missing or damaged.
            indices: rows to return (clamped to the stored frame count); ``None``: all of them.
        """
        entry = self._entry(path, key)
        if entry.is_file():
            try:
                return self._read(entry, indices)
            except (OSError, ValueError, EOFError):  # EOFError: numpy's answer to an empty .npy file
                pass  # damaged (an interrupted disk, an old layout): decoded and written again below
        frames = decode()
        try:
            self._write(entry, frames)
        except OSError as e:  # a full or read-only disk costs the speed-up, never the clip
            warnings.warn(f"frame cache {self.folder}: cannot store {path.name} ({e}); it will be decoded again "
                          "next time", RuntimeWarning, stacklevel=2)
        return frames if indices is None else frames[_clamp(indices, len(frames))]

    def _entry(self, path: Path, key: str) -> Path:
        st = path.stat()
        fmt = "npy" if self.format == "npy" else f"jpeg{self.jpeg_quality}"
        name = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{key}|{fmt}".encode()).hexdigest()
        return self.folder / (name + (".npy" if self.format == "npy" else ".jpgs"))

    def _read(self, entry: Path, indices) -> np.ndarray:
        if self.format == "jpeg":
            return read_jpeg_frames(entry, indices)
        if indices is None:
            return np.load(entry)
        stored = np.load(entry, mmap_mode="r")  # only the wanted rows are read from disk
        return np.asarray(stored[_clamp(indices, len(stored))])

    def _write(self, entry: Path, frames: np.ndarray) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.stem}.{os.getpid()}.tmp{entry.suffix}")
        try:
            if self.format == "npy":
                np.save(tmp, frames)
            else:
                write_jpeg_frames(tmp, frames, self.jpeg_quality)
            os.replace(tmp, entry)  # atomic: concurrent workers never read half a file
        finally:
            tmp.unlink(missing_ok=True)


def _clamp(indices, count: int) -> np.ndarray:
    """Frame indices past the last of ``count`` stored frames point at the last one (as decoding clamps them)."""
    return np.minimum(np.asarray(indices, dtype=np.int64), count - 1)


def write_jpeg_frames(path: str | os.PathLike, frames: np.ndarray, quality: int = 95) -> None:
    """Store RGB uint8 frames ``[N, H, W, 3]`` as one ``.jpgs`` file (layout in the module docstring)."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"{path}: frames must be uint8 [N, H, W, 3] with N >= 1, got {frames.dtype} {frames.shape}")
    streams = []
    for frame in frames:
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError(f"{path}: OpenCV could not JPEG-encode a {frame.shape} frame")
        streams.append(data.tobytes())
    offsets = np.zeros(len(streams) + 1, dtype="<u8")
    offsets[1:] = np.cumsum([len(s) for s in streams])
    n, h, w = frames.shape[:3]
    with open(path, "wb") as f:
        f.write(_HEAD.pack(_MAGIC, n, h, w))
        f.write(offsets.tobytes())
        for s in streams:
            f.write(s)


def read_jpeg_frames(path: str | os.PathLike, indices: Optional[Sequence[int] | np.ndarray] = None) -> np.ndarray:
    """Frames ``[len(indices), H, W, 3]`` (RGB uint8) of a ``.jpgs`` file; only the wanted streams are read.

    Indices past the last frame are clamped to it. Raises ``ValueError`` on a file that is not a complete
    ``.jpgs`` file.
    """
    import cv2

    with open(path, "rb") as f:
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            raise ValueError(f"{path}: truncated frame cache entry")
        magic, n, h, w = _HEAD.unpack(head)
        if magic != _MAGIC or n == 0:
            raise ValueError(f"{path}: not a microact JPEG frame cache entry")
        offsets = np.frombuffer(f.read(8 * (n + 1)), dtype="<u8")
        if len(offsets) != n + 1:
            raise ValueError(f"{path}: truncated frame cache entry")
        base = _HEAD.size + 8 * (n + 1)
        if os.fstat(f.fileno()).st_size < base + int(offsets[-1]):
            raise ValueError(f"{path}: truncated frame cache entry")
        wanted = np.arange(n) if indices is None else _clamp(indices, n)
        out = np.empty((len(wanted), h, w, 3), dtype=np.uint8)
        decoded: dict[int, int] = {}  # frame -> row of out that holds it (repeated indices decode once)
        read_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
        for row, i in enumerate(wanted.tolist()):
            if i in decoded:
                out[row] = out[decoded[i]]
                continue
            f.seek(base + int(offsets[i]))
            data = np.frombuffer(f.read(int(offsets[i + 1] - offsets[i])), dtype=np.uint8)
            image = cv2.imdecode(data, read_flag if read_flag is not None else cv2.IMREAD_COLOR)
            if image is None or image.shape != (h, w, 3):
                raise ValueError(f"{path}: frame {i} does not decode to {h}x{w} RGB")
            out[row] = image if read_flag is not None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            decoded[i] = row
    return out
