"""VideoMAE vision transformer (ViT-S/B/L/H with tubelet embedding) in plain PyTorch.

Papers and code this file learned from (facts only, no code copied):

- Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video
  Pre-Training", NeurIPS 2022, https://arxiv.org/abs/2203.12602 — code `MCG-NJU/VideoMAE`.
- Wang et al., "InternVideo: General Video Foundation Models via Generative and Discriminative
  Learning", https://arxiv.org/abs/2212.03191 — code `OpenGVLab/InternVideo` (position-table resampling
  for other frame counts and resolutions; the `vit_b_hybrid_pt_800e_k710_ft.pth` weights the MAC 2024
  seed starts from).
- `open-mmlab/mmaction2` `vit_mae.py` (the token-map output mode used by the seed) and Hugging Face
  `transformers` `VideoMAEModel` (parity reference in the tests).

The model is configured only by constructor arguments. Parameter names follow the official
fine-tuning code (``patch_embed.proj``, ``blocks.i.attn.qkv``, ``attn.q_bias`` ...), so official
checkpoints load without renaming; :mod:`microact.models.checkpoints` maps the other layouts.

Two output modes (VIDEOMAE.md §1.5):

- ``output="pooled"``: ``fc_norm(mean over tokens)`` -> ``[B, C]`` (stock fine-tuning model; no ``norm``).
- ``output="map"``: final ``norm`` on every token -> ``[B, C, T', H', W']`` (the seed; no ``fc_norm``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend
from torch.nn.attention import sdpa_kernel as _sdpa_kernels_in_order
from torch.utils.checkpoint import checkpoint

from microact.errors import MicroactError

__all__ = [
    "VideoMAE",
    "BackboneError",
    "PretrainedCfg",
    "create_backbone",
    "list_backbones",
    "list_pretrained",
    "get_pretrained_cfg",
    "sinusoid_table",
    "position_table",
    "forward_macs",
    "flops_per_clip",
    "count_parameters",
    "SDPA_KERNELS",
    "sdpa_preference",
    "sdpa_kernel_in_use",
    "set_sdpa_kernel",
    "attention_kernel_of",
]

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


class BackboneError(MicroactError, ValueError):
    """A backbone was asked for something it cannot do (unknown name, wrong input shape ...)."""


# ----------------------------------------------------------------------------------------------------
# Position table (VIDEOMAE.md §1.4, §2)
# ----------------------------------------------------------------------------------------------------


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The fixed 1-D transformer sinusoid over the flattened token index.

    P[p, j] = sin(p / 10000^(2*(j//2)/dim)) for even j and cos(...) for odd j, computed in float64.

    Args:
        num_positions: number of tokens N.
        dim: channels D.

    Returns:
        float32 tensor ``[N, D]``.
    """
    # Always on the CPU, also when a model is built under a meta/cuda default device: it is a fixed table.
    pos = torch.arange(num_positions, dtype=torch.float64, device="cpu")[:, None]  # [N, 1]
    exponent = 2 * (torch.arange(dim, dtype=torch.float64, device="cpu") // 2) / dim  # [D]
    angles = pos / torch.pow(10000.0, exponent)[None, :]  # [N, D]
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float()


def position_table(
        grid: Sequence[int],
        dim: int,
        mode: str = "interpolate",
        pretrained_grid: Sequence[int] = (8, 14, 14),
) -> torch.Tensor:
    """Position table for a token grid, as ``[1, T'*H'*W', D]`` float32.

    ``mode="interpolate"`` builds the table of ``pretrained_grid`` (8x14x14 = the 16x224 pre-training
    input), resamples it bicubically in space per time slice and linearly in time (InternVideo's rule),
    so every token keeps the code it had during pre-training. ``mode="analytic"`` rebuilds the 1-D
    sinusoid for the new number of tokens (the official code's behaviour; for training from scratch).
    Both give the same table when ``grid == pretrained_grid``.

    Args:
        grid: target (T', H', W').
        dim: channels D.
        mode: "interpolate" or "analytic".
        pretrained_grid: grid of the table that is resampled.

    Returns:
        float32 tensor ``[1, N, D]``.
    """
    t, h, w = (int(v) for v in grid)
    t0, h0, w0 = (int(v) for v in pretrained_grid)
    if mode == "analytic" or (t, h, w) == (t0, h0, w0):
        return sinusoid_table(t * h * w, dim)[None]
    if mode != "interpolate":
        raise BackboneError(f"pos_embed_mode: expected 'interpolate' or 'analytic', got {mode!r}")
    # Resample in float64 so the 16x224 table round-trips exactly and the float32 cast is the only rounding.
    base = sinusoid_table(t0 * h0 * w0, dim).double().reshape(t0, h0, w0, dim)  # [T0, H0, W0, D]
    if (h, w) != (h0, w0):
        x = base.permute(0, 3, 1, 2)  # [T0, D, H0, W0]: time slices as a batch of images
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)  # [T0, D, H, W]
        base = x.permute(0, 2, 3, 1)  # [T0, H, W, D]
    if t != t0:
        x = base.permute(1, 2, 3, 0).reshape(h * w, dim, t0)  # [H*W, D, T0]: one 1-D signal per position
        x = F.interpolate(x, size=t, mode="linear", align_corners=False)  # [H*W, D, T]
        base = x.reshape(h, w, dim, t).permute(3, 0, 1, 2)  # [T, H, W, D]
    return base.reshape(1, t * h * w, dim).float()  # [1, N, D]


