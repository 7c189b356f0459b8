"""Safe reading of VideoMAE checkpoints in any published layout, mapped onto microact's names.

Supported layouts (VIDEOMAE.md §3): official VideoMAE / InternVideo fine-tuned files (``module`` or
``model`` container), pre-training files (``encoder.`` prefix, decoder keys dropped), mmaction2
(``state_dict`` container, ``backbone.`` / ``cls_head.`` prefixes, ``patch_embed.projection``,
``mlp.layers.*``), Hugging Face (``save_pretrained`` folders, bare ``model.safetensors`` /
``pytorch_model.bin``, and transformers-5 in-memory state dicts whose q/v biases are ``query.bias`` /
``value.bias``), plus ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes.

Reading never runs code: ``.pth``/``.bin`` files go through ``torch.load(weights_only=True)`` (only
tensors, containers and a short list of inert classes such as ``argparse.Namespace``), everything else
through safetensors. Position tables are never loaded; they are compared with the analytic table.

The canonical layout is the official one (``patch_embed.proj``, ``blocks.i.attn.qkv`` + ``q_bias`` /
``v_bias``, ``norm`` / ``fc_norm``); a classifier becomes ``head.weight`` / ``head.bias``.
"""
from __future__ import annotations

import argparse
import json
import logging
import pickle
import re
import sys
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from microact.errors import MicroactError
from microact.models.videomae import VideoMAE, arch_config, list_backbones, mlp_width, sinusoid_table

