"""The training loop: exact resume after SIGKILL / SIGTERM, NaN policies, run-directory checks, recipes, learning.

Runs that are compared bit for bit all run as subprocesses with the same thread settings (CPU matmuls may
block differently with another thread count).
"""
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_labelled_clips
from microact.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """16 real mp4 clips (moving squares), labels 0..3, a train list and a val list."""
    root = tmp_path_factory.mktemp("data")
    lines = write_labelled_clips(root, 16)
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text("\n".join(lines[:4]) + "\n")
    return root


def overrides(root, *extra):
    """A tiny, fast run: test-size ViT, 4 frames of 32 px, 8 optimiser steps per epoch, 4 epochs."""
    return ["model.preset=videomae_test_frame_coarse_tsn", f"data.root={root}", "data.train_lists=[train.txt]",
            "data.val_list=null", "data.clip_len=4", "data.img_size=32", "data.num_workers=0", "train.epochs=4",
            "train.global_batch=2",
            "train.micro_batch=2", "train.precision=fp32", "train.log_every=1", "train.tensorboard=false",
            "aug.color_jitter=false", "eval.resize_short=36", "eval.crop_height=40", "eval.batch_size=4",
            *extra]


def cli(args, **kw):
    return [sys.executable, "-m", "microact.cli", "train", str(CONFIGS / "tiny_synth.yaml"), *args]


