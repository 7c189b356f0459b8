"""Atomic checkpoints, the latest pointer, RNG round trips and the run-directory checks."""
import random

import numpy as np
import pytest
import torch

from microact.engine.state import (CheckpointStorageError, atomic_write, check_run_dir, latest_checkpoint,
                                   load_checkpoint, rng_state, save_checkpoint, set_rng_state)


def test_rng_round_trip_and_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(5)  # move every generator on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_save_load_keep_and_latest(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    for step in (1, 2, 3):
        with torch.no_grad():
            model[0].weight.fill_(step)
        save_checkpoint(tmp_path, step, model, {"epoch": step, "rng": [rng_state()], "x": torch.ones(2)}, keep=2)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["latest", "model_00000002.safetensors", "model_00000003.safetensors", "state_00000002.pt",
                     "state_00000003.pt"]
    weights, state = latest_checkpoint(tmp_path)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    train_state = load_checkpoint(weights, state, fresh)
    assert train_state["epoch"] == 3 and torch.all(fresh[0].weight == 3)
    # a pointer to a vanished checkpoint falls back to the newest complete one
    (tmp_path / "checkpoints" / "latest").write_text("00000009\n")
    assert latest_checkpoint(tmp_path)[1].name == "state_00000003.pt"
    assert latest_checkpoint(tmp_path / "nothing") is None



def test_pruning_keeps_the_checkpoint_just_written(tmp_path):
    """A run killed after writing step 9 but before moving ``latest`` off 6 is resumed from 6 and saves step 7:
    with keep=1 step 7 must survive (not the abandoned step 9), and ``latest`` must name it."""
    model = torch.nn.Linear(2, 2)
    for step in (3, 6, 9):
        save_checkpoint(tmp_path, step, model, {"epoch": step}, keep=0)
    (tmp_path / "checkpoints" / "latest").write_text("00000006\n")
    assert latest_checkpoint(tmp_path)[1].name == "state_00000006.pt"
    save_checkpoint(tmp_path, 7, model, {"epoch": 7}, keep=1)
    weights, state = latest_checkpoint(tmp_path)
    assert state.name == "state_00000007.pt" and weights.is_file() and state.is_file()
    assert load_checkpoint(weights, state, torch.nn.Linear(2, 2))["epoch"] == 7
    (tmp_path / "checkpoints" / "latest").unlink()  # the fallback, too, finds step 7 and not the abandoned 9
    assert latest_checkpoint(tmp_path)[1].name == "state_00000007.pt"


def test_sigkill_mid_save_leaves_no_lasting_temporary_file(tmp_path):
    """A process killed while writing step 2's state leaves a partial temporary file; the next save removes it."""
    import os
    import signal
    import subprocess
    import sys

    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 1, model, {"epoch": 1}, keep=1)
    code = ("import os, signal, sys, torch\n"
            "from microact.engine import state\n"
            "def die(obj, path):\n"
            "    open(path, 'wb').write(b'partial' * 1000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "state.torch.save = die\n"
            "state.save_checkpoint(sys.argv[1], 2, torch.nn.Linear(2, 2), {'epoch': 2}, keep=1)\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    folder = tmp_path / "checkpoints"
    assert [f for f in os.listdir(folder) if f.endswith(".tmp")]  # what the kill left behind
    assert latest_checkpoint(tmp_path)[1].name == "state_00000001.pt"
    save_checkpoint(tmp_path, 2, model, {"epoch": 2}, keep=1)
    assert sorted(os.listdir(folder)) == ["latest", "model_00000002.safetensors", "state_00000002.pt"]


def test_saved_files_follow_the_umask(tmp_path):
    """Weights and checkpoints are ordinary files (readable by the group on a shared run directory)."""
    import os

    mask = os.umask(0o027)
    try:
        save_checkpoint(tmp_path, 1, torch.nn.Linear(2, 2), {"epoch": 1}, keep=1)
    finally:
        os.umask(mask)
    for f in (tmp_path / "checkpoints").iterdir():
        assert f.stat().st_mode & 0o777 == 0o640, f.name

def test_enospc_keeps_previous_file(tmp_path):
    target = tmp_path / "state.pt"
    atomic_write(target, lambda tmp: torch.save({"v": 1}, tmp))

    def write_to_full_disk(tmp):  # /dev/full answers every write with a real ENOSPC from the kernel
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 1024)
            f.flush()

    with pytest.raises(CheckpointStorageError, match="no space left.*previous checkpoint is still valid"):
        atomic_write(target, write_to_full_disk)
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind


def test_run_dir_checks(tmp_path):
    check_run_dir(tmp_path / "run", min_free_bytes=1)
    assert (tmp_path / "run" / "checkpoints").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointStorageError, match=f"{blocker / 'run'}: cannot create"):
        check_run_dir(blocker / "run", min_free_bytes=1)
    with pytest.raises(CheckpointStorageError, match="MiB free"):
        check_run_dir(tmp_path / "run", min_free_bytes=2**62)


def test_weights_files_record_the_recipe(tmp_path):
    from safetensors import safe_open

    from microact.config import load_config
    from microact.engine.state import RECIPE_METADATA_KEY, save_weights

    recipe = load_config(None, ["model.input_mode=rgb_diff", "data.clip_len=8"]).to_yaml()
    model = torch.nn.Linear(2, 2)
    save_weights(model, tmp_path / "model_final.safetensors", recipe)
    save_checkpoint(tmp_path, 4, model, {"epoch": 1}, keep=1, recipe=recipe)
    save_weights(model, tmp_path / "plain.safetensors")  # no recipe given: the metadata of older versions
    for path, expected in ((tmp_path / "model_final.safetensors", recipe),
                           (tmp_path / "checkpoints" / "model_00000004.safetensors", recipe),
                           (tmp_path / "plain.safetensors", None)):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        assert meta["producer"] == "microact" and meta.get(RECIPE_METADATA_KEY) == expected, path
    assert load_config(None, []).to_yaml() != recipe  # the recorded text is this run's, not the defaults
