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
