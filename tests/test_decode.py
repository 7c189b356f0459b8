"""Decoding: frames equal an independent PyAV loop (and decord), clamping, verified counts, bad files, timeouts."""
from __future__ import annotations

import os
import threading

import av
import numpy as np
import pytest

from conftest import moving_square_frames
from microact.data.decode import (DecodeTimeout, VideoDecodeError, count_frames, probe_video, read_frames,
                                  rgb_converter)
from microact.errors import MicroactError


def all_frames(path) -> np.ndarray:
    """Every decodable frame, decoded by a plain PyAV loop (the reference); stops at the first decode error."""
    frames = []
    with av.open(str(path)) as c:
        try:
            for f in c.decode(video=0):
                frames.append(f.to_ndarray(format="rgb24"))
        except av.FFmpegError:
            pass
    return np.stack(frames)


def test_read_frames_matches_plain_decode(make_video):
    path = make_video("a.mp4", num_frames=20, height=64, width=64)
    ref = all_frames(path)
    assert len(ref) == 20
    idx = [3, 0, 19, 3, 7]
    out = read_frames(path, idx)
    assert out.dtype == np.uint8 and out.shape == (5, 64, 64, 3)
    np.testing.assert_array_equal(out, ref[idx])


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuvj420p", "yuv422p", "yuv444p", "yuv420p10le", "nv12", "gray"])
def test_shared_rgb_converter_gives_to_ndarrays_pixels(pix_fmt):
    """One reformatter for all frames of a video (a reused swscale context): the pixels of a fresh one per frame,
    also when the frame size changes midway."""
    rng = np.random.default_rng(0)
    to_rgb = rgb_converter()
    for height, width in [(48, 64), (48, 64), (30, 20), (48, 64)]:
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
        np.testing.assert_array_equal(to_rgb(frame), frame.to_ndarray(format="rgb24"))


def test_decord_gives_the_same_frames(make_video):
    pytest.importorskip("decord")
    path = make_video("b.mp4", num_frames=20, height=64, width=64)
    idx = np.array([0, 5, 6, 19])
    np.testing.assert_array_equal(read_frames(path, idx, decoder="decord"), read_frames(path, idx))


def test_carphone_real_video(carphone_path):
    info = probe_video(carphone_path)
    ref = all_frames(carphone_path)
    assert (info.num_frames, info.width, info.height) == (len(ref), 176, 144) == (120, 176, 144)
    assert info.fps == pytest.approx(29.97, abs=0.01) and info.duration == pytest.approx(120 / info.fps)
    idx = np.linspace(0, 119, 16).astype(int)
    np.testing.assert_array_equal(read_frames(carphone_path, idx), ref[idx])


@pytest.mark.parametrize("threads", [1, 5])
def test_decoding_threads_are_set_and_change_no_pixel(carphone_path, monkeypatch, threads):
    import microact.data.decode as decode

    streams = []

    def recording_open(path):
        container = real_open(path)
        streams.append(container.streams.video[0])
        return container

    real_open = decode._open
    monkeypatch.setattr(decode, "_open", recording_open)
    idx = np.linspace(0, 119, 16).astype(int)
    np.testing.assert_array_equal(read_frames(carphone_path, idx, threads=threads), all_frames(carphone_path)[idx])
    assert streams[-1].codec_context.thread_count == threads


def test_indices_past_the_end_are_clamped(make_video):
    path = make_video("c.mp4", num_frames=10, height=32, width=32)
    ref = all_frames(path)
    out = read_frames(path, [2, 9, 10, 500])
    np.testing.assert_array_equal(out, ref[[2, 9, 9, 9]])


