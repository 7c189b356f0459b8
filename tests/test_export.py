"""`microact export`: the ONNX graph in onnxruntime against PyTorch, for each head family, input mode and stream count.

The references normalise with the numbers written out here (not through ``normalize_batch``), so a graph that
normalised with other statistics, or skipped the flow stream's own, would differ.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

# the onnx extra: make test installs it (pip install -c constraints.txt -e ".[onnx]")
import onnx
import onnxruntime as ort

from microact import ma52
from microact.cli import main as cli
from microact.config import config_from_yaml, load_config

IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
# ViT dim 64, 2 blocks, 4 frames of 32 px: 8 tokens, milliseconds per forward
TINY = ["model.preset=videomae_test_frame_coarse_tsn", "data.clip_len=4", "data.img_size=32", "eval.resize_short=40",
        "eval.crop_height=48", "eval.test_clips=2"]
TIMESFORMER = ["model.preset=videomae_tiny_timesformer", "model.overrides={backbone: videomae_test}",
               "model.input_mode=rgb"]
TWO_STREAM = ["model.preset=videomae_b_k710_twostream_i3d", "model.overrides={backbone: videomae_test}",
              "data.flow_dir=flow", "data.flow_mean=[100.0, 110.0, 120.0]", "data.flow_std=[30.0, 40.0, 50.0]"]


def _weights(tmp_path, *overrides, name="model.safetensors"):
    """A trained-looking weights file recording its recipe (as a run writes it), and the model."""
    from microact.engine.state import save_weights
    from microact.models.presets import create_model_from_config

    cfg = load_config(None, TINY + list(overrides))
    torch.manual_seed(0)
    model = create_model_from_config(cfg, pretrained=False).eval()
    with torch.no_grad():  # make the heads say something: the init leaves ArcFace logits nearly uniform
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / name
    save_weights(model, path, cfg.to_yaml())
    return path, model, cfg


def _reference(model, clip: np.ndarray, mean, std) -> list[np.ndarray]:
    """Softmax of the lead fine (and coarse) logits of pixels normalised with the given statistics."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1, 1)
    with torch.no_grad():
        out = model((torch.from_numpy(clip).float() - m) / s)
    outs = [out.fine.softmax(-1).numpy()]
    if out.coarse is not None:
        outs.append(out.coarse.softmax(-1).numpy())
    return outs


def _clip(batch: int, channels: int = 3, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, channels, 4, 32, 32)).astype(dtype)


def _export(capsys, *argv) -> str:
    assert cli(["export", *map(str, argv)]) == 0
    captured = capsys.readouterr()
    return captured.out + captured.err


def _metadata(path) -> dict[str, str]:
    return dict(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
                .custom_metadata_map)


def test_tsn_frame_coarse_rgb_diff_dynamic_batch_metadata(tmp_path, capsys):
    weights, model, cfg = _weights(tmp_path, "model.input_mode=rgb_diff")
    out = tmp_path / "onnx" / "model.onnx"
    text = _export(capsys, weights, out, "--time", "--repeats", "1")
    assert "torchscript exporter, opset 17" in text and "check: onnxruntime vs PyTorch" in text and "time:" in text
    assert "output fine_probs [batch, 52], coarse_head_probs [batch, 7] (MA-52 (52 classes, 7 body parts))" in text

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "clip" and inp.type == "tensor(uint8)" and inp.shape == ["batch", 3, 4, 32, 32]
    assert [o.name for o in session.get_outputs()] == ["fine_probs", "coarse_head_probs"]
    for batch in (1, 3):
        clip = _clip(batch, seed=batch)
        fine, coarse = session.run(None, {"clip": clip})
        want_fine, want_coarse = _reference(model, clip, IMAGENET_MEAN, IMAGENET_STD)
        assert fine.shape == (batch, 52) and coarse.shape == (batch, 7)
        np.testing.assert_allclose(fine, want_fine, atol=1e-4, rtol=0)
        np.testing.assert_allclose(coarse, want_coarse, atol=1e-4, rtol=0)
        np.testing.assert_allclose(fine.sum(axis=1), 1.0, atol=1e-5)
    # rgb_diff is inside the graph: a constant clip has zero differences, unlike its plain-RGB reading
    flat = np.full((1, 3, 4, 32, 32), 200, np.uint8)
    model.input_mode = "rgb"
    plain = _reference(model, flat, IMAGENET_MEAN, IMAGENET_STD)[0]
    model.input_mode = "rgb_diff"
    assert np.abs(session.run(None, {"clip": flat})[0] - plain).max() > 1e-3

    meta = _metadata(out)
    assert json.loads(meta["microact.class_names"]) == list(ma52.FINE_NAMES)
    assert json.loads(meta["microact.coarse_class_names"]) == list(ma52.COARSE_NAMES)
    assert json.loads(meta["microact.taxonomy"]) == {"fine_names": list(ma52.FINE_NAMES),
                                                     "coarse_names": list(ma52.COARSE_NAMES),
                                                     "fine_to_coarse": list(ma52.FINE_TO_COARSE)}
    assert (meta["microact.frames"], meta["microact.img_size"], meta["microact.channels"]) == ("4", "32", "3")
    assert meta["microact.input_mode"] == "rgb_diff" and meta["microact.input_dtype"] == "uint8"
    assert json.loads(meta["microact.mean"]) == IMAGENET_MEAN and json.loads(meta["microact.std"]) == IMAGENET_STD
    assert set(json.loads(meta["microact.outputs"])) == {"fine_probs", "coarse_head_probs"}
    assert meta["microact.weights"] == "model.safetensors"
    recipe = config_from_yaml(meta["microact.recipe"], "metadata")
    assert recipe.to_dict() == cfg.to_dict()
    assert onnx.load(str(out)).producer_name == "microact"


