"""Where a training step's time goes: ``microact bench train --profile DIR``.

Runs a few steps under ``torch.profiler`` and sums the time by kind of work -- matmuls, attention, normalisation,
element-wise and reduction kernels, the optimiser, memory copies, compiled (Triton) fusions -- from the device's
kernels on a GPU, or from the operators' self time on the CPU. On a GPU it also reports how much of the wall time
the device was busy at all: the rest is the host failing to keep it fed (launch overhead, Python, syncs), which
no kernel tuning recovers. A Chrome trace (``trace.json.gz``, open in Perfetto or chrome://tracing) is written too.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable, Optional

import torch

# First match wins: attention kernels also mention "cutlass"/"gemm", and must count as attention.
CATEGORIES: tuple[tuple[str, str], ...] = (
    # cuDNN's attention backward also runs helper kernels named after their work (dot(dO, O), dQ conversion)
    ("attention", r"flash|fmha|attention|sdpa|dot_do_o|convert_dq"),
    ("matmul", r"gemm|xmma|cutlass|nvjet|wgmma|s16816|cublas|aten::(mm|addmm|bmm|linear|matmul)$"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("normalization", r"layer_norm|layernorm|gammabeta"),
    ("memory copies", r"memcpy|memset|aten::(copy_|contiguous|clone|cat|stack)$|cat_|copy_kernel|catarray"),
    ("compiled fusions", r"triton"),
    ("reductions", r"reduce|aten::(sum|mean|amax|max|min|norm|softmax|_softmax|_log_softmax)|softmax"),
    ("elementwise", r"elementwise|aten::(add|add_|mul|mul_|sub|div|gelu|gelu_backward|fill_|zero_|where|sigmoid|"
                    r"neg|exp|pow|sqrt|rsqrt|clamp|lerp_|addcmul_|addcdiv_|threshold_backward)$"),
)
_COMPILED = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in CATEGORIES]


def categorize(name: str) -> str:
    """The kind of work a kernel or operator name stands for (one of :data:`CATEGORIES`, or ``"other"``)."""
    for category, pattern in _COMPILED:
        if pattern.search(name):
            return category
    return "other"


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``[start, end]`` intervals (overlapping kernels on several streams count once)."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def profile_steps(step: Callable[[], torch.Tensor], device: torch.device, steps: int = 3,
                  out_dir: Optional[str | os.PathLike] = None, top: int = 12) -> dict:
    """Profile ``steps`` calls of ``step`` (already warmed up) and summarise them.

    Returns:
        ``{"steps", "wall_ms_per_step", "source", "by_category": {category: ms per step}, "top": [{"name",
        "category", "ms_per_step", "calls_per_step"}], "device_busy_fraction" (GPU only), "trace" (path or None)}``.
    """
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    if on_gpu:
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if on_gpu:
            torch.cuda.synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6

    totals: dict[str, float] = {}
    calls: dict[str, int] = {}
    if on_gpu:
        # Kernels and copies as the device ran them: their own durations, nothing nested.
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        for e in kernels:
            totals[e.name] = totals.get(e.name, 0.0) + e.time_range.elapsed_us()
            calls[e.name] = calls.get(e.name, 0) + 1
        busy = _union_us([(e.time_range.start, e.time_range.end) for e in kernels])
        source = "CUDA kernels"
    else:
        for avg in prof.key_averages():  # self time: an operator's own work, without the operators it calls
            if avg.self_cpu_time_total > 0:
                totals[avg.key] = avg.self_cpu_time_total
                calls[avg.key] = avg.count
        busy = None
        source = "CPU operators (self time)"

    by_category: dict[str, float] = {}
    for name, us in totals.items():
        category = categorize(name)
        by_category[category] = by_category.get(category, 0.0) + us / 1e3 / steps
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    result = {
        "steps": steps, "wall_ms_per_step": wall_us / 1e3 / steps, "source": source,
        "by_category": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
        "top": [{"name": name, "category": categorize(name), "ms_per_step": us / 1e3 / steps,
                 "calls_per_step": calls[name] / steps} for name, us in ranked],
        "device_busy_fraction": None if busy is None else min(1.0, busy / wall_us),
        "trace": None,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        trace = out / "trace.json.gz"
        prof.export_chrome_trace(str(trace))  # the profiler gzips a path ending in .gz
        result["trace"] = str(trace)
    return result


def format_profile(p: dict) -> str:
    """Readable summary of :func:`profile_steps`."""
    total = sum(p["by_category"].values())
    lines = [f"profile of {p['steps']} steps: {p['wall_ms_per_step']:.1f} ms per step (wall), "
             f"{total:.1f} ms per step in {p['source']}"]
    if p["device_busy_fraction"] is not None:
        lines.append(f"  the GPU ran kernels {100 * p['device_busy_fraction']:.0f} % of the wall time; the rest it "
                     "waited for the host (launches, Python, synchronisation)")
    for category, ms in p["by_category"].items():
        lines.append(f"  {category:<17}{ms:9.2f} ms/step  {100 * ms / total:5.1f} %")
    lines.append("  largest:")
    for t in p["top"]:
        name = t["name"] if len(t["name"]) <= 90 else t["name"][:87] + "..."
        lines.append(f"    {t['ms_per_step']:8.2f} ms/step  x{t['calls_per_step']:<6.0f} [{t['category']}] {name}")
    if p["trace"]:
        lines.append(f"  trace: {p['trace']} (Perfetto / chrome://tracing)")
    return "\n".join(lines)
