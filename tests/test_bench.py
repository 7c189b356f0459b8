"""Benchmarks run end to end on small inputs and their figures are consistent with each other (never timed)."""
import pytest
import torch

from microact.bench.backbone import format_table, run_benchmark


def test_bench_backbone_figures_are_consistent():
    # a small clip: the bookkeeping checked here does not depend on its size
    res = run_benchmark("videomae_test", batches=[1], precisions=["fp32", "bf16"], repeats=2,
                        device=torch.device("cpu"), progress=False, num_frames=4, img_size=64)
    assert res["clip"] == "4x64"
    assert res["parity_max_abs_diff_fp32"] < 1e-5  # same function as HF VideoMAE on the same weights
    assert len(res["cells"]) == 4  # forward / forward+backward x fp32 / bf16
    for c in res["cells"]:
        for impl in ("ours", "hf_sdpa", "hf_eager"):
            runs = c["ms_all"][impl]
            assert len(runs) == 2
            assert c["ms_best"][impl] == min(runs) and c["ms"][impl] == pytest.approx(sum(runs) / 2)
        assert c["best_speedup_vs_hf_sdpa"] == pytest.approx(c["ms_best"]["hf_sdpa"] / c["ms_best"]["ours"])
        assert c["speedup_vs_hf_eager"] == pytest.approx(c["ms"]["hf_eager"] / c["ms"]["ours"])
        assert c["clips_per_s"] == pytest.approx(1e3 / c["ms_best"]["ours"])
    table = format_table(res)
    assert table.count("\n| forward") == 4 and "best of 2" in table
    assert "n/a (< 3 runs)" in table and "paired_speedup_vs_hf_sdpa" not in res["cells"][0]
    res3 = run_benchmark("videomae_test", batches=[1], precisions=["fp32"], repeats=3, device=torch.device("cpu"),
                         progress=False, num_frames=4, img_size=64)
    for c in res3["cells"]:
        paired = c["paired_speedup_vs_hf_sdpa"]
        ratios = [p / o for p, o in zip(c["ms_all"]["hf_sdpa"], c["ms_all"]["ours"])]
        assert paired["geomean"] == pytest.approx((ratios[0] * ratios[1] * ratios[2]) ** (1 / 3))
        # An interval end can be the mean of one round drawn three times, exp(log(r)) = r up to an ulp: 1e-12 slack
        slack = 1 + 1e-12
        assert min(ratios) / slack <= paired["ci95"][0] <= paired["geomean"] * slack
        assert paired["geomean"] / slack <= paired["ci95"][1] <= max(ratios) * slack


def test_paired_speedup_reads_the_interval():
    import numpy as np

    from microact.bench.backbone import paired_speedup

    constant = paired_speedup([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])  # every round 2x, whatever the drift
    assert constant["geomean"] == pytest.approx(2.0) and constant["ci95"] == pytest.approx([2.0, 2.0])
    assert constant["verdict"] == "faster" and constant["rounds"] == 3
    assert paired_speedup([1.0] * 5, [1.25] * 5)["verdict"] == "slower"
    rng = np.random.default_rng(1)
    ours = rng.uniform(8, 10, 9)  # noise of +-10 % around a true ratio of 1
    tie = paired_speedup(list(ours * rng.normal(1.0, 0.05, 9)), list(ours))
    assert tie["ci95"][0] < 1 < tie["ci95"][1] and tie["verdict"] == "tie"
    assert paired_speedup([1, 2, 3], [1, 2, 3], seed=5) == paired_speedup([1, 2, 3], [1, 2, 3], seed=5)
    with pytest.raises(ValueError, match=">= 3"):
        paired_speedup([1.0, 2.0], [1.0, 2.0])


def test_bench_data_on_crops_written_like_microact_crop():
    from microact.bench.data import format_results, run

    res = run([1], clips=4, kinds=["crop320"], progress=lambda *_: None)
    r = res["kinds"]["crop320"]
    assert set(res["kinds"]) == {"crop320"}
    for key in ("decode_ms_pyav", "decode_ms_pyav_sequential", "decode_ms_pyav_threads_auto",
                "decode_ms_pyav_without_fast_decode",
                "cache_ms_npy", "cache_ms_jpeg", "transform_ms_ours", "transform_ms_jitter_on_device",
                "clips_per_s_ours_w1", "clips_per_s_plain_w1",
                "clips_per_s_ours_ffmpeg_threads_w1", "clips_per_s_ours_jitter_on_device_w1"):
        assert r[key] > 0, key
    # npy keeps every frame of both 3-second clips: 90 x 534 x 320 x 3 bytes (+ a header) per clip
    assert r["cache_mb_per_clip_npy"] == pytest.approx(90 * 534 * 320 * 3 / 1e6, rel=1e-3)
    assert r["cache_mb_per_clip_jpeg"] < r["cache_mb_per_clip_npy"] / 4
    text = format_results(res, [1])
    assert "without fast_decode" in text and "from the decode cache (jpeg)" in text
    assert "every frame up to the last sampled one" in text
    assert "transforms left in the worker with aug.jitter_erasing_on=device" in text
    assert "ColorJitter and RandomErasing left to the GPU (aug.jitter_erasing_on=device)" in text
    assert "FFmpeg's automatic threads (data.decode_threads=0)" in text


