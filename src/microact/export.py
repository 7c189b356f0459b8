"""``microact export``: a trained recognizer as an ONNX graph, checked against PyTorch with onnxruntime.

The graph takes what the loader gives the model, before the device: pixels ``0..255`` laid out
``[batch, C, T, H, W]`` (C = 3 RGB, or 6 = RGB then optical flow for two-stream presets), uint8 by default
(``--input-dtype float32`` for runtimes that do not take uint8 inputs), test views already cut
(:class:`~microact.data.transforms.TestTransform`). Inside the graph: the normalisation of
:func:`~microact.data.transforms.normalize_batch` (the flow channels with the recipe's flow statistics),
``model.input_mode=rgb_diff`` (it lives in ``Recognizer.forward``), the backbone and the lead head. Outputs:

- ``fine_probs`` ``[batch, K]``: softmax of the lead fine logits, what ``Recognizer.predict_proba`` gives for one
  clip per row;
- ``coarse_head_probs`` ``[batch, G]``: softmax of the coarse lead head, one column per group of the model's classes
  (MA-52: 7 body parts; ``*_frame_coarse_*`` presets only, so never for a flat taxonomy).

The classes are the :class:`~microact.taxonomy.Taxonomy` the weights record (what they were trained on), else the
recipe's ``data.classes`` file, else MA-52's, chosen as ``microact predict`` chooses them
(:func:`~microact.predict.predictor_taxonomy`); their names and groups go into the metadata.

Averaging over a video's views (``eval.test_clips`` x crops, ``eval.average``) stays with the caller, as in
``microact test``: run the views as rows of one batch and average the rows. The batch axis is dynamic unless
``--static-batch``. Everything a user of the ``.onnx`` file alone needs to feed it (class names, frames, size,
input mode, mean/std per channel, the recipe) is in the model's ``metadata_props`` under ``microact.*``.

Exporters (torch 2.4 .. 2.13): ``torch.onnx.export(dynamo=False)``, the TorchScript tracer, exports this model in
about a second at any opset from 13 (``--attention math``) or 14 (``--attention sdpa``: ONNX has no fused attention
op before opset 23, so PyTorch writes SDPA as matmul-softmax-matmul from opset 14) to 20; it is deprecated in torch
2.9+ but present in 2.13. ``dynamo=True`` (``torch.export`` + onnxscript) is the future path; it writes opset 18 or
newer (torch's down-conversion to 17 fails on this graph). ``--exporter auto`` takes the TorchScript exporter and
falls back to dynamo when it is missing or fails.

Example::

    microact export runs/best/model_final.safetensors best.onnx
    microact export model.safetensors model.onnx --config configs/tiny_synth.yaml --opset 17 --time
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from microact.errors import MicroactError
from microact.taxonomy import Taxonomy

INPUT_NAME = "clip"
FINE_OUTPUT = "fine_probs"
COARSE_OUTPUT = "coarse_head_probs"
DEFAULT_TOLERANCE = 1e-4  # max abs difference of probabilities, fp32
MIN_OPSET = 13
SDPA_MIN_OPSET = 14  # the TorchScript exporter's first opset with a translation of scaled_dot_product_attention
DYNAMO_MIN_OPSET = 18
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 18}


def torchscript_max_opset() -> int:
    """The newest opset this PyTorch's TorchScript exporter translates to (20 in torch 2.4 .. 2.13); above it the
    exporter only warns and writes a graph it does not vouch for."""
    try:
        from torch.onnx import _constants

        return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))
    except ImportError:  # a PyTorch without the TorchScript exporter
        return 20
EXPORTERS = ("auto", "torchscript", "dynamo")
ATTENTIONS = ("math", "sdpa")
INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
# protobuf cannot serialise a message over 2 GiB: larger graphs (ViT-H) keep their weights in OUT.onnx.data
_INLINE_LIMIT = 1_800_000_000
_EXTRA = 'pip install -c constraints.txt "microact[onnx]" (onnx, onnxruntime, onnxscript)'


class ExportError(MicroactError):
    """An export cannot be done (options that do not fit together, a missing package) or its graph disagrees with
    PyTorch."""


def _require(module: str):
    """Import an optional package of the ``onnx`` extra or say which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f"microact export needs the package {module!r} ({e}); install the onnx extra: "
                          f"{_EXTRA}") from None


