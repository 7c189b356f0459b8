"""The training loop, readable top to bottom: ``microact train CONFIG [overrides] --out DIR [--resume]``.

One process (CPU or one GPU)::

    microact train configs/tiny_synth.yaml data.root=demo_out/data_cropped --out runs/tiny
    microact train configs/videomae_b_k710_frame_coarse_tsn_trainval.yaml data.root=/data/ma52 \\
        model.pretrained=/ckpt/vit_b_hybrid_pt_800e_k710_ft.pth --out runs/best

Eight GPUs on one machine (``train.global_batch`` stays the clips per optimiser step; with ``global_batch=192
micro_batch=24`` each GPU does one micro-batch per step, with ``global_batch=24 micro_batch=3`` the seed's
1-GPU batch is split over 8 GPUs)::

    torchrun --standalone --nproc_per_node=8 -m microact.cli train CONFIG data.root=/data/ma52 --out runs/best

Two machines of 8 GPUs (run on each node, ``--node_rank 0`` and ``1``; the endpoint is node 0's address)::

    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --rdzv_backend c10d --rdzv_id ma52 \\
        --rdzv_endpoint node0.example:29500 -m microact.cli train CONFIG ... --out /shared/runs/best

Add ``--resume`` to any of them to continue from ``DIR/checkpoints/latest`` exactly where it stopped (same epoch,
step, data order, RNG, optimizer and scaler state): after a SIGKILL the final weights equal those of an
uninterrupted run (checked on CPU). SIGTERM / Ctrl-C finish the current step, save a checkpoint and exit with
143 / 130.

Precision: ``fp16`` = autocast + dynamic loss scaling (the seed) on CUDA; on CPU fp16 autocast is slow and
poorly supported, so ``fp16`` runs as ``bf16`` autocast there (a note is printed); ``bf16`` = autocast without
scaling; ``fp32`` = none. On a CPU without hardware bf16 (AVX512-BF16 or AMX) ``fp16`` and ``bf16`` run as
``fp32`` (a note is printed): emulated bf16 matmuls are tens of times slower.

The run directory: ``config.yaml`` (resolved), ``env.json``, ``log.csv``, ``tb/`` (TensorBoard),
``checkpoints/``, ``metrics.json`` (validation history), ``model_final.safetensors``, ``model_best.safetensors``
(with ``data.val_list``), ``plots/``. Every weights file records the run's recipe and its classes (the
:class:`~microact.taxonomy.Taxonomy`: names and groups) in its safetensors metadata
(:data:`microact.engine.state.RECIPE_METADATA_KEY`, :data:`microact.taxonomy.TAXONOMY_METADATA_KEY`).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from microact.config import Config, ConfigError, load_config
from microact.data.dataset import usable_cores
from microact.engine import distributed as D
from microact.engine import fsdp as sharding
from microact.engine.builders import (build_criterion, build_eval_loader, build_model, build_train_loader,
                                      check_list_files)
from microact.engine.evaluate import PRECISION_DTYPES, autocast
from microact.engine.memory import checkpointing_decision
from microact.engine.optim import EMA, build_optimizer, describe_groups, lr_factor, param_groups, set_lr
from microact.engine.state import (check_run_dir, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint,
                                   save_weights, set_rng_state)
from microact.errors import MicroactError
from microact.metrics import FLAT_F1_MEAN_OF
from microact.models.videomae import attention_kernel_of

__all__ = ["build_model", "train", "cli_main", "TrainingDivergedError", "DataLoaderCrashError"]


class TrainingDivergedError(MicroactError):
    """The loss became NaN / inf under ``train.nan_policy=stop``."""


class DataLoaderCrashError(MicroactError):
    """A DataLoader worker died (out of memory, a crash in a decoder); the message names the clips."""


def cli_main(args) -> int:
    """``microact train CONFIG [overrides] --out DIR [--resume]``."""
    cfg = load_config(args.config, args.overrides)
    return train(cfg, args.out, resume=args.resume)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (AVX512-BF16 or AMX).

    Without it PyTorch emulates them: on an AVX2-only AMD EPYC a bf16 ViT-B training step took 312 s, 94 % of it
    in ``aten::mm`` (2026-11-30, ``microact bench train --profile``), against 9.7 s on an EPYC with AVX512-BF16.
    """
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    checks = [c for c in checks if c is not None]
    return not checks or any(c() for c in checks)  # private helpers: if they are gone, assume the CPU is capable


