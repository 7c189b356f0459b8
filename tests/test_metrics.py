"""Metrics against scikit-learn and independent plain-Python computations."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from microact import ma52, metrics


def _sk_f1_mean(y_true, y_pred, macro_labels="present"):
    g = np.asarray(ma52.FINE_TO_COARSE)
    ct, cp = g[y_true], g[y_pred]
    kw_f = {"labels": list(range(52))} if macro_labels == "all" else {}
    kw_c = {"labels": list(range(7))} if macro_labels == "all" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = {
            "fine_macro": f1_score(y_true, y_pred, average="macro", zero_division=0, **kw_f),
            "fine_micro": f1_score(y_true, y_pred, average="micro", zero_division=0, **kw_f),
            "coarse_macro": f1_score(ct, cp, average="macro", zero_division=0, **kw_c),
            "coarse_micro": f1_score(ct, cp, average="micro", zero_division=0, **kw_c),
        }
    return {"f1_mean": sum(parts.values()) / 4, **parts}


label_vectors = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 51), min_size=n, max_size=n),
        st.lists(st.integers(0, 51), min_size=n, max_size=n),
    )
)


@settings(max_examples=150, deadline=None)
@given(label_vectors, st.sampled_from(["present", "all"]), st.integers(0, 2**31 - 1))
def test_f1_mean_equals_sklearn(pair, macro_labels, seed):
    y_true, y_pred = (np.asarray(v) for v in pair)
    # concentrate some draws on few classes so that agreement (TP > 0) is common
    if seed % 2:
        y_pred = np.where(np.random.default_rng(seed).random(len(y_true)) < 0.6, y_true, y_pred)
    ours = metrics.f1_mean(y_true, y_pred, macro_labels)
    ref = _sk_f1_mean(y_true, y_pred, macro_labels)
    assert ours.keys() == ref.keys()
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-15), k


def test_f1_mean_emits_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.f1_mean([0, 1, 2], [3, 3, 3])
        metrics.f1_mean([0, 1, 2], [3, 3, 3], "all")


def test_present_label_set_differs_from_all():
    # class 45 absent from truth and prediction: "present" averages over 2 fine labels, "all" over 52
    y_true, y_pred = [9, 9, 8], [9, 8, 8]
    present = metrics.f1_mean(y_true, y_pred, "present")
    every = metrics.f1_mean(y_true, y_pred, "all")
    # per-class F1: class 9: 2*1/(1+2)=2/3, class 8: 2*1/(2+1)=2/3
    assert present["fine_macro"] == pytest.approx(2 / 3)
    assert every["fine_macro"] == pytest.approx(2 * (2 / 3) / 52)
    assert present["fine_micro"] == every["fine_micro"] == pytest.approx(2 / 3)
    # both are head-group (coarse 1): coarse perfectly right
    assert present["coarse_macro"] == 1.0 and every["coarse_macro"] == pytest.approx(1 / 7)


def test_predicted_only_class_pulls_macro_down():
    # class 3 never true, predicted once: it counts with F1 0
    result = metrics.f1_mean([0, 0, 1, 1], [0, 0, 1, 3])
    # class 0: 1.0; class 1: 2*1/(1+2)=2/3; class 3: 0
    assert result["fine_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_manet_sanity_example():
    # SEED.md §9: published MANet test numbers combine to the published F1_mean
    parts = [61.33, 78.95, 49.22, 72.87]
    assert round(sum(parts) / 4, 2) == 65.59
    # and f1_mean's formula is exactly that mean of its four parts
    rng = np.random.default_rng(0)
    y = rng.integers(0, 52, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 52, 300))
    r = metrics.f1_mean(y, p)
    assert r["f1_mean"] == pytest.approx((r["fine_micro"] + r["coarse_micro"] + r["fine_macro"] + r["coarse_macro"]) / 4)


def test_coarse_pred_override_and_rules():
    scores = np.zeros((2, 52))
    # video 0: top-1 fine is 9 (head) but the upper-limb group has more total mass
    scores[0, 9] = 0.3
    scores[0, 11:16] = 0.14
    scores[1, 50] = 1.0
    assert list(metrics.predict_coarse(scores, "map_top1")) == [1, 6]
    assert list(metrics.predict_coarse(scores, "sum_probs")) == [2, 6]
    sums = metrics.coarse_scores(scores)
    for c in range(7):
        assert sums[0, c] == pytest.approx(sum(scores[0, f] for f in ma52.coarse_members(c)))


def test_topk_accuracy_against_loop():
    rng = np.random.default_rng(1)
    scores = rng.random((40, 52))
    labels = rng.integers(0, 52, 40)
    got = metrics.topk_accuracy(scores, labels, ks=(1, 3, 5, 100))
    for k in (1, 3, 5):
        hits = sum(labels[i] in sorted(range(52), key=lambda c: -scores[i, c])[:k] for i in range(40))
        assert got[k] == pytest.approx(hits / 40)
    assert got[100] == 1.0
    assert got[1] == pytest.approx(np.mean(scores.argmax(1) == labels))


def test_mean_class_accuracy_union_semantics():
    # classes {0, 1, 2}; class 2 predicted but never true contributes 0 (mmaction2 semantics)
    acc = metrics.mean_class_accuracy([0, 0, 1, 1], [0, 1, 1, 2])
    assert acc == pytest.approx((0.5 + 0.5 + 0.0) / 3)


def test_confusion_and_per_class_report_against_loops():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 7, 100)
    p = np.where(rng.random(100) < 0.5, y, rng.integers(0, 7, 100))
    cm = metrics.confusion_matrix(y, p, 7)
    for i in range(7):
        for j in range(7):
            assert cm[i, j] == sum(1 for a, b in zip(y, p) if a == i and b == j)
    rows = metrics.per_class_report(y, p, ma52.COARSE_NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = f1_score(y, p, average=None, labels=list(range(7)), zero_division=0)
    for r in rows:
        assert r["f1"] == pytest.approx(ref[r["id"]])
        assert r["support"] == cm[r["id"]].sum()
        assert r["recall"] == pytest.approx(cm[r["id"], r["id"]] / max(1, cm[r["id"]].sum()))
    table = metrics.format_per_class(rows)
    assert "Upper limb" in table and len(table.splitlines()) == 8


def test_evaluate_scores_keys_and_consistency():
    rng = np.random.default_rng(3)
    scores = rng.dirichlet(np.ones(52), size=80).astype(np.float32)
    labels = rng.integers(0, 52, 80)
    out = metrics.evaluate_scores(scores, labels)
    ref = _sk_f1_mean(labels, scores.argmax(1))
    for k in ref:
        assert out[k] == pytest.approx(ref[k])
    assert out["top1"] == pytest.approx(out["fine_micro"])
    assert len(out["per_class"]) == 52 and len(out["per_coarse_class"]) == 7
    assert "F1_mean" in metrics.format_summary(out)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(metrics.MetricError, match="2 labels"):
        metrics.f1_mean([0, 1], [0])
    with pytest.raises(metrics.MetricError, match="outside"):
        metrics.f1_mean([0, 60], [0, 1])
    with pytest.raises(metrics.MetricError, match="empty"):
        metrics.f1_mean([], [])
    with pytest.raises(metrics.MetricError, match="macro_labels"):
        metrics.f1_mean([0], [0], "some")


def test_coarse_head_rule_agrees_with_the_recognizer_rule():
    """metrics.predict_coarse("coarse_head") (NumPy, for dumps) picks what Recognizer.predict_proba's rule ranks
    first, and refuses to guess without the coarse head's scores."""
    import torch

    from microact.metrics import MetricError, predict_coarse
    from microact.models.recognizer import coarse_scores as recognizer_scores

    rng = np.random.default_rng(5)
    fine = rng.dirichlet(np.full(52, 0.3), size=64)
    head = rng.dirichlet(np.full(7, 0.5), size=64)
    expected = recognizer_scores(torch.tensor(fine, dtype=torch.float64).float(), "coarse_head",
                                 torch.tensor(head).float()).argmax(1).numpy()
    np.testing.assert_array_equal(predict_coarse(fine, "coarse_head", head), expected)
    # a loop over the seven parts, by hand
    by_hand = [max(range(7), key=lambda c: head[i, c] * sum(fine[i, k] for k in range(52)
                                                           if ma52.FINE_TO_COARSE[k] == c)) for i in range(64)]
    np.testing.assert_array_equal(predict_coarse(fine, "coarse_head", head), by_hand)
    with pytest.raises(MetricError, match="coarse head's scores"):
        predict_coarse(fine, "coarse_head")
    with pytest.raises(MetricError, match="expected shape"):
        predict_coarse(fine, "coarse_head", head[:, :6])


