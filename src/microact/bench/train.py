"""``microact bench train``: the full recognizer training step on synthetic clips (figures printed, never asserted).

One step = forward of backbone + every head, the preset's seed loss, backward, AdamW step (fused on CUDA), with
bf16 autocast, fp16 autocast + GradScaler, or fp32 -- exactly the work of one iteration of ``microact train``
minus data loading. The peer, run in the same process on the same inputs, is Hugging Face
``VideoMAEForVideoClassification`` of the same size (SDPA attention, fc_norm of the token mean, plain CE).

Reported per model: clips/s, step time, peak memory (CUDA allocator peak, or the process RSS peak sampled during
the timed steps on CPU), achieved TFLOP/s and MFU. FLOPs are model FLOPs: 3 x forward (VIDEOMAE.md §7.1),
whatever activation checkpointing recomputes. MFU needs the device's dense peak for the precision (a small table
of NVIDIA data-centre GPUs below); on CPU it is not reported.

Examples::

    microact bench train --preset videomae_b_k710_frame_coarse_tsn --precision bf16 --steps 10
    microact bench train --preset videomae_tiny_frame_coarse_tsn --device cpu --steps 2 --json bench_train.json
"""
from __future__ import annotations

import json
import os
import statistics
import threading
import time
from contextlib import nullcontext
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from microact.bench.devices import peak_flops, resolve_device
from microact.engine.evaluate import PRECISION_DTYPES, autocast
from microact.errors import MicroactError
from microact.ma52 import SEED_BEST_RECIPE_CLIP_PASSES

# Clips per step when --batch is not given: the seed's per-GPU batches on CUDA, small ones on CPU.
_DEFAULT_BATCH = {
    "cuda": {"videomae_base": 24, "videomae_large": 10, "videomae_huge": 6, "videomae_small": 32},
    "cpu": {"videomae_base": 1, "videomae_large": 1, "videomae_huge": 1, "videomae_small": 2},
}


def default_batch(backbone: str, device: torch.device) -> int:
    table = _DEFAULT_BATCH["cuda" if device.type == "cuda" else "cpu"]
    return table.get(backbone, 32 if device.type == "cuda" else 4)


