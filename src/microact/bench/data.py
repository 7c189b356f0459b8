"""``microact bench data``: training data pipeline throughput (figures are printed, never asserted).

Writes two kinds of short H.264 clips into a temporary folder: raw camera-like 1920x1080 clips (CABAC,
deblocking) and person-cropped, downscaled portrait clips (320 px short side) encoded exactly as ``microact crop``
encodes them, then measures, for each kind:

- decode only, with one decoding thread as in a DataLoader worker: ours (PyAV, frames that are neither sampled
  nor referenced left undecoded) vs decord ``get_batch``, ours decoding every frame up to the last sampled one,
  and ours with FFmpeg's automatic threads (a process decoding alone); for the crops also
  without ``crop.fast_decode``, to show what that encoding choice buys, and reading the sampled frames from a
  filled decode-once cache (``data.cache_format`` npy and jpeg) with its size on disk;
- transforms only on already decoded frames: ours (vectorised, :class:`TrainTransform`) vs a straightforward
  per-frame numpy/cv2 implementation of the same ops, and what stays in the worker when ColorJitter and
  RandomErasing move to the training device (``aug.jitter_erasing_on=device``);
- the whole pipeline through a DataLoader with N workers: clips/s and clips/s per worker, ours vs the
  straightforward decord + numpy/cv2 pipeline, and ours with FFmpeg's automatic threads in every worker instead
  of the cores shared among the workers, and (crops) with ColorJitter and RandomErasing left to the GPU.

Decode and transform times tell which one limits the pipeline.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from microact.config import AugConfig, CropConfig
from microact.data.annotations import VideoRecord
from microact.data.cache import CACHE_FORMATS, FrameCache
from microact.data.crop.run import crop_encoding
from microact.data.dataset import VideoDataset, build_loader
from microact.data.decode import read_frames
from microact.data.sampling import uniform_sample
from microact.data.transforms import TrainTransform
from microact.data.video_writer import write_video

KINDS = {"raw1080p": (1080, 1920), "crop320": (534, 320)}  # (H, W); 320x534 is w/h 0.6, the seed's crop aspect
# How each kind is encoded: raw clips like a camera's H.264 (CABAC, deblocking), crops exactly as `microact crop`
# writes them. A decode-only comparison also writes the crops without fast_decode.
RAW_ENCODING = {"crf": 23, "preset": "veryfast"}
FPS = 30
SECONDS = 3
CLIP_LEN = 16
IMG_SIZE = 224


def _frames(height: int, width: int, n: int, seed: int) -> np.ndarray:
    """A seated person in front of a static, textured background, with sensor noise: what MA-52's clips look like
    to an encoder. Most of the picture repeats from frame to frame, so x264 chooses B-frames as on real footage
    (on the real carphone clip it keeps 30 of 120 frames as references with ``fast_decode``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = cv2.resize(rng.integers(0, 40, size=(height // 3, width // 3), dtype=np.uint8), (width, height),
                         interpolation=cv2.INTER_LINEAR).astype(np.float32)
    background = np.clip(90 + 45 * np.sin(xx / 61.0) * np.cos(yy / 47.0) + texture, 0, 255)
    background = np.stack([background, 0.8 * background + 20, 0.6 * background + 40], axis=-1)
    s = min(height, width)  # the person scales with the frame
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for t in range(n):
        frame = background.copy()
        cx, cy = width // 2, height // 2
        frame[cy - s // 8:cy + s // 2, cx - s // 4:cx + s // 4] = (70, 80, 150)  # torso
        head_y = cy - s // 4 + int(round(s / 40 * np.sin(t / 5)))  # nodding
        frame[head_y - s // 8:head_y + s // 8, cx - s // 10:cx + s // 10] = (200, 160, 130)
        hand_x = cx + s // 6 + int(round(s / 15 * np.sin(t / 3)))  # a hand rubbing
        frame[cy + s // 6:cy + s // 6 + s // 12, hand_x:hand_x + s // 12] = (210, 170, 140)
        noise = rng.integers(-5, 6, size=(height, width, 1), dtype=np.int8)  # sensor noise, std 3 levels
        out[t] = np.clip(frame + noise, 0, 255).astype(np.uint8)
    return out


def _write_clips(folder: Path, kind: str, count: int, fast_decode: bool = True) -> list[Path]:
    """``count`` clips of ``kind``; crops are encoded as ``microact crop`` encodes them (``fast_decode`` as given)."""
    h, w = KINDS[kind]
    encoding = RAW_ENCODING if kind == "raw1080p" else crop_encoding(CropConfig(fast_decode=fast_decode))
    paths = []
    for i in range(count):
        path = folder / f"{kind}{'' if fast_decode else '_cabac'}_{i}.mp4"
        write_video(path, _frames(h, w, FPS * SECONDS, seed=i), fps=FPS, **encoding)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# The straightforward peer: decord get_batch + per-frame numpy/cv2
# --------------------------------------------------------------------------------------------


def _plain_transform(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The seed's training ops written frame by frame (crop: the centred square, the RRC fallback on 16:9)."""
    h, w = frames.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    b, c, s = rng.uniform(0.5, 1.5, size=3)
    hue = int(rng.uniform(-0.1, 0.1) * 255)
    do_flip = rng.random() < 0.5
    out = []
    for f in frames:
        x = cv2.resize(f[top:top + side, left:left + side], (IMG_SIZE, IMG_SIZE), interpolation=cv2.INTER_LINEAR)
        x = x.astype(np.float32) * b
        grey = x @ np.array([0.2989, 0.587, 0.114], dtype=np.float32)
        x = x * c + grey.mean() * (1 - c)
        grey = x @ np.array([0.2989, 0.587, 0.114], dtype=np.float32)
        x = x * s + grey[..., None] * (1 - s)
        hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + hue) % 180).astype(np.uint8)
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        x[80:140, 60:120] = 128
        if do_flip:
            x = x[:, ::-1]
        out.append(x)
    return np.stack(out).transpose(3, 0, 1, 2).copy()  # [T,H,W,3] -> [3,T,H,W]


def _decord_batch(path: Path, rng: np.random.Generator) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return vr.get_batch(uniform_sample(len(vr), CLIP_LEN, rng=rng).tolist()).asnumpy()


class _PlainDataset(Dataset):
    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        return {"video": torch.from_numpy(_plain_transform(_decord_batch(self.paths[i], rng), rng)), "label": 0}


def _worker_init(_):
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def _median_ms(fn, items) -> float:
    times = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _loader_rate(loader) -> float:
    """Clips/s of the second pass: the first starts the (persistent) workers and warms caches."""
    for _ in loader:
        pass
    if hasattr(loader.batch_sampler, "set_epoch"):  # ours; the plain peer's loader has no epochs
        loader.batch_sampler.set_epoch(1)
    t = time.perf_counter()
    seen = sum(len(batch["video"]) for batch in loader)
    return seen / (time.perf_counter() - t)


def run(workers: list[int], clips: int, kinds: Sequence[str] = tuple(KINDS), progress=print) -> dict:
    """Run every measurement on the clip ``kinds`` and return the figures (see the module docstring)."""
    import decord  # noqa: F401  (the peer needs it; fail early with a clear ImportError)

    cv2.setNumThreads(1)
    aug = AugConfig()
    ours_tf = TrainTransform(aug, IMG_SIZE, rng=0)
    deferring_tf = TrainTransform(AugConfig(jitter_erasing_on="device"), IMG_SIZE, rng=0)
    results: dict = {"clip": f"{SECONDS} s at {FPS} fps, {CLIP_LEN} frames sampled, {IMG_SIZE}² output",
                     "kinds": {}}
    with tempfile.TemporaryDirectory(prefix="microact_bench_data_") as tmp:
        folder = Path(tmp)
        for kind in kinds:
            progress(f"writing {kind} clips ...")
            paths = _write_clips(folder, kind, 2)
            items = [(paths[i % len(paths)], np.random.default_rng(i)) for i in range(max(4, clips // 4))]
            r: dict = {}

            def decode_sampled(item, threads=1, skip_unsampled=True):  # item: (path, rng) -> its 16 sampled frames
                # One FFmpeg thread, as in a DataLoader worker (and as decord decodes): the cost per core.
                return read_frames(item[0], uniform_sample(FPS * SECONDS, CLIP_LEN, rng=item[1]), threads=threads,
                                   skip_unsampled=skip_unsampled)

            def decode_all(path):
                return read_frames(path, np.arange(FPS * SECONDS), threads=1)

            r["decode_ms_pyav"] = _median_ms(decode_sampled, items)
            r["decode_ms_pyav_sequential"] = _median_ms(lambda it: decode_sampled(it, skip_unsampled=False), items)
            r["decode_ms_pyav_threads_auto"] = _median_ms(lambda it: decode_sampled(it, threads=0), items)
            r["decode_ms_decord"] = _median_ms(lambda it: _decord_batch(it[0], it[1]), items)
            if kind != "raw1080p":
                slow = _write_clips(folder, kind, len(paths), fast_decode=False)  # same content, same samples
                slow_items = [(slow[i % len(slow)], np.random.default_rng(i)) for i in range(len(items))]
                r["decode_ms_pyav_without_fast_decode"] = _median_ms(decode_sampled, slow_items)
                for fmt in CACHE_FORMATS:  # what an epoch costs once the decode-once cache is filled
                    cache = FrameCache(folder / f"cache_{fmt}", fmt)
                    for p in paths:
                        cache.frames(p, "all", lambda p=p: decode_all(p))
                    r[f"cache_ms_{fmt}"] = _median_ms(lambda it: cache.frames(
                        it[0], "all", lambda: decode_all(it[0]),
                        indices=uniform_sample(FPS * SECONDS, CLIP_LEN, rng=it[1])), items)
                    r[f"cache_mb_per_clip_{fmt}"] = sum(
                        f.stat().st_size for f in (folder / f"cache_{fmt}").iterdir()) / len(paths) / 1e6
            frames = read_frames(paths[0], uniform_sample(FPS * SECONDS, CLIP_LEN, rng=np.random.default_rng(0)))
            rngs = [np.random.default_rng(i) for i in range(len(items))]
            r["transform_ms_ours"] = _median_ms(lambda g: ours_tf(frames, g), rngs)
            r["transform_ms_plain"] = _median_ms(lambda g: _plain_transform(frames, g), rngs)
            r["transform_ms_jitter_on_device"] = _median_ms(lambda g: deferring_tf(frames, g), rngs)
            records = [VideoRecord(p.name, 0, f"bench:{i}") for i, p in enumerate(paths)]
            records = [records[i % len(records)] for i in range(clips)]
            for w in workers:
                progress(f"{kind}: loaders with {w} worker(s) ...")
                variants = {f"clips_per_s_ours_w{w}": (None, ours_tf)}  # decoding threads: the default
                if w:  # and FFmpeg's automatic threads in every worker (data.decode_threads=0)
                    variants[f"clips_per_s_ours_ffmpeg_threads_w{w}"] = (0, ours_tf)
                if kind != "raw1080p":  # what the workers deliver when the GPU does ColorJitter and RandomErasing
                    variants[f"clips_per_s_ours_jitter_on_device_w{w}"] = (None, deferring_tf)
                for key, (threads, transform) in variants.items():
                    ds = VideoDataset(records, folder, clip_len=CLIP_LEN, transform=transform, seed=0,
                                      decode_threads=threads)
                    loader = build_loader(ds, batch_size=4, shuffle=False, num_workers=w, seed=0, pin_memory=False)
                    r[key] = _loader_rate(loader)
                plain = DataLoader(_PlainDataset([folder / rec.path for rec in records]), batch_size=4,
                                   num_workers=w, worker_init_fn=_worker_init if w else None, persistent_workers=w > 0,
                                   multiprocessing_context="forkserver" if w else None)
                r[f"clips_per_s_plain_w{w}"] = _loader_rate(plain)
            results["kinds"][kind] = r
    return results


def format_results(res: dict, workers: list[int]) -> str:
    """Readable table; every ratio is a speed ratio (> 1: the first named is faster)."""
    lines = [f"data pipeline benchmark ({res['clip']}); ratios are speed ratios, > 1 = the first named is faster"]
    for kind, r in res["kinds"].items():
        dec, tf = r["decode_ms_pyav"], r["transform_ms_ours"]
        limit = "decode" if dec > tf else "transforms"
        lines += [
            f"{kind}:",
            f"  decode     PyAV (ours) {dec:7.1f} ms/clip   decord get_batch {r['decode_ms_decord']:7.1f} ms/clip"
            f"   PyAV/decord {r['decode_ms_decord'] / dec:.2f}x   (one thread each, as in a loader worker)",
        ]
        if "decode_ms_pyav_sequential" in r:
            seq = r["decode_ms_pyav_sequential"]
            lines.append(f"  decode     every frame up to the last sampled one {seq:7.1f} ms/clip   skipping unsampled "
                         f"unreferenced frames (the default) {seq / dec:.2f}x faster")
        if "decode_ms_pyav_threads_auto" in r:
            lines.append(f"  decode     PyAV with FFmpeg's threads {r['decode_ms_pyav_threads_auto']:7.1f} ms/clip "
                         "(wall time of a process decoding alone, as when predicting)")
        if "decode_ms_pyav_without_fast_decode" in r:
            slow = r["decode_ms_pyav_without_fast_decode"]
            lines.append(f"  decode     without fast_decode (CABAC, deblocking, x264's B-frames) {slow:7.1f} ms/clip   "
                         f"fast_decode {slow / dec:.2f}x faster")
        for fmt in CACHE_FORMATS:
            if f"cache_ms_{fmt}" in r:
                ms = r[f"cache_ms_{fmt}"]
                lines.append(f"  from the decode cache ({fmt:4s}) {ms:7.1f} ms/clip   {dec / ms:5.1f}x faster than "
                             f"decoding   {r[f'cache_mb_per_clip_{fmt}']:6.1f} MB per {SECONDS} s clip on disk")
        lines += [
            f"  transforms ours        {tf:7.1f} ms/clip   plain per-frame  {r['transform_ms_plain']:7.1f} ms/clip"
            f"   ours/plain  {r['transform_ms_plain'] / tf:.2f}x",
            f"  transforms left in the worker with aug.jitter_erasing_on=device "
            f"{r['transform_ms_jitter_on_device']:7.1f} ms/clip   decode + transforms "
            f"{(dec + tf) / (dec + r['transform_ms_jitter_on_device']):.2f}x faster per clip",
            f"  one process is limited by {limit}: {max(dec, tf) / (dec + tf):.0%} of decode + transform time",
        ]
        for w in workers:
            ours, plain = r[f"clips_per_s_ours_w{w}"], r[f"clips_per_s_plain_w{w}"]
            lines.append(f"  loader, {w} worker(s): ours {ours:6.2f} clips/s ({ours / max(w, 1):6.2f}/worker)   "
                         f"decord+numpy {plain:6.2f} clips/s ({plain / max(w, 1):6.2f}/worker)   "
                         f"ours/plain {ours / plain:.2f}x")
            deferred = r.get(f"clips_per_s_ours_jitter_on_device_w{w}")
            if deferred:
                lines.append(f"  loader, {w} worker(s), ColorJitter and RandomErasing left to the GPU "
                             f"(aug.jitter_erasing_on=device): {deferred:6.2f} clips/s, {deferred / ours:.2f}x")
            auto = r.get(f"clips_per_s_ours_ffmpeg_threads_w{w}")
            if auto:
                lines.append(f"  loader, {w} worker(s), every worker with FFmpeg's automatic threads "
                             f"(data.decode_threads=0): {auto:6.2f} clips/s; cores shared among the workers "
                             f"(the default) {ours / auto:.2f}x")
    kinds = list(res["kinds"])
    if len(kinds) == 2:
        a, b = (res["kinds"][k] for k in kinds)
        for w in workers:
            lines.append(f"{kinds[1]}/{kinds[0]} ({w} worker(s)): ours "
                         f"{b[f'clips_per_s_ours_w{w}'] / a[f'clips_per_s_ours_w{w}']:.1f}x, decord+numpy "
                         f"{b[f'clips_per_s_plain_w{w}'] / a[f'clips_per_s_plain_w{w}']:.1f}x the clips/s")
    return "\n".join(lines)


def cli_main(args) -> int:
    """Handler of ``microact bench data``."""
    workers = list(args.workers) or [0]
    res = run(workers, max(4, args.clips))
    res["workers"] = workers
    res["torch_threads"] = torch.get_num_threads()
    print(format_results(res, workers))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0
