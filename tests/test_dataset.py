"""VideoDataset, collate and the resumable, distributed-aware loader on real mp4 files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from microact.config import AugConfig, EvalConfig
from microact.data import TestTransform, TrainTransform, VideoDataset, VideoRecord, build_loader, collate, read_frames
from microact.data.dataset import EpochBatchSampler, ResumableSampler, decode_threads
from microact.data.sampling import uniform_sample


@pytest.fixture
def folder(tmp_path, make_video):
    for i in range(5):
        make_video(f"v{i}.mp4", num_frames=12 + i, height=40, width=32, seed=i)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 20)
    return tmp_path


def records(names):
    return [VideoRecord(n, i % 3, f"list.txt:{i + 1}") for i, n in enumerate(names)]


GOOD = [f"v{i}.mp4" for i in range(5)]


def train_ds(folder, names=GOOD, seed=0):
    return VideoDataset(records(names), folder, clip_len=4, transform=TrainTransform(AugConfig(), 16, rng=seed),
                        seed=seed)


def test_train_item_is_the_transformed_sampled_clip(folder):
    ds = train_ds(folder)
    item = ds[(2, 3)]
    assert item["video"].dtype == torch.uint8 and item["video"].shape == (3, 4, 16, 16)
    assert item["label"] == 0 and item["index"] == 3
    # recompute the same item by hand from (seed, epoch, index)
    rng = np.random.default_rng([0, 2, 3])
    idx = uniform_sample(15, 4, rng=rng)
    want = ds.transform(read_frames(folder / "v3.mp4", idx), rng)
    np.testing.assert_array_equal(item["video"].numpy(), want)
    ds.set_epoch(2)
    assert torch.equal(ds[3]["video"], item["video"])
    ds.set_epoch(3)
    assert not torch.equal(ds[3]["video"], item["video"])


def test_bad_video_is_skipped_not_raised(folder):
    ds = train_ds(folder, ["v0.mp4", "broken.mp4", "missing.mp4"])
    with pytest.warns(RuntimeWarning, match="broken.mp4"):
        bad = ds[1]
    assert bad["video"] is None and "broken.mp4" in bad["error"] and bad["label"] == 1
    with pytest.warns(RuntimeWarning, match="file not found"):
        missing = ds[2]
    batch = collate([ds[0], bad, missing])
    assert batch["video"].shape == (1, 3, 4, 16, 16)
    assert batch["label"].tolist() == [0] and batch["index"].tolist() == [0]
    assert len(batch["skipped"]) == 2 and "missing.mp4: file not found" in batch["skipped"][1]
    empty = collate([bad, missing])
    assert empty["video"] is None and empty["label"].numel() == 0 and len(empty["skipped"]) == 2


def test_results_do_not_depend_on_worker_count(folder):
    def run(workers):
        loader = build_loader(train_ds(folder), batch_size=2, shuffle=True, num_workers=workers, seed=7,
                              persistent_workers=False)
        out = []
        for epoch in (0, 1):
            loader.batch_sampler.set_epoch(epoch)
            out += [(b["index"].tolist(), b["video"]) for b in loader]
        return out

    a, b = run(0), run(2)
    assert [x[0] for x in a] == [x[0] for x in b]
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert sorted(sum((x[0] for x in a[:3]), [])) == list(range(5))  # epoch 0 sees every video once
    assert [x[0] for x in a[:3]] != [x[0] for x in a[3:]]  # a new order in epoch 1


def test_sampler_resume_and_distributed_split():
    full = ResumableSampler(10, shuffle=True, seed=3, batch_size=2)
    full.set_epoch(4)
    order = [i for _, i in full]
    assert sorted(order) == list(range(10)) and all(e == 4 for e, _ in full)
    resumed = ResumableSampler(10, shuffle=True, seed=3, batch_size=2)
    resumed.set_epoch(4, skip_batches=2)
    assert [i for _, i in resumed] == order[4:] and len(resumed) == 6
    # training: padded to equal shares like DistributedSampler
    shares = []
    for r in range(3):
        s = ResumableSampler(10, shuffle=True, seed=3, rank=r, world_size=3)
        s.set_epoch(4)
        shares.append([i for _, i in s])
    assert [len(x) for x in shares] == [4, 4, 4]
    padded = order + order[:2]
    assert shares == [padded[r::3] for r in range(3)]
    # testing: every item exactly once, no padding
    test_shares = [[i for _, i in ResumableSampler(10, shuffle=False, rank=r, world_size=3, pad=False)]
                   for r in range(3)]
    assert sorted(sum(test_shares, [])) == list(range(10)) and [len(x) for x in test_shares] == [4, 3, 3]


def test_epoch_batches_run_through_epochs_without_mixing_them():
    items = ResumableSampler(10, shuffle=True, seed=3, rank=1, world_size=3)  # 4 items per epoch (padded)
    batches = EpochBatchSampler(items, batch_size=3)
    per_epoch = {}
    for e in range(2, 5):
        one = ResumableSampler(10, shuffle=True, seed=3, rank=1, world_size=3)
        one.set_epoch(e)
        per_epoch[e] = [i for _, i in one]
    batches.set_epoch(2, until_epoch=5)
    got = list(batches)
    assert len(got) == len(batches) == 6  # 3 + 1 per epoch: each epoch's short batch stays its own
    assert all(len({e for e, _ in b}) == 1 for b in got)
    assert [[i for _, i in b] for b in got] == [per_epoch[e][k:k + 3] for e in (2, 3, 4) for k in (0, 3)]
    assert [b[0][0] for b in got] == [2, 2, 3, 3, 4, 4]
    # resuming after one batch of epoch 3 skips in that epoch only
    batches.set_epoch(3, skip_batches=1, until_epoch=5)
    resumed = list(batches)
    assert resumed == got[3:] and len(batches) == 3
    assert [batches.batch_indices(e, k) for e, k in ((3, 0), (4, 0), (4, 1), (4, 2))] == [
        [i for _, i in b] for b in resumed] + [[]]
    with pytest.raises(ValueError, match="not in this pass"):
        batches.batch_indices(2, 0)
    with pytest.raises(ValueError, match="must come after"):
        batches.set_epoch(3, until_epoch=3)
    dropping = EpochBatchSampler(ResumableSampler(10, shuffle=True, seed=3, rank=1, world_size=3), 3, drop_last=True)
    dropping.set_epoch(2, until_epoch=5)
    assert list(dropping) == [b for b in got if len(b) == 3] and len(dropping) == 3


class _RecordingSampler(ResumableSampler):
    """Remembers every key the loader has drawn (it draws them to dispatch work to its workers)."""

    drawn: list

    def __iter__(self):
        for key in super().__iter__():
            self.drawn.append(key)
            yield key


def test_one_iterator_through_epochs_gives_the_same_batches_and_prefetches_across_them(folder):
    def loader(workers):
        return build_loader(train_ds(folder), batch_size=2, shuffle=True, num_workers=workers, seed=7,
                            persistent_workers=False)

    per_epoch_loader = loader(0)
    expected = []
    for epoch in (0, 1, 2):
        per_epoch_loader.batch_sampler.set_epoch(epoch)
        expected += list(per_epoch_loader)

    through = loader(2)
    recording = _RecordingSampler(5, shuffle=True, seed=7, batch_size=2)
    recording.drawn = []
    through.batch_sampler.sampler = recording
    through.batch_sampler.set_epoch(0, until_epoch=3)
    it = iter(through)
    got = [next(it) for _ in range(3)]  # all of epoch 0 (5 clips in batches of 2)
    # The workers were handed epoch 1's clips before anyone asked for them: no wait at the epoch boundary.
    assert any(epoch == 1 for epoch, _ in recording.drawn)
    got += list(it)
    assert [b["index"].tolist() for b in got] == [b["index"].tolist() for b in expected]
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(got, expected))
    assert len(got) == 9


def test_distributed_loader_uses_given_rank(folder):
    ds = train_ds(folder)
    loader = build_loader(ds, batch_size=1, shuffle=False, num_workers=0, distributed=True, rank=1, world_size=2)
    assert [b["index"].item() for b in loader] == [1, 3, 0]  # padded with the first item


@pytest.mark.parametrize("view,num_views", [("portrait373", 2), ("three_crop", 6)])
def test_test_mode_items_and_cache(folder, tmp_path, view, num_views):
    tt = TestTransform(EvalConfig(view=view, resize_short=20), 16)
    cache = tmp_path / "cache"
    ds = VideoDataset(records(GOOD), folder, clip_len=4, transform=tt, num_clips=2, test_mode=True, cache_dir=cache)
    item = ds[1]
    assert item["video"].shape == (num_views, 3, 4, 16, 16)
    idx = uniform_sample(13, 4, num_clips=2, test_mode=True)
    np.testing.assert_array_equal(item["video"].numpy(), tt.views(read_frames(folder / "v1.mp4", idx), 2))
    files = list(cache.glob("*.npy"))
    assert len(files) == 1
    np.testing.assert_array_equal(np.load(files[0]), read_frames(folder / "v1.mp4", idx))
    assert torch.equal(ds[1]["video"], item["video"])  # served from the cache
    loader = build_loader(ds, batch_size=2, shuffle=False, num_workers=0)
    batches = list(loader)
    assert sum((b["index"].tolist() for b in batches), []) == list(range(5))
    assert batches[0]["video"].shape == (2, num_views, 3, 4, 16, 16)


def test_training_cache_keeps_every_frame_once_and_changes_nothing(folder, tmp_path, monkeypatch):
    cache = tmp_path / "train_cache"
    plain = train_ds(folder)
    cached = VideoDataset(records(GOOD), folder, clip_len=4, transform=plain.transform, seed=0, cache_dir=cache)
    for epoch in (0, 1):  # epoch 1 samples new indices: served from the same per-video files
        for i in range(len(GOOD)):
            assert torch.equal(cached[(epoch, i)]["video"], plain[(epoch, i)]["video"])
    files = list(cache.glob("*.npy"))
    assert len(files) == len(GOOD)  # one file per video, whatever the sampled indices
    assert sorted(np.load(f).shape[0] for f in files) == [12, 13, 14, 15, 16]  # every frame of each clip

    import microact.data.dataset as dataset_module

    expected = plain[(2, 3)]["video"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have served this clip")

    monkeypatch.setattr(dataset_module, "read_frames", no_decoding)
    item = cached[(2, 3)]
    assert item["video"] is not None and torch.equal(item["video"], expected)


class _ThreadsSeenByWorkers(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return decode_threads()


def test_decode_threads_share_the_cores_among_workers(monkeypatch):
    assert decode_threads(cores=16, workers=15) == 1  # the GPU host's 15 workers: one thread each
    assert decode_threads(cores=32, workers=4) == 8  # few workers on many cores still use them
    assert decode_threads(cores=128, workers=15, processes_per_node=8) == 1
    assert decode_threads(cores=2, workers=8) == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert decode_threads() == 0  # not in a worker: FFmpeg chooses
    cores = len(os.sched_getaffinity(0))
    seen = torch.utils.data.DataLoader(_ThreadsSeenByWorkers(), batch_size=None, num_workers=2)
    assert [int(t) for t in seen] == [max(1, cores // 2)] * 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert [int(t) for t in seen] == [max(1, cores // 8)] * 4


@pytest.mark.parametrize("setting,expected", [(None, 0), (0, 0), (3, 3)])
def test_dataset_decodes_with_the_configured_threads(folder, monkeypatch, setting, expected):
    import microact.data.dataset as dataset_module

    seen = []
    real = dataset_module.read_frames
    monkeypatch.setattr(dataset_module, "read_frames",
                        lambda *a, threads, **k: seen.append(threads) or real(*a, threads=threads, **k))
    ds = VideoDataset(records(GOOD), folder, clip_len=4, transform=TrainTransform(AugConfig(), 16, rng=0),
                      decode_threads=setting)
    assert ds[0]["video"] is not None and seen == [expected]  # None: not in a worker, so FFmpeg chooses