# ----------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop whole residual branches per sample, scale survivors by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # [B, 1, 1]
    return x * mask / keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (shows up in ``print(model)``)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class PatchEmbed(nn.Module):
    """Tubelet embedding: Conv3d with kernel = stride = (tubelet, patch, patch)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, tubelet_size: int):
        super().__init__()
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Kernel == stride, so the convolution is one matmul over non-overlapping tubelets. Done as a GEMM it gives
        # the same numbers and is much faster on CPU, where the Conv3d weight gradient is slow (bf16 fwd+bwd of
        # this layer: 62 -> 7 ms per 16x224 clip). The weight keeps the Conv3d shape, so checkpoints load as is.
        b, c, t, h, w = x.shape
        kt, kh, kw = self.proj.kernel_size
        x = x.reshape(b, c, t // kt, kt, h // kh, kh, w // kw, kw)
        # -> [B, T', H', W', C, kt, kh, kw]: token index t'*H'*W' + h'*W' + w', features in the weight's order
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c * kt * kh * kw)  # [B, N, C*kt*kh*kw]
        return F.linear(x, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)  # [B, N, D]


# Which fused CUDA kernel F.scaled_dot_product_attention tries first. PyTorch's own order depends on its version and
# the GPU (flash first in older releases; in recent ones cuDNN first on Hopper/Blackwell when cuDNN is new enough),
# and which one is faster for ViT shapes (head_dim 64, ~1.5k tokens) depends on both, so it is measurable and
# selectable.
SDPA_KERNELS: dict[str, Optional[SDPBackend]] = {
    "auto": None,  # PyTorch's choice
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}
_FALLBACK_ORDER = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                   SDPBackend.MATH)
_KERNEL_NAMES = {SDPBackend.MATH: "math", SDPBackend.FLASH_ATTENTION: "flash",
                 SDPBackend.EFFICIENT_ATTENTION: "efficient", SDPBackend.CUDNN_ATTENTION: "cudnn"}


def _check_sdpa_kernel(name: str) -> None:
    if name not in SDPA_KERNELS:
        raise BackboneError(f"sdpa_kernel: expected one of {', '.join(SDPA_KERNELS)}, got {name!r}")


def sdpa_preference(name: str = "auto"):
    """Context in which ``F.scaled_dot_product_attention`` tries the kernel ``name`` first.

    A preference, not a restriction: where that kernel cannot serve a call (its GPU, dtype or shape limits) the
    others follow in the order cuDNN, flash, memory-efficient, math. ``"auto"`` keeps PyTorch's own order (a no-op
    context). The CPU has one fused kernel and ignores the order.
    """
    _check_sdpa_kernel(name)
    first = SDPA_KERNELS[name]
    if first is None:
        return contextlib.nullcontext()
    return _sdpa_kernels_in_order([first] + [b for b in _FALLBACK_ORDER if b != first], set_priority=True)


def set_sdpa_kernel(model: nn.Module, name: str) -> int:
    """Make every VideoMAE attention layer inside ``model`` try the fused kernel ``name`` first.

    Returns:
        How many attention layers were set (0: the model has none of ours).
    """
    _check_sdpa_kernel(name)
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for layer in layers:
        layer.sdpa_kernel = name
    return len(layers)


def attention_kernel_of(model: nn.Module, device: Union[str, torch.device], dtype: torch.dtype,
                        preference: Optional[str] = None) -> Optional[str]:
    """The kernel ``model``'s first VideoMAE attention layer gets for one training sample under its own
    ``sdpa_kernel`` (or ``preference`` when given); None for manual attention or no VideoMAE inside. See
    :func:`sdpa_kernel_in_use`."""
    backbone = next((m for m in model.modules() if isinstance(m, VideoMAE)), None)
    if backbone is None or backbone.blocks[0].attn.attn_impl != "sdpa":
        return None
    attn = backbone.blocks[0].attn
    return sdpa_kernel_in_use(device, dtype, attn.num_heads, backbone.num_tokens, attn.head_dim,
                              attn.sdpa_kernel if preference is None else preference)


def sdpa_kernel_in_use(device: Union[str, torch.device], dtype: torch.dtype = torch.bfloat16, num_heads: int = 12,
                       tokens: int = 1568, head_dim: int = 64, preference: str = "auto",
                       requires_grad: bool = True) -> str:
    """Name of the kernel SDPA picks for one sample of these shapes under ``preference`` on ``device``.

    Asks PyTorch's dispatcher (``torch._fused_sdp_choice``) with a real ``[1, heads, tokens, head_dim]`` tensor, so
    the answer accounts for the device, the PyTorch and cuDNN versions and the shape. Returns "cudnn", "flash",
    "efficient", "math", or "unknown" where this PyTorch cannot say.
    """
    q = torch.zeros(1, num_heads, tokens, head_dim, device=device, dtype=dtype, requires_grad=requires_grad)
    try:
        with sdpa_preference(preference):
            choice = torch._fused_sdp_choice(q, q, q)
        return _KERNEL_NAMES.get(SDPBackend(choice), "unknown")
    except (AttributeError, RuntimeError, ValueError):
        return "unknown"


class _SplitHeads(torch.autograd.Function):
    """``[B, N, 3*D]`` -> q, k, v as ``[B, heads, N, head_dim]`` views (no copy).

    Plain ``reshape/permute/unbind`` would give the same forward, but its backward stacks the three gradients into a
    new tensor and then copies that again to undo the permutation; this backward writes each gradient straight into
    one ``[B, N, 3*D]`` buffer (one copy instead of two; about 1.5 % of a ViT-B fp32 training step on CPU).
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, num_heads: int):
        b, n, three_d = qkv.shape
        head_dim = three_d // (3 * num_heads)
        return qkv.view(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, h, N, hd]

    @staticmethod
    def backward(ctx, grad_q, grad_k, grad_v):
        ref = next(g for g in (grad_q, grad_k, grad_v) if g is not None)
        b, h, n, hd = ref.shape
        grad = ref.new_empty(b, n, 3, h, hd)  # the layout of qkv
        for i, g in enumerate((grad_q, grad_k, grad_v)):
            if g is None:
                grad[:, :, i].zero_()
            else:
                grad[:, :, i].copy_(g.transpose(1, 2))  # [B, h, N, hd] -> [B, N, h, hd]
        return grad.view(b, n, 3 * h * hd), None


