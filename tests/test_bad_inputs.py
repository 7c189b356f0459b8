"""The bad-input catalogue: every way a user can hand microact a broken file, and the message they see.

Each :class:`Case` builds one bad input in its own folder, runs the user's action (a ``microact`` command
through :func:`microact.cli.main`, or a library call) and records the :class:`Outcome`: the exit code or the
``MicroactError`` subclass, and the text the user reads. The tests assert that no outcome is a traceback or a
bare ``KeyError``/``IndexError``/..., and that the message names the file, line or key.

``docs/BAD_INPUTS.md`` is this catalogue rendered as a table; regenerate it with
``python tests/test_bad_inputs.py --write-docs`` (``test_docs_table_is_current`` fails when it is stale).
Temporary folders are written as ``<dir>`` so the table is the same on every machine.
"""
from __future__ import annotations

import contextlib
import functools
import io
import pickle
import struct
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from microact.errors import MicroactError

DOC = Path(__file__).resolve().parents[1] / "docs" / "BAD_INPUTS.md"

# A recipe small enough that building its model costs milliseconds (ViT dim 64, 2 blocks).
TINY = ["model.preset=videomae_test_frame_coarse_tsn", "data.clip_len=4", "data.img_size=32", "data.num_workers=0",
        "eval.resize_short=40", "eval.crop_height=48", "train.device=cpu", "train.global_batch=2",
        "train.micro_batch=2"]


@dataclass
class Outcome:
    """What the user got: ``kind`` (``exit 2``, ``exit 1``, ``exit 0``, ``raises X``, ``skipped``, ``accepted``
    or ``CRASH``) and the text they read."""

    kind: str
    message: str


@dataclass
class Case:
    """One catalogue entry: build the bad input in ``folder`` and run the user's action on it."""

    id: str
    category: str
    what: str  # the bad input, in words (the table's first column)
    action: str  # the user action, in words
    run: Callable[[Path], Outcome]
    kind: str  # expected Outcome.kind
    keywords: tuple[str, ...]  # each must appear in the message


# --------------------------------------------------------------------------------------------
# Running user actions
# --------------------------------------------------------------------------------------------


def cli(argv: list[str]) -> Outcome:
    """``microact ARGV``: exit code and what was printed (stderr for errors, the problem lines for data check)."""
    from microact.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    except BaseException:  # noqa: BLE001 - a traceback is exactly what the catalogue must never show
        return Outcome("CRASH", traceback.format_exc())
    if code == 2:
        return Outcome("exit 2", err.getvalue().strip())
    text = out.getvalue()
    if "problem(s):" in text:  # data check: the problem lines
        text = text.split("problem(s):", 1)[1]
    else:
        text = "\n".join(line for line in text.splitlines() if "no problems" in line or "rotation" in line
                         or "resolutions" in line or "num_frames" in line)
    return Outcome(f"exit {code}", "\n".join(line.strip() for line in text.strip().splitlines()))


def library(fn: Callable[[], object]) -> Outcome:
    """A library call: the MicroactError subclass raised and its message, or ``accepted``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = fn()
    except MicroactError as e:
        return Outcome(f"raises {type(e).__name__}", str(e))
    except BaseException:  # noqa: BLE001
        return Outcome("CRASH", traceback.format_exc())
    return Outcome("accepted", str(value) if value is not None else "")


# --------------------------------------------------------------------------------------------
# Building bad videos (all real files written with PyAV / libx264)
# --------------------------------------------------------------------------------------------


def _frames(n: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(n * 1000 + h)
    return rng.integers(0, 255, size=(n, h, w, 3), dtype=np.uint8)


def _smooth_frames(n: int, h: int, w: int) -> np.ndarray:
    """Colour ramps with a square that moves: cheap to encode and decode at any size (noise is neither)."""
    ys, xs = np.mgrid[0:h, 0:w]
    base = np.stack([xs * 255 // max(1, w - 1), ys * 255 // max(1, h - 1), (xs + ys) * 127 // max(1, w + h - 2)],
                    axis=-1).astype(np.uint8)
    frames = np.repeat(base[None], n, axis=0)
    side = max(4, min(h, w) // 4)
    for t in range(n):
        frames[t, t * side // 4:t * side // 4 + side, t * side // 2:t * side // 2 + side] = (230, 40, 40)
    return frames


def _write(path: Path, n: int = 8, h: int = 64, w: int = 48, pts_ms: list[int] | None = None,
           faststart: bool = False, smooth: bool = False) -> Path:
    """H.264 mp4; ``pts_ms`` gives each frame its own timestamp (variable frame rate); ``faststart`` puts the
    index (moov) before the media data, as streaming-ready files do; ``smooth`` writes ramps instead of noise."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=15, options={"threads": "1"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i, arr in enumerate((_smooth_frames if smooth else _frames)(n, h, w)):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


_VIDEO_BYTES: dict[str, bytes] = {}  # kind -> the file's bytes: each kind is encoded once, later cases copy it


