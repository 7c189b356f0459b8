"""Seed-table presets: each row of SEED.md §7 as a named model (architecture + the checkpoint it starts from).

``create_model(name, pretrained=None, **overrides)`` builds a :class:`~microact.models.recognizer.Recognizer`;
``list_models()`` lists the names; ``get_preset(name)`` returns the :class:`Preset` record (checkpoint file, loss,
seed F1 numbers) that the README's recipes table is generated from. Presets are a plain dict of dataclasses:
no registry decorators, no import-time side effects.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Any, Literal, Optional

from microact.errors import MicroactError

HeadKind = Literal["timesformer", "tsn", "i3d"]


@dataclass(frozen=True)
class Preset:
    """One model of the seed table (SEED.md §2, §6.4, §7).

    Attributes:
        name: preset name.
        backbone: backbone name of :func:`microact.models.videomae.create_backbone`.
        head: ``"timesformer"`` (pooled + linear), ``"tsn"`` or ``"i3d"`` (same computation on the token map).
        use_arcface: lead (and coarse) classifiers are cosine-margin layers.
        use_frame: fine frame-level assisting head.
        use_coarse: coarse lead classifier + coarse frame-level head.
        loss: ``build_loss`` name used when ``loss.name`` is ``"auto"``.
        checkpoint: file name of the initialisation checkpoint the seed used ("" = none, random init).
        description: one line for tables and logs.
        notes: caveats (reconstructed rows, unclear checkpoints).
        num_frames: frames per clip.
        img_size: input size.
        two_stream: RGB + optical-flow backbones with concatenated maps (SEED.md §2.9).
        share_weights: two-stream with one shared backbone.
        flow_only: one backbone on the optical-flow clip alone (SEED.md §7 "optical flow alone").
        f1_test_trainval: seed F1_mean (%) on the MAC 2024 test set, trained on train+val (SEED.md §7).
        f1_test_train: the same, trained on train only.
        f1_val: seed F1_mean (%) on val, trained on train.
    """

    name: str
    backbone: str
    head: HeadKind
    use_arcface: bool
    use_frame: bool
    use_coarse: bool
    loss: str
    checkpoint: str
    description: str
    notes: str = ""
    num_frames: int = 16
    img_size: int = 224
    two_stream: bool = False
    share_weights: bool = False
    flow_only: bool = False
    f1_test_trainval: Optional[float] = None
    f1_test_train: Optional[float] = None
    f1_val: Optional[float] = None

    @property
    def streams(self) -> tuple[str, ...]:
        """What the model sees: ``("rgb",)``, ``("flow",)`` or ``("rgb", "flow")`` (channels in that order)."""
        if self.two_stream:
            return ("rgb", "flow")
        return ("flow",) if self.flow_only else ("rgb",)


_K710 = "vit_b_hybrid_pt_800e_k710_ft.pth"
_SEED_HEADS = "heads not in the checkpoint: initialised as in SEED.md §2.4-§2.6"

_PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("videomae_b_ssv2_timesformer", "videomae_base", "timesformer", False, False, False, "ce",
           "vit_b_hybrid_pt_800e_ssv2_ft.pth", "VideoMAE-B (SSV2 fine-tuned init), TimeSformer head, CE",
           notes="reconstructed row (no committed config; SEED.md §6.4)", f1_test_train=68.94, f1_val=68.76),
    Preset("videomae_b_k710_timesformer", "videomae_base", "timesformer", False, False, False, "ce", _K710,
           "VideoMAE-B (K710 init), TimeSformer head, CE",
           notes="reconstructed row (no committed config; SEED.md §6.4)", f1_test_trainval=71.94),
    Preset("videomae_b_k710_frame_i3d", "videomae_base", "i3d", True, True, False, "cef1_double", _K710,
           "VideoMAE-B K710, I3D head + ArcFace + frame-level assisting head (ModelGroup1)", notes=_SEED_HEADS,
           f1_test_trainval=72.81, f1_test_train=71.14, f1_val=72.33),
    Preset("videomae_b_k710_frame_coarse_i3d", "videomae_base", "i3d", True, True, True, "cef1_fine_coarse_double",
           _K710, "VideoMAE-B K710, I3D head + ArcFace + frame and coarse assisting heads (ModelGroup2)",
           notes="identical computation to the TSN preset; the seed used its epoch-39 checkpoint",
           f1_test_trainval=73.07, f1_test_train=70.98, f1_val=72.58),
    Preset("videomae_b_k710_frame_coarse_tsn", "videomae_base", "tsn", True, True, True, "cef1_fine_coarse_double",
           _K710, "VideoMAE-B K710, TSN head + ArcFace + frame and coarse assisting heads (best single model)",
           notes=_SEED_HEADS, f1_test_trainval=73.13, f1_test_train=71.18, f1_val=72.70),
    Preset("videomae_l_k700_timesformer", "videomae_large", "timesformer", False, False, False, "ce",
           "vit_l_hybrid_pt_800e_k700_ft.pth", "VideoMAE-L (K700 init), TimeSformer head, CE",
           notes="weights stored under 'module' in the checkpoint; batch 10, 38 epochs (SEED.md §6.4)",
           f1_test_trainval=73.06),
    Preset("videomae_h_timesformer", "videomae_huge", "timesformer", False, False, False, "ce",
           "vit_h_hybrid_pt_k710_ft_ak_ft.pth", "VideoMAE-H (K710 + AVA-Kinetics fine-tuned init), TimeSformer head",
           notes="checkpoint URL unclear (the README links a .sh script; SEED.md §12 row 20): use the closest "
                 "public ViT-H weights and say so", f1_test_trainval=72.68, f1_val=71.69),
    Preset("videomae_b_k710_twostream_i3d", "videomae_base", "i3d", True, True, False, "cef1_double", _K710,
           "two-stream VideoMAE-B (RGB + optical flow), I3D head on 2C channels + ArcFace + frame head",
           notes="context row (SEED.md §2.9); input [B, 6, T, H, W]; the seed loaded a combined RGB+flow checkpoint",
           two_stream=True, f1_test_trainval=72.17),
    Preset("videomae_b_k710_twostream_shared_i3d", "videomae_base", "i3d", True, True, False, "cef1_double", _K710,
           "two-stream VideoMAE-B (RGB + optical flow) with one shared backbone, I3D head on 2C channels + ArcFace + "
           "frame head (ModelGroup5)",
           notes="context row (SEED.md §2.9, §7 'RGB+OF (weight sharing)'); input [B, 6, T, H, W]; one ViT runs on "
                 "both streams", two_stream=True, share_weights=True,
           f1_test_trainval=71.55, f1_test_train=70.04, f1_val=72.18),
    Preset("videomae_b_k710_flow_i3d", "videomae_base", "i3d", True, True, False, "cef1_double", _K710,
           "VideoMAE-B on optical flow alone, I3D head + ArcFace + frame head",
           notes="context row (SEED.md §7 'optical flow alone'); input [B, 3, T, H, W] flow frames (`microact flow`), "
                 "normalised with data.flow_mean / data.flow_std", flow_only=True, f1_val=67.61),
    # Tiny presets: CPU tests and the synthetic demo (no pretrained weights).
    Preset("videomae_tiny_frame_coarse_tsn", "videomae_tiny", "tsn", True, True, True, "cef1_fine_coarse_double", "",
           "tiny ViT (dim 128, depth 4) with the best model's heads, for the demo and tests"),
    Preset("videomae_tiny_timesformer", "videomae_tiny", "timesformer", False, False, False, "ce", "",
           "tiny ViT (dim 128, depth 4) with the TimeSformer head"),
    Preset("videomae_test_frame_coarse_tsn", "videomae_test", "tsn", True, True, True, "cef1_fine_coarse_double", "",
           "test-size ViT (dim 64, depth 2) with the best model's heads, for unit tests"),
)}

OVERRIDES = (
    "num_classes", "num_frames", "img_size", "backbone", "mlp_ratio", "num_heads", "drop_path_rate", "head_dropout",
    "grad_checkpointing", "attn_impl", "sdpa_kernel", "frame_layout", "se_mode", "margin_mode", "arcface_scale",
    "arcface_margin", "load_final_norm", "use_frame", "use_coarse", "use_arcface", "input_mode",
)


def list_models(filter: str = "") -> list[str]:
    """Preset names, optionally filtered by a substring or a shell pattern (``"videomae_b_*"``)."""
    if not filter:
        return list(_PRESETS)
    if any(ch in filter for ch in "*?["):
        return [n for n in _PRESETS if fnmatch.fnmatch(n, filter)]
    return [n for n in _PRESETS if filter in n]


def get_preset(name: str) -> Preset:
    """The :class:`Preset` record of ``name``.

    Raises:
        MicroactError: unknown name (the message lists the valid ones).
    """
    if isinstance(name, Preset):
        return name
    if name not in _PRESETS:
        import difflib

        close = difflib.get_close_matches(str(name), list(_PRESETS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MicroactError(f"unknown model preset {name!r}{hint}; valid presets: {', '.join(_PRESETS)}")
    return _PRESETS[name]


def loss_name(head: str, use_arcface: bool, use_frame: bool, use_coarse: bool) -> str:
    """The seed's loss for a head configuration: CE for linear heads, CE + soft F1 per head otherwise."""
    if use_frame and use_coarse:
        return "cef1_fine_coarse_double"
    if use_frame:
        return "cef1_double"
    if head == "timesformer" or not use_arcface:
        return "ce"
    return "cef1"


