"""Video dataset, collate function and a deterministic, resumable (distributed) loader.

Randomness is derived from ``(seed, epoch, index)`` inside ``__getitem__``, so a run gives the same clips
whatever the number of workers or processes. The sampler hands each worker ``(epoch, index)`` pairs, so
persistent workers (which hold their own copy of the dataset) still see the current epoch.

A video that cannot be decoded never raises out of ``__getitem__``: it yields ``video=None`` with an
``error`` message and a warning; :func:`collate` drops it and reports it in ``batch["skipped"]``.

Two-stream recipes (``flow_root``): every item also decodes the video's optical-flow video (same relative name
under ``flow_root``, one frame shorter, written by ``microact flow``), samples and transforms it with its own
random draws, and returns one 6-channel clip, RGB then flow; a missing or unreadable flow video skips the item
like an unreadable video.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from microact.data.annotations import VideoRecord
from microact.data.cache import CacheFormat, FrameCache
from microact.data.decode import VideoDecodeError, count_frames, read_frames
from microact.data.sampling import uniform_sample

# Last element of the flow branch's generator seed: (seed, epoch, index, FLOW_STREAM). The RGB branch keeps
# (seed, epoch, index), so adding the flow stream leaves its draws unchanged and the streams independent.
FLOW_STREAM = 1


class VideoDataset(Dataset):
    """Clips of annotated videos as uint8 tensors.

    Args:
        records: videos and labels (:func:`microact.data.annotations.load_lists`).
        video_root: folder the record paths are relative to.
        clip_len: frames per clip.
        transform: training: ``transform(frames [T,H,W,3], rng) -> [3,T,S,S]`` (:class:`TrainTransform`), or
            ``([3,T,S,S], params)`` when it leaves ColorJitter / RandomErasing to the training device;
            test: an object with ``views(frames, num_clips) -> [V,3,T,S,S]`` (:class:`TestTransform`).
        num_clips: clips per video (test: 2 for val, 3 for test in the seed).
        test_mode: deterministic sampling and all views of a video.
        decoder: ``"pyav"`` or ``"decord"``.
        decode_timeout: seconds per video before it counts as bad (``None``: no limit).
        seed: base of the per-item random generators.
        cache_dir: decode-once cache (:class:`~microact.data.cache.FrameCache`). Test mode keeps the sampled
            frames of each video, so repeated evaluations skip decoding; training keeps every frame of each
            video once and an epoch reads only the sampled frames. ``npy`` needs frames x H x W x 3 bytes per
            video (which is why cropped, downscaled videos come first); ``jpeg`` about 10-20x less, lossy.
            An edited video is decoded again.
        cache_format: ``"npy"`` (lossless) or ``"jpeg"``.
        cache_jpeg_quality: quality of the ``jpeg`` format.
        decode_threads: FFmpeg threads per decode (PyAV); ``None`` shares the cores among the loader workers
            (:func:`decode_threads`), 0 lets FFmpeg choose in every worker.
        flow_root: folder of the optical-flow videos (two-stream presets); ``None``: RGB only.
        flow_transform: the flow branch's transform (training: :func:`~microact.data.transforms.flow_train_transform`;
            test: a :class:`TestTransform`, like ``transform``); required with ``flow_root``.

    Items: ``{"video": uint8 tensor [C,T,S,S] (train) or [V,C,T,S,S] (test), "label": int, "index": int}`` with
    C = 3, or 6 (RGB then flow) with ``flow_root``
    (plus ``"augment"``: the deferred parameters, float64 ``[NUM_PARAMS]``, or ``[2 * NUM_PARAMS]`` for RGB then
    flow, when the transforms returned them),
    or ``{"video": None, ..., "error": "path: reason"}`` for a bad video.
    """

    def __init__(self, records: Sequence[VideoRecord], video_root: str | os.PathLike, *, clip_len: int,
                 transform: Callable, num_clips: int = 1, test_mode: bool = False, decoder: str = "pyav",
                 decode_timeout: Optional[float] = None, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                 cache_format: CacheFormat = "npy", cache_jpeg_quality: int = 95,
                 decode_threads: Optional[int] = None, flow_root: str | os.PathLike | None = None,
                 flow_transform: Optional[Callable] = None):
        if flow_root is not None and flow_transform is None:
            raise ValueError("flow_root needs a flow_transform (the flow branch's pipeline)")
        if flow_root is not None and (getattr(transform, "defers_to_device", False)
                                      != getattr(flow_transform, "defers_to_device", False)):
            # one parameter block per stream or none: the training step applies both or neither
            raise ValueError("transform and flow_transform must both leave ColorJitter / RandomErasing to the device "
                             "(aug.jitter_erasing_on=device) or neither")
        self.records = list(records)
        self.video_root = Path(video_root)
        self.clip_len = clip_len
        self.transform = transform
        self.num_clips = num_clips
        self.test_mode = test_mode
        self.decoder = decoder
        self.decode_timeout = decode_timeout
        self.seed = seed
        self.cache = FrameCache(cache_dir, cache_format, cache_jpeg_quality) if cache_dir else None
        self.decode_threads = decode_threads
        self.flow_root = None if flow_root is None else Path(flow_root)
        self.flow_transform = flow_transform
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by plain integer indexing (the loader's sampler passes it explicitly)."""
        self.epoch = epoch

    def rng_for(self, index: int, epoch: Optional[int] = None) -> np.random.Generator:
        """The generator of one item: a function of (seed, epoch, index) only."""
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, index])

    def flow_rng_for(self, index: int, epoch: Optional[int] = None) -> np.random.Generator:
        """The flow branch's generator of one item: independent of :meth:`rng_for`'s (SEED.md §5.8)."""
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, index, FLOW_STREAM])

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        index = int(index)
        record = self.records[index]  # an IndexError here is a caller bug, not a bad video
        path = self.video_root / record.path
        where = ""  # names the flow video when that is the one that failed
        try:
            rng = self.rng_for(index, epoch)
            video = self._clip(path, rng, self.transform)
            item = {"label": record.label, "index": index}
            if isinstance(video, tuple):  # the transform left ColorJitter / RandomErasing to the training device
                video, item["augment"] = video[0], torch.from_numpy(video[1])
            if self.flow_root is not None:
                flow_path = self.flow_root / record.path
                where = f"flow video {flow_path}: "
                if not flow_path.is_file():
                    raise VideoDecodeError(flow_path, "no such file (write the flow videos with `microact flow`)")
                flow = self._clip(flow_path, self.flow_rng_for(index, epoch), self.flow_transform)
                if isinstance(flow, tuple):  # the flow stream's own block after the RGB one: [2 * NUM_PARAMS]
                    flow, flow_params = flow
                    item["augment"] = torch.cat([item["augment"], torch.from_numpy(flow_params)])
                video = np.concatenate([video, flow], axis=-4)  # [(V,) 3, T, S, S] x 2 -> [(V,) 6, T, S, S]
            item["video"] = torch.from_numpy(np.ascontiguousarray(video))
            return item
        except Exception as e:  # a bad video must not stop training; the message says what happened
            reason = e.reason if isinstance(e, VideoDecodeError) else f"{type(e).__name__}: {e}"
            message = f"{path}: {where}{reason}"
            warnings.warn(f"skipping video ({record.source}): {message}", RuntimeWarning, stacklevel=2)
            return {"video": None, "label": record.label, "index": index, "error": message}

    def _clip(self, path: Path, rng: np.random.Generator, transform: Callable):
        """Sampled, transformed frames of one video: training ``transform(frames, rng)``, test all its views."""
        frames = self._frames(path, rng)
        if self.test_mode:
            return transform.views(frames, self.num_clips)
        return transform(frames, rng)

    def _frames(self, path: Path, rng: np.random.Generator) -> np.ndarray:
        num_frames = count_frames(path, timeout=self.decode_timeout)
        indices = uniform_sample(num_frames, self.clip_len, self.num_clips, self.test_mode, rng)
        threads = decode_threads() if self.decode_threads is None else self.decode_threads

        def decode(wanted: np.ndarray) -> np.ndarray:
            return read_frames(path, wanted, decoder=self.decoder, timeout=self.decode_timeout, threads=threads)

        if self.cache is None:
            return decode(indices)
        if self.test_mode:  # the views never change: keep exactly the sampled frames
            return self.cache.frames(path, f"{self.decoder}|{indices.tolist()}", lambda: decode(indices))
        # Training draws new indices every epoch: keep every frame of the video once and read the sampled ones.
        return self.cache.frames(path, f"{self.decoder}|all", lambda: decode(np.arange(num_frames)),
                                 indices=indices)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def decode_threads(cores: Optional[int] = None, workers: Optional[int] = None,
                   processes_per_node: Optional[int] = None) -> int:
    """FFmpeg threads for one video decode in this process (``read_frames(..., threads=)``).

    Outside a DataLoader worker: 0, FFmpeg's choice (about one per core). In a worker: this node's cores shared
    among all workers of all training processes on it, at least 1. The workers already decode in parallel, and
    threads beyond a core each only add CPU time per clip (a cropped clip took 67 ms of CPU with FFmpeg's
    automatic threads on 2 cores, 56 ms with one); a few workers on many cores still get several threads each.

    Args:
        cores: cores this process may use (default: its CPU affinity).
        workers: DataLoader workers of this process (default: from ``torch.utils.data.get_worker_info()``).
        processes_per_node: training processes on this node (default: torchrun's ``LOCAL_WORLD_SIZE``, else 1).
    """
    if workers is None:
        info = torch.utils.data.get_worker_info()
        if info is None:
            return 0
        workers = info.num_workers
    if cores is None:
        cores = usable_cores()
    if processes_per_node is None:
        processes_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, cores // max(1, workers * processes_per_node))


