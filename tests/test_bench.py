"""``microact bench backbone`` on the test-size ViT: the figures are consistent with each other (never timed)."""
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
