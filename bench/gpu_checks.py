"""CUDA correctness checks: the GPU paths compute what the reference computes (and two timings that need them).

    PYTHONPATH=src python bench/gpu_checks.py            # needs a CUDA GPU and transformers
    PYTHONPATH=src python bench/gpu_checks.py cpu        # a dry run of the script on the CPU (slow)

What is checked, each against an independent computation:

1. ViT-B 16x224 (real size, HF's own initialisation, random q/v biases): our backbone and HuggingFace
   ``VideoMAEModel`` with the same weights, forward token maps and input gradients, in fp32 (TF32 off) and under
   bf16 autocast, each against a float64 run of our model. Our error must not exceed HF's by more than 2x,
   and fp32 must be near fp32 rounding.
2. ``torch.compile`` vs eager on CUDA (test-size recognizer, seed loss): loss and every gradient.
3. Fused AdamW (the CUDA default) vs the for-loop AdamW: parameters after three steps.
4. bf16 autocast training step vs an fp32 step on CUDA: loss and gradients within bf16 rounding.
5. ``aug.jitter_erasing_on=device``: ColorJitter and RandomErasing applied on CUDA to a batch of 24 clips of
   16 x 224² equal the loader's OpenCV pixels value for value, without a host-device synchronisation (CUDA's
   sync debug mode set to raise); also times the GPU pass.
6. Each fused attention kernel ``model.sdpa_kernel`` can prefer (flash, cuDNN, memory-efficient) at ViT-B's
   attention shape in bf16: output and gradients against a float64 softmax written out, which kernel PyTorch picks
   by default, and each kernel's forward+backward time at the seed's batch of 24.

Prints one line per check and a summary; exits 1 when a check fails.
"""
from __future__ import annotations

import sys
import time

import torch

from microact.losses import build_loss
from microact.models import create_model
from microact.models.checkpoints import load_pretrained
from microact.models.videomae import create_backbone

