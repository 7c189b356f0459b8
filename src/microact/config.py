"""Typed run configuration: nested dataclasses loaded from YAML recipes, with dotted overrides.

A recipe in ``configs/`` is plain data. ``load_config(path, overrides)`` reads it, applies
``section.key=value`` overrides from the command line, validates every value (type, allowed
choices, ranges) and returns a :class:`Config`. Anything wrong is reported with the offending
key and what would have been accepted, e.g.::

    config error: optim.lrr: unknown key; valid keys in 'optim': lr, backbone_lr_mult, ...

Switch names follow SEED.md §12 (``frame_head.layout``, ``arcface.margin_mode``,
``backbone.load_final_norm``, ``train.global_batch`` ...). Defaults reproduce the MAC 2024 seed's
best model; every corrected behaviour is a named switch.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from microact.data.flow import FLOW_MEAN, FLOW_STD
from microact.errors import MicroactError


# The dotted key a message starts with: "train.epochs: ...", "aug.rrc_area[0]: ...", "data.flow_dir=x ...".
_LEADING_KEY = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)*)")


class ConfigError(MicroactError, ValueError):
    """A configuration value or key is invalid; the message names the key.

    ``keys`` are the dotted keys the error is about (several for a rule between keys, such as
    ``train.global_batch`` and ``train.micro_batch``); by default the key the message starts with.
    :func:`load_config` uses them to say whether the file or a command-line override set the culprit.
    """

    def __init__(self, message: str, keys: tuple[str, ...] | None = None):
        super().__init__(message)
        if keys is None:
            leading = _LEADING_KEY.match(message)
            keys = (leading.group(1),) if leading else ()
        self.keys = tuple(keys)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    root: str = "data/ma52"  # dataset folder holding the list files (and videos, unless video_dir says otherwise)
    video_dir: str = ""  # folder of the videos, relative to root ("" = root itself); cropped videos live here
    train_lists: list[str] = field(default_factory=lambda: ["train_list_videos.txt", "val_list_videos.txt"])
    val_list: Optional[str] = None  # validated during training when set (train-only recipes use val_list_videos.txt)
    test_list: str = "test_list_videos.txt"
    label_file: str = "label_name.txt"
    # classes file ("id<TAB>name[<TAB>group]" per line, relative to root like the lists); null = MA-52's 52 classes
    # and 7 body parts. When set, num_classes (here and in model) is taken from it (microact.taxonomy)
    classes: Optional[str] = None
    num_classes: int = 52
    clip_len: int = 16  # frames per clip (UniformSample)
    img_size: int = 224  # square network input after the transforms
    decoder: Literal["pyav", "decord"] = "pyav"  # SEED.md §12 row 21
    decode_timeout: float = 60.0  # seconds per clip before a video counts as bad
    num_workers: int = 4
    prefetch_factor: int = 2  # batches each loader worker prepares ahead (with num_workers > 0)
    decode_threads: Optional[int] = None  # FFmpeg threads per decode; null: the cores shared among workers, 0: FFmpeg's
    allow_absolute_paths: bool = False  # list files may not point outside root unless this is set
    check_files: bool = True  # verify every listed video exists before training starts
    cache_dir: Optional[str] = None  # decode-once cache of sampled frames (off by default)
    cache_format: Literal["npy", "jpeg"] = "npy"  # npy: lossless, frames x H x W x 3 bytes; jpeg: ~10-20x smaller, lossy
    cache_jpeg_quality: int = 95  # JPEG quality of cache_format=jpeg (1-100)
    # Two-stream presets: folder of the optical-flow videos (`microact flow`), relative to root like video_dir,
    # with the same relative names as the videos; null = no flow stream (one-stream presets)
    flow_dir: Optional[str] = None
    flow_mean: tuple[float, float, float] = FLOW_MEAN  # flow channels' statistics, 0-255 scale (SEED.md §2.9)
    flow_std: tuple[float, float, float] = FLOW_STD

    def validate(self):
        _positive(self, "num_classes", "clip_len", "img_size", "decode_timeout", "prefetch_factor")
        if not all(s > 0 for s in self.flow_std):
            raise ConfigError(f"data.flow_std: each must be > 0, got {list(self.flow_std)}")
        if self.classes is not None and not self.classes.strip():
            raise ConfigError("data.classes: empty; give the classes file (relative to data.root) or null for MA-52")
        if self.flow_dir is not None and not self.flow_dir.strip():
            raise ConfigError("data.flow_dir: empty; give the folder of the flow videos (relative to data.root) "
                              "or null for no flow stream")
        _non_negative(self, "num_workers")
        if self.decode_threads is not None:
            _non_negative(self, "decode_threads")
        if not self.train_lists:
            raise ConfigError("data.train_lists: needs at least one list file")
        if self.cache_format != "npy" and not self.cache_dir:
            raise ConfigError(f"data.cache_format={self.cache_format} needs data.cache_dir (the folder of the cache)",
                              keys=("data.cache_format", "data.cache_dir"))
        if not 1 <= self.cache_jpeg_quality <= 100:
            raise ConfigError(f"data.cache_jpeg_quality: must be in [1, 100], got {self.cache_jpeg_quality}")


@dataclass
class AugConfig:
    """Training augmentation of SEED.md §5.4-§5.6."""

    rrc_area: tuple[float, float] = (0.6, 1.0)  # RandomResizedCrop area fraction
    rrc_aspect: tuple[float, float] = (1 / 3, 1.0)  # RandomResizedCrop w/h range (log-uniform)
    color_jitter: bool = True
    cj_fixed_order: bool = True  # op order drawn once per run (seed) vs per clip (torchvision style)
    erase_prob: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.2)
    flip_prob: float = 0.5
    resize_backend: Literal["cv2", "torch"] = "cv2"
    # loader: ColorJitter and RandomErasing run in the loader workers (the seed); device: the workers draw the same
    # random numbers and the training step applies them to the batch on the GPU (less CPU work per clip)
    jitter_erasing_on: Literal["loader", "device"] = "loader"
    # Flow branch of two-stream presets (SEED.md §5.8): its own draws, RandomResizedCrop with these ranges, then
    # RandomErasing and flip with the settings above; no ColorJitter (colours encode the flow)
    flow_rrc_area: tuple[float, float] = (0.6, 1.0)
    flow_rrc_aspect: tuple[float, float] = (3 / 4, 4 / 3)  # mmaction2's default w/h range

    def validate(self):
        _range_pair(self, "rrc_area", 0.0, 1.0)
        _range_pair(self, "rrc_aspect", 0.0, math.inf)
        _range_pair(self, "flow_rrc_area", 0.0, 1.0)
        _range_pair(self, "flow_rrc_aspect", 0.0, math.inf)
        _range_pair(self, "erase_area", 0.0, 1.0)
        _probability(self, "erase_prob", "flip_prob")


@dataclass
class ModelConfig:
    preset: str = "videomae_b_k710_frame_coarse_tsn"  # a name from microact.models.list_models()
    pretrained: Optional[str] = None  # checkpoint to initialise from (any supported layout)
    num_classes: int = 52
    drop_path_rate: float = 0.0
    head_dropout: float = 0.5
    # true / false, or auto: on only when the estimated training memory would not fit the GPU (microact bench memory)
    grad_checkpointing: typing.Union[bool, Literal["auto"]] = False
    attn_impl: Literal["sdpa", "manual"] = "sdpa"
    # which fused CUDA attention kernel SDPA tries first (auto = PyTorch's order; the CPU has one and ignores this)
    sdpa_kernel: Literal["auto", "cudnn", "flash", "efficient"] = "auto"
    input_mode: Literal["rgb", "rgb_diff"] = "rgb"  # rgb_diff: consecutive-frame differences (TSN's RGB-diff), not the seed
    overrides: dict[str, Any] = field(default_factory=dict)  # extra create_model(...) keyword arguments

    def validate(self):
        _positive(self, "num_classes")
        _probability(self, "drop_path_rate", "head_dropout")


@dataclass
class BackboneConfig:
    # seed (false): the TSN/I3D rows drop the pre-trained final LayerNorm by a rename, the TimeSformer rows load it
    # into fc_norm (SEED.md §2.2); true loads it for every head
    load_final_norm: bool = False


@dataclass
class FrameHeadConfig:
    layout: Literal["channel_group", "temporal"] = "channel_group"  # SEED.md §2.5 / §12 row 1
    se_mode: Literal["replace", "gate"] = "replace"  # SEED.md §12 row 2


@dataclass
class ArcFaceConfig:
    margin_mode: Literal["all", "target"] = "all"  # SEED.md §12 row 3
    scale: float = 30.0
    margin: float = 0.5

    def validate(self):
        _positive(self, "scale")


@dataclass
class LossConfig:
    # "auto" picks the preset's loss (seed: CE+F1 on lead/frame/coarse heads, CE for TimeSformer rows).
    name: Literal["auto", "ce", "cef1", "cef1_double", "cef1_fine_coarse_double"] = "auto"
    f1_sync: Literal["local", "global"] = "local"  # SEED.md §12 row 7
    label_smoothing: float = 0.0
    class_weights: Optional[list[float]] = None

    def validate(self):
        _probability(self, "label_smoothing")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    backbone_lr_mult: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    norm_no_decay: bool = True  # seed: names containing "norm" get no weight decay (SEED.md §6.3)
    layer_decay: Optional[float] = None  # official VideoMAE layer-wise lr decay (e.g. 0.75); off in the seed
    grad_clip: Optional[float] = None
    fused: bool = True  # fused AdamW where the device supports it

    def validate(self):
        _positive(self, "lr", "eps")
        _non_negative(self, "weight_decay", "backbone_lr_mult")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"optim.layer_decay: must be in (0, 1], got {self.layer_decay}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip: must be > 0 or null, got {self.grad_clip}")
        if not all(0 <= b < 1 for b in self.betas):  # AdamW's own check would fire only after the model is built
            raise ConfigError(f"optim.betas: each must be in [0, 1), got {list(self.betas)}")


@dataclass
class SchedConfig:
    """lr = base * warmup(it) * cosine(epoch) (SEED.md §6.2)."""

    warmup_epochs: float = 2.0
    warmup_start_factor: float = 0.1
    cosine_t_max: Optional[float] = None  # epochs; default = epochs + 1 as in the seed (42 epochs, T_max 43)
    cosine_step: Literal["epoch", "iter"] = "epoch"  # SEED.md §12 row 14
    eta_min: float = 0.0

    def validate(self):
        _non_negative(self, "warmup_epochs")
        _probability(self, "warmup_start_factor", "eta_min")  # eta_min is a fraction of each group's lr
        if self.cosine_t_max is not None:  # cos(pi * epoch / T_max): 0 divides by zero in the first step
            _positive(self, "cosine_t_max")


@dataclass
class TrainConfig:
    epochs: int = 42
    global_batch: int = 24  # clips per optimiser step, all GPUs and accumulation steps together
    micro_batch: int = 24  # clips per forward pass on one process
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    seed: int = 0
    select: Literal["last", "best_val"] = "last"  # which weights become the run's answer (SEED.md §12 row 15)
    val_every: int = 1  # epochs between validations when data.val_list is set
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    checkpoint_every_steps: int = 0  # also checkpoint every N optimiser steps (0 = off)
    keep_checkpoints: int = 2
    log_every: int = 10  # steps between log lines
    ema_decay: Optional[float] = None
    nan_policy: Literal["stop", "skip"] = "stop"  # what a NaN/inf loss does
    compile: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"  # how torchrun processes share the model (fsdp: sharded, for L/H)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_steps: Optional[int] = None  # stop early (smoke tests, benchmarks)
    tensorboard: bool = True

    def validate(self):
        _positive(self, "epochs", "global_batch", "micro_batch", "val_every", "checkpoint_every", "log_every")
        _non_negative(self, "checkpoint_every_steps", "keep_checkpoints")
        if self.max_steps is not None:
            _positive(self, "max_steps")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay: must be in (0, 1) or null, got {self.ema_decay}")


@dataclass
class EvalConfig:
    view: Literal["portrait373", "center224", "three_crop"] = "portrait373"  # SEED.md §12 row 10
    val_clips: int = 2
    test_clips: int = 3
    average: Literal["prob", "logit"] = "prob"
    resize_short: int = 256
    crop_height: int = 373  # portrait373 view: crop (h, w) = (min(H, crop_height), img_size)
    batch_size: int = 8  # videos per forward pass at test time
    flip_tta: bool = False

    def validate(self):
        _positive(self, "val_clips", "test_clips", "resize_short", "crop_height", "batch_size")


@dataclass
class PredictConfig:
    coarse_rule: Literal["map_top1", "sum_probs", "coarse_head"] = "map_top1"  # SEED.md §12 row 12
    top_k: int = 5

    def validate(self):
        _positive(self, "top_k")


@dataclass
class MetricConfig:
    macro_labels: Literal["present", "all"] = "present"  # SEED.md §12 row 13


@dataclass
class CropConfig:
    detector: Literal["auto", "mediapipe", "haar", "yolo", "onnx", "none"] = "auto"
    margins: tuple[int, int, int, int] = (-60, -100, 80, 60)  # x0, y0, x1, y1 offsets in px at 1080p
    min_aspect: float = 0.6  # width / height of the final box
    sample_frames: int = 8  # frames per video given to the detector
    short_side: Optional[int] = 320  # downscale cropped videos so training decodes fast (None = keep)
    crf: int = 18  # x264 quality of the cropped videos (lower = better and larger)
    fast_decode: bool = True  # x264 tune=fastdecode, unreferenced B-frames the loader skips (docs/BENCHMARKS.md)
    weights: Optional[str] = None  # YOLO (.pt) or ONNX weights, when the detector needs them

    def validate(self):
        _positive(self, "min_aspect", "sample_frames")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"crop.crf: must be in [0, 51] (x264's range), got {self.crf}")


@dataclass
class Config:
    """A whole run: every section of a recipe."""

    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    frame_head: FrameHeadConfig = field(default_factory=FrameHeadConfig)
    arcface: ArcFaceConfig = field(default_factory=ArcFaceConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    description: str = ""  # one line shown in logs and the recipes table

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        t = self.train
        if t.global_batch % t.micro_batch:
            raise ConfigError(
                f"train.global_batch ({t.global_batch}) must be a multiple of train.micro_batch ({t.micro_batch})",
                keys=("train.global_batch", "train.micro_batch"))
        e = self.eval
        if e.view in ("portrait373", "center224") and self.data.img_size > e.resize_short:
            # the test crop is img_size wide, taken from a frame whose short side (the width of a portrait
            # clip) is resize_short: it would not fit (SEED.md §5.7 assumes 224 <= 256)
            raise ConfigError(
                f"data.img_size ({self.data.img_size}) is larger than eval.resize_short ({e.resize_short}): the "
                f"{e.view} test crop would be wider than the resized frame; raise eval.resize_short to at least "
                f"{self.data.img_size}", keys=("data.img_size", "eval.resize_short", "eval.view"))
        self._validate_streams()
        # with a classes file, microact.taxonomy.resolve_taxonomy checks each count against the file instead
        if self.data.classes is None and self.model.num_classes != self.data.num_classes:
            raise ConfigError(
                f"model.num_classes ({self.model.num_classes}) differs from data.num_classes ({self.data.num_classes})",
                keys=("model.num_classes", "data.num_classes"))
        return self

    def _validate_streams(self) -> None:
        """A preset that sees optical flow (two-stream, flow alone) needs flow videos (``data.flow_dir``); an RGB
        preset must not get any."""
        from microact.models.presets import get_preset

        try:
            streams = get_preset(self.model.preset).streams
        except MicroactError:
            return  # an unknown preset is reported, with the valid names, when the model is built
        flow_dir = self.data.flow_dir
        if "flow" in streams and flow_dir is None:
            what = "two-stream (RGB + optical flow)" if "rgb" in streams else "an optical-flow model"
            raise ConfigError(
                f"model.preset={self.model.preset} is {what} but data.flow_dir is not set: "
                "write the flow videos with `microact flow VIDEO_DIR FLOW_DIR` and set data.flow_dir to FLOW_DIR "
                "(relative to data.root)", keys=("model.preset", "data.flow_dir"))
        if "flow" not in streams and flow_dir is not None:
            raise ConfigError(
                f"data.flow_dir={flow_dir} is set but model.preset={self.model.preset} takes RGB only: remove "
                "data.flow_dir (data.flow_dir=null) or choose a preset that sees optical flow "
                "(videomae_b_k710_twostream_i3d, videomae_b_k710_flow_i3d)",
                keys=("data.flow_dir", "model.preset"))
        if flow_dir is not None and self.model.input_mode != "rgb":
            raise ConfigError(f"model.input_mode={self.model.input_mode} is not supported with data.flow_dir "
                              "(optical-flow clips): use model.input_mode=rgb",
                              keys=("model.input_mode", "data.flow_dir"))

    def to_dict(self) -> dict:
        return _to_plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def flatten_config(d: dict, prefix: str = "") -> dict:
    """A recipe as ``{dotted key: value}`` (``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}``), to compare
    two recipes key by key. ``model.overrides`` stays one value: its keys are the preset's, not the recipe's."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "overrides":
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (or start from defaults), apply ``key=value`` overrides and validate.

    Args:
        path: YAML file; ``None`` starts from the defaults.
        overrides: dotted assignments such as ``"train.epochs=2"`` or ``"data.root=/data/ma52"``.
            Values are parsed as YAML (``3e-4``, ``true``, ``[1, 2]``, ``null``).

    Raises:
        ConfigError: naming the file, key and the valid choices.
    """
    raw: dict = {}
    if path is not None:
        path = Path(path)
        _refuse_non_recipe(path)
        if not path.is_file():
            if re.fullmatch(r"[A-Za-z_][\w.]*=.*", str(path)):  # `microact train data.root=X --out R`: no recipe given
                raise ConfigError(f"{path}: a key=value override where the recipe goes: the recipe file comes first "
                                  "(microact train RECIPE KEY=VALUE ... --out RUN; microact test RECIPE WEIGHTS KEY=VALUE ...)")
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError as e:
            line = path.read_bytes()[: e.start].count(b"\n") + 1
            raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte {e.object[e.start]:#04x}); save the recipe "
                              "as UTF-8") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return _validated(raw, overrides, f"{path}: " if path is not None else "")
    except ConfigError as e:
        e.same_on_every_rank = True  # the recipe's text and the overrides alone: every torchrun process fails alike
        raise


def _refuse_non_recipe(path: Path) -> None:
    """A folder, weights file, video ... where the recipe goes is named as such (swapped arguments are common:
    ``microact test WEIGHTS RECIPE`` said the weights were "not valid UTF-8" and to save them as UTF-8)."""
    from microact.filekind import BINARY_KINDS, FOLDER, ONNX, VIDEO, sniff

    kind = sniff(path)
    if kind == FOLDER:
        run_recipe = path / "config.yaml"
        hint = (f"; the recipe a run was trained with is {run_recipe}" if run_recipe.is_file() else
                "; pass the recipe's .yaml file")
        raise ConfigError(f"{path}: a folder, not a recipe{hint}")
    if kind in BINARY_KINDS:
        swapped = "" if kind in (VIDEO, ONNX) else " (microact test takes the recipe first: microact test RECIPE WEIGHTS)"
        raise ConfigError(f"{path}: {kind}, not a YAML recipe: give the recipe's .yaml file here (configs/*.yaml, or "
                          f"a run's config.yaml){swapped}")


def config_from_yaml(text: str, source: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A recipe given as YAML text (e.g. the one a checkpoint records), with overrides, validated.

    Args:
        text: the YAML of a recipe (``Config.to_yaml()``).
        source: where the text comes from, for error messages (e.g. ``"run/model_final.safetensors (recorded
            recipe)"``).

    Raises:
        ConfigError: naming ``source`` and the key.
    """
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    return _validated(raw, overrides, f"{source}: ")


