"""Test results: dumps (mmaction2 pickle + safe ``.npz``), challenge submissions, ensembles.

A :class:`Results` holds one row of clip-averaged class probabilities per video, in list order
(SEED.md §4). It travels in two files written side by side:

* ``NAME.pkl``: the schema of mmaction2's ``tools/test.py --dump`` (VIDEOMAE.md §5.5), a protocol-2
  pickled list with one dict per video: ``pred_score`` float32 tensor ``[K]``, ``pred_label`` int64
  tensor ``[1]``, ``gt_label`` int64 tensor ``[1]`` (dummy 0 without labels), ``num_classes``,
  ``img_shape``, plus ``filename`` (the video name; mmaction2's readers ignore extra keys). Ensemble
  scripts written for the seed's pickles read it unchanged.
* ``NAME.npz``: the same numbers as plain arrays; it loads with ``allow_pickle=False``, so it can be
  shared and opened without trusting its author. It also records the :class:`~microact.taxonomy.Taxonomy` (class
  names and groups) the scores are over, as JSON; the pickle keeps mmaction2's schema, so a pickle's taxonomy is
  read from the ``.npz`` beside it, given by the caller (``--classes``), or MA-52's for 52 classes.

Pickles are never unpickled with :mod:`pickle`'s default loader: :func:`load_results` uses a
restricted unpickler that resolves only the globals a result dump contains (builtin containers,
``OrderedDict``, torch's tensor-rebuild functions, numpy's array reconstruction) and refuses any
other global *before* anything is called, naming the file and the global.

Submissions follow SEED.md §10: the MAC 2024 zip (``id,pred_label_1,pred_label_2`` = body part then
action) and the MA-52 / MAC 2025 top-5 zip. The ensemble is the seed's weighted sum of probabilities
(SEED.md §8) with a weight search on validation dumps that never does worse than equal weights.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
import pickle
import sys
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from microact import ma52
from microact.errors import MicroactError
from microact.metrics import evaluate_scores, f1_mean, format_summary, predict_coarse, coarse_scores
from microact.taxonomy import MA52, Taxonomy, TaxonomyError, differences


class ResultsError(MicroactError, ValueError):
    """A result dump cannot be read, is refused, or does not match other dumps; the message names the file."""


# --------------------------------------------------------------------------------------------
# The Results container
# --------------------------------------------------------------------------------------------


@dataclass
class Results:
    """Clip-averaged class scores of a list of videos.

    Attributes:
        names: video file names in list order (``str(i)`` when a dump carried none; see ``meta["names_from"]``).
        scores: float32 ``[N, K]``, clip-averaged softmax probabilities (SEED.md §4).
        labels: int64 ``[N]`` true fine ids, or ``None`` for unlabelled (test) lists.
        num_classes: ``K``.
        img_shape: network input size recorded in the dump, ``(H, W)``.
        meta: free-form facts (source files, weights, failed videos, ...); saved in the ``.npz`` only.
        coarse_head_scores: float32 ``[N, G]``, the coarse lead head's clip-averaged probabilities, kept when the
            results were computed for ``predict.coarse_rule=coarse_head`` (``None`` otherwise, and in mmaction2 dumps).
        taxonomy: the classes the ``K`` columns are (names, groups); ``None`` given with ``K = 52`` means MA-52;
            ``None`` stays ``None`` for other ``K`` when nothing says which classes they are (a bare pickle).
    """

    names: list[str]
    scores: np.ndarray
    labels: np.ndarray | None = None
    num_classes: int | None = None
    img_shape: tuple = (224, 224)
    meta: dict = field(default_factory=dict)
    coarse_head_scores: np.ndarray | None = None
    taxonomy: Taxonomy | None = None

    def __post_init__(self):
        self.names = [str(n) for n in self.names]
        self.scores = np.ascontiguousarray(np.asarray(self.scores, dtype=np.float32))
        if self.scores.ndim != 2:
            raise ResultsError(f"scores must be [N, K], got shape {self.scores.shape}")
        n, k = self.scores.shape
        if self.num_classes is None:
            self.num_classes = k
        self.num_classes = int(self.num_classes)
        if self.num_classes != k:
            raise ResultsError(f"num_classes is {self.num_classes} but scores have {k} columns")
        if len(self.names) != n:
            raise ResultsError(f"{len(self.names)} names for {n} score rows")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
            if self.labels.shape[0] != n:
                raise ResultsError(f"{self.labels.shape[0]} labels for {n} score rows")
        self.img_shape = tuple(int(v) for v in self.img_shape)
        if self.taxonomy is None and k == ma52.NUM_FINE:
            self.taxonomy = MA52  # what 52 columns have always meant
        if self.taxonomy is not None and self.taxonomy.num_fine != k:
            raise ResultsError(f"the taxonomy has {self.taxonomy.num_fine} classes but scores have {k} columns")
        if self.coarse_head_scores is not None:
            self.coarse_head_scores = np.ascontiguousarray(np.asarray(self.coarse_head_scores, dtype=np.float32))
            groups = self.taxonomy.num_coarse if self.taxonomy is not None else 0
            if self.coarse_head_scores.shape != (n, groups):
                raise ResultsError(f"coarse head scores must be [{n}, {groups}] (the taxonomy's groups), "
                                   f"got shape {self.coarse_head_scores.shape}")

    def require_taxonomy(self) -> Taxonomy:
        """The taxonomy, or a :class:`ResultsError` saying how to give one (a bare pickle of K != 52 classes)."""
        if self.taxonomy is None:
            raise ResultsError(f"{self.meta.get('source', 'these results')}: {self.num_classes} classes and no "
                               "recorded taxonomy (a pickle without its .npz, or a dump older than recorded classes): "
                               "pass the classes file the model was trained with (--classes FILE)")
        return self.taxonomy

    def __len__(self) -> int:
        return self.scores.shape[0]

    @property
    def predictions(self) -> np.ndarray:
        """Fine predictions ``[N]``: argmax of the averaged scores."""
        return np.argmax(self.scores, axis=1)

    def metrics(self, macro_labels: str = "present", coarse_rule: str = "map_top1") -> dict:
        """:func:`microact.metrics.evaluate_scores` on these results (labels required)."""
        if self.labels is None:
            raise ResultsError("these results have no labels (a test list?), so they cannot be scored")
        return evaluate_scores(self.scores, self.labels, macro_labels=macro_labels, coarse_rule=coarse_rule,
                               coarse_head_scores=self.coarse_head_scores, taxonomy=self.require_taxonomy())


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_results(results: Results, path: str | os.PathLike) -> tuple[Path | None, Path]:
    """Write the mmaction2-compatible pickle and the safe ``.npz`` beside it.

    Args:
        results: what to write.
        path: ``NAME.pkl`` (writes ``NAME.pkl`` and ``NAME.npz``) or ``NAME.npz`` (the safe file only).

    Returns:
        ``(pickle path or None, npz path)``.
    """
    import torch

    path = Path(path)
    npz_path = path.with_suffix(".npz")
    pkl_path = None if path.suffix == ".npz" else path
    if pkl_path is not None:
        entries = []
        # row indexes standing in for missing names (an mmaction2 dump read without its list) are not written as
        # names: the pickle then reads back as nameless, and --list can still supply the real names
        real_names = not _placeholder_names(results)
        for i, name in enumerate(results.names):
            scores = torch.from_numpy(results.scores[i].copy())
            entry = {
                "pred_score": scores,
                "pred_label": torch.tensor([int(scores.argmax())], dtype=torch.int64),
                "gt_label": torch.tensor([int(results.labels[i]) if results.labels is not None else 0],
                                         dtype=torch.int64),
                "num_classes": int(results.num_classes),
                "img_shape": tuple(results.img_shape),
            }
            if real_names:
                entry["filename"] = name
            if results.coarse_head_scores is not None:  # an extra key: mmaction2's readers look up theirs by name
                entry["coarse_head_score"] = torch.from_numpy(results.coarse_head_scores[i].copy())
            entries.append(entry)
        # protocol 2, like mmengine's pickle handler, so every mmaction2 version can read it
        _atomic_write(pkl_path, lambda f: pickle.dump(entries, f, protocol=2))

    def write_npz(f):
        np.savez(
            f,
            names=np.asarray(results.names, dtype=np.str_),
            scores=results.scores,
            labels=results.labels if results.labels is not None else np.zeros(0, dtype=np.int64),
            has_labels=np.asarray(results.labels is not None),
            num_classes=np.asarray(results.num_classes, dtype=np.int64),
            img_shape=np.asarray(results.img_shape, dtype=np.int64),
            meta_json=np.asarray(json.dumps(results.meta, default=str)),
            **({} if results.coarse_head_scores is None else {"coarse_head_scores": results.coarse_head_scores}),
            **({} if results.taxonomy is None else {"taxonomy_json": np.asarray(results.taxonomy.to_json())}),
        )

    _atomic_write(npz_path, write_npz)
    return pkl_path, npz_path


# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    """Content a result dump never holds (refused before anything ran), as opposed to a file that is no pickle."""


def _safe_codecs_encode(text, encoding="utf-8", errors="strict"):
    # protocol-2 pickles store bytes as _codecs.encode(str, "latin1")
    if encoding not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(text, str):
        raise _Refused(f"_codecs.encode with encoding {encoding!r} is not used by result dumps")
    return text.encode("latin1", errors)


def _safe_load_from_bytes(data):
    # torch pickles each storage as a nested legacy torch.save() payload; torch's own helper would load it
    # with weights_only=False (arbitrary code), so it goes through torch's weights-only unpickler instead.
    import torch

    if not isinstance(data, (bytes, bytearray)):
        raise _Refused("tensor storage payload is not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
        except Exception as e:  # weights-only refusals and corrupt payloads alike
            raise _Refused(f"tensor storage refused by torch's weights-only loader: {e}") from None
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise _Refused(f"tensor storage payload holds a {type(storage).__name__}, not a storage")
    return storage


def _safe_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                            metadata=None):
    import torch
    from torch._utils import _rebuild_tensor_v2

    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise _Refused("tensor rebuilt from something that is not a storage")
    if backward_hooks:
        raise _Refused("tensor carries backward hooks (callables); result dumps never do")
    if metadata is not None and not isinstance(metadata, dict):
        raise _Refused("tensor metadata is not a dict")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _rebuild_tensor_v2(storage, storage_offset, size, stride, False, OrderedDict(), metadata)


def _safe_rebuild_tensor(storage, storage_offset, size, stride):
    return _safe_rebuild_tensor_v2(storage, storage_offset, size, stride)


def _safe_rebuild_from_type_v2(func, new_type, args, state):
    import torch

    if new_type is not torch.Tensor or func not in (_safe_rebuild_tensor_v2, _safe_rebuild_tensor):
        raise _Refused("tensor subclass or custom rebuild function; result dumps hold plain tensors")
    if state:
        raise _Refused("tensor with extra Python state; result dumps hold plain tensors")
    return func(*args)


def _safe_np_reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        raise _Refused("numpy array subclass; result dumps hold plain arrays")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _safe_np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _Refused("numpy object scalar; result dumps hold numeric scalars")
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type(0)


def _safe_np_frombuffer(buf, dtype, shape, order):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _Refused("numpy object buffer; result dumps hold numeric arrays")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


def _torch_attr(name):
    def resolve():
        import torch

        value = getattr(torch, name)
        if not isinstance(value, torch.dtype) and value is not torch.Tensor:
            raise _Refused(f"torch.{name} is not allowed")
        return value
    return resolve


def _const(value):
    return lambda: value


def _allowed_globals() -> dict[tuple[str, str], Callable[[], Any]]:
    """(module, name) -> a function returning the object that global resolves to."""
    allowed: dict[tuple[str, str], Callable[[], Any]] = {}
    for module in ("builtins", "__builtin__"):  # protocol 2 writes Python 2 names
        for name, obj in (("dict", dict), ("list", list), ("tuple", tuple), ("set", set), ("frozenset", frozenset),
                          ("int", int), ("float", float), ("complex", complex), ("str", str), ("bytes", bytes),
                          ("bytearray", bytearray), ("bool", bool), ("unicode", str), ("long", int)):
            allowed[(module, name)] = _const(obj)
    allowed[("collections", "OrderedDict")] = _const(OrderedDict)
    allowed[("_codecs", "encode")] = _const(_safe_codecs_encode)
    allowed[("torch._utils", "_rebuild_tensor_v2")] = _const(_safe_rebuild_tensor_v2)
    allowed[("torch._utils", "_rebuild_tensor")] = _const(_safe_rebuild_tensor)
    allowed[("torch._tensor", "_rebuild_from_type_v2")] = _const(_safe_rebuild_from_type_v2)
    allowed[("torch.storage", "_load_from_bytes")] = _const(_safe_load_from_bytes)
    allowed[("torch", "Tensor")] = _torch_attr("Tensor")
    for dtype_name in ("float16", "bfloat16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"):
        allowed[("torch", dtype_name)] = _torch_attr(dtype_name)
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(core, "_reconstruct")] = _const(_safe_np_reconstruct)
        allowed[(core, "scalar")] = _const(_safe_np_scalar)
    for numeric in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(numeric, "_frombuffer")] = _const(_safe_np_frombuffer)
    allowed[("numpy", "ndarray")] = _const(np.ndarray)
    allowed[("numpy", "dtype")] = _const(np.dtype)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of :func:`_allowed_globals`; anything else raises before it can run."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module, name):
        resolve = self._allowed.get((module, name))
        if resolve is None:
            raise ResultsError(
                f"{self._source}: refused to load: the pickle calls {module}.{name}, which result dumps never contain "
                "(a pickle can run arbitrary code; nothing from this file was executed). "
                "Ask for the .npz copy of the results, or re-create the dump."
            )
        return resolve()

    def persistent_load(self, pid):
        raise ResultsError(f"{self._source}: refused to load: persistent ids (torch.save containers) "
                           "are not result dumps")


def restricted_load(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` allowing only the globals found in mmaction2 / mmengine / microact result dumps.

    Raises:
        ResultsError: the file names a forbidden global (nothing was executed), or it is not a pickle.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, str(path)).load()
    except ResultsError:
        raise
    except FileNotFoundError:
        raise ResultsError(f"{path}: result dump not found") from None
    except _Refused as e:
        raise ResultsError(f"{path}: refused to load: {e}") from None
    except Exception as e:  # not a pickle, truncated files, wrong formats, inconsistent tensor shapes
        raise ResultsError(f"{path}: not a readable result pickle ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _to_array(value, what: str, source: str) -> np.ndarray:
    if isinstance(value, dict) and "item" in value:  # old mmaction2 LabelData.to_dict(): {"item": tensor}
        value = value["item"]
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception:
        raise ResultsError(f"{source}: {what} is not numeric ({type(value).__name__})") from None


_SCORE_KEYS = ("pred_score", "pred_scores", "scores")
_LABEL_KEYS = ("gt_label", "gt_labels", "label")
_NAME_KEYS = ("filename", "video_name", "video_id")


def _first_key(entry: dict, keys: Sequence[str]):
    for key in keys:
        if key in entry:
            return entry[key]
    return None


def _results_from_entries(entries, source: str) -> Results:
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ResultsError(f"{source}: expected a non-empty list with one entry per video, "
                           f"got {type(entries).__name__}")
    scores, labels, names, head_rows = [], [], [], []
    num_classes, img_shape = None, (224, 224)
    for i, entry in enumerate(entries):
        where = f"{source}: entry {i}"
        if isinstance(entry, dict):
            raw = _first_key(entry, _SCORE_KEYS)
            if raw is None:
                raise ResultsError(f"{where}: no 'pred_score' (keys: {', '.join(map(str, entry))})")
            gt = _first_key(entry, _LABEL_KEYS)
            labels.append(None if gt is None else int(_to_array(gt, "gt_label", where).reshape(-1)[0]))
            name = _first_key(entry, _NAME_KEYS)
            names.append(None if name is None else str(name))
            num_classes = entry.get("num_classes", num_classes)
            img_shape = entry.get("img_shape", img_shape)
            head = entry.get("coarse_head_score")
            head_rows.append(None if head is None else
                             _to_array(head, "coarse_head_score", where).astype(np.float32).reshape(-1))
        else:  # mmaction2 0.x `--out` dumps: a bare score array per video
            raw = entry
            labels.append(None)
            names.append(None)
            head_rows.append(None)
        row = _to_array(raw, "pred_score", where).astype(np.float32).reshape(-1)
        if scores and row.shape != scores[0].shape:
            raise ResultsError(f"{where}: {row.size} scores, but entry 0 has {scores[0].size}")
        scores.append(row)
    score_mat = np.stack(scores)  # [N, K]
    meta: dict = {"source": source}
    if any(n is None for n in names) or len(set(names)) != len(names):
        names = [str(i) for i in range(len(entries))]
        meta["names_from"] = "index"
    else:
        meta["names_from"] = "dump"
    label_vec = None
    if all(v is not None for v in labels):
        label_vec = np.asarray(labels, dtype=np.int64)
        if len(label_vec) > 1 and not label_vec.any():
            # test lists carry a dummy 0 for every video (SEED.md §11.1): no real labels
            label_vec = None
            meta["labels_note"] = "every gt_label is 0: treated as an unlabelled (test) dump"
    if num_classes is not None and int(num_classes) != score_mat.shape[1]:
        raise ResultsError(f"{source}: num_classes is {num_classes} but pred_score has {score_mat.shape[1]} values")
    if isinstance(img_shape, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in img_shape):
        img_shape = tuple(img_shape)
    else:
        img_shape = (224, 224)
    head = np.stack(head_rows) if head_rows and all(r is not None for r in head_rows) else None
    return Results(names, score_mat, label_vec, score_mat.shape[1], img_shape, meta, head)


def _load_npz(path: Path) -> Results:
    try:
        with np.load(path, allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            scores = z["scores"]
            labels = z["labels"] if bool(z["has_labels"]) else None
            num_classes = int(z["num_classes"])
            img_shape = tuple(int(v) for v in z["img_shape"])
            meta = json.loads(str(z["meta_json"])) if "meta_json" in z.files else {}
            head = z["coarse_head_scores"] if "coarse_head_scores" in z.files else None
            taxonomy_json = str(z["taxonomy_json"]) if "taxonomy_json" in z.files else None
    except FileNotFoundError:
        raise ResultsError(f"{path}: result file not found") from None
    except KeyError as e:
        raise ResultsError(f"{path}: not a microact result file (missing array {e})") from None
    except ValueError as e:
        raise ResultsError(f"{path}: not a readable .npz result file ({e})") from None
    meta["source"] = str(path)
    try:
        taxonomy = None if taxonomy_json is None else Taxonomy.from_json(taxonomy_json, f"{path} (recorded taxonomy)")
    except TaxonomyError as e:
        raise ResultsError(str(e)) from None
    if taxonomy is None:
        meta["taxonomy_from"] = "assumed"  # older dumps: MA-52 for 52 classes, as they always were
    else:
        meta.pop("taxonomy_from", None)
    return Results(names, scores, labels, num_classes, img_shape, meta, head, taxonomy)


def _implicit_taxonomy(results: Results) -> bool:
    """Whether the taxonomy of loaded results was assumed (MA-52 for 52 columns) rather than recorded."""
    return results.meta.get("taxonomy_from") == "assumed"


def _sibling_taxonomy(path: Path, results: Results) -> Taxonomy | None:
    """The taxonomy recorded in the ``.npz`` written beside a ``.pkl`` (same scores shape), if any."""
    sibling = path.with_suffix(".npz")
    if path.suffix == ".npz" or not sibling.is_file():
        return None
    try:
        with np.load(sibling, allow_pickle=False) as z:
            if "taxonomy_json" not in z.files or z["scores"].shape != results.scores.shape:
                return None
            text = str(z["taxonomy_json"])
    except (OSError, ValueError, KeyError):
        return None
    try:
        return Taxonomy.from_json(text, f"{sibling} (recorded taxonomy)")
    except TaxonomyError as e:
        raise ResultsError(str(e)) from None


def read_list_names(list_file: str | os.PathLike, num_classes: int = ma52.NUM_FINE) -> tuple[list[str], np.ndarray]:
    """Video names and labels of a ``<file> <label>`` list, in file order.

    Raises:
        microact.data.annotations.AnnotationError: naming ``file:line`` of every bad line.
    """
    from microact.data.annotations import load_list

    list_file = Path(list_file)
    records = load_list(list_file, video_dir=list_file.parent, num_classes=num_classes, check_files=False,
                        allow_absolute_paths=True)
    return [r.path for r in records], np.asarray([r.label for r in records], dtype=np.int64)


def load_results(path: str | os.PathLike, *, list_file: str | os.PathLike | None = None,
                 taxonomy: Taxonomy | None = None) -> Results:
    """Read results from a ``.npz`` (safe) or a result pickle (microact, mmaction2 1.x / 0.x) with restrictions.

    Args:
        path: ``.npz`` or ``.pkl`` / ``.pickle`` file.
        list_file: the ``<file> <label>`` list the dump was computed on: its names replace the dump's (mmaction2
            dumps carry none) and, for labelled lists, its labels fill in or are checked against the dump's.
        taxonomy: the classes of a dump that records none (a pickle without its ``.npz``); a dump that records
            one must record this one.

    Raises:
        ResultsError: unreadable or refused file, a list that does not match the dump, or a taxonomy that differs
            from the recorded one.
    """
    path = Path(path)
    _refuse_non_dump(path)
    if not path.is_file():
        raise ResultsError(f"{path}: result file not found")
    if path.suffix == ".npz":
        results = _load_npz(path)
        recorded = None if _implicit_taxonomy(results) else results.taxonomy
    else:
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK"):
            raise ResultsError(f"{path}: a zip archive (torch.save or .npz renamed?); expected a result pickle or .npz")
        results = _results_from_entries(restricted_load(path), str(path))
        recorded = _sibling_taxonomy(path, results)
        if recorded is not None:
            results = _with_taxonomy(results, recorded, str(path))
        elif results.taxonomy is not None:
            results.meta["taxonomy_from"] = "assumed"  # a bare pickle of 52 columns: MA-52, as they always were
    if taxonomy is not None:
        if recorded is not None and recorded != taxonomy:
            raise ResultsError(f"{path} records other classes than {taxonomy.source or 'the given taxonomy'} "
                               f"({differences(recorded, taxonomy)}); drop --classes or give the dump of this model")
        results = _with_taxonomy(results, taxonomy, str(path))
    if list_file is not None:
        label_range = (results.num_classes if results.taxonomy is not None and not results.taxonomy.is_ma52
                       else max(results.num_classes, ma52.NUM_FINE))
        names, labels = read_list_names(list_file, label_range)
        if len(names) != len(results):
            raise ResultsError(f"{list_file}: lists {len(names)} videos but {path} holds {len(results)} results")
        # only a dump without names (mmaction2: row indexes) takes the list's names unchecked; a .npz written
        # by microact may carry no "names_from" at all, and its names are real
        if results.meta.get("names_from") != "index" and names != results.names:
            i = next(j for j, (a, b) in enumerate(zip(names, results.names)) if a != b)
            raise ResultsError(f"{list_file}: line order differs from {path} at index {i}: "
                               f"{names[i]!r} in the list, {results.names[i]!r} in the dump")
        results.names = names
        results.meta["names_from"] = str(list_file)
        if labels.any():  # an all-zero label column is a test list's dummy labels
            if results.labels is None:
                results.labels = labels
            elif not np.array_equal(results.labels, labels):
                i = int(np.flatnonzero(results.labels != labels)[0])
                raise ResultsError(f"{list_file}: label of {names[i]} (index {i}) is {labels[i]} in the list but "
                                   f"{results.labels[i]} in {path}: wrong list for this dump?")
    return results


def _refuse_non_dump(path: Path) -> None:
    """A folder, weights file, report or video where a result dump goes is named as such, with the dumps to pass.

    Unpickling them said "result file not found" (a folder) or "refused to load: invalid load key" (a JSON report,
    safetensors weights), which read like a missing or unsafe dump.
    """
    from microact.filekind import FOLDER, ONNX, SAFETENSORS, TEXT_SUFFIXES, VIDEO, sniff

    kind = sniff(path)
    if kind == FOLDER:
        dumps = sorted(p.name for p in path.iterdir() if p.suffix in (".pkl", ".pickle", ".npz") and p.is_file())
        if dumps:
            shown = ", ".join(str(path / name) for name in dumps[:4]) + (" ..." if len(dumps) > 4 else "")
            raise ResultsError(f"{path}: a folder, not a result dump: pass a dump in it ({shown})")
        raise ResultsError(f"{path}: a folder without result dumps; `microact test RECIPE WEIGHTS --dump NAME.pkl` "
                           "writes one (NAME.pkl and NAME.npz)")
    if kind in (SAFETENSORS, VIDEO, ONNX) or (kind is not None and path.suffix.lower() in TEXT_SUFFIXES):
        made_by = ("; make a dump of these weights with `microact test RECIPE WEIGHTS --dump NAME.pkl`"
                   if kind == SAFETENSORS else "")
        raise ResultsError(f"{path}: {kind}, not a result dump: give the .pkl (or .npz) that `microact test ... --dump "
                           f"NAME.pkl` or `microact ensemble` wrote{made_by}")


def _with_taxonomy(results: Results, taxonomy: Taxonomy, source: str) -> Results:
    """``results`` with ``taxonomy`` (checked against the class count, the labels and the coarse-head columns)."""
    if taxonomy.num_fine != results.num_classes:
        raise ResultsError(f"{source}: {results.num_classes} classes, but {taxonomy.source or 'the taxonomy'} lists "
                           f"{taxonomy.num_fine}")
    if results.labels is not None and results.labels.size and results.labels.max() >= taxonomy.num_fine:
        raise ResultsError(f"{source}: label {int(results.labels.max())} is outside the {taxonomy.num_fine} classes "
                           f"of {taxonomy.source or 'the taxonomy'}")
    head = results.coarse_head_scores
    if head is not None and head.shape[1] != taxonomy.num_coarse:
        what = taxonomy.source or "the taxonomy"
        raise ResultsError(f"{source}: coarse head scores have {head.shape[1]} columns but {what} has "
                           f"{taxonomy.num_coarse} groups")
    results.taxonomy = taxonomy
    return results


# --------------------------------------------------------------------------------------------
# Submissions (SEED.md §10)
# --------------------------------------------------------------------------------------------


def _check_submittable(results: Results) -> None:
    if results.num_classes != ma52.NUM_FINE:
        raise ResultsError(f"submissions need {ma52.NUM_FINE} MA-52 classes, these results have {results.num_classes}")
    if results.taxonomy is not None and not results.taxonomy.is_ma52:
        raise ResultsError(f"submissions are MA-52's, but these results are over other classes "
                           f"({differences(results.taxonomy, MA52)} in MA-52; {results.taxonomy.describe()})")
    if len(set(results.names)) != len(results.names):
        dup = next(n for n in results.names if results.names.count(n) > 1)
        raise ResultsError(f"video name {dup!r} occurs twice: submission ids must be unique")


def _write_zip(zip_path: Path, csv_text: str) -> Path:
    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("prediction.csv", csv_text)  # at the archive root, as the servers expect

    _atomic_write(zip_path, write)
    return zip_path


def _body_predictions(results: Results, coarse_rule: str) -> np.ndarray:
    if coarse_rule == "coarse_head" and results.coarse_head_scores is None:
        raise ResultsError("coarse rule 'coarse_head': these results hold no coarse-head scores (they are kept by "
                           "`microact test` with predict.coarse_rule=coarse_head); use map_top1 or sum_probs")
    return predict_coarse(results.scores, coarse_rule, results.coarse_head_scores, MA52)


def write_mac2024_submission(results: Results, out_dir: str | os.PathLike, coarse_rule: str = "map_top1",
                             filename: str = "submission_mac2024.zip") -> Path:
    """MAC 2024 Track 1 zip: ``prediction.csv`` with ``id,pred_label_1,pred_label_2`` (body part, action).

    Args:
        results: test results in test-list order; ``names`` become the ids (``test0000.mp4``...).
        out_dir: folder for the zip.
        coarse_rule: ``"map_top1"`` (seed: body = g(argmax fine)), ``"sum_probs"`` (argmax of per-part sums) or
            ``"coarse_head"`` (with the coarse head's scores, :func:`microact.metrics.predict_coarse`).
        filename: zip file name.

    Returns:
        Path of the zip.
    """
    _check_submittable(results)
    fine = results.predictions
    body = _body_predictions(results, coarse_rule)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "pred_label_1", "pred_label_2"])
    for name, b, f in zip(results.names, body, fine):
        writer.writerow([name, int(b), int(f)])
    return _write_zip(Path(out_dir) / filename, buf.getvalue())


def write_ma52_top5_csv(results: Results, out_dir: str | os.PathLike, coarse_rule: str = "map_top1",
                        filename: str = "submission_ma52.zip") -> Path:
    """MA-52 benchmark / MAC 2025 zip: ``vid, action_pred_1..5, body_pred_1..5`` (best first).

    Body parts are ranked by the sum of fine probabilities inside each part (the public 2025 code). With
    ``coarse_rule="map_top1"`` the first body prediction is g(action top-1) (consistent with F1_mean) and the
    remaining four follow the per-part sums; ``"sum_probs"`` uses the sums for all five; ``"coarse_head"`` ranks all
    five by the sums times the coarse head's probabilities.

    Returns:
        Path of the zip (``prediction.csv`` at its root).
    """
    _check_submittable(results)
    order = np.argsort(-results.scores.astype(np.float64), axis=1, kind="stable")[:, :5]  # [N, 5]
    sums = coarse_scores(results.scores, MA52)  # [N, 7]
    if coarse_rule == "coarse_head" and results.coarse_head_scores is not None:
        sums = sums * results.coarse_head_scores
    body_order = np.argsort(-sums, axis=1, kind="stable")  # [N, 7]
    first = _body_predictions(results, coarse_rule)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["vid"] + [f"action_pred_{i}" for i in range(1, 6)] + [f"body_pred_{i}" for i in range(1, 6)])
    for i, name in enumerate(results.names):
        body = [int(first[i])] + [int(c) for c in body_order[i] if c != first[i]]
        writer.writerow([name] + [int(c) for c in order[i]] + body[:5])
    return _write_zip(Path(out_dir) / filename, buf.getvalue())


# --------------------------------------------------------------------------------------------
# Ensembles (SEED.md §8)
# --------------------------------------------------------------------------------------------


def _source(r: Results, i: int) -> str:
    return str(r.meta.get("source", f"results #{i}"))


def _placeholder_names(r: Results) -> bool:
    """Whether ``r.names`` are row indexes standing in for names the dump did not carry (mmaction2 dumps)."""
    return r.meta.get("names_from") == "index"


def _named_reference(results_list: Sequence[Results]) -> tuple[int, Results]:
    """The first result that carries real video names (else the first result)."""
    return next(((i, r) for i, r in enumerate(results_list) if not _placeholder_names(r)), (0, results_list[0]))


def video_names(results_list: Sequence[Results]) -> list[str] | None:
    """The video names of results of one list, from a dump that carries them; ``None`` when none does (mmaction2
    dumps, whose names are row indexes)."""
    _, ref = _named_reference(results_list)
    return None if _placeholder_names(ref) else list(ref.names)


def check_compatible(results_list: Sequence[Results]) -> None:
    """Raise :class:`ResultsError` unless all results cover the same videos in the same order with the same K.

    A dump without video names (mmaction2's; its names are row indexes) can only be checked for its length and
    class count: it is taken to follow the list order of the dumps that carry names.
    """
    if not results_list:
        raise ResultsError("no results to combine")
    ref_index, ref = _named_reference(results_list)
    for i, r in enumerate(results_list):
        if i == ref_index:
            continue
        a, b = _source(ref, ref_index), _source(r, i)
        if r.num_classes != ref.num_classes:
            raise ResultsError(f"{b} has {r.num_classes} classes but {a} has {ref.num_classes}")
        if r.taxonomy is not None and ref.taxonomy is not None and r.taxonomy != ref.taxonomy:
            raise ResultsError(f"{b} and {a} are over different classes ({differences(r.taxonomy, ref.taxonomy)}): "
                               "an ensemble needs models of one taxonomy")
        if len(r) != len(ref):
            raise ResultsError(f"{b} holds {len(r)} videos but {a} holds {len(ref)}: dumps of different lists?")
        if r.names != ref.names and not _placeholder_names(r):
            listed = set(ref.names)
            others = [name for name in r.names if name not in listed]
            if others:  # not one list in two orders: e.g. a validation dump with a test dump
                raise ResultsError(f"{b} and {a} are dumps of different lists: {len(others)} of the {len(r)} videos "
                                   f"of {b} are not in {a} (e.g. {others[0]!r}); give dumps of one list (one split)")
            j = next(k for k, (x, y) in enumerate(zip(ref.names, r.names)) if x != y)
            raise ResultsError(f"video order differs at index {j}: {ref.names[j]!r} in {a}, {r.names[j]!r} in {b}")
        if r.labels is not None and ref.labels is not None and not np.array_equal(r.labels, ref.labels):
            j = int(np.flatnonzero(r.labels != ref.labels)[0])
            raise ResultsError(f"labels differ at index {j} ({ref.names[j]}): {ref.labels[j]} in {a}, "
                               f"{r.labels[j]} in {b}")


def ensemble(results_list: Sequence[Results], weights: Sequence[float] | None = None) -> Results:
    """Weighted sum of the models' probabilities, ``Σ w_m · p_m`` (weights not normalised, as the seed).

    Args:
        results_list: results of several models on the same list (same names, order and K).
        weights: one weight per model; ``None`` = all 1.

    Raises:
        ResultsError: naming the first mismatch (count, class count, first differing index and name, labels).
    """
    check_compatible(results_list)
    weights = [1.0] * len(results_list) if weights is None else [float(w) for w in weights]
    if len(weights) != len(results_list):
        raise ResultsError(f"{len(weights)} weights for {len(results_list)} result files")
    total = np.zeros(results_list[0].scores.shape, dtype=np.float64)
    for w, r in zip(weights, results_list):
        total += w * r.scores.astype(np.float64)
    labels = next((r.labels for r in results_list if r.labels is not None), None)
    _, ref = _named_reference(results_list)  # names from a dump that has them (mmaction2 dumps carry none)
    meta = {"ensemble": [{"source": _source(r, i), "weight": w} for i, (r, w) in enumerate(zip(results_list, weights))],
            "names_from": ref.meta.get("names_from", "dump")}
    head = None
    if all(r.coarse_head_scores is not None for r in results_list):  # the same weighted sum for the coarse head
        head = sum(w * r.coarse_head_scores.astype(np.float64) for w, r in zip(weights, results_list))
    taxonomy = next((r.taxonomy for r in results_list if r.taxonomy is not None), None)
    return Results(list(ref.names), total.astype(np.float32), labels, ref.num_classes, ref.img_shape, meta, head,
                   taxonomy)


def _score_fn(labels: np.ndarray, metric: str, macro_labels: str,
              taxonomy: Taxonomy = MA52) -> Callable[[np.ndarray], float]:
    def score(pred: np.ndarray) -> float:
        if metric == "top1":
            return float(np.mean(pred == labels))
        values = f1_mean(labels, pred, macro_labels, taxonomy=taxonomy)
        if metric not in values:
            raise ResultsError(f"metric {metric!r} is not one of top1, {', '.join(values)}")
        return values[metric]
    return score


def search_weights(val_results_list: Sequence[Results], grid: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                   metric: str = "f1_mean", macro_labels: str = "present",
                   max_exhaustive: int = 4096) -> tuple[list[float], float]:
    """Choose ensemble weights on validation results.

    Exhaustive over ``grid^M`` when that has at most ``max_exhaustive`` points, otherwise coordinate ascent
    (each weight in turn takes the best grid value, sweeps until nothing improves). Both start from equal
    weights and replace them only on a strict improvement, so the answer is never worse than equal weights
    on these validation results.

    The objective is the results' taxonomy's F1_mean: over both levels, or for a flat taxonomy the mean of the
    fine macro and micro F1.

    Args:
        val_results_list: one labelled validation result per model, same videos in the same order.
        grid: candidate weight values.
        metric: ``"f1_mean"`` (default), one of its parts (``"fine_macro"``...) or ``"top1"``.
        macro_labels: label set of the macro F1 terms.
        max_exhaustive: largest grid size searched exhaustively.

    Returns:
        ``(weights, validation score)``.
    """
    check_compatible(val_results_list)
    labels = next((r.labels for r in val_results_list if r.labels is not None), None)
    if labels is None:
        raise ResultsError("weight search needs labelled validation results; these dumps have no labels")
    grid = sorted({float(g) for g in grid})
    if not grid or min(grid) < 0:
        raise ResultsError(f"--grid needs non-negative weights, got {grid}")
    stack = np.stack([r.scores.astype(np.float64) for r in val_results_list])  # [M, N, K]
    taxonomy = next((r.taxonomy for r in val_results_list if r.taxonomy is not None), None)
    if taxonomy is None:
        val_results_list[0].require_taxonomy()  # raises, saying how to give one
    score = _score_fn(labels, metric, macro_labels, taxonomy)

    def evaluate(w: Sequence[float]) -> float:
        return score(np.argmax(np.tensordot(np.asarray(w), stack, axes=1), axis=1))  # [M]·[M,N,K] -> [N,K]

    m = len(val_results_list)
    best_w = [max(grid) if max(grid) > 0 else 1.0] * m  # equal weights (any common value gives the same argmax)
    best = evaluate(best_w)
    if len(grid) ** m <= max_exhaustive:
        for w in itertools.product(grid, repeat=m):
            if not any(w):
                continue
            s = evaluate(w)
            if s > best:
                best, best_w = s, list(w)
        return best_w, best
    for _ in range(20):  # coordinate ascent; converges in a few sweeps
        improved = False
        for i in range(m):
            for g in grid:
                w = list(best_w)
                w[i] = g
                if not any(w) or w == best_w:
                    continue
                s = evaluate(w)
                if s > best:
                    best, best_w, improved = s, w, True
        if not improved:
            break
    return best_w, best


def _subset(r: Results, index: np.ndarray) -> Results:
    """The results of the videos at ``index`` (same classes)."""
    head = None if r.coarse_head_scores is None else r.coarse_head_scores[index]
    return Results([r.names[i] for i in index], r.scores[index], None if r.labels is None else r.labels[index],
                   r.num_classes, r.img_shape, dict(r.meta), head, r.taxonomy)


def cross_validate_search(val_results_list: Sequence[Results], grid: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                          folds: int = 5, seed: int = 0, resamples: int = 1000, macro_labels: str = "present") -> dict:
    """How much the weight search gains on videos it did not see: ``folds``-fold cross-validation on validation.

    The score of :func:`search_weights` on the videos it searched on is optimistic (it picked the weights that
    happen to suit them). Here each fold's videos are predicted with weights searched on the other folds, and
    these out-of-fold predictions are scored against equal weights on the same videos, with a paired bootstrap
    95 % interval of the gain.

    Returns:
        ``{"folds", "equal", "searched", "gain": {"diff", "low", "high", "p_better"}, "fold_weights"}`` (F1_mean
        as fractions).

    Raises:
        ResultsError: as :func:`search_weights`, or fewer than two videos per fold.
    """
    from microact.compare import Predictions, bootstrap_differences, difference_summary

    check_compatible(val_results_list)
    ref = val_results_list[0]
    labels = next((r.labels for r in val_results_list if r.labels is not None), None)
    if labels is None:
        raise ResultsError("weight search needs labelled validation results; these dumps have no labels")
    n = len(ref)
    if folds < 2 or n < 2 * folds:
        raise ResultsError(f"cross-validating the weight search needs at least 2 folds of 2 videos each "
                           f"({n} videos, {folds} folds); use fewer folds, or 0 to skip it")
    taxonomy = next((r.taxonomy for r in val_results_list if r.taxonomy is not None), None) or ref.require_taxonomy()
    stack = np.stack([r.scores.astype(np.float64) for r in val_results_list])  # [M, N, K]
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    searched = np.empty(n, dtype=np.int64)
    fold_weights = []
    for f in range(folds):
        held_out = np.flatnonzero(fold_of == f)
        train = np.flatnonzero(fold_of != f)
        weights, _ = search_weights([_subset(r, train) for r in val_results_list], grid, macro_labels=macro_labels)
        fold_weights.append(weights)
        searched[held_out] = np.argmax(np.tensordot(np.asarray(weights), stack[:, held_out], axes=1), axis=1)
    equal = np.argmax(stack.sum(axis=0), axis=1)
    scores = {name: f1_mean(labels, pred, macro_labels, taxonomy=taxonomy)["f1_mean"]
              for name, pred in (("equal", equal), ("searched", searched))}
    [gains] = bootstrap_differences(Predictions(labels, equal), [Predictions(labels, searched)], taxonomy,
                                    resamples=resamples, seed=seed, macro_labels=macro_labels)
    return {"folds": folds, **scores, "gain": difference_summary(scores["searched"] - scores["equal"],
                                                                  gains["f1_mean"]),
            "fold_weights": fold_weights}


# --------------------------------------------------------------------------------------------
# CLI handlers
# --------------------------------------------------------------------------------------------


def _warn_index_names(results: Results, what: str) -> None:
    if _placeholder_names(results):
        print(f"warning: {what} carries no video names; submission ids are row indexes. "
              "Pass --list test_list_videos.txt to use the real file names.", file=sys.stderr)


def _write_submissions(results: Results, out: Path, fmt: str, coarse_rule: str) -> list[Path]:
    written = []
    if fmt in ("mac2024", "all"):
        written.append(write_mac2024_submission(results, out, coarse_rule))
    if fmt in ("ma52", "all"):
        written.append(write_ma52_top5_csv(results, out, coarse_rule))
    return written


def cli_submit(args) -> int:
    """``microact submit DUMP --out DIR [--list] [--format] [--coarse-rule]``."""
    results = load_results(args.dump, list_file=args.list)
    _warn_index_names(results, args.dump)
    if _implicit_taxonomy(results):  # a bare pickle (or an older dump): nothing says which 52 classes these are
        print(f"note: {args.dump} records no classes; its 52 columns are taken as MA-52's (a dump of another "
              "dataset's 52 classes must not be submitted)", file=sys.stderr)
    coarse_rule = args.coarse_rule
    if coarse_rule is None:  # the rule `microact test` scored the dump with, so the submission matches its report
        coarse_rule = dump_provenance(args.dump, results).get("coarse_rule", "map_top1")
        if coarse_rule != "map_top1":
            print(f"body parts by predict.coarse_rule={coarse_rule}, as the dump was scored (--coarse-rule to change)")
    out = Path(args.out)
    try:
        written = _write_submissions(results, out, args.format, coarse_rule)
    except ResultsError as e:  # the checks of the submission writers do not know which file they look at
        raise ResultsError(f"{args.dump}: {e}") from None
    for path in written:
        print(f"wrote {path} ({len(results)} videos)")
    if results.labels is not None:
        print(format_summary(results.metrics(coarse_rule=coarse_rule)))
    return 0


def dump_provenance(path: str | os.PathLike, results: Results) -> dict:
    """What `microact test` recorded about a dump (checkpoint, split, coarse rule): in its meta, or for a ``.pkl``
    in the ``.npz`` written beside it (the pickle keeps mmaction2's schema, which has no room for it)."""
    meta = dict(results.meta)
    sibling = Path(path).with_suffix(".npz")
    if "checkpoint" not in meta and Path(path).suffix != ".npz" and sibling.is_file():
        try:
            with np.load(sibling, allow_pickle=False) as z:
                if "meta_json" in z.files and z["scores"].shape == results.scores.shape:
                    meta.update(json.loads(str(z["meta_json"])))
        except (OSError, ValueError, KeyError):
            pass  # provenance is a courtesy check; an unreadable sibling just skips it
    return {k: meta[k] for k in ("checkpoint", "split", "coarse_rule") if k in meta}


def _check_search_pairs(dump_paths, dumps, val_paths, val) -> None:
    """The i-th validation dump must come from the i-th model: weights searched on one model and applied to
    another are silently wrong. Checked where `microact test` recorded the checkpoints."""
    unverified = []
    for i, (tp, t, vp, v) in enumerate(zip(dump_paths, dumps, val_paths, val)):
        test_info, val_info = dump_provenance(tp, t), dump_provenance(vp, v)
        if not (test_info.get("checkpoint") and val_info.get("checkpoint")):
            unverified.append(str(i + 1))
        if val_info.get("split") == "test":
            print(f"warning: --search-on {vp} is a dump of the test split: weights searched on it are tuned on the "
                  "test set", file=sys.stderr)
        a, b = test_info.get("checkpoint"), val_info.get("checkpoint")
        if a and b and Path(a).resolve() != Path(b).resolve():  # one file typed two ways is one model
            raise ResultsError(f"--search-on: dump {i + 1} ({tp}) comes from {a} but its validation dump ({vp}) from "
                               f"{b}; give the validation dumps in the same order as the dumps")
    if unverified:
        print(f"note: dump(s) {', '.join(unverified)} do not record their checkpoint (mmaction2 dumps, or .pkl files "
              "without their .npz): check that --search-on lists the validation dumps in the order of the dumps",
              file=sys.stderr)


def _classes_option(args) -> Taxonomy | None:
    """The taxonomy of ``--classes FILE`` (for dumps that record none), or ``None``."""
    from microact.taxonomy import load_classes

    path = getattr(args, "classes", None)
    return load_classes(path) if path else None


def cli_ensemble(args) -> int:
    """``microact ensemble DUMP... [--weights w...] [--search-on VAL...] [--grid ...] [--list] --out DIR``."""
    from microact.plots.results import write_report

    taxonomy = _classes_option(args)
    dumps = [load_results(p, list_file=args.list, taxonomy=taxonomy) for p in args.dumps]
    check_compatible(dumps)  # class counts and video order first: the more telling mismatch
    for r in dumps:
        r.require_taxonomy()  # a bare pickle of other classes: say which file needs --classes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {"dumps": list(args.dumps)}
    if args.weights and args.search_on:
        raise ResultsError("give either --weights or --search-on, not both")
    if args.weights:
        if len(args.weights) != len(dumps):
            raise ResultsError(f"--weights: {len(args.weights)} values for {len(dumps)} dumps")
        weights = list(args.weights)
    elif args.search_on:
        if len(args.search_on) != len(dumps):
            raise ResultsError(f"--search-on: {len(args.search_on)} validation dumps for {len(dumps)} dumps "
                               "(one per model, same order)")
        val = [load_results(p, taxonomy=taxonomy) for p in args.search_on]
        check_compatible(val)
        _check_search_pairs(args.dumps, dumps, args.search_on, val)
        for p, r in zip(args.search_on, val):
            if r.labels is None:
                raise ResultsError(f"{p}: validation dump has no labels (all gt_label 0?)")
            print(f"val {p}: F1_mean {100 * r.metrics()['f1_mean']:.2f}")
        equal = ensemble(val).metrics()["f1_mean"]
        weights, best = search_weights(val, args.grid)
        print(f"val ensemble: equal weights F1_mean {100 * equal:.2f}, searched weights F1_mean {100 * best:.2f} "
              "(on the videos the weights were chosen on)")
        info.update(search_on=list(args.search_on), grid=list(args.grid), val_f1_mean_equal=equal, val_f1_mean=best)
        if args.cv_folds:
            cv = cross_validate_search(val, args.grid, folds=args.cv_folds)
            g = cv["gain"]
            verdict = ("beyond the noise" if g["low"] > 0 or g["high"] < 0 else "within the noise: equal weights may "
                       "do as well on the test videos")
            print(f"weight search, {cv['folds']}-fold cross-validated on val (each fold's videos predicted with weights "
                  f"searched on the others): equal {100 * cv['equal']:.2f}, searched {100 * cv['searched']:.2f}, gain "
                  f"{100 * g['diff']:+.2f} [{100 * g['low']:+.2f}, {100 * g['high']:+.2f}] (paired bootstrap 95 %), "
                  f"{verdict}")
            info["cross_validation"] = cv
    else:
        weights = [1.0] * len(dumps)
    info["weights"] = weights
    print("weights: " + ", ".join(f"{p}={w:g}" for p, w in zip(args.dumps, weights)))
    combined = ensemble(dumps, weights)
    combined.require_taxonomy()
    # body parts by the rule the dumps were scored with, when they agree (and the coarse heads' scores came along)
    rules = {dump_provenance(p, r).get("coarse_rule", "map_top1") for p, r in zip(args.dumps, dumps)}
    coarse_rule = rules.pop() if len(rules) == 1 else "map_top1"
    if coarse_rule == "coarse_head" and combined.coarse_head_scores is None:
        coarse_rule = "map_top1"
    if not combined.taxonomy.has_coarse:
        rules, coarse_rule = set(), "map_top1"  # no groups to predict
    if rules or coarse_rule != "map_top1":
        print(f"body parts by predict.coarse_rule={coarse_rule}"
              + (" (the dumps were scored with different rules)" if rules else ", as the dumps were scored"))
    combined.meta["coarse_rule"] = info["coarse_rule"] = coarse_rule
    pkl, npz = save_results(combined, out / "ensemble.pkl")
    print(f"wrote {pkl} and {npz}")
    if combined.labels is not None:
        metrics = write_report(combined, out, coarse_rule=coarse_rule)
        info["f1_mean"] = metrics["f1_mean"]
        print(format_summary(metrics))
    if combined.taxonomy.is_ma52:
        _warn_index_names(combined, "the ensemble")
        for path in _write_submissions(combined, out, "all", coarse_rule):
            print(f"wrote {path}")
    else:
        print(f"no challenge submission files: the classes are not MA-52's ({combined.taxonomy.describe()})")
    (out / "ensemble.json").write_text(json.dumps(info, indent=2))
    return 0