def collate(items: Sequence[dict]) -> dict:
    """Stack good items; bad ones are dropped and their messages listed in ``"skipped"``.

    Returns:
        ``{"video": uint8 [B, ...] or None when every item was bad, "label": int64 [B], "index": int64 [B],
        "skipped": [messages]}``, plus ``"augment"`` float64 ``[B, NUM_PARAMS]`` when the items carry deferred
        ColorJitter / RandomErasing parameters (:mod:`microact.data.device_augment`).
    """
    good = [it for it in items if it.get("video") is not None]
    skipped = [it.get("error", f"item {it.get('index')}: no video") for it in items if it.get("video") is None]
    batch = {
        "video": torch.stack([it["video"] for it in good]) if good else None,
        "label": torch.tensor([int(it["label"]) for it in good], dtype=torch.long),
        "index": torch.tensor([int(it["index"]) for it in good], dtype=torch.long),
        "skipped": skipped,
    }
    if good and "augment" in good[0]:
        batch["augment"] = torch.stack([it["augment"] for it in good])
    return batch


class ResumableSampler(Sampler):
    """Deterministic epoch order, split across ranks, resumable mid-epoch.

    The order of epoch ``e`` is a permutation drawn from ``(seed, e)`` (or the identity without shuffle).
    Training (``pad=True``) pads the order with its first items to a multiple of ``world_size`` like
    ``DistributedSampler``; rank ``r`` takes every ``world_size``-th item from ``r``. Testing (``pad=False``)
    gives every video to exactly one rank with no padding (the original order is recovered from the items'
    ``index``). Yields ``(epoch, index)`` pairs for :class:`VideoDataset`; one pass may run through several
    epochs (``set_epoch(e, until_epoch=)``), each in its own order.

    Args:
        num_items: dataset length.
        shuffle: random order per epoch.
        seed: base of the per-epoch permutation.
        rank, world_size: this process's share.
        pad: pad to equal shares (training) or keep each item exactly once (testing).
        drop_last: with ``pad``, drop the tail instead of padding (as ``DistributedSampler(drop_last=True)``).
        batch_size: used by ``set_epoch(..., skip_batches=)`` to resume after the first batches.
    """

    def __init__(self, num_items: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True, drop_last: bool = False, batch_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.num_items = num_items
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.drop_last = drop_last
        self.batch_size = batch_size
        self.epoch = 0
        self.until_epoch = 1
        self.start = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0, until_epoch: Optional[int] = None) -> None:
        """Start at ``epoch``, after ``skip_batches`` batches of this rank (to resume mid-epoch).

        ``until_epoch``: carry on through the following epochs up to, not including, this one in the same pass
        (``None``: this epoch only).
        """
        until_epoch = epoch + 1 if until_epoch is None else until_epoch
        if until_epoch <= epoch:
            raise ValueError(f"until_epoch {until_epoch} must come after epoch {epoch}")
        self.epoch = epoch
        self.until_epoch = until_epoch
        self.start = skip_batches * self.batch_size

    def rank_indices(self, epoch: Optional[int] = None) -> list[int]:
        """This rank's full share of an epoch (default: the first of the pass), before skipping."""
        n = self.num_items
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n).tolist()
        else:
            order = list(range(n))
        if self.pad and self.world_size > 1:
            if self.drop_last:
                order = order[: (n // self.world_size) * self.world_size]
            else:
                total = math.ceil(n / self.world_size) * self.world_size
                while len(order) < total:  # repeat from the start, like DistributedSampler
                    order += order[: total - len(order)]
        return order[self.rank::self.world_size]

    def epoch_indices(self, epoch: int) -> list[int]:
        """What this pass yields of ``epoch``: its share, after the skipped batches when it is the first."""
        if not self.epoch <= epoch < self.until_epoch:
            raise ValueError(f"epoch {epoch} is not in this pass (epochs {self.epoch}..{self.until_epoch - 1})")
        return self.rank_indices(epoch)[self.start if epoch == self.epoch else 0:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for epoch in range(self.epoch, self.until_epoch):
            for index in self.epoch_indices(epoch):
                yield epoch, index

    def __len__(self) -> int:
        return sum(len(self.epoch_indices(e)) for e in range(self.epoch, self.until_epoch))


class EpochBatchSampler(Sampler):
    """Batches of a :class:`ResumableSampler`'s ``(epoch, index)`` stream; a batch never mixes two epochs.

    This lets one loader iterator run through every epoch of a training run: its workers go on decoding the
    next epoch's first batches while the current epoch ends and while validation runs. A new iterator per epoch
    would leave the step waiting at each epoch start until some worker has assembled a whole batch (2-3 s for
    ViT-B's batch of 24 on the H200 machine).

    Args:
        sampler: the item order.
        batch_size: items per batch; an epoch's last batch may be smaller.
        drop_last: drop each epoch's last, incomplete batch instead.
    """

    def __init__(self, sampler: ResumableSampler, batch_size: int, drop_last: bool = False):
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        sampler.batch_size = batch_size  # its skip_batches count our batches

    def set_epoch(self, epoch: int, skip_batches: int = 0, until_epoch: Optional[int] = None) -> None:
        """As :meth:`ResumableSampler.set_epoch`."""
        self.sampler.set_epoch(epoch, skip_batches, until_epoch)

    def _epoch_batches(self, epoch: int) -> int:
        n = len(self.sampler.epoch_indices(epoch))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batch_indices(self, epoch: int, batch_no: int) -> list[int]:
        """Dataset indices of the ``batch_no``-th batch (from 0) this pass yields for ``epoch``."""
        if batch_no >= self._epoch_batches(epoch):
            return []
        return self.sampler.epoch_indices(epoch)[batch_no * self.batch_size:(batch_no + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch: list[tuple[int, int]] = []
        for key in self.sampler:
            if batch and key[0] != batch[0][0]:  # a new epoch: close the last one's incomplete batch
                if not self.drop_last:
                    yield batch
                batch = []
            batch.append(key)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        return sum(self._epoch_batches(e) for e in range(self.sampler.epoch, self.sampler.until_epoch))


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _worker_init(_worker_id: int) -> None:
    # Each worker is one of several processes on few cores: keep OpenCV and torch single-threaded.
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def build_loader(dataset: VideoDataset, *, batch_size: int, shuffle: bool, num_workers: int, seed: int = 0,
                 distributed: bool = False, drop_last: bool = False, pin_memory: Optional[bool] = None,
                 persistent_workers: Optional[bool] = None, prefetch_factor: Optional[int] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None,
                 mp_context: Optional[str] = "forkserver") -> DataLoader:
    """A DataLoader with an :class:`EpochBatchSampler` (``loader.batch_sampler``) and :func:`collate`.

    Call ``loader.batch_sampler.set_epoch(epoch, skip_batches=k, until_epoch=E)`` before iterating (``k`` > 0
    to resume mid-epoch; ``E`` to run through the epochs before ``E`` with one iterator). With
    ``distributed=True`` the rank and world size come from ``torch.distributed`` when it is initialised (else
    ``RANK`` / ``WORLD_SIZE``), unless given. A test-mode dataset is never padded.

    Args:
        pin_memory: ``None`` = pin when CUDA is available.
        persistent_workers: ``None`` = keep workers alive between epochs when there are any.
        prefetch_factor: batches prefetched per worker (``None``: PyTorch's default).
        mp_context: how workers start. ``forkserver`` (default) costs an import of torch per worker once
            (workers persist), but is safe: a worker forked from a process that already ran OpenCV's
            thread pool (any cv2.resize, e.g. a 0-worker validation loader) hangs on its first cv2 call,
            and CUDA does not survive a fork. ``None`` uses the platform default (fork on Linux).
    """
    if distributed:
        r, w = _dist_rank_world()
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    rank, world_size = rank or 0, world_size or 1
    sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                               pad=not dataset.test_mode, drop_last=drop_last, batch_size=batch_size)
    kwargs = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
        kwargs["worker_init_fn"] = _worker_init
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        if mp_context is not None:
            kwargs["multiprocessing_context"] = mp_context
    batches = EpochBatchSampler(sampler, batch_size, drop_last=drop_last)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory, **kwargs)
