"""Decode-once frame cache: the npy and JPEG formats, keys, damaged entries, and the dataset on top of it."""
from __future__ import annotations

import os
import struct

import av
import numpy as np
import pytest
import torch

from microact.config import AugConfig, ConfigError, DataConfig
from microact.data import TrainTransform, VideoDataset, VideoRecord, read_frames
from microact.data.cache import FrameCache, read_jpeg_frames, write_jpeg_frames
from microact.data.sampling import uniform_sample


@pytest.fixture
def video_frames(make_video):
    path = make_video("v.mp4", num_frames=12, height=64, width=48)
    return path, read_frames(path, np.arange(12))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def _streams_by_hand(path) -> list[bytes]:
    """The JPEG streams of a .jpgs file, parsed from the layout the docstring states (not with our reader)."""
    data = open(path, "rb").read()
    magic, n, h, w = struct.unpack_from("<8sIII", data)
    assert magic == b"MAJPEG1\0"
    offsets = struct.unpack_from(f"<{n + 1}Q", data, 20)
    base = 20 + 8 * (n + 1)
    return [data[base + offsets[i]:base + offsets[i + 1]] for i in range(n)]


def test_jpeg_frames_round_trip_and_are_standard_jpegs(video_frames, tmp_path):
    _, frames = video_frames
    path = tmp_path / "v.jpgs"
    write_jpeg_frames(path, frames, quality=95)
    back = read_jpeg_frames(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert _psnr(back, frames) > 30  # 34 dB on these noisy frames; with R and B swapped: 18 dB
    # Any order, repeats, and indices past the end (clamped), reading only those streams.
    np.testing.assert_array_equal(read_jpeg_frames(path, [5, 0, 5, 99]), back[[5, 0, 5, 11]])
    # Every stream is a standard JPEG: FFmpeg's own decoder reads it back to the source frame as well.
    codec = av.CodecContext.create("mjpeg", "r")
    for i, stream in enumerate(_streams_by_hand(path)):
        (decoded,) = codec.decode(av.Packet(stream))
        assert (decoded.width, decoded.height) == (48, 64) and _psnr(decoded.to_ndarray(format="rgb24"), frames[i]) > 30
    assert path.stat().st_size < frames.nbytes / 2  # 3.2x smaller on these tiny noisy frames


def test_damaged_jpeg_entries_are_errors_that_name_the_file(video_frames, tmp_path):
    _, frames = video_frames
    path = tmp_path / "v.jpgs"
    write_jpeg_frames(path, frames)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="v.jpgs: truncated"):
        read_jpeg_frames(path)
    path.write_bytes(b"NOTMINE!" + data[8:])
    with pytest.raises(ValueError, match="v.jpgs: not a microact JPEG"):
        read_jpeg_frames(path)
    with pytest.raises(ValueError, match=r"uint8 \[N, H, W, 3\]"):
        write_jpeg_frames(path, frames.astype(np.float32))


def _counting_decoder(frames):
    """A stand-in for decoding a video that returns ``frames`` and records each call in the returned list."""
    calls = []

    def decode():
        calls.append(1)
        return frames

    return decode, calls


@pytest.mark.parametrize("fmt", ["npy", "jpeg"])
def test_frame_cache_decodes_once_follows_edits_and_repairs(video_frames, tmp_path, fmt):
    path, frames = video_frames
    cache = FrameCache(tmp_path / "cache", fmt)
    decode, calls = _counting_decoder(frames)
    first = cache.frames(path, "pyav|all", decode, indices=[3, 20])
    np.testing.assert_array_equal(first, frames[[3, 11]])  # a miss returns the decoded frames themselves
    again = cache.frames(path, "pyav|all", decode, indices=[3, 20])
    assert len(calls) == 1
    if fmt == "npy":
        np.testing.assert_array_equal(again, first)  # lossless
    else:
        assert _psnr(again, first) > 30
    (entry,) = list((tmp_path / "cache").iterdir())
    assert entry.suffix == (".npy" if fmt == "npy" else ".jpgs")

    entry.write_bytes(entry.read_bytes()[:100])  # damaged: decoded and written again, not an error
    cache.frames(path, "pyav|all", decode, indices=[0])
    assert len(calls) == 2 and entry.stat().st_size > 100

    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # an edited video
    cache.frames(path, "pyav|all", decode)
    assert len(calls) == 3 and len(list((tmp_path / "cache").iterdir())) == 2


