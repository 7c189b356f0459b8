"""Video decoding: selected frames as RGB uint8, verified frame counts, per-clip timeouts.

PyAV is the default decoder: it decodes sequentially and keeps the wanted frames, which beats seeking
for clips of a few seconds (ENVIRONMENT.md §4.3), and stops after the last wanted frame. Frames that are
neither wanted nor referenced by another frame (most B-frames) are not decoded at all, which leaves the
pixels of every other frame unchanged (:func:`_read_pyav_skipping`). decord's
``get_batch`` is the seed's decoder (SEED.md §5.2) and an optional fast path (``decoder="decord"``).

No container header is trusted for the frame count: damaged files can over-report it. Indices past the
real end are clamped to the last decodable frame; a file without any decodable frame raises
:class:`VideoDecodeError`.

Frame counts: sampling needs the count before it can choose indices, so the count comes first. It is
obtained by demuxing packets (no decoding) and cached per process, keyed by path, size and mtime, together with
the frames' timestamps in display order that frame skipping needs (a ``range`` for evenly spaced frames).
Measured on this project's 2-core machine (64x64 x 32 frames / 176x144 x 120 frames H.264): demuxing all
packets costs 0.5 / 1.9 ms per clip, decoding every frame 13 / 80 ms, and decoding up to the last of 16
uniformly spaced frames 6 / 46 ms. So count-by-demux then decode opens the file twice but costs a few
percent over the decode alone, far less than decoding everything to pick afterwards; with the cache the
count is paid once per video per worker for a whole run. (decord 0.6 mis-copies frames whose width is not
a multiple of 32, e.g. 48 px: use PyAV for such tiny clips.)
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Literal, Optional, Sequence

import numpy as np

from microact.errors import MicroactError

Decoder = Literal["pyav", "decord"]
_INDEX_CACHE_SIZE = 100_000  # MA-52 has 22,422 clips; entries are tiny


class VideoDecodeError(MicroactError):
    """A video cannot be opened or decoded; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DecodeTimeout(VideoDecodeError):
    """Decoding one clip took longer than the allowed time."""


@dataclass(frozen=True)
class VideoInfo:
    """Properties of a video; ``num_frames`` is counted from the packets, not read from the header."""

    num_frames: int
    width: int
    height: int
    fps: float
    duration: float  # seconds, num_frames / fps
    rotation: int = 0  # degrees from the display matrix / rotate tag (0 when none)


