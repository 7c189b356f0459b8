"""microact compare: bootstrap F1 equals the metric re-run on each resample; McNemar against scipy; the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from microact.cli import main
from microact.compare import Predictions, bootstrap_differences, compare, format_report, mcnemar, resample_scores
from microact.metrics import f1_mean
from microact.results import Results, ResultsError, save_results
from microact.taxonomy import MA52, Taxonomy

SIX = Taxonomy(("a", "b", "c", "d", "e", "f"), ("left", "right", "both"), (0, 1, 1, 2, 2, 0))
FLAT = Taxonomy(("a", "b", "c", "d", "e"))


def _scores(labels: np.ndarray, k: int, accuracy: float, seed: int) -> np.ndarray:
    """Random probabilities whose argmax is the true class for about ``accuracy`` of the rows."""
    rng = np.random.default_rng(seed)
    s = rng.random((labels.size, k))
    hit = rng.random(labels.size) < accuracy
    s[np.flatnonzero(hit), labels[hit]] += 2.0
    return (s / s.sum(1, keepdims=True)).astype(np.float32)


def _results(taxonomy: Taxonomy, n: int = 120, accuracy: float = 0.5, seed: int = 0, labels_seed: int = 7) -> Results:
    labels = np.random.default_rng(labels_seed).integers(0, taxonomy.num_fine, n)
    return Results([f"v{i}.mp4" for i in range(n)], _scores(labels, taxonomy.num_fine, accuracy, seed), labels,
                   taxonomy=taxonomy)


@pytest.mark.parametrize("taxonomy", [MA52, SIX, FLAT], ids=["ma52", "grouped", "flat"])
@pytest.mark.parametrize("macro_labels", ["present", "all"])
def test_resample_scores_equal_the_metric_on_each_resample(taxonomy, macro_labels):
    # the weighted counts must give exactly what f1_mean gives on the resampled videos themselves
    results = _results(taxonomy, n=90 if taxonomy is MA52 else 40, seed=3)
    pred = Predictions.of(results)
    rng = np.random.default_rng(1)
    n = len(results)
    draws = [rng.integers(0, n, n) for _ in range(6)] + [np.arange(n), np.repeat(np.arange(3), [n - 2, 1, 1])]
    weights = np.stack([np.bincount(d, minlength=n) for d in draws])
    ours = resample_scores(pred, weights, taxonomy, macro_labels)
    for row, d in enumerate(draws):
        expected = f1_mean(results.labels[d], results.predictions[d], macro_labels, taxonomy=taxonomy)
        assert set(ours) == set(expected)
        for key, value in expected.items():
            assert ours[key][row] == pytest.approx(value, abs=1e-12), (key, row)


def test_coarse_rule_is_used_for_the_group_terms():
    results = _results(SIX, n=60, seed=4)
    summed = Predictions.of(results, "sum_probs")
    from microact.metrics import predict_coarse

    assert np.array_equal(summed.pred_coarse, predict_coarse(results.scores, "sum_probs", taxonomy=SIX))
    assert np.array_equal(Predictions.of(results).pred_coarse, SIX.coarse_of(results.predictions))
    assert Predictions.of(_results(FLAT)).pred_coarse is None


@pytest.mark.parametrize("split", [(0, 0), (3, 9), (9, 3), (5, 5), (0, 14), (40, 61), (1200, 1290)])
def test_mcnemar_is_the_exact_binomial_test(split):
    only_base, only_other = split
    both = 7
    base = np.array([True] * only_base + [False] * only_other + [True] * both + [False] * 4)
    other = np.array([False] * only_base + [True] * only_other + [True] * both + [False] * 4)
    got = mcnemar(base, other)
    assert (got["only_base"], got["only_other"]) == split
    expected = 1.0 if only_base + only_other == 0 else binomtest(only_base, only_base + only_other, 0.5).pvalue
    assert got["p_value"] == pytest.approx(expected, rel=1e-9)


def test_bootstrap_is_paired_and_matches_the_analytic_spread():
    base = _results(MA52, n=600, accuracy=0.5, seed=1)
    # the other model: the baseline's scores, corrected on 40 videos it got wrong (it dominates video by video)
    scores = base.scores.copy()
    wrong = np.flatnonzero(base.predictions != base.labels)[:40]
    scores[wrong, base.labels[wrong]] = 2.0
    better = Results(base.names, scores, base.labels)
    [diffs] = bootstrap_differences(Predictions.of(base), [Predictions.of(better)], MA52, resamples=3000, seed=5)
    # paired: in every resample the dominating model is at least as accurate (unpaired draws would often not be)
    assert diffs["fine_micro"].min() >= 0.0 and diffs["fine_micro"].max() > 0.0
    # fine micro F1 is accuracy, a mean over videos: its paired bootstrap spread must match sqrt(var(d) / n)
    d = (better.predictions == better.labels).astype(float) - (base.predictions == base.labels)
    analytic = np.sqrt(d.var() / d.size)
    assert diffs["fine_micro"].std() == pytest.approx(analytic, rel=0.08)
    assert diffs["fine_micro"].mean() == pytest.approx(d.mean(), abs=0.3 * analytic)
    # identical models differ by nothing in any resample
    [same] = bootstrap_differences(Predictions.of(base), [Predictions.of(base)], MA52, resamples=50)
    assert all(np.all(v == 0.0) for v in same.values())


def test_bootstrap_is_reproducible_by_seed():
    a, b = _results(SIX, seed=1), _results(SIX, seed=2)
    pa, pb = Predictions.of(a), Predictions.of(b)
    one = bootstrap_differences(pa, [pb], SIX, resamples=300, seed=3)[0]
    again = bootstrap_differences(pa, [pb], SIX, resamples=300, seed=3)[0]
    other = bootstrap_differences(pa, [pb], SIX, resamples=300, seed=4)[0]
    assert all(np.array_equal(one[k], again[k]) for k in one)
    assert not np.array_equal(one["f1_mean"], other["f1_mean"])
    assert one["f1_mean"].shape == (300,)


def test_compare_report_scores_and_differences():
    base, other = _results(MA52, n=300, accuracy=0.4, seed=1), _results(MA52, n=300, accuracy=0.7, seed=2)
    report = compare([base, other], ["base", "other"], resamples=500, seed=0)
    for model, r in zip(report["models"], (base, other)):
        expected = f1_mean(r.labels, r.predictions)
        assert {k: model[k] for k in expected} == pytest.approx(expected)
        assert model["top1"] == pytest.approx(np.mean(r.predictions == r.labels))
    [d] = report["differences"]
    gap = report["models"][1]["f1_mean"] - report["models"][0]["f1_mean"]
    assert d["f1_mean"]["diff"] == pytest.approx(gap)
    assert d["f1_mean"]["low"] > 0 and d["f1_mean"]["p_better"] == 1.0  # 0.4 vs 0.7 accuracy on 300 videos
    per_class = {c["id"]: c for c in d["per_class"]}
    from microact.metrics import per_class_f1

    _, f1 = per_class_f1(other.labels, other.predictions, np.arange(52))
    assert all(per_class[i]["f1"] == pytest.approx(f1[i]) for i in per_class)
    assert sum(c["support"] for c in d["per_class"]) == 300


def test_compare_refuses_what_cannot_be_compared():
    a = _results(MA52, n=20)
    with pytest.raises(ResultsError, match="at least two"):
        compare([a], ["a"])
    shorter = _results(MA52, n=19)
    with pytest.raises(ResultsError, match="19 videos"):
        compare([a, shorter], ["a", "b"])
    unlabelled = Results(a.names, a.scores)
    with pytest.raises(ResultsError, match="no labels"):
        compare([a, unlabelled], ["a", "b"])


def test_cli_compare_prints_and_writes(tmp_path, capsys):
    paths = []
    for i, accuracy in enumerate((0.45, 0.46, 0.8)):
        paths.append(tmp_path / f"m{i}.pkl")
        save_results(_results(MA52, n=200, accuracy=accuracy, seed=i), paths[-1])
    assert main(["compare", *map(str, paths), "--resamples", "400", "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "m0.pkl" in text and "McNemar" in text and "better beyond the noise" in text
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [m["name"] for m in report["models"]] == list(map(str, paths))
    assert report["resamples"] == 400 and len(report["differences"]) == 2
    rows = (tmp_path / "cmp" / "per_class_delta.csv").read_text().splitlines()
    assert rows[0] == "model,id,name,support,base_f1,f1,diff"
    assert len(rows) == 1 + sum(len(d["per_class"]) for d in report["differences"])
    for i in (1, 2):
        assert (tmp_path / "cmp" / f"per_class_f1_delta_{i}.png").stat().st_size > 10_000
    # a flat taxonomy's dumps record their classes; compare has no group columns for them
    flat = [tmp_path / "f0.pkl", tmp_path / "f1.pkl"]
    for i, p in enumerate(flat):
        save_results(_results(FLAT, n=50, seed=i), p)
    assert main(["compare", *map(str, flat), "--resamples", "0"]) == 0
    text = capsys.readouterr().out
    assert "fine macro" in text and "group macro" not in text and "no bootstrap" in text


def test_subject_resampling_draws_whole_subjects_and_widens_correlated_intervals():
    from microact.compare import subject_of
    from microact.metrics import bootstrap_weights

    assert subject_of("0003_01_0005.mp4") == "0003" and subject_of("a/b/0193_02_0001.mp4") == "0193"
    assert subject_of("clip.mp4") == "clip.mp4"
    # one cluster per item is the plain video bootstrap, draw for draw (cluster ids sorted: item i is cluster 29 - i)
    plain = np.concatenate(list(bootstrap_weights(30, 300, seed=2)))
    assert np.array_equal(np.concatenate(list(bootstrap_weights(30, 300, seed=2, clusters=np.arange(30)[::-1]))),
                          plain[:, ::-1])
    # 40 subjects x 10 videos; the better model is right or wrong on a whole subject at once
    subjects, per = 40, 10
    names = [f"{s:04d}_01_{v:04d}.mp4" for s in range(subjects) for v in range(per)]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 52, subjects * per)
    base_right = np.repeat(rng.random(subjects) < 0.5, per)
    other_right = np.repeat(rng.random(subjects) < 0.6, per)

    def results(right):
        pred = np.where(right, labels, (labels + 1) % 52)
        scores = np.full((labels.size, 52), 0.1 / 51, dtype=np.float32)
        scores[np.arange(labels.size), pred] = 0.9
        return Results(names, scores, labels)

    clusters = [subject_of(n) for n in names]
    weights = np.concatenate(list(bootstrap_weights(len(names), 500, seed=1, clusters=clusters)))
    assert np.all(weights.reshape(500, subjects, per).std(axis=2) == 0)  # a subject's videos are drawn together
    assert np.all(weights.sum(axis=1) % per == 0) and weights.sum(axis=1).mean() == pytest.approx(400, rel=0.02)
    a, b = Predictions.of(results(base_right)), Predictions.of(results(other_right))
    by_subject = bootstrap_differences(a, [b], MA52, resamples=3000, seed=3, clusters=clusters)[0]["fine_micro"]
    by_video = bootstrap_differences(a, [b], MA52, resamples=3000, seed=3)[0]["fine_micro"]
    # equal cluster sizes: accuracy is the mean of the subjects' means, whose spread is sqrt(var / subjects)
    d = (other_right.astype(float) - base_right).reshape(subjects, per).mean(axis=1)
    assert by_subject.std() == pytest.approx(np.sqrt(d.var() / subjects), rel=0.08)
    assert by_subject.std() > 2 * by_video.std()  # ten correlated videos count as one draw, not ten
    report = compare([results(base_right), results(other_right)], ["a", "b"], resamples=200, resample_by="subject")
    assert report["resample_by"] == "subject" and report["num_subjects"] == subjects
    assert "resamples of the 40 subjects" in format_report(report)
    with pytest.raises(ResultsError, match="'video', 'subject'"):
        compare([results(base_right), results(other_right)], ["a", "b"], resample_by="person")