# --------------------------------------------------------------------------------------------
# The exported module
# --------------------------------------------------------------------------------------------


class PixelClassifier(nn.Module):
    """Pixels ``0..255`` ``[B, C, T, H, W]`` -> lead-head probabilities: the module that is exported.

    Args:
        model: a :class:`~microact.models.recognizer.Recognizer` (in eval mode).
        input_stats: :func:`~microact.engine.builders.input_statistics` of the recipe.
    """

    def __init__(self, model: nn.Module, input_stats: Optional[dict] = None):
        super().__init__()
        self.model = model
        self.input_stats = dict(input_stats or {})
        self.has_coarse = model.has_coarse

    def forward(self, clip: torch.Tensor):
        from microact.data.transforms import normalize_batch

        x = normalize_batch(clip, **self.input_stats)  # float32 [B, C, T, H, W]; rgb_diff is in the model's forward
        out = self.model(x)
        fine = out.fine.float().softmax(dim=-1)  # [B, K]
        if not self.has_coarse:
            return fine
        return fine, out.coarse.float().softmax(dim=-1)  # [B, K], [B, G]: G groups of the model's taxonomy


@contextlib.contextmanager
def export_mode(model: nn.Module, attention: str):
    """``model`` as it is exported, inside the context: eval mode (dropout and drop path off), gradient
    checkpointing off, every VideoMAE attention layer computing with ``attention`` (``"sdpa"`` or ``"manual"``).
    The model's own settings come back afterwards."""
    from microact.models.videomae import Attention, VideoMAE

    layers = [m for m in model.modules() if isinstance(m, Attention)]
    backbones = [m for m in model.modules() if isinstance(m, VideoMAE)]
    before = ([m.attn_impl for m in layers], [m.grad_checkpointing for m in backbones], model.training)
    for m in layers:
        m.attn_impl = attention
    for m in backbones:
        m.grad_checkpointing = False
    model.eval()
    try:
        yield model
    finally:
        for m, value in zip(layers, before[0]):
            m.attn_impl = value
        for m, value in zip(backbones, before[1]):
            m.grad_checkpointing = value
        model.train(before[2])


def model_taxonomy(model: nn.Module, taxonomy: Optional[Taxonomy] = None) -> Taxonomy:
    """The classes of an exported model: ``taxonomy`` when given, else the model's own (``Recognizer.taxonomy``);
    a model built without one (only possible from the library, with a count other than MA-52's) gets the flat
    names ``class_0 .. class_{K-1}``.

    Raises:
        ExportError: ``taxonomy`` has another class or group count than the model's heads.
    """
    taxonomy = taxonomy or getattr(model, "taxonomy", None)
    if taxonomy is None:
        return Taxonomy(tuple(f"class_{i}" for i in range(model.num_classes)), source="the model (no class names)")
    if taxonomy.num_fine != model.num_classes:
        raise ExportError(f"the model has {model.num_classes} classes but the taxonomy "
                          f"{taxonomy.describe()} lists {taxonomy.num_fine}")
    if model.has_coarse and not taxonomy.has_coarse:
        raise ExportError(f"the model has coarse heads but the taxonomy {taxonomy.describe()} has no groups")
    return taxonomy