def loss_for(preset, **overrides) -> str:
    """``build_loss`` name of a preset after ``use_frame`` / ``use_coarse`` / ``use_arcface`` overrides.

    This is what ``loss.name: auto`` resolves to. ``preset`` may be a name, a :class:`Preset` or a model made by
    :func:`create_model` (its ``preset`` attribute holds the effective record).
    """
    p = getattr(preset, "preset", preset)
    p = get_preset(p)
    flags = {k: overrides.get(k, getattr(p, k)) for k in ("use_arcface", "use_frame", "use_coarse")}
    if not overrides:
        return p.loss
    return loss_name(p.head, **flags)


def create_model(preset, pretrained: Optional[str] = None, taxonomy=None, **overrides: Any):
    """Build a seed-table model.

    Args:
        preset: a name from :func:`list_models` or a :class:`Preset`.
        pretrained: checkpoint to initialise the backbone from (any layout ``load_pretrained`` reads).
        taxonomy: the classes (:class:`~microact.taxonomy.Taxonomy`): the fine head gets its count (unless
            ``num_classes`` says the same), the coarse heads one output per group. ``None``: MA-52 (with
            ``num_classes`` other than 52, classes without a taxonomy, which take no coarse heads).
        **overrides: any of ``OVERRIDES``: num_classes, num_frames, img_size, backbone, mlp_ratio and num_heads
            (a backbone whose MLP ratio or head count differs from the built-in size's, e.g. a Hugging Face
            checkpoint's ``intermediate_size / hidden_size``), drop_path_rate,
            head_dropout, grad_checkpointing, attn_impl, sdpa_kernel, frame_layout, se_mode, margin_mode,
            arcface_scale, arcface_margin, load_final_norm, use_frame, use_coarse, use_arcface, input_mode.

    Returns:
        The :class:`~microact.models.recognizer.Recognizer`; ``model.preset`` is the effective :class:`Preset`
        (overrides applied) and ``model.preset.loss`` the loss name for ``loss.name: auto``.

    Raises:
        MicroactError: unknown preset or override, an impossible head combination, a ``num_classes`` that differs
            from the taxonomy's, or coarse heads for a flat taxonomy.
    """
    from microact.models.recognizer import Recognizer, TwoStreamBackbone, build_recognizer_heads, flat_coarse_message
    from microact.models.videomae import create_backbone
    from microact.taxonomy import MA52

    p = get_preset(preset)
    unknown = [k for k in overrides if k not in OVERRIDES]
    if unknown:
        raise MicroactError(f"create_model({p.name!r}): unknown override {unknown[0]!r}; valid overrides: "
                            f"{', '.join(OVERRIDES)}")
    o = dict(overrides)
    flags = {k: bool(o.pop(k, getattr(p, k))) for k in ("use_arcface", "use_frame", "use_coarse")}
    effective = dataclasses.replace(
        p, backbone=o.pop("backbone", p.backbone), num_frames=int(o.pop("num_frames", p.num_frames)),
        img_size=int(o.pop("img_size", p.img_size)), loss=loss_name(p.head, **flags), **flags)
    num_classes = int(o.pop("num_classes", taxonomy.num_fine if taxonomy is not None else 52))
    if taxonomy is None and num_classes == MA52.num_fine:
        taxonomy = MA52
    if taxonomy is not None and num_classes != taxonomy.num_fine:
        raise MicroactError(f"create_model({p.name!r}): num_classes={num_classes} but the taxonomy lists "
                            f"{taxonomy.num_fine} classes ({taxonomy.describe()})")
    if effective.use_coarse and (taxonomy is None or not taxonomy.has_coarse):
        raise MicroactError(f"model.preset={p.name}: " + flat_coarse_message(taxonomy))
    load_final_norm = o.pop("load_final_norm", None)
    input_mode = o.pop("input_mode", "rgb")

    backbone_kwargs = {k: o.pop(k) for k in ("mlp_ratio", "num_heads", "drop_path_rate", "grad_checkpointing",
                                             "attn_impl", "sdpa_kernel") if k in o}
    output = "pooled" if effective.head == "timesformer" else "map"

    def make_backbone():
        return create_backbone(effective.backbone, output=output, num_frames=effective.num_frames,
                               img_size=effective.img_size, **backbone_kwargs)

    backbone = make_backbone()
    if effective.two_stream:
        backbone = TwoStreamBackbone(backbone, None if effective.share_weights else make_backbone())
    head, frame, coarse_frame = build_recognizer_heads(
        backbone.embed_dim, num_classes, backbone.grid[0], effective.head, effective.use_arcface,
        effective.use_frame, effective.use_coarse, head_dropout=o.pop("head_dropout", 0.5),
        frame_layout=o.pop("frame_layout", "channel_group"), se_mode=o.pop("se_mode", "replace"),
        margin_mode=o.pop("margin_mode", "all"), arcface_scale=o.pop("arcface_scale", 30.0),
        arcface_margin=o.pop("arcface_margin", 0.5),
        num_coarse=taxonomy.num_coarse if taxonomy is not None and taxonomy.has_coarse else MA52.num_coarse)
    assert not o, f"unhandled overrides {sorted(o)}"
    model = Recognizer(backbone, head, frame, coarse_frame, input_mode=input_mode, taxonomy=taxonomy)
    model.preset = effective

    if pretrained:
        from microact.models.checkpoints import load_pretrained

        if "flow" in effective.streams and load_final_norm is None:
            # The seed's flow rows (two-stream, flow alone) come from its optical-flow tree, whose backbone names the
            # final LayerNorm fc_norm, the name the checkpoint conversion gives the pre-trained one: they load it
            # there, unlike the RGB token-map rows (SEED.md §2.2).
            load_final_norm = True
        targets = [model] if not effective.two_stream else [s for s in (backbone.rgb, backbone.flow) if s is not None]
        for target in targets:
            report = load_pretrained(target, pretrained, load_final_norm=load_final_norm)
            print(f"pretrained: {report.summary()}")
    return model


