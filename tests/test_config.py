"""Typed config: loading, overrides, validation messages, round trip."""
from __future__ import annotations

import pytest
import yaml

from microact.config import Config, ConfigError, config_from_dict, load_config, parse_override


def test_defaults_are_the_seed_best_model():
    cfg = load_config()
    assert cfg.model.preset == "videomae_b_k710_frame_coarse_tsn"
    assert (cfg.optim.lr, cfg.optim.backbone_lr_mult, cfg.optim.weight_decay) == (3e-4, 0.1, 0.01)
    assert (cfg.train.epochs, cfg.train.global_batch, cfg.train.precision, cfg.train.seed) == (42, 24, "fp16", 0)
    assert cfg.frame_head.layout == "channel_group" and cfg.frame_head.se_mode == "replace"
    assert cfg.arcface.margin_mode == "all" and cfg.backbone.load_final_norm is False
    assert (cfg.eval.val_clips, cfg.eval.test_clips, cfg.eval.view) == (2, 3, "portrait373")
    assert cfg.aug.rrc_area == (0.6, 1.0) and cfg.aug.erase_area == (0.02, 0.2)


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 5}, "data": {"root": "/x"}}))
    cfg = load_config(path, ["train.epochs=2", "optim.lr=1e-3", "aug.rrc_area=[0.5, 1]", "optim.grad_clip=null",
                             "data.val_list=val_list_videos.txt", "model.overrides={num_frames: 8}"])
    assert cfg.train.epochs == 2 and cfg.data.root == "/x"
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.aug.rrc_area == (0.5, 1.0) and cfg.optim.grad_clip is None
    assert cfg.data.val_list == "val_list_videos.txt" and cfg.model.overrides == {"num_frames": 8}


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=1", ["optim.lrr", "unknown key", "lr", "did you mean 'lr'"]),
    ("trian.epochs=1", ["trian", "unknown key", "train"]),
    ("train.precision=fp8", ["train.precision", "fp8", "fp16", "bf16", "fp32"]),
    ("train.epochs=abc", ["train.epochs", "integer"]),
    ("train.epochs=0", ["train.epochs", "> 0"]),
    ("optim.lr=-1", ["optim.lr", "> 0"]),
    ("data.clip_len=0", ["data.clip_len", "> 0"]),
    ("data.prefetch_factor=0", ["data.prefetch_factor", "> 0"]),
    ("data.decode_threads=-1", ["data.decode_threads", ">= 0"]),
    ("aug.rrc_area=[0.9, 0.1]", ["aug.rrc_area"]),
    ("aug.flip_prob=2", ["aug.flip_prob", "[0, 1]"]),
    ("train.micro_batch=5", ["global_batch", "micro_batch", "multiple"]),
    ("model.num_classes=10", ["model.num_classes", "data.num_classes"]),
    ("eval.view=square", ["eval.view", "portrait373", "three_crop"]),
    ("model.sdpa_kernel=fast", ["model.sdpa_kernel", "cudnn", "efficient"]),
    ("train.compile=maybe", ["train.compile", "true or false"]),
    ("aug.rrc_area=[1]", ["aug.rrc_area", "2 values"]),
    ("sched.cosine_t_max=0", ["sched.cosine_t_max", "> 0"]),
    ("sched.cosine_t_max=-43", ["sched.cosine_t_max", "> 0"]),
    ("optim.betas=[0.9, 1.5]", ["optim.betas", "[0, 1)"]),
    ("sched.eta_min=2", ["sched.eta_min", "[0, 1]"]),
    ("train.max_steps=0", ["train.max_steps", "> 0"]),
    ("predict.top_k=0", ["predict.top_k", "> 0"]),
    ("noequals", ["key=value"]),
])
def test_bad_values_are_rejected_with_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    for word in words:
        assert word in message, message


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml.*YAML"):
        load_config(broken)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"train": {"epochz": 1}}))
    with pytest.raises(ConfigError, match=r"wrong.yaml: train.epochz: unknown key"):
        load_config(wrong)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["train.epochs=7", "sched.cosine_step=iter", "crop.margins=[-1, -2, 3, 4]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert isinstance(config_from_dict({}), Config)


def test_parse_override_values():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=some/path.txt") == ("a", "some/path.txt")


# ---- recipes against the spec ---------------------------------------------------------------------
# Numbers typed from /work/shared/spec/SEED.md and VIDEOMAE.md (section named per column), not from the recipes.

from pathlib import Path  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN, TRAINVAL = ["train_list_videos.txt"], ["train_list_videos.txt", "val_list_videos.txt"]
_B, _L, _H = (0.6, 1.0), (0.5, 1.0), (0.5, 1.0)  # RRC area: §5.4 (B rows), §5.8 (Large, Huge)
_PORTRAIT, _MMA2 = (1 / 3, 1.0), (0.75, 4 / 3)  # RRC w/h: §5.4; mmaction2 default (§5.8 two-stream RGB branch)

# recipe: (preset, init checkpoint §6.4, train lists §6.4, epochs §6.4, cosine T_max §6.4, clips/step §6.4 with
#          §12 row 6's 1-GPU reading, test clips §4/§6.4, RRC area §5.4/§5.8, RRC aspect §5.4/§5.8,
#          RandomErasing max area §5.4/§5.8)
SEED_RECIPES = {
    "videomae_b_ssv2_timesformer_train": ("videomae_b_ssv2_timesformer", "vit_b_hybrid_pt_800e_ssv2_ft.pth", TRAIN,
                                          42, 43, 24, 3, _B, _PORTRAIT, 0.2),
    "videomae_b_k710_timesformer_trainval": ("videomae_b_k710_timesformer", "vit_b_hybrid_pt_800e_k710_ft.pth",
                                             TRAINVAL, 42, 43, 24, 3, _B, _PORTRAIT, 0.2),
    "videomae_b_k710_frame_i3d_train": ("videomae_b_k710_frame_i3d", "vit_b_hybrid_pt_800e_k710_ft.pth", TRAIN,
                                        42, 43, 24, 3, _B, _PORTRAIT, 0.2),
    "videomae_b_k710_frame_i3d_trainval": ("videomae_b_k710_frame_i3d", "vit_b_hybrid_pt_800e_k710_ft.pth", TRAINVAL,
                                           42, 43, 24, 3, _B, _PORTRAIT, 0.2),
    "videomae_b_k710_frame_coarse_i3d_train": ("videomae_b_k710_frame_coarse_i3d", "vit_b_hybrid_pt_800e_k710_ft.pth",
                                               TRAIN, 42, 43, 24, 3, _B, _PORTRAIT, 0.2),
    "videomae_b_k710_frame_coarse_i3d_trainval": ("videomae_b_k710_frame_coarse_i3d",
                                                  "vit_b_hybrid_pt_800e_k710_ft.pth", TRAINVAL, 42, 43, 24, 3, _B,
                                                  _PORTRAIT, 0.2),
    "videomae_b_k710_frame_coarse_tsn_train": ("videomae_b_k710_frame_coarse_tsn", "vit_b_hybrid_pt_800e_k710_ft.pth",
                                               TRAIN, 42, 43, 24, 3, _B, _PORTRAIT, 0.2),
    "videomae_b_k710_frame_coarse_tsn_trainval": ("videomae_b_k710_frame_coarse_tsn",
                                                  "vit_b_hybrid_pt_800e_k710_ft.pth", TRAINVAL, 42, 43, 24, 3, _B,
                                                  _PORTRAIT, 0.2),
    "videomae_l_k700_timesformer_trainval": ("videomae_l_k700_timesformer", "vit_l_hybrid_pt_800e_k700_ft.pth",
                                             TRAINVAL, 38, 39, 10, 2, _L, _PORTRAIT, 0.3),
    "videomae_h_timesformer_train": ("videomae_h_timesformer", "vit_h_hybrid_pt_k710_ft_ak_ft.pth", TRAIN,
                                     36, 37, 6, 2, _H, _PORTRAIT, 0.2),
    "videomae_h_timesformer_trainval": ("videomae_h_timesformer", "vit_h_hybrid_pt_k710_ft_ak_ft.pth", TRAINVAL,
                                        36, 37, 6, 2, _H, _PORTRAIT, 0.2),
    # §6.4 "Further rows" (batch 12, 42 (43), test 2) and §5.8 "two-stream RGB branch": RRC (0.3, 1), default aspect
    "videomae_b_k710_twostream_i3d_trainval": ("videomae_b_k710_twostream_i3d", "vit_b_hybrid_pt_800e_k710_ft.pth",
                                               TRAINVAL, 42, 43, 12, 2, (0.3, 1.0), _MMA2, 0.2),
    # §7 "two-stream RGB+OF (weight sharing)" (ModelGroup5): the same recipe with one backbone, both splits
    "videomae_b_k710_twostream_shared_i3d_train": ("videomae_b_k710_twostream_shared_i3d",
                                                   "vit_b_hybrid_pt_800e_k710_ft.pth", TRAIN, 42, 43, 12, 2,
                                                   (0.3, 1.0), _MMA2, 0.2),
    "videomae_b_k710_twostream_shared_i3d_trainval": ("videomae_b_k710_twostream_shared_i3d",
                                                      "vit_b_hybrid_pt_800e_k710_ft.pth", TRAINVAL, 42, 43, 12, 2,
                                                      (0.3, 1.0), _MMA2, 0.2),
    # §7 "optical flow alone" (val 67.61; the seed's OF-Modal README): the two-stream rows' recipe, train split
    "videomae_b_k710_flow_i3d_train": ("videomae_b_k710_flow_i3d", "vit_b_hybrid_pt_800e_k710_ft.pth", TRAIN, 42, 43,
                                       12, 2, (0.3, 1.0), _MMA2, 0.2),
}


def test_every_recipe_is_in_the_spec_table():
    names = {p.stem for p in CONFIGS.glob("*.yaml")} - {"tiny_synth", "official_videomae_recipe"}
    assert names == set(SEED_RECIPES)


@pytest.mark.parametrize("stem", sorted(SEED_RECIPES))
def test_seed_recipe_matches_the_spec(stem):
    from microact.models.presets import get_preset

    preset, ckpt, lists, epochs, t_max, batch, test_clips, rrc_area, rrc_aspect, erase_max = SEED_RECIPES[stem]
    cfg = load_config(CONFIGS / f"{stem}.yaml")
    assert cfg.model.preset == preset
    assert get_preset(preset).checkpoint == ckpt and cfg.model.pretrained.endswith(ckpt)
    assert cfg.data.train_lists == lists and (cfg.data.val_list is None) == (lists == TRAINVAL)
    assert (cfg.train.epochs, cfg.sched.cosine_t_max) == (epochs, t_max)
    assert (cfg.train.global_batch, cfg.train.micro_batch) == (batch, batch)
    assert (cfg.eval.val_clips, cfg.eval.test_clips, cfg.eval.view) == (2, test_clips, "portrait373")  # §4, §5.7
    assert cfg.aug.rrc_area == pytest.approx(rrc_area) and cfg.aug.rrc_aspect == pytest.approx(rrc_aspect)
    assert cfg.aug.erase_area == pytest.approx((0.02, erase_max)) and cfg.aug.erase_prob == 0.5  # §5.6
    assert cfg.aug.color_jitter and cfg.aug.flip_prob == 0.5  # §5.4
    # Shared by all rows (§6.1, §6.3, §6.4): AdamW 3e-4, backbone x0.1, wd 0.01 (norm 0), no layer decay, the same
    # warm-up, per-epoch cosine, fp16, 16 frames at 224, drop path 0, dropout 0.5, no clipping/EMA/smoothing.
    o, s, t = cfg.optim, cfg.sched, cfg.train
    assert (o.lr, o.backbone_lr_mult, o.weight_decay, o.betas, o.eps) == (3e-4, 0.1, 0.01, (0.9, 0.999), 1e-8)
    assert o.norm_no_decay and o.layer_decay is None and o.grad_clip is None
    assert (s.warmup_epochs, s.warmup_start_factor, s.cosine_step, s.eta_min) == (2, 0.1, "epoch", 0.0)
    assert (t.precision, t.seed, t.ema_decay, t.select) == ("fp16", 0, None, "last")
    assert (cfg.data.clip_len, cfg.data.img_size) == (16, 224)
    assert (cfg.model.drop_path_rate, cfg.model.head_dropout, cfg.loss.name, cfg.loss.label_smoothing) == \
        (0.0, 0.5, "auto", 0.0)
    assert (cfg.arcface.scale, cfg.arcface.margin, cfg.arcface.margin_mode) == (30.0, 0.5, "all")  # §2.4


def test_official_recipe_matches_videomae_md_section_4():
    cfg = load_config(CONFIGS / "official_videomae_recipe.yaml")
    o, s, t = cfg.optim, cfg.sched, cfg.train
    assert cfg.model.preset == "videomae_b_k710_frame_coarse_tsn"
    assert o.lr == pytest.approx(1e-3 * t.global_batch / 256)  # §4.1 lr x total_batch/256, §4.2 ViT-B base 1e-3
    assert (o.weight_decay, o.betas, o.eps, o.layer_decay) == (0.05, (0.9, 0.999), 1e-8, 0.75)  # §4.1, §4.3
    assert (cfg.model.drop_path_rate, cfg.model.head_dropout) == (0.1, 0.0)  # §4.1 regularisation, §4.7
    assert cfg.loss.label_smoothing == 0.1 and o.grad_clip is None  # §4.1 labels, precision
    assert (s.warmup_epochs, s.warmup_start_factor, s.cosine_step) == (5, 0.0, "iter")  # §4.1 schedule, warm-up bug
    assert s.cosine_t_max == t.epochs and s.eta_min == pytest.approx(1e-6 / 1e-3)  # cosine to min_lr 1e-6 (scaled)
    assert t.precision == "fp16" and t.ema_decay is None  # §4.1 precision, model_ema off


# ---- errors say whether the file or a command-line override set the bad key ---------------------------


@pytest.mark.parametrize("override, starts", [
    ("train.epoch=1", "override 'train.epoch=1': unknown key; valid keys in 'train'"),
    ("train.epochs=one", "override 'train.epochs=one': expected an integer, got 'one'"),
    ("train.micro_batch=5", "override 'train.micro_batch=5': train.global_batch (24) must be a multiple"),
    ("aug={rrc_area: [1]}", "override 'aug={rrc_area: [1]}': aug.rrc_area: expected 2 values"),
    ("-q=1", "override '-q=1': '-q' is not a dotted key"),
])
def test_override_errors_name_the_override_not_the_file(tmp_path, override, starts):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"train": {"epochs": 5}}))
    with pytest.raises(ConfigError) as err:
        load_config(recipe, ["train.seed=1", override])
    message = str(err.value)
    assert message.startswith(starts), message
    assert "recipe.yaml" not in message
    if override == "train.epoch=1":
        assert "did you mean 'epochs'" in message


def test_file_errors_still_name_the_file_with_overrides(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"train": {"epochz": 1, "global_batch": 10}}))
    with pytest.raises(ConfigError, match=r"recipe.yaml: train.epochz: unknown key"):
        load_config(recipe, ["train.epochs=2"])
    recipe.write_text(yaml.safe_dump({"train": {"global_batch": 10}}))
    # the rule between two keys is blamed on the override only when it set one of them
    with pytest.raises(ConfigError, match=r"^override 'train.micro_batch=4': train.global_batch \(10\)"):
        load_config(recipe, ["train.micro_batch=4"])
    with pytest.raises(ConfigError, match=r"recipe.yaml: train.global_batch \(10\)"):
        load_config(recipe, ["train.epochs=2"])
    # an override that replaces a bad value of the file fixes it
    recipe.write_text(yaml.safe_dump({"train": {"epochs": "many"}}))
    assert load_config(recipe, ["train.epochs=2"]).train.epochs == 2
