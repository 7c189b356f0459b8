"""From a :class:`~microact.config.Config` to the objects of a run: model, loss, loaders."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from microact.config import Config


def build_model(cfg: Config, pretrained: bool = True, taxonomy=None) -> nn.Module:
    """The recognizer a recipe describes (``model.*``, ``data.clip_len`` / ``img_size``, ``frame_head.*``,
    ``arcface.*``, ``backbone.load_final_norm``, ``model.overrides``).

    Args:
        cfg: run configuration.
        pretrained: load ``model.pretrained`` when set (False when trained weights are loaded afterwards).
        taxonomy: the recipe's classes (:func:`microact.taxonomy.resolve_taxonomy`); ``None`` resolves them here.
    """
    from microact.models.presets import create_model_from_config

    return create_model_from_config(cfg, pretrained=pretrained, taxonomy=taxonomy)


def loss_name(cfg: Config, model: nn.Module) -> str:
    """``loss.name`` with ``auto`` resolved to the model's preset loss."""
    if cfg.loss.name != "auto":
        return cfg.loss.name
    preset = getattr(model, "preset", None)
    if preset is not None and getattr(preset, "loss", None):
        return preset.loss
    from microact.models.presets import loss_for

    return loss_for(cfg.model.preset)


def build_criterion(cfg: Config, model: nn.Module) -> nn.Module:
    """The training loss of the recipe for ``model`` (``loss.name=auto``: the preset's seed loss)."""
    from microact.losses import build_loss

    return build_loss(loss_name(cfg, model), cfg.data.num_classes, class_weights=cfg.loss.class_weights,
                      label_smoothing=cfg.loss.label_smoothing, f1_sync=cfg.loss.f1_sync,
                      taxonomy=getattr(model, "taxonomy", None))


def video_dir(cfg: Config) -> Path:
    return Path(cfg.data.root) / cfg.data.video_dir


def flow_dir(cfg: Config) -> Path | None:
    """Folder of the optical-flow videos (``data.flow_dir`` under ``data.root``), or ``None`` without a flow stream."""
    return None if cfg.data.flow_dir is None else Path(cfg.data.root) / cfg.data.flow_dir


def input_streams(cfg: Config) -> tuple[str, ...]:
    """What the recipe's model sees: ``("rgb",)``, ``("flow",)`` (flow alone) or ``("rgb", "flow")`` (two-stream)."""
    from microact.models.presets import get_preset

    return get_preset(cfg.model.preset).streams


def describe_input(cfg: Config) -> str:
    """What the model sees, for logs: ``"rgb"``, ``"rgb_diff"``, ``"optical flow"`` or ``"rgb + optical flow"``."""
    names = {"rgb": cfg.model.input_mode, "flow": "optical flow"}
    return " + ".join(names[stream] for stream in input_streams(cfg))


def input_statistics(cfg: Config) -> dict:
    """:func:`~microact.data.transforms.normalize_batch`'s statistics keywords for the recipe's clips."""
    from microact.data.transforms import stream_statistics

    return stream_statistics(cfg.data, input_streams(cfg))


def check_list_files(cfg: Config, list_keys: tuple[str, ...]) -> None:
    """``data.root`` is a folder and holds the list files named by ``list_keys`` (``data.train_lists``,
    ``data.val_list``, ``data.test_list``).

    A few ``stat`` calls, made before a run creates anything: a mistyped ``data.root`` would otherwise surface as
    "list file not found" for a path the user never typed, after the model is built and the run folder is made.

    Raises:
        ConfigError: naming the key to fix (``data.root=...: no such folder``, ``data.train_lists: ... not found``).
    """
    from microact.config import ConfigError

    root = Path(cfg.data.root)
    names = {key: _list_names(cfg, key) for key in list_keys}
    # a list given as an absolute path does not depend on data.root
    if any(not Path(name).is_absolute() for listed in names.values() for name in listed) and not root.is_dir():
        problem = "not a folder" if root.exists() else "no such folder"
        raise ConfigError(f"data.root={cfg.data.root}: {problem}; point data.root at the dataset folder holding "
                          f"the list files ({', '.join(n for listed in names.values() for n in listed)})",
                          keys=("data.root",))
    for key, listed in names.items():
        missing = [name for name in listed if not (root / name).is_file()]
        if missing:
            present = sorted(p.name for p in root.glob("*.txt"))[:8]
            there = f"list files there: {', '.join(present)}" if present else "no .txt files there"
            raise ConfigError(f"{key}: {', '.join(str(root / m) for m in missing)} not found in "
                              f"data.root={cfg.data.root} ({there})", keys=(key,))