def resolve_precision(precision: str, device: torch.device,
                      native_bf16: Optional[bool] = None) -> tuple[str, Optional[str]]:
    """The precision actually used on ``device`` and a note when it differs from the recipe's.

    ``native_bf16`` (default: :func:`cpu_has_native_bf16`) says whether a CPU runs bf16 matmuls in hardware.
    """
    if device.type != "cpu" or precision == "fp32":
        return precision, None
    if not (cpu_has_native_bf16() if native_bf16 is None else native_bf16):
        return "fp32", (f"train.precision={precision} runs as fp32 on this CPU: it has no hardware bf16 (AVX512-BF16 "
                        "or AMX), and emulated bf16 matmuls are tens of times slower than fp32")
    if precision == "fp16":
        return "bf16", "train.precision=fp16 runs as bf16 autocast on CPU (fp16 autocast on CPU is slow and lossy)"
    return precision, None


def initialisation_note(cfg: Config) -> Optional[str]:
    """The line saying a run's model starts from random weights (``model.pretrained`` unset), else None.

    For a preset the seed started from a checkpoint (``Preset.checkpoint``) the line names it: the seed's numbers
    for that preset assume it.
    """
    if cfg.model.pretrained:
        return None
    from microact.models.presets import get_preset

    line = f"model: {cfg.model.preset} initialised from scratch (model.pretrained is not set)"
    checkpoint = get_preset(cfg.model.preset).checkpoint
    if checkpoint:
        line += (f"; the seed's numbers for this preset assume its checkpoint {checkpoint} (model.pretrained="
                 f"/path/to/{checkpoint})")
    return line


def accumulation_steps(cfg: Config, world_size: int) -> int:
    """``global_batch / (micro_batch x world_size)``; an error names the keys when it does not divide."""
    t = cfg.train
    per_step = t.micro_batch * world_size
    if t.global_batch % per_step:
        fixes = [f"train.global_batch={per_step} ({world_size} x {t.micro_batch} clips per optimiser step)"]
        if t.global_batch % world_size == 0:
            fixes.append(f"train.micro_batch={t.global_batch // world_size} (keeps {t.global_batch} clips per step)")
        error = ConfigError(f"train.global_batch ({t.global_batch}) must be a multiple of train.micro_batch "
                            f"({t.micro_batch}) x world size ({world_size}) = {per_step}; for example "
                            + " or ".join(fixes))
        error.same_on_every_rank = True  # every torchrun process computes it from the same recipe and world size
        raise error
    return t.global_batch // per_step


def environment(info: D.DistInfo, precision: str) -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "platform": platform.platform(), "world_size": info.world_size, "device": str(info.device),
           "precision": precision, "cuda": torch.version.cuda, "argv": sys.argv}
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                           cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop finishes its step, saves and exits."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. called from a worker thread): no handler
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum
        D.warn(f"received {signal.Signals(signum).name}: finishing the current step, then saving a checkpoint")

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class _CsvLog:
    FIELDS = ["step", "epoch", "loss", "lr", "clips_per_s", "data_wait", "skipped", "nan_skipped"]

    def __init__(self, path: Path, resume_step: Optional[int]):
        self.path = path
        rows = []
        if resume_step is not None and path.is_file():  # drop rows logged after the checkpoint we resume from
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)


def stand_in_batch(cfg: Config) -> dict[str, torch.Tensor]:
    """A one-clip batch for a micro-batch whose clips were all unreadable before any good one was seen (under DDP
    every rank must still run forward and backward; its loss gets weight 0). Shaped like the loader's clips: 6
    channels (RGB then flow) for two-stream recipes, 3 otherwise."""
    from microact.engine.builders import input_streams

    channels = 3 * len(input_streams(cfg))
    size = cfg.data.img_size
    return {"video": torch.zeros(1, channels, cfg.data.clip_len, size, size, dtype=torch.uint8),
            "label": torch.zeros(1, dtype=torch.long)}


def _changed_keys(saved_yaml: Optional[str], cfg: Config) -> list[str]:
    """Dotted keys whose values differ between a checkpoint's config (YAML text) and ``cfg``."""
    import yaml

    from microact.config import flatten_config

    if not saved_yaml:
        return []
    old, new = flatten_config(yaml.safe_load(saved_yaml) or {}), flatten_config(cfg.to_dict())
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _check_resumed_taxonomy(weights: Path, taxonomy, cfg: Config) -> None:
    """Refuse to resume a checkpoint whose weights record other classes than the run's recipe now resolves to.

    ``data.classes`` is a path, so the recipe comparison cannot see a classes file edited since the checkpoint; the
    resumed run would go on training the head on the new meaning of the label ids and ``model_final`` would record
    the new classes for weights mostly trained on the old ones. Checkpoints that record no classes (written before
    they did) resume as before.

    Raises:
        MicroactError: naming the checkpoint, the classes file, the difference and what to do.
    """
    from microact.taxonomy import classes_path, differences, read_recorded_taxonomy

    recorded = read_recorded_taxonomy(weights)
    if recorded is None or recorded == taxonomy:
        return
    path = classes_path(cfg)
    now = (f"data.classes={cfg.data.classes} ({path}) now lists" if path is not None
           else "this recipe has (data.classes is unset: MA-52's)")
    restore = (f"restore {path} as it was when the run started" if path is not None
               else "set data.classes to the classes file the run was trained with")
    raise MicroactError(
        f"{weights}: the run was trained on other classes than {now}: {differences(recorded, taxonomy)} (checkpoint: "
        f"{recorded.describe(False)}; now: {taxonomy.describe(False)}). Resuming would go on training these weights "
        f"with the label ids meaning other classes. To continue the run, {restore}; to train on the new classes, "
        "start a new run (another --out)")