def _video(kind: str, path: Path) -> Path:
    """Write the video of one kind at ``path`` (the same bytes every time: the encoder runs single-threaded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind not in _VIDEO_BYTES:
        _encode_video(kind, path)
        _VIDEO_BYTES[kind] = path.read_bytes()
    else:
        path.write_bytes(_VIDEO_BYTES[kind])
    return path


def _encode_video(kind: str, path: Path) -> None:
    import av

    if kind == "truncated":  # the header survives, the media data is cut short: no decodable frame
        _write(path, n=16)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "truncated-tail":  # index first, media cut at 60%: the first 10 of 16 frames survive
        _write(path, n=16, faststart=True)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 6 // 10])
    elif kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is a text file that was given an .mp4 name\n" * 10)
    elif kind == "audio-only":
        with av.open(str(path), "w", format="mp4") as c:
            s = c.add_stream("aac", rate=16000)
            for i in range(8):
                fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                fr.sample_rate, fr.pts = 16000, i * 1024
                for p in s.encode(fr):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    elif kind == "1-frame":
        _write(path, n=1)
    elif kind == "huge":  # 4096x2160, 2 frames: a full-size camera file, kept short (and smooth: 4K noise
        _write(path, n=2, h=2160, w=4096, smooth=True)  # takes seconds to encode and decode, and the size is the point)
    elif kind == "vfr":
        _write(path, n=8, pts_ms=[0, 30, 200, 230, 700, 710, 900, 1400])
    elif kind == "rotated":  # a phone video: the track header's display matrix says "rotate by 90 degrees"
        _write(path, n=8)
        data = bytearray(path.read_bytes())
        identity = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
        rotate90 = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
        at = data.rfind(identity)  # the last matrix is the video track's tkhd (the first one is mvhd's)
        assert at > 0
        data[at:at + 36] = rotate90
        path.write_bytes(bytes(data))
    else:
        raise AssertionError(kind)


VIDEO_KINDS = {
    "truncated": ("mp4 (index at the end) cut to a third: index lost", "exit 1", "skipped", ("bad.mp4",)),
    "truncated-tail": ("mp4 (index first) cut at 60%: 10 of 16 frames left", "exit 0", "accepted", ()),
    "zero-byte": ("empty file named .mp4", "exit 1", "skipped", ("bad.mp4", "empty file")),
    "text": ("text file named .mp4", "exit 1", "skipped", ("bad.mp4", "not a readable video")),
    "audio-only": ("AAC audio-only .mp4", "exit 1", "skipped", ("bad.mp4", "no video stream", "audio")),
    "1-frame": ("H.264 video of a single frame", "exit 0", "accepted", ()),
    "huge": ("4096x2160 video (2 frames)", "exit 0", "accepted", ()),
    "vfr": ("variable frame rate (irregular timestamps)", "exit 0", "accepted", ()),
    "rotated": ("display matrix rotated by 90 degrees", "exit 0", "accepted", ()),
}
VIDEO_CHECK_KEYWORDS = {"truncated-tail": ("num_frames", "no problems"),
                        "1-frame": ("max 1", "no problems"), "huge": ("4096x2160", "no problems"),
                        "vfr": ("no problems",), "rotated": ("1 video(s) carry a rotation", "no problems")}
VIDEO_DATASET_KEYWORDS = {"truncated-tail": ("[3, 4, 32, 32]",), "1-frame": ("[3, 4, 32, 32]",), "huge": ("[3, 4, 32, 32]",), "vfr": ("[3, 4, 32, 32]",),
                          "rotated": ("[3, 4, 32, 32]",)}


def _video_check(kind: str) -> Callable[[Path], Outcome]:
    def run(d: Path) -> Outcome:
        _video(kind, d / "bad.mp4")
        (d / "train_list_videos.txt").write_text("bad.mp4 3\n")
        return cli(["data", "check", d, "--workers", "1"])
    return run


def _video_dataset(kind: str) -> Callable[[Path], Outcome]:
    """Training path: VideoDataset item -> collate; a bad video is dropped and counted in batch['skipped']."""

    def run(d: Path) -> Outcome:
        from microact.config import AugConfig
        from microact.data.annotations import load_list
        from microact.data.dataset import VideoDataset, collate
        from microact.data.transforms import TrainTransform

        _video(kind, d / "bad.mp4")
        (d / "list.txt").write_text("bad.mp4 3\n")
        records = load_list(d / "list.txt", video_dir=d, num_classes=52)
        ds = VideoDataset(records, d, clip_len=4, transform=TrainTransform(AugConfig(color_jitter=False), 32))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batch = collate([ds[0]])
        if batch["skipped"]:
            warned = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
            assert len(batch["skipped"]) == 1 and warned, "a skipped clip must be counted and warned about"
            return Outcome("skipped", warned[0])
        return Outcome("accepted", f"clip {list(batch['video'].shape[1:])} uint8")
    return run


def _predict(make: Callable[[Path], Path], extra: tuple[str, ...] = ()) -> Callable[[Path], Outcome]:
    """``microact predict VIDEO --config tiny.yaml --detector none`` (an untrained tiny model)."""

    def run(d: Path) -> Outcome:
        video = make(d)
        recipe = _recipe(d, "model: {preset: videomae_test_frame_coarse_tsn}\ndata: {clip_len: 4, img_size: 32}\n"
                            "eval: {resize_short: 40, crop_height: 48, test_clips: 1}\n")
        return cli(["predict", video, "--config", recipe, "--detector", "none", "--device", "cpu", *extra])
    return run


def _predict_two_stream(make: Callable[[Path], Path], extra: tuple[str, ...] = ()) -> Callable[[Path], Outcome]:
    """``microact predict VIDEO --config two_stream.yaml --detector none`` (an untrained tiny two-stream model)."""

    def run(d: Path) -> Outcome:
        video = make(d)
        recipe = _recipe(d, "model: {preset: videomae_b_k710_twostream_i3d, overrides: {backbone: videomae_test}}\n"
                            "data: {clip_len: 4, img_size: 32, flow_dir: flow}\n"
                            "eval: {resize_short: 40, crop_height: 48, test_clips: 1}\n")
        return cli(["predict", video, "--config", recipe, "--detector", "none", "--device", "cpu", *extra])
    return run


# --------------------------------------------------------------------------------------------
# List files
# --------------------------------------------------------------------------------------------


def _list_check(lines: bytes, files: tuple[str, ...] = ("a.mp4", "b.mp4"), extra: dict | None = None,
                argv: tuple[str, ...] = ()) -> Callable[[Path], Outcome]:
    """``microact data check`` of a train list with the given bytes (videos are zero bytes: --no-decode)."""

    def run(d: Path) -> Outcome:
        d.mkdir(parents=True, exist_ok=True)
        for name in files:
            (d / name).write_bytes(b"")
        (d / "train_list_videos.txt").write_bytes(lines)
        for name, data in (extra or {}).items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
        return cli(["data", "check", d, "--no-decode", *argv])
    return run


def _list_test_cli(d: Path) -> Outcome:
    """``microact test --list`` with a list whose line 2 has an out-of-range label: exit 2 before any model work."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "a.mp4").write_bytes(b"")
    (d / "b.mp4").write_bytes(b"")
    (d / "test.txt").write_text("a.mp4 3\nb.mp4 77\n")
    ckpt = _good_checkpoint(d)
    return cli(["test", _recipe(d), ckpt, *TINY, f"data.root={d}", "--list", d / "test.txt", "--out", d / "out"])


def _label_file(data: bytes) -> Callable[[Path], Outcome]:
    def run(d: Path) -> Outcome:
        from microact.data.annotations import load_label_names

        d.mkdir(parents=True, exist_ok=True)
        (d / "label_name.txt").write_bytes(data)
        return library(lambda: load_label_names(d / "label_name.txt"))
    return run


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def _recipe(d: Path, text: str | bytes = "description: catalogue recipe\n") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _config(text: str, overrides: tuple[str, ...] = ()) -> Callable[[Path], Outcome]:
    """``microact test RECIPE CKPT OVERRIDES``: the recipe is read before anything else happens."""

    def run(d: Path) -> Outcome:
        return cli(["test", _recipe(d, text), d / "missing.safetensors", *overrides])
    return run