def test_timesformer_sdpa_float_input_static_batch(tmp_path, capsys):
    weights, model, _ = _weights(tmp_path, *TIMESFORMER)
    out = tmp_path / "ts.onnx"
    text = _export(capsys, weights, out, "--attention", "sdpa", "--input-dtype", "float32", "--static-batch",
                   "--batch", "2", "--opset", "14")
    assert "opset 14" in text and "attention sdpa" in text
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 4, 32, 32] and session.get_inputs()[0].type == "tensor(float)"
    assert [o.name for o in session.get_outputs()] == ["fine_probs"]  # no coarse head on the pooled model
    clip = _clip(2, dtype=np.float32)
    (fine,) = session.run(None, {"clip": clip})
    np.testing.assert_allclose(fine, _reference(model, clip, IMAGENET_MEAN, IMAGENET_STD)[0], atol=1e-4, rtol=0)
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # the batch axis is fixed
        session.run(None, {"clip": _clip(3, dtype=np.float32)})
    assert "microact.coarse_class_names" not in _metadata(out)


def test_two_stream_six_channels_flow_statistics(tmp_path, capsys):
    weights, model, _ = _weights(tmp_path, *TWO_STREAM)
    out = tmp_path / "two.onnx"
    _export(capsys, weights, out, "--opset", "13")  # math attention exports below SDPA's opset 14
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 6, 4, 32, 32]
    mean, std = IMAGENET_MEAN + [100.0, 110.0, 120.0], IMAGENET_STD + [30.0, 40.0, 50.0]
    for batch in (1, 3):
        clip = _clip(batch, channels=6, seed=batch)
        (fine,) = session.run(None, {"clip": clip})
        np.testing.assert_allclose(fine, _reference(model, clip, mean, std)[0], atol=1e-4, rtol=0)
    # the flow stream's statistics matter: the seed's would give other answers
    assert np.abs(fine - _reference(model, clip, IMAGENET_MEAN + [0.0] * 3, IMAGENET_STD + [255.0] * 3)[0]).max() > 1e-4
    meta = _metadata(out)
    assert json.loads(meta["microact.mean"]) == mean and json.loads(meta["microact.std"]) == std
    assert meta["microact.channels"] == "6"


def test_flow_alone_normalises_with_the_flow_statistics(tmp_path, capsys):
    weights, model, _ = _weights(tmp_path, "model.preset=videomae_b_k710_flow_i3d",
                                 "model.overrides={backbone: videomae_test}", "data.flow_dir=flow",
                                 "data.flow_mean=[100, 110, 120]", "data.flow_std=[30, 40, 50]")
    out = tmp_path / "flow.onnx"
    assert ", input optical flow, normalised inside" in _export(capsys, weights, out, "--opset", "13")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 4, 32, 32]
    clip = _clip(2, seed=4)
    (fine,) = session.run(None, {"clip": clip})
    np.testing.assert_allclose(fine, _reference(model, clip, [100.0, 110.0, 120.0], [30.0, 40.0, 50.0])[0],
                               atol=1e-4, rtol=0)
    meta = _metadata(out)
    assert json.loads(meta["microact.mean"]) == [100.0, 110.0, 120.0] and "optical flow" in meta["microact.input"]


