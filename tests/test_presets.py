"""Presets, the recognizer composition, inference helpers and pretrained loading (SEED.md §2, §4, §6.4, §7)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from microact.config import load_config
from microact.errors import MicroactError
from microact.losses import build_loss
from microact.ma52 import FINE_TO_COARSE
from microact.models import create_model, list_models
from microact.models.presets import OVERRIDES, create_model_from_config, get_preset, loss_for
from microact.metrics import predict_coarse
from microact.models.recognizer import RecognizerOutput, coarse_scores

TINY = dict(num_frames=4, img_size=32)  # token grid (2, 2, 2)
SEED_ROWS = [
    "videomae_b_ssv2_timesformer", "videomae_b_k710_timesformer", "videomae_b_k710_frame_i3d",
    "videomae_b_k710_frame_coarse_i3d", "videomae_b_k710_frame_coarse_tsn", "videomae_l_k700_timesformer",
    "videomae_h_timesformer", "videomae_b_k710_twostream_i3d", "videomae_b_k710_twostream_shared_i3d",
    "videomae_b_k710_flow_i3d",
    "videomae_tiny_frame_coarse_tsn",
    "videomae_tiny_timesformer", "videomae_test_frame_coarse_tsn",
]


def n_params(module, prefix=""):
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


def vit_params(d, depth, k=3 * 2 * 16 * 16):
    """VideoMAE ViT parameters from VIDEOMAE.md §1 shapes: patch conv, blocks (q/v biases, no k bias), final LN."""
    block = 2 * (2 * d) + (3 * d * d + 2 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return (k * d + d) + depth * block + 2 * d


# ---- presets --------------------------------------------------------------------------------------


def test_every_preset_builds_on_meta():
    assert set(SEED_ROWS) <= set(list_models())
    assert list_models("timesformer") == [n for n in list_models() if "timesformer" in n]
    assert "videomae_b_k710_frame_coarse_tsn" in list_models("videomae_b_*_tsn")
    for name in list_models():
        p = get_preset(name)
        with torch.device("meta"):
            model = create_model(name)
        assert model.preset.loss == p.loss == loss_for(name)
        kind = "pooled" if p.head == "timesformer" else "map"
        assert getattr(model.backbone, "output") == kind, name
        assert model.has_frame == p.use_frame and model.has_coarse == p.use_coarse, name
        assert p.num_frames == 16 and p.img_size == 224


def test_vit_b_best_model_parameter_counts():
    with torch.device("meta"):
        model = create_model("videomae_b_k710_frame_coarse_tsn")
    assert vit_params(768, 12) == 86_227_200
    assert n_params(model, "backbone.") == 86_227_200
    assert n_params(model) == 86_465_339
    assert n_params(model) - n_params(model, "backbone.") == 238_139
    assert n_params(model, "cls_head.fc_cls.") == 39_936
    assert n_params(model, "cls_head.fc_coarse_cls.") == 5_376
    assert n_params(model, "fc_frame.") == 113_716
    assert n_params(model, "fc_coarse_cls_frame.") == 79_111
    # Optimiser rules match by substring: every backbone name says "backbone", no head name says "norm".
    for name, _ in model.named_parameters():
        if not name.startswith("backbone."):
            assert "norm" not in name and "backbone" not in name, name


def test_large_huge_and_two_stream_sizes():
    with torch.device("meta"):
        large, huge = create_model("videomae_l_k700_timesformer"), create_model("videomae_h_timesformer")
        two = create_model("videomae_b_k710_twostream_i3d")
    assert n_params(large, "backbone.") == vit_params(1024, 24)
    assert n_params(huge, "backbone.") == vit_params(1280, 32)
    assert n_params(large) - n_params(large, "backbone.") == 1024 * 52 + 52
    assert two.backbone.embed_dim == 1536 and n_params(two, "backbone.") == 2 * 86_227_200
    assert tuple(two.fc_frame.se.fc[0].weight.shape) == (96, 1536)


def test_preset_records_for_the_readme():
    best = get_preset("videomae_b_k710_frame_coarse_tsn")
    assert best.checkpoint == "vit_b_hybrid_pt_800e_k710_ft.pth"
    assert (best.f1_test_trainval, best.f1_test_train, best.f1_val) == (73.13, 71.18, 72.70)
    assert get_preset("videomae_b_ssv2_timesformer").checkpoint == "vit_b_hybrid_pt_800e_ssv2_ft.pth"
    assert get_preset("videomae_l_k700_timesformer").checkpoint == "vit_l_hybrid_pt_800e_k700_ft.pth"
    assert "unclear" in get_preset("videomae_h_timesformer").notes
    assert "reconstructed" in get_preset("videomae_b_k710_timesformer").notes


def test_unknown_names_are_clear_errors():
    with pytest.raises(MicroactError, match="videomae_b_k710_frame_coarse_tsn"):
        create_model("videomae_b_k710_frame_coarse_tns")
    with pytest.raises(MicroactError, match="unknown override 'dropout'.*head_dropout"):
        create_model("videomae_test_frame_coarse_tsn", dropout=0.1)
    with pytest.raises(MicroactError, match="TimeSformer"):
        create_model("videomae_tiny_timesformer", use_frame=True, **TINY)
    with pytest.raises(MicroactError, match="use_frame"):
        create_model("videomae_test_frame_coarse_tsn", use_frame=False, **TINY)
    assert "load_final_norm" in OVERRIDES and "margin_mode" in OVERRIDES


def test_overrides_reach_the_modules():
    model = create_model("videomae_test_frame_coarse_tsn", frame_layout="temporal", se_mode="gate",
                         margin_mode="target", arcface_scale=16.0, arcface_margin=0.3, head_dropout=0.1,
                         num_classes=52, drop_path_rate=0.1, attn_impl="manual", **TINY)
    assert model.fc_frame.layout == "temporal" and model.fc_coarse_cls_frame.se.se_mode == "gate"
    fc = model.cls_head.fc_cls
    assert (fc.margin_mode, fc.scale, fc.margin) == ("target", 16.0, 0.3)
    assert model.cls_head.dropout.p == 0.1
    assert model.backbone.grid == (2, 2, 2)
    no_coarse = create_model("videomae_test_frame_coarse_tsn", use_coarse=False, **TINY)
    assert not no_coarse.has_coarse and no_coarse.preset.loss == "cef1_double"
    assert loss_for("videomae_test_frame_coarse_tsn", use_coarse=False) == "cef1_double"
    lead_only = create_model("videomae_test_frame_coarse_tsn", use_coarse=False, use_frame=False, **TINY)
    assert lead_only.preset.loss == "cef1" and not lead_only.has_frame


def test_create_model_from_config():
    cfg = load_config(None, ["model.preset=videomae_test_frame_coarse_tsn", "data.clip_len=4", "data.img_size=32",
                             "frame_head.layout=temporal", "arcface.margin_mode=target", "model.head_dropout=0.2"])
    model = create_model_from_config(cfg)
    assert model.backbone.num_frames == 4 and model.fc_frame.layout == "temporal"
    assert model.cls_head.fc_cls.margin_mode == "target" and model.cls_head.dropout.p == 0.2


# ---- recognizer -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["videomae_tiny_frame_coarse_tsn", "videomae_tiny_timesformer"])
def test_tiny_presets_forward_shapes(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY)
    out = model(torch.randn(2, 3, 4, 32, 32))
    assert out.fine.shape == (2, 52)
    if model.has_frame:
        assert out.fine_frame.shape == (2, 2, 52)
        assert out.coarse.shape == (2, 7) and out.coarse_frame.shape == (2, 2, 7)
    else:
        assert out.fine_frame is None and out.coarse is None


def test_seed_tuple_structure():
    a, b, c, d = (torch.zeros(1, 52), torch.zeros(1, 8, 52), torch.zeros(1, 7), torch.zeros(1, 8, 7))
    assert RecognizerOutput(a).as_seed_tuple() is a
    lead, frame = RecognizerOutput(a, b).as_seed_tuple()
    assert lead is a and frame is b
    (l2, f2), (c2, cf2) = RecognizerOutput(a, b, c, d).as_seed_tuple()
    assert (l2, f2, c2, cf2) == (a, b, c, d)
    with pytest.raises(ValueError):
        RecognizerOutput(a, None, c, d).as_seed_tuple()


def test_gradients_reach_every_parameter():
    torch.manual_seed(1)
    model = create_model("videomae_test_frame_coarse_tsn", **TINY)
    loss_fn = build_loss(model.preset.loss, 52)
    labels = torch.tensor([0, 9, 30, 45])
    loss = loss_fn(model(torch.randn(4, 3, 4, 32, 32), labels), labels)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if not name.startswith("backbone."):
            assert p.grad.abs().sum() > 0, name


def test_target_margin_uses_labels_in_training():
    torch.manual_seed(2)
    model = create_model("videomae_test_frame_coarse_tsn", margin_mode="target", head_dropout=0.0, **TINY).train()
    x, y = torch.randn(2, 3, 4, 32, 32), torch.tensor([3, 50])
    out = model(x, labels=y)
    plain = model.eval()(x)  # eval: s * cos everywhere
    diff = (out.fine - plain.fine).abs() > 1e-4
    assert diff.tolist() == torch.nn.functional.one_hot(y, 52).bool().tolist()
    coarse_diff = (out.coarse - plain.coarse).abs() > 1e-4
    assert coarse_diff.tolist() == torch.nn.functional.one_hot(torch.tensor([0, 6]), 7).bool().tolist()
    with pytest.raises(MicroactError, match="labels"):
        model.train()(x)


def test_predict_proba_averages_clip_probabilities():
    torch.manual_seed(3)
    model = create_model("videomae_test_frame_coarse_tsn", **TINY).eval()
    x = torch.randn(2, 3, 3, 4, 32, 32)  # 2 videos x 3 clips
    probs = model.predict_proba(x)
    assert probs.shape == (2, 52) and probs.dtype == torch.float32
    with torch.no_grad():
        per_clip = [[torch.softmax(model(x[b, v:v + 1]).fine, dim=1)[0] for v in range(3)] for b in range(2)]
        logits = [[model(x[b, v:v + 1]).fine[0] for v in range(3)] for b in range(2)]
    want = torch.stack([sum(clips) / 3 for clips in per_clip])
    torch.testing.assert_close(probs, want, atol=1e-5, rtol=0)
    want_logit = torch.stack([torch.softmax(sum(ls) / 3, dim=0) for ls in logits])
    torch.testing.assert_close(model.predict_proba(x, average="logit"), want_logit, atol=1e-5, rtol=0)
    single = model.predict_proba(x[:, 0])
    torch.testing.assert_close(single, torch.stack([per_clip[0][0], per_clip[1][0]]), atol=1e-5, rtol=0)
    fine, coarse = model.predict_proba(x, coarse_rule="coarse_head")
    assert coarse.shape == (2, 7)
    torch.testing.assert_close(coarse.sum(dim=1), torch.ones(2))


def test_coarse_rules_against_loops():
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(52), size=5).astype(np.float32)
    q = rng.dirichlet(np.ones(7), size=5).astype(np.float32)
    top1 = [FINE_TO_COARSE[int(np.argmax(row))] for row in p]
    sums = np.array([[sum(row[k] for k in range(52) if FINE_TO_COARSE[k] == c) for c in range(7)] for row in p])
    assert predict_coarse(p).tolist() == top1
    assert predict_coarse(torch.as_tensor(p).numpy()).tolist() == top1
    assert predict_coarse(p, "sum_probs").tolist() == sums.argmax(axis=1).tolist()
    np.testing.assert_allclose(coarse_scores(p, "sum_probs"), sums, atol=1e-6)
    one_hot = coarse_scores(p, "map_top1")
    assert one_hot.argmax(axis=1).tolist() == top1 and one_hot.sum() == 5
    joint = q * sums
    np.testing.assert_allclose(coarse_scores(p, "coarse_head", q), joint / joint.sum(axis=1, keepdims=True),
                               atol=1e-6)
    with pytest.raises(MicroactError):
        coarse_scores(p, "coarse_head")
    with pytest.raises(MicroactError, match="52"):
        coarse_scores(np.ones((2, 12), np.float32) / 12, "sum_probs")
    timesformer = create_model("videomae_tiny_timesformer", **TINY).eval()
    with pytest.raises(MicroactError, match="use_coarse"):
        timesformer.predict_proba(torch.randn(1, 3, 4, 32, 32), coarse_rule="coarse_head")


def test_load_head_state():
    model = create_model("videomae_tiny_timesformer", num_classes=10, **TINY)
    w, b = torch.randn(10, 128), torch.randn(10)
    model.load_head_state({"weight": w, "bias": b})
    assert torch.equal(model.cls_head.fc_cls.weight, w) and torch.equal(model.cls_head.fc_cls.bias, b)
    model.load_head_state({"head.weight": 2 * w, "head.bias": b})
    assert torch.equal(model.cls_head.fc_cls.weight, 2 * w)
    with pytest.raises(MicroactError, match=r"\[400, 128\]"):
        model.load_head_state({"weight": torch.randn(400, 128), "bias": torch.randn(400)})
    with pytest.raises(MicroactError, match="not a linear"):
        create_model("videomae_test_frame_coarse_tsn", **TINY).load_head_state({"weight": w, "bias": b})


def test_rgb_diff_refuses_integer_clips_like_the_rgb_path():
    """uint8 frame differences wrap around (3 - 5 = 254); the float scale then turned them into a float tensor that
    passed the backbone's dtype check. Both input modes must refuse un-normalised integer clips."""
    from microact.models.recognizer import rgb_difference

    x = torch.randint(0, 256, (1, 3, 4, 32, 32), dtype=torch.uint8)
    for mode in ("rgb", "rgb_diff"):
        model = create_model("videomae_test_frame_coarse_tsn", input_mode=mode, **TINY).eval()
        with pytest.raises(MicroactError, match="float"):
            model(x)
    xf = x.float()
    ref = torch.cat([xf[:, :, 1:] - xf[:, :, :-1], xf[:, :, -1:] - xf[:, :, -2:-1]], dim=2) * 4.0
    torch.testing.assert_close(rgb_difference(xf), ref)