def output_columns(taxonomy: Taxonomy, has_coarse: bool) -> dict[str, tuple[int, str]]:
    """``{output name: (column count, what it holds)}`` of the graph of a model with ``taxonomy``'s classes (and a
    coarse head when ``has_coarse``)."""
    k, g = taxonomy.num_fine, taxonomy.num_coarse
    columns = {FINE_OUTPUT: (k, f"softmax of the lead fine head [batch, {k}], a column per microact.class_names")}
    if has_coarse:
        columns[COARSE_OUTPUT] = (g, f"softmax of the coarse lead head [batch, {g}], a column per "
                                     "microact.coarse_class_names")
    return columns


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file.
        exporter: ``"torchscript"`` or ``"dynamo"`` (the one that produced the graph).
        opset: the graph's ai.onnx opset.
        input_shape: the input's shape, ``"batch"`` for a dynamic batch axis.
        outputs: output names, in order.
        metadata: the ``microact.*`` metadata_props written.
        data_file: the external weights file (graphs over ~1.8 GB) or None.
        notes: what happened on the way (a fallback), for the user.
    """

    path: Path
    exporter: str
    opset: int
    input_shape: list
    outputs: list[str]
    metadata: dict[str, str]
    data_file: Optional[Path] = None
    notes: list[str] = dataclasses.field(default_factory=list)


def _torch_export(module: nn.Module, example: torch.Tensor, path: Path, exporter: str, opset: int,
                  outputs: list[str], dynamic: bool) -> None:
    """One call of ``torch.onnx.export`` with ``exporter``; PyTorch's own exceptions pass through."""
    with warnings.catch_warnings():
        # The tracer warns about Python booleans taken from shapes: those are our input checks (they raise or
        # pass; no computed value depends on them). The TorchScript exporter's deprecation notice is stated in the
        # docs; printed on every export it would only alarm.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|copyreg).*")  # torch.export internals
        if exporter == "torchscript":
            axes = {name: {0: "batch"} for name in [INPUT_NAME, *outputs]} if dynamic else None
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=outputs,
                              opset_version=opset, dynamo=False, dynamic_axes=axes, do_constant_folding=True)
        else:
            _require("onnxscript")
            shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
            # its progress lines are diagnostics, not results; its registry warns that torchvision's ops are missing
            registry = logging.getLogger("torch.onnx._internal.exporter._registration")
            level = registry.level
            registry.setLevel(logging.ERROR)
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME],
                                      output_names=outputs, opset_version=opset, dynamo=True, dynamic_shapes=shapes,
                                      external_data=True, optimize=True, verbose=False)
            finally:
                registry.setLevel(level)