# --------------------------------------------------------------------------------------------
# Timeouts
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _deadline(path, timeout: Optional[float]):
    """Yield a ``check()`` callable that raises DecodeTimeout once ``timeout`` seconds have passed.

    ``check()`` runs between frames (and every 64 demuxed packets) and works in any thread. In the main
    thread of a process (DataLoader workers are processes, so their ``__getitem__`` runs in a main thread)
    a SIGALRM timer is armed as well, so the limit also holds in Python code that never calls ``check()``.
    Neither interrupts one FFmpeg call that hangs inside C code (Python handles signals only between
    bytecodes); against that, use DataLoader workers with the loader's ``timeout``.
    """
    if timeout is None or timeout <= 0:
        yield lambda: None
        return
    end = time.monotonic() + timeout

    def check():
        if time.monotonic() > end:
            raise DecodeTimeout(path, f"decoding took longer than {timeout:g} s")

    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not use_alarm:
        yield check
        return

    def on_alarm(signum, frame):
        raise DecodeTimeout(path, f"decoding took longer than {timeout:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield check
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if old_delay:  # re-arm an outer timer (nested use)
            signal.setitimer(signal.ITIMER_REAL, old_delay, old_interval)


# --------------------------------------------------------------------------------------------
# Frame counts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FrameIndex:
    """What demuxing a video tells about its frames, cached per process."""

    count: int  # packets with data: the frame count
    # Frame timestamps in display order (frame i has timestamps[i]): a range when evenly spaced (almost every
    # video; no memory per frame), else a sorted array. None when frames cannot be addressed by timestamp.
    timestamps: Optional[Sequence[int]]
    time_base: Optional[Fraction] = None  # seconds per timestamp tick
    rate: Optional[Fraction] = None  # the stream's average frame rate (frames per second), when it states one


_index_cache: "OrderedDict[tuple, _FrameIndex]" = OrderedDict()


def _file_key(path: Path) -> tuple:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise VideoDecodeError(path, "file not found") from None
    except OSError as e:
        raise VideoDecodeError(path, f"cannot read file ({e.strerror or e})") from None
    if st.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def rgb_converter():
    """A function ``frame -> uint8 [H, W, 3]`` RGB array for the PyAV frames of one video.

    ``VideoFrame.to_ndarray(format="rgb24")`` sets up a new swscale context for every frame; one reformatter per
    video reuses it: the same pixels at about half the cost (0.14 vs 0.27 ms per 320x534 frame).
    """
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    return lambda frame: reformatter.reformat(frame, format="rgb24").to_ndarray()


def _open_for_decoding(path: Path, threads: int):
    """The container and its video stream, set up to decode with ``threads`` FFmpeg threads (0: FFmpeg's choice)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
    except BaseException:
        container.close()
        raise
    return container, stream


def _open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise VideoDecodeError(path, f"not a readable video ({_ffmpeg_reason(e)})") from None
    except OSError as e:
        raise VideoDecodeError(path, f"cannot open ({e.strerror or e})") from None
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
        container.close()
        raise VideoDecodeError(path, f"no video stream (contains: {kinds})")
    return container


def _ffmpeg_reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text.split(": '", 1)[0]


def _display_order(timestamps: list[int]) -> Optional[Sequence[int]]:
    ordered = np.sort(np.asarray(timestamps, dtype=np.int64))
    steps = np.diff(ordered)
    if len(steps) and steps.min() <= 0:  # two frames with one timestamp
        return None
    if len(steps) == 0 or (steps == steps[0]).all():
        step = int(steps[0]) if len(steps) else 1
        return range(int(ordered[0]), int(ordered[-1]) + step, step)
    return ordered


def _frame_index(path: Path, check) -> _FrameIndex:
    """Count the frames and list their timestamps by demuxing packets (no decoding); cached per process."""
    import av

    key = _file_key(path)
    if key in _index_cache:
        _index_cache.move_to_end(key)
        return _index_cache[key]
    container = _open(path)
    count = 0
    timestamps: list[int] = []
    addressable = True  # every packet has its own timestamp and is displayed
    try:
        stream = container.streams.video[0]
        # kept with the index so that frame_times needs no second opening of the file
        time_base = Fraction(stream.time_base) if stream.time_base else None
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        rate = Fraction(rate) if rate else None
        try:
            for packet in container.demux(stream):
                if packet.size:  # the final flush packet is empty
                    if getattr(packet, "is_discard", False):  # not in older PyAV
                        # Before an edit list's start (a stream-copy cut): decoded for reference, never output.
                        addressable = False
                        continue
                    count += 1
                    if packet.pts is None:
                        addressable = False
                    elif addressable:
                        timestamps.append(int(packet.pts))
                    if count % 64 == 0:
                        check()
        except av.FFmpegError as e:
            if count == 0:
                raise VideoDecodeError(path, f"cannot read packets ({_ffmpeg_reason(e)})") from None
            addressable = False  # damaged: only decoding tells which frames are there
    finally:
        container.close()
    if count == 0:
        raise VideoDecodeError(path, "no video frames")
    index = _FrameIndex(count, _display_order(timestamps) if addressable else None, time_base, rate)
    _index_cache[key] = index
    if len(_index_cache) > _INDEX_CACHE_SIZE:
        _index_cache.popitem(last=False)
    return index


def count_frames(path: str | os.PathLike, timeout: Optional[float] = None) -> int:
    """Number of video frames, counted by demuxing packets (no decoding); cached per process.

    Raises:
        VideoDecodeError: missing, empty, unreadable or frameless files.
    """
    path = Path(path)
    with _deadline(path, timeout) as check:
        return _frame_index(path, check).count


def frame_times(path: str | os.PathLike, timeout: Optional[float] = None) -> np.ndarray:
    """Seconds at which each frame is shown, in display order: ``float64 [count_frames(path)]``.

    Frame ``i`` is the frame :func:`read_frames` returns for index ``i``; its time is the stream's presentation
    time (PyAV's ``frame.time``: timestamp x time base), so a variable frame rate (phones, screen recordings) is
    followed frame by frame. Where the demuxer gives no usable timestamps (packets without one, frames an edit list
    hides, a damaged file) the times are ``i / fps`` with the stream's average rate (30 when it states none).
    Comes from the cached frame index: the file is demuxed at most once per process (shared with
    :func:`count_frames` and :func:`read_frames`).

    Raises:
        VideoDecodeError: missing, empty, unreadable or frameless files.
    """
    path = Path(path)
    with _deadline(path, timeout) as check:
        index = _frame_index(path, check)
    if index.timestamps is not None and index.time_base:
        ticks = index.timestamps
        if isinstance(ticks, range):  # evenly spaced: computed without an array of timestamps in the index
            ticks = np.arange(ticks.start, ticks.stop, ticks.step, dtype=np.int64)
        # ticks x numerator is exact, one division then rounds once: the value of float(pts * time_base), PyAV's
        tb = index.time_base
        return (np.asarray(ticks, dtype=np.int64) * tb.numerator).astype(np.float64) / tb.denominator
    fps = float(index.rate) if index.rate and index.rate > 0 else 30.0
    return np.arange(index.count, dtype=np.float64) / fps


def probe_video(path: str | os.PathLike, decoder: Decoder = "pyav", timeout: Optional[float] = None) -> VideoInfo:
    """Size, fps, rotation and the verified frame count of a video.

    The frame count comes from demuxing (see :func:`count_frames`) whichever ``decoder`` is named;
    ``decoder`` only selects the library used to read the stream properties.

    Raises:
        VideoDecodeError: naming the file and the reason.
    """
    path = Path(path)
    num_frames = count_frames(path, timeout=timeout)
    if decoder == "decord":
        vr = _decord_reader(path)
        height, width = vr[0].shape[:2]
        fps = float(vr.get_avg_fps() or 0.0)
        rotation = 0
    else:
        container = _open(path)
        try:
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            rotation = _rotation(container, stream)
        finally:
            container.close()
    duration = num_frames / fps if fps > 0 else 0.0
    return VideoInfo(num_frames=num_frames, width=int(width), height=int(height), fps=fps, duration=duration,
                     rotation=rotation)


def _rotation(container, stream) -> int:
    """Display rotation in degrees: the first frame's display matrix (PyAV >= 14), else an old "rotate" tag."""
    import av

    tag = (stream.metadata or {}).get("rotate")
    if tag:
        try:
            return int(float(tag)) % 360
        except ValueError:
            pass
    try:
        frame = next(container.decode(stream), None)
    except av.FFmpegError:
        return 0
    return int(round(getattr(frame, "rotation", 0) or 0)) % 360


# --------------------------------------------------------------------------------------------
# Reading frames
# --------------------------------------------------------------------------------------------


def read_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray, decoder: Decoder = "pyav",
                timeout: Optional[float] = None, threads: int = 0, skip_unsampled: bool = True) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed) as RGB uint8.

    Indices past the last decodable frame are clamped to it, so a file whose header over-reports its
    length still yields a clip. Frames come as stored: a display rotation is reported by :func:`probe_video`,
    not applied.

    Args:
        path: video file.
        indices: frame indices (>= 0).
        decoder: ``"pyav"`` (sequential decode, default) or ``"decord"`` (``get_batch``, optional package).
        timeout: seconds allowed for this call (``None``: no limit); see :func:`_deadline` for how it works.
        threads: PyAV decoding threads; 0 lets FFmpeg choose (about one per core, for a process decoding alone).
            Where several processes decode at once, such as DataLoader workers, share the cores among them
            (:func:`microact.data.dataset.decode_threads`). decord always decodes with one thread.
        skip_unsampled: PyAV: do not decode frames that are neither wanted nor referenced by other frames
            (:func:`_read_pyav_skipping`; the same pixels, less work). ``False`` decodes every frame up to the last
            wanted one.

    Returns:
        ``[len(indices), H, W, 3]`` uint8.

    Raises:
        VideoDecodeError: missing, empty, corrupt, truncated, non-video or audio-only files, or a timeout.
    """
    path = Path(path)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size == 0:
        raise ValueError("read_frames needs at least one index")
    if indices.min() < 0:
        raise ValueError(f"frame indices must be >= 0, got {int(indices.min())}")
    _file_key(path)  # clear messages for missing and empty files
    with _deadline(path, timeout) as check:
        if decoder == "pyav":
            return _read_pyav(path, indices, check, threads, skip_unsampled)
        if decoder == "decord":
            return _read_decord(path, indices, check, timeout)
        raise ValueError(f"decoder must be 'pyav' or 'decord', got {decoder!r}")


def _read_pyav(path: Path, indices: np.ndarray, check, threads: int = 0, skip_unsampled: bool = True) -> np.ndarray:
    if skip_unsampled:
        frames = _read_pyav_skipping(path, indices, check, threads)
        if frames is not None:
            return frames
    return _read_pyav_sequential(path, indices, check, threads)


def iter_frames(path: str | os.PathLike, indices: Optional[Iterable[int]] = None,
                threads: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a video once, front to back, yielding ``(index, RGB uint8 [H, W, 3])`` in index order.

    For videos too long to hold: only the frames at ``indices`` (all frames when ``None``) are converted to RGB
    and yielded, one at a time. Frame ``i`` is the same frame :func:`read_frames` returns for index ``i``. When the
    video ends before the largest index (a damaged tail, or a header that over-reports), its last decodable frame
    is yielded too, under its own index, so a caller can stand it in for the missing ones as :func:`read_frames`
    does.

    Raises:
        VideoDecodeError: missing, empty, unreadable files, or no decodable frame.
    """
    path = Path(path)
    _file_key(path)
    yield from _decode_in_order(path, None if indices is None else set(int(i) for i in indices), threads)


