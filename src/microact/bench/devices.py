"""What the benchmarks need to know about the device they run on: its peak FLOP/s, and the ``--device`` choice."""
from __future__ import annotations

from typing import Optional

import torch

from microact.errors import MicroactError

# Dense (no sparsity) peak FLOP/s by device-name substring and precision, vendor data sheets, SXM parts unless
# named; fp32 means plain fp32 matmuls (PyTorch keeps TF32 off for matmuls by default). The first matching
# substring wins, so "H100 PCIe" comes before "H100".
PEAK_FLOPS = (
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12}),
)


def peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """Dense peak FLOP/s of a known CUDA GPU for ``precision``; None when unknown (CPU, other GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_FLOPS:
        if key in name:
            return table.get(precision)
    return None


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else as given (checked)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MicroactError(f"--device {device}: CUDA is not available on this machine")
    return dev