def _list_names(cfg: Config, key: str) -> list[str]:
    """The list file names a ``data.*`` list key holds (none for an unset ``data.val_list``)."""
    value = getattr(cfg.data, key.split(".", 1)[1])
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_flow_files(cfg: Config, records) -> None:
    """With ``data.check_files``: every listed video has its flow video under ``data.flow_dir``.

    Training would otherwise skip every clip whose flow video is missing; a forgotten ``microact flow`` run is
    better said before it starts.

    Raises:
        MicroactError: naming the missing files (the first few) and the command that writes them.
    """
    from microact.errors import MicroactError

    folder = flow_dir(cfg)
    if folder is None or not cfg.data.check_files:
        return
    missing = [r.path for r in records if not (folder / r.path).is_file()]
    if missing:
        shown = ", ".join(str(folder / m) for m in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise MicroactError(
            f"data.flow_dir: {len(missing)} of {len(records)} listed videos have no flow video ({shown}); write "
            f"them with `microact flow {video_dir(cfg)} {folder}` (or set data.check_files=false to skip those "
            "clips)")


def load_records(cfg: Config, list_files) -> tuple[list, Path]:
    """The videos of ``list_files`` and the folder their paths are relative to: the RGB videos, or the flow videos
    (``data.flow_dir``) for a flow-alone model, which never reads the RGB ones (they need not be there).

    With ``data.check_files`` a missing video is an annotation error and a missing flow video is reported with the
    command that writes it (:func:`check_flow_files`).
    """
    from microact.data.annotations import load_lists

    flow_alone = input_streams(cfg) == ("flow",)
    folder = flow_dir(cfg) if flow_alone else video_dir(cfg)
    records = load_lists(list_files, video_dir=folder, num_classes=cfg.data.num_classes,
                         check_files=cfg.data.check_files and not flow_alone,
                         allow_absolute_paths=cfg.data.allow_absolute_paths)
    check_flow_files(cfg, records)
    return records, folder


def build_train_dataset(cfg: Config):
    """The training :class:`~microact.data.dataset.VideoDataset` over every list of ``data.train_lists``."""
    from microact.data.dataset import VideoDataset
    from microact.data.transforms import TrainTransform, flow_train_transform

    records, videos = load_records(cfg, [Path(cfg.data.root) / f for f in cfg.data.train_lists])
    flow = {}
    if input_streams(cfg) == ("flow",):  # the flow branch's pipeline on the only stream
        transform = flow_train_transform(cfg.aug, cfg.data.img_size)
    else:
        transform = TrainTransform(cfg.aug, cfg.data.img_size, rng=cfg.train.seed)
        if cfg.data.flow_dir is not None:
            flow = {"flow_root": flow_dir(cfg), "flow_transform": flow_train_transform(cfg.aug, cfg.data.img_size)}
    return VideoDataset(records, videos, clip_len=cfg.data.clip_len, transform=transform, test_mode=False,
                        decoder=cfg.data.decoder, decode_timeout=cfg.data.decode_timeout,
                        seed=cfg.train.seed, cache_dir=cfg.data.cache_dir,
                        cache_format=cfg.data.cache_format, cache_jpeg_quality=cfg.data.cache_jpeg_quality,
                        decode_threads=cfg.data.decode_threads, **flow)


def build_train_loader(cfg: Config, *, distributed: bool = False):
    """Shuffled training loader of ``train.micro_batch`` clips (``loader.batch_sampler.set_epoch(e,
    skip_batches=k, until_epoch=E)`` starts at epoch ``e`` after ``k`` batches and runs through the epochs before
    ``E``).

    The loader gets its own ``torch.Generator`` so creating its iterator never draws from the global torch RNG
    (that RNG drives dropout / drop path and is restored exactly on resume).
    """
    import torch

    from microact.data.dataset import build_loader

    loader = build_loader(build_train_dataset(cfg), batch_size=cfg.train.micro_batch, shuffle=True,
                          num_workers=cfg.data.num_workers, seed=cfg.train.seed, distributed=distributed,
                          drop_last=False, prefetch_factor=cfg.data.prefetch_factor)
    loader.generator = torch.Generator().manual_seed(cfg.train.seed)
    return loader


def build_eval_loader(cfg: Config, split: str = "val", *, distributed: bool = False):
    """Test-mode loader of ``data.val_list`` (``eval.val_clips``) or ``data.test_list`` (``eval.test_clips``)."""
    from microact.engine.evaluate import build_test_loader
    from microact.errors import MicroactError

    if split == "val":
        if not cfg.data.val_list:
            raise MicroactError("data.val_list is not set: nothing to validate on")
        return build_test_loader(cfg, Path(cfg.data.root) / cfg.data.val_list, cfg.eval.val_clips,
                                 distributed=distributed)
    return build_test_loader(cfg, Path(cfg.data.root) / cfg.data.test_list, cfg.eval.test_clips,
                             distributed=distributed)
