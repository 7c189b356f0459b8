"""Classification heads of the MAC 2024 seed (SEED.md §2.3-§2.8).

Four building blocks, combined by :mod:`microact.models.recognizer`:

- :class:`CosineMarginClassifier` -- the seed's "ArcFace" layer: a scaled cosine classifier whose logits are
  ``s * cos(theta + m)``. Faithful: the margin is added to *every* class at train and test time.
- :class:`PooledHead` -- the TimeSformer-style head of the baseline rows: dropout + linear on a pooled vector.
- :class:`TSNHead` (= :class:`I3DHead`) -- the lead path of the best model: mean over the token map, dropout,
  fine classifier and the optional coarse (body-part) classifier on the same pooled feature.
- :class:`FrameLevelHead` -- the "frame-level" assisting head, with the seed's channel-group reshape and its
  "SE" gate that replaces the feature (both faithful quirks, both switchable).

Module and parameter names follow the seed's (``fc_cls``, ``fc_coarse_cls``, ``se.fc.0``, ``se.fc.2``, ``fc``) so
that the authors' checkpoints, should they appear, map onto ours by a prefix rename (see SEED.md §2.7).
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from microact.errors import MicroactError

MarginMode = Literal["all", "target"]
FrameLayout = Literal["channel_group", "temporal"]
SEMode = Literal["replace", "gate"]

_AUTOCAST_DEVICES = ("cuda", "cpu", "xpu", "mps")


def _no_autocast(device: torch.device):
    """A context that switches autocast off for ``device`` (a no-op context on devices autocast does not know)."""
    device_type = device.type if device.type in _AUTOCAST_DEVICES else "cpu"
    return torch.autocast(device_type=device_type, enabled=False)


class CosineMarginClassifier(nn.Module):
    """The seed's cosine-margin classifier ("ArcFace", SEED.md §2.4): ``logit_k = s * cos(theta_k + m)``.

    With ``f`` the (dropped-out) feature and ``W_k`` the class weights, ``c_k = <f/|f|, W_k/|W_k|>`` is clamped to
    ``[-1 + 1e-7, 1 - 1e-7]`` and mapped through the closed form ``cos(theta + m) = c cos m - sqrt(max(1 - c^2,
    eps)) sin m``, which equals ``cos(arccos(c) + m)`` without arccos's infinite slope at ``|c| = 1``.

    Margin modes:

    - ``"all"`` (faithful): the margin is applied to every class, in training and at test time. The layer is then a
      scaled cosine classifier followed by a fixed monotone-ish map; logits lie in ``[-s, s cos m]``.
    - ``"target"`` (standard ArcFace): during training the margin is applied only to the target class (``labels``
      must be given); in eval mode, or without a margin, the logits are the plain ``s * c``.

    The layer always runs in float32, also under autocast: in fp16 the clamp bound ``1 - 1e-7`` rounds to 1 and the
    gradient becomes infinite (SEED.md §12 row 4).

    Args:
        in_features: feature size C.
        num_classes: number of classes K.
        scale: s (30 in the seed).
        margin: m in radians (0.5 in the seed).
        margin_mode: ``"all"`` or ``"target"``.
        eps: floor under ``1 - c^2`` inside the square root.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0, margin: float = 0.5,
                 margin_mode: MarginMode = "all", eps: float = 1e-7):
        super().__init__()
        if margin_mode not in ("all", "target"):
            raise MicroactError(f"margin_mode: {margin_mode!r} is not valid; choose 'all' or 'target'")
        self.in_features = in_features
        self.num_classes = num_classes
        self.scale = float(scale)
        self.margin = float(margin)
        self.margin_mode = margin_mode
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, mean=0.0, std=0.01)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """Clamped cosines ``[N, K]`` (float32) between the features ``x [N, C]`` and every class weight."""
        with _no_autocast(x.device):
            x = F.normalize(x.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            return F.linear(x, w).clamp(-1.0 + 1e-7, 1.0 - 1e-7)

    def add_margin(self, cos: torch.Tensor) -> torch.Tensor:
        """``cos(arccos(cos) + m)`` in the closed form (float32)."""
        sine = torch.sqrt(torch.clamp(1.0 - cos * cos, min=self.eps))
        return cos * math.cos(self.margin) - sine * math.sin(self.margin)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``[N, K]`` in float32 for features ``x [N, C]``.

        Args:
            x: features.
            labels: int64 ``[N]`` class ids; needed only by ``margin_mode="target"`` in training mode.
        """
        with _no_autocast(x.device):
            cos = self.cosine(x)
            if self.margin_mode == "all":
                return self.scale * self.add_margin(cos)
            if not self.training:
                return self.scale * cos
            if labels is None:
                raise MicroactError("arcface.margin_mode='target' needs the labels in training mode: call "
                                    "model(x, labels=labels)")
            target = F.one_hot(labels.long(), self.num_classes).to(torch.bool)
            return self.scale * torch.where(target, self.add_margin(cos), cos)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, scale={self.scale}, "
                f"margin={self.margin}, margin_mode={self.margin_mode!r}")


class PooledHead(nn.Module):
    """TimeSformer-style head of the baseline rows (SEED.md §2.8): Dropout -> Linear on a pooled ``[B, C]``.

    The backbone must be built with ``output="pooled"`` (``fc_norm`` of the token mean). Weight init: truncated
    normal with std 0.02, bias 0, as in mmaction2's TimeSformer head.

    Args:
        in_channels: feature size C.
        num_classes: number of classes K.
        dropout: dropout probability before the classifier (0.5 in the seed's configs).
    """

    input_kind = "pooled"

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        self.fc_cls = nn.Linear(in_channels, num_classes)
        nn.init.trunc_normal_(self.fc_cls.weight, std=0.02)
        nn.init.zeros_(self.fc_cls.bias)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, None]:
        """Returns ``(fine logits [B, K], None)``; ``labels`` is unused (uniform head interface)."""
        if x.dim() != 2:
            raise ValueError(f"PooledHead expects pooled features [B, C], got shape {tuple(x.shape)}")
        return self.fc_cls(self.dropout(x)), None


class TSNHead(nn.Module):
    """Lead path of the best model (SEED.md §2.3, §2.6): mean over (T', H', W') -> Dropout -> classifier(s).

    The authors' TSN and I3D heads compute the same thing on the ViT token map; one implementation serves both
    (``I3DHead = TSNHead``). There is no ``fc_norm`` after pooling: the pooled vector is the mean of the
    LayerNorm-ed tokens.

    Args:
        in_channels: channels C of the map.
        num_classes: fine classes K.
        dropout: dropout before the classifier(s) (0.5 in the seed's configs).
        use_arcface: fine (and coarse) classifiers are :class:`CosineMarginClassifier` layers instead of Linear.
        use_coarse: add the coarse lead classifier ``fc_coarse_cls`` (C -> ``num_coarse``) on the same feature.
        num_coarse: coarse classes (7 MA-52 body parts).
        arcface_scale, arcface_margin, margin_mode: passed to the cosine-margin layers.
    """

    input_kind = "map"

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5, use_arcface: bool = True,
                 use_coarse: bool = False, num_coarse: int = 7, arcface_scale: float = 30.0,
                 arcface_margin: float = 0.5, margin_mode: MarginMode = "all"):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.use_arcface = use_arcface
        self.dropout = nn.Dropout(dropout)

        def classifier(k: int) -> nn.Module:
            if use_arcface:
                return CosineMarginClassifier(in_channels, k, arcface_scale, arcface_margin, margin_mode)
            # The seed's heads override init_weights with a no-op, so a linear fc_cls keeps PyTorch's default init.
            return nn.Linear(in_channels, k)

        self.fc_cls = classifier(num_classes)
        self.fc_coarse_cls = classifier(num_coarse) if use_coarse else None

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                coarse_labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Map ``[B, C, T', H', W']`` -> ``(fine [B, K], coarse [B, num_coarse] or None)``.

        ``labels`` / ``coarse_labels`` are used only by cosine-margin layers in ``margin_mode="target"``.
        """
        if x.dim() != 5:
            raise ValueError(f"TSNHead expects a token map [B, C, T', H', W'], got shape {tuple(x.shape)}")
        feat = self.dropout(x.mean(dim=(2, 3, 4)))  # [B, C, T', H', W'] -> [B, C]
        fine = self._classify(self.fc_cls, feat, labels)
        coarse = self._classify(self.fc_coarse_cls, feat, coarse_labels) if self.fc_coarse_cls is not None else None
        return fine, coarse

    @staticmethod
    def _classify(layer: nn.Module, feat: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        if isinstance(layer, CosineMarginClassifier):
            return layer(feat, labels)
        return layer(feat)


I3DHead = TSNHead


class SqueezeExcitation(nn.Module):
    """The seed's "SE" block: ``g = sigmoid(W2 ReLU(W1 v))``, both linear layers without bias.

    ``se_mode="replace"`` (faithful) returns ``g`` itself -- the block is a bottleneck MLP with a sigmoid output;
    ``se_mode="gate"`` returns ``v * g`` as a real squeeze-and-excitation would.
    """

    def __init__(self, channels: int, reduction: int = 16, se_mode: SEMode = "replace"):
        super().__init__()
        if se_mode not in ("replace", "gate"):
            raise MicroactError(f"frame_head.se_mode: {se_mode!r} is not valid; choose 'replace' or 'gate'")
        self.se_mode = se_mode
        hidden = max(1, channels // reduction)
        # Index positions 0 and 2 give the seed's parameter names se.fc.0.weight / se.fc.2.weight.
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False), nn.Sigmoid(),
        )

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        g = self.fc(v)
        return g if self.se_mode == "replace" else v * g


class FrameLevelHead(nn.Module):
    """The seed's "frame-level" assisting head (``FrameLevelPrediction``, SEED.md §2.5): map -> ``[B, T', K]``.

    Steps: (1) split the map into T' rows, (2) mean over (H', W'), (3) the "SE" block, (4) Linear C -> K with bias.
    No dropout.

    Layouts of step (1):

    - ``"channel_group"`` (faithful): ``[B, C, T', H', W']`` is reshaped to ``[B*T', C, H', W']`` *without* a
      permute. Row-major order makes pseudo-frame ``j`` hold, in slot ``c'``, channel ``j * (C / T') + c' // T'``
      at time ``c' % T'`` -- a channel-group head, not a per-frame head.
    - ``"temporal"`` (corrected): permute to ``[B, T', C, H', W']`` first, so row ``j`` is the real time slot j.

    Args:
        in_channels: channels C of the map.
        num_classes: classes K.
        grid_t: T' (checked against the input when given; the head itself works for any T').
        layout: ``"channel_group"`` or ``"temporal"``.
        se_mode: ``"replace"`` (faithful: the gate replaces the feature) or ``"gate"`` (``v * g``).
        reduction: bottleneck ratio of the SE block (16 -> 768/16 = 48 for ViT-B).
    """

    input_kind = "map"

    def __init__(self, in_channels: int, num_classes: int, grid_t: Optional[int] = None,
                 layout: FrameLayout = "channel_group", se_mode: SEMode = "replace", reduction: int = 16):
        super().__init__()
        if layout not in ("channel_group", "temporal"):
            raise MicroactError(f"frame_head.layout: {layout!r} is not valid; choose 'channel_group' or 'temporal'")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.grid_t = grid_t
        self.layout = layout
        self.se = SqueezeExcitation(in_channels, reduction, se_mode)
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """Rows ``[B*T', C]`` after the layout step and the spatial mean (before the SE block)."""
        if x.dim() != 5:
            raise ValueError(f"FrameLevelHead expects a token map [B, C, T', H', W'], got shape {tuple(x.shape)}")
        b, c, t, h, w = x.shape
        if self.grid_t is not None and t != self.grid_t:
            raise ValueError(f"FrameLevelHead built for T'={self.grid_t}, got a map with T'={t}")
        if self.layout == "temporal":
            x = x.permute(0, 2, 1, 3, 4)  # [B, C, T', H', W'] -> [B, T', C, H', W']
        # Faithful quirk: without the permute above, this reshape interleaves channels and time (see docstring).
        x = x.reshape(b * t, c, h, w)  # -> [B*T', C, H', W']
        return x.mean(dim=(2, 3))  # [B*T', C, H', W'] -> [B*T', C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, T', H', W']`` -> logits ``[B, T', K]``."""
        b, t = x.shape[0], x.shape[2]
        logits = self.fc(self.se(self.frame_features(x)))  # [B*T', K]
        return logits.view(b, t, self.num_classes)  # [B*T', K] -> [B, T', K]