DEV = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")  # "cpu": a dry run of the script itself
results: list[tuple[str, bool, str]] = []


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float64."""
    a, ref = a.detach().double(), ref.detach().double()
    return ((a - ref).norm() / ref.norm()).item()


def record(name: str, ok: bool, detail: str) -> None:
    results.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def check_hf_parity() -> None:
    from transformers import VideoMAEConfig, VideoMAEModel

    torch.manual_seed(0)
    frames, size = (16, 224) if DEV.type == "cuda" else (4, 64)  # the CPU dry run checks the script, quickly
    cfg = VideoMAEConfig(use_mean_pooling=False, layer_norm_eps=1e-6, attn_implementation="sdpa", num_frames=frames,
                         image_size=size)  # ViT-B
    hf = VideoMAEModel(cfg)
    with torch.no_grad():  # HF initialises the q/v biases to zero: make them matter
        for layer in hf.encoder.layer:
            layer.attention.attention.query.bias.normal_(0.0, 0.02)
            layer.attention.attention.value.bias.normal_(0.0, 0.02)
    ours = create_backbone("videomae_base", output="map", pos_embed_mode="analytic", num_frames=frames, img_size=size)
    load_pretrained(ours, hf.state_dict(), load_final_norm=True)
    x = torch.randn(2, 3, frames, size, size, device=DEV)

    # float64 reference: our model (its fp32 parity with HF is a CPU unit test), on the same device.
    ref_model = create_backbone("videomae_base", output="map", pos_embed_mode="analytic", num_frames=frames,
                                img_size=size).to(DEV).double()
    ref_model.load_state_dict(ours.state_dict())
    x_ref = x.double().requires_grad_()
    y_ref = ref_model(x_ref).flatten(2).transpose(1, 2)
    target = torch.randn_like(y_ref)
    (y_ref * target).sum().backward()
    del ref_model

    ours.to(DEV)
    hf.to(DEV)
    target_dev = target.float()
    errors = {}
    for precision in ("fp32", "bf16"):
        for name, model in (("ours", ours), ("hf", hf)):
            xi = x.clone().requires_grad_()
            with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                if name == "ours":
                    y = model(xi).flatten(2).transpose(1, 2)
                else:
                    y = model(pixel_values=xi.permute(0, 2, 1, 3, 4)).last_hidden_state
            (y.float() * target_dev).sum().backward()
            errors[precision, name] = (rel(y, y_ref), rel(xi.grad, x_ref.grad))
            model.zero_grad(set_to_none=True)
    for precision, bound in (("fp32", 1e-5), ("bf16", 3e-2)):
        (fo, go), (fh, gh) = errors[precision, "ours"], errors[precision, "hf"]
        ok = fo <= max(2 * fh, bound) and go <= max(2 * gh, bound) and fo <= bound and go <= bound
        record(f"ViT-B vs float64, {precision}", ok,
               f"forward rel err ours {fo:.2e} / HF {fh:.2e}; input-grad rel err ours {go:.2e} / HF {gh:.2e} "
               f"(bound {bound:.0e}, and ours <= 2x HF)")
    del ours, hf
    torch.cuda.empty_cache()


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("videomae_test_frame_coarse_tsn", num_frames=4, img_size=32, head_dropout=0.0,
                        drop_path_rate=0.0).to(DEV)


def step(model, x, labels, criterion, bf16=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x, labels)
    loss = criterion(out.as_seed_tuple(), labels)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for _, p in sorted(model.named_parameters(), key=lambda t: t[0]
                                                            .removeprefix("_orig_mod."))])
    return loss.detach(), grads


def check_compile_and_precision() -> None:
    x = torch.randn(4, 3, 4, 32, 32, device=DEV)
    labels = torch.tensor([0, 5, 17, 40], device=DEV)
    model = tiny()
    criterion = build_loss(model.preset.loss, model.num_classes)
    loss_e, grads_e = step(model, x, labels, criterion)
    compiled = torch.compile(tiny())
    t0 = time.perf_counter()
    loss_c, grads_c = step(compiled, x, labels, criterion)
    record(f"torch.compile vs eager ({DEV.type}, fp32)",
           rel(loss_c, loss_e) <= 1e-5 and rel(grads_c, grads_e) <= 1e-4,
           f"loss rel {rel(loss_c, loss_e):.1e}, grads rel {rel(grads_c, grads_e):.1e} (bounds 1e-5, 1e-4; "
           f"compiled in {time.perf_counter() - t0:.0f} s)")
    loss_b, grads_b = step(model, x, labels, criterion, bf16=True)
    record(f"bf16 autocast step vs fp32 step ({DEV.type})",
           rel(loss_b, loss_e) <= 2e-2 and rel(grads_b, grads_e) <= 5e-2,
           f"loss rel {rel(loss_b, loss_e):.1e}, grads rel {rel(grads_b, grads_e):.1e} (bounds 2e-2, 5e-2)")


def check_fused_adamw() -> None:
    x = torch.randn(4, 3, 4, 32, 32, device=DEV)
    labels = torch.tensor([1, 9, 20, 33], device=DEV)
    finals = []
    for fused in (True, False):
        model = tiny(seed=3)
        criterion = build_loss(model.preset.loss, model.num_classes)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=fused,
                                foreach=None if fused else False)  # fused=False, foreach=False: the for-loop
        for _ in range(3):
            step(model, x, labels, criterion)
            opt.step()
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    diff = (finals[0] - finals[1]).abs().max().item()
    record(f"fused AdamW vs for-loop AdamW ({DEV.type}, 3 steps)", diff <= 1e-5,
           f"max |param diff| {diff:.1e} (bound 1e-5)")


def check_jitter_on_device() -> None:
    import numpy as np

    from microact.config import AugConfig
    from microact.data.device_augment import apply_deferred
    from microact.data.transforms import TrainTransform

    loader = TrainTransform(AugConfig(), 224, rng=0)
    deferring = TrainTransform(AugConfig(jitter_erasing_on="device"), 224, rng=0)
    yy, xx = np.mgrid[0:320, 0:534]
    expected, videos, params = [], [], []
    for k in range(24):
        base = np.stack([(xx * 0.5 + 7 * k) % 256, (yy * 0.7 + xx * 0.1) % 256, 255 - (yy + k) % 256], -1)
        noise = np.random.default_rng(k).normal(0, 6, (16, 320, 534, 3))
        clip = np.clip(base[None] + noise, 0, 255).astype(np.uint8)
        expected.append(loader(clip, np.random.default_rng([k])))
        video, p = deferring(clip, np.random.default_rng([k]))
        videos.append(video), params.append(p)
    video = torch.from_numpy(np.stack(videos)).to(DEV)
    params = torch.from_numpy(np.stack(params))
    if DEV.type == "cuda":
        params = params.pin_memory()  # as the loader delivers it
    got = apply_deferred(video, params)  # warm-up and the result
    if DEV.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # the training loop must not wait for the GPU here
        try:
            apply_deferred(video, params)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    start = time.perf_counter()
    for _ in range(5):
        apply_deferred(video, params)
    if DEV.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / 5 * 1e3
    differing = int((got.cpu().numpy() != np.stack(expected)).sum())
    record(f"ColorJitter + RandomErasing on {DEV.type} vs the loader's OpenCV (24 x 16 x 224²)", differing == 0,
           f"{differing} of {got.numel()} values differ; {ms:.1f} ms per batch on the device")


def check_sdpa_kernels() -> None:
    import torch.nn.functional as F

    from microact.models.videomae import sdpa_kernel_in_use, sdpa_preference

    on_gpu = DEV.type == "cuda"
    heads, tokens, head_dim = 12, (1568 if on_gpu else 196), 64  # ViT-B at 16x224 (the CPU dry run: smaller)
    batch = 24 if on_gpu else 2
    print(f"  SDPA's default kernel for ViT-B bf16 training here: "
          f"{sdpa_kernel_in_use(DEV, torch.bfloat16, heads, tokens, head_dim)}", flush=True)
    gen = torch.Generator().manual_seed(0)
    q, k, v, grad_out = (torch.randn(2, heads, tokens, head_dim, generator=gen).to(DEV) for _ in range(4))
    # float64 reference of output and gradients, written out (no SDPA kernel involved)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    out64 = torch.softmax(q64 @ k64.transpose(-2, -1) * head_dim ** -0.5, dim=-1) @ v64
    out64.backward(grad_out.double())
    big = [torch.randn(batch, heads, tokens, head_dim, device=DEV, dtype=torch.bfloat16, requires_grad=True)
           for _ in range(3)]
    big_grad = torch.randn_like(big[0])
    for name in ("flash", "cudnn", "efficient"):
        used = sdpa_kernel_in_use(DEV, torch.bfloat16, heads, tokens, head_dim, preference=name)
        if used != name:
            print(f"  SDPA {name} kernel: not available for this shape here (PyTorch runs {used} instead)")
            continue
        qb, kb, vb = (t.to(torch.bfloat16).requires_grad_() for t in (q, k, v))
        with sdpa_preference(name):
            out = F.scaled_dot_product_attention(qb, kb, vb)
        out.backward(grad_out.to(torch.bfloat16))
        errors = [rel(a, b) for a, b in ((out, out64), (qb.grad, q64.grad), (kb.grad, k64.grad), (vb.grad, v64.grad))]

        def fwd_bwd():
            with sdpa_preference(name):
                y = F.scaled_dot_product_attention(*big)
            y.backward(big_grad)

        for _ in range(2):
            fwd_bwd()
        if on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            fwd_bwd()
        if on_gpu:
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) / 10 * 1e3
        flops = 3.5 * 4 * batch * heads * tokens ** 2 * head_dim  # forward 2 matmuls, backward 5 (one recomputes)
        record(f"SDPA {name} kernel, bf16, {heads} heads x {tokens} tokens x {head_dim}", max(errors) < 1e-2,
               "relative error vs float64 (out, dq, dk, dv) " + ", ".join(f"{e:.1e}" for e in errors)
               + f" (bound 1e-2); forward+backward at batch {batch}: {ms:.2f} ms ({flops / ms / 1e9:.0f} TFLOP/s)")


def main() -> int:
    if DEV.type == "cuda" and not torch.cuda.is_available():
        print("gpu_checks: no CUDA device here (`python bench/gpu_checks.py cpu` dry-runs the script on the CPU)")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu"
    print(f"gpu_checks on {name} (torch {torch.__version__})", flush=True)
    for check in (check_hf_parity, check_compile_and_precision, check_fused_adamw, check_jitter_on_device,
                  check_sdpa_kernels):
        try:
            check()
        except Exception as e:  # a crash is a failed check; the others still run
            record(check.__name__, False, f"{type(e).__name__}: {e}")
    failed = [n for n, ok, _ in results if not ok]
    print(f"gpu_checks: {len(results) - len(failed)}/{len(results)} passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
