"""Security properties that CI keeps true.

1. No code path unpickles untrusted data with the default unpickler: checkpoints go through
   ``torch.load(weights_only=True)`` or safetensors, result dumps through the restricted unpickler of
   :mod:`microact.results` (static scan of ``src/`` plus behavioural tests with code-running pickles).
2. Paths in list files cannot leave the dataset folder unless ``data.allow_absolute_paths`` is set.
   Decision on symlinks: a symlink *inside* the dataset folder is followed, also when it points elsewhere.
   The list file's text is the untrusted part (lists are downloaded and shared); symlinks are placed by the
   person who owns the disk, and linking a video folder onto another disk is a normal way to lay out MA-52.
3. Subprocesses get argument lists, never shell strings (static scan: no ``shell=True``, ``os.system``,
   ``os.popen``; the first argument of every ``subprocess`` call is a list or tuple).
"""
from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from microact.config import load_config
from microact.data.annotations import AnnotationError, load_list
from microact.errors import MicroactError
from microact.models.checkpoints import CheckpointError, read_checkpoint
from microact.results import Results, ResultsError, load_results, save_results

SRC = Path(__file__).resolve().parents[1] / "src" / "microact"
RESTRICTED_UNPICKLER_FILE = SRC / "results.py"


# --------------------------------------------------------------------------------------------
# Static scan of the package source
# --------------------------------------------------------------------------------------------


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for Name/Attribute chains, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _calls() -> list[tuple[Path, ast.Call, str]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                found.append((path, node, _dotted(node.func)))
    return found


CALLS = _calls()


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(SRC.parent)}:{node.lineno}"


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value
    return None


def test_scan_sees_the_package():
    names = {name for _, _, name in CALLS}
    assert len(CALLS) > 1000 and "torch.load" in names  # the scan would be vacuous otherwise


def test_torch_load_is_always_weights_only():
    bad = []
    for path, node, name in CALLS:
        if name.endswith("torch.load"):
            value = _keyword(node, "weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                bad.append(_where(path, node))
    assert not bad, f"torch.load without weights_only=True at: {bad}"


def test_no_default_unpickler():
    forbidden = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "dill.load", "dill.loads",
                 "joblib.load", "marshal.load", "marshal.loads", "shelve.open", "torch.jit.load", "yaml.load",
                 "yaml.unsafe_load", "yaml.full_load", "np.load", "numpy.load"}
    bad = []
    for path, node, name in CALLS:
        if name in ("np.load", "numpy.load"):
            value = _keyword(node, "allow_pickle")  # numpy's default is allow_pickle=False: only True is unsafe
            if value is None or (isinstance(value, ast.Constant) and value.value is False):
                continue
        if name in ("yaml.load",) and _dotted(_keyword(node, "Loader") or ast.Constant(None)).endswith("SafeLoader"):
            continue
        if name in forbidden:
            bad.append(f"{_where(path, node)} {name}")
    assert not bad, f"unsafe deserialisation at: {bad}"


