"""Checkpoint reading and key mapping: every layout with its real names, HF parity, safety."""
import argparse
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file, safe_open
from torch import nn

from microact.errors import MicroactError
from microact.models.checkpoints import (
    CheckpointError,
    cli_convert,
    convert_state_dict,
    load_pretrained,
    read_checkpoint,
)
from microact.models.videomae import create_backbone, sinusoid_table

T, S = 4, 32  # tiny clips: 4 frames of 32 px -> 2x2x2 tokens


def randomize(module, seed=0):
    """Random values in every parameter (biases, q/v biases and LayerNorms too), so no mapping hides."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_ln_weight = p.ndim == 1 and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if is_ln_weight else 0.0))
    return module


def source_model(output="pooled", num_classes=0, seed=0):
    return randomize(create_backbone("videomae_test", output=output, num_frames=T, img_size=S,
                                     num_classes=num_classes), seed)


def fresh(output="pooled", num_classes=0, **kw):
    return create_backbone("videomae_test", output=output, num_frames=T, img_size=S, num_classes=num_classes, **kw)


@pytest.fixture(scope="module")
def clip():
    return torch.randn(2, 3, T, S, S, generator=torch.Generator().manual_seed(5))


def same_outputs(a, b, x, atol=0.0):
    with torch.no_grad():
        return (a.eval()(x) - b.eval()(x)).abs().max().item() <= atol


# ---------------------------------------------------------------------------------------------------
# Layouts written with their real key names
# ---------------------------------------------------------------------------------------------------


def test_official_module_and_model_containers(tmp_path, clip):
    src = source_model(num_classes=7)
    for container in ("module", "model"):
        path = tmp_path / f"{container}.pth"
        extra = {"epoch": 3, "args": argparse.Namespace(lr=1e-3, model="vit_base")} if container == "model" else {}
        torch.save({container: src.state_dict(), **extra}, path)
        dst = fresh(num_classes=7)
        report = load_pretrained(dst, path, keep_head=True)
        assert report.layout == "official" and not report.missing and not report.unexpected and report.head_loaded
        assert same_outputs(src, dst, clip)
        # Without keep_head, the 7-way head is dropped and stays fresh.
        dst2 = fresh(num_classes=7)
        report = load_pretrained(dst2, path)
        assert not report.head_loaded and any("head.weight" in d for d in report.dropped)
        assert not torch.equal(dst2.head.weight, src.head.weight)
        assert torch.equal(dst2.fc_norm.weight, src.fc_norm.weight)


def test_ddp_and_compile_prefixes(tmp_path, clip):
    src = source_model()
    sd = {f"module._orig_mod.{k}": v for k, v in src.state_dict().items()}
    torch.save(sd, tmp_path / "ddp.pt")
    dst = fresh()
    load_pretrained(dst, tmp_path / "ddp.pt")
    assert same_outputs(src, dst, clip)


def pretrain_state_dict(enc):
    """VideoMAE pre-training layout: encoder.* (final LN encoder.norm), decoder, encoder_to_decoder, mask_token."""
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    d = enc.embed_dim
    sd.update({"encoder_to_decoder.weight": torch.randn(32, d), "mask_token": torch.zeros(1, 1, 32),
               "decoder.blocks.0.attn.qkv.weight": torch.randn(96, 32), "decoder.norm.weight": torch.ones(32),
               "decoder.head.weight": torch.randn(1536, 32)})
    return sd


def test_pretrain_encoder_layout_and_final_norm_rule(tmp_path, clip):
    enc = source_model(output="map")
    path = tmp_path / "pretrain.pth"
    torch.save({"model": pretrain_state_dict(enc)}, path)

    # map mode, faithful default: the final norm is NOT loaded (gamma=1, beta=0 as in the seed).
    dst = fresh(output="map")
    report = load_pretrained(dst, path)
    assert report.layout == "official-pretrain"
    assert report.skipped_final_norm == ["norm.weight", "norm.bias"]
    assert torch.equal(dst.norm.weight, torch.ones(64)) and torch.equal(dst.norm.bias, torch.zeros(64))
    assert sum("pre-training decoder" in d for d in report.dropped) == 5
    assert torch.equal(dst.blocks[1].attn.v_bias, enc.blocks[1].attn.v_bias)
    assert not same_outputs(enc, dst, clip, atol=1e-3)

    # load_final_norm=True: identical to the source.
    dst = fresh(output="map")
    report = load_pretrained(dst, path, load_final_norm=True)
    assert not report.skipped_final_norm and same_outputs(enc, dst, clip)

    # pooled target: fc_norm <- encoder.norm (what the seed's rename does for the TimeSformer rows).
    dst = fresh(output="pooled")
    load_pretrained(dst, path)
    assert torch.equal(dst.fc_norm.weight, enc.norm.weight) and torch.equal(dst.fc_norm.bias, enc.norm.bias)


def test_map_mode_load_final_norm_from_fc_norm(tmp_path):
    src = source_model(output="pooled")
    dst = fresh(output="map")
    load_pretrained(dst, src.state_dict(), load_final_norm=True)
    assert torch.equal(dst.norm.weight, src.fc_norm.weight)


def mmaction2_state_dict(model):
    """mmaction2 names: backbone.patch_embed.projection, mlp.layers.0.0 / 1, persistent pos_embed, cls_head.fc_cls."""
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace("patch_embed.proj.", "patch_embed.projection.")
        k = k.replace(".mlp.fc1.", ".mlp.layers.0.0.").replace(".mlp.fc2.", ".mlp.layers.1.")
        sd[k.replace("head.", "cls_head.fc_cls.") if k.startswith("head.") else "backbone." + k] = v
    sd["backbone.pos_embed"] = sinusoid_table(model.num_tokens, model.embed_dim)[None]
    return sd


def test_mmaction2_layout(tmp_path, clip):
    src = source_model(num_classes=5)
    sd = mmaction2_state_dict(src)
    assert "backbone.blocks.0.mlp.layers.0.0.weight" in sd and "cls_head.fc_cls.weight" in sd
    path = tmp_path / "mma.pth"
    torch.save({"state_dict": sd, "meta": {"epoch": 1}}, path)
    dst = fresh(num_classes=5)
    report = load_pretrained(dst, path, keep_head=True)
    assert report.layout == "mmaction2" and not report.notes
    assert any("backbone.pos_embed" in d for d in report.dropped)
    assert same_outputs(src, dst, clip)


def test_stale_position_table_is_ignored_with_a_note(tmp_path, clip):
    src = source_model()
    sd = mmaction2_state_dict(src)
    sd["backbone.pos_embed"] = torch.randn_like(sd["backbone.pos_embed"])  # e.g. a learned table
    dst = fresh()
    report = load_pretrained(dst, sd)
    assert any("position table differs" in n for n in report.notes)
    assert same_outputs(src, dst, clip)  # the analytic table is used regardless


def test_recognizer_like_module_gets_backbone_and_head(tmp_path, clip):
    class TinyRecognizer(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = fresh(output="map")
            self.fc = nn.Linear(64, 5)

        def load_head_state(self, head_sd):
            self.fc.weight.data.copy_(head_sd["head.weight"])
            self.fc.bias.data.copy_(head_sd["head.bias"])

    src = source_model(num_classes=5)
    rec = TinyRecognizer()
    report = load_pretrained(rec, mmaction2_state_dict(src), keep_head=True, load_final_norm=True)
    assert report.head_loaded and torch.equal(rec.fc.weight, src.head.weight)
    assert torch.equal(rec.backbone.norm.weight, src.fc_norm.weight)  # map norm <- fc_norm when asked
    assert torch.equal(rec.backbone.blocks[0].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)


# ---------------------------------------------------------------------------------------------------
# Hugging Face parity
# ---------------------------------------------------------------------------------------------------


def hf_config(use_mean_pooling):
    from transformers import VideoMAEConfig
    return VideoMAEConfig(image_size=S, num_frames=T, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=256, num_labels=5, layer_norm_eps=1e-6,
                          use_mean_pooling=use_mean_pooling)


@pytest.fixture(scope="module")
def hf_classifier():
    from transformers import VideoMAEForVideoClassification
    torch.manual_seed(0)
    hf = VideoMAEForVideoClassification(hf_config(True)).eval()
    hf.fc_norm.eps = 1e-6  # HF builds fc_norm with PyTorch's 1e-5; the original (and microact) use 1e-6
    randomize(hf, seed=3)  # the key Linear has no bias: a VideoMAE k bias is always zero
    assert hf.videomae.encoder.layer[0].attention.attention.key.bias is None
    return hf


def hf_logits(hf, x):
    with torch.no_grad():
        return hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits  # HF takes [B, T, C, H, W]


@pytest.mark.parametrize("source", ["folder", "bare_safetensors", "in_memory_v5"])
def test_hf_classifier_parity(hf_classifier, tmp_path, clip, source):
    hf = hf_classifier
    sd = hf.state_dict()
    assert "videomae.encoder.layer.0.attention.attention.query.bias" in sd  # transformers 5 in-memory names
    assert sd["videomae.encoder.layer.0.attention.attention.query.bias"].abs().max() > 0
    if source == "in_memory_v5":
        arg = sd
    else:
        hf.save_pretrained(tmp_path / "hf")
        arg = tmp_path / "hf"
        if source == "bare_safetensors":
            arg = tmp_path / "model.safetensors"
            (tmp_path / "hf" / "model.safetensors").rename(arg)
        names = set(read_checkpoint(arg))
        assert "videomae.encoder.layer.0.attention.attention.q_bias" in names  # saved files use q_bias/v_bias
    # HF builds the sinusoid for its own (tiny) grid; at 16x224 "interpolate" and "analytic" coincide.
    ours = fresh(num_classes=5, pos_embed_mode="analytic")
    report = load_pretrained(ours, arg, keep_head=True)
    assert report.layout.startswith("hf") and not report.missing and not report.unexpected
    with torch.no_grad():
        diff = (ours.eval()(clip) - hf_logits(hf, clip)).abs().max().item()
    assert diff <= 1e-5


def test_hf_token_map_parity():
    from transformers import VideoMAEModel
    hf = randomize(VideoMAEModel(hf_config(False)).eval(), seed=4)
    x = torch.randn(1, 3, T, S, S)
    ours = fresh(output="map", pos_embed_mode="analytic")
    report = load_pretrained(ours, hf.state_dict(), load_final_norm=True)
    assert report.layout == "hf-v5"
    with torch.no_grad():
        ref = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).last_hidden_state  # [B, N, D], after videomae.layernorm
        got = ours.eval()(x).flatten(2).transpose(1, 2)  # [B, D, T', H', W'] -> [B, N, D]
    assert (got - ref).abs().max().item() <= 1e-5


def test_hf_gradients_match():
    """Backward parity: the gradients of every weight (ours fuse q/k/v into one matrix) and of the input equal HF's."""
    from transformers import VideoMAEModel
    hf = randomize(VideoMAEModel(hf_config(False)), seed=5)
    ours = fresh(output="map", pos_embed_mode="analytic")
    load_pretrained(ours, hf.state_dict(), load_final_norm=True)
    x = torch.randn(2, 3, T, S, S)
    x_ours, x_hf = x.clone().requires_grad_(), x.clone().requires_grad_()
    target = torch.randn(2, ours.num_tokens, 64)
    (ours(x_ours).flatten(2).transpose(1, 2) * target).sum().backward()  # [B, D, T', H', W'] -> [B, N, D]
    (hf(pixel_values=x_hf.permute(0, 2, 1, 3, 4)).last_hidden_state * target).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_hf.grad, rtol=1e-4, atol=1e-5)
    for i, layer in enumerate(hf.encoder.layer):
        att, blk = layer.attention.attention, ours.blocks[i]
        fused = torch.cat([att.query.weight.grad, att.key.weight.grad, att.value.weight.grad])  # [3D, D]
        torch.testing.assert_close(blk.attn.qkv.weight.grad, fused, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(blk.attn.q_bias.grad, att.query.bias.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(blk.attn.v_bias.grad, att.value.bias.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(blk.mlp.fc1.weight.grad, layer.intermediate.dense.weight.grad, rtol=1e-4,
                                   atol=1e-5)
    torch.testing.assert_close(ours.patch_embed.proj.weight.grad,
                               hf.embeddings.patch_embeddings.projection.weight.grad, rtol=1e-4, atol=1e-5)


def test_hf_nonzero_key_bias_is_refused():
    from transformers import VideoMAEModel
    hf = VideoMAEModel(hf_config(True))
    sd = dict(hf.state_dict())
    sd["encoder.layer.1.attention.attention.key.bias"] = torch.ones(64)
    with pytest.raises(CheckpointError, match="encoder.layer.1.attention.attention.key.bias|blocks.1"):
        convert_state_dict(sd)


def test_convert_state_dict_fuses_hf_qkv_in_q_k_v_order():
    from transformers import VideoMAEModel
    hf = randomize(VideoMAEModel(hf_config(True)), seed=6)
    body, head, layout = convert_state_dict(hf.state_dict())
    att = hf.encoder.layer[1].attention.attention
    qkv = body["blocks.1.attn.qkv.weight"]
    assert torch.equal(qkv[:64], att.query.weight) and torch.equal(qkv[64:128], att.key.weight)
    assert torch.equal(qkv[128:], att.value.weight)
    assert torch.equal(body["blocks.1.attn.q_bias"], att.query.bias) and not head and layout == "hf-v5"


# ---------------------------------------------------------------------------------------------------
# Errors and safety
# ---------------------------------------------------------------------------------------------------


def test_shape_mismatch_names_the_key(tmp_path):
    src = create_backbone("videomae_test", num_frames=T, img_size=S, mlp_ratio=2)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.fc1\.weight.*\(128, 64\).*\(256, 64\)"):
        load_pretrained(fresh(), tmp_path / "w.pth")


def test_strict_unexpected_and_missing(tmp_path):
    src = source_model()
    sd = dict(src.state_dict())
    sd["blocks.5.attn.q_bias"] = torch.zeros(64)
    with pytest.raises(CheckpointError, match=r"unexpected.*blocks\.5\.attn\.q_bias"):
        load_pretrained(fresh(), sd)
    report = load_pretrained(fresh(), sd, strict=False)
    assert report.unexpected == ["blocks.5.attn.q_bias"]
    del sd["blocks.5.attn.q_bias"], sd["blocks.1.mlp.fc2.bias"]
    with pytest.raises(CheckpointError, match=r"missing.*blocks\.1\.mlp\.fc2\.bias"):
        load_pretrained(fresh(), sd)
    assert "missing 1" in load_pretrained(fresh(), sd, strict=False).summary()


def test_keep_head_without_a_head_is_an_error():
    with pytest.raises(CheckpointError, match="no classifier head"):
        load_pretrained(fresh(), source_model(num_classes=3).state_dict(), keep_head=True)


class _WritesMarker:
    """Unpickling this would call open(marker, 'w'), i.e. run code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "plain_pickle", "plain_pickle_protocol4"])
def test_code_running_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "PWNED"
    payload = {"model": {"patch_embed.proj.weight": torch.zeros(1)}, "evil": _WritesMarker(marker)}
    path = tmp_path / "evil.pth"
    if writer == "torch_zip":
        torch.save(payload, path)
    elif writer == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4 if writer.endswith("4") else 2))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"evil\.pth.*nothing in it was executed") as info:
        read_checkpoint(path)
    assert isinstance(info.value, MicroactError)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_pretrained(fresh(), path)
    assert not marker.exists()


def test_truncated_and_garbage_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": source_model().state_dict()}, good)
    data = good.read_bytes()
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": source_model().state_dict()}, legacy, _use_new_zipfile_serialization=False)
    cases = [("trunc.pth", data[: len(data) // 2]), ("garbage.pth", b"\x00\x13 not a checkpoint" * 50),
             ("empty.pth", b""), ("legacy_trunc.pth", legacy.read_bytes()[:5000])]
    for name, content in cases:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            read_checkpoint(tmp_path / name)
    st = tmp_path / "w.safetensors"
    save_file(source_model().state_dict(), str(st))
    (tmp_path / "cut.safetensors").write_bytes(st.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors"):
        read_checkpoint(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="layout"):
        load_pretrained(fresh(), {"foo.weight": torch.zeros(2)})


# ---------------------------------------------------------------------------------------------------
# microact convert
# ---------------------------------------------------------------------------------------------------


def test_cli_convert_roundtrip(tmp_path, clip, capsys):
    src = source_model(num_classes=5)
    torch.save({"state_dict": mmaction2_state_dict(src)}, tmp_path / "mma.pth")
    out = tmp_path / "out" / "canon.safetensors"
    args = argparse.Namespace(input=str(tmp_path / "mma.pth"), output=str(out), backbone=None, keep_head=True)
    assert cli_convert(args) == 0
    printed = capsys.readouterr().out
    assert "layout mmaction2" in printed and "videomae_test (guessed)" in printed
    assert "mlp.layers.0.0 -> mlp.fc1" in printed and "position table" in printed
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["layout"] == "mmaction2" and f.metadata()["source"] == "mma.pth"
    tensors = load_file(str(out))
    assert "blocks.0.attn.qkv.weight" in tensors and "head.weight" in tensors and "backbone.pos_embed" not in tensors
    dst = fresh(num_classes=5)
    assert load_pretrained(dst, out, keep_head=True).layout == "official"
    assert same_outputs(src, dst, clip)
    # a backbone of the wrong size is caught
    args.backbone, args.output = "videomae_tiny", str(tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="videomae_tiny"):
        cli_convert(args)


def test_microact_convert_command(tmp_path, capsys):
    from microact.cli import main

    src = source_model(output="map")
    torch.save({"model": pretrain_state_dict(src)}, tmp_path / "pt.pth")
    out = tmp_path / "pt.safetensors"
    assert main(["convert", str(tmp_path / "pt.pth"), str(out), "--backbone", "videomae_test"]) == 0
    printed = capsys.readouterr().out
    assert "layout official-pretrain" in printed and "dropped: pre-training decoder" in printed
    assert torch.equal(load_file(str(out))["norm.weight"], src.norm.weight)  # kept; the load rule decides
    evil = tmp_path / "evil.pth"
    torch.save({"x": _WritesMarker(tmp_path / "PWNED")}, evil)
    assert main(["convert", str(evil), str(tmp_path / "e.safetensors")]) == 2
    assert "nothing in it was executed" in capsys.readouterr().err and not (tmp_path / "PWNED").exists()


def test_convert_names_microacts_own_weights(tmp_path, capsys):
    """A model_final written by microact train is microact's own layout (not mmaction2, whose prefixes it shares):
    convert extracts the backbone; converting convert's output again copies it, and says so."""
    from microact.cli import main
    from microact.engine.state import save_weights
    from microact.models import create_model

    rec = create_model("videomae_test_frame_coarse_tsn", num_frames=T, img_size=S)
    randomize(rec.backbone)
    save_weights(rec, tmp_path / "model_final.safetensors", recipe="description: a run\n")
    assert main(["convert", str(tmp_path / "model_final.safetensors"), str(tmp_path / "c1.safetensors"),
                 "--keep-head"]) == 0
    printed = capsys.readouterr().out
    assert "layout microact," in printed and "mmaction2" not in printed
    assert "microact's own (a recognizer's weights, as microact train writes them)" in printed
    assert "already in the canonical layout, so convert only extracts it" in printed
    c1 = load_file(str(tmp_path / "c1.safetensors"))
    backbone = rec.backbone.state_dict()
    assert set(c1) - {"head.weight"} == set(backbone) - {"pos_embed"}  # the backbone's tensors, not the other heads
    assert all(torch.equal(c1[k], backbone[k]) for k in c1 if k != "head.weight")
    assert torch.equal(c1["head.weight"], rec.state_dict()["cls_head.fc_cls.weight"])
    with safe_open(str(tmp_path / "c1.safetensors"), "pt") as f:
        assert f.metadata()["layout"] == "microact"
    assert main(["convert", str(tmp_path / "c1.safetensors"), str(tmp_path / "c2.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "layout microact," in printed and "a microact convert output, converted from the microact layout" in printed
    assert "the tensors are copied" in printed and "official" not in printed
    c2 = load_file(str(tmp_path / "c2.safetensors"))
    assert set(c2) == set(c1) - {"head.weight"} and all(torch.equal(c2[k], c1[k]) for k in c2)
    # a converted mmaction2 file keeps naming its origin when converted again
    torch.save({"state_dict": mmaction2_state_dict(source_model())}, tmp_path / "mma.pth")
    assert main(["convert", str(tmp_path / "mma.pth"), str(tmp_path / "m1.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "m1.safetensors"), str(tmp_path / "m2.safetensors")]) == 0
    assert "converted from the mmaction2 layout" in capsys.readouterr().out
    with safe_open(str(tmp_path / "m2.safetensors"), "pt") as f:
        assert f.metadata()["layout"] == "mmaction2"


def _hf_folder(path, intermediate_size, hidden_size=64):
    from transformers import VideoMAEConfig, VideoMAEModel

    torch.manual_seed(0)
    VideoMAEModel(VideoMAEConfig(hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=intermediate_size, image_size=64, num_frames=8)).save_pretrained(path)
    return path


def test_convert_guesses_the_backbone_from_every_shape(tmp_path, capsys):
    from microact.cli import main

    # width 64 and depth 2 like videomae_test, but an MLP of 128 (videomae_test's is 256): the built-in size taken
    # with the weights' own MLP ratio fits, and the output says which ratio to build it with
    odd = _hf_folder(tmp_path / "hf_mlp128", intermediate_size=128)
    assert main(["convert", str(odd), str(tmp_path / "odd.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "backbone videomae_test with mlp_ratio 2 (guessed)" in printed and "MLP width 128" in printed
    assert "build the backbone with mlp_ratio=2" in printed
    assert load_file(str(tmp_path / "odd.safetensors"))["blocks.0.mlp.fc1.weight"].shape == (128, 64)
    with safe_open(str(tmp_path / "odd.safetensors"), "pt") as f:
        assert f.metadata()["mlp_ratio"] == "2" and f.metadata()["backbone"] == "videomae_test"
    # a width no built-in has (96): written unchecked, and the output says so
    assert main(["convert", str(_hf_folder(tmp_path / "hf96", 384, hidden_size=96)),
                 str(tmp_path / "w96.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "backbone unknown" in printed and "unchecked" in printed
    assert "none of the built-in backbones fits the weights (embed dim 96" in printed
    # every shape of videomae_test: guessed, and said so
    fits = _hf_folder(tmp_path / "hf_test", intermediate_size=256)
    assert main(["convert", str(fits), str(tmp_path / "fits.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "backbone videomae_test (guessed)" in printed and "every shape fits videomae_test" in printed
    assert "none of the built-in backbones fits" not in printed
    # a wrong --backbone names itself, where it came from and the one that fits
    assert main(["convert", str(fits), str(tmp_path / "x.safetensors"), "--backbone", "videomae_tiny"]) == 2
    err = capsys.readouterr().err
    assert "do not fit videomae_tiny (given by --backbone)" in err and "--backbone videomae_test fits them" in err
    assert "embed dim 64, depth 2, MLP width 256" in err
    # converted files record their source layout, and no recipe (they were not trained by microact)
    with safe_open(str(tmp_path / "fits.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["layout"] == "hf" and meta["backbone"] == "videomae_test" and "microact.recipe" not in meta
    assert "mlp_ratio" not in meta  # the built-in 4


def _hf_classifier_folder(path, hidden_size, intermediate_size, num_attention_heads=2):
    """A tiny random HF VideoMAEForVideoClassification saved with save_pretrained; returns (folder, model)."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    torch.manual_seed(0)
    hf = VideoMAEForVideoClassification(VideoMAEConfig(
        image_size=S, num_frames=T, hidden_size=hidden_size, num_hidden_layers=2,
        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size, num_labels=5,
        layer_norm_eps=1e-6, use_mean_pooling=True)).eval()
    hf.fc_norm.eps = 1e-6  # as in hf_classifier: HF's fc_norm has PyTorch's default eps
    randomize(hf, seed=7)
    hf.save_pretrained(path)
    return path, hf


# (hidden_size, intermediate_size): 3x, 2.5x, and 230 / 112, whose ratio times 112 is 229.99999999999997 in floating
# point (truncated, the MLP would be built one unit narrow)
@pytest.mark.parametrize("hidden, intermediate", [(64, 192), (64, 160), (112, 230)])
def test_hf_checkpoint_with_another_mlp_ratio(tmp_path, clip, hidden, intermediate):
    """An HF checkpoint whose intermediate_size is not 4 x hidden_size: a backbone built with 4 refuses it, naming
    config.json's key and the mlp_ratio to build with; built with that ratio it gives HF's logits."""
    import re

    folder, hf = _hf_classifier_folder(tmp_path / "hf", hidden, intermediate)
    with pytest.raises(CheckpointError, match=rf"config\.json: intermediate_size is {intermediate} .*mlp_ratio=") as e:
        load_pretrained(fresh(num_classes=5, embed_dim=hidden), folder, keep_head=True)
    ratio = float(re.search(r"mlp_ratio=([0-9.]+)", str(e.value)).group(1))  # the ratio the message proposes
    assert ratio == pytest.approx(intermediate / hidden, rel=1e-5)
    ours = fresh(num_classes=5, embed_dim=hidden, mlp_ratio=ratio, pos_embed_mode="analytic")
    assert ours.blocks[0].mlp.fc1.out_features == intermediate
    report = load_pretrained(ours, folder, keep_head=True)
    assert not report.missing and not report.unexpected and report.head_loaded
    with torch.no_grad():
        diff = (ours.eval()(clip) - hf_logits(hf, clip)).abs().max().item()
    assert diff <= 1e-5
    # the same weights without their config.json (an in-memory state dict): the shape check names the ratio too
    with pytest.raises(CheckpointError, match=rf"mlp\.fc1\.weight.*MLP is {intermediate} wide.*mlp_ratio="):
        load_pretrained(fresh(embed_dim=hidden), hf.state_dict())


def test_recipe_overrides_build_the_backbone_an_hf_checkpoint_needs(tmp_path, clip):
    """model.overrides mlp_ratio / num_heads reach the backbone (both streams' of a two-stream preset), so
    create_model(pretrained=HF folder) loads a 3x-MLP, 4-head checkpoint; the token map equals HF's."""
    from microact.models.presets import create_model
    from microact.models.videomae import position_table

    folder, hf = _hf_classifier_folder(tmp_path / "hf", 64, 192, num_attention_heads=4)
    with pytest.raises(CheckpointError, match="num_attention_heads is 4 .*num_heads=4"):
        create_model("videomae_test_frame_coarse_tsn", pretrained=str(folder), num_frames=T, img_size=S,
                     mlp_ratio=3)
    model = create_model("videomae_test_frame_coarse_tsn", pretrained=str(folder), num_frames=T, img_size=S,
                         mlp_ratio=3, num_heads=4, load_final_norm=True)
    bb = model.backbone
    assert bb.num_heads == 4 and bb.blocks[0].mlp.fc1.out_features == 192
    bb.pos_embed.copy_(position_table(bb.grid, 64, "analytic"))  # HF's sinusoid for its own (tiny) grid
    with torch.no_grad():
        # map mode with load_final_norm=True puts the classifier's fc_norm (HF: use_mean_pooling) on every token
        ref = hf.fc_norm(hf.videomae(pixel_values=clip.permute(0, 2, 1, 3, 4)).last_hidden_state)  # [B, N, D]
        got = bb.eval()(clip).flatten(2).transpose(1, 2)  # [B, D, T', H', W'] -> [B, N, D]
    assert (got - ref).abs().max().item() <= 1e-5
    two = create_model("videomae_b_k710_twostream_i3d", backbone="videomae_test", num_frames=T, img_size=S,
                       mlp_ratio=3, num_heads=4)
    streams = (two.backbone.rgb, two.backbone.flow)
    assert all(s.num_heads == 4 and s.blocks[0].mlp.fc1.out_features == 192 for s in streams)