class Attention(nn.Module):
    """Multi-head self-attention with a bias-free fused qkv and separate q/v biases (k bias is zero)."""

    def __init__(self, dim: int, num_heads: int, attn_impl: str = "sdpa", sdpa_kernel: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise BackboneError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if attn_impl not in ("sdpa", "manual"):
            raise BackboneError(f"attn_impl: expected 'sdpa' or 'manual', got {attn_impl!r}")
        _check_sdpa_kernel(sdpa_kernel)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_impl = attn_impl
        self.sdpa_kernel = sdpa_kernel
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # One addmm for q, k and v: the k bias is a constant zero (BEiT convention), so it is concatenated
        # in rather than added separately.
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))  # [3D]
        qkv = F.linear(x, self.qkv.weight, bias)  # [B, N, 3D]
        q, k, v = _SplitHeads.apply(qkv, self.num_heads)  # each [B, h, N, hd]
        if self.attn_impl == "sdpa":
            # Entered here rather than around the whole model so that checkpointed blocks recompute with it too.
            with sdpa_preference(self.sdpa_kernel):
                y = F.scaled_dot_product_attention(q, k, v)  # [B, h, N, hd]
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, h, N, N]
            y = attn.softmax(dim=-1) @ v  # [B, h, N, hd]
        y = y.transpose(1, 2).reshape(b, n, d)  # [B, N, D]
        return self.proj(y)