def test_no_unpickler_imported_by_name():
    """``from pickle import loads`` would hide the call from the scan above."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "_pickle", "dill", "marshal", "joblib"):
                names = {a.name for a in node.names} & {"load", "loads", "Unpickler", "*"}
                if names:
                    bad.append(f"{_where(path, node)} from {node.module} import {', '.join(sorted(names))}")
            if isinstance(node, ast.Import):
                bad += [f"{_where(path, node)} import {a.name} as {a.asname}" for a in node.names
                        if a.name in ("pickle", "subprocess", "os") and a.asname]
    assert not bad, f"aliased imports that hide unsafe calls: {bad}"


def test_only_the_restricted_unpickler_subclasses_pickle_unpickler():
    subclasses = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(_dotted(b) == "pickle.Unpickler" for b in node.bases):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                subclasses.append((path, node.name, methods))
    assert [(p, n) for p, n, _ in subclasses] == [(RESTRICTED_UNPICKLER_FILE, "_RestrictedUnpickler")]
    assert {"find_class", "persistent_load"} <= subclasses[0][2]


def test_no_shell_strings():
    bad = []
    for path, node, name in CALLS:
        if name in ("os.system", "os.popen", "os.spawnl", "os.spawnlp", "os.execl", "os.execlp", "eval", "exec",
                    "commands.getoutput", "subprocess.getoutput", "subprocess.getstatusoutput"):
            bad.append(f"{_where(path, node)} {name}")
        shell = _keyword(node, "shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            bad.append(f"{_where(path, node)} {name}(shell=...)")
        if name.startswith("subprocess.") and name.split(".")[-1] in ("run", "Popen", "call", "check_call",
                                                                       "check_output"):
            first = node.args[0] if node.args else _keyword(node, "args")
            if not isinstance(first, (ast.List, ast.Tuple)):
                bad.append(f"{_where(path, node)} {name} with a non-list command")
    assert not bad, f"shell execution at: {bad}"


# --------------------------------------------------------------------------------------------
# Code-running pickles are refused and nothing runs
# --------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling calls ``reducer(*args)``; each reducer below creates a marker, proving the code ran."""

    def __init__(self, reducer, *args):
        self.reducer, self.args = reducer, args

    def __reduce__(self):
        return self.reducer, self.args


def _payloads(marker: Path) -> dict[str, _Payload]:
    import subprocess

    return {
        "os.mkdir": _Payload(os.mkdir, str(marker)),
        "os.system": _Payload(os.system, f"touch {marker}"),
        "subprocess.Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
        "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        "Path.touch": _Payload(Path.touch, marker),
    }


PAYLOAD_NAMES = ["os.mkdir", "os.system", "subprocess.Popen", "builtins.exec", "Path.touch"]


@pytest.mark.parametrize("payload", PAYLOAD_NAMES)
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_checkpoint_with_code_is_refused(tmp_path, payload, fmt):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    obj = {"weight": torch.zeros(2), "x": _payloads(marker)[payload]}
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists(), "the checkpoint's code ran"


@pytest.mark.parametrize("payload", PAYLOAD_NAMES)
def test_result_dump_with_code_is_refused(tmp_path, payload):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    entry = {"pred_score": torch.ones(3) / 3, "pred_label": torch.tensor([0]), "gt_label": torch.tensor([0]),
             "extra": _payloads(marker)[payload]}
    path.write_bytes(pickle.dumps([entry], protocol=2))
    with pytest.raises(ResultsError, match="refused to load"):
        load_results(path)
    assert not marker.exists(), "the dump's code ran"


def test_result_dump_tensor_storage_cannot_smuggle_a_pickle(tmp_path):
    """A tensor storage is itself a nested pickle; the code inside one must not run either."""
    marker = tmp_path / "PWNED"
    inner = pickle.dumps(_Payload(os.mkdir, str(marker)), protocol=2)
    path = tmp_path / "evil_storage.pkl"
    path.write_bytes(pickle.dumps([{"pred_score": _Payload(torch.storage._load_from_bytes, inner)}], protocol=2))
    with pytest.raises(ResultsError, match="refused"):
        load_results(path)
    assert not marker.exists()


def test_genuine_dump_still_loads(tmp_path):
    """The restrictions refuse code, not data: a dump of real tensors loads with the same numbers."""
    scores = np.random.default_rng(0).dirichlet(np.ones(52), size=3).astype(np.float32)
    pkl, _ = save_results(Results(["a.mp4", "b.mp4", "c.mp4"], scores, np.array([1, 2, 3]), 52), tmp_path / "r.pkl")
    back = load_results(pkl)
    np.testing.assert_array_equal(back.scores, scores)
    assert back.labels.tolist() == [1, 2, 3]