def test_bench_e2e_reads_through_the_jpeg_cache_with_jitter_on_the_device(tmp_path):
    from microact.bench.e2e import format_result, run

    r = run("videomae_tiny_frame_coarse_tsn", workers=0, batch=2, steps=2, device_name="cpu", clips=6,
            cache_dir=str(tmp_path), cache_format="jpeg", jitter_on_device=True, progress=lambda *_: None)
    assert len(list(tmp_path.glob("*.jpgs"))) == 6  # one entry per clip: every clip was decoded once into it
    assert r["precision"] == "fp32" and r["decode_cache"] == "jpeg"
    assert r["loader_clips_per_s"] > 0 and r["step_clips_per_s"] > 0 and r["e2e_clips_per_s"] > 0
    assert r["jitter_erasing_on"] == "device"
    text = format_result(r)
    assert "decode cache (jpeg), ColorJitter and RandomErasing in the step" in text
    assert "the switch is for GPU hosts" in text


@pytest.mark.parametrize("name,category", [
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
    ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<64, 128>, true>",
     "attention"),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<bfloat16_t>::Params)",
     "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x128_4x1x1_kernel0_0", "attention"),
    ("compute_dot_do_o_specialized", "attention"),
    ("convert_dq_to_16bits", "attention"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel"
     "__5x_cublas", "matmul"),
    ("nvjet_tst_192x192_64x3_2x1_v_bz_coopB_TNT", "matmul"),
    ("aten::addmm", "matmul"),
    ("aten::mm", "matmul"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4>>", "optimizer"),
    ("aten::_fused_adamw_", "optimizer"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>", "normalization"),
    ("aten::native_layer_norm_backward", "normalization"),
    ("Memcpy HtoD (Pageable -> Device)", "memory copies"),
    ("aten::copy_", "memory copies"),
    ("triton_poi_fused_add_gelu_3", "compiled fusions"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float>>>",
     "reductions"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&)>",
     "elementwise"),
    ("aten::gelu_backward", "elementwise"),
    ("cudaStreamSynchronize", "other"),
])
def test_profile_categories_of_real_kernel_and_operator_names(name, category):
    from microact.bench.profile import categorize

    assert categorize(name) == category


def test_busy_time_is_the_union_of_kernel_intervals():
    import numpy as np

    from microact.bench.profile import _union_us

    rng = np.random.default_rng(0)
    for _ in range(50):
        starts = rng.integers(0, 100, size=rng.integers(1, 12))
        intervals = [(int(s), int(s + rng.integers(0, 20))) for s in starts]
        covered = np.zeros(200, dtype=bool)  # brute force on a unit grid
        for s, e in intervals:
            covered[s:e] = True
        assert _union_us(intervals) == covered.sum()


def test_bench_train_profile_writes_a_trace_and_a_breakdown(tmp_path):
    import gzip
    import json

    from microact.bench.train import bench_train, format_report

    res = bench_train("videomae_test_frame_coarse_tsn", batch=2, precision="fp32", steps=2, device="cpu", peer=False,
                      profile_dir=str(tmp_path), num_frames=4, img_size=32)
    p = res["profile"]
    assert p["steps"] == 2 and p["device_busy_fraction"] is None  # busy time is a GPU figure
    # the CPU has one fused attention kernel, whatever the CUDA preference
    assert res["settings"]["sdpa_kernel"] == "auto"
    assert res["settings"]["sdpa_kernel_in_use"] == res["settings"]["sdpa_kernel_default"] == "flash"
    assert p["by_category"]["matmul"] > 0 and p["by_category"]["attention"] > 0
    assert [t["ms_per_step"] for t in p["top"]] == sorted((t["ms_per_step"] for t in p["top"]), reverse=True)
    # every operator's self time is in exactly one category
    assert sum(p["by_category"].values()) >= sum(t["ms_per_step"] for t in p["top"])
    events = json.loads(gzip.open(tmp_path / "trace.json.gz").read())["traceEvents"]
    assert any(e.get("name") == "aten::addmm" for e in events)
    # the report lists the largest operators with their kinds (which operators lead depends on the machine's load)
    from microact.bench.profile import categorize

    report = format_report(res)
    assert "attention kernel: ours flash (--sdpa-kernel auto), PyTorch's default flash" in report
    for t in p["top"]:
        assert t["category"] == categorize(t["name"])
        assert f"[{t['category']}] {t['name'][:87]}" in report  # long kernel names are shortened