def test_two_stream_concatenates_rgb_and_flow_maps():
    torch.manual_seed(5)
    model = create_model("videomae_b_k710_twostream_i3d", backbone="videomae_test", **TINY).eval()
    x = torch.randn(2, 6, 4, 32, 32)
    out = model(x)
    assert out.fine.shape == (2, 52) and out.fine_frame.shape == (2, 2, 52)
    with torch.no_grad():
        feat = model.backbone(x)
        want = torch.cat([model.backbone.rgb(x[:, :3]), model.backbone.flow(x[:, 3:])], dim=1)
    assert feat.shape == (2, 128, 2, 2, 2)
    torch.testing.assert_close(feat, want)
    assert all(n.startswith("backbone.") for n, _ in model.named_parameters() if "rgb" in n or "flow" in n)
    with pytest.raises(ValueError, match="6"):
        model(torch.randn(1, 3, 4, 32, 32))


def test_weight_sharing_two_stream_runs_one_backbone_on_both_streams():
    """"RGB+OF (weight sharing)" (SEED.md §7, ModelGroup5): one ViT applied to the RGB clip and to the flow clip,
    maps concatenated as in the two-stream row; half the backbone parameters."""
    torch.manual_seed(6)
    shared = create_model("videomae_b_k710_twostream_shared_i3d", backbone="videomae_test", **TINY).eval()
    separate = create_model("videomae_b_k710_twostream_i3d", backbone="videomae_test", **TINY)
    assert shared.backbone.shared and shared.backbone.flow is None and not separate.backbone.shared
    bb = sum(p.numel() for p in shared.backbone.rgb.parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separate) - count(shared) == bb
    x = torch.randn(2, 6, 4, 32, 32)
    with torch.no_grad():
        feat = shared.backbone(x)
        want = torch.cat([shared.backbone.rgb(x[:, :3]), shared.backbone.rgb(x[:, 3:])], dim=1)
    torch.testing.assert_close(feat, want)
    assert shared(x).fine.shape == (2, 52)


