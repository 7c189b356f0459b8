"""Atomic checkpoints and exact resume.

A checkpoint is two files in ``RUN/checkpoints/``: ``model_<step>.safetensors`` (the recognizer's weights) and
``state_<step>.pt`` (optimizer, GradScaler, EMA, counters, RNG states, best metric, config), readable with
``torch.load(weights_only=True)``: RNG states are stored as tensors and lists, never as arbitrary objects.
Weights files written for a run (these and the run's ``model_final`` / ``model_best`` / ``model_ema_final``) record
the run's recipe, ``Config.to_yaml()``, in their safetensors metadata under :data:`RECIPE_METADATA_KEY`: the
weights are only right with the model, frames, input size and input mode they were trained with, and ``microact
predict`` / ``microact test`` read it back to use it or to warn about a recipe that differs.
Every file is written to a temporary name in the same folder, fsynced and renamed over the final name, and the
``latest`` pointer is updated last, so a crash (even SIGKILL) at any moment leaves the previous checkpoint valid.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from microact.errors import MicroactError

RECIPE_METADATA_KEY = "microact.recipe"  # safetensors metadata: the full recipe YAML the weights were trained with


class CheckpointStorageError(MicroactError, OSError):
    """The run directory cannot hold checkpoints (not writable, or the disk is full)."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then fsync and rename to ``path``; a failure leaves ``path`` untouched.

    Raises:
        CheckpointStorageError: the disk filled up (ENOSPC) or quota ran out during the write.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # temporary files are private (0600); the result is an ordinary file
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointStorageError(
                f"{path.parent}: no space left while writing {path.name}; the previous checkpoint is still valid. "
                "Free some space and continue with --resume.") from None
        if isinstance(e, RuntimeError) and "No space left" in str(e):
            raise CheckpointStorageError(
                f"{path.parent}: no space left while writing {path.name}; the previous checkpoint is still valid. "
                "Free some space and continue with --resume.") from None
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (threads may be creating files now)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o22)  # elsewhere the only way to read it is to set it, briefly
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_run_dir(run_dir: Path, min_free_bytes: int) -> None:
    """Fail before training when ``run_dir`` cannot be created/written or has less than ``min_free_bytes`` free.

    Raises:
        CheckpointStorageError: naming the directory and the problem.
    """
    run_dir = Path(run_dir)
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointStorageError(f"{run_dir}: cannot create the run directory: {e.strerror or e}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=run_dir / "checkpoints")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointStorageError(f"{run_dir}: the run directory is not writable: {e.strerror or e}") from None
    free = shutil.disk_usage(run_dir).free
    if free < min_free_bytes:
        raise CheckpointStorageError(
            f"{run_dir}: only {free / 2**20:.1f} MiB free, a checkpoint needs about {min_free_bytes / 2**20:.1f} MiB "
            "(weights + optimizer state, twice while the previous one is kept); free space or choose another --out")


# --------------------------------------------------------------------------------------------
# RNG states as plain tensors
# --------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors / lists (safe for ``weights_only``)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The recognizer's own names (no ``module.`` / ``_orig_mod.``), contiguous CPU tensors."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_weights(model_or_state, path: Path, recipe: Optional[str] = None, taxonomy=None) -> None:
    """Atomically write a safetensors file of a model's (or a state dict's) tensors.

    Args:
        recipe: the run's recipe (``cfg.to_yaml()``), stored in the metadata under :data:`RECIPE_METADATA_KEY`.
        taxonomy: the run's classes (:class:`~microact.taxonomy.Taxonomy`), stored as JSON under
            :data:`microact.taxonomy.TAXONOMY_METADATA_KEY`: the names and groups themselves, so the weights say
            their classes on a machine without the classes file.
    """
    from safetensors.torch import save_file

    sd = model_or_state if isinstance(model_or_state, dict) else _plain_state_dict(model_or_state)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    metadata = {"format": "pt", "producer": "microact"}
    if recipe is not None:
        metadata[RECIPE_METADATA_KEY] = recipe
    if taxonomy is not None:
        from microact.taxonomy import TAXONOMY_METADATA_KEY

        metadata[TAXONOMY_METADATA_KEY] = taxonomy.to_json()
    atomic_write(Path(path), lambda tmp: save_file(sd, tmp, metadata=metadata))


def save_checkpoint(run_dir: Path, step: int, model, train_state: dict[str, Any], keep: int,
                    recipe: Optional[str] = None, taxonomy=None) -> Path:
    """Write ``model_<step>.safetensors`` + ``state_<step>.pt``, point ``latest`` at them, keep the last ``keep``.

    Args:
        run_dir: the run directory (checkpoints go to ``run_dir/checkpoints``).
        step: global optimiser step (names the files).
        model: the model (DDP / compiled wrappers are unwrapped).
        train_state: everything else to restore (tensors, numbers, strings, lists, dicts only).
        keep: checkpoints to keep (0 = keep all).
        recipe: the run's recipe YAML, recorded in the weights file (see :func:`save_weights`).
        taxonomy: the run's classes, recorded in the weights file (see :func:`save_weights`).

    Returns:
        The ``state_<step>.pt`` path.
    """
    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    weights = folder / f"model_{step:08d}.safetensors"
    state = folder / f"state_{step:08d}.pt"
    save_weights(model, weights, recipe, taxonomy)
    atomic_write(state, lambda tmp: torch.save(train_state, tmp))
    atomic_write(folder / "latest", lambda tmp: Path(tmp).write_text(f"{step:08d}\n"))
    if keep > 0:
        # Keep the newest ``keep`` up to this step. A later step on disk belongs to a run that was abandoned after
        # writing it (killed before moving ``latest``, or a resume from an earlier checkpoint): it goes too, or it
        # would outlive the checkpoint just written and be picked up should ``latest`` ever be unreadable.
        steps = sorted(_steps(folder))
        current = [s for s in steps if s <= step]
        for old in current[:-keep] + [s for s in steps if s > step]:
            for f in (folder / f"model_{old:08d}.safetensors", folder / f"state_{old:08d}.pt"):
                f.unlink(missing_ok=True)
    return state


def _remove_leftovers(folder: Path) -> None:
    """Delete the temporary files of writes a crash interrupted (a SIGKILL mid-save leaves a partial copy of the
    weights or state, ``.<name>.<random>.tmp``, and safetensors' own ``.tmp<random>``); one process writes here."""
    for f in folder.glob(".*"):
        if (f.name.endswith(".tmp") or f.name.startswith(".tmp")) and f.is_file():
            f.unlink(missing_ok=True)


def _steps(folder: Path) -> list[int]:
    out = []
    for f in folder.glob("state_*.pt"):
        tag = f.stem.split("_", 1)[1]
        if tag.isdigit() and (folder / f"model_{tag}.safetensors").is_file():
            out.append(int(tag))
    return out


def latest_checkpoint(run_dir: Path) -> Optional[tuple[Path, Path]]:
    """``(weights, state)`` of the newest complete checkpoint in ``run_dir`` (``None`` when there is none)."""
    folder = Path(run_dir) / "checkpoints"
    pointer = folder / "latest"
    if pointer.is_file():
        tag = pointer.read_text().strip()
        w, s = folder / f"model_{tag}.safetensors", folder / f"state_{tag}.pt"
        if w.is_file() and s.is_file():
            return w, s
    steps = _steps(folder) if folder.is_dir() else []
    if not steps:
        return None
    tag = f"{max(steps):08d}"
    return folder / f"model_{tag}.safetensors", folder / f"state_{tag}.pt"


def load_checkpoint(weights: Path, state: Path, model, load_weights=None) -> dict[str, Any]:
    """Load weights into ``model`` (strict) and return the training state (``torch.load(weights_only=True)``).

    ``load_weights(state_dict)``, when given, replaces ``model.load_state_dict`` (sharded FSDP models).
    """
    from safetensors.torch import load_file

    target = getattr(model, "module", model)
    target = getattr(target, "_orig_mod", target)
    try:
        if load_weights is not None:
            load_weights(load_file(str(weights)))
        else:
            target.load_state_dict(load_file(str(weights)), strict=True)
        return torch.load(state, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError) as e:
        raise MicroactError(f"{state.parent}: cannot resume from checkpoint {state.name}: {e}") from None