def _loader_crash(error: Exception, loader, epoch: int, batch_no: int) -> DataLoaderCrashError:
    """Name the clips a dead worker may have been loading: the next batch due (workers prefetch a few more)."""
    ids = loader.batch_sampler.batch_indices(epoch, batch_no)
    paths = ", ".join(str(loader.dataset.records[i].path) for i in ids) or "none left"
    return DataLoaderCrashError(
        f"a DataLoader worker died in epoch {epoch + 1} while batch {batch_no + 1} of this epoch was due (its "
        f"videos: {paths}; the worker may also have been prefetching a later batch): {error}. Run with "
        "data.num_workers=0 to see the error of the video directly; a worker killed by a signal is often out of "
        "memory.")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(cfg: Config, out: str | os.PathLike, resume: bool = False) -> int:
    """Train the recipe ``cfg`` into the run directory ``out``.

    Returns:
        0 when training finished (or ``train.max_steps`` was reached), 143 / 130 after SIGTERM / SIGINT (a
        checkpoint was saved).

    Raises:
        TrainingDivergedError: NaN / inf loss with ``train.nan_policy=stop`` (state saved first).
        CheckpointStorageError: the run directory is not writable or too full (checked before training).
        DataLoaderCrashError: a loader worker died.
    """
    check_list_files(cfg, ("data.train_lists", "data.val_list"))  # before the run folder or the model exists
    from microact.taxonomy import resolve_taxonomy

    taxonomy = resolve_taxonomy(cfg)  # the classes file, read and checked (num_classes follows it)
    info = D.init(cfg.train.device)
    try:
        return _train(cfg, Path(out), resume, info, taxonomy)
    finally:
        D.cleanup()


