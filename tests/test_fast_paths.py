"""The fast paths compute what the plain paths compute (issue 8 item 5).

Every speed switch of the training stack is checked against its plain counterpart on the test-size recognizer
(``videomae_test_frame_coarse_tsn``: ViT dim 64, depth 2, 4 frames of 32 px, all four seed heads) and the seed
loss:

- ``torch.compile`` (inductor) vs eager: forward outputs and gradients;
- fused / foreach AdamW vs the for-loop AdamW, and ``build_optimizer`` with ``optim.fused``;
- SDPA vs the explicit-softmax attention under bf16 autocast (fp32 is covered in ``test_videomae.py``);
- gradient checkpointing on vs off through the whole recognizer and loss;
- a bf16 autocast training step vs an fp32 step;
- ``train.compile=true`` through the real training loop vs an eager run.

Dropout and drop path are 0 everywhere: the compiled graph draws its random numbers from its own generator, so a
random mask would differ from the eager one by construction and hide any real mismatch.
"""
from __future__ import annotations

import pytest
import torch

from microact.config import OptimConfig
from microact.engine.optim import build_optimizer
from microact.losses import build_loss
from microact.models.presets import create_model

PRESET = "videomae_test_frame_coarse_tsn"
FIELDS = ("fine", "fine_frame", "coarse", "coarse_frame")
# bf16 keeps 8 significant bits: one rounding has relative error <= 2^-8 ~ 3.9e-3 (unit roundoff u).
BF16_U = 2.0 ** -8


def tiny(seed: int = 0, **overrides):
    """The test-size recognizer, deterministic in training mode (no dropout, no drop path)."""
    torch.manual_seed(seed)
    model = create_model(PRESET, num_frames=4, img_size=32, head_dropout=0.0, drop_path_rate=0.0, **overrides)
    with torch.no_grad():  # non-zero q/v biases (zero at init) so the bias path of the attention is exercised
        for blk in model.backbone.blocks:
            blk.attn.q_bias.normal_(0.0, 0.5)
            blk.attn.v_bias.normal_(0.0, 0.5)
    return model


def clone_of(model, **overrides):
    """A second recognizer with other switches and exactly the weights of ``model``."""
    other = tiny(**overrides)
    other.load_state_dict(model.state_dict())
    return other


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 4, 32, 32, generator=gen)  # [B, 3, T, H, W], already "normalised"
    labels = torch.tensor([0, 5, 17, 40])  # fine ids of four different body parts
    return x, labels


def step(model, x, labels, criterion, bf16: bool = False):
    """One forward (optionally under bf16 autocast, as the training loop does) + seed loss + backward.

    Returns:
        (RecognizerOutput, detached loss, {parameter name: gradient}) -- names without a ``_orig_mod.`` prefix.
    """
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x, labels)
    loss = criterion(out.as_seed_tuple(), labels)  # outside autocast, as in engine/train.py
    loss.backward()
    grads = {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()}
    return out, loss.detach(), grads


def flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.flatten().double() for _, g in sorted(grads.items())])


# ----------------------------------------------------------------------------------------------------
# 1. torch.compile vs eager
# ----------------------------------------------------------------------------------------------------


def test_compiled_recognizer_matches_eager(batch):
    x, labels = batch
    eager = tiny()
    criterion = build_loss(eager.preset.loss, 52)
    compiled = torch.compile(clone_of(eager))  # one compile (forward + backward graphs), reused below
    out_e, loss_e, grads_e = step(eager, x, labels, criterion)
    out_c, loss_c, grads_c = step(compiled, x, labels, criterion)

    # fp32 throughout: inductor only reorders / fuses float32 arithmetic, so the differences are a few ulps of the
    # largest intermediate (logits reach |30|, ulp 2e-6), far below 1e-4.
    for field in FIELDS:
        e, c = getattr(out_e, field), getattr(out_c, field)
        assert c.dtype == e.dtype == torch.float32 and c.shape == e.shape, field
        assert torch.allclose(c, e, rtol=1e-5, atol=1e-4), (field, (c - e).abs().max().item())
    assert torch.allclose(loss_c, loss_e, rtol=1e-5, atol=1e-5), (loss_c.item(), loss_e.item())
    assert grads_c.keys() == grads_e.keys()
    for name, g in grads_e.items():
        # gradients span 1e-4 .. 60 across tensors: tolerance relative to each tensor's largest entry
        tol = 1e-4 * max(g.abs().max().item(), 1e-3)
        assert (grads_c[name] - g).abs().max().item() <= tol, name

    # the compiled module keeps working after the comparison (a second call must not recompile into a different
    # result, e.g. when a guard fails on the mutated .grad fields)
    out_c2, loss_c2, _ = step(compiled, x, labels, criterion)
    assert torch.equal(out_c2.fine, out_c.fine) and torch.equal(loss_c2, loss_c)