def _check_options(exporter: str, opset: Optional[int], attention: str, batch: int, input_dtype: str) -> None:
    if exporter not in EXPORTERS:
        raise ExportError(f"--exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    if attention not in ATTENTIONS:
        raise ExportError(f"--attention {attention!r}: choose sdpa or math")
    if input_dtype not in INPUT_DTYPES:
        raise ExportError(f"--input-dtype {input_dtype!r}: choose uint8 or float32")
    if batch < 1:
        raise ExportError(f"--batch must be at least 1, got {batch}")
    if opset is None:
        return
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: the graph needs opset {MIN_OPSET} or newer (e.g. --opset 17)")
    if attention == "sdpa" and opset < SDPA_MIN_OPSET:
        raise ExportError(f"--opset {opset} with --attention sdpa: PyTorch translates scaled_dot_product_attention "
                          f"from opset {SDPA_MIN_OPSET} on; pass --opset 17, or --attention math (explicit "
                          "matmul-softmax-matmul, exports at any opset)")
    if exporter == "torchscript" and opset > torchscript_max_opset():
        raise ExportError(f"--opset {opset} with --exporter torchscript: it translates up to opset "
                          f"{torchscript_max_opset()}; pass --exporter dynamo (or auto) for opset {opset}")
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise ExportError(f"--opset {opset} with --exporter dynamo: the dynamo exporter writes opset "
                          f"{DYNAMO_MIN_OPSET} or newer; pass --opset {DYNAMO_MIN_OPSET}, or --exporter torchscript "
                          "for an older opset")


def export_onnx(model: nn.Module, cfg, out: str | os.PathLike, *, batch: int = 1, opset: Optional[int] = None,
                attention: str = "math", exporter: str = "auto", input_dtype: str = "uint8",
                dynamic_batch: bool = True, weights: Optional[str] = None,
                taxonomy: Optional[Taxonomy] = None) -> ExportResult:
    """Export a recognizer as an ONNX graph over pixels (see the module docstring for its inputs and outputs).

    Args:
        model: the trained :class:`~microact.models.recognizer.Recognizer` of ``cfg`` (on the CPU).
        cfg: its recipe (frames, size, flow statistics, input mode; recorded in the metadata).
        out: the ``.onnx`` file to write (its folder is created).
        batch: the example batch (the fixed batch with ``dynamic_batch=False``).
        opset: ai.onnx opset (``None``: 17 with the TorchScript exporter, 18 with dynamo).
        attention: ``"math"`` (explicit matmul-softmax-matmul, the model's ``attn_impl=manual``) or ``"sdpa"``
            (``F.scaled_dot_product_attention``, opset >= 14).
        exporter: ``"auto"`` (TorchScript, else dynamo), ``"torchscript"`` or ``"dynamo"``.
        input_dtype: ``"uint8"`` or ``"float32"`` pixels (``0..255`` either way).
        dynamic_batch: a dynamic batch axis (``"batch"``) instead of ``batch``.
        weights: the weights file, named in the metadata.
        taxonomy: the model's classes (names, groups) for the metadata; ``None``: ``model.taxonomy``.

    Returns:
        :class:`ExportResult`.

    Raises:
        ExportError: options that do not fit together, a missing package of the onnx extra, both exporters failing,
            a taxonomy that does not fit the model.
    """
    from microact import __version__
    from microact.data.transforms import channel_statistics
    from microact.engine.builders import input_statistics, input_streams

    onnx = _require("onnx")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"{out}: the output file name must end in .onnx")
    _check_options(exporter, opset, attention, batch, input_dtype)
    taxonomy = model_taxonomy(model, taxonomy)
    channels = int(getattr(model.backbone, "in_chans", 3))
    frames, size = int(model.backbone.num_frames), int(cfg.data.img_size)
    module = PixelClassifier(model, input_statistics(cfg)).eval()
    outputs = [FINE_OUTPUT] + ([COARSE_OUTPUT] if module.has_coarse else [])
    # A batch of 2 to trace with when the axis is dynamic: torch.export specialises size-1 dimensions
    trace_batch = max(batch, 2) if dynamic_batch else batch
    example = torch.randint(0, 256, (trace_batch, channels, frames, size, size), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0)).to(INPUT_DTYPES[input_dtype])

    notes: list[str] = []
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    if exporter == "auto" and opset is not None and opset < DYNAMO_MIN_OPSET:
        order = ["torchscript"]  # the fallback could not write the opset asked for
    if exporter == "auto" and opset is not None and opset > torchscript_max_opset():
        order = ["dynamo"]
        notes.append(f"opset {opset} is newer than the TorchScript exporter's {torchscript_max_opset()}: used the "
                     "dynamo exporter")
    out.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export_") as tmp, torch.no_grad(), \
            export_mode(model, "manual" if attention == "math" else "sdpa"):
        raw = Path(tmp) / "graph.onnx"
        used = None
        for name in order:
            try:
                _torch_export(module, example, raw, name, opset or DEFAULT_OPSET[name], outputs, dynamic_batch)
            except ExportError as e:  # e.g. onnxscript missing for the fallback: say why it was needed too
                raise ExportError("; ".join(failures + [str(e)])) from None
            except Exception as e:  # noqa: BLE001 - reported below, with the other exporter's answer
                first_line = (str(e).strip().splitlines() or [""])[0][:300]
                failures.append(f"the {name} exporter failed: {type(e).__name__}: {first_line}")
                for f in Path(tmp).iterdir():  # a half-written graph must not be taken for the next one's
                    shutil.rmtree(f) if f.is_dir() else f.unlink()
                continue
            used = name
            break
        if used is None:
            raise ExportError(f"{out}: not written, {'; '.join(failures)}; "
                              + ("try --attention math" if attention == "sdpa" else
                                 "try --exporter auto" if exporter != "auto" else "please report it"))
        if failures:
            notes.append(f"{failures[0]}; used the {used} exporter instead")
        proto = onnx.load(str(raw))  # with its external weights, when the exporter wrote them apart

    opset_written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    shape = ["batch" if dynamic_batch else batch, channels, frames, size, size]
    mean, std = channel_statistics(input_statistics(cfg), channels)
    streams = {("rgb",): "RGB", ("flow",): "optical flow (microact flow's colour images)",
               ("rgb", "flow"): "RGB then optical flow (microact flow's colour images)"}[input_streams(cfg)]
    views_note = "one view per row; a video's answer is the mean of its rows' probabilities"
    if cfg.eval.average == "logit":  # the graph ends in a softmax: the logit rule cannot be applied to its outputs
        views_note += " (the recipe averages logits, eval.average=logit; the mean of probabilities is close, not equal)"
    metadata = {
        "microact.version": __version__,
        "microact.preset": cfg.model.preset,
        "microact.weights": Path(weights).name if weights else "",  # the name only: the file may travel
        "microact.input": (f"{INPUT_NAME}: {input_dtype} [{', '.join(map(str, shape))}] (B, C, T, H, W), pixel "
                           f"values 0..255, channels {streams}, test views cut as the recipe's eval section says; "
                           "normalised inside the graph"),
        "microact.input_layout": "NCTHW",
        "microact.input_dtype": input_dtype,
        "microact.channels": str(channels),
        "microact.frames": str(frames),
        "microact.img_size": str(size),
        "microact.input_mode": cfg.model.input_mode,
        "microact.mean": json.dumps(mean),
        "microact.std": json.dumps(std),
        "microact.outputs": json.dumps({name: what for name, (_, what) in
                                        output_columns(taxonomy, module.has_coarse).items()}),
        "microact.class_names": json.dumps(list(taxonomy.fine_names), ensure_ascii=False),
        "microact.taxonomy": taxonomy.to_json(),
        "microact.views": json.dumps({"test_clips": cfg.eval.test_clips, "view": cfg.eval.view,
                                      "average": cfg.eval.average, "note": views_note}),
        "microact.attention": attention,
        "microact.exporter": used,
        "microact.recipe": cfg.to_yaml(),
    }
    if module.has_coarse:  # the columns of coarse_head_probs (a flat taxonomy has no coarse output)
        metadata["microact.coarse_class_names"] = json.dumps(list(taxonomy.coarse_names), ensure_ascii=False)
    onnx.helper.set_model_props(proto, metadata)
    proto.producer_name, proto.producer_version = "microact", __version__
    proto.doc_string = (f"microact {cfg.model.preset}: {metadata['microact.input']}. Outputs: "
                        + ", ".join(f"{k}: {v}" for k, v in json.loads(metadata["microact.outputs"]).items()))
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > _INLINE_LIMIT
    data_file = out.with_name(out.name + ".data") if large else None
    for stale in (out, out.with_name(out.name + ".data")):
        if stale.exists():
            stale.unlink()  # external data is appended to an existing file, never replaced
    onnx.save_model(proto, str(out), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=data_file.name if large else None)
    return ExportResult(out, used, int(opset_written), shape, outputs, metadata, data_file, notes)