def _creates_nothing(run: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
    """Wrap a ``microact train ... --out <dir>/run`` case that must fail before the run folder exists."""

    def wrapped(d: Path) -> Outcome:
        outcome = run(d)
        if (d / "run").exists():
            return Outcome("CRASH", f"the run folder was created: {outcome.message}")
        return outcome
    return wrapped


def _train_without_val_list(d: Path) -> Outcome:
    """``microact train``: data.root holds the train list but not the val list the recipe also trains on."""
    recipe = _recipe(d)
    (d / "data").mkdir()
    (d / "data" / "train_list_videos.txt").write_text("a.mp4 3\n")
    return cli(["train", recipe, f"data.root={d / 'data'}", "--out", d / "run"])


def _train_with_classes(classes: bytes | None, *overrides: str) -> Callable[[Path], Outcome]:
    """``microact train`` on a dataset folder with a classes file (``data.classes=classes.txt``, unless an override
    names another) and train/val lists whose labels are 0..2."""

    def run(d: Path) -> Outcome:
        recipe = _recipe(d)
        data = d / "data"
        data.mkdir()
        for name in ("train_list_videos.txt", "val_list_videos.txt"):
            (data / name).write_text("a.mp4 0\nb.mp4 2\n")
        if classes is not None:
            (data / "classes.txt").write_bytes(classes)
        return cli(["train", recipe, *TINY, f"data.root={data}", "data.classes=classes.txt", *overrides,
                    "--out", d / "run"])
    return _creates_nothing(run)


def _resume_with_edited_classes(d: Path) -> Outcome:
    """``microact train ... --resume`` of a run whose checkpoint records 3 classes, after class 1 of its classes file
    was renamed (the same count: the weights would load)."""
    from microact.config import load_config
    from microact.engine.state import save_checkpoint
    from microact.models.presets import create_model_from_config
    from microact.taxonomy import resolve_taxonomy

    recipe = _recipe(d)
    data = d / "data"
    data.mkdir()
    for name in ("a.mp4", "b.mp4"):
        _write(data / name)
    (data / "train_list_videos.txt").write_text("a.mp4 0\nb.mp4 2\n")
    (data / "classes.txt").write_bytes(b"0\tnod\thead\n1\twave\thand\n2\tpoint\thand\n")
    args = [*TINY, f"data.root={data}", "data.classes=classes.txt", "data.train_lists=[train_list_videos.txt]",
            "data.val_list=null"]
    cfg = load_config(recipe, args)
    taxonomy = resolve_taxonomy(cfg)
    save_checkpoint(d / "run", 4, create_model_from_config(cfg, pretrained=False, taxonomy=taxonomy), {}, keep=1,
                    recipe=cfg.to_yaml(), taxonomy=taxonomy)
    (data / "classes.txt").write_bytes(b"0\tnod\thead\n1\tshake head\thead\n2\tpoint\thand\n")
    return cli(["train", recipe, *args, "--out", d / "run", "--resume"])


def _classes_check(classes: bytes, labels: str) -> Callable[[Path], Outcome]:
    """``microact data check --no-decode --classes classes.txt`` on a list with ``labels``."""

    def run(d: Path) -> Outcome:
        d.mkdir(parents=True, exist_ok=True)
        (d / "classes.txt").write_bytes(classes)
        (d / "train_list_videos.txt").write_text("".join(f"v{i}.mp4 {v}\n" for i, v in enumerate(labels.split())))
        for i in range(len(labels.split())):
            (d / f"v{i}.mp4").write_bytes(b"")
        return cli(["data", "check", d, "--no-decode", "--classes", "classes.txt"])
    return run


def _classes_library(data: bytes) -> Callable[[Path], Outcome]:
    def run(d: Path) -> Outcome:
        from microact.taxonomy import load_classes

        d.mkdir(parents=True, exist_ok=True)
        (d / "classes.txt").write_bytes(data)
        return library(lambda: load_classes(d / "classes.txt"))
    return run


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _state_dict(backbone: str = "") -> dict:
    from microact.config import load_config
    from microact.models.presets import create_model_from_config

    import torch

    torch.manual_seed(0)
    extra = [f"model.overrides={{backbone: {backbone}}}"] if backbone else []
    model = create_model_from_config(load_config(None, TINY + extra), pretrained=False)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _test_list(d: Path) -> Path:
    """The recipe's test list in ``d``: ``microact test`` checks that it exists before it builds the model."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "test_list_videos.txt").write_text("a.mp4 3\n")
    return d / "test_list_videos.txt"


def _good_checkpoint(d: Path) -> Path:
    from safetensors.torch import save_file

    path = d / "model.safetensors"
    save_file(_state_dict(), str(path))
    return path


def _checkpoint(make: Callable[[Path], Path]) -> Callable[[Path], Outcome]:
    """``microact test RECIPE CKPT`` (the weights are loaded before any video is read)."""

    def run(d: Path) -> Outcome:
        _test_list(d)
        return cli(["test", _recipe(d), make(d), *TINY, f"data.root={d}", "--out", d / "out"])
    return run


def _ckpt_wider(d: Path) -> Path:
    from safetensors.torch import save_file

    save_file(_state_dict("videomae_tiny"), str(d / "wider_vit.safetensors"))
    return d / "wider_vit.safetensors"


def _ckpt_resnet(d: Path) -> Path:
    import torch

    sd = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64), "bn1.bias": torch.zeros(64),
          "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3), "fc.weight": torch.zeros(1000, 512),
          "fc.bias": torch.zeros(1000)}
    torch.save(sd, d / "resnet50.pth")
    return d / "resnet50.pth"


def _ckpt_twostream(d: Path) -> Path:
    """A two-stream recognizer's weights (``backbone.rgb.*`` and ``backbone.flow.*``, the names train writes)."""
    from microact.engine.state import save_weights

    sd = {}
    for k, v in _state_dict().items():
        if k.startswith("backbone."):
            sd["backbone.rgb." + k[len("backbone."):]] = v
            sd["backbone.flow." + k[len("backbone."):]] = v.clone()
        else:
            sd[k] = v
    save_weights(sd, d / "model_final.safetensors")
    return d / "model_final.safetensors"


def _ckpt_classes(d: Path) -> Path:
    from safetensors.torch import save_file

    sd = {k: (v[:10].clone() if v.shape and v.shape[0] == 52 else v) for k, v in _state_dict().items()}
    save_file(sd, str(d / "ten_classes.safetensors"))
    return d / "ten_classes.safetensors"


def _ckpt_truncated_pth(d: Path) -> Path:
    import torch

    torch.save(_state_dict(), d / "cut.pth")
    data = (d / "cut.pth").read_bytes()
    (d / "cut.pth").write_bytes(data[: len(data) // 2])
    return d / "cut.pth"


def _ckpt_truncated_safetensors(d: Path) -> Path:
    _good_checkpoint(d)
    data = (d / "model.safetensors").read_bytes()
    (d / "cut.safetensors").write_bytes(data[: len(data) // 2])
    return d / "cut.safetensors"


class _RunsCode:
    """Unpickling this calls ``Path.touch`` on a marker file: proof that a loader executed the pickle's code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _ckpt_evil(d: Path) -> Path:
    import torch

    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(d / "PWNED")}, d / "evil.pth")
    return d / "evil.pth"


class _MakesDir:
    """Unpickling this calls ``os.mkdir`` (a module-level function, unlike the builtin getattr above)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.marker),))


def _ckpt_evil_module(d: Path) -> Path:
    import torch

    torch.save({"weight": torch.zeros(2), "payload": _MakesDir(d / "PWNED")}, d / "evil_mkdir.pth")
    return d / "evil_mkdir.pth"


def _ckpt_state(d: Path) -> Path:
    import torch

    torch.save({"model": _state_dict(), "epoch": 3, "step": 100}, d / "state.pth")
    return d / "state.pth"


def _load_training_state(d: Path) -> Outcome:
    """Library: the evaluation loader takes a training checkpoint's ``model`` entry (same numbers)."""
    import torch

    from microact.config import load_config
    from microact.engine.evaluate import load_trained_weights
    from microact.models.presets import create_model_from_config

    d.mkdir(parents=True, exist_ok=True)
    path = _ckpt_state(d)
    model = create_model_from_config(load_config(None, TINY), pretrained=False)

    def load():
        load_trained_weights(model, path)
        same = all(torch.equal(v, _state_dict()[k]) for k, v in model.state_dict().items())
        return "model weights loaded" if same else "weights differ"
    return library(load)


def _ckpt_run_folder(d: Path) -> Path:
    """A ``microact train`` run folder given where a weights file belongs."""
    from microact.engine.state import save_weights

    run = d / "r4"
    run.mkdir()
    for name in ("model_final.safetensors", "model_best.safetensors"):
        save_weights(_state_dict(), run / name)
    return run


def _ckpt_run_folder_with_recipe(d: Path) -> Path:
    """A run folder (weights and the run's config.yaml) given where the recipe goes."""
    d.mkdir(parents=True, exist_ok=True)
    run = _ckpt_run_folder(d)
    (run / "config.yaml").write_text("description: the run's recipe\n")
    return run


def _ckpt_training_state_file(d: Path) -> Path:
    """A run's ``checkpoints/state_<step>.pt`` (optimizer and counters) given where its weights belong."""
    import torch

    from microact.engine.state import save_checkpoint

    save_checkpoint(d / "r4", 84, torch.nn.Linear(2, 2), {"optimizer": {"state": {}}, "global_step": 84}, keep=1)
    return d / "r4" / "checkpoints" / "state_00000084.pt"


def _export(weights: Callable[[Path], Path], out: str = "model.onnx", extra: tuple[str, ...] = ()
            ) -> Callable[[Path], Outcome]:
    """``microact export WEIGHTS OUT`` with the tiny recipe (``weights`` builds the weights file in the folder)."""

    def run(d: Path) -> Outcome:
        d.mkdir(parents=True, exist_ok=True)
        outcome = cli(["export", weights(d), d / out, *TINY, *extra])
        if (d / out).exists():
            return Outcome("CRASH", f"{out} was written: {outcome.message}")
        return outcome
    return run


def _load_renamed_pth(d: Path) -> Outcome:
    """Library: a ``torch.save`` file named ``.safetensors`` loads through the safe torch loader, with a note."""
    import torch

    from microact.config import load_config
    from microact.engine.evaluate import load_trained_weights
    from microact.models.presets import create_model_from_config

    d.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _state_dict()}, d / "renamed.safetensors")
    model = create_model_from_config(load_config(None, TINY), pretrained=False)
    err = io.StringIO()

    def load():
        with contextlib.redirect_stderr(err):
            load_trained_weights(model, d / "renamed.safetensors")
        return err.getvalue().strip()
    return library(load)