def _random_backbone_file(path, name: str, output: str, seed: int):
    """A backbone with every weight drawn from N(0, 1), saved as safetensors: a checkpoint whose loading shows."""
    from safetensors.torch import save_file

    from microact.models import create_backbone

    torch.manual_seed(seed)
    source = create_backbone(name, output=output, **TINY)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return source, path


def test_pretrained_backbone_is_loaded(tmp_path):
    source, path = _random_backbone_file(tmp_path / "backbone.safetensors", "videomae_test", "map", 6)

    model = create_model("videomae_test_frame_coarse_tsn", pretrained=str(path), **TINY)
    for name, p in source.state_dict().items():
        mine = model.backbone.state_dict()[name]
        if name.startswith("norm."):  # seed-faithful: the final LayerNorm stays fresh (SEED.md §2.2)
            assert not torch.equal(mine, p)
        else:
            assert torch.equal(mine, p), name
    loaded_norm = create_model("videomae_test_frame_coarse_tsn", pretrained=str(path), load_final_norm=True, **TINY)
    assert torch.equal(loaded_norm.backbone.norm.weight, source.norm.weight)


def test_config_default_final_norm_follows_the_seed_per_head(tmp_path):
    """backbone.load_final_norm=false (the default) is the seed: TSN/I3D rows keep a fresh final ``norm`` (lost to
    the rename), while the TimeSformer rows' stock backbone loads the checkpoint's final LN into ``fc_norm``
    (SEED.md §2.2, VIDEOMAE.md §3.6). The config path must agree with create_model(pretrained=...)."""
    # a fine-tuned layout (pooled: the final LN is fc_norm)
    source, path = _random_backbone_file(tmp_path / "ft.safetensors", "videomae_tiny", "pooled", 7)
    base = [f"model.pretrained={path}", "data.clip_len=4", "data.img_size=32"]

    tsn = create_model_from_config(load_config(None, base + ["model.preset=videomae_tiny_frame_coarse_tsn"]))
    assert torch.equal(tsn.backbone.norm.weight, torch.ones(128))  # token map: fresh final norm, as in the seed

    ts = create_model_from_config(load_config(None, base + ["model.preset=videomae_tiny_timesformer"]))
    assert ts.backbone.output == "pooled"
    assert torch.equal(ts.backbone.fc_norm.weight, source.fc_norm.weight)
    assert torch.equal(ts.backbone.fc_norm.bias, source.fc_norm.bias)
    api = create_model("videomae_tiny_timesformer", pretrained=str(path), **TINY)
    assert torch.equal(api.backbone.fc_norm.weight, ts.backbone.fc_norm.weight)

    # backbone.load_final_norm=true (the ablation) loads it in map mode too
    tsn_loaded = create_model_from_config(load_config(None, base + ["model.preset=videomae_tiny_frame_coarse_tsn",
                                                                    "backbone.load_final_norm=true"]))
    assert torch.equal(tsn_loaded.backbone.norm.weight, source.fc_norm.weight)