class _RssPeak:
    """Peak resident memory of this process while the context is open (CPU runs), sampled every 5 ms."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:  # not Linux: fall back to the lifetime peak
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.005)

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step: Callable[[], torch.Tensor], device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    """Run ``warmup`` untimed then ``steps`` timed steps; per-step times need a sync, which only waits for the GPU
    queue to drain (no host read of the loss), so the figures include no extra host round-trips."""
    losses = []
    for _ in range(warmup):
        losses.append(step())
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with (_RssPeak() if device.type == "cpu" else nullcontext()) as rss:
        for _ in range(steps):
            t0 = time.perf_counter()
            losses.append(step())
            _sync(device)
            times.append(time.perf_counter() - t0)
    final = torch.stack(losses).float().cpu()  # one host transfer for all steps
    if not torch.isfinite(final).all():
        raise MicroactError(f"bench train: non-finite loss during the benchmark: {final.tolist()}")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak
    return {"step_s": statistics.median(times), "step_s_all": times, "peak_mem_bytes": int(peak),
            "peak_mem_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process RSS peak",
            "last_loss": float(final[-1])}


def _make_step(model, loss_fn: Callable, inputs, labels, precision: str, device: torch.device,
               param_groups) -> Callable[[], torch.Tensor]:
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups, lr=3e-4, betas=(0.9, 0.999), weight_decay=0.01, fused=fused)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step() -> torch.Tensor:
        with autocast(device, precision):
            loss = loss_fn(model, inputs, labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def _seed_param_groups(model) -> list[dict]:
    """Backbone at lr x 0.1 as in the seed (SEED.md §6.3); enough for a faithful optimiser cost."""
    backbone = [p for n, p in model.named_parameters() if "backbone" in n]
    heads = [p for n, p in model.named_parameters() if "backbone" not in n]
    return [{"params": backbone, "lr": 3e-5}, {"params": heads}]


def _result(name: str, timing: dict, batch: int, flops_per_clip: float, peak: Optional[float], params: int) -> dict:
    clips_s = batch / timing["step_s"]
    achieved = flops_per_clip * clips_s
    return {"model": name, "params": params, "clips_per_s": clips_s, "step_ms": 1e3 * timing["step_s"],
            "tflops": achieved / 1e12, "mfu": achieved / peak if peak else None, **timing}


def default_precision(device: torch.device, native_bf16: Optional[bool] = None) -> tuple[str, Optional[str]]:
    """The precision ``bench train`` measures when none is given, and a one-line note when it is not bf16.

    bf16 autocast on GPUs; fp32 on a CPU without hardware bf16 (AVX512-BF16 or AMX), where bf16 matmuls are
    emulated and tens of times slower: what :func:`microact.engine.train.resolve_precision` makes of bf16 there.
    """
    from microact.engine.train import resolve_precision

    precision, changed = resolve_precision("bf16", device, native_bf16)  # what microact train would run
    if changed is None:
        return precision, None
    return precision, (f"precision: {precision} (this CPU has no hardware bf16 (AVX512-BF16 or AMX), so bf16 would "
                       "be emulated and tens of times slower, and microact train runs fp32 here; --precision bf16 "
                       "measures it anyway)")


def bench_train(preset: str = "videomae_b_k710_frame_coarse_tsn", batch: Optional[int] = None,
                precision: Optional[str] = None, compile: bool = False, grad_checkpointing: bool = False,
                steps: int = 5,
                device: str = "auto", peer: bool = True, warmup: Optional[int] = None,
                profile_dir: Optional[str] = None, sdpa_kernel: str = "auto",
                **model_overrides: Any) -> dict[str, Any]:
    """Time the training step of a preset and of the HF VideoMAE peer.

    Args:
        preset: model preset (see ``microact.models.list_models()``).
        batch: clips per step (default: a size that fits the device, see ``_DEFAULT_BATCH``).
        precision: ``"bf16"``, ``"fp16"`` (with GradScaler) or ``"fp32"``; None: :func:`default_precision` (bf16,
            or fp32 on a CPU without hardware bf16; the settings then carry ``"precision_note"``).
        compile: ``torch.compile`` both models.
        grad_checkpointing: activation checkpointing in both models.
        steps: timed steps (the median step time is reported).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        peer: also run HF ``VideoMAEForVideoClassification`` (skipped with a note when transformers is missing).
        warmup: untimed steps first (default 1 on CPU, 3 on CUDA, +2 with compile).
        profile_dir: also profile our step (:mod:`microact.bench.profile`): the summary goes to ``"profile"``,
            the Chrome trace into this folder.
        sdpa_kernel: the fused attention kernel our model tries first ("auto", "cudnn", "flash", "efficient"; see
            :func:`microact.models.videomae.sdpa_preference`); the peer keeps PyTorch's order. The settings record
            which kernel each side actually gets.
        **model_overrides: passed to ``create_model`` (e.g. ``num_frames=4, img_size=32`` for a quick run).

    Returns:
        A dict with the settings, ``"microact"`` and ``"hf"`` results (or ``"hf_skipped"``) and ``"ratio"``
        (our clips/s over HF's).
    """
    from microact.losses import build_loss
    from microact.models import create_model
    from microact.models.videomae import attention_kernel_of, forward_macs

    if precision is not None and precision not in PRECISION_DTYPES:
        raise MicroactError(f"--precision: {precision!r} is not valid; choose bf16, fp16 or fp32")
    if steps < 1:
        raise MicroactError(f"--steps: must be >= 1, got {steps}")
    dev = resolve_device(device)
    precision_note = None
    if precision is None:
        precision, precision_note = default_precision(dev)
    if warmup is None:
        warmup = (3 if dev.type == "cuda" else 1) + (2 if compile else 0)
    torch.manual_seed(0)

    model = create_model(preset, grad_checkpointing=grad_checkpointing, attn_impl="sdpa", sdpa_kernel=sdpa_kernel,
                         **model_overrides)
    p = model.preset
    if batch is None:
        batch = default_batch(p.backbone, dev)
    if batch < 1:
        raise MicroactError(f"--batch: must be >= 1, got {batch}")
    model.to(dev).train()
    loss = build_loss(p.loss, model.num_classes)
    streams = [model.backbone.rgb, model.backbone.flow or model.backbone.rgb] if p.two_stream else [model.backbone]
    ref = streams[0]
    # Model FLOPs per clip: 3 x forward; forward = 2 x (MACs of each stream + the heads' matmuls, the frame heads
    # once per pseudo-frame).
    grid_t = model.backbone.grid[0]
    head_macs = sum(q.numel() for n, q in model.named_parameters() if n.startswith("cls_head.") and q.dim() == 2)
    head_macs += grid_t * sum(q.numel() for n, q in model.named_parameters()
                              if n.startswith(("fc_frame.", "fc_coarse_cls_frame.")) and q.dim() == 2)
    ours_flops = 3 * 2 * (sum(forward_macs(s) for s in streams) + head_macs)
    num_classes = model.num_classes
    in_chans = 6 if p.two_stream else 3
    x = torch.randn(batch, in_chans, ref.num_frames, *_hw(ref.img_size), device=dev)
    y = torch.randint(0, model.num_classes, (batch,), device=dev)

    settings = {"preset": p.name, "backbone": p.backbone, "batch": batch, "precision": precision, "compile": compile,
                "grad_checkpointing": grad_checkpointing, "steps": steps, "warmup": warmup, "device": str(dev),
                "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
                "torch": torch.__version__, "flops_per_clip_train": ours_flops, "loss": p.loss,
                "sdpa_kernel": sdpa_kernel}
    if precision_note:
        settings["precision_note"] = precision_note
    settings["sdpa_kernel_in_use"] = attention_kernel_of(model, dev, PRECISION_DTYPES[precision])
    settings["sdpa_kernel_default"] = attention_kernel_of(model, dev, PRECISION_DTYPES[precision],
                                                          preference="auto")  # the peer's
    if dev.type == "cpu":
        from microact.engine.train import cpu_has_native_bf16

        settings["cpu_native_bf16"] = cpu_has_native_bf16()
    peak = peak_flops(dev, precision)
    settings["peak_flops"] = peak

    run_model = torch.compile(model) if compile else model
    step = _make_step(run_model, lambda m, a, b: loss(m(a, b), b), x, y, precision, dev, _seed_param_groups(model))
    ours = _result("microact", _time_steps(step, dev, steps, warmup), batch, ours_flops, peak,
                   sum(q.numel() for q in model.parameters()))
    out: dict[str, Any] = {"settings": settings, "microact": ours}
    if profile_dir is not None:
        from microact.bench.profile import profile_steps

        out["profile"] = profile_steps(step, dev, steps=min(steps, 3), out_dir=profile_dir)
    # Meaningful for the seed's own model (ViT-B 16x224); for other sizes it says what that size would cost.
    out["seed_recipe_projection"] = {"clip_passes": SEED_BEST_RECIPE_CLIP_PASSES,
                                     "hours": SEED_BEST_RECIPE_CLIP_PASSES / ours["clips_per_s"] / 3600}
    hf_built = None
    if peer:  # built (on the CPU) from our backbone's sizes before that backbone is freed
        try:
            hf_built = _hf_model(ref, num_classes, grad_checkpointing)
        except ImportError as e:
            out["hf_skipped"] = f"transformers is not installed ({e}); pip install 'microact[hf]'"
        else:
            x_hf = x[:, :3].transpose(1, 2).contiguous()  # [B, 3, T, H, W] -> [B, T, 3, H, W] (HF layout)
    # Nothing of our run may stay on the device while the peer is measured (its peak memory would include it):
    # `streams`/`ref` hold our backbone's parameters, `x` our copy of the inputs.
    del step, run_model, model, streams, ref, x
    _free(dev)

    if hf_built is not None:
        hf, hf_flops = hf_built
        del hf_built
        hf.to(dev).train()
        if p.two_stream:
            out["hf_note"] = "HF peer is one RGB stream of the same size (two-stream has no HF equivalent)"
        run_hf = torch.compile(hf) if compile else hf

        def hf_loss(m, a, b):
            return F.cross_entropy(m(pixel_values=a).logits.float(), b)

        step = _make_step(run_hf, hf_loss, x_hf, y, precision, dev, [{"params": list(hf.parameters())}])
        out["hf"] = _result("hf_videomae", _time_steps(step, dev, steps, warmup), batch, hf_flops, peak,
                            sum(q.numel() for q in hf.parameters()))
        out["ratio"] = out["microact"]["clips_per_s"] / out["hf"]["clips_per_s"]
        del step, run_hf, hf
        _free(dev)
    return out


def _hw(img_size) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} threads)"
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _hf_model(backbone, num_classes: int, grad_checkpointing: bool):
    """HF VideoMAEForVideoClassification with the backbone's sizes (SDPA, mean pooling + fc_norm, linear head)."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    h, w = _hw(backbone.img_size)
    if h != w:
        raise MicroactError("bench train: the HF peer needs a square input size")
    cfg = VideoMAEConfig(
        image_size=h, patch_size=backbone.patch_size, num_channels=3, num_frames=backbone.num_frames,
        tubelet_size=backbone.tubelet_size, hidden_size=backbone.embed_dim, num_hidden_layers=backbone.depth,
        num_attention_heads=backbone.num_heads, intermediate_size=backbone.blocks[0].mlp.fc1.out_features,
        qkv_bias=True, use_mean_pooling=True, layer_norm_eps=1e-6, num_labels=num_classes,
        attn_implementation="sdpa",
    )
    model = VideoMAEForVideoClassification(cfg)
    if grad_checkpointing:
        model.gradient_checkpointing_enable()
    from microact.models.videomae import forward_macs

    macs = forward_macs(backbone) + backbone.embed_dim * num_classes
    return model, 3 * 2 * macs


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def format_report(res: dict) -> str:
    """Human-readable table of :func:`bench_train`'s result."""
    s = res["settings"]
    lines = [
        f"bench train: {s['preset']} ({s['backbone']}, loss {s['loss']}) on {s['device']} ({s['device_name']}), "
        f"torch {s['torch']}",
        f"  batch {s['batch']}, {s['precision']}, compile={s['compile']}, "
        f"grad_checkpointing={s['grad_checkpointing']}, {s['steps']} timed steps after {s['warmup']} warm-up; "
        f"model FLOPs/clip (train) {s['flops_per_clip_train'] / 1e9:.1f} GFLOP",
        f"  attention kernel: ours {s.get('sdpa_kernel_in_use', '?')} (--sdpa-kernel {s.get('sdpa_kernel', 'auto')}), "
        f"PyTorch's default {s.get('sdpa_kernel_default', '?')}",
        f"  {'model':<14}{'params':>10}{'clips/s':>10}{'step ms':>10}{'peak mem':>12}{'TFLOP/s':>10}{'MFU':>8}",
    ]
    for key in ("microact", "hf"):
        r = res.get(key)
        if r is None:
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        lines.append(f"  {r['model']:<14}{r['params'] / 1e6:>9.2f}M{r['clips_per_s']:>10.2f}{r['step_ms']:>10.1f}"
                     f"{_fmt_bytes(r['peak_mem_bytes']):>12}{r['tflops']:>10.3f}{mfu:>8}")
    proj = res.get("seed_recipe_projection")
    if proj:
        lines.append(f"  at this rate the seed's best recipe ({proj['clip_passes']:,d} clip passes: 42 epochs of "
                     f"train+val) takes {proj['hours']:.2f} h of training steps on one device (goal: <= 1 h on one "
                     "H100; data loading and validation not included)")
    if "ratio" in res:
        lines.append(f"  microact / HF clips/s: {res['ratio']:.2f}x  (HF: same ViT, SDPA, plain CE, no assisting "
                     "heads)")
    if s.get("precision_note"):
        lines.append(f"  note: {s['precision_note']}")
    if s["device"] == "cpu" and s["precision"] != "fp32" and not s.get("cpu_native_bf16", True):
        lines.append("  note: this CPU has no hardware bf16 (AVX512-BF16 or AMX): its bf16 matmuls are emulated and "
                     "tens of times slower than fp32 (microact train runs fp32 here)")
    for key in ("hf_skipped", "hf_note"):
        if key in res:
            lines.append(f"  note: {res[key]}")
    r = res["microact"]
    lines.append(f"  peak memory is the {r['peak_mem_kind']}; MFU uses model FLOPs (3x forward)"
                 + ("" if s["peak_flops"] else "; no peak FLOP/s known for this device, MFU not reported"))
    if "profile" in res:
        from microact.bench.profile import format_profile

        lines.append("microact step " + format_profile(res["profile"]))
    return "\n".join(lines)


def cli_main(args) -> int:
    """``microact bench train`` (options in :mod:`microact.cli`)."""
    res = bench_train(args.preset, batch=args.batch, precision=args.precision, compile=args.compile,
                      grad_checkpointing=args.grad_checkpointing, steps=args.steps, device=args.device,
                      profile_dir=args.profile, peer=args.peer, sdpa_kernel=args.sdpa_kernel)
    print(format_report(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")
    return 0
