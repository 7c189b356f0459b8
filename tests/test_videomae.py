"""VideoMAE backbone: sizes, position table, attention backends, checkpointing, errors."""
import math

import numpy as np
import pytest
import torch

from microact.errors import MicroactError
from microact.models.videomae import (
    VideoMAE,
    count_parameters,
    create_backbone,
    flops_per_clip,
    forward_macs,
    get_pretrained_cfg,
    list_backbones,
    list_pretrained,
    position_table,
    sinusoid_table,
)

# VIDEOMAE.md §1.1: backbone-only parameter counts and GMACs per 16x224 view.
SPEC_PARAMS = {"videomae_small": 21_879_936, "videomae_base": 86_227_200,
               "videomae_large": 303_860_736, "videomae_huge": 631_607_040}
SPEC_GMACS = {"videomae_small": 56.9, "videomae_base": 180.3, "videomae_large": 596.8, "videomae_huge": 1191.0}
SPEC_HEADS = {"videomae_small": 22_033_936, "videomae_base": 86_534_800,  # + 400-way head
              "videomae_large": 304_270_736, "videomae_huge": 632_119_440}


def tiny(**kw):
    kw.setdefault("num_frames", 4)
    kw.setdefault("img_size", 32)
    return create_backbone("videomae_test", **kw)


@pytest.mark.parametrize("name", list(SPEC_PARAMS))
def test_parameter_counts_match_spec(name):
    with torch.device("meta"):  # shapes only: ViT-H would otherwise allocate 2.5 GB
        model = create_backbone(name)
        with_head = create_backbone(name, num_classes=400)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == SPEC_PARAMS[name]
    assert sum(p.numel() for p in with_head.parameters()) == SPEC_HEADS[name]
    cfg = {"embed_dim": model.embed_dim, "depth": model.depth}
    assert count_parameters(**cfg) == SPEC_PARAMS[name]
    assert round(forward_macs(model) / 1e9, 1) == SPEC_GMACS[name]
    assert flops_per_clip(model, train=True) == pytest.approx(6 * forward_macs(model))
    assert model.num_tokens == 1568 and model.grid == (8, 14, 14)


def test_names_and_pretrained_table():
    assert set(SPEC_PARAMS) | {"videomae_test", "videomae_tiny"} == set(list_backbones())
    with pytest.raises(MicroactError, match="videomae_base"):
        create_backbone("videomae_gigantic")
    cfg = get_pretrained_cfg("videomae_base.internvideo_k710_ft")
    assert cfg.file == "vit_b_hybrid_pt_800e_k710_ft.pth" and cfg.num_classes == 710
    assert all(name.split(".")[0] in list_backbones() for name in list_pretrained())
    assert "cc-by-nc-4.0" in get_pretrained_cfg("videomae_base.mcg_k400_ft").license


def test_output_modes_and_state_dict_names():
    x = torch.randn(2, 3, 4, 32, 48)
    m = create_backbone("videomae_test", output="map", num_frames=4, img_size=(32, 48))
    out = m(x)
    assert out.shape == (2, 64, 2, 2, 3) and m.grid == (2, 2, 3) and m.embed_dim == 64
    sd = m.state_dict()
    assert "pos_embed" not in sd and "norm.weight" in sd and "fc_norm.weight" not in sd
    assert "blocks.1.attn.q_bias" in sd and "blocks.0.attn.qkv.weight" in sd and "blocks.0.attn.qkv.bias" not in sd
    assert {"patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias", "blocks.0.norm2.bias",
            "blocks.0.attn.proj.weight"} <= set(sd)
    p = create_backbone("videomae_test", output="pooled", num_frames=4, img_size=(32, 48))
    assert p(x).shape == (2, 64) and "fc_norm.weight" in p.state_dict() and "norm.weight" not in p.state_dict()