def _validated(raw: dict, overrides, where: str) -> Config:
    typed_as: dict[str, str] = {}  # dotted key -> the override that set it, as typed (the last one wins)
    file_keys = frozenset(flatten_config(raw)) if isinstance(raw, dict) else frozenset()
    override_keys: set[str] = set()
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
        typed_as.pop(key, None)
        typed_as[key] = item
        override_keys |= set(flatten_config({key: value})) if isinstance(value, dict) else {key}
    try:
        cfg = config_from_dict(raw).validate()
    except ConfigError as e:
        # validation sees only the merged values: blame the override that set a key the error is about, else the file
        culprits = _overrides_behind(e.keys, typed_as)
        if culprits:
            message = str(e)
            if len(culprits) == 1 and message.startswith(f"{parse_override(culprits[0])[0]}: "):
                message = message.split(": ", 1)[1]  # the override as typed already names the key
            label = "override" if len(culprits) == 1 else "overrides"
            raise ConfigError(f"{label} {' '.join(repr(c) for c in culprits)}: {message}", keys=e.keys) from None
        raise ConfigError(f"{where}{e}", keys=e.keys) from None
    # the dotted keys the recipe file and the overrides set (attributes, not fields: they stay out of the recorded
    # recipe); a classes file fixes the class counts the user left alone (microact.taxonomy.resolve_taxonomy)
    cfg.file_keys, cfg.override_keys = file_keys, frozenset(override_keys)
    return cfg