# --------------------------------------------------------------------------------------------
# Check and timing
# --------------------------------------------------------------------------------------------


def onnx_session(path: str | os.PathLike, threads: Optional[int] = None):
    """An onnxruntime CPU session of ``path`` (``threads``: intra-op threads, ``None``: onnxruntime's choice)."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def reference_outputs(model: nn.Module, cfg, clip: torch.Tensor) -> list[np.ndarray]:
    """PyTorch's answer for a pixel clip, the way ``microact test`` computes it: ``normalize_batch`` then
    ``Recognizer.predict_proba`` (one view per row), plus the coarse lead head's softmax when there is one."""
    from microact.data.transforms import normalize_batch
    from microact.engine.builders import input_statistics

    model.eval()
    with torch.no_grad():
        x = normalize_batch(clip, **input_statistics(cfg))
        fine = model.predict_proba(x)
        outs = [fine]
        if model.has_coarse:
            outs.append(model(x).coarse.float().softmax(dim=-1))
    return [o.numpy() for o in outs]


def random_clip(result: ExportResult, batch: int, seed: int = 0) -> torch.Tensor:
    """Random pixels of the exported input's shape with ``batch`` rows (integer values in the input's dtype)."""
    shape = [batch, *result.input_shape[1:]]
    dtype = INPUT_DTYPES[result.metadata["microact.input_dtype"]]
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)).to(dtype)


