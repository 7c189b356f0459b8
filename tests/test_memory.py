"""Training-memory estimates (``microact bench memory``, ``model.grad_checkpointing=auto``), checked without a GPU."""
import functools

import pytest
import torch

from microact.cli import main
from microact.engine.memory import _estimate, _LiveBytes, estimate_preset, max_batch
from microact.losses import build_loss
from microact.models import create_model

PRESET = "videomae_test_frame_coarse_tsn"
TINY = dict(num_frames=4, img_size=32)


def test_tracker_counts_live_storages_and_the_peak():
    with _LiveBytes() as tracker:
        a = torch.ones(1000)  # 4,000 bytes
        b = a + 1  # 8,000 alive
        view = b[:10]  # a view shares b's storage: not counted again
        del a  # 4,000 alive
        c = torch.ones(500, dtype=torch.float64)  # 8,000 alive
        assert tracker.live == 8000
        del b  # still alive through the view
        assert tracker.live == 8000
        del view
        assert tracker.live == 4000
    assert tracker.peak == 8000 and c.numel() == 500


def _step(batch, fake=True, ckpt=False, precision="fp32", world_size=1, fsdp=False):
    if fake:  # a fake-tensor estimate is a pure function of its arguments and costs ~2 s: tests share them
        return _fake_step(batch, ckpt, precision, world_size, fsdp)
    return _estimate(lambda: create_model(PRESET, **TINY), lambda m: build_loss(m.preset.loss, m.num_classes),
                     batch, precision, ckpt, world_size, fsdp, fake=False)