def test_an_unwritable_cache_costs_the_speed_up_not_the_clip(video_frames, tmp_path):
    path, frames = video_frames
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="cannot store v.mp4"):
        out = FrameCache(blocked, "jpeg").frames(path, "k", lambda: frames, indices=[1, 2])
    np.testing.assert_array_equal(out, frames[[1, 2]])


def test_jpeg_and_npy_entries_and_qualities_never_mix(video_frames, tmp_path):
    path, frames = video_frames
    for fmt, quality in [("npy", 95), ("jpeg", 95), ("jpeg", 50)]:
        FrameCache(tmp_path / "cache", fmt, quality).frames(path, "k", lambda: frames)
    assert len(list((tmp_path / "cache").iterdir())) == 3
    with pytest.raises(ValueError, match="cache format must be one of"):
        FrameCache(tmp_path, "png")


def test_training_with_the_jpeg_cache(make_video, tmp_path, monkeypatch):
    lengths = [12, 13, 14]
    for i, n in enumerate(lengths):
        make_video(f"v{i}.mp4", num_frames=n, height=64, width=48, seed=i)
    records = [VideoRecord(f"v{i}.mp4", i, f"list.txt:{i + 1}") for i in range(3)]
    transform = TrainTransform(AugConfig(), 32, rng=0)
    plain = VideoDataset(records, tmp_path, clip_len=4, transform=transform, seed=0)
    cached = VideoDataset(records, tmp_path, clip_len=4, transform=transform, seed=0,
                          cache_dir=tmp_path / "cache", cache_format="jpeg")
    for i in range(3):  # the epoch that fills the cache trains on the decoded frames themselves
        assert torch.equal(cached[(0, i)]["video"], plain[(0, i)]["video"])
    entries = {len(read_jpeg_frames(f)): f for f in (tmp_path / "cache").glob("*.jpgs")}
    assert sorted(entries) == lengths  # one entry per video, every frame

    import microact.data.dataset as dataset_module

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have served this clip")

    monkeypatch.setattr(dataset_module, "read_frames", no_decoding)
    for epoch in (1, 2):  # later epochs: the same pipeline on the stored JPEG frames, recomputed by hand
        for i, n in enumerate(lengths):
            rng = np.random.default_rng([0, epoch, i])
            want = transform(read_jpeg_frames(entries[n], uniform_sample(n, 4, rng=rng)), rng)
            np.testing.assert_array_equal(cached[(epoch, i)]["video"].numpy(), want)


def test_cache_settings_are_validated():
    with pytest.raises(ConfigError, match=r"data.cache_jpeg_quality: must be in \[1, 100\]"):
        DataConfig(cache_dir="c", cache_jpeg_quality=0).validate()
    with pytest.raises(ConfigError, match="data.cache_format=jpeg needs data.cache_dir"):
        DataConfig(cache_format="jpeg").validate()
    DataConfig(cache_dir="c", cache_format="jpeg").validate()


@pytest.mark.parametrize("fmt", ["npy", "jpeg"])
@pytest.mark.parametrize("indices", [None, [3, 20]], ids=["test-clip", "training"])
def test_an_empty_entry_is_decoded_again(video_frames, tmp_path, fmt, indices):
    """A crash or a full disk can leave a zero-byte entry behind; numpy answers it with EOFError, not ValueError.
    It is damage like any other: decoded and written again, not an error that drops the video every epoch."""
    path, frames = video_frames
    cache = FrameCache(tmp_path / "cache", fmt)
    decode, calls = _counting_decoder(frames)
    cache.frames(path, "pyav|all", decode, indices=indices)
    (entry,) = list((tmp_path / "cache").iterdir())
    entry.write_bytes(b"")
    out = cache.frames(path, "pyav|all", decode, indices=indices)
    expected = frames if indices is None else frames[np.minimum(indices, len(frames) - 1)]
    np.testing.assert_array_equal(out, expected)  # the freshly decoded frames
    assert len(calls) == 2 and entry.stat().st_size > 0
