"""Multi-clip testing (SEED.md §4): every view of every video through the model, softmax, mean over views.

``evaluate(model, loader, device)`` returns a :class:`~microact.results.Results` in list order; it works in one
process or under ``torchrun`` (each rank scores its share, the shares are gathered and put back in list order by
the items' ``index``). A video that cannot be decoded is never dropped silently: it gets uniform probabilities,
a warning names it, and ``results.meta["failed"]`` lists it.

``microact test CONFIG CKPT`` wraps it: build the model of the recipe, load trained weights, score the test (or
val) list with ``eval.test_clips`` (``eval.val_clips``) clips per video, print and write the metrics, plots, the
mmaction2-style dump and, for unlabelled lists, the submission files.

Example::

    microact test configs/tiny_synth.yaml runs/tiny/model_final.safetensors data.root=demo_out/data_cropped \\
        --split val --out runs/tiny/val
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch

from microact.errors import MicroactError
from microact.results import Results

Precision = Literal["fp32", "bf16", "fp16"]


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def autocast(device: torch.device, precision: Precision):
    """The autocast context of a precision name (fp32: none), shared by training, testing and the benchmarks."""
    if precision not in PRECISION_DTYPES:
        raise MicroactError(f"precision {precision!r} is not one of fp32, bf16, fp16")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISION_DTYPES[precision])


def _lead_logits(model, x: torch.Tensor, coarse_head: bool = False):
    """The fine lead logits; with ``coarse_head`` the pair (fine, coarse lead logits)."""
    out = model(x)
    fine = out.fine if hasattr(out, "fine") else out  # Recognizer -> RecognizerOutput; plain modules -> logits
    if not coarse_head:
        return fine
    coarse = getattr(out, "coarse", None)
    if coarse is None:
        raise MicroactError(_no_coarse_head("this one"))
    return fine, coarse


def _no_coarse_head(which: str) -> str:
    return (f"predict.coarse_rule=coarse_head needs a model with coarse heads (a *_frame_coarse_* preset); {which} "
            "has none: use map_top1 or sum_probs")


def check_coarse_rule(model, rule: str) -> None:
    """Refuse ``predict.coarse_rule=coarse_head`` for a model without a coarse lead head, before any video is read."""
    if rule == "coarse_head" and not getattr(model, "has_coarse", False):
        raise MicroactError(_no_coarse_head(getattr(getattr(model, "preset", None), "name", None) or "this model"))


def _average_views(logits: torch.Tensor, b: int, v: int, average: str) -> torch.Tensor:
    logits = logits.view(b, v, -1)  # [B*V, K] -> [B, V, K]
    if average == "prob":
        return logits.softmax(dim=-1).mean(dim=1)
    return logits.mean(dim=1).softmax(dim=-1)


@torch.no_grad()
def score_views(model, video: torch.Tensor, device: torch.device, *, average: str = "prob",
                precision: Precision = "fp32", max_clips: Optional[int] = None, coarse_head: bool = False,
                input_stats: Optional[dict] = None):
    """Clip-averaged fine probabilities of a batch of videos.

    Args:
        model: a :class:`~microact.models.recognizer.Recognizer` in eval mode (or any module returning logits).
        video: uint8 ``[B, V, C, T, H, W]`` (V views per video; C = 3, or 6 for RGB + flow).
        device: where the model lives; the uint8 batch is moved there and normalised there.
        average: ``"prob"`` (seed: mean of per-view softmax) or ``"logit"`` (softmax of the mean logits).
        precision: autocast precision of the forward pass; logits are turned into float32 before the softmax.
        max_clips: at most this many views per forward pass (``None``: the whole batch at once).
        coarse_head: also average the coarse lead head's logits the same way (``predict.coarse_rule=coarse_head``).
        input_stats: the statistics keywords of the recipe's clips for
            :func:`~microact.data.transforms.normalize_batch` (:func:`~microact.engine.builders.input_statistics`;
            ``None``: the seed's).

    Returns:
        float32 ``[B, K]`` on the CPU; with ``coarse_head`` the pair (fine ``[B, K]``, coarse head ``[B, G]``, G
        groups).
    """
    from microact.data.transforms import normalize_batch

    if average not in ("prob", "logit"):
        raise MicroactError(f"eval.average: {average!r} is not one of 'prob', 'logit'")
    if video.dim() != 6:
        raise ValueError(f"expected a uint8 batch [B, V, C, T, H, W], got {list(video.shape)}")
    b, v = video.shape[:2]
    flat = video.flatten(0, 1)  # [B, V, C, T, H, W] -> [B*V, C, T, H, W]
    step = max(1, max_clips or flat.shape[0])
    fine, coarse = [], []
    for start in range(0, flat.shape[0], step):
        # normalise per chunk on the device, so only one chunk exists as floats at a time
        x = normalize_batch(flat[start:start + step].to(device, non_blocking=True), **(input_stats or {}))
        with autocast(device, precision):
            out = _lead_logits(model, x, coarse_head)
        if coarse_head:
            fine.append(out[0].float())
            coarse.append(out[1].float())
        else:
            fine.append(out.float())
    probs = _average_views(torch.cat(fine), b, v, average).cpu()
    if not coarse_head:
        return probs
    return probs, _average_views(torch.cat(coarse), b, v, average).cpu()


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj):
    """All ranks' ``obj`` in rank order (one process: ``[obj]``)."""
    import torch.distributed as dist

    if _world()[1] == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def evaluate(model, loader, device, *, average: str = "prob", precision: Precision = "fp32",
             num_views: Optional[int] = None, max_clips: Optional[int] = None, progress: bool = True,
             coarse_head: bool = False, input_stats: Optional[dict] = None, taxonomy=None) -> Results:
    """Score every video of a test-mode loader.

    Args:
        model: the recognizer; it is put in eval mode.
        loader: a :func:`microact.data.dataset.build_loader` loader over a test-mode
            :class:`~microact.data.dataset.VideoDataset` (batches ``{"video": uint8 [B, V, C, T, H, W], "label",
            "index", "skipped"}``).
        device: the model's device.
        average: ``"prob"`` (seed) or ``"logit"`` (SEED.md §12 row 11).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast.
        num_views: expected views per video (checked against the batches when given).
        max_clips: views per forward pass (memory bound); ``None`` = a whole batch.
        progress: show a progress bar (rank 0).
        coarse_head: also keep the coarse lead head's clip-averaged probabilities (``Results.coarse_head_scores``;
            ``predict.coarse_rule=coarse_head``).
        input_stats: the statistics keywords of the recipe's clips (:func:`score_views`).
        taxonomy: the classes of the scores (default: ``model.taxonomy``); recorded in the results.

    Returns:
        :class:`Results` in list order: names = the list's file names, labels = the list's labels (``None`` when
        every label is 0, i.e. a test list's dummies), ``meta["failed"]`` = messages of undecodable videos (which
        got uniform probabilities), ``meta["num_views"]``.
    """
    from tqdm import tqdm

    device = torch.device(device)
    dataset = loader.dataset
    records = dataset.records
    rank, _ = _world()
    was_training = model.training
    model.eval()
    indices, rows, head_rows, skipped = [], [], [], []
    views_seen, img_shape = None, (0, 0)
    for batch in tqdm(loader, desc="test", unit="batch", disable=not progress or rank != 0, file=sys.stderr):
        skipped += batch["skipped"]
        if batch["video"] is None:
            continue
        video = batch["video"]
        if num_views is not None and video.shape[1] != num_views:
            raise MicroactError(f"expected {num_views} views per video, the loader gives {video.shape[1]}")
        views_seen, img_shape = video.shape[1], tuple(video.shape[-2:])
        scored = score_views(model, video, device, average=average, precision=precision, max_clips=max_clips,
                             coarse_head=coarse_head, input_stats=input_stats)
        if coarse_head:
            scored, head = scored
            head_rows.append(head)
        rows.append(scored)
        indices += batch["index"].tolist()
    if was_training:
        model.train()
    local = (indices, torch.cat(rows).numpy() if rows else None, skipped, views_seen, img_shape,
             torch.cat(head_rows).numpy() if head_rows else None)

    num_classes = int(getattr(model, "num_classes", 0)) or None
    scores: dict[int, np.ndarray] = {}
    head_scores: dict[int, np.ndarray] = {}
    failed_messages: list[str] = []
    for part_indices, part_scores, part_skipped, part_views, part_shape, part_head in _gather(local):
        failed_messages += part_skipped
        views_seen = views_seen or part_views
        img_shape = img_shape if any(img_shape) else part_shape
        for i, idx in enumerate(part_indices):
            scores.setdefault(int(idx), part_scores[i])  # a padded duplicate keeps the first copy
            if part_head is not None:
                head_scores.setdefault(int(idx), part_head[i])
            num_classes = num_classes or part_scores.shape[1]
    if num_classes is None:
        raise MicroactError("no video of the list could be decoded and the model does not say its class count")

    taxonomy = taxonomy if taxonomy is not None else getattr(model, "taxonomy", None)
    n = len(records)
    out = np.empty((n, num_classes), dtype=np.float32)
    head_out = None
    if coarse_head:
        from microact.taxonomy import taxonomy_of

        groups = taxonomy_of(model, taxonomy).num_coarse  # coarse_head is refused for flat taxonomies beforehand
        head_out = np.full((n, groups), 1.0 / groups, dtype=np.float32)
    failed = []
    for i, record in enumerate(records):
        if i in scores:
            out[i] = scores[i]
            if head_out is not None:
                head_out[i] = head_scores[i]
        else:  # undecodable: a uniform row keeps the list order and the count (argmax then says class 0)
            out[i] = 1.0 / num_classes
            prefix = f"{Path(dataset.video_root) / record.path}: "
            reason = next((m[len(prefix):] for m in failed_messages if m.startswith(prefix)), "no clip was produced")
            failed.append(f"{record.path}: {reason}")
    if failed and rank == 0:
        shown = "\n  ".join(failed[:10]) + (f"\n  ... and {len(failed) - 10} more" if len(failed) > 10 else "")
        warnings.warn(f"{len(failed)} of {n} videos could not be decoded and got uniform probabilities:\n  {shown}",
                      RuntimeWarning, stacklevel=2)
    labels = np.asarray([r.label for r in records], dtype=np.int64)
    meta = {"failed": failed, "num_views": views_seen, "average": average, "precision": precision}
    if n > 1 and not labels.any():
        labels = None
        meta["labels_note"] = "every label is 0: treated as an unlabelled (test) list"
    return Results([r.path for r in records], out, labels, num_classes, img_shape if any(img_shape) else (224, 224),
                   meta, head_out, taxonomy)


# --------------------------------------------------------------------------------------------
# Weights and the `microact test` command
# --------------------------------------------------------------------------------------------


def load_trained_weights(model, path: str | os.PathLike) -> None:
    """Load trained weights into ``model`` strictly: a microact ``.safetensors`` or a training checkpoint.

    Training checkpoints are read through :func:`microact.models.checkpoints.read_checkpoint` (no code runs; a
    ``model`` / ``state_dict`` container is unwrapped); ``module.`` (DDP) and ``_orig_mod.`` (torch.compile)
    prefixes are removed.

    Raises:
        microact.models.checkpoints.CheckpointError: unreadable file, or keys/shapes that do not fit the model.
    """
    from microact.models.checkpoints import CheckpointError, read_checkpoint

    sd = read_checkpoint(path)
    clean = {}
    for key, value in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        clean[key.replace("._orig_mod.", ".")] = value
    own = model.state_dict()
    missing = [k for k in own if k not in clean]
    unexpected = [k for k in clean if k not in own]
    wrong = [f"{k} {list(clean[k].shape)} (model: {list(own[k].shape)})" for k in own
             if k in clean and clean[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes (e.g. {'; '.join(wrong[:2])})")
        raise CheckpointError(f"{path}: does not fit the model of this recipe: {'; '.join(parts)}. "
                              "Use the recipe (and overrides) the weights were trained with.")
    model.load_state_dict(clean, strict=True)


# Recipe keys that change what the network computes from a clip: weights trained with other values give wrong
# answers even when every shape fits (e.g. rgb vs rgb_diff input, 8 vs 16 frames of a model whose shapes do not
# depend on the frame count). data.flow_dir counts only as set or not (the folder itself is a data location).
FORWARD_KEYS = ("model.preset", "model.num_classes", "model.input_mode", "model.overrides", "data.clip_len",
                "data.img_size", "data.flow_dir", "data.flow_mean", "data.flow_std", "frame_head.layout",
                "frame_head.se_mode", "arcface.margin_mode", "arcface.scale", "arcface.margin")
# Test-view keys: testing with other views is legitimate (an ablation) but changes the numbers, so it is noted.
VIEW_KEYS = ("eval.view", "eval.resize_short", "eval.crop_height", "eval.flip_tta", "eval.average",
             "aug.resize_backend")


def recorded_recipe(path: str | os.PathLike) -> Optional[str]:
    """The recipe YAML a microact weights file records (:data:`microact.engine.state.RECIPE_METADATA_KEY`), or
    ``None``: older runs, converted or foreign files, folders, ``.pth`` files. Reads the header only; a file that
    cannot be read gives ``None`` here and its error when the weights are loaded."""
    from microact.engine.state import RECIPE_METADATA_KEY
    from microact.models.checkpoints import weights_metadata

    return (weights_metadata(path) or {}).get(RECIPE_METADATA_KEY)


def _show(value) -> str:
    """A value as the user would type it in an override (null, true, [1, 2])."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def recipe_differences(trained, current) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """``(forward, views)``: the :data:`FORWARD_KEYS` and :data:`VIEW_KEYS` whose values differ between the
    recipe the weights were trained with and the current one, as ``(key, trained value, current value)``."""
    from microact.config import flatten_config

    was, now = flatten_config(trained.to_dict()), flatten_config(current.to_dict())
    was["data.flow_dir"] = "set" if was["data.flow_dir"] is not None else None
    now["data.flow_dir"] = "set" if now["data.flow_dir"] is not None else None
    if was["data.flow_dir"] is None and now["data.flow_dir"] is None:  # flow statistics unused by RGB models
        for key in ("data.flow_mean", "data.flow_std"):
            was[key] = now[key]

    def differing(keys):
        return [(k, was.get(k), now.get(k)) for k in keys if was.get(k) != now.get(k)]
    return differing(FORWARD_KEYS), differing(VIEW_KEYS)


def warn_if_recipe_differs(cfg, checkpoint: str | os.PathLike, file=None) -> list[str]:
    """Print (to stderr) a warning for each difference between ``cfg`` and the recipe ``checkpoint`` records.

    A warning, not an error: testing with other views is legitimate, and a user may know better; but the
    forward-defining keys get an explicit "the weights were trained with ..." line. Files without a recorded
    recipe (older runs, converted weights) give nothing.

    Returns:
        The lines printed.
    """
    from microact.config import ConfigError, config_from_yaml

    text = recorded_recipe(checkpoint)
    if text is None:
        return []
    lines = []
    try:
        trained = config_from_yaml(text, f"{checkpoint} (recorded recipe)")
    except ConfigError as e:  # e.g. written by another microact version
        lines.append(f"note: the recipe recorded in the weights cannot be compared with this one: {e}")
    else:
        forward, views = recipe_differences(trained, cfg)
        if forward:
            lines.append(
                f"WARNING: {checkpoint}: the weights were trained with "
                + ", ".join(f"{k}={_show(a)}" for k, a, _ in forward) + "; this recipe has "
                + ", ".join(f"{k}={_show(b)}" for k, _, b in forward)
                + ". Its answers are wrong unless these match: use the recipe the weights were trained with (the "
                "run's config.yaml; it is also recorded in the weights file, which `microact predict VIDEO "
                "--checkpoint CKPT` with neither --config nor --model uses)")
        if views:
            lines.append(f"note: {checkpoint}: test views differ from the training run's: "
                         + ", ".join(f"{k}={_show(b)} (trained run: {_show(a)})" for k, a, b in views))
    for line in lines:
        print(line, file=file or sys.stderr)
    return lines


def warn_if_taxonomy_differs(taxonomy, checkpoint: str | os.PathLike, file=None) -> Optional[str]:
    """Print (to stderr) and return a warning when ``checkpoint`` records other classes than ``taxonomy``.

    Weights trained on other classes may still fit every shape (the same count), and then name the wrong classes
    silently; files that record no taxonomy (older runs, converted weights) give nothing.
    """
    from microact.taxonomy import TaxonomyError, differences, read_recorded_taxonomy

    try:
        recorded = read_recorded_taxonomy(checkpoint)
    except TaxonomyError as e:
        line = f"note: {e}; it cannot be compared with the recipe's classes"
    else:
        if recorded is None or recorded == taxonomy:
            return None
        line = (f"WARNING: {checkpoint}: the weights were trained on other classes than this recipe's "
                f"({differences(recorded, taxonomy)}; trained: {recorded.describe()}, recipe: {taxonomy.describe()}); "
                "use the data.classes file the weights were trained with")
    print(line, file=file or sys.stderr)
    return line


def build_test_loader(cfg, list_file: str | os.PathLike, num_clips: int, *, distributed: bool = False):
    """The test-mode loader of a recipe for one list (``eval`` views, uniform test sampling, no shuffling)."""
    from microact.data.dataset import VideoDataset, build_loader
    from microact.data.transforms import TestTransform
    from microact.engine.builders import flow_dir, input_streams, load_records

    records, videos = load_records(cfg, [list_file])
    transform = TestTransform(cfg.eval, cfg.data.img_size, cfg.aug.resize_backend)
    # the flow videos of a two-stream model get the same deterministic views (sampled over their own, one shorter,
    # frame count)
    two_stream = input_streams(cfg) == ("rgb", "flow")
    flow = {"flow_root": flow_dir(cfg), "flow_transform": transform} if two_stream else {}
    dataset = VideoDataset(records, videos, clip_len=cfg.data.clip_len, transform=transform,
                           num_clips=num_clips, test_mode=True, decoder=cfg.data.decoder,
                           decode_timeout=cfg.data.decode_timeout, seed=cfg.train.seed, cache_dir=cfg.data.cache_dir,
                           cache_format=cfg.data.cache_format, cache_jpeg_quality=cfg.data.cache_jpeg_quality,
                           decode_threads=cfg.data.decode_threads, **flow)
    return build_loader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.num_workers,
                        distributed=distributed, prefetch_factor=cfg.data.prefetch_factor)


def cli_main(args) -> int:
    """``microact test CONFIG CKPT [overrides] [--split test|val] [--list] [--dump] [--out]``."""
    from microact.config import load_config
    from microact.engine import distributed as dist_utils
    from microact.metrics import format_per_class, format_summary
    from microact.models.presets import create_model_from_config
    from microact.engine.builders import check_list_files, input_statistics
    from microact.plots.results import write_report
    from microact.results import save_results, write_ma52_top5_csv, write_mac2024_submission
    from microact.taxonomy import resolve_taxonomy

    cfg = load_config(args.config, args.overrides)
    if args.list:
        list_file = Path(args.list)
    elif args.split == "val":
        if not cfg.data.val_list:
            raise MicroactError("--split val: data.val_list is not set in the recipe; set it or pass --list")
        check_list_files(cfg, ("data.val_list",))  # before the model is built and its weights loaded
        list_file = Path(cfg.data.root) / cfg.data.val_list
    else:
        check_list_files(cfg, ("data.test_list",))
        list_file = Path(cfg.data.root) / cfg.data.test_list
    num_clips = cfg.eval.val_clips if args.split == "val" else cfg.eval.test_clips
    taxonomy = resolve_taxonomy(cfg)  # the classes file, read and checked before anything runs

    info = dist_utils.init(cfg.train.device)  # joins the process group under torchrun
    rank, world, device = info.rank, info.world_size, info.device
    precision = cfg.train.precision if device.type == "cuda" else "fp32"

    if rank == 0:  # before loading: a recipe that does not fit the weights' shapes explains the error that follows
        warn_if_recipe_differs(cfg, args.checkpoint)
        warn_if_taxonomy_differs(taxonomy, args.checkpoint)
    model = create_model_from_config(cfg, pretrained=False, taxonomy=taxonomy)
    check_coarse_rule(model, cfg.predict.coarse_rule)
    load_trained_weights(model, args.checkpoint)
    model.to(device)
    loader = build_test_loader(cfg, list_file, num_clips, distributed=info.distributed)
    if len(loader.dataset) == 0:  # else the metrics fail later with a message that does not name the list
        raise MicroactError(f"{list_file}: the list names no videos (empty file?)")
    if rank == 0:
        print(f"testing {args.checkpoint} on {list_file} ({len(loader.dataset)} videos, {num_clips} clips x "
              f"{loader.dataset.transform.num_crops} crops, view {cfg.eval.view}, average {cfg.eval.average}, "
              f"{precision}, {world} process(es), device {device})")
    coarse_rule = cfg.predict.coarse_rule
    results = evaluate(model, loader, device, average=cfg.eval.average, precision=precision,
                       coarse_head=coarse_rule == "coarse_head", input_stats=input_statistics(cfg),
                       taxonomy=taxonomy)
    results.meta.update(config=str(args.config), checkpoint=str(Path(args.checkpoint).resolve()), list=str(list_file),
                        split=args.split, num_clips=num_clips, view=cfg.eval.view, coarse_rule=coarse_rule)
    if rank != 0:
        dist_utils.cleanup()
        return 0

    if args.out:
        out = Path(args.out)
    elif args.dump:  # beside the dump, in a folder of its own: two dumps in one folder keep their own reports
        out = Path(args.dump).parent / f"{Path(args.dump).stem}_report"
    else:
        out = Path(args.checkpoint).parent / f"{args.split}_results"
    out.mkdir(parents=True, exist_ok=True)
    pkl, npz = save_results(results, Path(args.dump) if args.dump else out / "results.pkl")
    print(f"wrote {pkl} and {npz}")
    if results.meta["failed"]:
        print(f"{len(results.meta['failed'])} video(s) could not be decoded (uniform probabilities): "
              + ", ".join(results.meta["failed"][:5]))
    if results.labels is not None:
        metrics = write_report(results, out, macro_labels=cfg.metric.macro_labels, coarse_rule=coarse_rule,
                               extra={"config": str(args.config), "checkpoint": str(args.checkpoint),
                                      "list": str(list_file), "num_clips": num_clips, "view": cfg.eval.view})
        if "per_coarse_class" in metrics:
            print(format_per_class(metrics["per_coarse_class"], title=taxonomy.coarse_label))
        print(format_summary(metrics))
        print(f"wrote {out / 'metrics.json'}, per_class.csv and plots")
    elif taxonomy.is_ma52:
        for write in (write_mac2024_submission, write_ma52_top5_csv):
            print(f"wrote {write(results, out, coarse_rule)}")
    else:  # the challenge formats are MA-52's
        print(f"unlabelled list: predictions are in {npz} (no challenge submission files: the classes are not "
              f"MA-52's, {taxonomy.describe()})")
    dist_utils.cleanup()
    return 0
