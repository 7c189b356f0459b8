"""Heads of SEED.md §2.3-§2.7: the cosine-margin layer, the frame-level head's index map, parameter counts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from microact.errors import MicroactError
from microact.models.heads import CosineMarginClassifier, FrameLevelHead, I3DHead, PooledHead, TSNHead


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ---- cosine-margin ("ArcFace") layer --------------------------------------------------------------


def ref_arcface(x, w, s=30.0, m=0.5):
    """Plain arccos form of SEED.md §2.4 in float64 numpy."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    c = np.clip(xn @ wn.T, -1 + 1e-7, 1 - 1e-7)
    return s * np.cos(np.arccos(c) + m)


def test_arcface_matches_arccos_form():
    torch.manual_seed(0)
    layer = CosineMarginClassifier(16, 5)
    x = torch.randn(7, 16)
    # Include a feature nearly opposite to class 0 to cover theta > pi - m, where the map turns back.
    x[0] = -layer.weight[0].detach() * 50 + 1e-3 * torch.randn(16)
    got = layer(x).detach().numpy()
    want = ref_arcface(x.numpy(), layer.weight.detach().numpy())
    np.testing.assert_allclose(got[1:], want[1:], atol=2e-4, rtol=0)
    # Near |c| = 1 the map is steep: float32 rounding of c (~6e-8) moves the logit by ~1e-3.
    np.testing.assert_allclose(got[0], want[0], atol=3e-3, rtol=0)
    assert got[0, 0] < -30 * math.cos(0.5)  # theta > pi - m: past the turning point
    assert got.max() <= 30 * math.cos(0.5) + 1e-4 and got.min() >= -30 - 1e-4


def test_arcface_init_logits_are_about_minus_14_4():
    torch.manual_seed(1)
    layer = CosineMarginClassifier(768, 52)
    assert layer.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert not hasattr(layer, "bias") or layer.bias is None
    logits = layer(torch.randn(32, 768))
    assert logits.mean().item() == pytest.approx(30 * math.cos(math.pi / 2 + 0.5), abs=0.1)  # -14.38
    # Random 768-d cosines are ~N(0, 1/768): logits spread by ~s cos(m)/sqrt(768) ~ 1 around the mean.
    assert logits.std().item() == pytest.approx(30 * math.cos(0.5) / math.sqrt(768), rel=0.2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_arcface_runs_in_fp32_under_autocast(dtype):
    torch.manual_seed(2)
    layer = CosineMarginClassifier(32, 6)
    x = torch.randn(4, 32)
    with torch.autocast("cpu", dtype=dtype):
        feat = torch.nn.functional.linear(x, torch.eye(32))  # a low-precision activation, as after the backbone
        assert feat.dtype == dtype
        logits = layer(feat)
    assert logits.dtype == torch.float32
    np.testing.assert_allclose(logits.detach().numpy(), ref_arcface(feat.float().numpy(), layer.weight.detach()),
                               atol=2e-4)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("mode", ["all", "target"])
def test_arcface_finite_at_exact_alignment(sign, mode):
    torch.manual_seed(3)
    layer = CosineMarginClassifier(8, 3, margin_mode=mode).train()
    x = (sign * layer.weight.detach()[1:2] * 7.0).repeat(2, 1).requires_grad_(True)  # |cos| = 1 with class 1
    with torch.autocast("cpu", dtype=torch.float16):
        logits = layer(x, labels=torch.tensor([1, 1]))
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.weight.grad).all()
    # theta = 0 gives s cos(m); theta = pi gives s cos(pi + m) = -s cos(m).
    assert logits[0, 1].item() == pytest.approx(sign * 30 * math.cos(0.5), abs=0.05)


