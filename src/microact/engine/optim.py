"""Parameter groups, AdamW, the learning-rate schedule and the EMA of the weights.

Seed rules (SEED.md §6.3, mmaction's ``SwinOptimWrapperConstructor``: substring tests on full parameter names):

- a name containing ``backbone`` -> lr x ``optim.backbone_lr_mult`` (0.1);
- a name containing ``norm`` -> weight decay 0 (``optim.norm_no_decay``);
- biases, ``q_bias`` / ``v_bias`` and the patch embedding keep weight decay (faithful quirk).

``optim.layer_decay`` switches to the official VideoMAE recipe (VIDEOMAE.md §4.3): layer id ``i`` (0 = patch
embedding, ``j + 1`` = block ``j``, ``L + 1`` = the rest and the heads) gets ``lr x decay^(L + 1 - i)``
(``backbone_lr_mult`` is then not applied), and no weight decay goes to 1-D tensors and ``.bias``.

Schedule (SEED.md §6.2): ``lr = group_lr x warmup(global_it) x cosine(epoch)``, see :func:`lr_factor`.
"""
from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn

from microact.config import OptimConfig, SchedConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW parameter groups of ``model`` under the seed rules or the official layer decay.

    Every group carries ``lr`` (its own base lr), ``weight_decay``, ``base_lr`` (kept to apply the schedule
    factor) and ``name`` (a readable description). Frozen parameters are left out.
    """
    backbone = getattr(model, "backbone", None)
    layer_id = getattr(backbone, "layer_id", None)
    top = None  # the highest layer id (depth + 1): heads and the final norm, lr x 1
    if cfg.layer_decay is not None and layer_id is not None:
        top = max(layer_id(n) for n, _ in backbone.named_parameters())
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if top is not None:  # official VideoMAE recipe: scale decay^(depth + 1 - layer)
            layer = layer_id(name) if name.startswith("backbone.") else top
            lr_scale = cfg.layer_decay ** (top - layer)
            no_wd = p.ndim <= 1 or name.endswith(".bias")
            key = (f"layer{layer}", no_wd)
        else:  # seed: substring rules
            lr_scale = cfg.backbone_lr_mult if "backbone" in name else 1.0
            no_wd = cfg.norm_no_decay and "norm" in name
            key = ("backbone" if "backbone" in name else "head", no_wd)
        wd = 0.0 if no_wd else cfg.weight_decay
        g = groups.setdefault(key, {"params": [], "param_names": [], "lr": cfg.lr * lr_scale,
                                    "base_lr": cfg.lr * lr_scale, "weight_decay": wd,
                                    "name": f"{key[0]}{' no-wd' if no_wd else ''}"})
        g["params"].append(p)
        g["param_names"].append(name)
    return list(groups.values())


def describe_groups(groups: list[dict]) -> str:
    """One line per group: name, tensors, parameters, lr, weight decay."""
    lines = []
    for g in groups:
        n = sum(p.numel() for p in g["params"])
        lines.append(f"  {g['name']:<18} {len(g['params']):4d} tensors {n:>12,d} params  lr {g['lr']:.3g}  "
                     f"wd {g['weight_decay']:g}")
    return "\n".join(lines)


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (fused kernels on CUDA and CPU when ``optim.fused``; torch >= 2.4)."""
    groups = param_groups(model, cfg)
    kwargs = {}
    if cfg.fused and device.type in ("cuda", "cpu"):
        kwargs["fused"] = True
    opt_groups = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    return torch.optim.AdamW(opt_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, **kwargs)


def group_counts(groups: list[dict]) -> Counter:
    return Counter({g["name"]: len(g["params"]) for g in groups})


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------


def warmup_factor(global_it: float, iters_per_epoch: int, cfg: SchedConfig) -> float:
    """Linear warm-up ``start + (1 - start) * min(it / (warmup_epochs * iters_per_epoch), 1)``."""
    total = cfg.warmup_epochs * iters_per_epoch
    if total <= 0:
        return 1.0
    start = cfg.warmup_start_factor
    return start + (1.0 - start) * min(global_it / total, 1.0)


def cosine_factor(epoch: float, t_max: float, eta_min: float = 0.0) -> float:
    """``eta_min + (1 - eta_min) * (1 + cos(pi * epoch / t_max)) / 2``."""
    return eta_min + (1.0 - eta_min) * 0.5 * (1.0 + math.cos(math.pi * epoch / t_max))


def lr_factor(epoch: int, iter_in_epoch: int, iters_per_epoch: int, cfg: SchedConfig, epochs: int) -> float:
    """Multiplier of every group's base lr at optimiser step ``iter_in_epoch`` of 0-based ``epoch``.

    Seed (SEED.md §6.2): warm-up per iteration times a cosine that moves once per epoch over
    ``T_max = sched.cosine_t_max or epochs + 1``. ``sched.cosine_step="iter"`` feeds the cosine the fractional
    epoch instead. ``sched.eta_min`` is a fraction of each group's lr; mmengine's ``eta_min`` is an absolute lr,
    and the two agree for the seed's value 0.

    Args:
        epoch: 0-based epoch.
        iter_in_epoch: optimiser steps already taken in this epoch.
        iters_per_epoch: optimiser steps per epoch.
        cfg: the schedule section.
        epochs: the run's epochs (for the default ``T_max``).
    """
    global_it = epoch * iters_per_epoch + iter_in_epoch
    t_max = cfg.cosine_t_max if cfg.cosine_t_max is not None else epochs + 1
    e = epoch + iter_in_epoch / max(iters_per_epoch, 1) if cfg.cosine_step == "iter" else epoch
    return warmup_factor(global_it, iters_per_epoch, cfg) * cosine_factor(e, t_max, cfg.eta_min)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor


# --------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of the model's floating-point state (``train.ema_decay``)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.is_floating_point():
                s.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)