def _train(cfg: Config, run_dir: Path, resume: bool, info: D.DistInfo, taxonomy) -> int:
    t = cfg.train
    device = info.device
    main = info.is_main
    accum = accumulation_steps(cfg, info.world_size)
    precision, note = resolve_precision(t.precision, device)

    # ---- model, loss, optimizer --------------------------------------------------------------
    fsdp = t.parallel == "fsdp"
    if fsdp and not info.distributed:
        raise ConfigError("train.parallel=fsdp shards the model across torchrun processes; this run has one process. "
                          "Launch it with torchrun --nproc_per_node=N (N >= 2), or use train.parallel=ddp")
    seed_everything(t.seed)  # identical initialisation on every rank
    model = build_model(cfg, taxonomy=taxonomy).to(device)
    f1_mean_of = {} if taxonomy.has_coarse else {"f1_mean_of": FLAT_F1_MEAN_OF}  # run summaries say what F1_mean is
    if cfg.data.val_list:  # validation would fail only after the first epoch
        from microact.engine.evaluate import check_coarse_rule

        check_coarse_rule(model, cfg.predict.coarse_rule)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    check_run_dir(run_dir, min_free_bytes=8 * n_bytes + 16 * 2**20)  # weights + Adam moments, twice, plus margin
    enable_ckpt, memory_note = checkpointing_decision(
        cfg, torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None,
        info.world_size)
    if enable_ckpt is not None:
        model.set_grad_checkpointing(enable_ckpt)
    if fsdp:
        sharding.shard_model(model)  # before the optimizer: it must hold the sharded parameters
    criterion = build_criterion(cfg, model).to(device)
    groups = param_groups(model, cfg.optim)
    optimizer = build_optimizer(model, cfg.optim, device)
    fp16_scaling = precision == "fp16" and device.type == "cuda"
    if fsdp and fp16_scaling:  # skipping a step must be agreed by every rank holding a shard
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        scaler = ShardedGradScaler(device.type)
    else:
        scaler = torch.amp.GradScaler(device.type, enabled=fp16_scaling)
    ema = EMA(model, t.ema_decay) if t.ema_decay else None
    raw_model = model  # what we save and validate (no DDP / compile wrappers)
    if t.compile:
        model = torch.compile(model)
    if info.distributed and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def full_weights():
        """The unsharded weights (a collective under FSDP: every rank must call it), or the model itself."""
        return sharding.full_state_dict(raw_model) if fsdp else raw_model

    eval_replica = None

    def model_for_eval():
        """Under FSDP, a plain copy holding the gathered weights: evaluation then needs no collectives per batch."""
        nonlocal eval_replica
        if not fsdp:
            return raw_model, raw_model
        weights = full_weights()
        if eval_replica is None:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # keep training's RNG
                eval_replica = build_model(cfg, pretrained=False, taxonomy=taxonomy).to(device)
        eval_replica.load_state_dict(weights, strict=True)
        return eval_replica, weights

    loader = build_train_loader(cfg, distributed=info.distributed)
    val_loader = build_eval_loader(cfg, "val", distributed=info.distributed) if cfg.data.val_list else None
    if val_loader is not None:
        val_loader.generator = torch.Generator().manual_seed(t.seed)  # keep the global RNG untouched
    dataset = loader.dataset
    if not len(dataset):  # else every epoch has 0 steps and the untrained weights come out as the run's answer
        lists = ", ".join(str(Path(cfg.data.root) / f) for f in cfg.data.train_lists)
        raise ConfigError(f"data.train_lists: no training clips in {lists}")
    batches = loader.batch_sampler
    micro_per_epoch = math.ceil(len(batches.sampler.rank_indices(0)) / t.micro_batch)
    steps_per_epoch = math.ceil(micro_per_epoch / accum)

    # ---- state: fresh or resumed --------------------------------------------------------------
    epoch, step_in_epoch, global_step = 0, 0, 0
    best, history, nan_skipped = -1.0, [], 0
    last_good = stand_in_batch(cfg)
    resumed_rng = None
    if not resume and latest_checkpoint(run_dir) is not None:
        raise MicroactError(f"{run_dir}: already holds checkpoints of a run; continue it with --resume, or choose "
                            "another --out")
    if resume:
        found = latest_checkpoint(run_dir)
        if found is None:
            D.log(f"--resume: no checkpoint in {run_dir / 'checkpoints'}; starting from scratch")
        else:
            _check_resumed_taxonomy(found[0], taxonomy, cfg)  # before the weights: another count would not even load
            load_weights = (lambda sd: sharding.load_full_state_dict(raw_model, sd)) if fsdp else None
            state = load_checkpoint(*found, raw_model, load_weights=load_weights)
            saved_parallel = state.get("parallel", "ddp")
            if (state["global_batch"] != t.global_batch or state["world_size"] != info.world_size
                    or saved_parallel != t.parallel):
                raise MicroactError(
                    f"{found[1]}: saved with train.global_batch={state['global_batch']} on {state['world_size']} "
                    f"process(es), train.parallel={saved_parallel}; this run has {t.global_batch} on "
                    f"{info.world_size}, train.parallel={t.parallel}. Resume with the same layout.")
            if fsdp:
                sharding.load_full_optimizer_state(raw_model, optimizer, state["optimizer"])
            else:
                optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            if ema is not None and state.get("ema"):
                ema.load_state_dict({k: sharding.shard_like(v, ema.shadow[k]) for k, v in state["ema"].items()}
                                    if fsdp else state["ema"])
            epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
            saved_steps = state.get("steps_per_epoch")
            if step_in_epoch and (step_in_epoch > steps_per_epoch
                                  or (saved_steps is not None and saved_steps != steps_per_epoch)):
                of = f" of {saved_steps}" if saved_steps else ""
                raise MicroactError(
                    f"{found[1]}: saved after optimiser step {step_in_epoch}{of} of epoch {epoch + 1}, but with this "
                    f"config an epoch has {steps_per_epoch} steps ({len(dataset)} training clips in data.train_lists="
                    f"{cfg.data.train_lists}, train.micro_batch={t.micro_batch}, train.global_batch={t.global_batch}):"
                    " the position in the epoch is lost. Resume with the run's training lists and batch sizes, or "
                    "start a new run from its weights.")
            changed = _changed_keys(state.get("config"), cfg)
            if changed:
                D.log(f"note: --resume with a config that differs from the checkpoint's in {', '.join(changed)}; "
                      f"{run_dir / 'config.yaml'} now records this run's")
            best, history, nan_skipped = state["best"], state["history"], state["nan_skipped"]
            resumed_rng = state["rng"][info.rank]
            D.log(f"resumed from {found[1]}: epoch {epoch + 1}/{t.epochs}, step {step_in_epoch}/{steps_per_epoch}, "
                  f"global step {global_step}")
    if resumed_rng is None:
        seed_everything(t.seed + info.rank)  # dropout / drop path differ per rank, as with one seed per GPU

    # ---- run directory ------------------------------------------------------------------------
    writer, csv_log = None, None
    if main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        kernel = attention_kernel_of(raw_model, device, PRECISION_DTYPES[precision])
        (run_dir / "env.json").write_text(json.dumps({**environment(info, precision), "sdpa_kernel": kernel}, indent=2))
        csv_log = _CsvLog(run_dir / "log.csv", global_step if resumed_rng is not None else None)
        if t.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(run_dir / "tb"), purge_step=global_step or None)
            except ImportError:
                D.log("note: tensorboard is not installed; logging to log.csv only")
        D.log(f"{cfg.description or 'training'}\nrun directory {run_dir}")
        if note:
            D.log(f"note: {note}")
        if memory_note:
            D.log(memory_note)
        if cfg.aug.jitter_erasing_on == "device" and device.type == "cpu":
            D.log("note: aug.jitter_erasing_on=device on the CPU: the step now does ColorJitter in float64 tensors, "
                  "far slower here than the loader's OpenCV (it is for GPU hosts whose loader is the bottleneck)")
        if kernel is not None:
            D.log(f"attention: SDPA's {kernel} kernel (model.sdpa_kernel={cfg.model.sdpa_kernel})")
        D.log(f"classes: {taxonomy.describe()}"
              + ("" if taxonomy.has_coarse else f"; F1_mean averages {FLAT_F1_MEAN_OF}"))
        D.log(f"model {cfg.model.preset}: {sum(p.numel() for p in raw_model.parameters()):,d} parameters; "
              f"parameter groups:\n{describe_groups(groups)}")
        init_note = initialisation_note(cfg) if resumed_rng is None else None  # a resumed run has its weights
        if init_note:
            D.log(init_note)
        D.log(f"{len(dataset)} training clips; {info.world_size} process(es) x micro-batch {t.micro_batch} x "
              f"{accum} accumulation step(s) = {t.global_batch} clips per step; {steps_per_epoch} steps per epoch; "
              f"{t.epochs} epochs; {precision} on {device}"
              + (f"; FSDP: this process holds {sharding.local_numel(raw_model):,d} of the "
                 f"{sum(p.numel() for p in raw_model.parameters()):,d} parameters (and their gradients and "
                 "optimizer state)" if fsdp else ""))

    recipe = cfg.to_yaml()  # recorded in every weights file: predict and test use it or warn when theirs differs

    def train_state() -> dict[str, Any]:
        rngs = [rng_state()]
        if info.distributed:
            rngs = [None] * info.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        ema_state = {}
        if ema is not None:
            ema_state = sharding.gather_full(ema.state_dict()) if fsdp else ema.state_dict()
        return {"optimizer": sharding.full_optimizer_state(raw_model, optimizer) if fsdp else optimizer.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch,
                "step_in_epoch": step_in_epoch, "global_step": global_step, "rng": rngs,
                "ema": ema_state, "best": best, "history": history,
                "nan_skipped": nan_skipped, "global_batch": t.global_batch, "world_size": info.world_size,
                "steps_per_epoch": steps_per_epoch,
                "parallel": t.parallel, "config": cfg.to_yaml()}

    def checkpoint() -> None:
        state = train_state()  # every rank joins the RNG gather (and, under FSDP, the unsharding)
        weights = full_weights()
        if main:
            save_checkpoint(run_dir, global_step, weights, state, t.keep_checkpoints, recipe, taxonomy)
        D.barrier()

    # ---- training -----------------------------------------------------------------------------
    from tqdm import tqdm

    from microact.data.device_augment import apply_deferred
    from microact.data.transforms import normalize_batch
    from microact.engine.builders import input_statistics

    input_stats = input_statistics(cfg)  # flow channels get the flow's statistics (SEED.md §2.9)

    model.train()
    stop = None
    done = t.max_steps is not None and global_step >= t.max_steps
    it = None
    data_hint_given = False
    with _StopFlag() as flag:
        while epoch < t.epochs and not done:
            if it is None:
                # One iterator for every remaining epoch: the workers decode the next epoch's first batches while
                # this one ends and while validation runs (a batch never mixes two epochs).
                batches.set_epoch(epoch, skip_batches=step_in_epoch * accum, until_epoch=t.epochs)
                it = iter(loader)
                starting = True  # the first batch waits for the workers to start: not counted as waiting for data
            if resumed_rng is not None:  # after building the iterator: exactly the state saved at the checkpoint
                set_rng_state(resumed_rng)
                resumed_rng = None
            skipped_clips, batch_no = [], 0
            loss_acc = torch.zeros((), device=device)
            acc_steps, clips, tick = 0, 0, time.perf_counter()
            # Time spent in next(it): the step waiting for the loader. Reported per log interval and per epoch,
            # so a data-bound run says so (and what helps) instead of just being slow.
            waited, epoch_waited, epoch_start = 0.0, 0.0, time.perf_counter()
            bar = tqdm(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{t.epochs}",
                       unit="step", disable=not main, file=sys.stderr, dynamic_ncols=True)
            try:
                while step_in_epoch < steps_per_epoch:
                    factor = lr_factor(epoch, step_in_epoch, steps_per_epoch, cfg.sched, t.epochs)
                    set_lr(optimizer, factor)
                    n_micro = min(accum, micro_per_epoch - step_in_epoch * accum)
                    step_loss = torch.zeros((), device=device)
                    step_indices, step_clips = [], 0
                    for m in range(n_micro):
                        t_wait = time.perf_counter()
                        batch = next(it)
                        if starting:
                            starting = False
                            if main:  # through tqdm, so the line does not break the progress bar
                                how = (f"starting {cfg.data.num_workers} loader worker(s)" if cfg.data.num_workers
                                       else "decoded in this process: data.num_workers=0")
                                bar.write(f"first batch after {time.perf_counter() - t_wait:.1f} s ({how})",
                                          file=sys.stdout)
                            tick = epoch_start = time.perf_counter()
                        else:
                            waited += time.perf_counter() - t_wait
                        batch_no += 1
                        skipped_clips += batch["skipped"]
                        weight = 1.0
                        if batch["video"] is None:  # every clip of this micro-batch was unreadable (already counted)
                            if not info.distributed:
                                continue
                            # DDP all-reduces gradients inside backward(): this rank must still take part, or the
                            # others wait forever. It repeats its last good clips with zero weight.
                            batch, weight = last_good, 0.0
                        else:
                            last_good = {key: batch[key][:1] for key in ("video", "label", "augment") if key in batch}
                            step_indices += batch["index"].tolist()
                        video = batch["video"].to(device, non_blocking=True)
                        if "augment" in batch:  # aug.jitter_erasing_on=device: the loader sent the parameters
                            video = apply_deferred(video, batch["augment"])
                        x = normalize_batch(video, **input_stats)
                        labels = batch["label"].to(device, non_blocking=True)
                        last = m == n_micro - 1
                        # DDP: all-reduce gradients once, on the last micro-batch. FSDP reduce-scatters every
                        # micro-batch so that only the shards of the accumulated gradients stay in memory.
                        skip_sync = info.distributed and not fsdp and not last
                        sync = model.no_sync() if skip_sync else contextlib.nullcontext()
                        with sync:
                            with autocast(device, precision):
                                out = model(x, labels)
                            loss = criterion(out.as_seed_tuple(), labels) * (weight / n_micro)
                            scaler.scale(loss).backward()
                        step_loss += loss.detach()
                        clips += x.shape[0] if weight else 0
                        step_clips += x.shape[0] if weight else 0

                    # One host sync per optimiser step: a NaN must be caught before the weights change, and every
                    # rank must agree on skipping a step or stopping after it (SIGTERM may reach only some ranks).
                    flags = torch.stack([(~torch.isfinite(step_loss)).float(),
                                         torch.tensor(float(flag.signum or 0), device=device),
                                         torch.tensor(float(step_clips > 0), device=device)])
                    bad_flag, stop_flag, data_flag = D.all_reduce_max(flags).tolist()
                    bad, stop = bad_flag > 0, int(stop_flag) or None
                    if data_flag == 0:
                        # Every clip of this step, on every rank, was unreadable: nothing to learn from. No update
                        # (GradScaler.step would fail on gradients it never saw), no EMA step, no loss logged.
                        D.warn(f"epoch {epoch + 1}/{t.epochs}, step {step_in_epoch + 1}: every clip of this optimiser "
                               "step was unreadable; skipping the step")
                        optimizer.zero_grad(set_to_none=True)
                    elif bad:
                        where = (f"non-finite loss at epoch {epoch + 1}/{t.epochs}, step {step_in_epoch + 1} "
                                 f"(global step {global_step + 1}); "
                                 f"videos of this step (rank {info.rank}): "
                                 + ", ".join(f"{i}:{dataset.records[i].path}" for i in step_indices[:16]))
                        if t.nan_policy == "stop":
                            optimizer.zero_grad(set_to_none=True)
                            checkpoint()
                            raise TrainingDivergedError(
                                f"{where}. State saved in {run_dir / 'checkpoints'} (before this step). Lower "
                                "optim.lr, check those videos, or set train.nan_policy=skip.")
                        nan_skipped += 1
                        D.warn(f"{where}; skipping the optimiser step (train.nan_policy=skip, {nan_skipped} so far)")
                        optimizer.zero_grad(set_to_none=True)
                    else:
                        if cfg.optim.grad_clip is not None:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.optim.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                        optimizer.zero_grad(set_to_none=True)
                        if ema is not None:
                            ema.update(raw_model)
                        loss_acc += step_loss
                        acc_steps += 1
                    step_in_epoch += 1
                    global_step += 1
                    bar.update(1)

                    if global_step % t.log_every == 0 or step_in_epoch == steps_per_epoch:
                        # one collective: the mean loss over ranks and the clips every rank skipped this epoch
                        totals = D.all_reduce_sum(torch.stack([
                            loss_acc / max(acc_steps, 1), torch.tensor(float(len(skipped_clips)), device=device)]))
                        mean_loss, skipped_all = (totals[0] / info.world_size).item(), int(totals[1].item())
                        if not acc_steps:  # every step of the interval was skipped (equal on every rank)
                            mean_loss = float("nan")
                        interval = max(time.perf_counter() - tick, 1e-9)
                        rate = clips * info.world_size / interval
                        wait_fraction = min(waited / interval, 1.0)
                        lr = optimizer.param_groups[0]["lr"]
                        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}",
                                        data_wait=f"{wait_fraction:.0%}")
                        if main:
                            csv_log.write({"step": global_step, "epoch": epoch + 1, "loss": f"{mean_loss:.6f}",
                                           "lr": f"{lr:.6e}", "clips_per_s": f"{rate:.2f}",
                                           "data_wait": f"{wait_fraction:.3f}",
                                           "skipped": skipped_all, "nan_skipped": nan_skipped})
                            if writer is not None:
                                writer.add_scalar("train/loss", mean_loss, global_step)
                                writer.add_scalar("train/lr", lr, global_step)
                                writer.add_scalar("train/clips_per_s", rate, global_step)
                                writer.add_scalar("train/data_wait", wait_fraction, global_step)
                        loss_acc.zero_()
                        epoch_waited += waited
                        acc_steps, clips, waited, tick = 0, 0, 0.0, time.perf_counter()

                    done = t.max_steps is not None and global_step >= t.max_steps
                    if stop or done:
                        break
                    if t.checkpoint_every_steps and global_step % t.checkpoint_every_steps == 0:
                        checkpoint()
            except RuntimeError as e:  # torch reports a dead worker as a RuntimeError, possibly from SIGCHLD
                if "DataLoader worker" not in str(e):
                    raise
                raise _loader_crash(e, loader, epoch, batch_no) from e
            bar.close()

            if stop:
                checkpoint()
                code = 128 + (stop if stop in (signal.SIGTERM, signal.SIGINT) else signal.SIGTERM)
                D.log(f"stopped by {signal.Signals(stop).name} after step {step_in_epoch} of epoch {epoch + 1}/"
                      f"{t.epochs}: checkpoint saved in {run_dir / 'checkpoints'}; continue with --resume")
                return code

            epoch_done = step_in_epoch == steps_per_epoch
            if skipped_clips:
                D.warn(f"epoch {epoch + 1}/{t.epochs}: {len(skipped_clips)} clip(s) could not be read and were "
                       f"skipped, e.g. {skipped_clips[0]}")
            skipped_all = int(D.all_reduce_sum(torch.tensor(float(len(skipped_clips)), device=device)).item())
            epoch_wait = min((epoch_waited + waited) / max(time.perf_counter() - epoch_start, 1e-9), 1.0)
            wait_percent = round(100 * epoch_wait)  # what the log says is what the hint below decides on
            D.log(f"epoch {epoch + 1}/{t.epochs}: global step {global_step}, lr {optimizer.param_groups[0]['lr']:.3e}, "
                  f"skipped clips {skipped_all}, NaN steps skipped {nan_skipped}, "
                  f"waited for data {wait_percent}% of the time")
            if wait_percent > 10 and not data_hint_given:
                data_hint_given = True
                D.log(f"note: the training step waited for the loader {wait_percent}% of this epoch. More "
                      f"data.num_workers (now {cfg.data.num_workers}, with {usable_cores()} cores for this process), "
                      "person-cropped videos (microact crop), on a GPU aug.jitter_erasing_on=device, or "
                      "for videos that decode slowly the decode-once cache (data.cache_dir=DIR) feed it faster; "
                      "`microact bench e2e` measures the loader and the step apart")
            if epoch_done:
                epoch, step_in_epoch = epoch + 1, 0
            if val_loader is not None and epoch_done and (epoch % t.val_every == 0 or epoch == t.epochs or done):
                eval_model, weights = model_for_eval()
                scores = validate(eval_model, val_loader, device, precision, cfg, taxonomy)
                scores.update(epoch=epoch, step=global_step)
                history.append(scores)
                if main:
                    D.log("val " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)))
                    if writer is not None:
                        for k, v in scores.items():
                            if isinstance(v, float):
                                writer.add_scalar(f"val/{k}", v, global_step)
                    if scores["f1_mean"] > best:
                        best = scores["f1_mean"]
                        save_weights(weights, run_dir / "model_best.safetensors", recipe, taxonomy)
                    (run_dir / "metrics.json").write_text(json.dumps({"val": history, "best_f1_mean": best,
                                                                      **f1_mean_of}, indent=2))
            if done or (epoch_done and (epoch % t.checkpoint_every == 0 or epoch == t.epochs)):
                checkpoint()

    # ---- the end ------------------------------------------------------------------------------
    final_weights = full_weights()
    ema_weights = None
    if ema is not None:
        ema_weights = sharding.gather_full(ema.state_dict()) if fsdp else ema.state_dict()
    if main:
        save_weights(final_weights, run_dir / "model_final.safetensors", recipe, taxonomy)
        if ema_weights is not None:
            save_weights(ema_weights, run_dir / "model_ema_final.safetensors", recipe, taxonomy)
        selected = "model_final.safetensors"
        if t.select == "best_val":
            if history:  # this run validated (a model_best.safetensors on disk may be an older run's)
                selected = "model_best.safetensors"
            else:
                why = ("data.val_list unset" if not cfg.data.val_list else
                       f"the run ended before the first validation: train.val_every={t.val_every} epochs, "
                       f"train.epochs={t.epochs}, train.max_steps={t.max_steps}")
                D.warn(f"train.select=best_val but there was no validation ({why}): using the last weights")
        summary = {"val": history, "best_f1_mean": best if history else None, **f1_mean_of, "selected": selected,
                   "global_step": global_step, "nan_skipped": nan_skipped}
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        if writer is not None:
            writer.close()
        try:
            from microact.plots.training import plot_run

            plot_run(run_dir)
        except Exception as e:  # plots are a convenience; a plotting problem must not fail a finished run
            D.warn(f"could not draw the training plots: {e}")
        D.log(f"done: {run_dir / selected} (train.select={t.select})")
        # what to run next on these weights (the run's recipe and its files; --split val where there is a val list)
        split = "val" if cfg.data.val_list else "test"
        weights_arg, recipe_arg = shlex.quote(str(run_dir / selected)), shlex.quote(str(run_dir / "config.yaml"))
        D.log(f"next: microact test {recipe_arg} {weights_arg} --split {split}  (multi-clip test: metrics, dump)\n"
              f"      microact predict VIDEO --checkpoint {weights_arg}  (any video; the weights record the recipe)")
    D.barrier()
    return 0