def test_f1_mean_interval_is_the_percentile_of_f1_mean_on_resampled_videos():
    # independent of the weighted counts: index the videos of each resample and call sklearn's f1_score
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 52, 150)
    pred = np.where(rng.random(150) < 0.6, labels, rng.integers(0, 52, 150))
    for macro_labels in ("present", "all"):
        got = metrics.f1_mean_interval(labels, pred, macro_labels=macro_labels, resamples=120, seed=4)
        weights = np.concatenate(list(metrics.bootstrap_weights(labels.size, 120, seed=4)))
        values = [_sk_f1_mean(np.repeat(labels, w.astype(int)), np.repeat(pred, w.astype(int)), macro_labels)["f1_mean"]
                  for w in weights]
        low, high = np.percentile(values, [2.5, 97.5])
        assert (got["low"], got["high"]) == pytest.approx((low, high), abs=1e-12)
        assert got["low"] < metrics.f1_mean(labels, pred, macro_labels)["f1_mean"] < got["high"]
    # the resamples: each draws as many videos as there are, and the seed fixes them
    blocks = list(metrics.bootstrap_weights(40, 600, seed=1))
    assert [b.shape for b in blocks] == [(250, 40), (250, 40), (100, 40)]
    assert all(np.all(b.sum(axis=1) == 40) for b in blocks)
    again = np.concatenate(list(metrics.bootstrap_weights(40, 600, seed=1)))
    assert np.array_equal(np.concatenate(blocks), again)
    # about 1 - 1/e of the videos appear in a resample
    assert np.mean(again > 0) == pytest.approx(1 - np.exp(-1), abs=0.01)


def test_resampled_f1_mean_with_unit_weights_is_f1_mean():
    rng = np.random.default_rng(9)
    labels, pred = rng.integers(0, 52, 90), rng.integers(0, 52, 90)
    coarse_pred = rng.integers(0, 7, 90)
    for macro_labels in ("present", "all"):
        got = metrics.resampled_f1_mean(labels, pred, np.ones(90), coarse_pred=coarse_pred, macro_labels=macro_labels)
        expected = metrics.f1_mean(labels, pred, macro_labels, coarse_pred=coarse_pred)
        assert {k: float(v[0]) for k, v in got.items()} == pytest.approx(expected, abs=1e-12)
    with pytest.raises(metrics.MetricError, match="89 columns"):
        metrics.resampled_f1_mean(labels, pred, np.ones(89))
