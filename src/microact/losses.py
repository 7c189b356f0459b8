"""The seed's losses (SEED.md §3): cross-entropy plus soft macro/micro F1, combined over the assisting heads.

Names and call conventions follow the authors' mmaction2 losses so their configs translate one to one
(``build_loss`` name in brackets):

- :class:`CrossEntropyLoss` ("ce"): ``loss(logits [N, K], labels [N])``
- :class:`CrossEntropyF1Loss` ("cef1"): ``loss(logits, labels)``
- :class:`CrossEntropyF1LossDouble` ("cef1_double"): ``loss((lead, frame [N, T', K]), labels)``
- :class:`CrossEntropyF1LossFineACoarseDouble` ("cef1_fine_coarse_double"):
  ``loss(((lead, frame), (coarse, coarse_frame)), labels)`` with fine labels; coarse targets are derived.

Every loss also accepts a :class:`microact.models.recognizer.RecognizerOutput` in place of the tuple (it calls
``as_seed_tuple()``), computes in at least float32 (half-precision logits are upcast, so autocast cannot make the
F1 ratios or the softmax lose precision), and offers ``terms(...)`` returning the unweighted terms by name.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from microact.errors import MicroactError
from microact.ma52 import NUM_COARSE
from microact.taxonomy import MA52, Taxonomy

F1Sync = Literal["local", "global"]

LOSS_NAMES = ("ce", "cef1", "cef1_double", "cef1_fine_coarse_double")


def _as_tuple(cls_score):
    """Accept a RecognizerOutput (duck-typed, to keep losses free of model imports) or the seed's nested tuple."""
    return cls_score.as_seed_tuple() if hasattr(cls_score, "as_seed_tuple") else cls_score


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) become float32; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, what: str) -> None:
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"{what}: expected logits [N, {num_classes}], got shape {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"{what}: expected labels [{logits.shape[0]}], got shape {tuple(labels.shape)}")