def check_export(result: ExportResult, model: nn.Module, cfg, batches: Sequence[int] = (1,),
                 tolerance: float = DEFAULT_TOLERANCE, session=None) -> dict[str, float]:
    """Run the exported graph in onnxruntime on random clips and compare with PyTorch.

    Args:
        result: :func:`export_onnx`'s answer.
        model: the PyTorch model that was exported (compared in its own attention mode).
        cfg: its recipe.
        batches: batch sizes to try (several prove the dynamic batch axis).
        tolerance: the largest max abs difference of probabilities accepted.
        session: an onnxruntime session of ``result.path`` (``None``: a new one).

    Returns:
        ``{output name: max abs difference over every batch}``.

    Raises:
        ExportError: a difference above ``tolerance`` (the message names the output, the batch and the numbers).
    """
    session = session or onnx_session(result.path)
    worst = {name: 0.0 for name in result.outputs}
    for i, b in enumerate(batches):
        clip = random_clip(result, b, seed=i)
        got = session.run(result.outputs, {INPUT_NAME: clip.numpy()})
        want = reference_outputs(model, cfg, clip)
        for name, g, w in zip(result.outputs, got, want):
            if g.shape != w.shape:
                raise ExportError(f"{result.path}: output {name} has shape {list(g.shape)} in onnxruntime, "
                                  f"PyTorch gives {list(w.shape)} (batch {b})")
            diff = float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max())
            worst[name] = max(worst[name], diff)
            if not diff <= tolerance:  # also catches NaN
                raise ExportError(f"{result.path}: onnxruntime and PyTorch disagree on {name} at batch {b}: max abs "
                                  f"difference {diff:.3g} > tolerance {tolerance:g}. The file is not usable as is; "
                                  "try --attention math and --exporter torchscript, or --no-check to keep it for "
                                  "inspection")
    return worst


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, onnxruntime's first-run planning, oneDNN primitive creation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_forward(result: ExportResult, model: nn.Module, cfg, batch: int = 1, repeats: int = 5) -> dict:
    """Median CPU forward time of PyTorch (eval, ``no_grad``) and onnxruntime on one random batch, both with
    ``torch.get_num_threads()`` threads. Printed by ``--time``; never asserted.

    PyTorch runs first and onnxruntime's session is made afterwards: an onnxruntime session that has run keeps its
    worker threads spinning for work, and on a machine with few cores they slowed PyTorch's forward ~10x.
    """
    from microact.data.transforms import normalize_batch
    from microact.engine.builders import input_statistics

    threads = torch.get_num_threads()
    clip = random_clip(result, batch, seed=7)
    model.eval()

    def torch_forward():
        with torch.no_grad():
            model(normalize_batch(clip, **input_statistics(cfg)))

    torch_s = _median_seconds(torch_forward, repeats)
    session = onnx_session(result.path, threads=threads)
    feed = {INPUT_NAME: clip.numpy()}
    return {"batch": batch, "threads": threads, "repeats": repeats, "torch_s": torch_s,
            "onnxruntime_s": _median_seconds(lambda: session.run(None, feed), repeats)}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def cli_main(args) -> int:
    """``microact export WEIGHTS OUT.onnx [--config CFG] [overrides] [--batch N] [--opset N]
    [--attention math|sdpa] [--exporter auto|torchscript|dynamo] [--check/--no-check] [--time]``."""
    from microact.engine.builders import describe_input
    from microact.models.checkpoints import read_checkpoint
    from microact.predict import build_predictor_config, load_model, predictor_taxonomy

    weights, out = Path(args.weights), Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"{out}: the output file name must end in .onnx (e.g. {out.with_suffix('.onnx').name})")
    _check_options(args.exporter, args.opset, args.attention, args.batch, args.input_dtype)
    if args.tolerance is not None and not args.tolerance > 0:
        raise ExportError(f"--tolerance must be a positive number, got {args.tolerance}")
    if not weights.is_file():
        read_checkpoint(weights)  # its error names what to pass instead (a run folder's weights files ...)
    _require("onnx")
    if args.check or args.time:
        _require("onnxruntime")
    cfg = build_predictor_config(args.model, args.config, args.overrides, checkpoint=str(weights))
    # the classes the weights record win over the recipe's file, which need not be on this machine (as in predict)
    taxonomy = predictor_taxonomy(cfg, str(weights))
    model = load_model(cfg, str(weights), torch.device("cpu"), taxonomy)
    start = time.perf_counter()
    result = export_onnx(model, cfg, out, batch=args.batch, opset=args.opset, attention=args.attention,
                         exporter=args.exporter, input_dtype=args.input_dtype, dynamic_batch=not args.static_batch,
                         weights=str(weights), taxonomy=taxonomy)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    shape = ", ".join(map(str, result.input_shape))
    print(f"wrote {result.path}" + (f" (+ {result.data_file.name})" if result.data_file else "")
          + f": {cfg.model.preset}, {result.exporter} exporter, opset {result.opset}, attention {args.attention}, "
          f"{time.perf_counter() - start:.1f} s")
    print(f"  input  {INPUT_NAME}: {args.input_dtype} [{shape}] pixels 0..255 (B, C, T, H, W), "
          f"input {describe_input(cfg)}, normalised inside")
    columns = output_columns(taxonomy, model.has_coarse)
    print("  output " + ", ".join(f"{name} [{'batch' if not args.static_batch else args.batch}, {columns[name][0]}]"
                                  for name in result.outputs)
          + f" ({taxonomy.describe(False)})")
    if args.check:
        batches = [args.batch] if args.static_batch else [args.batch, args.batch + 1]
        try:
            worst = check_export(result, model, cfg, batches, args.tolerance or DEFAULT_TOLERANCE)
        except ExportError:
            for f in (result.path, result.data_file):
                if f is not None and f.exists():
                    f.unlink()  # a file that exists has passed its check (or was asked for with --no-check)
            raise
        print(f"  check: onnxruntime vs PyTorch on random clips (batch {' and '.join(map(str, batches))}): max abs "
              "difference " + ", ".join(f"{name} {diff:.2g}" for name, diff in worst.items())
              + f" (tolerance {args.tolerance or DEFAULT_TOLERANCE:g})")
    if args.time:
        t = time_forward(result, model, cfg, batch=args.batch, repeats=args.repeats)
        print(f"  time: forward of {t['batch']} clip(s) on the CPU ({t['threads']} threads, median of {t['repeats']}): "
              f"PyTorch {1e3 * t['torch_s']:.1f} ms, onnxruntime {1e3 * t['onnxruntime_s']:.1f} ms "
              f"(onnxruntime x{t['torch_s'] / t['onnxruntime_s']:.2f})")
    return 0