def test_convert_has_no_pickle_escape_hatch(tmp_path):
    from microact.cli import main

    torch.save({"w": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(SystemExit) as exit_info:  # no option can turn on full unpickling
        main(["convert", str(tmp_path / "x.pth"), str(tmp_path / "y.safetensors"), "--allow-pickle-classes"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "y.safetensors").exists()


# --------------------------------------------------------------------------------------------
# Paths in list files
# --------------------------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "a.mp4").write_bytes(b"x")
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"x")
    return root, secret


ESCAPES = ["../secret.mp4", "../../etc/passwd", "videos/../../secret.mp4", "./../secret.mp4", "a/b/../../../x.mp4"]


@pytest.mark.parametrize("name", ESCAPES)
def test_relative_escape_refused(dataset, name):
    root, _ = dataset
    (root / "list.txt").write_text(f"videos/a.mp4 1\n{name} 2\n")
    with pytest.raises(AnnotationError) as info:
        load_list(root / "list.txt", video_dir=root, num_classes=52, check_files=False)
    message = str(info.value)
    assert f"list.txt:2: path {name!r} leaves the dataset folder" in message
    assert "data.allow_absolute_paths" in message and "list.txt:1" not in message


def test_absolute_path_refused_unless_allowed(dataset):
    root, secret = dataset
    (root / "list.txt").write_text(f"{secret} 2\n")
    with pytest.raises(AnnotationError, match=r"list.txt:1: absolute path .* not allowed"):
        load_list(root / "list.txt", video_dir=root, num_classes=52)
    records = load_list(root / "list.txt", video_dir=root, num_classes=52, allow_absolute_paths=True)
    assert [r.path for r in records] == [str(secret)]
    (root / "list.txt").write_text("../secret.mp4 2\n")
    records = load_list(root / "list.txt", video_dir=root, num_classes=52, allow_absolute_paths=True)
    assert (root / records[0].path).resolve() == secret.resolve()


def test_paths_that_stay_inside_are_accepted(dataset):
    root, _ = dataset
    (root / "list.txt").write_text("videos/a.mp4 1\n./videos/../videos/a.mp4 2\n")
    with pytest.raises(AnnotationError, match="duplicate"):  # the same file after normalisation
        load_list(root / "list.txt", video_dir=root, num_classes=52)
    (root / "list.txt").write_text("./videos/../videos/a.mp4 2\n")
    assert len(load_list(root / "list.txt", video_dir=root, num_classes=52)) == 1


def test_symlink_inside_root_is_followed(dataset):
    """Documented decision (module docstring): symlinks placed in the dataset folder are trusted."""
    root, secret = dataset
    (root / "videos" / "linked.mp4").symlink_to(secret)
    (root / "list.txt").write_text("videos/linked.mp4 3\n")
    records = load_list(root / "list.txt", video_dir=root, num_classes=52)
    assert (root / records[0].path).resolve() == secret.resolve()


def test_recipe_switch_reaches_the_test_loader(dataset):
    """``data.allow_absolute_paths`` is honoured by the evaluation path (the user's switch, not a default)."""
    from microact.engine.evaluate import build_test_loader

    root, secret = dataset
    (root / "test.txt").write_text(f"{secret} 0\n")
    base = ["model.preset=videomae_test_frame_coarse_tsn", "data.clip_len=4", "data.img_size=32",
            "eval.resize_short=40", "data.num_workers=0", f"data.root={root}"]
    with pytest.raises(AnnotationError, match="absolute path"):
        build_test_loader(load_config(None, base), root / "test.txt", 1)
    loader = build_test_loader(load_config(None, base + ["data.allow_absolute_paths=true"]), root / "test.txt", 1)
    assert len(loader.dataset) == 1


def test_errors_are_microact_errors():
    assert issubclass(AnnotationError, MicroactError) and issubclass(CheckpointError, MicroactError)
    assert issubclass(ResultsError, MicroactError)