def _global_sum(stats: torch.Tensor) -> torch.Tensor:
    """Sum ``stats`` over all processes; the result's gradient flows through the local part only.

    Every process computes the same global loss but back-propagates only through its own rows, and DDP/FSDP then
    *average* the gradients over the W processes. The local part is therefore weighted by W in the backward pass,
    so that the averaged gradient equals the full-batch gradient of the global loss (without it the soft-F1 terms
    would train with 1/W of their weight relative to the per-process-mean cross-entropy).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    world = dist.get_world_size()
    total = stats.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total + (stats - stats.detach()) * world  # value: the global sum; gradient: W x the local one


class CombinedF1Loss(nn.Module):
    """Soft F1 loss ``L_F1 = (1 - macro F1) + (1 - micro F1)`` on softmax probabilities (SEED.md §3.1).

    Per class k, with P = softmax(Z) and Y = one-hot(y): ``tp_k = sum_i P_ik Y_ik``, ``fp_k = sum_i P_ik (1 - Y_ik)``,
    ``fn_k = sum_i Y_ik (1 - P_ik)``; ``prec_k = tp_k / (tp_k + fp_k + eps)``, ``rec_k = tp_k / (tp_k + fn_k + eps)``,
    ``F1_k = 2 prec_k rec_k / (prec_k + rec_k + eps)``. The macro mean runs over **all** K classes, so a class absent
    from the batch contributes ``F1_k = 0`` and no gradient (faithful). Micro F1 uses the summed tp/fp/fn.

    Args:
        num_classes: K.
        eps: the seed's 1e-7.
        sync: ``"local"`` (faithful: statistics of this process's batch) or ``"global"`` (tp/fp/fn summed over
            all processes before the ratios, when torch.distributed is initialised; SEED.md §12 row 7).
    """

    def __init__(self, num_classes: int, eps: float = 1e-7, sync: F1Sync = "local"):
        super().__init__()
        if sync not in ("local", "global"):
            raise MicroactError(f"loss.f1_sync: {sync!r} is not valid; choose 'local' or 'global'")
        self.num_classes = num_classes
        self.eps = eps
        self.sync = sync

    def statistics(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Soft ``[3, K]`` statistics (tp, fp, fn) of this batch, float32."""
        probs = torch.softmax(_upcast(logits), dim=1)
        onehot = F.one_hot(labels.long(), self.num_classes).to(probs.dtype)
        tp = (probs * onehot).sum(dim=0)
        fp = (probs * (1 - onehot)).sum(dim=0)
        fn = (onehot * (1 - probs)).sum(dim=0)
        return torch.stack([tp, fp, fn])  # [3, K]

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = self.terms(logits, labels)
        return t["f1_macro"] + t["f1_micro"]

    def terms(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"f1_macro": 1 - macro F1, "f1_micro": 1 - micro F1}``."""
        logits = _as_tuple(logits)
        _check_logits(logits, labels, self.num_classes, type(self).__name__)
        stats = self.statistics(logits, labels)
        if self.sync == "global":
            stats = _global_sum(stats)
        tp, fp, fn = stats
        eps = self.eps
        precision = tp / (tp + fp + eps)
        recall = tp / (tp + fn + eps)
        f1 = 2 * precision * recall / (precision + recall + eps)
        macro = 1 - f1.mean()
        tp_all, fp_all, fn_all = tp.sum(), fp.sum(), fn.sum()
        micro_p = tp_all / (tp_all + fp_all + eps)
        micro_r = tp_all / (tp_all + fn_all + eps)
        micro = 1 - 2 * micro_p * micro_r / (micro_p + micro_r + eps)
        return {"f1_macro": macro, "f1_micro": micro}


class CrossEntropyLoss(nn.Module):
    """Mean-reduced softmax cross-entropy in float32 (the TimeSformer rows' loss, SEED.md §3.4).

    Args:
        num_classes: K (checked against the logits).
        class_weights: optional per-class weights (length K); the mean is then weighted (PyTorch semantics).
        label_smoothing: PyTorch label smoothing (0 in the seed).
    """

    def __init__(self, num_classes: int, class_weights: Optional[Sequence[float]] = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        if class_weights is not None:
            if len(class_weights) != num_classes:
                raise MicroactError(f"loss.class_weights: expected {num_classes} values, got {len(class_weights)}")
            self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32),
                                 persistent=False)
        else:
            self.class_weights = None

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = _as_tuple(logits)
        _check_logits(logits, labels, self.num_classes, type(self).__name__)
        return F.cross_entropy(_upcast(logits), labels.long(), weight=self._weights(logits),
                               label_smoothing=self.label_smoothing)

    def _weights(self, logits: torch.Tensor) -> Optional[torch.Tensor]:
        w = self.class_weights
        return None if w is None else w.to(device=logits.device, dtype=_upcast(logits).dtype)

    def terms(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ce": self(logits, labels)}


class CrossEntropyF1Loss(nn.Module):
    """``CEF1_K(Z, y) = CE(Z, y) + L_F1(Z, y)`` (SEED.md §3.2).

    Args:
        num_classes: K.
        class_weights, label_smoothing: options of the CE term (seed: none, 0).
        f1_sync: ``"local"`` or ``"global"`` soft-F1 statistics (see :class:`CombinedF1Loss`).
        eps: soft-F1 epsilon.
    """

    def __init__(self, num_classes: int, class_weights: Optional[Sequence[float]] = None,
                 label_smoothing: float = 0.0, f1_sync: F1Sync = "local", eps: float = 1e-7):
        super().__init__()
        self.num_classes = num_classes
        self.ce = CrossEntropyLoss(num_classes, class_weights, label_smoothing)
        self.f1 = CombinedF1Loss(num_classes, eps, f1_sync)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = _as_tuple(logits)
        return self.ce(logits, labels) + self.f1(logits, labels)

    def terms(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = _as_tuple(logits)
        return {"cef1": self(logits, labels)}


class CrossEntropyF1LossDouble(nn.Module):
    """Lead head + one frame-level assisting head (SEED.md §3.3).

    ``L = CEF1_K(lead, y) + frame_weight * CEF1_K(frame rows, y repeated T' times)``, where the frame logits
    ``[N, T', K]`` become ``N*T'`` sample-major rows (n0t0 ... n0t7, n1t0, ...), so their soft-F1 statistics run
    over ``N*T'`` rows.

    Args:
        num_classes: K.
        frame_weight: weight of the frame term (0.5).
        class_weights, label_smoothing, f1_sync, eps: see :class:`CrossEntropyF1Loss`.
    """

    def __init__(self, num_classes: int, frame_weight: float = 0.5, class_weights: Optional[Sequence[float]] = None,
                 label_smoothing: float = 0.0, f1_sync: F1Sync = "local", eps: float = 1e-7):
        super().__init__()
        self.num_classes = num_classes
        self.frame_weight = frame_weight
        self.cef1 = CrossEntropyF1Loss(num_classes, class_weights, label_smoothing, f1_sync, eps)

    def terms(self, cls_score, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted terms ``{"lead": ..., "frame": ...}``."""
        lead, frame = _as_tuple(cls_score)
        if frame.dim() != 3 or frame.shape[0] != lead.shape[0]:
            raise ValueError(f"{type(self).__name__}: expected frame logits [N, T', K], got {tuple(frame.shape)}")
        n, t, k = frame.shape
        frame_rows = frame.reshape(n * t, k)  # [N, T', K] -> [N*T', K], sample-major
        frame_labels = labels.repeat_interleave(t)  # [N] -> [N*T'], matching the sample-major rows
        return {"lead": self.cef1(lead, labels), "frame": self.cef1(frame_rows, frame_labels)}

    def forward(self, cls_score, labels: torch.Tensor) -> torch.Tensor:
        t = self.terms(cls_score, labels)
        return t["lead"] + self.frame_weight * t["frame"]


class CrossEntropyF1LossFineACoarseDouble(nn.Module):
    """The best model's loss (SEED.md §3.3): fine lead + fine frame + coarse lead + coarse frame.

    ``L = L_double^52((lead, frame), y) + coarse_weight * L_double^7((coarse, coarse_frame), g(y))`` with term weights
    1, 0.5, 0.5, 0.25 by default. Coarse targets ``g(y)`` come from ``taxonomy.coarse_of`` (MA-52's body parts by
    default), so labels are fine ids of that taxonomy.

    Args:
        num_fine: fine classes (52).
        coarse_weight: weight of the coarse pair (0.5).
        frame_weight: weight of each frame term inside a pair (0.5).
        num_coarse: coarse classes (7; must equal the taxonomy's group count).
        class_weights: optional CE weights of the **fine** terms (length ``num_fine``); coarse terms are unweighted.
        label_smoothing, f1_sync, eps: shared by all four terms.
        taxonomy: the classes and their groups (``None``: MA-52); it must have a coarse level.
    """

    def __init__(self, num_fine: int = 52, coarse_weight: float = 0.5, frame_weight: float = 0.5,
                 num_coarse: int = NUM_COARSE, class_weights: Optional[Sequence[float]] = None,
                 label_smoothing: float = 0.0, f1_sync: F1Sync = "local", eps: float = 1e-7,
                 taxonomy: Optional[Taxonomy] = None):
        super().__init__()
        taxonomy = MA52 if taxonomy is None else taxonomy
        if not taxonomy.has_coarse:
            raise MicroactError(f"loss cef1_fine_coarse_double needs groups (a coarse level), but the taxonomy is "
                                f"flat ({taxonomy.describe()}): use a loss and model without coarse heads "
                                "(model.overrides={use_coarse: false})")
        if (num_fine, num_coarse) != (taxonomy.num_fine, taxonomy.num_coarse):
            raise MicroactError(f"loss cef1_fine_coarse_double: {num_fine} classes in {num_coarse} groups, but the "
                                f"taxonomy has {taxonomy.num_fine} in {taxonomy.num_coarse}")
        self.taxonomy = taxonomy
        self.num_fine = num_fine
        self.coarse_weight = coarse_weight
        self.fine = CrossEntropyF1LossDouble(num_fine, frame_weight, class_weights, label_smoothing, f1_sync, eps)
        self.coarse = CrossEntropyF1LossDouble(num_coarse, frame_weight, None, label_smoothing, f1_sync, eps)

    def terms(self, cls_score, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted terms ``{"lead", "frame", "coarse", "coarse_frame"}``."""
        fine_pair, coarse_pair = _as_tuple(cls_score)
        fine = self.fine.terms(fine_pair, labels)
        coarse = self.coarse.terms(coarse_pair, self.taxonomy.coarse_of(labels))
        return {"lead": fine["lead"], "frame": fine["frame"], "coarse": coarse["lead"],
                "coarse_frame": coarse["frame"]}

    def forward(self, cls_score, labels: torch.Tensor) -> torch.Tensor:
        t = self.terms(cls_score, labels)
        fw = self.fine.frame_weight
        return (t["lead"] + fw * t["frame"]) + self.coarse_weight * (t["coarse"] + self.coarse.frame_weight
                                                                      * t["coarse_frame"])


def build_loss(name: str, num_classes: int, class_weights: Optional[Sequence[float]] = None,
               label_smoothing: float = 0.0, f1_sync: F1Sync = "local",
               taxonomy: Optional[Taxonomy] = None) -> nn.Module:
    """Build a loss by its config name (``loss.name``; resolve ``"auto"`` with ``presets.loss_for`` first).

    Args:
        name: ``"ce"``, ``"cef1"``, ``"cef1_double"`` or ``"cef1_fine_coarse_double"``.
        num_classes: fine classes K.
        class_weights: optional CE weights (fine terms only).
        label_smoothing: CE label smoothing.
        f1_sync: ``"local"`` / ``"global"`` soft-F1 statistics (ignored by ``"ce"``).
        taxonomy: the classes and groups of ``"cef1_fine_coarse_double"``'s coarse terms (``None``: MA-52).

    Raises:
        MicroactError: unknown name (the message lists the valid ones).
    """
    if name == "ce":
        return CrossEntropyLoss(num_classes, class_weights, label_smoothing)
    if name == "cef1":
        return CrossEntropyF1Loss(num_classes, class_weights, label_smoothing, f1_sync)
    if name == "cef1_double":
        return CrossEntropyF1LossDouble(num_classes, 0.5, class_weights, label_smoothing, f1_sync)
    if name == "cef1_fine_coarse_double":
        groups = taxonomy.num_coarse if taxonomy is not None else NUM_COARSE
        return CrossEntropyF1LossFineACoarseDouble(num_classes, 0.5, 0.5, groups, class_weights, label_smoothing,
                                                   f1_sync, taxonomy=taxonomy)
    raise MicroactError(f"loss.name: unknown loss {name!r}; valid names: {', '.join(LOSS_NAMES)} (or 'auto')")