def test_auto_exporter_takes_dynamo_above_torchscript_opsets(tmp_path, capsys):
    from microact.export import torchscript_max_opset

    weights, model, _ = _weights(tmp_path)
    opset = torchscript_max_opset() + 1
    out = tmp_path / "dyn.onnx"
    text = _export(capsys, weights, out, "--opset", opset)
    assert f"dynamo exporter, opset {opset}" in text and "used the dynamo exporter" in text
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        clip = _clip(batch, seed=batch)
        for got, want in zip(session.run(None, {"clip": clip}), _reference(model, clip, IMAGENET_MEAN, IMAGENET_STD)):
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert _metadata(out)["microact.exporter"] == "dynamo"


def test_math_attention_equals_sdpa_and_export_mode_restores(tmp_path):
    from microact.export import export_mode
    from microact.models.videomae import Attention

    _, model, _ = _weights(tmp_path)
    model.train()
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad(), export_mode(model, "manual"):
        assert not model.training and not model.backbone.grad_checkpointing
        assert {m.attn_impl for m in model.modules() if isinstance(m, Attention)} == {"manual"}
        manual = model(x).fine
    assert model.training and model.backbone.grad_checkpointing
    assert {m.attn_impl for m in model.modules() if isinstance(m, Attention)} == {"sdpa"}
    model.eval()
    with torch.no_grad():
        sdpa = model(x).fine
    torch.testing.assert_close(manual, sdpa, atol=1e-5, rtol=1e-5)


def test_check_catches_a_graph_that_differs(tmp_path):
    from microact.export import ExportError, check_export, export_onnx

    _, model, cfg = _weights(tmp_path)
    result = export_onnx(model, cfg, tmp_path / "m.onnx")
    worst = check_export(result, model, cfg, batches=(1, 2))
    assert set(worst) == {"fine_probs", "coarse_head_probs"} and max(worst.values()) < 1e-4
    with torch.no_grad():  # the PyTorch model moves on; the file does not
        model.cls_head.fc_cls.weight.mul_(-1.0)
    with pytest.raises(ExportError, match="fine_probs at batch 1: max abs difference"):
        check_export(result, model, cfg, batches=(1,))