def test_arcface_target_mode_differs_only_on_target_class_in_training():
    torch.manual_seed(4)
    all_mode = CosineMarginClassifier(12, 5, margin_mode="all")
    target = CosineMarginClassifier(12, 5, margin_mode="target")
    target.load_state_dict(all_mode.state_dict())
    x, y = torch.randn(6, 12), torch.tensor([0, 1, 2, 3, 4, 0])
    plain = 30 * torch.as_tensor(ref_arcface(x.numpy(), all_mode.weight.detach(), s=1, m=0.0))  # s * cos
    margined = all_mode(x)
    trained = target.train()(x, labels=y)
    is_target = torch.nn.functional.one_hot(y, 5).bool()
    torch.testing.assert_close(trained[is_target], margined[is_target])
    torch.testing.assert_close(trained[~is_target], plain[~is_target].float(), atol=1e-4, rtol=0)
    # Test time: plain scaled cosine everywhere; the faithful mode keeps the margin at test time.
    torch.testing.assert_close(target.eval()(x), plain.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(all_mode.eval()(x), margined)
    with pytest.raises(MicroactError, match="labels"):
        target.train()(x)


# ---- pooled / TSN heads ---------------------------------------------------------------------------


def test_pooled_head_init_and_forward():
    torch.manual_seed(5)
    head = PooledHead(768, 52).eval()
    assert head.fc_cls.weight.std().item() == pytest.approx(0.02, rel=0.05)
    # mmaction2 truncates at +-2 in absolute units (not std units), which never bites at std 0.02.
    assert head.fc_cls.weight.abs().max().item() > 0.04
    assert torch.count_nonzero(head.fc_cls.bias) == 0
    x = torch.randn(3, 768)
    torch.testing.assert_close(head(x)[0], x @ head.fc_cls.weight.T + head.fc_cls.bias)
    assert head.dropout.p == 0.5


def test_tsn_head_is_mean_dropout_classifier():
    torch.manual_seed(6)
    assert I3DHead is TSNHead
    head = TSNHead(16, 52, use_arcface=True, use_coarse=True).eval()
    x = torch.randn(2, 16, 4, 3, 3)
    fine, coarse = head(x)
    pooled = x.numpy().reshape(2, 16, -1).mean(axis=2)
    np.testing.assert_allclose(fine.detach().numpy(), ref_arcface(pooled, head.fc_cls.weight.detach()), atol=2e-4)
    np.testing.assert_allclose(coarse.detach().numpy(), ref_arcface(pooled, head.fc_coarse_cls.weight.detach()),
                               atol=2e-4)
    # Training mode: the same dropout mask feeds both classifiers (they share the dropped-out feature).
    head.train()
    torch.manual_seed(7)
    fine_t, coarse_t = head(x)
    torch.manual_seed(7)
    dropped = head.dropout(x.mean(dim=(2, 3, 4)))
    torch.testing.assert_close(coarse_t, head.fc_coarse_cls(dropped))
    torch.testing.assert_close(fine_t, head.fc_cls(dropped))
    linear = TSNHead(16, 10, use_arcface=False)
    assert isinstance(linear.fc_cls, torch.nn.Linear) and linear.fc_coarse_cls is None


# ---- frame-level head -----------------------------------------------------------------------------


def crafted_map(b=2, c=16, t=4, h=3, w=2):
    """Map whose value encodes (sample, channel, time): 10000*b + 100*c + t, constant over space."""
    bb, cc, tt = np.meshgrid(np.arange(b), np.arange(c), np.arange(t), indexing="ij")
    v = 10000 * bb + 100 * cc + tt
    return torch.as_tensor(np.broadcast_to(v[..., None, None], (b, c, t, h, w)).copy(), dtype=torch.float64)


def test_channel_group_index_map():
    b, c, t = 2, 16, 4
    x = crafted_map(b, c, t)
    # The backbone hands over a permuted, non-contiguous view; the reshape must follow logical order regardless.
    x_view = x.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)
    assert not x_view.is_contiguous()
    head = FrameLevelHead(c, 5, grid_t=t).double()
    rows = head.frame_features(x_view).numpy()  # [B*T', C]
    assert rows.shape == (b * t, c)
    for bi in range(b):
        for j in range(t):
            for slot in range(c):
                channel = j * (c // t) + slot // t  # SEED.md §2.5 index map
                time = slot % t
                assert rows[bi * t + j, slot] == 10000 * bi + 100 * channel + time


def test_temporal_layout_rows_are_time_slots():
    b, c, t = 2, 16, 4
    head = FrameLevelHead(c, 5, grid_t=t, layout="temporal").double()
    rows = head.frame_features(crafted_map(b, c, t)).numpy()
    for bi in range(b):
        for j in range(t):
            np.testing.assert_array_equal(rows[bi * t + j], 10000 * bi + 100 * np.arange(c) + j)


@pytest.mark.parametrize("se_mode", ["replace", "gate"])
def test_frame_head_forward_by_hand(se_mode):
    torch.manual_seed(8)
    b, c, t, k = 3, 32, 4, 6
    head = FrameLevelHead(c, k, grid_t=t, se_mode=se_mode)
    assert head.fc.weight.std().item() == pytest.approx(0.01, rel=0.3)
    assert torch.count_nonzero(head.fc.bias) == 0
    torch.nn.init.normal_(head.fc.bias)  # make the bias visible in the check
    x = torch.randn(b, c, t, 2, 2)
    w1, w2 = head.se.fc[0].weight.detach().numpy(), head.se.fc[2].weight.detach().numpy()
    assert w1.shape == (c // 16, c) and w2.shape == (c, c // 16)
    v = x.numpy().reshape(b * t, c, 2, 2).mean(axis=(2, 3))
    g = 1 / (1 + np.exp(-(np.maximum(v @ w1.T, 0) @ w2.T)))
    feat = g if se_mode == "replace" else v * g
    want = (feat @ head.fc.weight.detach().numpy().T + head.fc.bias.detach().numpy()).reshape(b, t, k)
    np.testing.assert_allclose(head(x).detach().numpy(), want, atol=1e-5)


def test_frame_head_checks_grid_and_options():
    with pytest.raises(ValueError, match="T'=8"):
        FrameLevelHead(16, 5, grid_t=8)(torch.randn(1, 16, 4, 2, 2))
    with pytest.raises(MicroactError, match="layout"):
        FrameLevelHead(16, 5, layout="time")
    with pytest.raises(MicroactError, match="se_mode"):
        FrameLevelHead(16, 5, se_mode="multiply")


# ---- parameter names and counts (SEED.md §2.7) ----------------------------------------------------


def test_vit_b_head_parameter_counts_and_names():
    fine_frame, coarse_frame = FrameLevelHead(768, 52, 8), FrameLevelHead(768, 7, 8)
    lead = TSNHead(768, 52, use_arcface=True, use_coarse=True)
    assert n_params(fine_frame) == 113_716
    assert n_params(coarse_frame) == 79_111
    assert n_params(lead.fc_cls) == 39_936
    assert n_params(lead.fc_coarse_cls) == 5_376
    assert n_params(lead) + n_params(fine_frame) + n_params(coarse_frame) == 238_139
    assert {n: tuple(p.shape) for n, p in fine_frame.named_parameters()} == {
        "se.fc.0.weight": (48, 768), "se.fc.2.weight": (768, 48), "fc.weight": (52, 768), "fc.bias": (52,)}
    assert {n: tuple(p.shape) for n, p in lead.named_parameters()} == {
        "fc_cls.weight": (52, 768), "fc_coarse_cls.weight": (7, 768)}