def create_model_from_config(cfg, pretrained: bool = True, taxonomy=None):
    """Build the model a :class:`microact.config.Config` describes (preset + every model switch).

    Maps ``model.*`` (preset, num_classes, drop_path_rate, head_dropout, grad_checkpointing, attn_impl, sdpa_kernel,
    overrides),
    ``data.clip_len`` / ``data.img_size``, ``frame_head.*``, ``arcface.*`` and ``backbone.load_final_norm``.

    Args:
        cfg: the run configuration.
        pretrained: load ``model.pretrained`` when it is set (False when trained weights are loaded afterwards).
        taxonomy: the classes (:func:`microact.taxonomy.resolve_taxonomy` of the recipe, or the one recorded in the
            weights); ``None``: MA-52 when ``data.classes`` is unset, else the recipe's classes file is read.
    """
    if taxonomy is None:
        from microact.taxonomy import resolve_taxonomy

        taxonomy = resolve_taxonomy(cfg)
    m = cfg.model
    # backbone.load_final_norm=false is the seed's behaviour, which depends on the head: the token-map backbone
    # (TSN/I3D rows) loses the pre-trained final norm to the rename, while the stock backbone of the TimeSformer rows
    # loads it into fc_norm (SEED.md §2.2, VIDEOMAE.md §3.6), and so do the flow rows, two-stream and flow alone
    # (their tree names the final LN fc_norm). None lets create_model pick per preset; true loads it in every mode.
    load_final_norm = True if cfg.backbone.load_final_norm else None
    kwargs = dict(
        num_classes=m.num_classes, num_frames=cfg.data.clip_len, img_size=cfg.data.img_size,
        drop_path_rate=m.drop_path_rate, head_dropout=m.head_dropout, grad_checkpointing=m.grad_checkpointing is True,
        attn_impl=m.attn_impl, sdpa_kernel=m.sdpa_kernel, frame_layout=cfg.frame_head.layout,
        se_mode=cfg.frame_head.se_mode, margin_mode=cfg.arcface.margin_mode, arcface_scale=cfg.arcface.scale,
        arcface_margin=cfg.arcface.margin,
        load_final_norm=load_final_norm, input_mode=m.input_mode,
    )
    kwargs.update(m.overrides)
    return create_model(m.preset, pretrained=m.pretrained if pretrained else None, taxonomy=taxonomy, **kwargs)