def test_views_of_a_real_video_averaged_equal_score_views(tmp_path, make_video):
    """The documented way to feed the graph (test views as rows, mean of the rows) gives microact test's answer."""
    from microact.data.decode import read_frames
    from microact.data.sampling import uniform_sample
    from microact.data.transforms import TestTransform, stream_statistics
    from microact.engine.evaluate import score_views
    from microact.export import export_onnx

    _, model, cfg = _weights(tmp_path, "model.input_mode=rgb_diff")
    path = make_video("clip.mp4", num_frames=12, height=64, width=48)
    clips = cfg.eval.test_clips
    frames = read_frames(path, uniform_sample(12, cfg.data.clip_len, clips, test_mode=True))
    views = TestTransform(cfg.eval, cfg.data.img_size, cfg.aug.resize_backend).views(frames, clips)  # [V,3,T,S,S]
    result = export_onnx(model, cfg, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    fine, coarse = session.run(None, {"clip": np.ascontiguousarray(views)})
    want_fine, want_coarse = score_views(model, torch.from_numpy(views)[None], torch.device("cpu"),
                                         average="prob", coarse_head=True, input_stats=stream_statistics(cfg.data))
    assert fine.shape[0] == views.shape[0] == clips
    np.testing.assert_allclose(fine.mean(axis=0), want_fine[0].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(coarse.mean(axis=0), want_coarse[0].numpy(), atol=1e-5, rtol=0)


def test_weights_beside_the_graph_for_large_models(tmp_path, monkeypatch):
    """Graphs over protobuf's 2 GiB keep their weights in OUT.onnx.data (ViT-H); the limit is lowered to reach
    that path with the tiny model."""
    from microact import export

    _, model, cfg = _weights(tmp_path)
    monkeypatch.setattr(export, "_INLINE_LIMIT", 0)
    result = export.export_onnx(model, cfg, tmp_path / "big.onnx")
    assert result.data_file == tmp_path / "big.onnx.data" and result.data_file.stat().st_size > 100_000
    assert result.path.stat().st_size < 100_000  # the graph alone
    assert sorted(p.name for p in tmp_path.iterdir() if "big" in p.name or p.name.startswith(".export")) == \
        ["big.onnx", "big.onnx.data"]  # no temporary folder left behind
    clip = _clip(3)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for got, want in zip(session.run(None, {"clip": clip}), _reference(model, clip, IMAGENET_MEAN, IMAGENET_STD)):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# A dataset's own classes (data.classes): the names, groups and shapes are the weights' taxonomy's
# --------------------------------------------------------------------------------------------

THREE = "0\tsway torso\tbody\n1\tnod\thead\n2\tlean back\tbody\n"  # 3 classes, 2 groups (not MA-52's 7)


def _own_class_weights(tmp_path, classes: str, *overrides):
    """Weights as a run on a dataset with its own classes writes them: the recipe (num_classes from the file) and
    the taxonomy recorded in the file."""
    from microact.engine.state import save_weights
    from microact.models.presets import create_model_from_config
    from microact.taxonomy import resolve_taxonomy

    (tmp_path / "classes.txt").write_text(classes)
    cfg = load_config(None, TINY + [f"data.root={tmp_path}", "data.classes=classes.txt", *overrides])
    taxonomy = resolve_taxonomy(cfg)
    torch.manual_seed(0)
    model = create_model_from_config(cfg, pretrained=False, taxonomy=taxonomy).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "own.safetensors"
    save_weights(model, path, cfg.to_yaml(), taxonomy)
    return path, model, taxonomy


def test_own_classes_names_groups_and_shapes_come_from_the_weights(tmp_path, capsys):
    weights, model, taxonomy = _own_class_weights(tmp_path, THREE)
    assert (taxonomy.num_fine, taxonomy.num_coarse) == (3, 2)
    out = tmp_path / "own.onnx"
    text = _export(capsys, weights, out)
    assert "output fine_probs [batch, 3], coarse_head_probs [batch, 2] (3 classes in 2 groups)" in text

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    clip = _clip(3, seed=5)
    fine, coarse = session.run(None, {"clip": clip})
    want_fine, want_coarse = _reference(model, clip, IMAGENET_MEAN, IMAGENET_STD)
    assert fine.shape == (3, 3) and coarse.shape == (3, 2)
    np.testing.assert_allclose(fine, want_fine, atol=1e-4, rtol=0)
    np.testing.assert_allclose(coarse, want_coarse, atol=1e-4, rtol=0)
    meta = _metadata(out)
    assert json.loads(meta["microact.class_names"]) == ["sway torso", "nod", "lean back"]
    assert json.loads(meta["microact.coarse_class_names"]) == ["body", "head"]
    assert json.loads(meta["microact.taxonomy"]) == {"fine_names": ["sway torso", "nod", "lean back"],
                                                     "coarse_names": ["body", "head"], "fine_to_coarse": [0, 1, 0]}
    outputs = json.loads(meta["microact.outputs"])
    assert "[batch, 3]" in outputs["fine_probs"] and "[batch, 2]" in outputs["coarse_head_probs"]
    assert "7" not in meta["microact.outputs"] and "7" not in onnx.load(str(out)).doc_string

    # the weights record the classes: the recipe's classes file need not be on this machine (predict's rule)
    (tmp_path / "classes.txt").unlink()
    again = tmp_path / "again.onnx"
    text = _export(capsys, weights, again, "--no-check")
    assert "using the classes recorded in" in text and "data.classes=classes.txt is not on this machine" in text
    assert _metadata(again)["microact.class_names"] == meta["microact.class_names"]
    assert _metadata(again)["microact.coarse_class_names"] == meta["microact.coarse_class_names"]


def test_flat_own_classes_have_no_coarse_output_or_names(tmp_path, capsys):
    weights, model, taxonomy = _own_class_weights(tmp_path, "0\tsit\n1\tstand\n2\twave\n3\tclap\n",
                                                  "model.overrides={use_coarse: false}")
    assert not taxonomy.has_coarse and not model.has_coarse
    out = tmp_path / "flat.onnx"
    text = _export(capsys, weights, out)
    assert "output fine_probs [batch, 4] (4 classes without groups)\n" in text
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["fine_probs"]
    meta = _metadata(out)
    assert json.loads(meta["microact.class_names"]) == ["sit", "stand", "wave", "clap"]
    assert "microact.coarse_class_names" not in meta
    assert json.loads(meta["microact.taxonomy"])["coarse_names"] == []
    assert set(json.loads(meta["microact.outputs"])) == {"fine_probs"}
