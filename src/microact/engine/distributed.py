"""Process-group plumbing for one process or ``torchrun`` (one node or several).

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them the
run is a single process and nothing here touches ``torch.distributed``. NCCL is used on CUDA, gloo on CPU.
Only rank 0 prints (:func:`log`); the other ranks only report warnings, prefixed with their rank.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from microact.errors import MicroactError


@dataclass
class DistInfo:
    """Where this process sits in the run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the torchrun environment (0, 0, 1 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def resolve_device(name: str, local_rank: int = 0, option: str = "train.device") -> torch.device:
    """``train.device`` -> a device: ``auto`` picks CUDA when present; under torchrun CUDA uses ``LOCAL_RANK``.

    ``option`` is how errors name the setting (``--device`` on a command line).

    Raises:
        MicroactError: CUDA asked for but not available.
    """
    setting = f"{option} {name}" if option.startswith("--") else f"{option}={name}"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MicroactError(f"{setting}: CUDA is not available on this machine (use cpu or auto)")
        if name == "cuda":
            return torch.device("cuda", local_rank)
    try:
        return torch.device(name)
    except RuntimeError:
        raise MicroactError(f"{setting}: not a device; use auto, cpu, cuda or cuda:N") from None


def init(device_name: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun and pick this process's device."""
    rank, local_rank, world = env_world()
    device = resolve_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    elif device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(rank, local_rank, world, device)


def is_main() -> bool:
    """True on rank 0 (or without a process group)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def _all_reduce(x: torch.Tensor, op) -> torch.Tensor:
    """``op`` over ranks on a detached copy (``x`` itself without a process group)."""
    if not _active():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=op)
    return y


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks."""
    return _all_reduce(x, dist.ReduceOp.SUM) / (dist.get_world_size() if _active() else 1)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    return _all_reduce(x, dist.ReduceOp.SUM)


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    return _all_reduce(x, dist.ReduceOp.MAX)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def log(*parts, file=None) -> None:
    """Print on rank 0 only."""
    if is_main():
        print(*parts, file=file or sys.stdout, flush=True)


def warn(message: str) -> None:
    """A warning every rank reports (prefixed by its rank in multi-process runs)."""
    prefix = f"[rank {dist.get_rank()}] " if _active() else ""
    print(f"{prefix}warning: {message}", file=sys.stderr, flush=True)