def _ckpt_garbage(d: Path) -> Path:
    (d / "notes.safetensors").write_text("these are my notes, not weights\n")
    return d / "notes.safetensors"


def _no_marker(run: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
    """Wrap a case whose input is a code-running pickle: the marker file must not appear."""

    def wrapped(d: Path) -> Outcome:
        outcome = run(d)
        if (d / "PWNED").exists():
            return Outcome("CRASH", "the pickle's code ran (marker file written)")
        return outcome
    return wrapped


def _convert(make: Callable[[Path], Path]) -> Callable[[Path], Outcome]:
    def run(d: Path) -> Outcome:
        d.mkdir(parents=True, exist_ok=True)
        return cli(["convert", make(d), d / "out.safetensors"])
    return run


def _load_pretrained_wider(d: Path) -> Outcome:
    """Library: a wider ViT's backbone weights into a small model's backbone."""
    from microact.models.checkpoints import load_pretrained
    from microact.models.videomae import create_backbone
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    big = create_backbone("videomae_tiny", num_frames=4, img_size=32)
    save_file({k: v.contiguous() for k, v in big.state_dict().items()}, str(d / "tiny_vit.safetensors"))
    small = create_backbone("videomae_test", num_frames=4, img_size=32)
    return library(lambda: load_pretrained(small, d / "tiny_vit.safetensors"))


def _load_pretrained_hf(d: Path, **config) -> Outcome:
    """Library: a Hugging Face save_pretrained folder whose config.json asks for another MLP ratio, head count or
    activation than the (built-in size) model has."""
    from transformers import VideoMAEConfig, VideoMAEModel

    from microact.models.checkpoints import load_pretrained
    from microact.models.videomae import create_backbone

    d.mkdir(parents=True, exist_ok=True)
    sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, image_size=32,
                 num_frames=4)
    VideoMAEModel(VideoMAEConfig(**{**sizes, **config})).save_pretrained(d / "hf")
    return library(lambda: load_pretrained(create_backbone("videomae_test", num_frames=4, img_size=32), d / "hf"))


# --------------------------------------------------------------------------------------------
# Result dumps
# --------------------------------------------------------------------------------------------


def _dump(path: Path, names: list[str], k: int = 52, seed: int = 0, taxonomy=None) -> Path:
    from microact.results import Results, save_results

    rng = np.random.default_rng(seed)
    scores = rng.random((len(names), k)).astype(np.float32)
    labels = np.arange(len(names)) % k
    save_results(Results(names, scores / scores.sum(1, keepdims=True), labels, num_classes=k, taxonomy=taxonomy),
                 path)
    return path.with_suffix(".npz")


def _own_classes(k: int, prefix: str = "c"):
    from microact.taxonomy import Taxonomy

    return Taxonomy(tuple(f"{prefix}{i}" for i in range(k)))


def _bare_pickle(d: Path) -> Path:
    """A 6-class result pickle without the .npz that records its classes."""
    npz = _dump(d / "six.pkl", ["v1.mp4", "v2.mp4", "v3.mp4"], k=6, taxonomy=_own_classes(6))
    npz.unlink()
    return d / "six.pkl"


def _ensemble(second: Callable[[Path], Path], extra: tuple[str, ...] = ()) -> Callable[[Path], Outcome]:
    def run(d: Path) -> Outcome:
        d.mkdir(parents=True, exist_ok=True)
        a = _dump(d / "model_a.pkl", ["v1.mp4", "v2.mp4", "v3.mp4"])
        return cli(["ensemble", a, second(d), *extra, "--out", d / "out"])
    return run


def _compare_unlabelled(d: Path) -> Outcome:
    from microact.results import Results, save_results

    d.mkdir(parents=True, exist_ok=True)
    for name in ("a", "b"):
        scores = np.random.default_rng(len(name)).random((2, 52)).astype(np.float32)
        save_results(Results(["v1.mp4", "v2.mp4"], scores / scores.sum(1, keepdims=True)), d / f"{name}.pkl")
    return cli(["compare", d / "a.npz", d / "b.npz"])


def _compare_by_subject_without_names(d: Path) -> Outcome:
    """mmaction2 dumps (a list of {pred_score, gt_label}: no video names) compared by subject without --list."""
    import torch

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        scores = rng.random((3, 52)).astype(np.float32)
        with open(d / f"mm_{name}.pkl", "wb") as f:
            pickle.dump([{"pred_score": torch.from_numpy(s / s.sum()), "gt_label": torch.tensor(i)}
                         for i, s in enumerate(scores)], f)
    return cli(["compare", d / "mm_a.pkl", d / "mm_b.pkl", "--resample-by", "subject", "--resamples", "10"])


def _evil_dump(d: Path) -> Path:
    with open(d / "evil.pkl", "wb") as f:
        pickle.dump([{"pred_score": _RunsCode(d / "PWNED")}], f, protocol=2)
    return d / "evil.pkl"


def _submit(make: Callable[[Path], Path], extra: Callable[[Path], list] = lambda d: []) -> Callable[[Path], Outcome]:
    def run(d: Path) -> Outcome:
        d.mkdir(parents=True, exist_ok=True)
        return cli(["submit", make(d), "--out", d / "out", *extra(d)])
    return run


def _metrics_json(d: Path) -> Path:
    (d / "metrics.json").write_text('{"f1_mean": 0.5}\n')
    return d / "metrics.json"