def _overrides_behind(keys: tuple[str, ...], typed_as: dict[str, str]) -> list[str]:
    """The overrides (as typed) that set any of ``keys``: the key itself, a section holding it
    (``aug={rrc_area: [1]}`` sets ``aug.rrc_area``), or a key below it (``train.epoch.x=1`` creates ``train.epoch``)."""
    culprits = []
    for key in keys:
        key = key.split("[", 1)[0]  # aug.rrc_area[0] was set by an override of aug.rrc_area
        for set_key, item in reversed(typed_as.items()):  # the last override of a key is the one that stuck
            if (key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + ".")) \
                    and item not in culprits:
                culprits.append(item)
                break
    return culprits


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``"a.b=value"`` into ``("a.b", parsed value)``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=2")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    if any(not part or part.startswith("-") for part in key.split(".")):  # e.g. an option typed after "--"
        raise ConfigError(f"override {item!r}: {key!r} is not a dotted key; write section.key=value, "
                          "e.g. train.epochs=2")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def config_from_dict(raw: dict) -> Config:
    """Build a validated-typed :class:`Config` from nested plain data."""
    return _build(Config, raw, "")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(cfg.to_yaml())


# --------------------------------------------------------------------------------------------
# Helpers: typed construction with precise messages
# --------------------------------------------------------------------------------------------


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        section = prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key; valid keys in {section!r}: {', '.join(names)}"
            + (_did_you_mean(unknown[0], names))
        )
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], f"{prefix}{name}")
    obj = cls(**kwargs)
    return obj