def _write_faststart(path, n):
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=15)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for f in moving_square_frames(n, 64, 64):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_header_that_over_reports_is_not_trusted(tmp_path):
    # faststart puts the frame table first; cutting the tail leaves a header that claims all 30 frames
    full = tmp_path / "full.mp4"
    _write_faststart(full, 30)
    cut = tmp_path / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with av.open(str(cut)) as c:
        assert c.streams.video[0].frames == 30
    decodable = all_frames(cut)
    assert 0 < len(decodable) < 30
    assert count_frames(cut) < 30
    out = read_frames(cut, [0, len(decodable) - 1, 29])
    np.testing.assert_array_equal(out, decodable[[0, -1, -1]])
    # The demuxer lists frames that are not all there: asked for the last one, the skipping decoder gives up and
    # read_frames (above) clamped to the last decodable frame, as the sequential decode does.
    import microact.data.decode as decode

    assert decode._read_pyav_skipping(cut, np.array([29]), lambda: None) is None


def test_iter_frames_streams_the_frames_read_frames_gives(make_video, tmp_path):
    from microact.data.decode import iter_frames

    path = make_video("s.mp4", num_frames=12, height=32, width=32)
    ref = all_frames(path)
    everything = list(iter_frames(path))
    assert [i for i, _ in everything] == list(range(12))
    np.testing.assert_array_equal(np.stack([f for _, f in everything]), ref)
    some = list(iter_frames(path, [7, 3, 3]))  # any order and repeats in; index order out
    assert [i for i, _ in some] == [3, 7]
    np.testing.assert_array_equal(np.stack([f for _, f in some]), read_frames(path, [3, 7]))
    # an index past the end: the last frame comes too, under its own index (read_frames repeats it)
    past = list(iter_frames(path, [3, 40]))
    assert [i for i, _ in past] == [3, 11]
    np.testing.assert_array_equal(past[1][1], ref[11])
    assert [i for i, _ in iter_frames(path, [11, 40])] == [11]  # already yielded: not twice
    # a damaged tail ends the stream after the decodable frames, like read_frames' clamping
    full = tmp_path / "full.mp4"
    _write_faststart(full, 30)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    decodable = all_frames(cut)
    streamed = list(iter_frames(cut))
    assert len(streamed) == len(decodable) < 30
    np.testing.assert_array_equal(streamed[-1][1], decodable[-1])
    with pytest.raises(VideoDecodeError, match="not found"):
        next(iter_frames(tmp_path / "missing.mp4"))


def _write_audio_only(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(4):
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "random", "truncated", "audio"])
def test_bad_files_raise_naming_the_file(kind, tmp_path, make_video):
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 50)
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "truncated":  # no faststart: the frame table was at the end and is gone
        data = make_video("good.mp4", num_frames=16).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "audio":
        path = tmp_path / "audio.m4a"
        _write_audio_only(path)
    for call in (lambda: read_frames(path, [0]), lambda: count_frames(path), lambda: probe_video(path)):
        with pytest.raises(VideoDecodeError) as info:
            call()
        assert isinstance(info.value, MicroactError)
        assert str(path) in str(info.value)
    expected = {"missing": "not found", "empty": "0 bytes", "audio": "no video stream"}.get(kind, "not a readable")
    assert expected in str(info.value)


def test_count_cache_follows_file_changes(tmp_path, make_video):
    path = make_video("d.mp4", num_frames=12, height=32, width=32)
    assert count_frames(path) == 12 == len(all_frames(path))
    make_video("d.mp4", num_frames=7, height=32, width=32)  # rewritten: other size and mtime
    os.utime(path, ns=(1, 1))
    assert count_frames(path) == 7


def test_timeout_in_main_thread_and_in_other_threads(carphone_path):
    with pytest.raises(DecodeTimeout, match="longer than"):
        read_frames(carphone_path, [119], timeout=1e-4)
    errors = []

    def worker():
        try:
            read_frames(carphone_path, [119], timeout=1e-4)
        except DecodeTimeout as e:
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(errors) == 1
    # a generous timeout does not fire, and the alarm is disarmed afterwards
    assert read_frames(carphone_path, [5], timeout=30).shape == (1, 144, 176, 3)


