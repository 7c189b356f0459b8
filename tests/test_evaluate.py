"""Multi-clip testing on real mp4 files with a tiny model, checked against a per-view computation by hand."""
from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import pytest
import torch

from microact.cli import main as cli
from microact.config import load_config
from microact.data.decode import count_frames, read_frames
from microact.data.sampling import uniform_sample
from microact.data.transforms import TestTransform
from microact.engine.evaluate import build_test_loader, evaluate, load_trained_weights, score_views
from microact.models.presets import create_model_from_config
from microact.results import load_results

LABELS = {"a.mp4": 3, "b.mp4": 9, "bad.mp4": 20, "c.mp4": 40}
OVERRIDES = ["model.preset=videomae_test_frame_coarse_tsn", "data.clip_len=4", "data.img_size=32",
             "data.num_workers=0", "eval.batch_size=2", "eval.resize_short=40", "eval.crop_height=48",
             "eval.val_clips=2", "eval.test_clips=3", "data.test_list=test.txt", "data.val_list=val.txt",
             "data.train_lists=[val.txt]", "train.device=cpu"]


@pytest.fixture
def dataset_dir(tmp_path, make_video):
    root = tmp_path / "data"
    for seed, name in enumerate(["a.mp4", "b.mp4", "c.mp4"]):
        make_video(name, num_frames=10 + 3 * seed, height=64, width=48, seed=seed, folder=root)
    (root / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    (root / "val.txt").write_text("".join(f"{n} {y}\n" for n, y in LABELS.items()))
    (root / "test.txt").write_text("".join(f"{n} 0\n" for n in LABELS))
    return root


def _cfg(root, *extra):
    return load_config(None, OVERRIDES + [f"data.root={root}", *extra])


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return create_model_from_config(cfg, pretrained=False).eval()


def _saved_model(cfg, path, seed=0, recipe="description: tiny test recipe\n"):
    """A tiny model's weights at ``path`` and a recipe file beside them: what `microact test` is given."""
    from safetensors.torch import save_file

    model = _model(cfg, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    config = path.parent.parent / "recipe.yaml"
    config.write_text(recipe)
    return model, config


def _by_hand(model, cfg, path, num_clips, average="prob", head="fine"):
    """One view at a time: decode, transform, normalise with NumPy, forward, then average (``head``: which lead
    head's logits, "fine" or "coarse")."""
    n = count_frames(path)
    frames = read_frames(path, uniform_sample(n, cfg.data.clip_len, num_clips, test_mode=True))
    views = TestTransform(cfg.eval, cfg.data.img_size).views(frames, num_clips)  # [V, 3, T, S, S]
    mean = np.array([123.675, 116.28, 103.53]).reshape(3, 1, 1, 1)
    std = np.array([58.395, 57.12, 57.375]).reshape(3, 1, 1, 1)
    logits = []
    with torch.no_grad():
        for view in views:
            x = torch.from_numpy(((view - mean) / std).astype(np.float32))[None]
            logits.append(getattr(model(x), head)[0].double())
    logits = torch.stack(logits)
    if average == "prob":
        return logits.softmax(-1).mean(0).numpy()
    return logits.mean(0).softmax(-1).numpy()


@pytest.mark.parametrize("average", ["prob", "logit"])
def test_evaluate_matches_per_view_computation(dataset_dir, average):
    cfg = _cfg(dataset_dir)
    model = _model(cfg)
    loader = build_test_loader(cfg, dataset_dir / "val.txt", num_clips=2)
    with pytest.warns(RuntimeWarning, match="bad.mp4"):
        results = evaluate(model, loader, "cpu", average=average, num_views=2, progress=False)
    assert results.names == list(LABELS)
    np.testing.assert_array_equal(results.labels, list(LABELS.values()))
    assert results.scores.shape == (4, 52) and results.meta["num_views"] == 2
    for i, name in enumerate(results.names):
        if name == "bad.mp4":
            np.testing.assert_allclose(results.scores[i], np.full(52, 1 / 52), rtol=1e-6)
        else:
            expected = _by_hand(model, cfg, dataset_dir / name, 2, average)
            np.testing.assert_allclose(results.scores[i], expected, rtol=1e-4, atol=1e-6)
            assert results.scores[i].sum() == pytest.approx(1.0, abs=1e-5)
    assert len(results.meta["failed"]) == 1 and results.meta["failed"][0].startswith("bad.mp4: ")


def test_chunked_views_give_the_same_scores(dataset_dir):
    cfg = _cfg(dataset_dir)
    model = _model(cfg)
    video = torch.randint(0, 256, (2, 3, 3, 4, 32, 32), dtype=torch.uint8)
    whole = score_views(model, video, torch.device("cpu"))
    chunked = score_views(model, video, torch.device("cpu"), max_clips=4)
    np.testing.assert_allclose(whole.numpy(), chunked.numpy(), rtol=1e-5, atol=1e-7)


def _zip_rows(path):
    with zipfile.ZipFile(path) as z:
        return list(csv.reader(io.StringIO(z.read("prediction.csv").decode())))


def test_cli_test_val_and_test_splits(dataset_dir, tmp_path, capsys):
    cfg = _cfg(dataset_dir)
    ckpt = tmp_path / "run" / "model_final.safetensors"
    model, config = _saved_model(cfg, ckpt, seed=1)
    overrides = OVERRIDES + [f"data.root={dataset_dir}"]

    with pytest.warns(RuntimeWarning):
        assert cli(["test", str(config), str(ckpt), *overrides, "--split", "val", "--out", str(tmp_path / "val")]) == 0
    printed = capsys.readouterr().out
    assert "F1_mean" in printed
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert metrics["num_videos"] == 4 and len(metrics["failed"]) == 1
    val = load_results(tmp_path / "val" / "results.npz")
    assert val.names == list(LABELS)
    assert metrics["f1_mean"] == pytest.approx(val.metrics()["f1_mean"])
    expected = _by_hand(model, cfg, dataset_dir / "c.mp4", 2)
    np.testing.assert_allclose(val.scores[3], expected, rtol=1e-4, atol=1e-6)
    assert (tmp_path / "val" / "confusion_fine.png").is_file()

    dump = tmp_path / "dumps" / "test.pkl"
    with pytest.warns(RuntimeWarning):
        assert cli(["test", str(config), str(ckpt), *overrides, "--dump", str(dump), "--out", str(tmp_path / "t")]) == 0
    test = load_results(dump)
    assert test.labels is None and test.names == list(LABELS)
    np.testing.assert_allclose(test.scores[0], _by_hand(model, cfg, dataset_dir / "a.mp4", 3), rtol=1e-4, atol=1e-6)
    rows = _zip_rows(tmp_path / "t" / "submission_mac2024.zip")
    assert [r[0] for r in rows[1:]] == list(LABELS)
    assert [int(r[2]) for r in rows[1:]] == list(test.scores.argmax(1))
    # the dump round-trips through `microact submit` to the same submission
    assert cli(["submit", str(dump), "--out", str(tmp_path / "s"), "--format", "mac2024"]) == 0
    assert _zip_rows(tmp_path / "s" / "submission_mac2024.zip") == rows


def test_weights_that_do_not_fit_are_refused(dataset_dir, tmp_path):
    from safetensors.torch import save_file

    from microact.models.checkpoints import CheckpointError

    cfg = _cfg(dataset_dir)
    model = _model(cfg)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    # a training checkpoint with DDP prefixes loads
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "ckpt.pth")
    other = _model(cfg, seed=5)
    load_trained_weights(other, tmp_path / "ckpt.pth")
    for k, v in other.state_dict().items():
        assert torch.equal(v, sd[k])
    sd.pop(next(iter(sd)))
    save_file(sd, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match="1 missing"):
        load_trained_weights(other, tmp_path / "partial.safetensors")


def _dist_worker(rank, world, port, root, out):
    import os
    import warnings

    import torch.distributed as dist

    from microact.results import save_results

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = _cfg(root)
        model = _model(cfg)
        loader = build_test_loader(cfg, root / "val.txt", num_clips=2, distributed=True)
        assert len(loader.batch_sampler.sampler) == 2  # each rank scores its share of the 4 videos
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = evaluate(model, loader, "cpu", progress=False)
        if rank == 0:
            save_results(results, out)
    finally:
        dist.destroy_process_group()


def test_evaluate_under_two_processes_gathers_in_list_order(dataset_dir, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "dist.npz"
    # forkserver: the workers fork from a process that has imported torch already (tests/conftest.py)
    mp.start_processes(_dist_worker, args=(2, port, dataset_dir, out), nprocs=2, join=True, start_method="forkserver")
    merged = load_results(out)
    cfg = _cfg(dataset_dir)
    with pytest.warns(RuntimeWarning):
        single = evaluate(_model(cfg), build_test_loader(cfg, dataset_dir / "val.txt", num_clips=2), "cpu",
                          progress=False)
    assert merged.names == single.names == list(LABELS)
    np.testing.assert_allclose(merged.scores, single.scores, rtol=1e-5, atol=1e-7)
    assert merged.meta["failed"] == single.meta["failed"] and len(merged.meta["failed"]) == 1


def test_coarse_head_rule_from_test_to_submission(dataset_dir, tmp_path, capsys):
    """predict.coarse_rule=coarse_head: `microact test` keeps the coarse head's clip-averaged probabilities, scores
    the body parts with them, and the dump carries them to `microact submit`."""
    from sklearn.metrics import f1_score

    from microact import ma52
    from microact.metrics import coarse_scores

    cfg = _cfg(dataset_dir)
    ckpt = tmp_path / "run" / "model.safetensors"
    model, config = _saved_model(cfg, ckpt, seed=2, recipe="predict:\n  coarse_rule: coarse_head\n")
    overrides = OVERRIDES + [f"data.root={dataset_dir}"]
    with pytest.warns(RuntimeWarning):
        assert cli(["test", str(config), str(ckpt), *overrides, "--split", "val", "--out", str(tmp_path / "val")]) == 0
    val = load_results(tmp_path / "val" / "results.npz")
    assert val.coarse_head_scores.shape == (4, 7)
    for i, name in enumerate(val.names):
        if name == "bad.mp4":
            np.testing.assert_allclose(val.coarse_head_scores[i], np.full(7, 1 / 7), rtol=1e-6)
        else:
            expected = _by_hand(model, cfg, dataset_dir / name, 2, head="coarse")
            np.testing.assert_allclose(val.coarse_head_scores[i], expected, rtol=1e-4, atol=1e-6)
    # body part = argmax of (coarse head) x (per-part sums of the fine probabilities); scored like scikit-learn
    body = np.argmax(val.coarse_head_scores.astype(np.float64) * coarse_scores(val.scores), axis=1)
    truth = ma52.fine_to_coarse(val.labels)
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert metrics["coarse_rule"] == "coarse_head"
    assert metrics["coarse_macro"] == pytest.approx(f1_score(truth, body, average="macro", zero_division=0))
    assert metrics["coarse_micro"] == pytest.approx(f1_score(truth, body, average="micro"))

    dump = tmp_path / "test.pkl"
    with pytest.warns(RuntimeWarning):
        assert cli(["test", str(config), str(ckpt), *overrides, "--dump", str(dump), "--out", str(tmp_path / "t")]) == 0
    from_pkl, from_npz = load_results(dump), load_results(dump.with_suffix(".npz"))
    np.testing.assert_array_equal(from_pkl.coarse_head_scores, from_npz.coarse_head_scores)
    body = np.argmax(from_pkl.coarse_head_scores.astype(np.float64) * coarse_scores(from_pkl.scores), axis=1)
    assert [int(r[1]) for r in _zip_rows(tmp_path / "t" / "submission_mac2024.zip")[1:]] == body.tolist()
    assert cli(["submit", str(dump), "--out", str(tmp_path / "s"), "--coarse-rule", "coarse_head"]) == 0
    assert [int(r[1]) for r in _zip_rows(tmp_path / "s" / "submission_mac2024.zip")[1:]] == body.tolist()
    # without --coarse-rule, submit uses the rule the dump was scored with (recorded beside the pickle)
    capsys.readouterr()
    assert cli(["submit", str(dump), "--out", str(tmp_path / "s1")]) == 0
    assert "predict.coarse_rule=coarse_head, as the dump was scored" in capsys.readouterr().out
    assert [int(r[1]) for r in _zip_rows(tmp_path / "s1" / "submission_mac2024.zip")[1:]] == body.tolist()
    # a dump without the coarse head's scores cannot use the rule, and says which rules it can use
    plain = tmp_path / "plain.pkl"
    with pytest.warns(RuntimeWarning):
        assert cli(["test", str(config), str(ckpt), *overrides, "predict.coarse_rule=map_top1", "--dump", str(plain),
                    "--out", str(tmp_path / "p")]) == 0
    assert load_results(plain).coarse_head_scores is None
    capsys.readouterr()
    assert cli(["submit", str(plain), "--out", str(tmp_path / "s2"), "--coarse-rule", "coarse_head"]) == 2
    assert "no coarse-head scores" in capsys.readouterr().err
    # a model without coarse heads is refused before any video is read
    assert cli(["test", str(config), str(ckpt), *overrides, "model.preset=videomae_tiny_timesformer",
                "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "predict.coarse_rule=coarse_head needs a model with coarse heads" in err


def test_cli_test_writes_beside_the_dump_by_default(dataset_dir, tmp_path):
    cfg = _cfg(dataset_dir)
    ckpt = tmp_path / "run" / "model_final.safetensors"
    _, config = _saved_model(cfg, ckpt)
    reports = {}
    for name, clips in (("val", "eval.val_clips=2"), ("val_one_clip", "eval.val_clips=1")):
        dump = tmp_path / "dumps" / f"{name}.pkl"
        with pytest.warns(RuntimeWarning):
            assert cli(["test", str(config), str(ckpt), *OVERRIDES, f"data.root={dataset_dir}", clips, "--split", "val",
                        "--dump", str(dump)]) == 0
        assert dump.is_file() and dump.with_suffix(".npz").is_file()
        report = dump.parent / f"{name}_report"
        assert {"metrics.json", "confusion_fine.png"} <= {p.name for p in report.iterdir()}
        reports[name] = json.loads((report / "metrics.json").read_text())
    # two dumps in one folder keep their own reports
    assert reports["val"]["f1_mean"] == pytest.approx(load_results(tmp_path / "dumps" / "val.npz").metrics()["f1_mean"])
    assert reports["val_one_clip"]["f1_mean"] == pytest.approx(
        load_results(tmp_path / "dumps" / "val_one_clip.npz").metrics()["f1_mean"])
    assert not (ckpt.parent / "val_results").exists()


def test_cli_test_warns_when_the_recipe_differs_from_the_recorded_one(dataset_dir, tmp_path, capsys):
    from microact.engine.state import save_weights

    trained = _cfg(dataset_dir, "model.input_mode=rgb_diff")
    ckpt = tmp_path / "run" / "model_final.safetensors"
    ckpt.parent.mkdir()
    save_weights(_model(trained), ckpt, trained.to_yaml())
    config = tmp_path / "recipe.yaml"
    config.write_text("description: tiny test recipe\n")
    base = [str(config), str(ckpt), *OVERRIDES, f"data.root={dataset_dir}"]

    # the weights fit (same shapes), so only the recorded recipe can tell that rgb is wrong for them
    with pytest.warns(RuntimeWarning):
        assert cli(["test", *base, "model.input_mode=rgb", "eval.view=center224", "--split", "val",
                    "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert f"WARNING: {ckpt}: the weights were trained with model.input_mode=rgb_diff; this recipe has " \
           "model.input_mode=rgb" in err
    assert "eval.view=center224 (trained run: portrait373)" in err
    # the training recipe: silent
    with pytest.warns(RuntimeWarning):
        assert cli(["test", *base, "model.input_mode=rgb_diff", "--split", "val", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "WARNING" not in err and "test views differ" not in err


def test_recipe_differences_cover_the_forward_defining_keys(dataset_dir):
    from microact.engine.evaluate import recipe_differences

    trained = _cfg(dataset_dir)
    changes = {"model.preset": "videomae_test_frame_coarse_i3d", "data.clip_len": 8, "data.img_size": 48,
               "model.num_classes": 10, "model.overrides": {"backbone": "videomae_tiny"},
               "frame_head.layout": "temporal", "frame_head.se_mode": "gate", "arcface.scale": 16.0}
    extra = ["data.num_classes=10", "eval.resize_short=48"]
    current = _cfg(dataset_dir, *extra, *(f"{k}={json.dumps(v)}" for k, v in changes.items()))
    forward, views = recipe_differences(trained, current)
    assert {k: new for k, _, new in forward} == changes
    assert [k for k, _, _ in views] == ["eval.resize_short"]
    # only whether flow videos are used matters, not where they are
    a, b = (_cfg(dataset_dir, "model.preset=videomae_b_k710_twostream_i3d", f"data.flow_dir={d}")
            for d in ("flow", "elsewhere"))
    assert recipe_differences(a, b) == ([], [])
    assert [k for k, _, _ in recipe_differences(trained, a)[0]] == ["model.preset", "data.flow_dir"]


def test_checkpoint_paths_that_are_not_weights_name_the_right_file(dataset_dir, tmp_path, capsys):
    from microact.engine.state import save_checkpoint, save_weights
    from microact.models.checkpoints import CheckpointError

    cfg = _cfg(dataset_dir)
    model = _model(cfg)
    run = tmp_path / "r4"
    save_checkpoint(run, 84, model, {"optimizer": {"state": {}}, "global_step": 84, "epoch": 2}, keep=1)
    # an unfinished run: its latest checkpoint's weights
    with pytest.raises(CheckpointError, match=r"did not finish.*checkpoints/model_00000084\.safetensors"):
        load_trained_weights(model, run)
    save_weights(model, run / "model_final.safetensors")
    save_weights(model, run / "model_best.safetensors")
    (run / "metrics.json").write_text(json.dumps({"selected": "model_best.safetensors"}))
    with pytest.raises(CheckpointError) as e:
        load_trained_weights(model, run)
    assert str(e.value) == (f"{run}: a microact run folder, not a weights file: pass {run}/model_final.safetensors "
                            f"(the last weights) or {run}/model_best.safetensors (the best validation F1); the run "
                            "selected model_best.safetensors (metrics.json)")
    # the checkpoint folder and its pointer file
    with pytest.raises(CheckpointError) as e:
        load_trained_weights(model, run / "checkpoints")
    assert str(e.value) == (f"{run}/checkpoints: a microact run's checkpoint folder, not a weights file: pass "
                            f"{run}/model_final.safetensors, {run}/model_best.safetensors, "
                            f"{run}/checkpoints/model_00000084.safetensors (the newest checkpoint)")
    with pytest.raises(CheckpointError, match=r"checkpoints/latest: the pointer to a run's newest checkpoint "
                                              r"\(it reads '00000084'\), not weights: pass .*/model_00000084\.safetensors$"):
        load_trained_weights(model, run / "checkpoints" / "latest")
    # the training state beside the weights
    with pytest.raises(CheckpointError, match=r"state_00000084\.pt: a microact training-state file .* pass the "
                                              r"weights of this checkpoint, .*/model_00000084\.safetensors$"):
        load_trained_weights(model, run / "checkpoints" / "state_00000084.pt")
    # a .pth renamed to .safetensors loads through the safe torch loader, with a note
    torch.save({"model": model.state_dict()}, tmp_path / "renamed.safetensors")
    other = _model(cfg, seed=4)
    load_trained_weights(other, tmp_path / "renamed.safetensors")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in other.state_dict().items())
    assert "renamed.safetensors is a PyTorch checkpoint (torch.save), not safetensors" in capsys.readouterr().err