def _truncated_dump(d: Path) -> Path:
    pkl = _dump(d / "dump.pkl", ["v1.mp4", "v2.mp4"]).with_suffix(".pkl")
    data = pkl.read_bytes()
    pkl.write_bytes(data[: len(data) // 2])
    return pkl


def _npz_missing_array(d: Path) -> Path:
    np.savez(d / "other.npz", x=np.zeros(3))
    return d / "other.npz"


def _list_for_dump(d: Path) -> list:
    (d / "test.txt").write_text("v2.mp4 0\nv1.mp4 0\n")
    return ["--list", d / "test.txt"]


# --------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------


def _cases() -> list[Case]:
    cases = []
    for kind, (what, check_kind, ds_kind, keys) in VIDEO_KINDS.items():
        cases.append(Case(f"video-{kind}-check", "video", what, "microact data check", _video_check(kind),
                          check_kind, VIDEO_CHECK_KEYWORDS.get(kind, keys)))
    for kind, (what, check_kind, ds_kind, keys) in VIDEO_KINDS.items():
        cases.append(Case(f"video-{kind}-dataset", "video", what, "training loader (VideoDataset + collate)",
                          _video_dataset(kind), ds_kind,
                          VIDEO_DATASET_KEYWORDS.get(kind, ("skipping video", "list.txt:1") + keys)))
    cases.append(Case("video-missing-predict", "video", "video path that does not exist", "microact predict",
                      lambda d: cli(["predict", d / "nowhere.mp4"]), "exit 2", ("nowhere.mp4", "not found")))

    cases.append(Case("video-text-predict", "video", "text file named .mp4", "microact predict --config",
                      _predict(lambda d: _video("text", d / "bad.mp4")), "exit 2",
                      ("bad.mp4", "not a readable video")))
    cases.append(Case("video-audio-only-predict", "video", "AAC audio-only .mp4", "microact predict --config",
                      _predict(lambda d: _video("audio-only", d / "bad.mp4")), "exit 2",
                      ("bad.mp4", "no video stream")))
    cases.append(Case("predict-weights-as-video", "video", "the weights given as a video (no --checkpoint)",
                      "microact predict WEIGHTS", _predict(lambda d: (d.mkdir(parents=True), _good_checkpoint(d))[1]),
                      "exit 2", ("model.safetensors", "not a video", "--checkpoint WEIGHTS")))
    cases.append(Case("predict-top-k", "video", "--top-k 0", "microact predict --top-k 0",
                      _predict(lambda d: _write(d / "ok.mp4"), ("--top-k", "0")), "exit 2", ("--top-k", ">= 1")))
    cases.append(Case("predict-two-stream-window", "video", "a one-frame --window for a two-stream model",
                      "microact predict --window 0.01 (two-stream)",
                      _predict_two_stream(lambda d: _write(d / "ok.mp4"), ("--window", "0.01")), "exit 2",
                      ("ok.mp4", "--window 0.01 s is 1 frame(s)", "at least 2 frames")))

    lf = "train_list_videos.txt"
    L = [  # noqa: N806 - table
        ("list-missing-label", "a line without a label", b"a.mp4 3\nb.mp4\n", {}, (f"{lf}:2", "1 column")),
        ("list-extra-columns", "a line with three columns", b"a.mp4 3 extra\n", {}, (f"{lf}:1", "3 column")),
        ("list-label-too-big", "label 52 with 52 classes", b"a.mp4 52\n", {}, (f"{lf}:1", "outside [0, 52)")),
        ("list-label-negative", "label -1", b"a.mp4 -1\n", {}, (f"{lf}:1", "outside [0, 52)")),
        ("list-label-not-int", "label 'seven'", b"a.mp4 seven\n", {}, (f"{lf}:1", "not an integer")),
        ("list-label-float", "label '3.0'", b"a.mp4 3.0\n", {}, (f"{lf}:1", "not an integer")),
        ("list-duplicate", "the same video twice", b"a.mp4 3\nb.mp4 4\na.mp4 3\n", {},
         (f"{lf}:3", "duplicate", f"{lf}:1")),
        ("list-duplicate-across", "a video in train and val lists", b"a.mp4 3\n",
         {"val_list_videos.txt": b"a.mp4 3\n"}, ("val_list_videos.txt:1", "duplicate", f"{lf}:1")),
        ("list-not-utf8", "Latin-1 bytes in a file name", b"a.mp4 3\ncaf\xe9.mp4 4\n", {},
         (f"{lf}:2", "not valid UTF-8", "0xe9")),
        ("list-missing-video", "a listed video that does not exist", b"a.mp4 3\nghost.mp4 4\n", {},
         (f"{lf}:2", "video not found", "ghost.mp4")),
        ("list-absolute-path", "an absolute path", b"/etc/passwd 3\n", {},
         (f"{lf}:1", "absolute path", "data.allow_absolute_paths")),
        ("list-traversal", "a ../ path leaving the dataset", b"../../etc/passwd 3\n", {},
         (f"{lf}:1", "leaves the dataset folder", "data.allow_absolute_paths")),
        ("list-binary", "a binary file as list", bytes(range(256)) * 4, {}, (f"{lf}:1",)),
    ]
    for cid, what, data, extra, keys in L:
        cases.append(Case(cid, "list file", what, "microact data check --no-decode", _list_check(data, extra=extra),
                          "exit 1", keys))
    cases.append(Case("list-empty", "list file", "an empty list file", "microact data check",
                      _list_check(b""), "exit 1", (lf, "names no videos")))
    cases.append(Case("list-empty-test", "list file", "an empty test list", "microact test",
                      lambda d: (_recipe(d), (d / "test_list_videos.txt").write_text(""),
                                 cli(["test", d / "recipe.yaml", _good_checkpoint(d), *TINY, f"data.root={d}",
                                      "--out", d / "out"]))[2], "exit 2", ("test_list_videos.txt", "no videos")))
    cases.append(Case("list-none", "list file", "a folder without list files", "microact data check",
                      lambda d: (d.mkdir(parents=True), cli(["data", "check", d]))[1], "exit 1",
                      ("no list files", "_list_videos.txt")))
    cases.append(Case("list-named-missing", "list file", "--lists names a file that does not exist",
                      "microact data check --lists", _list_check(b"a.mp4 3\n", argv=("--lists", "nope.txt")),
                      "exit 1", ("nope.txt", "list file not found")))
    cases.append(Case("list-test-cli", "list file", "test list with label 77", "microact test --list",
                      _list_test_cli, "exit 2", ("test.txt:2", "outside [0, 52)")))
    cases.append(Case("labels-duplicate-id", "list file", "label_name.txt with an id twice", "load_label_names()",
                      _label_file(b"0\tsit\n1\tstand\n1\twave\n"), "raises AnnotationError",
                      ("label_name.txt:3", "appears twice")))
    cases.append(Case("labels-gap", "list file", "label_name.txt missing id 1", "load_label_names()",
                      _label_file(b"0\tsit\n2\twave\n"), "raises AnnotationError", ("label_name.txt", "ids missing")))

    three = b"0\tnod\thead\n1\twave\thand\n2\tpoint\thand\n"
    flat = b"0\tnod\n1\twave\n2\tpoint\n"
    cases += [
        Case("classes-spaces", "classes file", "columns separated by spaces (names have spaces: TAB only)",
             "microact train data.classes=...", _train_with_classes(b"0 nod\n1 wave\n2 point\n"), "exit 2",
             ("classes.txt:1", "TAB-separated", "3 problem(s)")),
        Case("classes-mixed-groups", "classes file", "a group on some lines only", "microact train data.classes=...",
             _train_with_classes(b"0\tnod\thead\n1\twave\n2\tpoint\thand\n"), "exit 2",
             ("classes.txt:2", "names no group", "either every line names a group")),
        Case("classes-duplicate-name", "classes file", "one name for two ids", "load_classes()",
             _classes_library(b"0\tnod\n1\tnod\n"), "raises AnnotationError",
             ("classes.txt:2", "name 'nod' appears twice", "line 1")),
        Case("classes-gap", "classes file", "ids 0 and 2 without 1", "load_classes()",
             _classes_library(b"0\tnod\n2\twave\n"), "raises AnnotationError", ("classes.txt", "ids missing: 1")),
        Case("classes-missing", "classes file", "data.classes names a file that is not there",
             "microact train data.classes=...", _train_with_classes(None), "exit 2",
             ("data.classes=classes.txt", "not found")),
        Case("classes-count-mismatch", "classes file", "data/model.num_classes=52 with a 3-class file",
             "microact train data.classes=...", _train_with_classes(three, "data.num_classes=52",
                                                                     "model.num_classes=52"), "exit 2",
             ("data.num_classes=52", "model.num_classes=52", "classes.txt", "lists 3 classes")),
        Case("classes-no-file-other-count", "classes file", "num_classes=3 without a classes file",
             "microact train", _train_with_classes(None, "data.classes=null", "data.num_classes=3",
                                                   "model.num_classes=3"), "exit 2",
             ("data.num_classes=3", "data.classes is not set", "classes file")),
        Case("classes-flat-coarse-heads", "classes file", "a flat classes file with a preset that has coarse heads",
             "microact train data.classes=...", _train_with_classes(flat), "exit 2",
             ("videomae_test_frame_coarse_tsn", "no coarse level", "model.overrides={use_coarse: false}")),
        Case("classes-flat-coarse-rule", "classes file", "predict.coarse_rule=sum_probs with a flat classes file",
             "microact train data.classes=...", _train_with_classes(flat, "predict.coarse_rule=sum_probs"), "exit 2",
             ("predict.coarse_rule=sum_probs", "names none", "map_top1")),
        Case("classes-edited-before-resume", "classes file", "a class renamed in the classes file of a run, then "
             "--resume", "microact train --resume", _resume_with_edited_classes, "exit 2",
             ("model_00000004.safetensors", "data.classes=classes.txt", "class 1 is 'wave' vs 'shake head'",
              "restore", "start a new run")),
        Case("classes-label-range", "classes file", "a label beyond the classes file's 3 classes",
             "microact data check --classes", _classes_check(three, "0 2 3"), "exit 1",
             ("train_list_videos.txt:3", "outside [0, 3)")),
    ]

    C = [  # noqa: N806 - table
        ("config-unknown-key", "unknown key (typo)", "optim:\n  lrr: 0.1\n", (),
         ("optim.lrr", "unknown key", "did you mean 'lr'")),
        ("config-unknown-section", "unknown section", "optimizer:\n  lr: 0.1\n", (),
         ("optimizer", "unknown key", "valid keys")),
        ("config-wrong-type-int", "a word where an integer goes", "train:\n  epochs: many\n", (),
         ("train.epochs", "expected an integer")),
        ("config-wrong-type-bool", "a number where true/false goes", "data:\n  check_files: 2\n", (),
         ("data.check_files", "true or false")),
        ("config-wrong-type-section", "a value where a section goes", "optim: 0.1\n", (),
         ("optim", "expected a mapping")),
        ("config-bad-choice", "a value outside the choices", "eval:\n  view: fivecrop\n", (),
         ("eval.view", "fivecrop", "portrait373")),
        ("config-negative-lr", "negative learning rate", "optim:\n  lr: -0.001\n", (), ("optim.lr", "> 0")),
        ("config-zero-frames", "0 frames per clip", "", ("data.clip_len=0",), ("data.clip_len", "> 0")),
        ("config-crop-wider", "crop wider than the resized frame", "", ("data.img_size=288",),
         ("data.img_size", "eval.resize_short", "288")),
        ("config-probability", "dropout 1.5", "model:\n  head_dropout: 1.5\n", (),
         ("model.head_dropout", "[0, 1]")),
        ("config-batch-multiple", "global batch not a multiple of micro batch", "",
         ("train.global_batch=10", "train.micro_batch=4"), ("train.global_batch", "train.micro_batch")),
        ("config-class-mismatch", "model and data class counts differ", "", ("model.num_classes=10",),
         ("model.num_classes", "data.num_classes")),
        ("config-bad-yaml", "broken YAML", "train:\n  epochs: [1, 2\n", (), ("recipe.yaml", "not valid YAML")),
        ("config-top-list", "a YAML list, not a mapping", "- 1\n- 2\n", (), ("recipe.yaml", "mapping")),
        ("config-override-syntax", "override without '='", "", ("train.epochs",), ("train.epochs", "key=value")),
        ("config-override-unknown", "override of an unknown key", "", ("train.epoch=3",),
         ("override 'train.epoch=3'", "unknown key", "did you mean 'epochs'")),
        ("config-override-bad-value", "override with a word where an integer goes", "", ("train.epochs=one",),
         ("override 'train.epochs=one'", "expected an integer")),
        ("config-override-rule", "override breaking a rule between keys", "train:\n  global_batch: 10\n",
         ("train.micro_batch=4",), ("override 'train.micro_batch=4'", "train.global_batch (10)", "multiple")),
        ("config-override-not-a-key", "override after '--' that is not a dotted key", "", ("--", "-q=1"),
         ("override '-q=1'", "not a dotted key")),
        ("config-not-utf8", "a recipe saved in Latin-1", b"description: caf\xe9\n", (),
         ("recipe.yaml", "UTF-8")),
        ("config-lr-inf", "learning rate .inf", "optim:\n  lr: .inf\n", (), ("optim.lr", "finite")),
        ("config-cosine-period-zero", "cosine period 0 (would divide by zero at the first step)",
         "sched:\n  cosine_t_max: 0\n", (), ("sched.cosine_t_max", "> 0")),
        ("config-adam-beta", "an AdamW beta of 1.5", "optim:\n  betas: [0.9, 1.5]\n", (), ("optim.betas", "[0, 1)")),
        ("config-pair-length", "a range with one value", "aug:\n  rrc_area: [0.5]\n", (),
         ("aug.rrc_area", "expected 2 values")),
        ("config-pair-order", "range given as [max, min]", "aug:\n  rrc_area: [1.0, 0.5]\n", (),
         ("aug.rrc_area", "min <= max")),
    ]
    for cid, what, text, overrides, keys in C:
        cases.append(Case(cid, "config", what, "microact test RECIPE ...", _config(text, overrides), "exit 2", keys))
    cases.append(Case("list-test-missing", "list file", "recipe's test list does not exist", "microact test",
                      lambda d: cli(["test", _recipe(d), _good_checkpoint(d), *TINY, f"data.root={d}",
                                     "--out", d / "out"]), "exit 2", ("test_list_videos.txt", "not found")))
    cases.append(Case("data-root-missing-test", "list file", "data.root that does not exist", "microact test",
                      lambda d: cli(["test", _recipe(d), _good_checkpoint(d), "--out", d / "out",
                                     f"data.root={d / 'nope'}"]), "exit 2", ("data.root=<dir>/nope", "no such folder")))
    cases.append(Case("data-root-missing-train", "list file", "data.root that does not exist",
                      "microact train (override after --out)",
                      _creates_nothing(lambda d: cli(["train", _recipe(d), "--out", d / "run",
                                                      f"data.root={d / 'nope'}"])), "exit 2",
                      ("data.root=<dir>/nope", "no such folder")))
    cases.append(Case("list-train-missing", "list file", "data.root without the recipe's val list",
                      "microact train", _creates_nothing(_train_without_val_list), "exit 2",
                      ("data.train_lists", "val_list_videos.txt not found", "train_list_videos.txt")))
    cases.append(Case("cli-stray-argument", "command line", "a word that is neither an option nor key=value",
                      "microact train RECIPE --out DIR stray", lambda d: cli(["train", _recipe(d), "--out", d / "run",
                                                                               "stray"]), "exit 2",
                      ("usage: microact train", "unrecognized arguments: stray", "key=value")))
    cases.append(Case("list-is-folder", "list file", "--lists names a folder", "microact data check --lists",
                      _list_check(b"a.mp4 3\n", extra={"sub/x": b""}, argv=("--lists", "sub")), "exit 1",
                      ("sub", "cannot read list file")))
    cases.append(Case("config-missing-file", "config", "recipe file that does not exist", "microact test RECIPE ...",
                      lambda d: cli(["test", d / "nope.yaml", d / "x.safetensors"]), "exit 2",
                      ("nope.yaml", "not found")))
    cases.append(Case("config-is-weights", "config", "the weights given where the recipe goes (arguments swapped)",
                      "microact test CKPT RECIPE",
                      lambda d: cli(["test", (d.mkdir(parents=True), _good_checkpoint(d))[1], _recipe(d)]), "exit 2",
                      ("model.safetensors", "a safetensors weights file, not a YAML recipe",
                       "microact test RECIPE WEIGHTS")))
    cases.append(Case("config-is-run-folder", "config", "a training run folder given as the recipe",
                      "microact test RUN CKPT", lambda d: cli(["test", _ckpt_run_folder_with_recipe(d),
                                                               d / "x.safetensors"]), "exit 2",
                      ("r4", "a folder, not a recipe", "r4/config.yaml")))
    cases.append(Case("config-is-override", "config", "no recipe: an override first", "microact train KEY=VALUE",
                      _creates_nothing(lambda d: cli(["train", "data.root=/data/x", "--out", d / "run"])), "exit 2",
                      ("data.root=/data/x", "key=value override where the recipe goes", "microact train RECIPE")))
    cases.append(Case("config-unknown-preset", "config", "unknown model preset", "microact test RECIPE ...",
                      lambda d: cli(["test", _recipe(d), _good_checkpoint(d), *TINY, "model.preset=videomae_xl",
                                     f"data.root={_test_list(d).parent}"]),
                      "exit 2", ("videomae_xl", "valid presets")))

    K = [  # noqa: N806 - table
        ("ckpt-wider-vit", "weights of a wider ViT (dim 128) for a dim-64 model", _ckpt_wider,
         ("wider_vit.safetensors", "does not fit", "shapes")),
        ("ckpt-resnet", "a ResNet-50 state dict (.pth)", _ckpt_resnet, ("resnet50.pth", "does not fit", "missing")),
        ("ckpt-class-count", "trained for 10 classes, recipe says 52", _ckpt_classes,
         ("ten_classes.safetensors", "does not fit", "[10")),
        ("ckpt-truncated-pth", "a .pth cut in half", _ckpt_truncated_pth, ("cut.pth", "truncated")),
        ("ckpt-truncated-safetensors", "a .safetensors cut in half", _ckpt_truncated_safetensors,
         ("cut.safetensors", "truncated")),
        ("ckpt-code-pickle", "a .pth whose pickle calls getattr (builtin)", _ckpt_evil,
         ("evil.pth", "refused to load", "nothing in it was executed")),
        ("ckpt-code-pickle-module", "a .pth whose pickle calls os.mkdir", _ckpt_evil_module,
         ("evil_mkdir.pth", "refused to load", "nothing in it was executed")),
        ("ckpt-text", "a text file named .safetensors", _ckpt_garbage, ("notes.safetensors",)),
        ("ckpt-recipe", "the recipe given where the weights go", lambda d: _recipe(d / "other"),
         ("other/recipe.yaml", "a YAML file, not a weights file", "microact test RECIPE WEIGHTS")),
        ("ckpt-video", "a video given where the weights go", lambda d: _video("1-frame", d / "clip.mp4"),
         ("clip.mp4", "a video, not a weights file")),
        ("ckpt-missing", "a checkpoint path that does not exist", lambda d: d / "nope.safetensors",
         ("nope.safetensors", "not found")),
        ("ckpt-run-folder", "a training run folder instead of its weights", _ckpt_run_folder,
         ("r4", "run folder", "r4/model_final.safetensors", "r4/model_best.safetensors")),
        ("ckpt-training-state-file", "a run's checkpoints/state_<step>.pt", _ckpt_training_state_file,
         ("state_00000084.pt", "training-state file", "checkpoints/model_00000084.safetensors")),
    ]
    for cid, what, make, keys in K:
        cases.append(Case(cid, "checkpoint", what, "microact test RECIPE CKPT", _no_marker(_checkpoint(make)),
                          "exit 2", keys))
    cases.append(Case("ckpt-training-state", "checkpoint", "a training checkpoint {'model': weights, 'epoch': 3}",
                      "load_trained_weights()", _load_training_state, "accepted", ("model weights loaded",)))
    cases.append(Case("ckpt-pth-renamed", "checkpoint", "a torch.save file renamed to .safetensors",
                      "load_trained_weights()", _load_renamed_pth, "accepted",
                      ("renamed.safetensors", "PyTorch checkpoint", "safe torch loader")))
    cases.append(Case("convert-resnet", "checkpoint", "a ResNet-50 state dict", "microact convert",
                      _convert(_ckpt_resnet), "exit 2", ("resnet50.pth",)))
    cases.append(Case("convert-twostream", "checkpoint", "a two-stream recognizer's model_final.safetensors",
                      "microact convert", _convert(_ckpt_twostream), "exit 2",
                      ("model_final.safetensors", "backbone.rgb.*, backbone.flow.*", "two-stream recipe")))
    cases.append(Case("convert-code-pickle", "checkpoint", "a .pth whose pickle runs code", "microact convert",
                      _no_marker(_convert(_ckpt_evil)), "exit 2", ("evil.pth", "refused to load")))
    cases.append(Case("pretrained-wider-vit", "checkpoint", "wider ViT backbone into a smaller one",
                      "load_pretrained()", _load_pretrained_wider, "raises CheckpointError",
                      ("tiny_vit.safetensors", "shape")))
    cases.append(Case("pretrained-hf-mlp-ratio", "checkpoint", "HF folder, config.json intermediate_size 3 x hidden, "
                      "into a ratio-4 backbone", "load_pretrained()",
                      functools.partial(_load_pretrained_hf, intermediate_size=192), "raises CheckpointError",
                      ("config.json", "intermediate_size is 192", "mlp_ratio=3")))
    cases.append(Case("pretrained-hf-heads", "checkpoint", "HF folder, config.json num_attention_heads 4, into a "
                      "2-head backbone", "load_pretrained()",
                      functools.partial(_load_pretrained_hf, num_attention_heads=4), "raises CheckpointError",
                      ("config.json", "num_attention_heads is 4", "num_heads=4")))
    cases.append(Case("pretrained-hf-activation", "checkpoint", "HF folder, config.json hidden_act gelu_new",
                      "load_pretrained()", functools.partial(_load_pretrained_hf, hidden_act="gelu_new"),
                      "raises CheckpointError", ("config.json", "hidden_act", "gelu_new")))

    D = [  # noqa: N806 - table
        ("dump-order", "dumps with different video orders",
         lambda d: _dump(d / "model_b.pkl", ["v1.mp4", "v3.mp4", "v2.mp4"]), (),
         ("order differs at index 1", "v2.mp4", "v3.mp4")),
        ("dump-other-list", "dumps of two lists (e.g. val and test)",
         lambda d: _dump(d / "model_b.pkl", ["v1.mp4", "v2.mp4", "w9.mp4"]), (),
         ("model_b.npz", "dumps of different lists", "1 of the 3 videos", "w9.mp4", "one split")),
        ("dump-count", "dumps of different lengths", lambda d: _dump(d / "model_b.pkl", ["v1.mp4", "v2.mp4"]), (),
         ("model_b", "2 videos", "3")),
        ("dump-classes", "dumps with 52 and 7 classes", lambda d: _dump(d / "model_b.pkl", ["v1.mp4", "v2.mp4",
                                                                                             "v3.mp4"], k=7), (),
         ("7 classes", "52")),
        ("dump-weights", "three weights for two dumps",
         lambda d: _dump(d / "model_b.pkl", ["v1.mp4", "v2.mp4", "v3.mp4"], seed=1), ("--weights", "1", "1", "1"),
         ("--weights", "3 values for 2 dumps")),
        ("dump-evil-in-ensemble", "a pickle that runs code",
         lambda d: _evil_dump(d), (), ("evil.pkl", "refused to load")),
    ]
    for cid, what, make, extra, keys in D:
        cases.append(Case(cid, "result dump", what, "microact ensemble", _no_marker(_ensemble(make, extra)),
                          "exit 2", keys))
    cases.append(Case("dump-other-classes", "result dump", "dumps of two models trained on other classes",
                      "microact ensemble",
                      _ensemble(lambda d: _dump(d / "model_b.pkl", ["v1.mp4", "v2.mp4", "v3.mp4"],
                                                taxonomy=_own_classes(52))), "exit 2",
                      ("model_b.npz", "model_a.npz", "different classes", "class 0 is 'c0' vs 'shaking body'")))
    cases.append(Case("dump-no-classes", "result dump", "a 6-class pickle without its .npz (no recorded classes)",
                      "microact ensemble", lambda d: (d.mkdir(parents=True), cli(["ensemble", _bare_pickle(d), "--out",
                                                                                  d / "out"]))[1], "exit 2",
                      ("six.pkl", "6 classes and no recorded taxonomy", "--classes FILE")))
    cases.append(Case("dump-compare-one", "result dump", "one dump given to compare", "microact compare",
                      lambda d: (d.mkdir(parents=True), cli(["compare", _dump(d / "a.pkl", ["v1.mp4", "v2.mp4"])]))[1],
                      "exit 2", ("at least two result dumps", "baseline")))
    cases.append(Case("dump-compare-unlabelled", "result dump", "test-list dumps (no labels) given to compare",
                      "microact compare", _compare_unlabelled, "exit 2",
                      ("a.npz", "no labels", "labelled list")))
    cases.append(Case("dump-compare-subject-no-names", "result dump",
                      "mmaction2 dumps (no video names) compared by subject", "microact compare",
                      _compare_by_subject_without_names, "exit 2", ("by subject", "names", "--list")))
    cases.append(Case("dump-submit-other-52", "result dump", "a dump of 52 classes that are not MA-52's",
                      "microact submit", _submit(lambda d: _dump(d / "dump.pkl", ["v1.mp4", "v2.mp4"],
                                                                 taxonomy=_own_classes(52))), "exit 2",
                      ("dump.npz", "submissions are MA-52's", "other classes")))
    cases.append(Case("dump-evil-submit", "result dump", "a pickle that runs code", "microact submit",
                      _no_marker(_submit(_evil_dump)), "exit 2", ("evil.pkl", "refused to load", "nothing")))
    cases.append(Case("dump-submit-classes", "result dump", "a 7-class dump given to submit", "microact submit",
                      _submit(lambda d: _dump(d / "dump.pkl", ["v1.mp4", "v2.mp4"], k=7)), "exit 2",
                      ("dump.npz", "52", "7")))
    cases.append(Case("dump-is-folder", "result dump", "the folder of a dump instead of the dump",
                      "microact submit", _submit(lambda d: _dump(d / "test" / "results.pkl", ["v1.mp4"]).parent),
                      "exit 2", ("test: a folder, not a result dump", "test/results.pkl", "test/results.npz")))
    cases.append(Case("dump-is-report", "result dump", "the report's metrics.json instead of the dump",
                      "microact submit", _submit(_metrics_json), "exit 2",
                      ("metrics.json", "a JSON file, not a result dump", "--dump NAME.pkl")))
    cases.append(Case("dump-is-weights", "result dump", "a weights file instead of a dump", "microact submit",
                      _submit(_good_checkpoint), "exit 2",
                      ("model.safetensors", "not a result dump", "microact test RECIPE WEIGHTS --dump NAME.pkl")))
    cases.append(Case("dump-truncated", "result dump", "a result pickle cut in half", "microact submit",
                      _submit(_truncated_dump), "exit 2", ("dump.pkl",)))
    cases.append(Case("dump-npz-foreign", "result dump", ".npz without microact's arrays", "microact submit",
                      _submit(_npz_missing_array), "exit 2", ("other.npz", "missing array")))
    cases.append(Case("dump-list-order", "result dump", "--list in another order than the dump", "microact submit",
                      _submit(lambda d: _dump(d / "dump.pkl", ["v1.mp4", "v2.mp4"]), _list_for_dump), "exit 2",
                      ("test.txt", "order differs", "index 0")))

    E = [  # noqa: N806 - table
        ("export-weights-missing", "weights path that does not exist", _export(lambda d: d / "nope.safetensors"),
         ("nope.safetensors", "not found")),
        ("export-run-folder", "a training run folder instead of its weights", _export(_ckpt_run_folder),
         ("r4", "run folder", "r4/model_final.safetensors")),
        ("export-out-not-onnx", "OUT not ending in .onnx", _export(_good_checkpoint, out="model.pt"),
         ("model.pt", "must end in .onnx")),
        ("export-sdpa-opset-13", "--attention sdpa --opset 13",
         _export(_good_checkpoint, extra=("--attention", "sdpa", "--opset", "13")),
         ("--opset 13", "--attention sdpa", "14", "--attention math")),
        ("export-dynamo-opset-17", "--exporter dynamo --opset 17",
         _export(_good_checkpoint, extra=("--exporter", "dynamo", "--opset", "17")),
         ("--opset 17", "--exporter dynamo", "18", "--exporter torchscript")),
        ("export-batch-zero", "--batch 0", _export(_good_checkpoint, extra=("--batch", "0")),
         ("--batch", "at least 1")),
    ]
    for cid, what, run, keys in E:
        cases.append(Case(cid, "export", what, "microact export WEIGHTS OUT", run, "exit 2", keys))
    return cases


CASES = _cases()


def run_case(case: Case, root: Path) -> Outcome:
    """Run one case in ``root/<id>`` and return its outcome with ``root`` written as ``<dir>``."""
    folder = root / case.id
    outcome = case.run(folder)
    message = outcome.message
    for prefix in {str(folder), str(folder.resolve())}:
        message = message.replace(prefix, "<dir>")
    return Outcome(outcome.kind, message)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("bad_inputs")
    return {case.id: run_case(case, root) for case in CASES}


def test_catalogue_size():
    assert len(CASES) >= 45
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, outcomes):
    outcome = outcomes[case.id]
    assert "Traceback" not in outcome.message, f"{case.id}: a traceback reached the user:\n{outcome.message}"
    assert outcome.kind == case.kind, f"{case.id}: expected {case.kind}, got {outcome.kind}: {outcome.message}"
    for word in case.keywords:
        assert word in outcome.message, f"{case.id}: {word!r} missing from the message: {outcome.message}"
    if case.kind == "exit 2":  # the error line (a predict run may print a warning before it)
        assert any(line.startswith("microact ") and ": error: " in line for line in outcome.message.splitlines()), \
            outcome.message


def render_table(results: dict[str, Outcome]) -> str:
    """The Markdown catalogue: one row per case with the outcome and the message the user sees."""
    lines = [
        "# Bad inputs and the messages users see",
        "",
        "Generated by `python tests/test_bad_inputs.py --write-docs` from the catalogue in",
        "`tests/test_bad_inputs.py` (checked by `test_docs_table_is_current`); `<dir>` is the folder holding the",
        "input. Exit 2 = one-line error (no traceback), exit 1 = `microact data check` found problems, skipped = the",
        "training loader drops the clip, warns and counts it in `batch[\"skipped\"]`, accepted = handled normally.",
        "",
        f"{len(CASES)} cases.",
        "",
        "Security rules (tested in `tests/test_security.py`): checkpoints load with `torch.load(weights_only=True)` or",
        "safetensors and result pickles with a restricted unpickler, so a file whose pickle would run code is refused",
        "and nothing in it runs; list-file paths that are absolute or leave the dataset folder with `..` are refused",
        "unless `data.allow_absolute_paths=true`; a symlink inside the dataset folder is followed (symlinks are put",
        "there by the disk's owner, list files come from elsewhere); subprocesses get argument lists, never shell",
        "strings.",
        "",
        "| # | case | category | bad input | user action | outcome | message the user sees |",
        "|---|------|----------|-----------|-------------|---------|------------------------|",
    ]
    for i, case in enumerate(CASES, start=1):
        o = results[case.id]
        msg = " ".join(line.strip() for line in o.message.splitlines() if line.strip())
        msg = msg.replace("|", "\\|")
        if len(msg) > 400:
            msg = msg[:400] + " ..."
        lines.append(f"| {i} | `{case.id}` | {case.category} | {case.what} | {case.action} | {o.kind} | `{msg}` |"
                     if msg else f"| {i} | `{case.id}` | {case.category} | {case.what} | {case.action} | {o.kind} | |")
    return "\n".join(lines) + "\n"


def _doc_rows(text: str) -> list[str]:
    """The table with each message cut to its first 60 characters: microact's own words come first, and the
    tails quoted from FFmpeg / torch / safetensors may change between their versions."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and line.count(" | ") >= 6:
            cells = line.split(" | ", 6)
            rows.append(" | ".join(cells[:6] + [cells[6][:60]]))
        else:
            rows.append(line)
    return rows


def test_docs_table_is_current(outcomes):
    assert DOC.is_file(), "docs/BAD_INPUTS.md is missing: run python tests/test_bad_inputs.py --write-docs"
    assert _doc_rows(DOC.read_text()) == _doc_rows(render_table(outcomes)), (
        "docs/BAD_INPUTS.md is stale: run python tests/test_bad_inputs.py --write-docs")


if __name__ == "__main__":  # pragma: no cover
    if "--write-docs" not in sys.argv:
        sys.exit("usage: python tests/test_bad_inputs.py --write-docs")
    with tempfile.TemporaryDirectory() as tmp:
        results = {case.id: run_case(case, Path(tmp)) for case in CASES}
    DOC.write_text(render_table(results))
    bad = [c.id for c in CASES if results[c.id].kind != c.kind or not all(w in results[c.id].message
                                                                           for w in c.keywords)]
    print(f"wrote {DOC} ({len(CASES)} cases; {len(bad)} not as expected: {', '.join(bad) or 'none'})")