def test_bench_backbone_no_pass_reuses_weights_cast_by_an_earlier_pass(monkeypatch):
    """Autocast keeps its low-precision weight copies until its outermost region exits: one region around a whole
    cell let every pass after the first skip the casts and held each model's bf16 weights in memory while the next
    model's peak was measured. Each bf16 pass, warm-up or timed, must cast its own model's weights."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import microact.bench.backbone as bb

    class CountWeightCasts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if (func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.nn.Parameter)
                    and kwargs.get("dtype") == torch.bfloat16):
                self.n += 1
            return func(*args, **kwargs)

    casts = []
    real_time = bb._time

    def counting_time(run, device):
        with CountWeightCasts() as counter:
            seconds = real_time(run, device)
        casts.append(counter.n)
        return seconds

    monkeypatch.setattr(bb, "_time", counting_time)
    bb.run_benchmark("videomae_test", batches=[1], precisions=["bf16"], repeats=1, device=torch.device("cpu"),
                     progress=False, num_frames=4, img_size=64)
    assert len(casts) == 2 * 2 * len(bb.IMPLS)  # (warm-up + 1 timed pass) x 3 models x (forward, forward+backward)
    assert all(n > 0 for n in casts), casts


def test_bench_train_frees_our_model_and_inputs_before_measuring_the_peer(monkeypatch):
    """The peer's peak memory must not include our backbone's parameters or our copy of the input clips."""
    import gc
    import weakref

    pytest.importorskip("transformers")
    import microact.bench.train as bt
    import microact.models as models

    ours = {}
    real_create = models.create_model

    def create(*args, **kwargs):
        model = real_create(*args, **kwargs)
        ours["param"] = weakref.ref(next(model.backbone.parameters()))
        return model

    seen = []
    real_time_steps = bt._time_steps

    def time_steps(step, device, steps, warmup):
        gc.collect()
        clips = [o for o in gc.get_objects() if torch.is_tensor(o) and o.dim() == 5 and o.shape[0] == 2
                 and sorted(o.shape[1:3]) == [3, 4]]  # [B, 3, T, H, W] or HF's [B, T, 3, H, W]
        seen.append((ours["param"]() is not None, len(clips)))
        return real_time_steps(step, device, steps, warmup)

    monkeypatch.setattr(models, "create_model", create)
    monkeypatch.setattr(bt, "_time_steps", time_steps)
    res = bt.bench_train("videomae_test_frame_coarse_tsn", batch=2, precision="fp32", steps=1, device="cpu",
                         warmup=0, num_frames=4, img_size=32)
    assert "hf" in res
    assert seen == [(True, 1), (False, 1)]  # ours measured with its model and inputs; the peer with neither


def test_bench_train_default_precision_follows_the_cpus_bf16_hardware():
    from microact.bench.train import default_precision

    assert default_precision(torch.device("cpu"), native_bf16=True) == ("bf16", None)
    used, note = default_precision(torch.device("cpu"), native_bf16=False)
    assert used == "fp32" and "no hardware bf16" in note and "--precision bf16" in note
    assert default_precision(torch.device("cuda"), native_bf16=False) == ("bf16", None)


def test_bench_train_cli_without_precision_picks_fp32_on_a_cpu_without_hardware_bf16(capsys):
    """Without --precision, ``bench train`` on a CPU measures what ``microact train`` would run there, and says so
    in one line; an explicit --precision is honoured."""
    from microact.cli import build_parser, main
    from microact.engine.train import cpu_has_native_bf16

    assert build_parser().parse_args(["bench", "train", "--precision", "bf16"]).precision == "bf16"
    assert main(["bench", "train", "--preset", "videomae_test_frame_coarse_tsn", "--batch", "1", "--steps", "1",
                 "--device", "cpu", "--no-peer"]) == 0
    out = capsys.readouterr().out
    native = cpu_has_native_bf16()
    assert ("batch 1, bf16," if native else "batch 1, fp32,") in out
    assert ("precision: fp32 (this CPU has no hardware bf16" in out) == (not native)
    assert sum("hardware bf16" in line for line in out.splitlines()) == (0 if native else 1)
