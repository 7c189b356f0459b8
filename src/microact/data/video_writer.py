"""Writing H.264 mp4 files with PyAV (libx264 is bundled in PyAV's wheels)."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 30.0, crf: int = 23,
                preset: str = "veryfast", codec: str = "libx264", options: dict | None = None) -> int:
    """Encode RGB uint8 frames ``[H, W, 3]`` to an H.264 mp4 and return the number of frames written.

    The file is written under a temporary name and renamed at the end, so an interrupted write never
    leaves a truncated video behind. Odd frame sizes are padded by one pixel (yuv420p needs even sizes).
    ``options`` are extra encoder options (e.g. ``{"threads": "1"}`` for byte-identical output).
    """
    import av

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial.mp4")
    count = 0
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = None
            for frame in frames:
                frame = np.asarray(frame)
                if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                    raise ValueError(f"{path}: frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
                h, w = frame.shape[:2]
                if h % 2 or w % 2:
                    frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                if stream is None:
                    stream = container.add_stream(codec, rate=rate)
                    stream.width, stream.height = frame.shape[1], frame.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": preset, **(options or {})}
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise ValueError(f"{path}: no frames to write")
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count