# ----------------------------------------------------------------------------------------------------
# 2. fused / foreach / for-loop AdamW
# ----------------------------------------------------------------------------------------------------


def _adamw_run(kind: str, params0: list[torch.Tensor], grads: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Parameters after ``len(grads)`` AdamW steps with the given gradients; two groups (with and without decay)."""
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    flags = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[kind]
    opt = torch.optim.AdamW([{"params": params[:2], "weight_decay": 0.05}, {"params": params[2:], "lr": 3e-4,
                                                                            "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.999), eps=1e-8, **flags)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def test_fused_and_foreach_adamw_match_the_for_loop():
    gen = torch.Generator().manual_seed(3)
    shapes = [(64, 32), (32,), (52, 64), (7,)]
    params0 = [torch.randn(s, generator=gen) for s in shapes]
    # gradients of very different scales, some exactly zero: Adam's eps and the bias corrections both matter
    grads = [[torch.randn(s, generator=gen) * scale for s, scale in zip(shapes, (1.0, 1e-3, 10.0, 0.0))]
             for _ in range(5)]
    reference = _adamw_run("loop", params0, grads)
    for kind in ("foreach", "fused"):
        result = _adamw_run(kind, params0, grads)
        for i, (r, p) in enumerate(zip(reference, result)):
            assert (r - p).abs().max().item() <= 1e-6, (kind, i)
    # and the steps did move the parameters (a no-op optimiser would pass the comparison)
    assert all((r - p0).abs().max() > 1e-4 for r, p0 in zip(reference[:3], params0[:3]))
    # independent check of the first step with zero weight decay: Adam's first update is lr * g / (|g| + eps)
    one = _adamw_run("fused", params0, grads[:1])
    g = grads[0][2]
    expected = params0[2] - 3e-4 * g / (g.abs() + 1e-8)
    assert torch.allclose(one[2], expected, atol=1e-6)


def test_build_optimizer_fused_switch_on_cpu(batch):
    """``optim.fused=true`` (the default) on CPU trains exactly like the plain AdamW and like torch's fused AdamW."""
    x, labels = batch
    model_a = tiny()
    model_b = clone_of(model_a)
    model_c = clone_of(model_a)
    criterion = build_loss(model_a.preset.loss, 52)
    cfg = OptimConfig(lr=1e-3, weight_decay=0.05)
    opt_a = build_optimizer(model_a, cfg, torch.device("cpu"))  # fused switch on
    opt_b = build_optimizer(model_b, OptimConfig(lr=1e-3, weight_decay=0.05, fused=False), torch.device("cpu"))
    # the same parameter groups as build_optimizer (lr, weight decay), run by torch's fused CPU kernel (torch >= 2.4)
    opt_c = torch.optim.AdamW(_groups_like(opt_a, model_a, model_c), lr=1e-3, fused=True)
    assert opt_c.param_groups[0]["fused"] is True
    assert [len(g["params"]) for g in opt_a.param_groups] == [len(g["params"]) for g in opt_c.param_groups]
    assert len(opt_a.param_groups) >= 2  # seed rules: backbone lr x 0.1, no decay on norms
    for _ in range(3):
        # identical gradients for all three: computed once on model_a, copied to the others
        _, _, grads = step(model_a, x, labels, criterion)
        for m in (model_b, model_c):
            for n, p in m.named_parameters():
                p.grad = grads[n].clone()
        for opt in (opt_a, opt_b, opt_c):
            opt.step()
    pa, pb, pc = (dict(m.named_parameters()) for m in (model_a, model_b, model_c))
    for n in pa:
        assert (pa[n] - pb[n]).abs().max().item() <= 1e-6, n
        assert (pa[n] - pc[n]).abs().max().item() <= 1e-6, n


def _groups_like(opt, model_src, model_dst):
    """``opt``'s parameter groups (lr, weight decay) over ``model_dst``'s parameters of the same names."""
    by_id = {id(p): n for n, p in model_src.named_parameters()}
    dst = dict(model_dst.named_parameters())
    return [{"params": [dst[by_id[id(p)]] for p in g["params"]], "lr": g["lr"], "weight_decay": g["weight_decay"],
             "betas": g["betas"], "eps": g["eps"]} for g in opt.param_groups]


# ----------------------------------------------------------------------------------------------------
# 3. SDPA vs manual attention under bf16 autocast
# ----------------------------------------------------------------------------------------------------


def test_sdpa_matches_manual_attention_under_bf16_autocast(batch):
    x, labels = batch
    sdpa = tiny(attn_impl="sdpa")
    manual = clone_of(sdpa, attn_impl="manual")
    criterion = build_loss(sdpa.preset.loss, 52)
    out_ref, _, grads_ref = step(sdpa, x, labels, criterion)  # fp32 reference
    out_s, loss_s, grads_s = step(sdpa, x, labels, criterion, bf16=True)
    out_m, loss_m, grads_m = step(manual, x, labels, criterion, bf16=True)

    # Tolerance: both paths round every matmul input to bf16 (unit roundoff u = 2^-8) but in different places
    # (SDPA fuses scale, softmax and the second matmul; the manual path rounds q*scale, the scores and the
    # probabilities separately). Through two blocks and the final LayerNorm the features agree to a few u, i.e.
    # ~1e-2 relative. The lead logits are s * cos(theta + m) with s = 30 computed in fp32 from those features, so
    # their error is about s * (few u) ~ 0.1 on values up to 30: we allow s * 4u = 0.47 (measured: ~0.02). The
    # frame heads stay in bf16 (outputs ~0.1): allowed 4u of their largest value, i.e. a few bf16 ulps.
    scale = sdpa.cls_head.fc_cls.scale
    for field in FIELDS:
        ref, s, m = (getattr(o, field) for o in (out_ref, out_s, out_m))
        assert s.dtype == m.dtype, field
        bound = scale * 4 * BF16_U if field in ("fine", "coarse") else 4 * BF16_U * ref.abs().max().item()
        assert (s.float() - m.float()).abs().max().item() <= bound, field
        # both are bf16 approximations of the same fp32 result (guards against both being wrong the same way)
        assert (s.float() - ref).abs().max().item() <= bound, field
        assert (m.float() - ref).abs().max().item() <= bound, field
    # the loss (~18) is a mean of CE terms, each changing by at most 2 x the logit error; measured ~4e-3
    assert abs(loss_s.item() - loss_m.item()) <= 0.05, (loss_s.item(), loss_m.item())

    # Gradients: parameters and gradients stay fp32 (autocast casts copies), but the backward matmuls run in bf16.
    # Per tensor, the difference is measured against the tensor's fp32 gradient norm: a few u each.
    for name, g_ref in grads_ref.items():
        assert grads_s[name].dtype == grads_m[name].dtype == torch.float32, name
        norm = g_ref.norm().item()
        assert (grads_s[name] - grads_m[name]).norm().item() <= 8 * BF16_U * norm + 1e-8, name
    cos = torch.nn.functional.cosine_similarity(flat(grads_s), flat(grads_m), dim=0).item()
    assert cos >= 0.9999, cos


# ----------------------------------------------------------------------------------------------------
# 4. gradient checkpointing on vs off
# ----------------------------------------------------------------------------------------------------


def test_grad_checkpointing_gives_identical_loss_and_grads(batch):
    x, labels = batch
    plain = tiny()
    ckpt = clone_of(plain, grad_checkpointing=True)
    assert ckpt.backbone.grad_checkpointing and not plain.backbone.grad_checkpointing
    criterion = build_loss(plain.preset.loss, 52)
    out_p, loss_p, grads_p = step(plain, x, labels, criterion)
    out_c, loss_c, grads_c = step(ckpt, x, labels, criterion)
    # Recomputation replays the same fp32 kernels on the same inputs (no dropout, no drop path): identical.
    for field in FIELDS:
        assert torch.equal(getattr(out_c, field), getattr(out_p, field)), field
    assert torch.equal(loss_c, loss_p)
    for name, g in grads_p.items():
        assert torch.allclose(grads_c[name], g, rtol=0, atol=1e-6 * max(g.abs().max().item(), 1.0)), name
    # the checkpointed backbone did take the recompute path: the start of each block ran again in backward (the
    # block's own forward hook does not fire twice: the recompute stops once the saved tensors are rebuilt)
    calls = []
    hook = ckpt.backbone.blocks[0].norm1.register_forward_hook(lambda *a: calls.append(1))
    step(ckpt, x, labels, criterion)
    hook.remove()
    assert len(calls) == 2


# ----------------------------------------------------------------------------------------------------
# 5. bf16 autocast step vs fp32 step
# ----------------------------------------------------------------------------------------------------


def test_bf16_autocast_step_matches_fp32_step(batch):
    x, labels = batch
    model32 = tiny()
    model16 = clone_of(model32)
    criterion = build_loss(model32.preset.loss, 52)
    out32, loss32, grads32 = step(model32, x, labels, criterion)
    out16, loss16, grads16 = step(model16, x, labels, criterion, bf16=True)

    # the cosine-margin layers (fine and coarse lead classifiers) run in fp32 under autocast (SEED.md §12 row 4)
    assert out16.fine.dtype == torch.float32 and out16.coarse.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feat = torch.randn(3, model16.cls_head.fc_cls.in_features).bfloat16()
        assert model16.cls_head.fc_cls(feat).dtype == torch.float32
    # the rest of the network did run in bf16 (otherwise this test would compare fp32 with fp32)
    assert out16.fine_frame.dtype == torch.bfloat16

    # Loss tolerance: the logits carry an absolute error of about s * (few u) (see the SDPA test); the CE of one
    # sample changes by at most 2 x the max logit error and the soft-F1 terms are bounded by probability changes,
    # so the mean loss moves by well under 1 % of its value (~18 here); measured ~5e-4.
    logit_err = max((getattr(out16, f).float() - getattr(out32, f)).abs().max().item() for f in ("fine", "coarse"))
    assert logit_err <= 30 * 4 * BF16_U, logit_err
    assert abs(loss16.item() - loss32.item()) <= 0.01 * abs(loss32.item()), (loss16.item(), loss32.item())

    # parameters and their gradients stay fp32 under autocast (the optimiser state is fp32 master weights)
    assert all(p.dtype == torch.float32 for p in model16.parameters())
    assert all(g.dtype == torch.float32 for g in grads16.values())
    cos = torch.nn.functional.cosine_similarity(flat(grads16), flat(grads32), dim=0).item()
    assert cos >= 0.999, cos
    # Per tensor, a few u of the tensor's own gradient norm -- with a floor at 3e-4 of the whole gradient's norm:
    # the coarse frame head's SE weights get a gradient ~7e-6 of the total that is a near-cancelling sum of
    # per-row terms, and bf16 rounding of those terms leaves ~20 % of it (measured 4.6e-4 against a floor bound of
    # 3e-3; the SDPA and manual bf16 paths agree on it to 0.3 %, so it is rounding, not a wrong path).
    floor = 3e-4 * flat(grads32).norm().item()
    for name, g in grads32.items():
        assert (grads16[name] - g).norm().item() <= 8 * BF16_U * max(g.norm().item(), floor), name

    # one optimiser step on each: an SGD step moves the weights by lr * grad, so they stay within lr * grad error
    lr = 0.1
    for model, grads in ((model32, grads32), (model16, grads16)):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p -= lr * grads[n]
    p32, p16 = dict(model32.named_parameters()), dict(model16.named_parameters())
    for n in p32:
        assert (p16[n] - p32[n]).abs().max().item() <= lr * (grads16[n] - grads32[n]).abs().max().item() + 1e-6, n


# ----------------------------------------------------------------------------------------------------
# 6. train.compile=true through the real training loop
# ----------------------------------------------------------------------------------------------------


def test_training_loop_with_compile_matches_eager(make_video, tmp_path):
    from safetensors.torch import load_file

    from microact.config import load_config
    from microact.engine.builders import build_model
    from microact.engine.train import seed_everything, train

    data = tmp_path / "data"
    lines = []
    for i in range(4):
        make_video(f"v{i}.mp4", num_frames=8, height=40, width=32, seed=i, folder=data)
        lines.append(f"v{i}.mp4 {(0, 5, 17, 40)[i]}")
    (data / "train.txt").write_text("\n".join(lines) + "\n")

    def run(compile_: bool):
        cfg = load_config(None, [
            f"model.preset={PRESET}", "model.num_classes=52", "model.head_dropout=0.0", "model.drop_path_rate=0.0",
            f"data.root={data}", "data.train_lists=[train.txt]", "data.val_list=null",
            "data.clip_len=4", "data.img_size=32", "data.num_workers=0", "aug.color_jitter=false",
            "train.epochs=2", "train.global_batch=4", "train.micro_batch=4", "train.precision=fp32",
            "train.max_steps=2", "train.tensorboard=false", "train.log_every=1", "train.device=cpu",
            f"train.compile={'true' if compile_ else 'false'}", "optim.lr=1e-3", "sched.warmup_epochs=0"])
        out = tmp_path / ("compiled" if compile_ else "eager")
        assert train(cfg, out) == 0
        return load_file(str(out / "model_final.safetensors"))

    eager = run(False)
    torch._dynamo.reset()  # a fresh compile inside the loop, not the compiled code left by an earlier test
    frames = torch._dynamo.utils.counters["frames"]["ok"]
    compiled = run(True)
    assert torch._dynamo.utils.counters["frames"]["ok"] > frames  # the loop did run the model through dynamo
    assert eager.keys() == compiled.keys()
    # the runs did train: two steps moved the weights away from the initialisation the loop starts from
    seed_everything(0)
    init = build_model(load_config(None, [f"model.preset={PRESET}", "model.head_dropout=0.0",
                                          "model.drop_path_rate=0.0", "data.clip_len=4", "data.img_size=32"]))
    init = init.state_dict()
    assert sum(not torch.equal(init[k], eager[k]) for k in eager) > len(eager) // 2
    for k, w in eager.items():
        # two AdamW steps of lr 1e-3: each parameter moves by up to ~2e-3 (Adam's early steps are ~ lr * sign(g)),
        # so a wrong gradient shows at the 1e-4 scale; inductor's fp32 reordering stays far below it
        assert torch.allclose(compiled[k], w, rtol=0, atol=2e-5), (k, (compiled[k] - w).abs().max().item())


def test_patch_embedding_matmul_equals_conv3d():
    """The tubelet embedding runs as one matmul; it must equal the Conv3d whose weight it holds (fp32 and bf16)."""
    from microact.models.videomae import PatchEmbed

    torch.manual_seed(0)
    embed = PatchEmbed(in_chans=3, embed_dim=48, patch_size=8, tubelet_size=2)
    x = torch.randn(2, 3, 6, 32, 24)
    ref = torch.nn.functional.conv3d(x, embed.proj.weight, embed.proj.bias, stride=(2, 8, 8))  # [B, D, T', H', W']
    ref = ref.flatten(2).transpose(1, 2)  # [B, N, D]
    torch.testing.assert_close(embed(x), ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = embed(x)
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)


def test_inference_fast_path_equals_autograd_path_and_keeps_hooked_outputs():
    """Without autograd the blocks update their own temporaries in place; the output must not change, and a tensor a
    forward hook captured from a block must not be modified by the blocks after it."""
    from microact.models.videomae import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("videomae_test", output="map", num_frames=4, img_size=32).eval()
    captured = {}

    def keep_output(module, inputs, output):  # returns None: the output itself is not replaced
        captured["block0"] = (output, output.clone())

    backbone.blocks[0].register_forward_hook(keep_output)
    x = torch.randn(2, 3, 4, 32, 32)
    with_grad = backbone(x)
    captured.clear()
    with torch.no_grad():
        fast = backbone(x)
    torch.testing.assert_close(fast, with_grad.detach(), rtol=0, atol=0)
    kept, copy_at_hook_time = captured["block0"]
    torch.testing.assert_close(kept, copy_at_hook_time, rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(backbone(x), fast, rtol=0, atol=0)
