"""``microact bench backbone``: our VideoMAE vs Hugging Face ``VideoMAEModel`` (sdpa and eager), same weights.

Every cell (mode x precision x batch) times the three implementations round-robin in the same run, so drift of a
shared machine hits all of them alike, after one warm-up. Three statistics of the ``--repeats`` timed runs are
reported: the best (minimum), the median, and the paired ratio of each round's runs with a bootstrap 95 % interval
(:func:`paired_speedup`), which says whether a difference is larger than the machine's noise. On a CPU the noise is
one-sided -- other jobs, and the page faults of freshly mapped memory, which glibc hands out for every large tensor
and which land on whichever pass happens to allocate it -- so the best run estimates an implementation's own cost
(as Python's ``timeit`` recommends) and the median shows what a user sees on a busy machine. Both models compute the
same function (token map after the final LayerNorm); the script checks that before timing. Figures are printed,
never asserted.
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from microact.bench.devices import peak_flops, resolve_device
from microact.errors import MicroactError
from microact.models.checkpoints import load_pretrained
from microact.models.videomae import VideoMAE, create_backbone, flops_per_clip

IMPLS = ("ours", "hf_sdpa", "hf_eager")


def build_models(name: str, device: torch.device, num_frames: int = 16,
                 img_size: int = 224) -> dict[str, torch.nn.Module]:
    """Our backbone and two HF ``VideoMAEModel`` copies (sdpa, eager) holding the same random weights, for clips of
    ``num_frames`` frames of ``img_size`` pixels."""
    try:
        from transformers import VideoMAEConfig, VideoMAEModel
    except ImportError as e:  # pragma: no cover - transformers is an optional extra
        raise MicroactError("bench backbone needs the 'transformers' package (pip install microact[hf])") from e
    # HF builds the sinusoid table for its own token count (our "analytic" mode); at 16 x 224 both modes give that
    # table, at other sizes our default resamples the 16 x 224 one and the two models would differ.
    ours = create_backbone(name, output="map", num_frames=num_frames, img_size=img_size, pos_embed_mode="analytic")
    cfg = VideoMAEConfig(
        image_size=ours.img_size, patch_size=ours.patch_size, num_channels=3, num_frames=ours.num_frames,
        tubelet_size=ours.tubelet_size, hidden_size=ours.embed_dim, num_hidden_layers=ours.depth,
        num_attention_heads=ours.num_heads, intermediate_size=ours.blocks[0].mlp.fc1.out_features,
        layer_norm_eps=1e-6, use_mean_pooling=False, qkv_bias=True)
    torch.manual_seed(0)
    # Each model gets its own config: HF reads `config._attn_implementation` at call time, and `_from_config`
    # writes it into the config object it is given (a shared config would turn both models eager).
    hf_sdpa = VideoMAEModel._from_config(copy.deepcopy(cfg), attn_implementation="sdpa")
    with torch.no_grad():  # non-zero q/v biases so the bias path is part of the comparison
        for layer in hf_sdpa.encoder.layer:
            layer.attention.attention.query.bias.normal_(0, 0.02)
            layer.attention.attention.value.bias.normal_(0, 0.02)
    hf_eager = VideoMAEModel._from_config(copy.deepcopy(cfg), attn_implementation="eager")
    hf_eager.load_state_dict(hf_sdpa.state_dict())
    load_pretrained(ours, hf_sdpa.state_dict(), load_final_norm=True)
    models = {"ours": ours, "hf_sdpa": hf_sdpa, "hf_eager": hf_eager}
    for impl, model in (("hf_sdpa", hf_sdpa), ("hf_eager", hf_eager)):
        got = model.config._attn_implementation
        if got != impl[3:]:
            raise MicroactError(f"bench backbone: HF model {impl} runs attention {got!r}, expected {impl[3:]!r}")
    return {k: m.to(device).eval() for k, m in models.items()}


def _runner(impl: str, model: torch.nn.Module, x: torch.Tensor, backward: bool) -> Callable[[], None]:
    # HF takes [B, T, C, H, W]; the permuted view is what its users pass (it permutes back internally).
    inp = x if impl == "ours" else x.permute(0, 2, 1, 3, 4)

    def run():
        if backward:
            out = model(inp) if impl == "ours" else model(pixel_values=inp).last_hidden_state
            out.float().mean().backward()
            for p in model.parameters():
                p.grad = None
        else:
            with torch.no_grad():
                model(inp) if impl == "ours" else model(pixel_values=inp)

    return run


def _time(run: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def check_parity(models: dict, device: torch.device) -> float:
    """Max |ours - HF sdpa| on one fp32 clip (both return the normalised token map)."""
    ours = models["ours"]
    x = torch.randn(1, 3, ours.num_frames, ours.img_size, ours.img_size, device=device)
    with torch.no_grad():
        a = ours(x).flatten(2).transpose(1, 2)  # [B, D, T', H', W'] -> [B, N, D]
        b = models["hf_sdpa"](pixel_values=x.permute(0, 2, 1, 3, 4)).last_hidden_state
    return (a - b).abs().max().item()


def paired_speedup(peer_s: list[float], ours_s: list[float], resamples: int = 2000, seed: int = 0) -> dict:
    """Speed-up of ours over a peer from runs timed in the same rounds: the geometric mean of the per-round
    ratios ``peer / ours`` and a bootstrap 95 % interval over rounds.

    Pairing cancels the drift a shared machine adds to both runs of a round, which the best-of and median ratios
    do not. ``verdict`` reads the interval: "faster" (it lies above 1), "slower" (below 1) or "tie".
    """
    import numpy as np

    if len(peer_s) != len(ours_s) or len(ours_s) < 3:
        raise ValueError(f"paired_speedup needs the same number (>= 3) of runs of both, got {len(peer_s)} and "
                         f"{len(ours_s)}")
    logs = np.log(np.asarray(peer_s, dtype=np.float64) / np.asarray(ours_s, dtype=np.float64))
    rng = np.random.default_rng(seed)
    means = logs[rng.integers(0, len(logs), size=(resamples, len(logs)))].mean(axis=1)
    lo, hi = (float(np.exp(q)) for q in np.quantile(means, [0.025, 0.975]))
    verdict = "faster" if lo > 1 else "slower" if hi < 1 else "tie"
    return {"geomean": float(np.exp(logs.mean())), "ci95": [lo, hi], "verdict": verdict, "rounds": len(logs)}


def run_benchmark(name: str, batches: list[int], precisions: list[str], repeats: int, device: torch.device,
                  progress: bool = True, num_frames: int = 16, img_size: int = 224) -> dict:
    """Time forward and forward+backward of every implementation; returns the figures as a dict.

    ``num_frames`` / ``img_size`` set the clip (the default is the seed's 16 x 224; tests use smaller ones).
    """
    for p in precisions:
        if p not in ("fp32", "bf16", "fp16"):
            raise MicroactError(f"--precision: unknown precision {p!r} (fp32, bf16, fp16)")
    if device.type == "cpu" and "fp16" in precisions:
        raise MicroactError("--precision fp16: not supported on CPU (use bf16)")
    models = build_models(name, device, num_frames=num_frames, img_size=img_size)
    parity = check_parity(models, device)
    ours: VideoMAE = models["ours"]
    cells = []
    plan = [(mode, prec, b) for mode in ("forward", "forward+backward") for prec in precisions for b in batches]
    try:
        from tqdm import tqdm
        plan_iter = tqdm(plan, desc="bench backbone", disable=not progress)
    except ImportError:  # pragma: no cover
        plan_iter = plan
    for mode, prec, b in plan_iter:
        backward = mode == "forward+backward"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)

        def amp():
            # One autocast region per pass: autocast keeps the low-precision copies of the weights until its
            # outermost region exits, so a region around the whole cell would let every pass after the first skip
            # the weight casts, and hold each model's cast weights while the next model's peak memory is measured.
            return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

        x = torch.randn(b, 3, ours.num_frames, ours.img_size, ours.img_size, device=device)
        runs = {impl: _runner(impl, models[impl], x, backward) for impl in IMPLS}
        times = {impl: [] for impl in IMPLS}
        peak_mem = {}
        for impl in IMPLS:  # warm-up (kernel selection, allocator), also measures peak memory
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                with amp():
                    _time(runs[impl], device)
            except torch.OutOfMemoryError:
                times[impl] = None
                continue
            if device.type == "cuda":
                peak_mem[impl] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        for r in range(repeats):
            # Round-robin so machine drift hits every implementation alike, starting one further each round so
            # that each follows every other equally often: on a CPU a pass inherits the allocator state (heap
            # size, pages already mapped) of the pass before it, and a fixed order would always hand one model
            # the heap that HF eager's large attention matrices just gave back.
            for impl in IMPLS[r % len(IMPLS):] + IMPLS[:r % len(IMPLS)]:
                if times[impl] is not None:
                    with amp():
                        times[impl].append(_time(runs[impl], device))
        ms = {impl: (statistics.median(t) * 1e3 if t else None) for impl, t in times.items()}
        best = {impl: (min(t) * 1e3 if t else None) for impl, t in times.items()}
        cell = {"mode": mode, "precision": prec, "batch": b, "ms": ms, "ms_best": best,
                "ms_all": {impl: [v * 1e3 for v in t] if t else None for impl, t in times.items()}}
        if ms["ours"]:
            for peer in ("hf_sdpa", "hf_eager"):
                cell[f"speedup_vs_{peer}"] = ms[peer] / ms["ours"] if ms[peer] else None
                cell[f"best_speedup_vs_{peer}"] = best[peer] / best["ours"] if best[peer] else None
                if times[peer] and len(times["ours"]) >= 3:
                    cell[f"paired_speedup_vs_{peer}"] = paired_speedup(times[peer], times["ours"])
            cell["clips_per_s"] = b / (best["ours"] / 1e3)
            flops = flops_per_clip(ours, train=backward) * b
            peak = peak_flops(device, prec)
            cell["mfu"] = flops / (best["ours"] / 1e3) / peak if peak else None
        if peak_mem:
            cell["peak_mem_gib"] = peak_mem
        cells.append(cell)
    return {
        "model": name, "clip": f"{ours.num_frames}x{ours.img_size}", "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": repeats,
        "parity_max_abs_diff_fp32": parity, "gflops_fwd_per_clip": flops_per_clip(ours) / 1e9, "cells": cells,
    }


def format_table(res: dict) -> str:
    """Markdown table of :func:`run_benchmark` figures."""
    cuda = res["device"].startswith("cuda")
    head = ["mode", "prec", "batch", "ours ms", "HF sdpa ms", "HF eager ms", "vs HF sdpa: best (median)",
            "vs HF eager: best (median)", "vs HF sdpa: paired [95 % CI]"]
    if cuda:
        head += ["clips/s", "peak GiB ours / sdpa / eager", "MFU"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, fmt="{:.0f}"):
        return "OOM" if v is None else fmt.format(v)

    for c in res["cells"]:
        ms = c["ms_best"]

        def ratios(peer):
            return f(c.get(f"best_speedup_vs_{peer}"), "{:.2f}x") + f(c.get(f"speedup_vs_{peer}"), " ({:.2f}x)")

        paired = c.get("paired_speedup_vs_hf_sdpa")
        row = [c["mode"], c["precision"], str(c["batch"]), f(ms["ours"]), f(ms["hf_sdpa"]), f(ms["hf_eager"]),
               ratios("hf_sdpa"), ratios("hf_eager"),
               (f"{paired['geomean']:.3f}x [{paired['ci95'][0]:.3f}, {paired['ci95'][1]:.3f}] {paired['verdict']}"
                if paired else "n/a (< 3 runs)")]
        if cuda:
            mem = c.get("peak_mem_gib", {})
            row += [f(c.get("clips_per_s"), "{:.1f}"),
                    " / ".join(f(mem.get(i), "{:.2f}") for i in IMPLS),
                    "unknown" if c.get("mfu") is None else f"{100 * c['mfu']:.1f} %"]
        rows.append("| " + " | ".join(row) + " |")
    title = (f"{res['model']} {res['clip']} on {res['device_name']} ({res['threads']} threads, torch {res['torch']}), "
             f"best of {res['repeats']} ms; max |ours - HF| fp32 = {res['parity_max_abs_diff_fp32']:.1e}; "
             f"speed-ups = HF ms / ours ms, of the best runs (of the medians); paired: geometric mean of the "
             f"per-round ratios, bootstrap 95 % interval")
    return title + "\n\n" + "\n".join(rows)


def cli_main(args) -> int:
    """``microact bench backbone``."""
    device = resolve_device(args.device)
    precisions = args.precision
    if precisions is None:
        from microact.engine.train import cpu_has_native_bf16

        precisions = ["fp32", "bf16"]
        if device.type == "cpu" and not cpu_has_native_bf16():
            precisions = ["fp32"]
            print("bf16 cells left out: this CPU has no hardware bf16 (AVX512-BF16 or AMX), so bf16 would be emulated "
                  "and tens of times slower; --precision fp32 bf16 measures them anyway")
    res = run_benchmark(args.model, list(args.batch), list(precisions), args.repeats, device)
    print(format_table(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"figures written to {args.json}")
    return 0
