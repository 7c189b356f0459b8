"""Losses vs plain re-computations of SEED.md §3's formulas (loops, numpy, float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from microact.errors import MicroactError
from microact.losses import (
    CombinedF1Loss, CrossEntropyF1Loss, CrossEntropyF1LossDouble, CrossEntropyF1LossFineACoarseDouble,
    CrossEntropyLoss, build_loss,
)
from microact.ma52 import FINE_TO_COARSE

EPS = 1e-7


# ---- reference implementations (independent of microact) ---------------------------------------


def ref_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_ce(z, y, weights=None):
    p = ref_softmax(z)
    losses = [-np.log(p[i, y[i]]) for i in range(len(y))]
    if weights is None:
        return float(np.mean(losses))
    w = [weights[y[i]] for i in range(len(y))]
    return float(np.sum([wi * li for wi, li in zip(w, losses)]) / np.sum(w))


def ref_f1_loss(z, y, k):
    """L_F1 = (1 - mean_k F1_k) + (1 - micro F1), written out class by class."""
    p = ref_softmax(z)
    n = len(y)
    f1s, tps, fps, fns = [], [], [], []
    for c in range(k):
        tp = sum(p[i, c] for i in range(n) if y[i] == c)
        fp = sum(p[i, c] for i in range(n) if y[i] != c)
        fn = sum(1 - p[i, c] for i in range(n) if y[i] == c)
        prec = tp / (tp + fp + EPS)
        rec = tp / (tp + fn + EPS)
        f1s.append(2 * prec * rec / (prec + rec + EPS))
        tps.append(tp), fps.append(fp), fns.append(fn)
    tp, fp, fn = sum(tps), sum(fps), sum(fns)
    mp, mr = tp / (tp + fp + EPS), tp / (tp + fn + EPS)
    return (1 - sum(f1s) / k) + (1 - 2 * mp * mr / (mp + mr + EPS))


def ref_cef1(z, y, k):
    return ref_ce(z, y) + ref_f1_loss(z, y, k)


def ref_frame_rows(frame, y):
    """Sample-major rows n0t0, n0t1, ..., n1t0, ... and the labels repeated to match."""
    rows, labels = [], []
    for n in range(frame.shape[0]):
        for t in range(frame.shape[1]):
            rows.append(frame[n, t])
            labels.append(y[n])
    return np.stack(rows), labels


def rand_logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)


# ---- CombinedF1Loss / CE ---------------------------------------------------------------------------


@pytest.mark.parametrize("k,n,seed", [(5, 12, 0), (52, 24, 1), (7, 3, 2)])
def test_combined_f1_matches_reference(k, n, seed):
    z = rand_logits(n, k, seed=seed)
    y = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))
    got = CombinedF1Loss(k)(z, y).item()
    assert got == pytest.approx(ref_f1_loss(z.numpy(), y.tolist(), k), abs=1e-6)


def test_absent_classes_give_zero_f1_and_no_gradient():
    k, n = 10, 6
    y = torch.tensor([0, 1, 1, 2, 0, 3])  # classes 4..9 absent
    z = rand_logits(n, k, seed=3).requires_grad_(True)
    macro = CombinedF1Loss(k).terms(z, y)["f1_macro"]
    macro.backward()

    # Plain torch re-computation that only visits the present classes and still divides by K.
    z2 = z.detach().clone().requires_grad_(True)
    p = torch.softmax(z2, dim=1)
    f1_sum = 0.0
    for c in sorted(set(y.tolist())):
        is_c = (y == c).double()
        tp = (p[:, c] * is_c).sum()
        fp = (p[:, c] * (1 - is_c)).sum()
        fn = ((1 - p[:, c]) * is_c).sum()
        prec, rec = tp / (tp + fp + EPS), tp / (tp + fn + EPS)
        f1_sum = f1_sum + 2 * prec * rec / (prec + rec + EPS)
    ref = 1 - f1_sum / k
    ref.backward()
    assert macro.item() == pytest.approx(ref.item(), abs=1e-9)
    torch.testing.assert_close(z.grad, z2.grad, atol=1e-9, rtol=0)


def test_micro_f1_is_about_mean_target_probability():
    # SEED.md §3.1: TP + FP = TP + FN = N, so micro F1 ~ mean target probability.
    z, y = rand_logits(16, 8, seed=4), torch.randint(0, 8, (16,), generator=torch.Generator().manual_seed(4))
    micro = CombinedF1Loss(8).terms(z, y)["f1_micro"].item()
    mean_target = ref_softmax(z.numpy())[np.arange(16), y.numpy()].mean()
    assert micro == pytest.approx(1 - mean_target, abs=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_options(smoothing):
    k = 6
    z, y = rand_logits(9, k, seed=5), torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2])
    w = [1.0, 2.0, 0.5, 1.0, 3.0, 1.0]
    got = CrossEntropyLoss(k, class_weights=w, label_smoothing=smoothing)(z, y).item()
    if smoothing == 0:
        assert got == pytest.approx(ref_ce(z.numpy(), y.tolist(), w), abs=1e-9)
    else:  # PyTorch's weighted smoothing, written out: (1-e) * weighted NLL + e * mean_k weighted -log p_k / sum w_y
        logp = np.log(ref_softmax(z.numpy()))
        wy = np.array([w[c] for c in y.tolist()])
        nll = -(wy * logp[np.arange(9), y.numpy()]).sum() / wy.sum()
        smooth = -(logp * np.array(w)[None]).sum(axis=1).sum() / k / wy.sum()
        assert got == pytest.approx((1 - smoothing) * nll + smoothing * smooth, abs=1e-9)


def test_cef1_is_ce_plus_f1():
    k = 52
    z, y = rand_logits(24, k, seed=6), torch.randint(0, k, (24,), generator=torch.Generator().manual_seed(6))
    got = CrossEntropyF1Loss(k)(z, y).item()
    assert got == pytest.approx(ref_cef1(z.numpy(), y.tolist(), k), abs=1e-6)


# ---- combinations ---------------------------------------------------------------------------------


def test_double_loss_weights_and_sample_major_rows():
    k, n, t = 52, 5, 8
    lead, frame = rand_logits(n, k, seed=7), rand_logits(n, t, k, seed=8)
    y = torch.tensor([3, 9, 9, 40, 51])
    got = CrossEntropyF1LossDouble(k)((lead, frame), y).item()
    rows, rl = ref_frame_rows(frame.numpy(), y.tolist())
    want = ref_cef1(lead.numpy(), y.tolist(), k) + 0.5 * ref_cef1(rows, rl, k)
    assert got == pytest.approx(want, abs=1e-6)
    # A time-major reading of the rows would give another value (the statistics run over N*T' rows either way,
    # but per-row labels would no longer match): make sure the test can tell.
    wrong_rows = frame.numpy().transpose(1, 0, 2).reshape(-1, k)
    assert want != pytest.approx(ref_cef1(lead.numpy(), y.tolist(), k) + 0.5 * ref_cef1(wrong_rows, rl, k), abs=1e-3)


def test_fine_coarse_double_four_terms():
    n, t = 7, 8
    y = torch.tensor([0, 7, 20, 30, 33, 40, 49])
    lead, frame = rand_logits(n, 52, seed=9), rand_logits(n, t, 52, seed=10)
    coarse, coarse_frame = rand_logits(n, 7, seed=11), rand_logits(n, t, 7, seed=12)
    loss = CrossEntropyF1LossFineACoarseDouble()
    got = loss(((lead, frame), (coarse, coarse_frame)), y).item()

    yc = [FINE_TO_COARSE[v] for v in y.tolist()]
    assert yc == [0, 1, 2, 3, 4, 5, 6]  # one clip per body part (SEED.md §11.3)
    rows, rl = ref_frame_rows(frame.numpy(), y.tolist())
    crows, crl = ref_frame_rows(coarse_frame.numpy(), yc)
    terms = {
        "lead": ref_cef1(lead.numpy(), y.tolist(), 52),
        "frame": ref_cef1(rows, rl, 52),
        "coarse": ref_cef1(coarse.numpy(), yc, 7),
        "coarse_frame": ref_cef1(crows, crl, 7),
    }
    want = 1 * terms["lead"] + 0.5 * terms["frame"] + 0.5 * terms["coarse"] + 0.25 * terms["coarse_frame"]
    assert got == pytest.approx(want, abs=1e-6)
    for name, value in loss.terms(((lead, frame), (coarse, coarse_frame)), y).items():
        assert value.item() == pytest.approx(terms[name], abs=1e-6), name


def test_losses_accept_recognizer_output_and_run_in_fp32_under_autocast():
    from microact.models.recognizer import RecognizerOutput

    n, t = 4, 2
    y = torch.tensor([1, 12, 30, 45])
    g = torch.Generator().manual_seed(0)
    out = RecognizerOutput(torch.randn(n, 52, generator=g).half(), torch.randn(n, t, 52, generator=g).half(),
                           torch.randn(n, 7, generator=g).bfloat16(), torch.randn(n, t, 7, generator=g).bfloat16())
    loss = build_loss("cef1_fine_coarse_double", 52)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(out, y)
    assert value.dtype == torch.float32
    as64 = lambda x: x.double()  # noqa: E731
    ref = loss(((as64(out.fine), as64(out.fine_frame)), (as64(out.coarse), as64(out.coarse_frame))), y)
    assert value.item() == pytest.approx(ref.item(), abs=1e-5)


def test_build_loss_names_and_errors():
    assert isinstance(build_loss("ce", 52), CrossEntropyLoss)
    assert isinstance(build_loss("cef1", 52), CrossEntropyF1Loss)
    assert isinstance(build_loss("cef1_double", 52), CrossEntropyF1LossDouble)
    assert isinstance(build_loss("cef1_fine_coarse_double", 52), CrossEntropyF1LossFineACoarseDouble)
    with pytest.raises(MicroactError, match="cef1_double"):
        build_loss("focal", 52)
    with pytest.raises(MicroactError, match="class_weights"):
        build_loss("ce", 52, class_weights=[1.0, 2.0])
    with pytest.raises(MicroactError, match="f1_sync"):
        CombinedF1Loss(4, sync="all")


# ---- global soft-F1 statistics across two real processes ------------------------------------------


def _global_worker(rank, world, init_file, z_full, y_full, out_dict):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n = z_full.shape[0] // world
        z = z_full[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        loss = CombinedF1Loss(z_full.shape[1], sync="global")(z, y_full[rank * n:(rank + 1) * n])
        loss.backward()
        # The same loss through a DDP-wrapped layer: DDP averages the parameter gradients over the processes.
        from torch.nn.parallel import DistributedDataParallel as DDP
        torch.manual_seed(0)
        lin = torch.nn.Linear(z_full.shape[1], z_full.shape[1]).double()
        ddp = DDP(lin)  # kept alive until backward: its hooks do the all-reduce
        CombinedF1Loss(z_full.shape[1], sync="global")(ddp(z_full[rank * n:(rank + 1) * n]),
                                                       y_full[rank * n:(rank + 1) * n]).backward()
        out_dict[rank] = (loss.item(), z.grad.clone(), lin.weight.grad.clone())
    finally:
        dist.destroy_process_group()


def test_global_f1_sync_equals_full_batch(tmp_path):
    import torch.multiprocessing as mp

    k, world = 6, 2
    z = rand_logits(8, k, seed=13)
    y = torch.tensor([0, 1, 2, 3, 0, 5, 5, 1])
    manager = mp.Manager()
    out = manager.dict()
    # forkserver: the workers fork from a process that has imported torch already (tests/conftest.py), spawn
    # would import it afresh in each
    mp.start_processes(_global_worker, args=(world, str(tmp_path / "pg"), z, y, out), nprocs=world, join=True,
                       start_method="forkserver")

    z_full = z.clone().requires_grad_(True)
    full = CombinedF1Loss(k)(z_full, y)
    full.backward()
    assert full.item() == pytest.approx(ref_f1_loss(z.numpy(), y.tolist(), k), abs=1e-6)
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, k).double()
    CombinedF1Loss(k)(lin(z), y).backward()  # one process, the whole batch
    for rank in range(world):
        value, grad, ddp_grad = out[rank]
        assert value == pytest.approx(full.item(), abs=1e-9)
        # Each rank's gradient is the full-batch gradient restricted to its own rows, times the number of processes
        # (DDP divides the summed gradients by it) ...
        torch.testing.assert_close(grad, world * z_full.grad[rank * 4:(rank + 1) * 4], atol=1e-9, rtol=0)
        # ... so that DDP's averaged parameter gradient is exactly the single-process full-batch gradient.
        torch.testing.assert_close(ddp_grad, lin.weight.grad, atol=1e-9, rtol=1e-7)
    # And the local statistics differ from the global ones (the test would notice a missing all-reduce).
    local0 = CombinedF1Loss(k)(z[:4], y[:4]).item()
    assert local0 != pytest.approx(full.item(), abs=1e-3)