def _decode_in_order(path: Path, wanted: Optional[set[int]], threads: int = 0,
                     check=lambda: None) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`iter_frames`' work; ``check`` is called after every decoded frame (a timeout's deadline)."""
    import av

    last_wanted = None if wanted is None else max(wanted, default=-1)
    to_rgb = rgb_converter()
    container, stream = _open_for_decoding(path, threads)
    count, last_frame, last_yielded = 0, None, -1
    try:
        try:
            for frame in container.decode(stream):
                if wanted is None or count in wanted:
                    yield count, to_rgb(frame)
                    last_yielded = count
                last_frame = frame
                count += 1
                check()
                if last_wanted is not None and count > last_wanted:
                    break
        except av.FFmpegError as e:  # a damaged tail: the frames decoded so far are the decodable ones
            if count == 0:
                raise VideoDecodeError(path, f"cannot decode ({_ffmpeg_reason(e)})") from None
        if count == 0 and last_wanted != -1:
            raise VideoDecodeError(path, "no decodable video frames")
        if last_wanted is not None and last_wanted >= count and last_yielded != count - 1:
            yield count - 1, to_rgb(last_frame)  # the video ended early: its last frame stands in
    finally:
        container.close()


def _read_pyav_sequential(path: Path, indices: np.ndarray, check, threads: int = 0) -> np.ndarray:
    """Decode every frame up to the last wanted one; index = position in the decoder's output. Indices past the
    end get the last decodable frame."""
    kept = dict(_decode_in_order(path, set(int(i) for i in indices), threads, check))
    last = max(kept)
    return np.stack([kept[min(int(i), last)] for i in indices])


def _read_pyav_skipping(path: Path, indices: np.ndarray, check, threads: int = 0) -> Optional[np.ndarray]:
    """Like the sequential decode, but frames that no other frame references and that are not wanted are not
    decoded at all; ``None`` when the file does not allow it (then the caller decodes sequentially).

    Frame i is the i-th timestamp in display order. Packets arrive in decode order; before each one the decoder
    is told whether it may drop the packet's frame if nothing references it (FFmpeg's ``skip_frame=NONREF``),
    which is the case for every packet that does not carry a wanted frame. A dropped frame is one no other
    frame is predicted from, so every decoded frame has exactly the pixels of a full decode. On H.264 with
    x264's defaults (a B-pyramid) about half of the frames are droppable; in static footage encoded the way
    ``microact crop`` encodes (no B-pyramid, up to 8 B-frames in a row) about nine in ten. Any sign that the file
    does not follow this (a wanted frame not returned, a timestamp the demuxer did not list, a decoding error)
    abandons the attempt.
    """
    import av

    timestamps = _frame_index(path, check).timestamps
    if timestamps is None:
        return None
    count = len(timestamps)
    wanted = {int(timestamps[min(i, count - 1)]): min(i, count - 1) for i in set(indices.tolist())}
    kept: dict[int, np.ndarray] = {}  # frame index -> pixels
    known = timestamps if isinstance(timestamps, range) else set(timestamps.tolist())
    to_rgb = rgb_converter()
    container, stream = _open_for_decoding(path, threads)
    codec = stream.codec_context
    try:
        for packet in container.demux(stream):
            codec.skip_frame = "DEFAULT" if packet.pts in wanted or not packet.size else "NONREF"
            for frame in codec.decode(packet if packet.size else None):
                if frame.pts not in known:
                    return None
                if frame.pts in wanted:
                    kept[wanted[frame.pts]] = to_rgb(frame)
            check()
            if len(kept) == len(wanted):
                break
    except (av.FFmpegError, AttributeError, ValueError, TypeError):  # the others: a PyAV without skip_frame
        return None
    finally:
        container.close()
    if len(kept) != len(wanted):
        return None
    return np.stack([kept[min(int(i), count - 1)] for i in indices])


def _decord_reader(path: Path):
    try:
        import decord
    except ImportError:
        raise MicroactError("decoder 'decord' needs the package decord (pip install decord)") from None
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as e:  # decord raises DECORDError / RuntimeError without a common base
        raise VideoDecodeError(path, f"not a readable video (decord: {str(e).splitlines()[0][:200]})") from None


def _read_decord(path: Path, indices: np.ndarray, check, timeout) -> np.ndarray:
    count = count_frames(path, timeout=timeout)  # decord's len() is the header's count
    vr = _decord_reader(path)
    count = min(count, len(vr))
    check()
    try:
        return vr.get_batch(np.minimum(indices, count - 1).tolist()).asnumpy()
    except Exception as e:
        raise VideoDecodeError(path, f"cannot decode (decord: {str(e).splitlines()[0][:200]})") from None