def mlp_width(dim: int, mlp_ratio: float) -> int:
    """Hidden size of a block's MLP: ``dim * mlp_ratio`` rounded to the nearest integer.

    Rounded, not truncated: a checkpoint's width over its dim (e.g. Hugging Face's ``intermediate_size /
    hidden_size``, 230 / 112) times the dim is not always the integer back in floating point (229.99999999999997),
    and truncating would build an MLP one unit too narrow. For whole-number products (ratio 4) both agree.
    """
    return int(round(dim * mlp_ratio))


class Mlp(nn.Module):
    """Linear -> exact (erf) GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        # Without autograd the hidden activation is our own temporary: GELU in place saves allocating (and on CPU
        # page-faulting) the largest tensor of the block.
        hidden = F.gelu(hidden) if torch.is_grad_enabled() else torch.ops.aten.gelu_(hidden)
        return self.fc2(hidden)


class Block(nn.Module):
    """Pre-norm transformer block: x += DropPath(Attn(LN(x))); x += DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, attn_impl: str,
                 sdpa_kernel: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_impl, sdpa_kernel)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_width(dim, mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        branch = self.drop_path(self.mlp(self.norm2(x)))
        if torch.is_grad_enabled():
            return x + branch
        # Inference: x was created two lines above (never the caller's tensor, never a hooked output), so the second
        # residual add can reuse its memory.
        return x.add_(branch)


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------


def _pair(v: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    h, w = v
    return int(h), int(w)


class VideoMAE(nn.Module):
    """VideoMAE ViT backbone.

    Args:
        embed_dim: token channels D.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden size / D (the width is rounded to an integer: :func:`mlp_width`).
        patch_size: spatial patch size.
        tubelet_size: frames per tubelet.
        num_frames: input frames T (must be divisible by ``tubelet_size``).
        img_size: input height = width (or an (H, W) pair).
        in_chans: input channels.
        output: "pooled" (``[B, C]``, via ``fc_norm``) or "map" (``[B, C, T', H', W']``, via ``norm``).
        drop_path_rate: stochastic depth of the last block; block i gets ``linspace(0, rate, depth)[i]``.
        attn_impl: "sdpa" (``F.scaled_dot_product_attention``) or "manual" (explicit softmax; exportable).
        sdpa_kernel: the fused CUDA attention kernel SDPA tries first: "auto" (PyTorch's order), "cudnn", "flash" or
            "efficient" (see :func:`sdpa_preference`; changeable later with :func:`set_sdpa_kernel`).
        grad_checkpointing: recompute each block in backward (saves activation memory).
        num_classes: 0 = no classifier; > 0 adds ``head`` (Linear after ``fc_norm``; pooled mode only).
        head_dropout: dropout before ``head``.
        head_init_scale: multiplies the head's initial weight and bias (official fine-tuning: 0.001).
        pos_embed_mode: "interpolate" or "analytic" (see :func:`position_table`).
        pretrained_grid: token grid the position table is resampled from.
    """

    def __init__(
            self,
            embed_dim: int,
            depth: int,
            num_heads: int,
            mlp_ratio: float = 4.0,
            patch_size: int = 16,
            tubelet_size: int = 2,
            num_frames: int = 16,
            img_size: Union[int, Sequence[int]] = 224,
            in_chans: int = 3,
            output: str = "pooled",
            drop_path_rate: float = 0.0,
            attn_impl: str = "sdpa",
            sdpa_kernel: str = "auto",
            grad_checkpointing: bool = False,
            num_classes: int = 0,
            head_dropout: float = 0.0,
            head_init_scale: float = 1.0,
            pos_embed_mode: str = "interpolate",
            pretrained_grid: Sequence[int] = (8, 14, 14),
    ):
        super().__init__()
        if output not in ("pooled", "map"):
            raise BackboneError(f"output: expected 'pooled' or 'map', got {output!r}")
        if num_classes and output != "pooled":
            raise BackboneError("num_classes > 0 needs output='pooled' (the head sits after fc_norm)")
        img_hw = _pair(img_size)
        if num_frames % tubelet_size or img_hw[0] % patch_size or img_hw[1] % patch_size:
            raise BackboneError(
                f"input {num_frames}x{img_hw[0]}x{img_hw[1]} is not divisible by the tubelet "
                f"{tubelet_size}x{patch_size}x{patch_size}")
        if pos_embed_mode not in ("interpolate", "analytic"):
            raise BackboneError(f"pos_embed_mode: expected 'interpolate' or 'analytic', got {pos_embed_mode!r}")
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.num_frames = num_frames
        self.img_size = img_size
        self.in_chans = in_chans
        self.output = output
        self.num_classes = num_classes
        self.pos_embed_mode = pos_embed_mode
        self.pretrained_grid = tuple(pretrained_grid)
        self.grad_checkpointing = grad_checkpointing
        self.grid = (num_frames // tubelet_size, img_hw[0] // patch_size, img_hw[1] // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1] * self.grid[2]

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, tubelet_size)
        # Fixed table, never learned and never saved (official and HF checkpoints carry none).
        self.register_buffer(
            "pos_embed", position_table(self.grid, embed_dim, pos_embed_mode, self.pretrained_grid),
            persistent=False)
        # linspace(0, rate, depth) in plain Python so that building on the meta device works
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, r, attn_impl, sdpa_kernel) for r in rates)
        if output == "map":
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        else:
            self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if num_classes:
            self.head_drop = nn.Dropout(head_dropout)
            self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights(head_init_scale)

    def _init_weights(self, head_init_scale: float) -> None:
        # VIDEOMAE.md §1.7: trunc-normal 0.02 Linear, zero bias, LN 1/0; the Conv3d keeps PyTorch's init.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.num_classes and head_init_scale != 1.0:
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    # -- interface used by the training code ---------------------------------------------------------

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block during backward instead of storing its activations."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names of parameters the official recipe exempts from weight decay (1-D tensors and biases)."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n.endswith(".bias")}

    def layer_id(self, name: str) -> int:
        """Layer index for layer-wise lr decay (VIDEOMAE.md §4.3).

        Args:
            name: a parameter name of this module (a leading ``backbone.`` is ignored).

        Returns:
            0 for the patch embedding / position table, i + 1 for ``blocks.i``, ``depth + 1`` otherwise.
        """
        if name.startswith("backbone."):
            name = name[len("backbone."):]
        if name.startswith(("patch_embed", "pos_embed", "cls_token", "mask_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    # -- forward ------------------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        t, (h, w) = self.num_frames, _pair(self.img_size)
        if x.ndim != 5 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != (t, h, w):
            raise BackboneError(
                f"backbone input: expected [B, {self.in_chans}, {t}, {h}, {w}] (B, C, T, H, W), got "
                f"{list(x.shape)}; build the backbone with num_frames={x.shape[2] if x.ndim == 5 else '?'} "
                f"and img_size matching the clip")
        if not x.is_floating_point():
            raise BackboneError(f"backbone input: expected a normalised float tensor, got {x.dtype} "
                                "(clips travel as uint8; normalise them on the device first)")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block, before the final norm: ``[B, N, D]``."""
        self._check_input(x)
        x = self.patch_embed(x)  # [B, N, D]
        # Cast the float32 table to the activation dtype (bf16 under autocast) as HF does.
        x = x + self.pos_embed.to(device=x.device, dtype=x.dtype)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the backbone.

        Args:
            x: ``[B, 3, T, H, W]`` float, normalised.

        Returns:
            ``[B, C]`` (pooled), ``[B, C, T', H', W']`` (map), or logits ``[B, num_classes]`` with a head.
        """
        x = self.forward_features(x)  # [B, N, D]
        if self.output == "map":
            x = self.norm(x)
            b, _, d = x.shape
            t, h, w = self.grid
            return x.reshape(b, t, h, w, d).permute(0, 4, 1, 2, 3)  # [B, D, T', H', W'] (a view, as the seed)
        x = self.fc_norm(x.mean(dim=1))  # [B, D]
        if self.num_classes:
            x = self.head(self.head_drop(x))  # [B, K]
        return x

    def extra_repr(self) -> str:
        return f"grid={self.grid}, output={self.output!r}, pos_embed_mode={self.pos_embed_mode!r}"


# ----------------------------------------------------------------------------------------------------
# Sizes, pretrained metadata, factory
# ----------------------------------------------------------------------------------------------------

_ARCHS: dict[str, dict] = {
    # Tiny sizes for CI and the synthetic demo (no pretrained weights).
    "videomae_test": dict(embed_dim=64, depth=2, num_heads=2),
    "videomae_tiny": dict(embed_dim=128, depth=4, num_heads=4),
    # VIDEOMAE.md §1.1.
    "videomae_small": dict(embed_dim=384, depth=12, num_heads=6),
    "videomae_base": dict(embed_dim=768, depth=12, num_heads=12),
    "videomae_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "videomae_huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


@dataclass(frozen=True)
class PretrainedCfg:
    """Metadata of a published checkpoint (nothing is downloaded by microact).

    Attributes:
        file: file name (or hub repository) of the weights.
        source: where it is published.
        num_classes: classes of the stored head (0 = encoder only).
        num_frames: frames per clip it was trained with.
        input_size: (C, T, H, W).
        mean: per-channel mean on the 0-255 scale.
        std: per-channel std on the 0-255 scale.
        layout: key layout the file uses (see microact.models.checkpoints).
        license: licence of the weights.
        notes: anything a user must know.
    """

    file: str
    source: str
    num_classes: int
    num_frames: int = 16
    input_size: tuple[int, int, int, int] = (3, 16, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN_255
    std: tuple[float, float, float] = IMAGENET_STD_255
    layout: str = "official"
    license: str = "cc-by-nc-4.0"
    notes: str = ""


_PRETRAINED: dict[str, PretrainedCfg] = {
    "videomae_base.internvideo_k710_ft": PretrainedCfg(
        file="vit_b_hybrid_pt_800e_k710_ft.pth", source="OpenGVLab/InternVideo (InternVideo1 VideoMAE model zoo)",
        num_classes=710, layout="official (container 'model', prefix 'encoder.', final LN 'encoder.norm')",
        license="see the OpenGVLab/InternVideo model zoo (VideoMAE-derived weights; treat as non-commercial)",
        notes="the MAC 2024 seed's initialisation (SEED.md §1); its 710-way head is dropped for MA-52"),
    "videomae_large.internvideo_k700_ft": PretrainedCfg(
        file="vit_l_hybrid_pt_800e_k700_ft.pth", source="OpenGVLab/InternVideo (InternVideo1 VideoMAE model zoo)",
        num_classes=700, layout="official (container 'module', fine-tuned layout with fc_norm)",
        license="see the OpenGVLab/InternVideo model zoo (VideoMAE-derived weights; treat as non-commercial)",
        notes="the seed's Large rows"),
    "videomae_base.mcg_k400_pt": PretrainedCfg(
        file="MCG-NJU/videomae-base", source="Hugging Face hub", num_classes=0, layout="hf",
        notes="pre-trained encoder; its hub config has use_mean_pooling false (VIDEOMAE.md §6.3)"),
    "videomae_base.mcg_k400_ft": PretrainedCfg(
        file="MCG-NJU/videomae-base-finetuned-kinetics", source="Hugging Face hub", num_classes=400, layout="hf"),
    "videomae_large.mcg_k400_ft": PretrainedCfg(
        file="MCG-NJU/videomae-large-finetuned-kinetics", source="Hugging Face hub", num_classes=400, layout="hf"),
    "videomae_base.mcg_ssv2_ft": PretrainedCfg(
        file="MCG-NJU/videomae-base-finetuned-ssv2", source="Hugging Face hub", num_classes=174, layout="hf"),
    "videomae_base.mmaction2_k400": PretrainedCfg(
        file="vit-base-p16_videomae-k400-pre_16x4x1_kinetics-400_20221013-860a3cd3.pth",
        source="download.openmmlab.com (ported from MCG-NJU/VideoMAE)", num_classes=400, layout="mmaction2",
        license="cc-by-nc-4.0 (MCG-NJU weights, ported)"),
    "videomae_large.mmaction2_k400": PretrainedCfg(
        file="vit-large-p16_videomae-k400-pre_16x4x1_kinetics-400_20221013-229dbb03.pth",
        source="download.openmmlab.com (ported from MCG-NJU/VideoMAE)", num_classes=400, layout="mmaction2",
        license="cc-by-nc-4.0 (MCG-NJU weights, ported)"),
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone` (architectures only; see :func:`list_pretrained`)."""
    return list(_ARCHS)


def list_pretrained() -> list[str]:
    """``arch.tag`` names of the known published checkpoints."""
    return list(_PRETRAINED)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """Metadata of a published checkpoint, by ``arch.tag``."""
    if name not in _PRETRAINED:
        raise BackboneError(f"unknown pretrained tag {name!r}; known: {', '.join(_PRETRAINED)}")
    return _PRETRAINED[name]


def arch_config(name: str) -> dict:
    """Constructor arguments (embed_dim, depth, num_heads) of an architecture name (``arch`` or ``arch.tag``)."""
    arch = name.split(".", 1)[0]
    if arch not in _ARCHS:
        raise BackboneError(f"unknown backbone {name!r}; valid names: {', '.join(_ARCHS)}")
    if "." in name:
        get_pretrained_cfg(name)
    return dict(_ARCHS[arch])


def create_backbone(
        name: str,
        output: str = "pooled",
        num_frames: int = 16,
        img_size: Union[int, Sequence[int]] = 224,
        **overrides,
) -> VideoMAE:
    """Build a VideoMAE backbone by name (randomly initialised; load weights with ``load_pretrained``).

    Args:
        name: one of :func:`list_backbones` (an ``arch.tag`` from :func:`list_pretrained` is accepted too).
        output: "pooled" or "map".
        num_frames: input frames.
        img_size: input size.
        **overrides: any other :class:`VideoMAE` constructor argument (drop_path_rate, attn_impl ...).

    Returns:
        The backbone.
    """
    kwargs = arch_config(name)
    kwargs.update(overrides)
    return VideoMAE(output=output, num_frames=num_frames, img_size=img_size, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Cost model (VIDEOMAE.md §7.1)
# ----------------------------------------------------------------------------------------------------


def count_parameters(embed_dim: int, depth: int, mlp_ratio: float = 4.0, patch_size: int = 16,
                     tubelet_size: int = 2, in_chans: int = 3, num_classes: int = 0) -> int:
    """Parameter count from the constructor shapes (no allocation); backbone incl. its final/fc norm.

    Patch embed ``k*D + D`` (k = in_chans*tubelet*patch^2); per block two LNs ``4*D``, qkv ``3*D*D``,
    q/v biases ``2*D``, proj ``D*D + D``, MLP ``2*D*hid + hid + D``; final norm ``2*D``; head ``K*D + K``.
    """
    d, hid = embed_dim, mlp_width(embed_dim, mlp_ratio)
    k = in_chans * tubelet_size * patch_size * patch_size
    block = (2 * 2 * d) + (3 * d * d + 2 * d) + (d * d + d) + (d * hid + hid) + (hid * d + d)
    head = num_classes * d + num_classes if num_classes else 0
    return k * d + d + depth * block + 2 * d + head


def forward_macs(model: VideoMAE, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass (the "FLOPs" of papers and mmaction2).

    Patch embedding N*D*k, per block 12*N*D^2 (linear layers, mlp_ratio 4 generalised) + 2*N^2*D
    (q k^T and attn v), plus the head. Elementwise ops, norms and softmax are ignored.
    """
    n, d = model.num_tokens, model.embed_dim
    hid = mlp_width(d, model.mlp_ratio)
    k = model.in_chans * model.tubelet_size * model.patch_size ** 2
    per_block = n * (3 * d * d + d * d + 2 * d * hid) + 2 * n * n * d
    head = model.num_classes * d
    return batch * (n * d * k + model.depth * per_block + head)


def flops_per_clip(model: VideoMAE, train: bool = False) -> float:
    """True FLOPs (2 per MAC) per clip: forward, or forward + backward (~3x forward) when ``train``."""
    return 2.0 * forward_macs(model) * (3.0 if train else 1.0)


def mfu(flops: float, seconds: float, peak_flops: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: achieved FLOP/s divided by the device peak (None when the peak is unknown)."""
    if not peak_flops or seconds <= 0:
        return None
    return flops / seconds / peak_flops