def run(args, out, *flags, timeout=240):
    p = subprocess.run(cli(args) + ["--out", str(out), *flags], env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    return p


def run_here(args, out, *flags):
    """``microact train`` in this process (for runs not compared bit for bit and not killed); the exit code."""
    from microact.cli import main

    return main(cli(args)[3:] + ["--out", str(out), *flags])


def weights(path):
    return load_file(str(path))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    p = run(overrides(data_root, "train.checkpoint_every_steps=3"), out)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def _start_and_wait_for_checkpoint(args, out):
    proc = subprocess.Popen(cli(args) + ["--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (out / "checkpoints" / "latest").is_file():
        assert proc.poll() is None, f"training ended before its first checkpoint: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, "no checkpoint within 180 s"
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_then_resume_gives_identical_weights(data_root, reference, tmp_path, seed):
    out = tmp_path / "killed"
    args = overrides(data_root, "train.checkpoint_every_steps=3")
    proc = _start_and_wait_for_checkpoint(args, out)
    # a random point after the first checkpoint: mid-step, mid-save or mid-epoch, differently for each seed
    time.sleep(random.Random(seed).uniform(0.0, 0.4))
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.kill()
    proc.communicate()
    assert not (out / "model_final.safetensors").exists()
    p = run(args, out, "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in p.stdout
    assert_same_weights(out / "model_final.safetensors", reference / "model_final.safetensors")
    steps = [int(line.split(",")[0]) for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 33))  # one row per step, none doubled by the restart


def test_sigterm_saves_exits_and_resumes_with_workers(data_root, reference, tmp_path):
    out = tmp_path / "term"
    args = overrides(data_root, "train.checkpoint_every_steps=3", "data.num_workers=2")
    proc = _start_and_wait_for_checkpoint(args, out)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.fail("the run finished before SIGTERM arrived; make the run longer")
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM" in stdout and "--resume" in stdout
    p = run(args, out, "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    # data randomness depends on (seed, epoch, index) only: 2 workers give the 0-worker reference exactly
    assert_same_weights(out / "model_final.safetensors", reference / "model_final.safetensors")


def test_nan_stop_names_the_step(data_root, tmp_path):
    from microact.engine.train import TrainingDivergedError, train

    cfg = load_config(CONFIGS / "tiny_synth.yaml", overrides(data_root, "optim.lr=1e30", "sched.warmup_epochs=0"))
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss at epoch 1/\d+, step \d+ .*v\d\d\.mp4"):
        train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()


def test_nan_skip_continues(data_root, tmp_path):
    import json

    from microact.engine.train import train

    cfg = load_config(CONFIGS / "tiny_synth.yaml", overrides(data_root, "optim.lr=1e30", "sched.warmup_epochs=0",
                                                             "train.nan_policy=skip", "train.max_steps=5"))
    assert train(cfg, tmp_path / "run") == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 5 and 1 <= metrics["nan_skipped"] <= 4


def test_unwritable_run_dir_fails_before_training(data_root, tmp_path):
    from microact.engine.state import CheckpointStorageError
    from microact.engine.train import train

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = load_config(CONFIGS / "tiny_synth.yaml", overrides(data_root))
    with pytest.raises(CheckpointStorageError, match="a_file/run: cannot create the run directory"):
        train(cfg, blocker / "run")


def test_validation_and_run_directory(data_root, tmp_path, capsys):
    import csv
    import json

    from microact.engine.train import train

    cfg = load_config(CONFIGS / "tiny_synth.yaml", overrides(data_root, "data.val_list=val.txt", "train.epochs=1",
                                                             "train.select=best_val"))
    assert train(cfg, tmp_path / "run") == 0
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "env.json", "log.csv", "metrics.json", "model_final.safetensors",
                 "model_best.safetensors", "plots/loss.png", "plots/throughput.png", "plots/val_f1.png"):
        assert (run_dir / name).is_file(), name
    with open(run_dir / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(0.0 <= float(r["data_wait"]) <= 1.0 for r in rows)
    assert {r["epoch"] for r in rows} == {"1"}  # counted from 1, like the progress bar and metrics.json
    out = capsys.readouterr().out
    shares = [int(x) for x in re.findall(r"waited for data (\d+)% of the time", out)]
    assert len(shares) == 1  # one epoch
    # With data.num_workers=0 the step decodes its own clips: the hint appears exactly when an epoch waited > 10 %
    assert ("note: the training step waited for the loader" in out) == (shares[0] > 10)
    assert "attention: SDPA's flash kernel (model.sdpa_kernel=auto)" in out  # the CPU's fused kernel
    assert "model: videomae_test_frame_coarse_tsn initialised from scratch (model.pretrained is not set)\n" in out
    assert json.loads((run_dir / "env.json").read_text())["sdpa_kernel"] == "flash"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["selected"] == "model_best.safetensors"
    assert set(metrics["val"][0]) >= {"f1_mean", "fine_macro", "fine_micro", "coarse_macro", "coarse_micro"}
    assert load_config(run_dir / "config.yaml").data.val_list == "val.txt"
    # every weights file records the run's recipe, so predict and test can use it or warn when theirs differs
    from microact.engine.evaluate import recorded_recipe

    checkpoint_weights = sorted((run_dir / "checkpoints").glob("model_*.safetensors"))
    assert checkpoint_weights
    for path in [run_dir / "model_final.safetensors", run_dir / "model_best.safetensors", *checkpoint_weights]:
        assert recorded_recipe(path) == (run_dir / "config.yaml").read_text(), path
    # the test command it suggests at the end runs as printed
    (suggested,) = re.findall(r"next: (microact test .*? --split val)", out)
    from microact.cli import main

    assert main(shlex.split(suggested)[1:]) == 0
    assert (run_dir / "val_results" / "metrics.json").is_file()


RECIPES = sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_loads(path):
    from microact.models.presets import get_preset

    cfg = load_config(path)
    preset = get_preset(cfg.model.preset)
    assert cfg.description
    if path.stem != "tiny_synth":
        assert cfg.model.pretrained.endswith(preset.checkpoint)
        trainval = "val_list_videos.txt" in cfg.data.train_lists
        assert trainval == (cfg.data.val_list is None)
        assert cfg.train.precision == "fp16"
    if path.stem not in ("tiny_synth", "official_videomae_recipe"):  # seed rows (the official recipe: test_config)
        assert cfg.optim.lr == 3e-4
        assert cfg.sched.cosine_t_max == cfg.train.epochs + 1


def test_best_recipe_matches_seed():
    cfg = load_config(CONFIGS / "videomae_b_k710_frame_coarse_tsn_trainval.yaml")
    assert (cfg.train.epochs, cfg.train.global_batch, cfg.eval.test_clips, cfg.eval.val_clips) == (42, 24, 3, 2)
    assert cfg.train.select == "last" and cfg.optim.backbone_lr_mult == 0.1 and cfg.optim.weight_decay == 0.01
    large = load_config(CONFIGS / "videomae_l_k700_timesformer_trainval.yaml")
    assert (large.train.epochs, large.train.global_batch, large.aug.rrc_area, large.aug.erase_area[1]) == \
        (38, 10, (0.5, 1.0), 0.3)
    huge = load_config(CONFIGS / "videomae_h_timesformer_train.yaml")
    assert (huge.train.epochs, huge.train.global_batch, huge.eval.test_clips) == (36, 6, 2)


def test_the_loop_learns(tmp_path):
    """4 classes told apart by the colour and direction of a moving square: validation F1_mean far above chance."""
    import json

    import numpy as np

    from microact.data.video_writer import write_video
    from microact.engine.train import train

    colours = [(230, 40, 40), (40, 230, 40), (40, 40, 230), (230, 230, 230)]
    fine_ids = [0, 9, 19, 24]  # four MA-52 classes from four different body parts
    lines = {"train": [], "val": []}
    for split, per_class in (("train", 6), ("val", 3)):
        for c, (colour, label) in enumerate(zip(colours, fine_ids)):
            for k in range(per_class):
                rng = np.random.default_rng([c, k, split == "val"])
                frames = rng.integers(0, 60, size=(8, 40, 40, 3), dtype=np.uint8)
                for t in range(8):
                    y, x = (4 + 3 * t, 4 + 2 * t) if c % 2 else (30 - 3 * t, 4 + 3 * t)
                    frames[t, y:y + 8, x:x + 8] = colour
                name = f"{split}_{c}_{k}.mp4"
                write_video(tmp_path / name, frames, fps=15, crf=18)
                lines[split].append(f"{name} {label}")
    for split, rows in lines.items():
        (tmp_path / f"{split}.txt").write_text("\n".join(rows) + "\n")
    cfg = load_config(CONFIGS / "tiny_synth.yaml", [
        "model.preset=videomae_test_frame_coarse_tsn", f"data.root={tmp_path}", "data.train_lists=[train.txt]",
        "data.val_list=val.txt", "data.clip_len=4", "data.img_size=32", "data.num_workers=0", "train.epochs=8",
        "train.global_batch=4", "train.micro_batch=4", "train.val_every=8", "train.tensorboard=false",
        "aug.color_jitter=false", "aug.erase_prob=0", "eval.resize_short=36", "eval.crop_height=40"])
    assert train(cfg, tmp_path / "run") == 0
    val = json.loads((tmp_path / "run" / "metrics.json").read_text())["val"][-1]
    # chance: a constant prediction scores about 0.1 fine / 0.1 coarse macro, 0.25 micro. Validated after every
    # epoch, this run scored 0.17, 0.62, then 1.0 from epoch 3 on (as did 12- and 25-epoch runs): 8 epochs leave
    # a margin.
    assert val["f1_mean"] > 0.6, val


def test_initialisation_note_names_the_seeds_checkpoint():
    from microact.engine.train import initialisation_note
    from microact.models.presets import get_preset

    tiny = load_config(CONFIGS / "tiny_synth.yaml")
    assert initialisation_note(tiny) == ("model: videomae_tiny_frame_coarse_tsn initialised from scratch "
                                         "(model.pretrained is not set)")
    best = load_config(CONFIGS / "videomae_b_k710_frame_coarse_tsn_trainval.yaml", ["model.pretrained=null"])
    checkpoint = get_preset(best.model.preset).checkpoint
    assert checkpoint == "vit_b_hybrid_pt_800e_k710_ft.pth"
    assert initialisation_note(best) == (
        "model: videomae_b_k710_frame_coarse_tsn initialised from scratch (model.pretrained is not set); the seed's "
        f"numbers for this preset assume its checkpoint {checkpoint} (model.pretrained=/path/to/{checkpoint})")
    assert initialisation_note(load_config(CONFIGS / "videomae_b_k710_frame_coarse_tsn_trainval.yaml")) is None


def test_existing_run_needs_resume(data_root, tmp_path):
    from microact.engine.train import train
    from microact.errors import MicroactError

    cfg = load_config(CONFIGS / "tiny_synth.yaml", overrides(data_root, "train.max_steps=1"))
    assert train(cfg, tmp_path / "run") == 0
    with pytest.raises(MicroactError, match="already holds checkpoints.*--resume"):
        train(cfg, tmp_path / "run")


def test_best_val_without_a_validation_keeps_the_last_weights(data_root, tmp_path, capsys):
    """train.max_steps ends the run before the first validation: the answer is the last weights, the warning says
    why, and a model_best.safetensors left in the folder by an earlier attempt is not picked up."""
    import json

    from microact.engine.train import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model_best.safetensors").write_bytes(b"an earlier attempt's weights")
    cfg = load_config(CONFIGS / "tiny_synth.yaml", overrides(data_root, "data.val_list=val.txt",
                                                             "train.select=best_val", "train.max_steps=1"))
    assert train(cfg, run_dir) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["selected"] == "model_final.safetensors"
    err = capsys.readouterr().err
    assert "no validation (the run ended before the first validation" in err and "train.max_steps=1" in err


def test_empty_training_list_is_an_error(data_root, tmp_path):
    from microact.config import ConfigError
    from microact.engine.train import train

    (data_root / "empty.txt").write_text("")
    cfg = load_config(CONFIGS / "tiny_synth.yaml", overrides(data_root, "data.train_lists=[empty.txt]"))
    with pytest.raises(ConfigError, match=r"data.train_lists: no training clips in .*empty\.txt"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "model_final.safetensors").exists()


def test_resume_with_changed_config(data_root, tmp_path, capsys):
    """A mid-epoch checkpoint resumed on a shorter training list must stop with a clear error (it used to loop
    for ever on an epoch it could not finish); other changes are allowed and named."""
    (data_root / "train4.txt").write_text("".join((data_root / "train.txt").read_text().splitlines(True)[:4]))
    out = tmp_path / "run"
    # the runs that cannot hang run in this process; the one that used to hang in a subprocess with a timeout
    assert run_here(overrides(data_root, "train.max_steps=3"), out) == 0
    try:
        p = run(overrides(data_root, "data.train_lists=[train4.txt]"), out, "--resume", timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the resumed run hung on an epoch shorter than the checkpoint's position")
    assert p.returncode != 0
    assert "state_00000003.pt" in p.stderr and "data.train_lists=['train4.txt']" in p.stderr
    capsys.readouterr()
    assert run_here(overrides(data_root, "train.max_steps=4", "optim.lr=2e-3"), out, "--resume") == 0
    resumed = capsys.readouterr().out
    note = re.search(r"note: --resume with a config that differs from the checkpoint's in (.*);", resumed)
    assert note and note.group(1) == "optim.lr, train.max_steps"
    assert "initialised from scratch" not in resumed  # its weights come from the checkpoint


def test_step_with_only_unreadable_clips_is_skipped(data_root, tmp_path, monkeypatch):
    """Micro-batch 1 and one broken video: its step has no clip. Under fp16 loss scaling (forced on here, as on
    CUDA) GradScaler.step would fail on gradients it never saw; the step is skipped and its loss logged as nan."""
    import csv
    import math

    from microact.data.dataset import ResumableSampler
    from microact.engine.train import train

    root = tmp_path / "data"
    root.mkdir()
    lines = []
    for i in range(4):
        (root / f"v{i}.mp4").symlink_to(data_root / f"v{i:02d}.mp4")
        lines.append(f"v{i}.mp4 {i}")
    (root / "broken.mp4").write_bytes(b"not a video" * 50)
    lines.insert(2, "broken.mp4 2")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    real_scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled=False: real_scaler(device, enabled=True))
    cfg = load_config(CONFIGS / "tiny_synth.yaml", overrides(root, "train.epochs=1", "train.global_batch=1",
                                                             "train.micro_batch=1", "train.ema_decay=0.5"))
    assert train(cfg, tmp_path / "run") == 0
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    broken_step = ResumableSampler(5, shuffle=True, seed=cfg.train.seed).rank_indices(0).index(2)
    assert len(losses) == 5 and math.isnan(losses[broken_step])
    assert all(loss > 0 for i, loss in enumerate(losses) if i != broken_step)



def test_dead_loader_worker_is_reported_with_its_clips(data_root, tmp_path):
    """SIGKILL the (real) loader worker process mid-training: the run stops with an error naming the videos."""
    out = tmp_path / "run"
    args = overrides(data_root, "train.checkpoint_every_steps=1", "data.num_workers=1", "train.epochs=20")
    proc = _start_and_wait_for_checkpoint(args, out)
    children = [pid for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert children, "the loader worker process was not found"
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr[-3000:]
    assert "a DataLoader worker died in epoch" in stderr and ".mp4" in stderr and "data.num_workers=0" in stderr


@pytest.mark.parametrize("precision,native,expected", [
    ("fp16", True, "bf16"), ("bf16", True, "bf16"), ("fp32", True, "fp32"),
    ("fp16", False, "fp32"), ("bf16", False, "fp32"), ("fp32", False, "fp32"),
])
def test_cpu_precision_follows_the_hardware(precision, native, expected):
    from microact.engine.train import resolve_precision

    used, note = resolve_precision(precision, torch.device("cpu"), native_bf16=native)
    assert used == expected
    assert (note is None) == (used == precision)
    if used != precision and not native:
        assert "no hardware bf16" in note
    # GPUs run what the recipe says
    assert resolve_precision(precision, torch.device("cuda"), native_bf16=native) == (precision, None)


def test_native_bf16_detection_agrees_with_the_cpu_flags():
    from microact.engine.train import cpu_has_native_bf16

    flags = next(set(line.split(":", 1)[1].split()) for line in open("/proc/cpuinfo") if line.startswith("flags"))
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16", "amx_tile"} & flags)


@pytest.mark.parametrize("rule", ["map_top1", "sum_probs", "coarse_head"])
def test_validation_body_parts_follow_the_coarse_rule(monkeypatch, rule):
    """Validation during training scores body parts like `microact test` does (predict.coarse_rule)."""
    import numpy as np
    from sklearn.metrics import f1_score

    import microact.engine.evaluate as evaluate_module
    from microact import ma52
    from microact.engine.train import validate
    from microact.results import Results

    rng = np.random.default_rng(0)
    n = 60
    scores = rng.dirichlet(np.full(52, 0.3), size=n)
    labels = rng.integers(0, 52, n)
    head = rng.dirichlet(np.ones(7), size=n)

    def fake_evaluate(*args, coarse_head=False, **kwargs):  # the coarse head's scores only when asked for
        return Results([f"v{i}.mp4" for i in range(n)], scores, labels, coarse_head_scores=head if coarse_head else None)

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    cfg = load_config(None, [f"predict.coarse_rule={rule}"])
    got = validate(torch.nn.Linear(1, 1), None, torch.device("cpu"), "fp32", cfg)
    g = np.asarray(ma52.FINE_TO_COARSE)
    if rule == "sum_probs":  # the body part whose fine classes hold the most probability
        body = np.array([max(range(7), key=lambda c: scores[i][g == c].sum()) for i in range(n)])
    elif rule == "coarse_head":  # ... weighted by the coarse head's probability of that part
        body = np.array([max(range(7), key=lambda c: head[i, c] * scores[i][g == c].sum()) for i in range(n)])
    else:
        body = g[scores.argmax(1)]
    assert got["coarse_macro"] == pytest.approx(f1_score(g[labels], body, average="macro"))
    assert got["coarse_micro"] == pytest.approx(f1_score(g[labels], body, average="micro"))