def test_probe_reports_display_rotation(tmp_path):
    path = tmp_path / "rot.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=15)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_rotation(90)
        for f in moving_square_frames(5, 32, 64):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height, info.rotation) == (5, 64, 32, 90)
    assert read_frames(path, [0]).shape == (1, 32, 64, 3)  # frames come as stored; rotation is only reported


def _encode(path, frames, codec="libx264", options=None, container_format=None, rate=15):
    with av.open(str(path), "w", format=container_format) as c:
        s = c.add_stream(codec, rate=rate, options=options or {})
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


# (file name, codec, encoder options, whether frames can be skipped: packets with distinct display timestamps)
SKIP_CASES = [
    ("pyramid.mp4", "libx264", {}, True),  # x264's defaults: B-pyramid, 3 B-frames
    ("no_pyramid.mp4", "libx264", {"x264-params": "b-pyramid=none:bframes=8"}, True),  # as microact crop writes
    ("no_b_frames.mp4", "libx264", {"x264-params": "bframes=0"}, True),
    ("pyramid.mkv", "libx264", {}, True),
    ("mpeg4_b_frames.mp4", "mpeg4", {"bf": "2"}, True),
    ("mpeg2_b_frames.mp4", "mpeg2video", {"bf": "2"}, True),
    ("hevc.mp4", "libx265", {"x265-params": "log-level=error"}, True),  # phones record H.265
    ("vp9.webm", "libvpx-vp9", {}, True),
    ("elementary_stream.h264", "libx264", {}, False),  # raw Annex B: no timestamps, decoded sequentially
]


@pytest.mark.parametrize("name, codec, options, skippable", SKIP_CASES, ids=[c[0] for c in SKIP_CASES])
def test_skipping_unsampled_frames_changes_no_pixel(tmp_path, name, codec, options, skippable):
    import microact.data.decode as decode

    frames = np.concatenate([moving_square_frames(20, 64, 80, seed=s) for s in range(3)])  # 60 frames, 3 scenes
    path = tmp_path / name
    _encode(path, frames, codec, options, container_format="h264" if name.endswith(".h264") else None)
    ref = all_frames(path)
    assert len(ref) == 60
    timestamps = decode._frame_index(path, lambda: None).timestamps
    # Evenly spaced frames are indexed by a range (nothing stored per frame); Matroska's (and WebM's) millisecond
    # timestamps at 15 fps are 66 or 67 apart, so they are listed; without timestamps frames are not addressable.
    assert (timestamps is not None) == skippable
    assert isinstance(timestamps, range) == name.endswith(".mp4")
    rng = np.random.default_rng(0)
    index_sets = [np.arange(60), [59], [0], [3, 0, 19, 3, 40, 41, 42], [10, 70, 500],  # repeats, past the end
                  *(rng.integers(0, 60, size=16) for _ in range(4)), np.linspace(0, 59, 16).round().astype(int)]
    for idx in index_sets:
        expected = ref[np.minimum(idx, 59)]
        for threads in (1, 0, 3):
            np.testing.assert_array_equal(read_frames(path, idx, threads=threads), expected)
        np.testing.assert_array_equal(read_frames(path, idx, skip_unsampled=False), expected)
        # The skipping decoder itself (not its sequential fallback) ran where the file allows it.
        skipped = decode._read_pyav_skipping(path, np.asarray(idx), lambda: None, threads=1)
        assert (skipped is not None) == skippable
        if skipped is not None:
            np.testing.assert_array_equal(skipped, expected)