def test_two_stream_streams_load_the_pretrained_final_norm(tmp_path):
    """The seed's two-stream row lives in its optical-flow tree, whose token-map backbone calls the final LayerNorm
    fc_norm, so both streams load the converted checkpoint's final norm (SEED.md §2.2), unlike the one-stream
    token-map rows; model.overrides={load_final_norm: false} keeps them fresh."""
    source, path = _random_backbone_file(tmp_path / "ft.safetensors", "videomae_test", "pooled", 11)
    base = [f"model.pretrained={path}", "data.clip_len=4", "data.img_size=32", "data.flow_dir=flow",
            "model.preset=videomae_b_k710_twostream_i3d", "model.overrides={backbone: videomae_test}"]

    two = create_model_from_config(load_config(None, base))
    for stream in (two.backbone.rgb, two.backbone.flow):
        assert torch.equal(stream.norm.weight, source.fc_norm.weight)
        assert torch.equal(stream.norm.bias, source.fc_norm.bias)
        assert torch.equal(stream.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    fresh = create_model_from_config(load_config(None, base[:-1] + [
        "model.overrides={backbone: videomae_test, load_final_norm: false}"]))
    assert torch.equal(fresh.backbone.flow.norm.weight, torch.ones_like(source.fc_norm.weight))
    one_stream = create_model_from_config(load_config(None, base[:3] + [
        "model.preset=videomae_b_k710_frame_i3d", "model.overrides={backbone: videomae_test}"]))
    assert torch.equal(one_stream.backbone.norm.weight, torch.ones_like(source.fc_norm.weight))


# ---- bench train smoke test -----------------------------------------------------------------------


def test_bench_train_smoke():
    from microact.bench.train import bench_train, format_report

    res = bench_train("videomae_test_frame_coarse_tsn", batch=2, precision="bf16", steps=1, device="cpu", **TINY)
    ours, hf = res["microact"], res["hf"]
    assert ours["clips_per_s"] == pytest.approx(2 / ours["step_s"])
    assert res["ratio"] == pytest.approx(ours["clips_per_s"] / hf["clips_per_s"])
    assert ours["peak_mem_bytes"] > 0 and ours["mfu"] is None  # no peak FLOP/s for a CPU
    assert abs(hf["params"] - ours["params"]) < 0.2 * ours["params"]  # same ViT size (heads differ)
    report = format_report(res)
    assert "microact / HF clips/s" in report and "videomae_test_frame_coarse_tsn" in report
    # 42 epochs over the official train (11,250) + val (5,586) lists at the measured rate
    assert res["seed_recipe_projection"]["hours"] == pytest.approx(42 * (11250 + 5586) / ours["clips_per_s"] / 3600)
    assert "707,112 clip passes" in report
