"""Fully sharded data parallel training (``train.parallel=fsdp`` under torchrun), built on PyTorch's FSDP2.

With DDP every process holds the whole model, its gradients and both AdamW moments: 16 bytes per parameter in
fp32, about 10 GB for ViT-H before a single activation. FSDP splits those across the processes and gathers each
block's weights only while that block runs, so per-process static memory falls roughly by the process count.

What is sharded: every transformer block of every backbone stream (the units that are gathered one at a time),
then the recognizer as a whole (patch embedding, norms, heads). Parameters stay fp32 and are gathered in fp32;
``train.precision`` autocast then casts per operation exactly as without FSDP, so the numbers match a DDP run up
to summation order (tests/test_distributed.py).

Everything that leaves the process is full and unsharded: checkpoints, ``model_*.safetensors``, the EMA weights
and the optimiser state (keyed by parameter name) are gathered first, so a run's files look the same whichever
way it was trained. Resuming needs the same ``train.parallel`` and process count (checked).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["shard_model", "local_numel", "full_state_dict", "load_full_state_dict", "full_optimizer_state",
           "load_full_optimizer_state", "gather_full", "shard_like"]


def shard_model(model: nn.Module) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to each ViT block, then to ``model``; returns ``model`` (changed in place).

    Must run after ``model.to(device)`` and before the optimizer is built (the optimizer must see the sharded
    parameters). Needs an initialised process group.
    """
    import warnings

    from torch.distributed.fsdp import fully_shard

    from microact.models.videomae import VideoMAE

    # Newer torch warns once per process that the wrapped model returns views (the frame heads' [B, T', K] reshapes):
    # an in-place op on one would skip FSDP's pre-backward hook. Nothing modifies the outputs in place (the losses
    # are out of place; test_distributed compares FSDP with one process), so in a training log it only alarms.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor",
                            category=UserWarning)

    for module in model.modules():
        if isinstance(module, VideoMAE):
            for block in module.blocks:
                fully_shard(block)
    fully_shard(model)
    return model


def local_numel(model: nn.Module) -> int:
    """Parameter elements stored in this process (its shards under FSDP, everything otherwise)."""
    from torch.distributed.tensor import DTensor

    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights as CPU tensors on every rank (a collective: all ranks must call it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_options(cpu_offload=False))
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load unsharded weights (every rank passes the same full dict) into the sharded model; strict."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    missing, unexpected = set_model_state_dict(model, state, options=_options(strict=True))
    if missing or unexpected:  # strict=True raises first in current torch; kept for older behaviour
        raise RuntimeError(f"missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}")


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser state, unsharded and keyed by parameter name (a collective; full on every rank)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=False))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load what :func:`full_optimizer_state` returned; every rank passes the same full state."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())


def gather_full(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unshard a dict of (possibly DTensor) tensors into plain CPU tensors (a collective for DTensors)."""
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().to("cpu") for k, v in tensors.items()}


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's piece of ``full`` laid out as the (possibly DTensor) ``like``; plain tensors pass through."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor):
        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full