__all__ = [
    "CheckpointError",
    "LoadReport",
    "read_checkpoint",
    "convert_state_dict",
    "load_pretrained",
    "cli_convert",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


class CheckpointError(MicroactError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model."""


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------


def _inert_globals() -> list:
    """Classes that official training scripts store next to the weights and that cannot run code."""
    allowed: list = [argparse.Namespace]
    try:  # numpy scalars (e.g. a best accuracy) are common in `torch.save`d training states
        import numpy as np
        allowed += [np.dtype, type(np.dtype("float64")), type(np.dtype("float32")), type(np.dtype("int64"))]
        try:
            from numpy._core.multiarray import scalar
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import scalar  # type: ignore[no-redef]
        allowed.append(scalar)
    except ImportError:
        pass
    return allowed


def _torch_load(path: Path):
    """``torch.load`` restricted to tensors, containers and inert classes; refuses code-running pickles."""
    try:
        safe = getattr(torch.serialization, "safe_globals", None)  # a context manager since torch 2.5
        with warnings.catch_warnings():
            # Our own error below says what went wrong; torch's protocol notice would only add noise.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # an open file, not the path: torch.load hands a path ending in .safetensors to safetensors, which
            # cannot read a renamed .pth
            with open(path, "rb") as f:
                if safe is not None:
                    with safe(_inert_globals()):
                        return torch.load(f, map_location="cpu", weights_only=True)
                return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "weights only load failed" not in msg.lower():
            raise CheckpointError(f"{path}: not a readable checkpoint (corrupt pickle: {_first_line(msg)})") from None
        found = re.search(r"GLOBAL ([\w.]+)", msg)
        name = found.group(1) if found else ""
        if name and not re.fullmatch(r"\w+(\.\w+)*", name):  # a name cut off by truncation, e.g. "t."
            raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt pickle)") from None
        if name:
            why = f"unpickling it would import or call Python code ({name})"
            if not zipfile.is_zipfile(path):  # a torch zip is checked whole before unpickling; a bare pickle is not
                why += " (or the file is a truncated pickle)"
        else:
            reason = next((ln.strip() for ln in msg.splitlines() if "nsupported" in ln or "allowed" in ln), "")
            why = f"it is not a plain weights file for the safe loader ({reason or 'unsupported pickle content'})"
        raise CheckpointError(
            f"{path}: refused to load: {why}; nothing in it was executed. Convert it to a plain state_dict or "
            ".safetensors in a trusted environment.") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, IndexError ... on truncated or garbage files
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                              f"{_first_line(str(e)) or type(e).__name__})") from None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt: {e})") from None


def _read_dir(path: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face ``save_pretrained`` folder (single or sharded safetensors, else pytorch_model.bin)."""
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        return _safetensors_load(path / "model.safetensors")
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid shard index ({e})") from None
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            sd.update(_safetensors_load(path / shard))
        return sd
    if (path / "pytorch_model.bin").is_file():
        return _flatten_tensors(_torch_load(path / "pytorch_model.bin"), path / "pytorch_model.bin")
    run_hint = _run_folder_hint(path)
    if run_hint:
        raise CheckpointError(run_hint)
    raise CheckpointError(f"{path}: a folder without model.safetensors, a shard index or pytorch_model.bin")


_RUN_WEIGHTS = ("model_final.safetensors", "model_best.safetensors", "model_ema_final.safetensors")


def _run_folder_hint(path: Path) -> str:
    """For a ``microact train`` run folder: the error that names its weights files ("" for any other folder).

    A run folder is refused rather than read: its answer may be the last or the best-validation weights
    (``train.select``), and ``microact test`` writes its results beside the weights file it was given, so the user
    picks the file and sees which one was tested.
    """
    from microact.engine.state import latest_checkpoint

    if path.name == "checkpoints" and any(path.glob("model_*.safetensors")):  # a run's checkpoint folder
        latest = latest_checkpoint(path.parent)
        finals = [str(path.parent / name) for name in _RUN_WEIGHTS if (path.parent / name).is_file()]
        choices = ", ".join(finals + ([f"{latest[0]} (the newest checkpoint)"] if latest else []))
        return f"{path}: a microact run's checkpoint folder, not a weights file: pass {choices}"
    found = [name for name in _RUN_WEIGHTS if (path / name).is_file()]
    if found:
        what = {"model_final.safetensors": "the last weights", "model_best.safetensors": "the best validation F1",
                "model_ema_final.safetensors": "the EMA weights"}
        choices = " or ".join(f"{path / name} ({what[name]})" for name in found)
        selected = ""
        try:
            selected = json.loads((path / "metrics.json").read_text()).get("selected") or ""
        except (OSError, ValueError, AttributeError):
            pass  # the note on the run's choice is optional
        note = f"; the run selected {selected} (metrics.json)" if selected in found else ""
        return f"{path}: a microact run folder, not a weights file: pass {choices}{note}"
    latest = latest_checkpoint(path)
    if latest is not None:
        return (f"{path}: a microact run folder without final weights (the run did not finish): pass its latest "
                f"checkpoint's weights, {latest[0]}")
    return ""


_CONTAINER_KEYS = ("model", "module", "state_dict")  # official loaders try model, then module


def _flatten_tensors(obj, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap ``model`` / ``module`` / ``state_dict`` containers and keep the tensors."""
    container = []
    while isinstance(obj, Mapping):
        inner = next((k for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        container.append(inner)
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd and "optimizer" in obj and "global_step" in obj:
        raise CheckpointError(_training_state_hint(path, obj))
    if not sd:
        raise CheckpointError(
            f"{path}: no tensors found (top-level keys: {', '.join(map(str, list(obj)[:10]))})")
    return sd


def _training_state_hint(path: Path, state: Mapping) -> str:
    """The error for a microact ``state_<step>.pt``: it holds the optimizer and counters, the weights are beside it."""
    tag = re.fullmatch(r"state_(\d+)\.pt", path.name)
    step = tag.group(1) if tag else f"{state.get('global_step', 0):08d}"
    weights = path.with_name(f"model_{step}.safetensors")
    where = "" if weights.is_file() else " (not found: it may have been removed with older checkpoints)"
    return (f"{path}: a microact training-state file (optimizer, RNG states, counters), not weights: pass the "
            f"weights of this checkpoint, {weights}{where}")


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_MAGIC = b"\x80"  # a bare pickle, then its protocol (2-5): torch's legacy format


def read_checkpoint(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file or HF folder into a flat ``{name: tensor}`` dict, without running any code.

    Args:
        path: ``.pth``/``.pt``/``.bin`` (torch zip or legacy pickle), ``.safetensors``, or a folder
            written by ``save_pretrained``.

    Returns:
        The tensors, with ``model``/``module``/``state_dict`` containers unwrapped (names unchanged).

    A ``torch.save`` file named ``.safetensors`` is read with the safe torch loader (a note says so).

    Raises:
        CheckpointError: missing, unsafe (code-running pickle), truncated or garbage file; a microact run folder
            or training-state file (the message names the weights file to pass).
    """
    path = Path(path)
    if path.is_dir():
        return _read_dir(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.name == "latest" and path.parent.name == "checkpoints":  # a run's pointer to its newest checkpoint
        tag = path.read_text(errors="replace").strip()[:32]
        raise CheckpointError(f"{path}: the pointer to a run's newest checkpoint (it reads {tag!r}), not weights: "
                              f"pass {path.parent / f'model_{tag}.safetensors'}")
    with open(path, "rb") as f:
        magic = f.read(16)
    # safetensors: 8-byte little-endian header length followed by a JSON object (its first byte can be 0x80 too)
    is_safetensors = magic[8:9] == b"{"
    is_torch_file = magic.startswith(_ZIP_MAGIC) or (magic[:1] == _PICKLE_MAGIC and magic[1:2] in (b"\x02", b"\x03",
                                                                                               b"\x04", b"\x05"))
    if path.suffix == ".safetensors" and is_torch_file and not is_safetensors:
        # a renamed .pth: the safetensors reader would only say "header too large"; the safe loader reads it
        print(f"note: {path} is a PyTorch checkpoint (torch.save), not safetensors despite its name; reading it "
              "with the safe torch loader (weights_only)", file=sys.stderr)
        return _flatten_tensors(_torch_load(path), path)
    if path.suffix == ".safetensors" or is_safetensors:
        return _safetensors_load(path)
    if not is_torch_file:
        _refuse_non_checkpoint(path)
    return _flatten_tensors(_torch_load(path), path)


def _refuse_non_checkpoint(path: Path) -> None:
    """A recipe, video or ONNX graph where weights go is named as such: the safe loader's own refusal ("not a plain
    weights file ... convert it in a trusted environment") reads like a security problem with a real checkpoint."""
    from microact.filekind import ONNX, TEXT_SUFFIXES, VIDEO, sniff

    kind = sniff(path)
    # text counts only under a text suffix: an old protocol-0 pickle (.pth) is text too, and the safe loader's
    # refusal is the right answer for it
    if kind in (VIDEO, ONNX) or (kind is not None and path.suffix.lower() in TEXT_SUFFIXES):
        swapped = (" (microact test takes the recipe first: microact test RECIPE WEIGHTS)"
                   if path.suffix.lower() in (".yaml", ".yml") else "")
        raise CheckpointError(f"{path}: {kind}, not a weights file: give the .safetensors a run wrote "
                              f"(model_final / model_best) or a checkpoint file here{swapped}")


# ----------------------------------------------------------------------------------------------------
# Key mapping
# ----------------------------------------------------------------------------------------------------

_DROP_PREFIXES = ("decoder.", "encoder_to_decoder.", "mask_token", "decoder_pos_embed", "data_preprocessor.")

# mmaction2 -> official, applied to names after the `backbone.` prefix is stripped.
_MMA_RULES = (
    ("patch_embed.projection.", "patch_embed.proj."),
    (".mlp.layers.0.0.", ".mlp.fc1."),
    (".mlp.layers.1.", ".mlp.fc2."),
)

# HF -> official, applied to names after the `videomae.` prefix is stripped (order matters:
# `attention.output.dense` must be renamed before the block's own `output.dense`).
_HF_RULES = (
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    (".attention.attention.q_bias", ".attn.q_bias"),
    (".attention.attention.v_bias", ".attn.v_bias"),
    (".attention.attention.query.bias", ".attn.q_bias"),
    (".attention.attention.value.bias", ".attn.v_bias"),
    (".attention.output.dense.", ".attn.proj."),
    (".layernorm_before.", ".norm1."),
    (".layernorm_after.", ".norm2."),
    (".intermediate.dense.", ".mlp.fc1."),
    (".output.dense.", ".mlp.fc2."),
)


@dataclass
class Conversion:
    """Everything :func:`convert_state_dict` learned about a checkpoint.

    Attributes:
        backbone: canonical backbone tensors (official names, may hold ``norm.*`` and/or ``fc_norm.*``).
        head: ``head.weight`` / ``head.bias`` of the stock classifier, if the file has one.
        layout: "official", "official-pretrain", "mmaction2", "hf", "hf-v5" or "microact" (the weights
            ``microact train`` writes: a recognizer whose backbone already has the canonical names).
        rules: how many tensors each mapping rule touched.
        dropped: names (as found) that were dropped, with the reason.
        notes: warnings (e.g. a stored position table that differs from the analytic one).
    """

    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    layout: str
    rules: Counter = field(default_factory=Counter)
    dropped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _strip_wrappers(sd: Mapping[str, torch.Tensor], rules: Counter) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        while k.startswith(("module.", "_orig_mod.")):
            p = "module." if k.startswith("module.") else "_orig_mod."
            rules[f"strip {p}"] += 1
            k = k[len(p):]
        out[k.replace("._orig_mod.", ".")] = v
    return out


# A microact recognizer's state dict (the weights `microact train` writes): the official backbone names under
# `backbone.` (two-stream: `backbone.rgb.` / `backbone.flow.`) beside microact's heads (`cls_head.fc_cls`,
# `fc_frame.` ...). mmaction2 shares the `backbone.` / `cls_head.` prefixes but never these backbone names: its
# patch embedding is `patch_embed.projection` and its MLP `mlp.layers.*`.
_MICROACT_KEY = re.compile(r"backbone\.(?:(?:rgb|flow)\.)?(?:patch_embed\.proj\.|blocks\.\d+\.attn\.qkv\.weight)")


def _detect_layout(keys: list[str]) -> str:
    if any(".encoder.layer." in f".{k}" or "patch_embeddings.projection" in k for k in keys):
        return "hf-v5" if any(k.endswith("attention.attention.query.bias") for k in keys) else "hf"
    mmaction2 = any("patch_embed.projection." in k or ".mlp.layers.0.0." in k for k in keys)
    if not mmaction2 and any(_MICROACT_KEY.match(k) for k in keys):
        return "microact"
    if mmaction2 or any(k.startswith("cls_head.") for k in keys):
        return "mmaction2"
    if any("patch_embed.proj." in k or ".attn.qkv.weight" in k for k in keys):
        if any(k.startswith("encoder.") for k in keys) and any(k.startswith(_DROP_PREFIXES) for k in keys):
            return "official-pretrain"
        return "official"
    raise CheckpointError(
        "cannot recognise the checkpoint layout (no VideoMAE patch-embedding or attention key); first keys: "
        + ", ".join(keys[:8]))


def _check_pos_table(name: str, table: torch.Tensor, notes: list[str]) -> None:
    """A stored table is never used; say so if it is not the analytic sinusoid (e.g. learned or stale)."""
    t = table.reshape(-1, table.shape[-1]).float()  # [N, D]
    ref = sinusoid_table(t.shape[0], t.shape[1])
    diff = (t - ref).abs().max().item()
    if diff > 1e-4:
        notes.append(f"{name}: stored position table differs from the analytic sinusoid (max |diff| {diff:.3g}); "
                     "it is ignored and the analytic/interpolated table is used")


def _fuse_hf_qkv(sd: dict[str, torch.Tensor], rules: Counter) -> dict[str, torch.Tensor]:
    """Concatenate HF query/key/value weights into ``attn.qkv.weight`` rows [q; k; v]; check the k bias."""
    out = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = re.fullmatch(r"(blocks\.\d+)\.attention\.attention\.(query|key|value)\.weight", k)
        if m:
            parts.setdefault(m.group(1), {})[m.group(2)] = v
            continue
        m = re.fullmatch(r"(blocks\.\d+)\.attention\.attention\.key\.bias", k)
        if m:
            if v.abs().max().item() > 1e-6:
                raise CheckpointError(
                    f"{k}: key bias is not zero (max |b| {v.abs().max().item():.3g}); VideoMAE has no key bias, "
                    "so this is not a VideoMAE checkpoint")
            rules["drop zero key.bias"] += 1
            continue
        out[k] = v
    for block, p in parts.items():
        missing = {"query", "key", "value"} - set(p)
        if missing:
            raise CheckpointError(f"{block}: attention {', '.join(sorted(missing))} weight missing in the checkpoint")
        out[f"{block}.attn.qkv.weight"] = torch.cat([p["query"], p["key"], p["value"]], dim=0)  # [3D, D]
        rules["fuse query/key/value -> qkv"] += 1
    return out


def _split_qkv_bias(sd: dict[str, torch.Tensor], rules: Counter) -> dict[str, torch.Tensor]:
    """timm-style ``attn.qkv.bias`` -> ``q_bias`` / ``v_bias`` (its k part must be zero)."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".attn.qkv.bias"):
            q, kb, vb = v.chunk(3)
            if kb.abs().max().item() > 1e-6:
                raise CheckpointError(f"{k}: the key part of the qkv bias is not zero; not a VideoMAE checkpoint")
            out[k[:-len("qkv.bias")] + "q_bias"] = q
            out[k[:-len("qkv.bias")] + "v_bias"] = vb
            rules["split qkv.bias -> q_bias, v_bias"] += 1
        else:
            out[k] = v
    return out


def _rename(sd: dict[str, torch.Tensor], rules_table, rules: Counter) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        name = f".{k}"  # so rules anchored at a leading dot also match the first component
        for old, new in rules_table:
            if old in name:
                name = name.replace(old, new)
                rules[f"{old.strip('.')} -> {new.strip('.')}"] += 1
        out[name[1:]] = v
    return out


def _convert(sd: Mapping[str, torch.Tensor]) -> Conversion:
    rules: Counter = Counter()
    dropped: dict[str, str] = {}
    notes: list[str] = []
    sd = _strip_wrappers(sd, rules)
    layout = _detect_layout(list(sd))
    head: dict[str, torch.Tensor] = {}
    body: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith(_DROP_PREFIXES):
            dropped[k] = "pre-training decoder"
            continue
        name = k
        for prefix in ("videomae.", "backbone.", "encoder."):
            if name.startswith(prefix) and not (layout.startswith("hf") and prefix == "encoder."):
                rules[f"strip {prefix}"] += 1
                name = name[len(prefix):]
        if name in ("head.weight", "head.bias", "classifier.weight", "classifier.bias",
                    "cls_head.fc_cls.weight", "cls_head.fc_cls.bias"):
            head["head." + name.rsplit(".", 1)[1]] = v
            rules[f"{name.rsplit('.', 1)[0]} -> head"] += 1
            continue
        if name.endswith(("pos_embed", "position_embeddings")):
            _check_pos_table(k, v, notes)
            dropped[k] = "position table (rebuilt analytically)"
            continue
        if not (name.startswith(("patch_embed.", "blocks.", "norm.", "fc_norm.", "layernorm.", "embeddings.",
                                 "encoder.layer."))):
            dropped[k] = "not part of the backbone"
            continue
        body[name] = v
    if layout.startswith("hf"):
        body = {re.sub(r"^encoder\.layer\.(\d+)\.", r"blocks.\1.", k): v for k, v in body.items()}
        rules["encoder.layer.i -> blocks.i"] += sum(1 for k in body if k.startswith("blocks."))
        body = _fuse_hf_qkv(body, rules)
        body = _rename(body, _HF_RULES, rules)
        body = {("norm." + k[len("layernorm."):] if k.startswith("layernorm.") else k): v for k, v in body.items()}
    elif layout == "mmaction2":
        body = _rename(body, _MMA_RULES, rules)
    body = _split_qkv_bias(body, rules)
    q_biases = [v for k, v in body.items() if k.endswith("attn.q_bias")]
    # microact's own weights never went through transformers (a model trained from scratch starts at zero biases)
    if layout != "microact" and q_biases and all(v.abs().max().item() == 0 for v in q_biases):
        notes.append("every q_bias is exactly zero: the file may come from a transformers-5 save that lost the "
                     "q/v biases (VIDEOMAE.md §3.7); convert from the original weights if possible")
    return Conversion(body, head, layout, rules, dropped, notes)


def convert_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """Map a state dict of any supported layout to microact's canonical names.

    Args:
        sd: flat ``{name: tensor}`` (containers already unwrapped, e.g. by :func:`read_checkpoint`).

    Returns:
        ``(backbone_sd, head_sd, layout)``: backbone tensors with official names (may contain ``norm.*``
        and/or ``fc_norm.*``; :func:`load_pretrained` picks by output mode), the classifier as
        ``{"head.weight", "head.bias"}`` (empty if none), and the detected layout name.
    """
    conv = _convert(sd)
    return conv.backbone, conv.head, conv.layout


# ----------------------------------------------------------------------------------------------------
# Loading into a model
# ----------------------------------------------------------------------------------------------------


_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def _hf_config_file(path: Path) -> Optional[Path]:
    """The ``config.json`` of a Hugging Face checkpoint: in its ``save_pretrained`` folder, or beside a bare
    ``model.safetensors`` / ``pytorch_model.bin`` (a hub snapshot); ``None`` when there is none."""
    found = path / "config.json" if path.is_dir() else (path.parent / "config.json"
                                                         if path.name in _HF_WEIGHT_FILES else None)
    return found if found is not None and found.is_file() else None


def _read_hf_config(path: Path, notes: list[str]) -> dict:
    """The sizes a Hugging Face ``config.json`` states ({} when it cannot be read: the weights still load, the
    shape checks still apply, a note says the file was not used)."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        notes.append(f"{path}: not readable JSON ({e}); the weights were checked by their shapes only")
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _ratio(width: int, dim: int) -> str:
    """``width / dim`` as an ``mlp_ratio`` to type: 6 significant digits round back to ``width`` for any ViT size."""
    return f"{width / dim:.6g}"


def _check_hf_config(cfg_path: Path, cfg: Mapping, bb: VideoMAE) -> None:
    """Refuse an HF checkpoint whose ``config.json`` asks for what the model was not built with (naming the key and
    how to build a backbone that fits), or for what microact's VideoMAE cannot compute.

    The MLP width and the head count matter most: the head count cannot be read from any tensor shape (the fused
    query/key/value projection is ``[3D, D]`` whatever the number of heads), so a wrong one loads and computes
    something else.
    """
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{cfg_path}: hidden_act is {act!r}; microact's VideoMAE computes the MLP with the "
                              "exact (erf) GELU, hidden_act 'gelu', and cannot run this checkpoint")
    hidden = cfg.get("hidden_size")
    if hidden != bb.embed_dim:
        return  # another backbone size altogether: the shape check names the tensors and the size
    width = bb.blocks[0].mlp.fc1.out_features if len(bb.blocks) else None
    wanted = cfg.get("intermediate_size")
    if isinstance(wanted, int) and width is not None and wanted != width:
        raise CheckpointError(
            f"{cfg_path}: intermediate_size is {wanted} (MLP ratio {_ratio(wanted, hidden)} of hidden_size {hidden}) "
            f"but the model's MLP is {width} wide (mlp_ratio {bb.mlp_ratio:g}): build the backbone with "
            f"mlp_ratio={_ratio(wanted, hidden)} (a recipe's model.overrides: {{mlp_ratio: {_ratio(wanted, hidden)}}}; "
            f"create_backbone(..., mlp_ratio={_ratio(wanted, hidden)}))")
    heads = cfg.get("num_attention_heads")
    if isinstance(heads, int) and heads != bb.num_heads:
        raise CheckpointError(
            f"{cfg_path}: num_attention_heads is {heads} but the model has {bb.num_heads} heads (the weights' shapes "
            f"cannot tell): build the backbone with num_heads={heads} (a recipe's model.overrides: "
            f"{{num_heads: {heads}}}; create_backbone(..., num_heads={heads}))")


def _mlp_hint(key: str, found: tuple, dim: int) -> str:
    """For an MLP weight of another width but the model's dim: the ``mlp_ratio`` that fits it ("" otherwise)."""
    if key.endswith("mlp.fc1.weight") and len(found) == 2 and found[1] == dim:
        width = found[0]
    elif key.endswith("mlp.fc2.weight") and len(found) == 2 and found[0] == dim:
        width = found[1]
    elif key.endswith("mlp.fc1.bias") and len(found) == 1:
        width = found[0]
    else:
        return ""
    return (f"; the checkpoint's MLP is {width} wide, mlp_ratio {_ratio(width, dim)}: build the backbone with "
            f"mlp_ratio={_ratio(width, dim)} (a recipe's model.overrides: {{mlp_ratio: {_ratio(width, dim)}}})")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        source: the checkpoint path (or "<state_dict>").
        layout: detected layout.
        loaded: backbone (and head) keys that were copied into the model.
        missing: model keys the checkpoint did not provide (left at their initialisation).
        unexpected: mapped checkpoint keys the model has no place for.
        dropped: checkpoint keys dropped on purpose (decoder, position table, unused head...).
        skipped_final_norm: final-norm keys deliberately not loaded (seed-faithful map mode).
        head_loaded: whether classifier weights were loaded.
        notes: warnings worth reading.
    """

    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    skipped_final_norm: list[str] = field(default_factory=list)
    head_loaded: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs."""
        parts = [f"{self.source} ({self.layout}): loaded {len(self.loaded)}", f"missing {len(self.missing)}",
                 f"unexpected {len(self.unexpected)}", f"dropped {len(self.dropped)}"]
        if self.skipped_final_norm:
            parts.append("final norm kept fresh (load_final_norm=False)")
        parts.append("head loaded" if self.head_loaded else "no head loaded")
        line = ", ".join(parts)
        if self.missing:
            line += f"; missing: {', '.join(self.missing[:4])}{' ...' if len(self.missing) > 4 else ''}"
        return line


def _backbone_of(module: nn.Module) -> VideoMAE:
    if isinstance(module, VideoMAE):
        return module
    bb = getattr(module, "backbone", None)
    if isinstance(bb, VideoMAE):
        return bb
    raise CheckpointError(f"load_pretrained: expected a VideoMAE or a module with a .backbone VideoMAE, "
                          f"got {type(module).__name__}")


def _select_final_norm(bb: VideoMAE, body: dict[str, torch.Tensor], load_final_norm: Optional[bool],
                       report: LoadReport) -> dict[str, torch.Tensor]:
    """Pick the checkpoint's final LayerNorm for the model's output mode (VIDEOMAE.md §3.8 step 4)."""
    norm = {k: v for k, v in body.items() if k.startswith("norm.")}
    fc = {k: v for k, v in body.items() if k.startswith("fc_norm.")}
    body = {k: v for k, v in body.items() if not k.startswith(("norm.", "fc_norm."))}
    target = "fc_norm" if bb.output == "pooled" else "norm"
    # pooled: load unless told not to; map: the seed loses the pre-trained final norm (SEED.md §2.2).
    load = (bb.output == "pooled") if load_final_norm is None else bool(load_final_norm)
    if target == "fc_norm":
        chosen, origin = (fc, "fc_norm") if fc else (norm, "norm")
    else:
        chosen, origin = (norm, "norm") if norm else (fc, "fc_norm")
    unused = fc if origin == "norm" else norm
    report.dropped += [f"{k} (final norm not used by output={bb.output!r})" for k in unused]
    if not load:
        report.skipped_final_norm = [f"{target}.weight", f"{target}.bias"]
        report.dropped += [f"{k} (load_final_norm=False)" for k in chosen]
        return body
    for k, v in chosen.items():
        body[target + k[len(origin):]] = v
    if chosen and origin != target:
        report.notes.append(f"final norm: checkpoint {origin}.* loaded into {target}.*")
    return body


def load_pretrained(
        module: nn.Module,
        path: Union[PathLike, Mapping[str, torch.Tensor]],
        *,
        keep_head: bool = False,
        load_final_norm: Optional[bool] = None,
        strict: bool = True,
) -> LoadReport:
    """Load pretrained VideoMAE weights (any supported layout) into a backbone or a recognizer.

    Args:
        module: a :class:`VideoMAE`, or any module whose ``.backbone`` is one (e.g. a Recognizer).
        path: checkpoint file, HF folder, or an in-memory state dict.
        keep_head: also load the classifier (``head`` of a VideoMAE with ``num_classes``, or
            ``module.load_head_state({"head.weight", "head.bias"})`` of a recognizer).
        load_final_norm: whether the final LayerNorm is loaded. Default: yes for ``output="pooled"``
            (``fc_norm`` <- ``fc_norm``, else ``norm``), no for ``output="map"`` (seed-faithful: its final
            ``norm`` starts at gamma=1, beta=0; SEED.md §2.2). True in map mode loads ``norm`` <- ``norm``,
            else ``fc_norm``.
        strict: raise on unexpected or missing backbone keys (a deliberately skipped final norm and an
            unused head are not errors).

    Returns:
        A :class:`LoadReport`; its one-line summary is also logged.

    Raises:
        CheckpointError: unreadable/unsafe file, unknown layout, shape mismatch (names the key and both
            shapes), or (strict) unexpected / missing backbone keys.
    """
    bb = _backbone_of(module)
    if isinstance(path, Mapping):
        source, sd = "<state_dict>", dict(path)
    else:
        source, sd = str(path), read_checkpoint(path)
    try:
        conv = _convert(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    report = LoadReport(source=source, layout=conv.layout, notes=list(conv.notes))
    cfg_path = None if isinstance(path, Mapping) or not conv.layout.startswith("hf") else _hf_config_file(Path(path))
    if cfg_path is not None:
        _check_hf_config(cfg_path, _read_hf_config(cfg_path, report.notes), bb)
    report.dropped += [f"{k} ({why})" for k, why in conv.dropped.items()]
    body = _select_final_norm(bb, dict(conv.backbone), load_final_norm, report)

    head_for_recognizer = None
    if conv.head:
        if not keep_head:
            report.dropped += [f"{k} (keep_head=False)" for k in conv.head]
        elif bb is module and bb.num_classes:
            body.update(conv.head)
        elif bb is not module and hasattr(module, "load_head_state"):
            head_for_recognizer = conv.head
        else:
            raise CheckpointError(f"{source}: keep_head=True but {type(module).__name__} has no classifier head "
                                  "to load it into (build the backbone with num_classes, or drop keep_head)")
    elif keep_head:
        report.notes.append("keep_head=True but the checkpoint has no classifier")

    own = bb.state_dict()
    for k, v in body.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            hint = (_mlp_hint(k, tuple(v.shape), bb.embed_dim)
                    or " (wrong backbone size, patch/tubelet, or class count?)")
            raise CheckpointError(f"{source}: {k}: checkpoint shape {tuple(v.shape)} does not match the model's "
                                  f"{tuple(own[k].shape)}{hint}")
    report.unexpected = [k for k in body if k not in own]
    ignorable = set(report.skipped_final_norm)
    if not (keep_head and bb is module):
        ignorable |= {"head.weight", "head.bias"}
    report.missing = [k for k in own if k not in body and k not in ignorable]
    if strict and (report.unexpected or report.missing):
        raise CheckpointError(
            f"{source}: strict load failed ({conv.layout} layout): unexpected {report.unexpected[:6]}"
            f"{' ...' if len(report.unexpected) > 6 else ''}, missing {report.missing[:6]}"
            f"{' ...' if len(report.missing) > 6 else ''} (pass strict=False to load what matches)")
    loadable = {k: v for k, v in body.items() if k in own}
    with torch.no_grad():
        for k, v in loadable.items():
            own[k].copy_(v.to(own[k].dtype))  # state_dict tensors share storage with the parameters
    report.loaded = list(loadable)
    if head_for_recognizer is not None:
        module.load_head_state(head_for_recognizer)
        report.loaded += list(head_for_recognizer)
        report.head_loaded = True
    report.head_loaded = report.head_loaded or any(k.startswith("head.") for k in loadable)
    logger.info("load_pretrained: %s", report.summary())
    for note in report.notes:
        logger.warning("load_pretrained: %s", note)
    return report


# ----------------------------------------------------------------------------------------------------
# `microact convert`
# ----------------------------------------------------------------------------------------------------


def _reference_shapes(name: str, num_classes: int = 0, mlp_ratio: Optional[float] = None) -> dict[str, tuple[int, ...]]:
    """Every tensor shape of a built-in backbone (with another ``mlp_ratio`` when given), in both output modes
    (``fc_norm`` and ``norm``); shapes only."""
    kwargs = arch_config(name)
    if mlp_ratio is not None:
        kwargs["mlp_ratio"] = mlp_ratio
    with torch.device("meta"):  # nothing allocated, even for ViT-H
        pooled = VideoMAE(output="pooled", num_classes=num_classes, **kwargs)
        token_map = VideoMAE(output="map", **kwargs)
    return {k: tuple(v.shape) for k, v in {**pooled.state_dict(), **token_map.state_dict()}.items()}


def _describe_sizes(body: Mapping[str, torch.Tensor]) -> str:
    """The size-defining shapes of converted backbone tensors, in words (the head count cannot be read: the
    fused qkv projection is ``[3D, D]`` whatever the number of heads)."""
    parts = []
    proj = body.get("patch_embed.proj.weight")
    if proj is not None:
        parts.append(f"embed dim {proj.shape[0]}")
    parts.append(f"depth {len({k.split('.')[1] for k in body if k.startswith('blocks.')})}")
    fc1 = body.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        parts.append(f"MLP width {fc1.shape[0]}")
    if proj is not None and proj.dim() == 5:
        parts.append(f"tubelet {proj.shape[2]} x patch {proj.shape[3]}x{proj.shape[4]}")
    return ", ".join(parts)


def _misfits(body: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Tensors that have no place in a backbone or another shape there (``[]``: every tensor fits)."""
    out = []
    for k, v in body.items():
        if k not in shapes:
            out.append(f"{k}: no such tensor")
        elif shapes[k] != tuple(v.shape):
            out.append(f"{k}: shape {tuple(v.shape)}, the backbone's {shapes[k]}")
    return out


def _weights_mlp_ratio(body: Mapping[str, torch.Tensor]) -> Optional[float]:
    """The converted weights' MLP width over their embed dim (``None`` without a patch embedding or a block)."""
    proj, fc1 = body.get("patch_embed.proj.weight"), body.get("blocks.0.mlp.fc1.weight")
    if proj is None or fc1 is None or fc1.dim() != 2:
        return None
    return fc1.shape[0] / proj.shape[0]


def _guess_backbone(body: Mapping[str, torch.Tensor], mlp_ratio: Optional[float] = None) -> Optional[str]:
    """The built-in backbone every converted tensor fits (embed dim, depth, MLP width, patch and tubelet: every
    shape is compared, not just the width and depth), or ``None`` when none does. With ``mlp_ratio`` the built-in
    sizes are taken with that MLP ratio (a checkpoint whose MLP is not 4x its width fits the size built with it)."""
    if "patch_embed.proj.weight" not in body:
        return None
    for name in list_backbones():
        if not _misfits(body, _reference_shapes(name, mlp_ratio=mlp_ratio)):
            return name
    return None


def weights_metadata(path: PathLike) -> Optional[dict[str, str]]:
    """The safetensors metadata of a weights file (header only), or ``None`` when it is not a readable safetensors
    file (missing, a folder, a ``.pth``, corrupt): loading the weights is what reports those."""
    try:
        with open(path, "rb") as f:
            if f.read(9)[8:9] != b"{":  # not a safetensors header
                return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return None


def _describe_layout(conv: Conversion, metadata: Mapping[str, str]) -> tuple[str, Optional[str]]:
    """The layout ``microact convert`` records for a file, and a line saying so when the file is microact's own.

    A ``convert`` output (metadata ``format: microact-videomae``) is already the canonical layout and is copied; it
    keeps the layout it was converted from. A recognizer's weights (``microact train``'s ``model_final`` ...) hold
    the canonical backbone under ``backbone.``, which convert extracts.
    """
    if metadata.get("format") == "microact-videomae":
        origin = metadata.get("layout", "unknown")
        return origin, (f"microact's own (a microact convert output, converted from the {origin} layout): already "
                        "the canonical layout, so the tensors are copied")
    if conv.layout == "microact":
        return "microact", ("microact's own (a recognizer's weights, as microact train writes them): the backbone is "
                            "already in the canonical layout, so convert only extracts it (backbone.* without the "
                            "prefix) and drops microact's heads (cls_head.fc_cls is kept as head with --keep-head)")
    return conv.layout, None


def cli_convert(args) -> int:
    """``microact convert IN OUT.safetensors [--backbone NAME] [--keep-head]``.

    Without ``--backbone`` the built-in backbone every converted shape fits (width, depth, MLP width, patch and
    tubelet) is used for the check and printed; when none fits, the tensors are written unchecked and the output
    says so. The metadata records the source layout and file and the backbone, never a training recipe.
    """
    from safetensors.torch import save_file

    src, out = Path(args.input), Path(args.output)
    if out.suffix != ".safetensors":
        raise CheckpointError(f"{out}: the output must be a .safetensors file")
    try:
        conv = _convert(read_checkpoint(src))
    except CheckpointError as e:
        message = str(e)
        raise CheckpointError(message if message.startswith(str(src)) else f"{src}: {message}") from None
    if conv.layout == "microact" and not conv.backbone:
        # two-stream recognizers keep their backbones under backbone.rgb. / backbone.flow., which are no backbone
        # names after the prefix is stripped: the conversion would write nothing
        streams = [s for s in ("rgb", "flow") if any(k.startswith(f"backbone.{s}.") for k in conv.dropped)]
        raise CheckpointError(
            f"{src}: a two-stream recognizer's weights ({', '.join(f'backbone.{s}.*' for s in streams)}): convert "
            "extracts the backbone of a one-stream recognizer only; use these weights with the two-stream recipe "
            "they were trained with (microact test / predict)")
    metadata_in = weights_metadata(src) or {}
    layout, own = _describe_layout(conv, metadata_in)
    tensors = dict(conv.backbone)
    if args.keep_head:
        tensors.update(conv.head)
    sizes = _describe_sizes(conv.backbone)
    choices = ", ".join(list_backbones())
    # The built-in sizes are 4x MLPs; a checkpoint with another ratio (e.g. a Hugging Face config.json whose
    # intermediate_size is not 4 x hidden_size) fits the size built with its own ratio, which the output names.
    ratio = _weights_mlp_ratio(conv.backbone)
    ratio_text = ""  # the ratio to build with, when it is not the built-in 4
    if ratio is not None:
        dim = conv.backbone["patch_embed.proj.weight"].shape[0]
        width = conv.backbone["blocks.0.mlp.fc1.weight"].shape[0]
        ratio_text = _ratio(width, dim) if width != mlp_width(dim, 4.0) else ""
    guess = None if args.backbone else _guess_backbone(conv.backbone, ratio)
    name = args.backbone or guess
    if name is not None:
        shapes = _reference_shapes(name, conv.head["head.weight"].shape[0] if args.keep_head and conv.head else 0,
                                   ratio)
        misfits = _misfits(tensors, shapes)
        if misfits:
            origin = "given by --backbone" if args.backbone else "guessed from the weights"
            fitting = _guess_backbone(conv.backbone, ratio) if args.backbone else None
            fix = f"--backbone {fitting} fits them" if fitting else (
                f"pass --backbone with one that fits them (one of: {choices}), or none to write them unchecked")
            raise CheckpointError(
                f"{src}: the weights ({sizes}) do not fit {name} ({origin}): {misfits[0]}"
                f"{f' (and {len(misfits) - 1} more)' if len(misfits) > 1 else ''}; {fix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    metadata = {"format": "microact-videomae", "layout": layout, "source": src.name, "backbone": name or "unknown"}
    if ratio_text:
        metadata["mlp_ratio"] = ratio_text
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(out)
    with_ratio = f" with mlp_ratio {ratio_text}" if ratio_text and name else ""
    print(f"{src} -> {out}: layout {'microact' if own else layout}, backbone {name or 'unknown'}{with_ratio}"
          f"{' (guessed)' if name and not args.backbone else ''}, {len(tensors)} tensors written")
    if own:
        print(f"  layout: {own}")
    if guess:
        print(f"  backbone: every shape fits {guess}{with_ratio} ({sizes})")
    elif not name:
        print(f"  backbone: none of the built-in backbones fits the weights ({sizes}): the tensors were written "
              f"unchecked (load_pretrained checks them against the model); --backbone NAME checks against one of: "
              f"{choices}")
    if ratio_text:
        print(f"  MLP ratio {ratio_text}, not the built-in sizes' 4: build the backbone with mlp_ratio={ratio_text} "
              f"(a recipe's model.overrides: {{mlp_ratio: {ratio_text}}}) to load these weights")
    cfg_path = _hf_config_file(src) if conv.layout.startswith("hf") else None
    heads = _read_hf_config(cfg_path, conv.notes).get("num_attention_heads") if cfg_path else None
    if name and isinstance(heads, int) and heads != arch_config(name)["num_heads"]:
        print(f"  {cfg_path.name}: num_attention_heads {heads}, {name} has {arch_config(name)['num_heads']}: build "
              f"the backbone with num_heads={heads} (a recipe's model.overrides: {{num_heads: {heads}}})")
    for rule, n in sorted(conv.rules.items()):
        print(f"  {n:5d}  {rule}")
    if conv.head and not args.keep_head:
        print(f"  head dropped: {', '.join(f'{k} {tuple(v.shape)}' for k, v in conv.head.items())} (use --keep-head)")
    reasons = Counter(conv.dropped.values())
    for why, n in reasons.items():
        print(f"  {n:5d}  dropped: {why}")
    for k in list(conv.dropped)[:10]:
        print(f"         - {k}")
    for note in conv.notes:
        if own and "q_bias" in note:  # microact's files never went through transformers; zero biases are its own
            continue
        print(f"  note: {note}")
    return 0