@functools.lru_cache(maxsize=None)
def _fake_step(batch, ckpt, precision, world_size, fsdp):
    return _estimate(lambda: create_model(PRESET, **TINY), lambda m: build_loss(m.preset.loss, m.num_classes),
                     batch, precision, ckpt, world_size, fsdp, fake=True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fake_estimate_equals_the_same_step_run_for_real(precision):
    torch.manual_seed(0)
    fake, real = _step(3, precision=precision), _step(3, fake=False, precision=precision)
    assert fake.peak == real.peak and fake.activations == real.activations


def test_static_parts_follow_from_the_parameter_count():
    model = create_model(PRESET, **TINY)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    est = _step(2)
    assert est.weights == 4 * params + buffers  # fp32 weights + buffers (the position table)
    assert est.gradients == 4 * params
    assert est.optimizer == 8 * params  # AdamW's two fp32 moments
    assert est.peak == est.weights + est.gradients + est.optimizer + est.activations
    half = _step(2, world_size=2, fsdp=True)
    assert half.optimizer == -(-est.optimizer // 2) and half.activations == est.activations
    # the CUDA figure scales the activation part only (the factor measured on an H200, docs/BENCHMARKS.md "Training memory")
    from microact.engine.memory import CUDA_ACTIVATION_FACTOR
    static = est.weights + est.gradients + est.optimizer
    assert est.cuda_peak == pytest.approx(static + CUDA_ACTIVATION_FACTOR * est.activations, abs=1)
    assert est.cuda_peak > est.peak


def test_activations_are_affine_in_batch_and_checkpointing_lowers_them():
    a1, a2, a3 = (_step(b).activations for b in (1, 2, 3))
    assert a2 - a1 == pytest.approx(a3 - a2, rel=0.02) and a2 > a1
    # at batch 3 the peak is the optimizer step (foreach AdamW's temporaries); at 16 it is the saved activations,
    # and each clip adds less with checkpointing (only block inputs are kept)
    per_clip = _step(16).activations - a1
    per_clip_ckpt = _step(16, ckpt=True).activations - _step(1, ckpt=True).activations
    assert 0 < per_clip_ckpt < 0.8 * per_clip


def test_max_batch_agrees_with_brute_force():
    cache = {}

    def peak(b):
        if b not in cache:
            cache[b] = _step(b).peak
        return cache[b]

    budget = (peak(5) + peak(6)) // 2
    assert max_batch(peak, budget) == 5
    assert max(b for b in range(1, 8) if peak(b) <= budget) == 5
    assert max_batch(peak, peak(1) - 1) == 0


def test_preset_estimate_and_cli(capsys):
    est = estimate_preset(PRESET, 2, precision="bf16", **TINY)
    assert est.peak > 0 and est.precision == "bf16"
    assert main(["bench", "memory", "--preset", "nope"]) != 0
    assert "unknown preset; choose from:" in capsys.readouterr().err
    # a budget of 0.1 GiB: the largest-batch search ends after a few estimates (1 without, 2 with checkpointing)
    assert main(["bench", "memory", "--preset", "videomae_tiny_timesformer", "--batch", "1", "2",
                 "--gpu-mem-gib", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "largest micro-batch within 90% of 0.1 GiB" in out and "videomae_tiny_timesformer" in out


def _cfg(**model):
    from microact.config import load_config
    from microact.engine.memory import estimate_config

    overrides = [f"model.preset={PRESET}", "data.clip_len=4", "data.img_size=32", "train.micro_batch=16",
                 "train.global_batch=16", "train.precision=fp32"] + [f"model.{k}={v}" for k, v in model.items()]
    cfg = load_config(None, overrides)
    return cfg, estimate_config


def test_checkpointing_decision_auto_and_warnings(monkeypatch):
    from microact.engine import memory
    from microact.engine.memory import checkpointing_decision

    # Each decision below estimates the same one or two steps again (~2 s each, a dozen in all): the real
    # estimate_config runs once per distinct call and its answer is handed back after that.
    real, seen = memory.estimate_config, {}

    def estimate_once(cfg, micro_batch=None, grad_checkpointing=None, world_size=1, precision=None):
        key = (repr(cfg), micro_batch, grad_checkpointing, world_size, precision)
        if key not in seen:
            seen[key] = real(cfg, micro_batch, grad_checkpointing, world_size, precision)
        return seen[key]

    monkeypatch.setattr(memory, "estimate_config", estimate_once)
    cfg, estimate_config = _cfg(grad_checkpointing="auto")  # (the memoising one: _cfg imports it now)
    off_est = estimate_config(cfg, grad_checkpointing=False)
    off = off_est.cuda_peak  # decisions plan with the CUDA-calibrated peak
    on = estimate_config(cfg, grad_checkpointing=True).cuda_peak
    assert on < off
    assert checkpointing_decision(cfg, None, 1)[0] is False  # CPU: nothing to plan for
    # room for the raw CPU estimate but not for the CUDA one: checkpointing goes on
    assert checkpointing_decision(cfg, int(off_est.peak / 0.9) + 1, 1)[0] is True
    enable, note = checkpointing_decision(cfg, int(off / 0.9) + 1, 1)  # fits without: stays off
    assert enable is False and "auto: off" in note
    enable, note = checkpointing_decision(cfg, int((on + off) / 2 / 0.9), 1)  # fits only with checkpointing
    assert enable is True and "auto: on" in note
    enable, note = checkpointing_decision(cfg, int(on / 2), 1)  # fits neither way
    assert enable is True and "expect out-of-memory" in note and "train.micro_batch" in note
    explicit, _ = _cfg(grad_checkpointing=False)
    keep, note = checkpointing_decision(explicit, int((on + off) / 2 / 0.9), 1)
    assert keep is None and "expect out-of-memory" in note and "model.grad_checkpointing=true" in note


def test_auto_checkpointing_is_a_valid_setting_and_bad_values_are_named():
    from microact.config import ConfigError, load_config

    assert load_config(None, ["model.grad_checkpointing=auto"]).model.grad_checkpointing == "auto"
    with pytest.raises(ConfigError, match="model.grad_checkpointing"):
        load_config(None, ["model.grad_checkpointing=sometimes"])