def _vfr_mp4(path, num_frames=30, seed=0):
    """An H.264 mp4 with B-frames whose frames are 1-3 ticks of 1/30 s apart (a variable frame rate)."""
    import fractions

    gaps = np.random.default_rng(seed).integers(1, 4, size=num_frames)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.height, s.width, s.pix_fmt = 64, 80, "yuv420p"
        s.codec_context.time_base = fractions.Fraction(1, 30)
        for f, pts in zip(moving_square_frames(num_frames, 64, 80), np.cumsum(gaps)):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = int(pts), fractions.Fraction(1, 30)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_variable_frame_rate_frames_are_indexed_by_display_order(tmp_path):
    import microact.data.decode as decode

    path = _vfr_mp4(tmp_path / "vfr.mp4")
    ref = all_frames(path)
    assert len(ref) == 30
    index = decode._frame_index(path, lambda: None)
    assert index.count == 30 and not isinstance(index.timestamps, range)  # uneven: the timestamps are listed
    idx = [0, 7, 8, 29, 15, 15]
    skipped = decode._read_pyav_skipping(path, np.array(idx), lambda: None, threads=1)
    assert skipped is not None
    np.testing.assert_array_equal(skipped, ref[idx])
    np.testing.assert_array_equal(read_frames(path, idx), ref[idx])



@pytest.mark.parametrize("name", ["vfr.mp4", "pyramid.mp4", "pyramid.mkv", "elementary_stream.h264"])
def test_frame_times_are_the_sequential_decodes_frame_times(tmp_path, monkeypatch, name):
    """frame_times(path)[i] is PyAV's frame.time of the i-th frame a plain decode outputs; a stream without
    timestamps (raw H.264) falls back to i / average fps. The file is demuxed once for count and times."""
    import microact.data.decode as decode

    path = tmp_path / name
    if name == "vfr.mp4":
        _vfr_mp4(path)
    else:
        _encode(path, moving_square_frames(25, 64, 80), container_format="h264" if name.endswith(".h264") else None)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate)
        times = [f.time for f in c.decode(stream)]
    opened = []
    real_open = decode._open
    monkeypatch.setattr(decode, "_open", lambda p: opened.append(p) or real_open(p))  # counts, still opens
    n = count_frames(path)
    out = decode.frame_times(path)
    assert len(opened) == 1  # the count's demux also gave the times
    assert out.dtype == np.float64 and out.shape == (n,) and n == len(times)
    if name.endswith(".h264"):
        np.testing.assert_allclose(out, np.arange(n) / rate, rtol=0, atol=1e-12)
    else:
        np.testing.assert_array_equal(out, np.asarray(times, dtype=np.float64))
    if name == "vfr.mp4":
        assert len(set(np.round(np.diff(out), 6))) > 1  # really uneven
    decode.frame_times(path)
    assert len(opened) == 1  # cached per process


def test_frames_an_edit_list_cuts_off_are_not_counted(tmp_path):
    """A clip cut by stream copy starts at a keyframe before the cut: the mp4 edit list hides the frames before it
    (the demuxer flags their packets as discarded and the decoder does not output them). They are not frames of the
    video: counting them would spread the sampled indices over frames that do not exist, and clamping would repeat
    the last frame at the end of every clip."""
    from microact.data.sampling import uniform_sample

    full = tmp_path / "full.mp4"
    _encode(full, moving_square_frames(40, 64, 48), options={"x264-params": "keyint=100"})
    cut = tmp_path / "cut.mp4"
    hidden = 6  # the first 6 frames lie before the cut: negative timestamps, hidden by the edit list
    with av.open(str(full)) as src, av.open(str(cut), "w") as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        step = int(1 / (s_in.time_base * s_in.average_rate))
        for p in src.demux(s_in):
            if p.size:
                p.pts, p.dts = p.pts - hidden * step, p.dts - hidden * step
                p.stream = s_out
                dst.mux(p)
    with av.open(str(cut)) as c:
        packets = sum(1 for p in c.demux(video=0) if p.size)
    ref = all_frames(cut)
    assert (packets, len(ref)) == (40, 40 - hidden)  # the file really hides frames from the decoder's output
    assert count_frames(cut) == len(ref) == probe_video(cut).num_frames
    idx = uniform_sample(len(ref), 16, 3, test_mode=True)
    np.testing.assert_array_equal(read_frames(cut, idx), ref[idx])