def _did_you_mean(word: str, options: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) > 1:  # e.g. bool or "auto": say every accepted form
            raise ConfigError(f"{key}: " + "; or ".join(e.split(": ", 1)[-1] for e in errors))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not a valid choice; choose one of: {', '.join(map(str, args))}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # .inf / .nan pass every range check below and poison training silently
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - programming error


def _section_name(obj) -> str:
    """The recipe key of a config section (``train`` for a TrainConfig), as error messages name it."""
    for f in dataclasses.fields(Config):
        if isinstance(f.default_factory, type) and isinstance(obj, f.default_factory):
            return f.name
    return type(obj).__name__


def _positive(obj, *names):
    for n in names:
        v = getattr(obj, n)
        if not v > 0:
            raise ConfigError(f"{_section_name(obj)}.{n}: must be > 0, got {v}")


def _non_negative(obj, *names):
    for n in names:
        v = getattr(obj, n)
        if v < 0:
            raise ConfigError(f"{_section_name(obj)}.{n}: must be >= 0, got {v}")


def _probability(obj, *names):
    for n in names:
        v = getattr(obj, n)
        if not 0 <= v <= 1:
            raise ConfigError(f"{_section_name(obj)}.{n}: must be in [0, 1], got {v}")


def _range_pair(obj, name, lo, hi):
    a, b = getattr(obj, name)
    if not (lo <= a <= b <= hi) or b <= 0:
        raise ConfigError(f"{_section_name(obj)}.{name}: expected [min, max] with {lo} <= min <= max <= {hi}, got {[a, b]}")


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj
