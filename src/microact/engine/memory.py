"""How much memory a training step needs, without the GPU: ``microact bench memory`` and ``grad_checkpointing=auto``.

The estimate runs one real training step -- forward under the recipe's autocast, the loss, backward, AdamW step,
twice so that the optimizer state exists -- on *fake* tensors (``FakeTensorMode``): every operator computes only
shapes and dtypes, so ViT-H at batch 24 takes about 5 s on two CPU cores. A dispatch-level tracker adds up the bytes
of every storage that is alive after each operator and keeps the peak.

What it counts: weights, gradients, optimizer state, saved activations and temporaries, exactly as PyTorch's
CPU operator set allocates them. What it cannot see: CUDA kernel workspaces (cuBLAS, flash attention), the
caching allocator's rounding and fragmentation (a few per cent), the CUDA context (~0.5 GB), and differences
between the CPU and CUDA autocast op lists. Measured on an H200 (2026-11-30, ``microact bench train``), the CUDA
peak of five ViT-B/L/H rows (batch 6 to 64, with and without checkpointing) was the estimate plus 14-16 % of its
activation part, so :attr:`MemoryEstimate.cuda_peak` adds ``CUDA_ACTIVATION_FACTOR`` to that part (all five then
within 1.5 %), and decisions keep 10 % of the GPU free on top.

Examples::

    microact bench memory                                   # Base / Large / Huge presets on an 80 GB GPU
    microact bench memory --preset videomae_h_timesformer --batch 6 12 24 --gpu-mem-gib 40
"""
from __future__ import annotations

import json
import sys
import weakref
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from microact.errors import MicroactError

__all__ = ["MemoryEstimate", "checkpointing_decision", "estimate_preset", "estimate_config", "max_batch", "plan_preset",
           "cli_main"]

GIB = 2 ** 30
# Measured CUDA peak / estimate, activation part only (H200, torch 2.11, bf16; docs/BENCHMARKS.md "Training memory").
CUDA_ACTIVATION_FACTOR = 1.15


class _LiveBytes(TorchDispatchMode):
    """Bytes of all storages alive after each operator (each storage counted once), and their peak."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        ref = self._refs.get(key)
        if ref is not None and ref() is storage:
            return
        nbytes = storage.nbytes()

        def release(_ref, key=key, nbytes=nbytes):
            if self._refs.get(key) is _ref:
                del self._refs[key]
            self.live -= nbytes

        self._refs[key] = weakref.ref(storage, release)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


@dataclass
class MemoryEstimate:
    """Peak memory of one training step of one process, in bytes, and its parts."""

    batch: int
    precision: str
    grad_checkpointing: bool
    peak: int  # everything alive at the worst moment of the step
    weights: int  # parameters and buffers (this process's shards under FSDP)
    gradients: int
    optimizer: int  # AdamW moments
    activations: int  # peak - the three above: saved activations and temporaries (a slight underestimate when
    # the peak falls in backward, before every gradient exists)

    @property
    def peak_gib(self) -> float:
        return self.peak / GIB

    @property
    def cuda_peak(self) -> int:
        """The peak expected on a CUDA GPU: the activations scaled by the measured ``CUDA_ACTIVATION_FACTOR``."""
        return self.peak + int((CUDA_ACTIVATION_FACTOR - 1.0) * self.activations)

    @property
    def cuda_peak_gib(self) -> float:
        return self.cuda_peak / GIB


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in seen:
            seen.add(id(t.untyped_storage()))
            total += t.untyped_storage().nbytes()
    return total


def _input_shape(model: nn.Module) -> tuple[int, int, int, int]:
    """(C, T, H, W) a recognizer takes: 6 channels for two-stream RGB + flow."""
    from microact.models.videomae import VideoMAE

    backbone = next(m for m in model.modules() if isinstance(m, VideoMAE))
    h, w = (backbone.img_size, backbone.img_size) if isinstance(backbone.img_size, int) else backbone.img_size
    two_stream = getattr(getattr(model, "preset", None), "two_stream", False)
    return (6 if two_stream else 3), backbone.num_frames, h, w


def _estimate(build: Callable[[], nn.Module], make_loss: Callable[[nn.Module], nn.Module], batch: int,
              precision: str, grad_checkpointing: bool, world_size: int = 1, fsdp: bool = False,
              fake: bool = True) -> MemoryEstimate:
    """The tracked training step; ``fake=False`` runs it for real on the CPU (tests compare the two)."""
    import contextlib

    from torch._subclasses.fake_tensor import FakeTensorMode

    if precision not in ("bf16", "fp16", "fp32"):
        raise MicroactError(f"precision: {precision!r} is not valid; choose bf16, fp16 or fp32")
    if batch < 1:
        raise MicroactError(f"batch: must be >= 1, got {batch}")
    with torch.device("meta") if fake else contextlib.nullcontext():  # meta: shapes only, nothing allocated
        model = build()
    model.set_grad_checkpointing(grad_checkpointing)
    loss_fn = make_loss(model)
    c, t, h, w = _input_shape(model)
    num_classes = model.num_classes
    with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
        if fake:
            model = model.to_empty(device="cpu")
        model.train()
        tracker = _LiveBytes()
        for tensor in [*model.parameters(), *model.buffers()]:
            tracker.track(tensor)
        weights = tracker.live
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        x = torch.zeros(batch, c, t, h, w)
        y = torch.zeros(batch, dtype=torch.long) % num_classes
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32")
        with tracker:
            for _ in range(2):  # the second step has the optimizer state from the first
                with autocast:
                    loss = loss_fn(model(x, y), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)  # as microact train does: gradients freed between steps
        gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        opt_state = _storage_bytes(v for s in optimizer.state.values() for v in s.values() if v.dim() > 0)
        peak = tracker.peak
    static = weights + gradients + opt_state
    activations = max(peak - static, 0)
    if fsdp and world_size > 1:  # weights, gradients and moments are split; activations stay per process
        weights, gradients, opt_state = (-(-v // world_size) for v in (weights, gradients, opt_state))
        peak = weights + gradients + opt_state + activations
    return MemoryEstimate(batch, precision, grad_checkpointing, peak, weights, gradients, opt_state, activations)


def estimate_preset(preset: str, batch: int, precision: str = "bf16", grad_checkpointing: bool = False,
                    world_size: int = 1, fsdp: bool = False, **overrides) -> MemoryEstimate:
    """Estimated peak memory of one training step of a model preset (its seed loss, AdamW).

    Args:
        preset: a name from ``microact.models.list_models()``.
        batch: clips per forward pass (micro-batch) on one process.
        precision: ``bf16`` / ``fp16`` (autocast; the same memory) or ``fp32``.
        grad_checkpointing: recompute each ViT block in backward.
        world_size, fsdp: with ``fsdp`` the weights, gradients and optimizer state are divided by the process
            count (FSDP's gathered block weights, one block at a time, are not counted).
        **overrides: ``create_model`` keyword arguments (``num_frames``, ``img_size`` ...).
    """
    from microact.losses import build_loss
    from microact.models import create_model

    return _estimate(lambda: create_model(preset, **overrides),
                     lambda m: build_loss(m.preset.loss, m.num_classes, taxonomy=m.taxonomy), batch, precision,
                     grad_checkpointing, world_size, fsdp)


def estimate_config(cfg, micro_batch: Optional[int] = None, grad_checkpointing: Optional[bool] = None,
                    world_size: int = 1, precision: Optional[str] = None) -> MemoryEstimate:
    """The same for a run configuration (its model switches, loss, ``train.micro_batch``, ``train.parallel``)."""
    from microact.engine.builders import build_criterion, build_model

    ckpt = cfg.model.grad_checkpointing is True if grad_checkpointing is None else grad_checkpointing
    return _estimate(lambda: build_model(cfg, pretrained=False), lambda m: build_criterion(cfg, m),
                     micro_batch or cfg.train.micro_batch, precision or cfg.train.precision, ckpt, world_size,
                     cfg.train.parallel == "fsdp")


def max_batch(estimate: Callable[[int], int], budget: int, limit: int = 4096) -> int:
    """The largest batch whose ``estimate(batch)`` (bytes) fits in ``budget``; 0 when batch 1 does not.

    Memory is affine in the batch, so two estimates give a first guess; a bisection around it then settles the
    answer exactly (a handful of estimates, whatever the rounding of the guess).
    """
    m1 = estimate(1)
    if m1 > budget:
        return 0
    slope = max(estimate(2) - m1, 1)
    guess = max(1, min(limit, 1 + (budget - m1) // slope))
    lo, hi = 1, limit + 1  # estimate(lo) fits; estimate(hi) does not (limit + 1 counts as not fitting)
    step = 1
    if estimate(guess) <= budget:  # bracket upwards from the guess
        lo = guess
        while lo < limit:
            probe = min(limit, lo + step)
            if estimate(probe) > budget:
                hi = probe
                break
            lo, step = probe, step * 2
        else:
            return limit
    else:  # bracket downwards
        hi = guess
        while True:
            probe = max(1, hi - step)
            if probe == 1 or estimate(probe) <= budget:
                lo = probe
                break
            hi, step = probe, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if estimate(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def plan_preset(preset: str, batches: list[int], memory_bytes: int, precision: str = "bf16",
                headroom: float = 0.9) -> dict:
    """Estimates at ``batches`` with and without checkpointing, and the largest batches fitting ``memory_bytes``."""
    from microact.bench.train import _DEFAULT_BATCH
    from microact.models import create_model

    with torch.device("meta"):
        backbone = create_model(preset).preset.backbone
    budget = int(headroom * memory_bytes)
    estimates: dict[tuple[int, bool], MemoryEstimate] = {}  # the table and the largest-batch search share some

    def estimate(b: int, ckpt: bool) -> MemoryEstimate:
        if (b, ckpt) not in estimates:
            estimates[b, ckpt] = estimate_preset(preset, b, precision, grad_checkpointing=ckpt)
        return estimates[b, ckpt]

    rows = []
    for b in batches:
        row = {"batch": b}
        for key, ckpt in (("off", False), ("on", True)):
            est = estimate(b, ckpt)
            row[key] = {**asdict(est), "cuda_peak": est.cuda_peak}
        rows.append(row)
    fit = {}
    for ckpt in (False, True):
        fit["on" if ckpt else "off"] = max_batch(lambda b, ckpt=ckpt: estimate(b, ckpt).cuda_peak, budget)
    seed_batch = _DEFAULT_BATCH["cuda"].get(backbone)
    return {"preset": preset, "backbone": backbone, "precision": precision, "memory_bytes": memory_bytes,
            "headroom": headroom, "rows": rows, "max_batch": fit, "seed_batch": seed_batch}


def format_plan(plan: dict) -> str:
    gib = plan["memory_bytes"] / GIB
    lines = [f"{plan['preset']} ({plan['backbone']}), {plan['precision']}: estimated CUDA peak GiB per process "
             "(weights + gradients + AdamW + activations)",
             f"  {'batch':>6} {'no checkpointing':>18} {'checkpointing':>15}   (activations off / on)"]
    for r in plan["rows"]:
        lines.append(f"  {r['batch']:>6} {r['off']['cuda_peak'] / GIB:>18.1f} {r['on']['cuda_peak'] / GIB:>15.1f}   "
                     f"({r['off']['activations'] / GIB:.1f} / {r['on']['activations'] / GIB:.1f})")
    fit = plan["max_batch"]
    lines.append(f"  largest micro-batch within {plan['headroom']:.0%} of {gib:g} GiB: {fit['off']} without, "
                 f"{fit['on']} with checkpointing")
    seed = plan["seed_batch"]
    if seed:
        verdict = ("fits without checkpointing" if fit["off"] >= seed else
                   "fits with checkpointing" if fit["on"] >= seed else
                   f"does not fit: use train.micro_batch <= {fit['on']} with accumulation, or train.parallel=fsdp")
        lines.append(f"  the seed's batch of {seed} per GPU: {verdict}")
    return "\n".join(lines)


def checkpointing_decision(cfg, total: Optional[int], world_size: int) -> tuple[Optional[bool], str]:
    """What ``model.grad_checkpointing`` should be for this run on a device of ``total`` bytes, and why.

    Args:
        cfg: the run configuration (``model.grad_checkpointing`` true, false or auto).
        total: the GPU's memory in bytes; None on CPU (nothing to plan for).
        world_size: processes (matters under ``train.parallel=fsdp``).

    Returns:
        ``(enable, note)``: for ``auto`` the decision; for an explicit setting ``None`` (keep it) and a note that
        warns when the estimate says the step will not fit. ``note`` is a log line ("" when there is nothing
        to say).
    """
    setting = cfg.model.grad_checkpointing
    if total is None:
        note = "model.grad_checkpointing=auto: off on CPU (no device memory to plan for)" if setting == "auto" else ""
        return (False if setting == "auto" else None), note
    budget = int(0.9 * total)
    try:
        off = estimate_config(cfg, grad_checkpointing=False, world_size=world_size)
        on = estimate_config(cfg, grad_checkpointing=True, world_size=world_size) if off.cuda_peak > budget else None
    except Exception as e:  # an estimate is advice: never stop a run because it failed
        return (False if setting == "auto" else None), f"note: could not estimate the step's memory ({e})"
    mb = cfg.train.micro_batch
    where = f"micro-batch {mb}, {cfg.train.precision}, {total / GIB:.0f} GiB GPU"
    if off.cuda_peak <= budget:
        return (False if setting == "auto" else None), (
            f"memory estimate: {off.cuda_peak_gib:.1f} GiB per process without checkpointing ({where})"
            + ("; model.grad_checkpointing=auto: off" if setting == "auto" else ""))
    if setting == "auto":
        if on.cuda_peak <= budget:
            return True, (f"model.grad_checkpointing=auto: on ({off.cuda_peak_gib:.1f} GiB estimated without, "
                          f"{on.cuda_peak_gib:.1f} with; {where})")
        return True, (f"warning: estimated {on.cuda_peak_gib:.1f} GiB per process even with checkpointing ({where}): "
                      "expect out-of-memory; lower train.micro_batch (gradient accumulation keeps "
                      "train.global_batch) or use train.parallel=fsdp")
    if setting is True:  # `on` is the estimate of this very run
        return None, (f"memory estimate: {on.cuda_peak_gib:.1f} GiB per process with checkpointing ({where})"
                      + ("" if on.cuda_peak <= budget else "; expect out-of-memory: lower train.micro_batch"))
    hint = f"model.grad_checkpointing=true (about {on.cuda_peak_gib:.1f} GiB)" if on.cuda_peak <= budget else \
        "a smaller train.micro_batch"
    return None, (f"warning: estimated {off.cuda_peak_gib:.1f} GiB per process ({where}): expect out-of-memory; "
                  f"use {hint}, or model.grad_checkpointing=auto")


def cli_main(args) -> int:
    """``microact bench memory``."""
    from microact.models import list_models

    valid = list_models()
    for p in args.preset:
        if p not in valid:
            raise MicroactError(f"--preset {p!r}: unknown preset; choose from: {', '.join(valid)}")
    plans = []
    for p in args.preset:
        # a few dozen fake-tensor steps per preset: say so before the first minute of silence
        print(f"estimating {p} (a few seconds per estimate; the largest-batch search takes a couple of minutes) ...",
              file=sys.stderr, flush=True)
        plan = plan_preset(p, list(args.batch), int(args.gpu_mem_gib * GIB), args.precision)
        plans.append(plan)
        print(format_plan(plan) + "\n")
    print("Estimates from fake-tensor runs of the training step on PyTorch's CPU operators, with the activations "
          f"scaled by {CUDA_ACTIVATION_FACTOR} (CUDA peaks measured on an H200 were within 1.5 % of that); the "
          "allocator's fragmentation and the CUDA context need the 10 % headroom. On a GPU, `microact bench train` "
          "measures the real peak.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(plans, f, indent=2)
        print(f"wrote {args.json}")
    return 0
