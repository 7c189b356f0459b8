"""Benchmarks run end to end on small inputs and their figures are consistent with each other (never timed)."""
import pytest
import torch

from microact.bench.backbone import format_table, run_benchmark


def test_bench_backbone_figures_are_consistent():
    res = run_benchmark("videomae_test", batches=[1], precisions=["fp32", "bf16"], repeats=2,
                        device=torch.device("cpu"), progress=False)
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


def test_bench_data_on_crops_written_like_microact_crop():
    from microact.bench.data import format_results, run

    res = run([0], clips=4, kinds=["crop320"], progress=lambda *_: None)
    r = res["kinds"]["crop320"]
    assert set(res["kinds"]) == {"crop320"}
    for key in ("decode_ms_pyav", "decode_ms_pyav_without_fast_decode", "cache_ms_npy", "cache_ms_jpeg",
                "transform_ms_ours", "clips_per_s_ours_w0", "clips_per_s_plain_w0"):
        assert r[key] > 0, key
    # npy keeps every frame of both 3-second clips: 90 x 534 x 320 x 3 bytes (+ a header) per clip
    assert r["cache_mb_per_clip_npy"] == pytest.approx(90 * 534 * 320 * 3 / 1e6, rel=1e-3)
    assert r["cache_mb_per_clip_jpeg"] < r["cache_mb_per_clip_npy"] / 4
    text = format_results(res, [0])
    assert "without fast_decode" in text and "from the decode cache (jpeg)" in text


def test_bench_e2e_reads_through_the_jpeg_cache(tmp_path):
    from microact.bench.e2e import format_result, run

    r = run("videomae_tiny_frame_coarse_tsn", workers=0, batch=2, steps=2, device_name="cpu", clips=6,
            cache_dir=str(tmp_path), cache_format="jpeg", progress=lambda *_: None)
    assert len(list(tmp_path.glob("*.jpgs"))) == 6  # one entry per clip: every clip was decoded once into it
    assert r["precision"] == "fp32" and r["decode_cache"] == "jpeg"
    assert r["loader_clips_per_s"] > 0 and r["step_clips_per_s"] > 0 and r["e2e_clips_per_s"] > 0
    assert "decode cache (jpeg)" in format_result(r)
