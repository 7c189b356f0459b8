"""Recognizer = backbone + heads, with a typed output and the seed's inference rule (SEED.md §2, §4).

``Recognizer(backbone, head, frame_head=None, coarse_frame_head=None)`` composes the pieces of
:mod:`microact.models.heads`. Parameter names (``state_dict`` keys):

- ``backbone.*`` -- the seed's ``backbone.*`` (see videomae.py);
- ``cls_head.fc_cls.weight`` [52, 768] -- seed ``cls_head.fc_cls.fc.weight``;
- ``cls_head.fc_coarse_cls.weight`` [7, 768] -- seed ``cls_head.fc_coarse_cls.fc.weight``;
- ``fc_frame.{se.fc.0, se.fc.2, fc}`` ([48, 768], [768, 48], [52, 768] + bias) -- seed ``cls_head.fc_frame.*``;
- ``fc_coarse_cls_frame.*`` (same with 7 classes) -- seed ``cls_head.fc_coarse_cls_frame.*``.

Every backbone parameter name starts with ``backbone.`` (the optimiser's lr x0.1 rule, SEED.md §6.3) and no head
name contains ``norm`` or ``backbone``.

Inference (SEED.md §4): only the fine lead logits are used; per-clip softmax probabilities are averaged over a
video's clips; the coarse prediction is g(argmax fine). :func:`coarse_scores` also offers the "sum_probs" and
"coarse_head" rules of SEED.md §12 row 12.

The classes are a :class:`~microact.taxonomy.Taxonomy` (``Recognizer.taxonomy``; MA-52 by default): the coarse
heads have one output per group and their targets come from ``taxonomy.coarse_of``. A flat taxonomy (no groups)
takes no coarse heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn

from microact.errors import MicroactError
from microact.ma52 import NUM_COARSE, NUM_FINE
from microact.models.heads import FrameLevelHead, PooledHead, TSNHead
from microact.taxonomy import MA52, Taxonomy

CoarseRule = Literal["map_top1", "sum_probs", "coarse_head"]
Average = Literal["prob", "logit"]


@dataclass
class RecognizerOutput:
    """Logits of every head of a :class:`Recognizer`.

    Attributes:
        fine: lead fine logits ``[B, K]`` (the only output used for prediction).
        fine_frame: frame-level fine logits ``[B, T', K]`` or None.
        coarse: coarse lead logits ``[B, G]`` (G groups: MA-52's 7 body parts) or None.
        coarse_frame: frame-level coarse logits ``[B, T', G]`` or None.
    """

    fine: torch.Tensor
    fine_frame: Optional[torch.Tensor] = None
    coarse: Optional[torch.Tensor] = None
    coarse_frame: Optional[torch.Tensor] = None

    def as_seed_tuple(self):
        """The nested structure the seed's losses take.

        Returns:
            ``fine`` (lead only), ``(fine, fine_frame)`` (one assisting head) or
            ``((fine, fine_frame), (coarse, coarse_frame))`` (fine + coarse assisting heads).
        """
        if self.fine_frame is None:
            if self.coarse is not None:
                raise ValueError("RecognizerOutput: a coarse head without a frame head has no seed loss")
            return self.fine
        if self.coarse is None:
            return self.fine, self.fine_frame
        if self.coarse_frame is None:
            raise ValueError("RecognizerOutput: coarse lead logits without coarse frame logits have no seed loss")
        return (self.fine, self.fine_frame), (self.coarse, self.coarse_frame)


class TwoStreamBackbone(nn.Module):
    """RGB + optical-flow backbones whose maps are concatenated on channels (SEED.md §2.9).

    Input ``[B, 6, T, H, W]`` (channels 0-2 RGB, 3-5 flow, each normalised with its own statistics); output
    ``[B, 2C, T', H', W']``. With the faithful channel-group frame head, pseudo-frames 0..T'/2-1 then see only RGB
    channels and the others only flow channels.

    Args:
        rgb: backbone for the RGB clip (``output="map"``).
        flow: backbone for the flow clip; None shares ``rgb``'s weights ("RGB+OF (weight sharing)").
    """

    output = "map"

    def __init__(self, rgb: nn.Module, flow: Optional[nn.Module] = None):
        super().__init__()
        for name, m in (("rgb", rgb), ("flow", flow)):
            if m is not None and getattr(m, "output", "map") != "map":
                raise MicroactError(f"two-stream {name} backbone must be built with output='map'")
        self.rgb = rgb
        self.flow = flow
        self.embed_dim = 2 * rgb.embed_dim
        self.grid = rgb.grid
        self.num_frames = rgb.num_frames
        self.img_size = rgb.img_size
        self.in_chans = 6

    @property
    def shared(self) -> bool:
        return self.flow is None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in (self.rgb, self.flow):
            if m is not None:
                m.set_grad_checkpointing(enable)

    def layer_id(self, name: str) -> int:
        """Layer index for layer-wise lr decay: that of the stream's own backbone."""
        if name.startswith("backbone."):
            name = name[len("backbone."):]
        stream, _, rest = name.partition(".")
        return getattr(self, stream if stream in ("rgb", "flow") else "rgb").layer_id(rest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 6:
            raise ValueError(f"two-stream input: expected [B, 6, T, H, W] (RGB then flow), got {list(x.shape)}")
        flow_net = self.rgb if self.flow is None else self.flow
        maps = [self.rgb(x[:, :3]), flow_net(x[:, 3:])]  # 2 x [B, C, T', H', W']
        return torch.cat(maps, dim=1)  # -> [B, 2C, T', H', W']


InputMode = Literal["rgb", "rgb_diff"]
RGB_DIFF_SCALE = 4.0


def rgb_difference(x: torch.Tensor, scale: float = RGB_DIFF_SCALE) -> torch.Tensor:
    """Differences of consecutive frames ``[B, C, T, H, W] -> [B, C, T, H, W]`` (TSN's RGB-diff modality).

    Slot t holds ``x[t+1] - x[t]``; the last slot repeats the last difference so T (and the tubelet pairing)
    is unchanged. Static appearance cancels and only motion remains, which is what a small model trained from
    scratch on little data needs (the synthetic demo). Differences of normalised frames are sparse and small;
    the fixed ``scale`` keeps their patch embeddings on the scale of the position table.
    """
    if not x.is_floating_point():  # uint8 differences would wrap around (and the float scale hides the dtype)
        raise MicroactError(f"rgb_diff input: expected a normalised float tensor, got {x.dtype} (clips travel as "
                            "uint8; normalise them on the device first)")
    d = x[:, :, 1:] - x[:, :, :-1]  # [B, C, T-1, H, W]
    return torch.cat([d, d[:, :, -1:]], dim=2) * scale


class Recognizer(nn.Module):
    """A backbone and the seed's heads.

    Args:
        backbone: a VideoMAE backbone (``output="map"`` for TSN/I3D and frame heads, ``"pooled"`` for
            :class:`PooledHead`) or a :class:`TwoStreamBackbone`.
        head: :class:`TSNHead` / :class:`I3DHead` or :class:`PooledHead` (module name ``cls_head``).
        frame_head: fine :class:`FrameLevelHead` (``fc_frame``) or None.
        coarse_frame_head: coarse :class:`FrameLevelHead` (``fc_coarse_cls_frame``) or None; needs the head's
            coarse classifier and the fine frame head.
        input_mode: ``"rgb"`` (the seed) or ``"rgb_diff"``: the backbone sees differences of consecutive
            normalised frames (TSN's RGB-difference modality), see :func:`rgb_difference`.
        taxonomy: the classes (``None``: MA-52 for 52 classes, else unknown, which allows no coarse heads).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, frame_head: Optional[FrameLevelHead] = None,
                 coarse_frame_head: Optional[FrameLevelHead] = None, input_mode: InputMode = "rgb",
                 taxonomy: Optional[Taxonomy] = None):
        super().__init__()
        if input_mode not in ("rgb", "rgb_diff"):
            raise MicroactError(f"input_mode {input_mode!r} is not valid; choose 'rgb' or 'rgb_diff'")
        self.input_mode = input_mode
        kind = getattr(head, "input_kind", "map")
        output = getattr(backbone, "output", None)
        if output is not None and output != kind:
            raise MicroactError(f"{type(head).__name__} needs a backbone built with output={kind!r}, "
                                f"got output={output!r}")
        if kind == "pooled" and (frame_head is not None or coarse_frame_head is not None):
            raise MicroactError("frame-level assisting heads need the token map: use a TSN/I3D head, not the "
                                "TimeSformer (pooled) head")
        has_coarse_lead = getattr(head, "fc_coarse_cls", None) is not None
        if (coarse_frame_head is not None) != has_coarse_lead or (has_coarse_lead and frame_head is None):
            raise MicroactError("the coarse assisting heads come as a pair (fc_coarse_cls + fc_coarse_cls_frame) "
                                "and need the fine frame head (use_frame=True)")
        num_fine = getattr(head, "num_classes", None)
        if taxonomy is None and num_fine == NUM_FINE:
            taxonomy = MA52
        if taxonomy is not None and num_fine is not None and taxonomy.num_fine != num_fine:
            raise MicroactError(f"the lead head has {num_fine} classes but the taxonomy lists {taxonomy.num_fine}")
        if coarse_frame_head is not None:
            if taxonomy is None or not taxonomy.has_coarse:
                raise MicroactError(flat_coarse_message(taxonomy))
            if coarse_frame_head.num_classes != taxonomy.num_coarse:
                raise MicroactError(f"the coarse heads have {coarse_frame_head.num_classes} outputs but the taxonomy "
                                    f"has {taxonomy.num_coarse} groups")
        self.taxonomy = taxonomy
        self.backbone = backbone
        self.cls_head = head
        self.fc_frame = frame_head
        self.fc_coarse_cls_frame = coarse_frame_head

    @property
    def num_classes(self) -> int:
        return self.cls_head.num_classes

    @property
    def has_frame(self) -> bool:
        return self.fc_frame is not None

    @property
    def has_coarse(self) -> bool:
        return self.fc_coarse_cls_frame is not None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> RecognizerOutput:
        """Run backbone and heads.

        Args:
            x: normalised clips ``[B, 3, T, H, W]`` (``[B, 6, T, H, W]`` for two-stream).
            labels: fine ids ``[B]``; only the cosine-margin layers in ``margin_mode="target"`` read them.

        Returns:
            :class:`RecognizerOutput` with the logits of every head.
        """
        if self.input_mode == "rgb_diff":
            x = rgb_difference(x)
        feat = self.backbone(x)  # [B, C, T', H', W'] or [B, C]
        coarse_labels = self.taxonomy.coarse_of(labels) if labels is not None and self.has_coarse else None
        if isinstance(self.cls_head, TSNHead):
            fine, coarse = self.cls_head(feat, labels, coarse_labels)
        else:
            fine, coarse = self.cls_head(feat, labels)
        fine_frame = self.fc_frame(feat) if self.fc_frame is not None else None
        coarse_frame = self.fc_coarse_cls_frame(feat) if self.fc_coarse_cls_frame is not None else None
        return RecognizerOutput(fine, fine_frame, coarse, coarse_frame)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, average: Average = "prob", coarse_rule: Optional[CoarseRule] = None):
        """Fine class probabilities of the lead head, averaged over clips (SEED.md §4).

        Call ``model.eval()`` first (dropout is active in training mode).

        Args:
            x: ``[B, 3, T, H, W]`` (one clip per video) or ``[B, V, 3, T, H, W]`` (V clips/views per video).
            average: ``"prob"`` (seed: mean of per-clip softmax) or ``"logit"`` (softmax of the mean logits).
            coarse_rule: None, or a rule of :func:`coarse_scores` to also return group (body-part) scores.

        Returns:
            Fine probabilities ``[B, K]`` (float32); with ``coarse_rule`` a pair ``(fine, coarse [B, G])``.
        """
        if average not in ("prob", "logit"):
            raise MicroactError(f"eval.average: {average!r} is not valid; choose 'prob' or 'logit'")
        if x.dim() == 5:
            x = x.unsqueeze(1)  # [B, C, T, H, W] -> [B, 1, C, T, H, W]
        if x.dim() != 6:
            raise ValueError(f"predict_proba: expected [B, C, T, H, W] or [B, V, C, T, H, W], got {list(x.shape)}")
        b, v = x.shape[:2]
        out = self(x.flatten(0, 1))  # [B*V, C, T, H, W] -> RecognizerOutput with [B*V, K] leads
        fine = _average_clips(out.fine, b, v, average)
        if coarse_rule is None:
            return fine
        coarse_probs = None
        if coarse_rule == "coarse_head":
            if out.coarse is None:
                raise MicroactError("predict.coarse_rule='coarse_head' needs a model with coarse heads "
                                    "(use_coarse=True)")
            coarse_probs = _average_clips(out.coarse, b, v, average)
        if self.taxonomy is None:
            raise MicroactError(f"coarse_rule: the model's {self.num_classes} classes have no known taxonomy (build "
                                "it with taxonomy=...)")
        return fine, coarse_scores(fine, coarse_rule, coarse_probs, self.taxonomy)

    def load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a source checkpoint's classifier (keys ``weight``, ``bias``, optionally prefixed as ``head.weight``)
        into a linear lead classifier.

        Used by ``load_pretrained(..., keep_head=True)`` for the TimeSformer-style head.

        Raises:
            MicroactError: the lead classifier is not linear, keys are missing or shapes differ.
        """
        fc = self.cls_head.fc_cls
        # Accept bare ("weight") and prefixed ("head.weight", "fc_cls.weight") classifier keys.
        state = {k.rsplit(".", 1)[-1]: v for k, v in state.items()}
        if not isinstance(fc, nn.Linear):
            raise MicroactError(f"keep_head: the lead classifier is {type(fc).__name__}, not a linear layer; only "
                                "the TimeSformer (pooled) or non-ArcFace heads can take a checkpoint's classifier")
        missing = [k for k in ("weight", "bias") if k not in state]
        if missing:
            raise MicroactError(f"keep_head: the checkpoint's classifier lacks {', '.join(missing)} "
                                f"(has: {', '.join(sorted(state)) or 'nothing'})")
        for key in ("weight", "bias"):
            want, got = tuple(getattr(fc, key).shape), tuple(state[key].shape)
            if want != got:
                raise MicroactError(f"keep_head: classifier {key} has shape {list(got)}, the model needs {list(want)} "
                                    f"({fc.out_features} classes); drop keep_head or set num_classes to match")
        with torch.no_grad():
            fc.weight.copy_(state["weight"])
            fc.bias.copy_(state["bias"])


def _average_clips(logits: torch.Tensor, b: int, v: int, average: Average) -> torch.Tensor:
    logits = logits.float().view(b, v, -1)  # [B*V, K] -> [B, V, K]
    if average == "prob":
        return logits.softmax(dim=-1).mean(dim=1)
    return logits.mean(dim=1).softmax(dim=-1)


def flat_coarse_message(taxonomy: Optional[Taxonomy]) -> str:
    """Why coarse heads cannot be built for these classes, and the ways out (recipe keys and the Python API)."""
    what = taxonomy.describe() if taxonomy is not None else "classes without a taxonomy"
    return (f"the model has coarse heads (one output per group) but its classes have no coarse level ({what}): "
            "use a preset without them (e.g. videomae_b_k710_frame_i3d) or add the override "
            "model.overrides={use_coarse: false}, or give the classes file a group column (in Python: "
            "use_coarse=False, or taxonomy=a microact.taxonomy.Taxonomy with groups)")


def _fine_to_coarse_matrix(num_fine: int, taxonomy: Taxonomy, device=None) -> torch.Tensor:
    if not taxonomy.has_coarse:
        raise MicroactError(f"coarse prediction: the taxonomy has no coarse level ({taxonomy.describe()})")
    if num_fine != taxonomy.num_fine:
        what = "MA-52 fine classes" if taxonomy.is_ma52 else "fine classes of the taxonomy"
        raise MicroactError(f"coarse prediction needs the {taxonomy.num_fine} {what}, got {num_fine} scores")
    m = torch.zeros(taxonomy.num_fine, taxonomy.num_coarse, device=device)
    m[torch.arange(taxonomy.num_fine), torch.as_tensor(taxonomy.fine_to_coarse)] = 1.0
    return m  # [K, G] (MA-52: [52, 7]): one 1 per row


def coarse_scores(fine_probs, rule: CoarseRule = "map_top1", coarse_probs=None, taxonomy: Taxonomy = MA52):
    """Group scores ``[N, G]`` from fine probabilities ``[N, K]`` (SEED.md §4, §12 row 12); MA-52: ``[N, 52]`` ->
    ``[N, 7]`` body parts.

    Rules:

    - ``"map_top1"`` (seed): one-hot of g(argmax fine) -- the argmax is the seed's coarse prediction.
    - ``"sum_probs"``: sum of the fine probabilities of each body part (a proper distribution).
    - ``"coarse_head"``: hierarchical decoding with the coarse lead head's probabilities ``coarse_probs [N, 7]``:
      ``score_c ∝ p_head(c) * sum_{k in c} p_fine(k)``, renormalised. Treating the two heads as independent
      evidence, the product rewards body parts both agree on; neither head can win alone with a confident mistake.

    Args:
        fine_probs: fine probabilities, torch tensor or numpy array ``[N, K]``.
        rule: one of the rules above.
        coarse_probs: the coarse head's probabilities (``"coarse_head"`` only).
        taxonomy: the classes and their groups (default MA-52).

    Returns:
        Scores ``[N, G]`` of the input's type (float32 for numpy).
    """
    as_numpy = isinstance(fine_probs, np.ndarray)
    p = torch.as_tensor(fine_probs, dtype=torch.float32)
    if p.dim() != 2:
        raise ValueError(f"coarse_scores: expected fine probabilities [N, K], got shape {tuple(p.shape)}")
    group = _fine_to_coarse_matrix(p.shape[1], taxonomy, p.device)
    num_coarse = taxonomy.num_coarse
    if rule == "map_top1":
        top = p.argmax(dim=1)
        scores = torch.nn.functional.one_hot(taxonomy.coarse_of(top), num_coarse).float()
    elif rule == "sum_probs":
        scores = p @ group  # [N, 52] @ [52, 7] -> [N, 7]
    elif rule == "coarse_head":
        if coarse_probs is None:
            raise MicroactError("predict.coarse_rule='coarse_head' needs the coarse head's probabilities")
        q = torch.as_tensor(coarse_probs, dtype=torch.float32, device=p.device)
        if q.shape != (p.shape[0], num_coarse):
            raise ValueError(f"coarse_scores: coarse_probs must be [{p.shape[0]}, {num_coarse}], got {tuple(q.shape)}")
        joint = q * (p @ group)
        scores = joint / joint.sum(dim=1, keepdim=True).clamp_min(1e-12)
    else:
        raise MicroactError(f"predict.coarse_rule: {rule!r} is not valid; choose map_top1, sum_probs or coarse_head")
    return scores.numpy() if as_numpy else scores


def build_recognizer_heads(in_channels: int, num_classes: int, grid_t: int, head: str = "tsn",
                           use_arcface: bool = True, use_frame: bool = True, use_coarse: bool = True,
                           head_dropout: float = 0.5, frame_layout: str = "channel_group", se_mode: str = "replace",
                           margin_mode: str = "all", arcface_scale: float = 30.0, arcface_margin: float = 0.5,
                           num_coarse: int = NUM_COARSE,
                           ) -> tuple[nn.Module, Optional[FrameLevelHead], Optional[FrameLevelHead]]:
    """The (lead head, fine frame head, coarse frame head) triple of a seed-table model.

    Args:
        in_channels: channels of the backbone output (2C for two-stream).
        num_classes: fine classes.
        grid_t: T' of the token map.
        head: ``"timesformer"`` (pooled) or ``"tsn"`` / ``"i3d"`` (map).
        use_arcface, use_frame, use_coarse: which classifiers / assisting heads exist.
        head_dropout: dropout of the lead path.
        frame_layout, se_mode: frame-head switches (SEED.md §12 rows 1, 2).
        margin_mode, arcface_scale, arcface_margin: cosine-margin switches (SEED.md §12 row 3).
        num_coarse: groups of the coarse heads (the taxonomy's; MA-52: 7 body parts).
    """
    if head == "timesformer":
        if use_frame or use_coarse or use_arcface:
            raise MicroactError("the TimeSformer head is a plain linear classifier on the pooled feature: "
                                "use_frame, use_coarse and use_arcface must be false (use head 'tsn' instead)")
        return PooledHead(in_channels, num_classes, head_dropout), None, None
    if head not in ("tsn", "i3d"):
        raise MicroactError(f"head: {head!r} is not valid; choose timesformer, tsn or i3d")
    if use_coarse and not use_frame:
        raise MicroactError("use_coarse=True needs use_frame=True (the seed's coarse heads come with the frame head)")
    lead = TSNHead(in_channels, num_classes, head_dropout, use_arcface, use_coarse, num_coarse, arcface_scale,
                   arcface_margin, margin_mode)
    frame = FrameLevelHead(in_channels, num_classes, grid_t, frame_layout, se_mode) if use_frame else None
    coarse_frame = FrameLevelHead(in_channels, num_coarse, grid_t, frame_layout, se_mode) if use_coarse else None
    return lead, frame, coarse_frame


__all__ = [
    "RecognizerOutput", "Recognizer", "TwoStreamBackbone", "coarse_scores",
    "build_recognizer_heads",
]