@torch.no_grad()
def validate(model, loader, device, precision: str, cfg: Config, taxonomy=None) -> dict[str, Any]:
    """F1_mean and its four parts on the validation loader (``eval.val_clips`` clips per video).

    Body parts follow ``predict.coarse_rule`` as in ``microact test``. With a flat taxonomy (no groups) F1_mean
    is the mean of the fine macro and micro F1 and there are no coarse parts.

    Args:
        taxonomy: the run's classes (default: the model's, else MA-52).
    """
    from microact.engine.builders import input_statistics
    from microact.engine.evaluate import evaluate
    from microact.metrics import f1_mean, predict_coarse
    from microact.taxonomy import taxonomy_of

    taxonomy = taxonomy_of(model, taxonomy)

    rule = cfg.predict.coarse_rule
    results = evaluate(model, loader, device, average=cfg.eval.average, precision=precision, progress=D.is_main(),
                       coarse_head=rule == "coarse_head", input_stats=input_statistics(cfg))
    model.train()
    if results.labels is None:
        raise MicroactError(f"data.val_list={cfg.data.val_list}: every label is 0; a validation list needs labels")
    pred = results.scores.argmax(1)
    coarse_pred = (predict_coarse(results.scores, rule, results.coarse_head_scores, taxonomy)
                   if taxonomy.has_coarse else None)
    scores = f1_mean(results.labels, pred, cfg.metric.macro_labels, coarse_pred=coarse_pred,
                     num_classes=cfg.data.num_classes, taxonomy=taxonomy)
    return {k: float(v) for k, v in scores.items()}
