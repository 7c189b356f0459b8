"""``microact bench e2e``: real decoded clips through the loader into the training step.

Three numbers decide whether training is compute-bound or data-bound:

1. the loader alone (clips/s delivered by N workers from person-cropped H.264 clips),
2. the training step alone on one fixed batch already on the device (clips/s),
3. both together, with the time the step loop spends waiting for the next batch.

When (3) waits more than a few percent of the time, more workers, smaller (cropped, downscaled)
videos or the decode cache help; otherwise the GPU is the limit. Figures are printed, never asserted.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from microact.config import AugConfig
from microact.data.annotations import VideoRecord
from microact.data.dataset import VideoDataset, build_loader
from microact.data.transforms import TrainTransform, normalize_batch
from microact.errors import MicroactError
from microact.losses import build_loss
from microact.models import create_model


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(preset: str, workers: int, batch: int, steps: int, device_name: str = "auto", clips: int | None = None,
        num_frames: int = 16, img_size: int = 224, cache_dir: str | None = None, cache_format: str = "npy",
        jitter_on_device: bool = False, progress=print) -> dict:
    """Measure loader, step and end-to-end throughput; return the figures as a dict.

    With ``cache_dir`` the dataset uses the decode-once cache there (``data.cache_dir``, ``data.cache_format``):
    the loader-alone pass decodes and fills it, the step and end-to-end passes read frames from it. With
    ``jitter_on_device`` the workers leave ColorJitter and RandomErasing to the step (``aug.jitter_erasing_on``).
    """
    from microact.data.device_augment import apply_deferred
    from microact.bench.data import _write_clips  # the data benchmark's portrait, person-cropped-like clips
    from microact.models.presets import get_preset

    if "flow" in get_preset(preset).streams:
        raise MicroactError(f"bench e2e: {preset} sees optical flow ({' + '.join(get_preset(preset).streams)}); the "
                            "benchmark's synthetic clips have no flow videos: choose an RGB preset")
    device = _device(device_name)
    on_cpu = device.type == "cpu"
    if on_cpu and preset.startswith("videomae_tiny"):
        num_frames, img_size = 8, 96  # the tiny synthetic recipe's input
    # bf16 autocast on GPUs; fp32 on the CPU, as the CPU recipe trains (on a CPU without hardware bf16, bf16
    # autocast made even the tiny model's step 10x slower).
    precision = "fp32" if on_cpu else "bf16"
    with tempfile.TemporaryDirectory(prefix="microact-e2e-") as tmp:
        folder = Path(tmp)
        n_clips = clips or max(batch * (steps + 2), 8)
        if n_clips < 2 * batch:  # the loader-alone pass times the batches after the first
            raise MicroactError(f"{n_clips} clips make fewer than two batches of {batch}")
        progress(f"writing {min(n_clips, 32)} person-cropped clips (320x534, 3 s)...")
        paths = _write_clips(folder, "crop320", min(n_clips, 32))
        records = [VideoRecord(path=p.name, label=i % 52, source=f"bench:{i}") for i, p in enumerate(paths)]
        records = (records * (n_clips // len(records) + 1))[:n_clips]
        aug = AugConfig(jitter_erasing_on="device" if jitter_on_device else "loader")
        transform = TrainTransform(aug, img_size, rng=0)
        dataset = VideoDataset(records, folder, clip_len=num_frames, transform=transform, cache_dir=cache_dir,
                               cache_format=cache_format)
        loader = build_loader(dataset, batch_size=batch, shuffle=True, num_workers=workers, seed=0, drop_last=True)

        model = create_model(preset, num_frames=num_frames, img_size=img_size).to(device).train()
        criterion = build_loss(model.preset.loss, num_classes=52)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

        def step(batch_data):
            video, labels = batch_data["video"].to(device, non_blocking=True), batch_data["label"]
            if "augment" in batch_data:  # as the training loop does
                video = apply_deferred(video, batch_data["augment"])
            x = normalize_batch(video)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(x)
            loss = criterion(out.as_seed_tuple(), labels.to(device, non_blocking=True))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        # 1. loader alone
        loader.batch_sampler.set_epoch(0)
        it = iter(loader)
        fixed = next(it)  # workers start up
        start, delivered = time.perf_counter(), 0
        for batch_data in it:
            delivered += len(batch_data["label"])
            fixed = batch_data
        loader_rate = delivered / (time.perf_counter() - start)
        progress(f"loader: {loader_rate:.1f} clips/s with {workers} workers"
                 + (" (decoding into the cache)" if cache_dir else ""))

        # 2. step alone on a fixed batch (the loader's last one: a new iterator would set the workers decoding
        # again, and on the CPU they would take cores from the step being timed)
        step(fixed)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step(fixed)
        _sync(device)
        step_rate = batch * steps / (time.perf_counter() - start)
        progress(f"training step: {step_rate:.1f} clips/s ({preset}, batch {batch}, {precision}, {device})")

        # 3. together: how long the loop waits for data, over one epoch and into the next with the same iterator
        # (as training runs). The epoch's first batch from a new iterator is timed on its own: every worker
        # assembles a whole batch before the first one arrives, a cost that a short run would otherwise spread over
        # a handful of steps (an MA-52 epoch has hundreds). Training pays it once per run, not once per epoch:
        # the iterator carries on into the next epoch, whose first batch is timed too.
        loader.batch_sampler.set_epoch(2, until_epoch=4)
        per_epoch = len(loader.batch_sampler) // 2
        t0 = time.perf_counter()
        it = iter(loader)
        first = next(it)
        first_batch_s = time.perf_counter() - t0
        wait, done = 0.0, 1
        start = time.perf_counter()
        step(first)
        while done < per_epoch:
            t0 = time.perf_counter()
            batch_data = next(it)
            wait += time.perf_counter() - t0
            step(batch_data)
            done += 1
        _sync(device)
        total = time.perf_counter() - start
        e2e_rate = done * batch / total
        t0 = time.perf_counter()
        next(it)  # the next epoch's first batch
        next_epoch_first_batch_s = time.perf_counter() - t0
        del it, loader  # stop the persistent workers' prefetching before the clips are deleted
    result = {
        "preset": preset, "device": str(device), "precision": precision, "workers": workers, "batch": batch,
        "num_frames": num_frames, "img_size": img_size, "loader_clips_per_s": loader_rate,
        "step_clips_per_s": step_rate,
        "e2e_clips_per_s": e2e_rate, "data_wait_fraction": wait / total if total else 0.0,
        "epoch_first_batch_s": first_batch_s, "next_epoch_first_batch_s": next_epoch_first_batch_s,
        "decode_cache": cache_format if cache_dir else None, "jitter_erasing_on": aug.jitter_erasing_on,
        "bound": "data" if wait / total > 0.1 else "compute",
    }
    return result


def format_result(r: dict) -> str:
    return "\n".join([
        f"e2e benchmark: {r['preset']} on {r['device']} ({r.get('precision', 'bf16')}), batch {r['batch']}, "
        f"{r['num_frames']}x{r['img_size']}², {r['workers']} workers"
        + (f", decode cache ({r['decode_cache']})" if r.get("decode_cache") else "")
        + (", ColorJitter and RandomErasing in the step" if r.get("jitter_erasing_on") == "device" else ""),
        f"  loader alone        {r['loader_clips_per_s']:8.1f} clips/s"
        + ("  (first epoch: decoding and filling the cache)" if r.get("decode_cache") else ""),
        f"  training step alone {r['step_clips_per_s']:8.1f} clips/s",
        f"  end to end          {r['e2e_clips_per_s']:8.1f} clips/s  (waiting for data {100 * r['data_wait_fraction']:.0f}% "
        f"of the time: {r['bound']}-bound)",
        f"  first batch from a new loader iterator {r['epoch_first_batch_s']:.2f} s (every worker fills a whole "
        "batch first; once per run, not in the figures above)",
        f"  first batch of the next epoch, same iterator {r['next_epoch_first_batch_s']:.2f} s "
        + ("(decoded while the last epoch ended; a new iterator per epoch would wait as long as above)"
           if r["workers"] else "(no workers: nothing is decoded ahead)"),
    ] + _cpu_notes(r))


def _cpu_notes(r: dict) -> list[str]:
    if r["device"] != "cpu":
        return []
    notes = ["  on the CPU the loader's workers and the step share the cores, so together both run slower than alone"]
    if r.get("jitter_erasing_on") == "device":
        notes.append("  on the CPU ColorJitter in the step is far slower than in the loader: the switch is for GPU hosts")
    return notes


def cli_main(args) -> int:
    if args.cache_format and not args.cache_dir:
        raise MicroactError("--cache-format needs --cache-dir (the folder of the decode-once cache)")
    result = run(args.preset, args.workers, args.batch, args.steps, args.device, cache_dir=args.cache_dir,
                 cache_format=args.cache_format or "npy", jitter_on_device=args.jitter_on_device)
    print(format_result(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