def test_forward_matches_plain_reimplementation():
    """Compute the whole forward pass by hand from the parameters (independent of the module code)."""
    torch.manual_seed(0)
    m = tiny(output="map", pos_embed_mode="analytic").eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(2, 3, 4, 32, 32)
    p = dict(m.named_parameters())
    d, h = 64, 2
    tokens = []
    for t in range(2):  # explicit tubelet patches, token order t, h, w
        for i in range(2):
            for j in range(2):
                patch = x[:, :, 2 * t:2 * t + 2, 16 * i:16 * i + 16, 16 * j:16 * j + 16].reshape(2, -1)
                tokens.append(patch @ p["patch_embed.proj.weight"].reshape(d, -1).T + p["patch_embed.proj.bias"])
    z = torch.stack(tokens, 1)
    pos = torch.tensor([[math.sin(n / 10000 ** (2 * (c // 2) / d)) if c % 2 == 0 else
                         math.cos(n / 10000 ** (2 * (c // 2) / d)) for c in range(d)] for n in range(8)])
    z = z + pos

    def ln(v, name):
        return torch.nn.functional.layer_norm(v, (d,), p[name + ".weight"], p[name + ".bias"], eps=1e-6)

    for b in range(2):
        pre = f"blocks.{b}."
        y = ln(z, pre + "norm1")
        w = p[pre + "attn.qkv.weight"]
        q = y @ w[:d].T + p[pre + "attn.q_bias"]
        k = y @ w[d:2 * d].T
        v = y @ w[2 * d:].T + p[pre + "attn.v_bias"]
        heads = []
        for hh in range(h):
            sl = slice(hh * 32, hh * 32 + 32)
            a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(32), -1)
            heads.append(a @ v[..., sl])
        z = z + torch.cat(heads, -1) @ p[pre + "attn.proj.weight"].T + p[pre + "attn.proj.bias"]
        y = ln(z, pre + "norm2")
        hid = y @ p[pre + "mlp.fc1.weight"].T + p[pre + "mlp.fc1.bias"]
        hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))
        z = z + hid @ p[pre + "mlp.fc2.weight"].T + p[pre + "mlp.fc2.bias"]
    z = ln(z, "norm")
    expected = z.reshape(2, 2, 2, 2, d).permute(0, 4, 1, 2, 3)
    with torch.no_grad():
        got = m(x)
    assert torch.allclose(got, expected, atol=1e-5)


def test_sinusoid_table_matches_formula():
    n, d = 37, 16
    ref = np.zeros((n, d))
    for pos in range(n):
        for j in range(d):
            angle = pos / np.power(10000, 2 * (j // 2) / d)
            ref[pos, j] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
    assert np.allclose(sinusoid_table(n, d).numpy(), ref, atol=1e-6)
    assert torch.equal(tiny(pos_embed_mode="analytic").pos_embed, sinusoid_table(8, 64)[None])
    # Default "interpolate": the 8x14x14 table resampled, so a 2x2x2 grid gets a different table.
    assert tiny().pos_embed.shape == (1, 8, 64) and not torch.allclose(tiny().pos_embed, sinusoid_table(8, 64)[None])
    assert torch.equal(tiny(pretrained_grid=(2, 2, 2)).pos_embed, sinusoid_table(8, 64)[None])


@pytest.mark.parametrize("frames,size", [(8, 224), (16, 224), (32, 224), (16, 160), (16, 320), (32, 320)])
def test_position_table_shapes(frames, size):
    grid = (frames // 2, size // 16, size // 16)
    table = position_table(grid, 32)
    assert table.shape == (1, grid[0] * grid[1] * grid[2], 32) and table.dtype == torch.float32
    assert position_table(grid, 32, mode="analytic").shape == table.shape


def test_position_table_same_grid_is_identity_and_time_is_linear():
    base = sinusoid_table(8 * 14 * 14, 32)
    assert torch.equal(position_table((8, 14, 14), 32)[0], base)
    slices = base.double().reshape(8, 196, 32)
    # 16 -> 8 frames (T' 8 -> 4), half-pixel centres: output t samples source 2t + 0.5.
    got = position_table((4, 14, 14), 32)[0].reshape(4, 196, 32).double()
    assert torch.allclose(got, (slices[0::2] + slices[1::2]) / 2, atol=1e-6)
    # 16 -> 32 frames: output t samples source t/2 - 0.25 (clamped at the ends).
    got = position_table((16, 14, 14), 32)[0].reshape(16, 196, 32).double()
    assert torch.allclose(got[0], slices[0], atol=1e-6)
    assert torch.allclose(got[1], 0.75 * slices[0] + 0.25 * slices[1], atol=1e-6)
    assert torch.allclose(got[2], 0.25 * slices[0] + 0.75 * slices[1], atol=1e-6)
    assert torch.allclose(got[15], slices[7], atol=1e-6)
    assert not torch.allclose(position_table((16, 14, 14), 32, mode="analytic"), position_table((16, 14, 14), 32))


def _cubic_resize_1d(a, out_len, axis):
    """Keys cubic convolution (a = -0.75), half-pixel centres, clamped borders: PyTorch's bicubic rule."""
    in_len = a.shape[axis]
    scale = in_len / out_len
    a = np.moveaxis(a, axis, 0)
    out = np.zeros((out_len,) + a.shape[1:])

    def w(x):
        x = abs(x)
        if x <= 1:
            return (1.25 * x - 2.25) * x * x + 1
        if x < 2:
            return ((-0.75 * x + 3.75) * x - 6) * x + 3
        return 0.0

    for i in range(out_len):
        src = (i + 0.5) * scale - 0.5
        f = math.floor(src)
        for k in range(f - 1, f + 3):
            out[i] += w(src - k) * a[min(max(k, 0), in_len - 1)]
    return np.moveaxis(out, 0, axis)


def test_position_table_space_is_bicubic_per_time_slice():
    base = sinusoid_table(8 * 14 * 14, 8).double().numpy().reshape(8, 14, 14, 8)
    ref = _cubic_resize_1d(_cubic_resize_1d(base, 20, 1), 20, 2)  # 224 -> 320 px
    got = position_table((8, 20, 20), 8)[0].numpy().reshape(8, 20, 20, 8)
    assert np.allclose(got, ref, atol=1e-5)


def test_model_builds_for_other_frame_counts_and_sizes():
    m = create_backbone("videomae_test", output="map", num_frames=8, img_size=48)
    assert m(torch.randn(1, 3, 8, 48, 48)).shape == (1, 64, 4, 3, 3)
    assert torch.allclose(m.pos_embed, position_table((4, 3, 3), 64))


def test_wrong_input_shape_is_a_clear_error():
    m = tiny()
    with pytest.raises(MicroactError, match=r"expected \[B, 3, 4, 32, 32\].*got \[1, 3, 8, 32, 32\]"):
        m(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(MicroactError, match="got"):
        m(torch.randn(3, 4, 32, 32))
    with pytest.raises(MicroactError, match="float"):
        m(torch.zeros(1, 3, 4, 32, 32, dtype=torch.uint8))
    with pytest.raises(MicroactError, match="divisible"):
        create_backbone("videomae_test", num_frames=5)


def test_sdpa_matches_manual_attention():
    torch.manual_seed(1)
    a = tiny(attn_impl="sdpa")
    b = tiny(attn_impl="manual")
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for blk in a.blocks:  # non-zero q/v biases so the bias path is exercised
            blk.attn.q_bias.normal_()
            blk.attn.v_bias.normal_()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    ya, yb = a(x), b(x)
    assert (ya - yb).abs().max() <= 1e-5
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5, rtol=1e-4), n


@pytest.mark.parametrize("checkpointing", [False, True])
def test_sdpa_kernel_preference_is_in_force_for_every_attention_call(monkeypatch, checkpointing):
    """model.sdpa_kernel sets PyTorch's kernel order around each SDPA call, recomputed (checkpointed) ones included."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend

    from microact.models.videomae import set_sdpa_kernel

    default_order = torch._C._get_sdp_priority_order()
    orders = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):  # records the order in force, then runs the real kernel
        orders.append(list(torch._C._get_sdp_priority_order()))
        return real_sdpa(*args, **kwargs)

    torch.manual_seed(3)
    auto = tiny(output="map", grad_checkpointing=checkpointing)
    preferring = tiny(output="map", grad_checkpointing=checkpointing, sdpa_kernel="efficient")
    preferring.load_state_dict(auto.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    y_auto = auto(x)
    y_auto.sum().backward()
    assert orders and all(o == default_order for o in orders)
    orders.clear()
    y = preferring(x)
    y.sum().backward()
    assert len(orders) == auto.depth * (2 if checkpointing else 1)
    assert all(o[0] == int(SDPBackend.EFFICIENT_ATTENTION) and sorted(o) == sorted(default_order) for o in orders)
    assert torch._C._get_sdp_priority_order() == default_order  # restored after each call
    # The CPU has one fused kernel: same numbers whatever the preference
    assert torch.equal(y, y_auto)
    orders.clear()
    assert set_sdpa_kernel(preferring, "cudnn") == preferring.depth
    preferring(x)
    assert all(o[0] == int(SDPBackend.CUDNN_ATTENTION) for o in orders)


def test_sdpa_kernel_names_are_checked_and_reported():
    from microact.models import create_model
    from microact.models.videomae import attention_kernel_of, sdpa_kernel_in_use

    with pytest.raises(MicroactError, match="sdpa_kernel: expected one of auto, cudnn, flash, efficient, got 'fast'"):
        tiny(sdpa_kernel="fast")
    with pytest.raises(MicroactError, match="expected one of"):
        create_model("videomae_test_frame_coarse_tsn", sdpa_kernel="fast")
    # On the CPU SDPA has its own fused (flash) kernel for float32, whatever the CUDA preference
    assert sdpa_kernel_in_use("cpu", torch.float32, 2, 32, 32) == "flash"
    assert sdpa_kernel_in_use("cpu", torch.float32, 2, 32, 32, preference="cudnn") == "flash"
    model = create_model("videomae_test_frame_coarse_tsn", num_frames=4, img_size=32, sdpa_kernel="flash")
    assert attention_kernel_of(model, "cpu", torch.float32) == "flash"
    assert attention_kernel_of(tiny(attn_impl="manual"), "cpu", torch.float32) is None


def test_grad_checkpointing_gives_same_grads():
    torch.manual_seed(2)
    a = tiny(output="map")
    b = tiny(output="map", grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    a(x).pow(2).mean().backward()
    b(x).pow(2).mean().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n
    b.set_grad_checkpointing(False)
    assert not b.grad_checkpointing


def test_drop_path_rates_and_training_behaviour():
    m = create_backbone("videomae_tiny", num_frames=4, img_size=32, drop_path_rate=0.3)
    rates = [blk.drop_path.p for blk in m.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    x = torch.randn(4, 3, 4, 32, 32)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    y1 = m(x)
    torch.manual_seed(1)
    assert not torch.allclose(y1, m(x))


def test_layer_id_and_no_weight_decay():
    m = create_backbone("videomae_test", num_classes=3)
    ids = {n: m.layer_id(n) for n, _ in m.named_parameters()}
    assert ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.q_bias"] == 1 and ids["blocks.1.mlp.fc2.weight"] == 2
    assert ids["fc_norm.weight"] == 3 and ids["head.weight"] == 3
    assert m.layer_id("backbone.blocks.1.norm1.weight") == 2
    nwd = m.no_weight_decay()
    assert "blocks.0.attn.q_bias" in nwd and "fc_norm.weight" in nwd and "head.bias" in nwd
    assert "blocks.0.attn.qkv.weight" not in nwd


def test_init_follows_the_official_recipe():
    torch.manual_seed(0)
    m = create_backbone("videomae_small", num_frames=2, img_size=16, num_classes=10, head_init_scale=0.001)
    w = m.blocks[0].mlp.fc1.weight
    assert abs(w.std().item() - 0.02) < 0.001 and w.abs().max() <= 2.0
    assert m.blocks[0].mlp.fc1.bias.abs().max() == 0 and m.blocks[0].attn.q_bias.abs().max() == 0
    assert torch.equal(m.blocks[0].norm1.weight, torch.ones(384))
    assert m.head.weight.std().item() == pytest.approx(0.02 * 0.001, rel=0.1)


def test_head_and_bf16_autocast():
    m = tiny(num_classes=5, head_dropout=0.5).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    assert m(x).shape == (2, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    assert torch.allclose(y.float(), m(x), atol=0.1)
    with pytest.raises(MicroactError):
        VideoMAE(64, 2, 2, output="map", num_classes=5)
