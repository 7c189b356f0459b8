"""Result dumps, the restricted unpickler, submissions, ensembles, reports and their CLIs."""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from microact import ma52
from microact.cli import main as cli
from microact.results import (Results, ResultsError, cross_validate_search, ensemble, load_results, save_results,
                              search_weights, write_ma52_top5_csv, write_mac2024_submission)


def _random_results(n=30, seed=0, labels=True, names=None, sharp=1.0):
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.full(52, sharp), size=n).astype(np.float32)
    y = rng.integers(0, 52, n) if labels else None
    names = names or [f"test{i:04d}.mp4" for i in range(n)]
    return Results(names, scores, y, 52, (224, 224), {"source": f"model{seed}"})


def _write_list(path, names, labels):
    # CRLF and no final newline, like the original MA-52 test list
    path.write_bytes("\r\n".join(f"{n} {int(y)}" for n, y in zip(names, labels)).encode())
    return path


# --------------------------------------------------------------------------------------------
# dumps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_labels", [True, False])
def test_save_load_round_trip(tmp_path, with_labels):
    r = _random_results(labels=with_labels)
    r.meta["failed"] = ["x.mp4"]
    pkl, npz = save_results(r, tmp_path / "dump.pkl")
    assert pkl == tmp_path / "dump.pkl" and npz == tmp_path / "dump.npz"
    for path in (pkl, npz):
        back = load_results(path)
        assert back.names == r.names
        np.testing.assert_array_equal(back.scores, r.scores)
        if with_labels:
            np.testing.assert_array_equal(back.labels, r.labels)
        else:
            assert back.labels is None
        assert back.num_classes == 52 and back.img_shape == (224, 224)
    assert load_results(npz).meta["failed"] == ["x.mp4"]


def test_npz_opens_without_pickle(tmp_path):
    r = _random_results()
    _, npz = save_results(r, tmp_path / "d.pkl")
    with np.load(npz, allow_pickle=False) as z:
        assert list(z["names"]) == r.names
        np.testing.assert_array_equal(z["scores"], r.scores)


def test_pickle_has_mmaction2_schema(tmp_path):
    r = _random_results(n=5)
    pkl, _ = save_results(r, tmp_path / "d.pkl")
    with open(pkl, "rb") as f:
        raw = f.read()
    assert raw[:2] == b"\x80\x02"  # protocol 2, like mmengine's dump
    entries = pickle.loads(raw)  # our own file, trusted here
    assert isinstance(entries, list) and len(entries) == 5
    for i, e in enumerate(entries):
        assert e["pred_score"].dtype == torch.float32 and e["pred_score"].shape == (52,)
        assert e["pred_label"].dtype == torch.int64 and e["pred_label"].shape == (1,)
        assert e["gt_label"].dtype == torch.int64 and int(e["gt_label"]) == r.labels[i]
        assert int(e["pred_label"]) == int(np.argmax(r.scores[i]))
        assert e["num_classes"] == 52 and e["img_shape"] == (224, 224)


def _mmaction2_dump(path, scores, labels, old_style=False):
    """Write a dump the way mmengine's DumpResults does: pickle.dump(list of dicts with CPU tensors, protocol 2)."""
    entries = []
    for s, y in zip(scores, labels):
        s = torch.from_numpy(np.asarray(s, dtype=np.float32))
        if old_style:  # mmaction2 1.0: LabelData fields -> {"item": tensor}
            entries.append({"pred_scores": {"item": s}, "pred_labels": {"item": s.argmax().reshape(1)},
                            "gt_labels": {"item": torch.tensor([int(y)])}, "img_shape": (224, 224)})
        else:
            entries.append({"gt_label": torch.tensor([int(y)]), "pred_score": s, "pred_label": s.argmax().reshape(1),
                            "num_classes": 52, "img_shape": (224, 224), "img_key": None})
    with open(path, "wb") as f:
        pickle.dump(entries, f, protocol=2)


@pytest.mark.parametrize("old_style", [False, True])
def test_loads_mmaction2_dump_with_list(tmp_path, old_style):
    r = _random_results(n=12, seed=3)
    _mmaction2_dump(tmp_path / "mma.pkl", r.scores, r.labels, old_style)
    loaded = load_results(tmp_path / "mma.pkl")
    assert loaded.meta["names_from"] == "index" and loaded.names[3] == "3"
    np.testing.assert_array_equal(loaded.scores, r.scores)
    np.testing.assert_array_equal(loaded.labels, r.labels)
    lst = _write_list(tmp_path / "val_list_videos.txt", r.names, r.labels)
    named = load_results(tmp_path / "mma.pkl", list_file=lst)
    assert named.names == r.names


def test_test_dump_dummy_labels_and_numpy_entries(tmp_path):
    r = _random_results(n=6, seed=4)
    _mmaction2_dump(tmp_path / "test.pkl", r.scores, np.zeros(6))
    assert load_results(tmp_path / "test.pkl").labels is None  # all-zero gt = a test list's dummy labels
    # mmaction2 0.x `--out` dumps: a list of numpy score arrays
    with open(tmp_path / "old.pkl", "wb") as f:
        pickle.dump([np.asarray(s) for s in r.scores], f, protocol=2)
    np.testing.assert_array_equal(load_results(tmp_path / "old.pkl").scores, r.scores)


def test_list_mismatches_are_reported(tmp_path):
    r = _random_results(n=6)
    pkl, _ = save_results(r, tmp_path / "d.pkl")
    with pytest.raises(ResultsError, match="lists 5 videos"):
        load_results(pkl, list_file=_write_list(tmp_path / "a.txt", r.names[:5], r.labels[:5]))
    swapped = [r.names[1], r.names[0]] + r.names[2:]
    with pytest.raises(ResultsError, match="index 0"):
        load_results(pkl, list_file=_write_list(tmp_path / "b.txt", swapped, r.labels))


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvilStorage:
    """A tensor whose storage payload is a pickle that runs a command when torch's own helper loads it."""

    def __init__(self, marker):
        self.payload = pickle.dumps(_Evil(marker), protocol=2)

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.payload,)


def test_malicious_pickles_are_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump([{"pred_score": _Evil(marker), "gt_label": 0}], f, protocol=2)
    with pytest.raises(ResultsError) as info:
        load_results(evil)
    assert str(evil) in str(info.value) and "system" in str(info.value)
    assert not marker.exists()

    # the nested-storage route: torch's _load_from_bytes would unpickle the payload with weights_only=False
    nested = tmp_path / "nested.pkl"
    with open(nested, "wb") as f:
        pickle.dump([{"pred_score": _EvilStorage(marker)}], f, protocol=2)
    with pytest.raises(ResultsError, match="refused"):
        load_results(nested)
    assert not marker.exists()
    # prove the payload is real: the plain loader does run it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.storage._load_from_bytes(_EvilStorage(marker).payload)
        except Exception:
            pass
    assert marker.exists()


def test_garbage_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(ResultsError, match="bad.pkl"):
        load_results(bad)
    with pytest.raises(ResultsError, match="not found"):
        load_results(tmp_path / "missing.npz")


# --------------------------------------------------------------------------------------------
# submissions
# --------------------------------------------------------------------------------------------


def _read_zip_csv(path):
    with zipfile.ZipFile(path) as z:
        assert z.namelist() == ["prediction.csv"]
        return list(csv.reader(io.StringIO(z.read("prediction.csv").decode())))


@pytest.mark.parametrize("rule", ["map_top1", "sum_probs"])
def test_mac2024_submission(tmp_path, rule):
    r = _random_results(n=20, seed=5, labels=False, sharp=0.3)
    rows = _read_zip_csv(write_mac2024_submission(r, tmp_path, coarse_rule=rule))
    assert rows[0] == ["id", "pred_label_1", "pred_label_2"]
    assert [row[0] for row in rows[1:]] == r.names
    for row, s in zip(rows[1:], r.scores):
        fine = int(np.argmax(s))
        assert int(row[2]) == fine
        if rule == "map_top1":
            assert int(row[1]) == ma52.FINE_TO_COARSE[fine]
        else:
            sums = [sum(s[f] for f in ma52.coarse_members(c)) for c in range(7)]
            assert int(row[1]) == int(np.argmax(sums))


def test_ma52_top5_submission(tmp_path):
    r = _random_results(n=15, seed=6, labels=False, sharp=0.3)
    rows = _read_zip_csv(write_ma52_top5_csv(r, tmp_path, coarse_rule="sum_probs"))
    assert rows[0] == ["vid"] + [f"action_pred_{i}" for i in range(1, 6)] + [f"body_pred_{i}" for i in range(1, 6)]
    for row, name, s in zip(rows[1:], r.names, r.scores):
        assert row[0] == name
        assert [int(v) for v in row[1:6]] == sorted(range(52), key=lambda c: -s[c])[:5]
        sums = [sum(float(s[f]) for f in ma52.coarse_members(c)) for c in range(7)]
        assert [int(v) for v in row[6:]] == sorted(range(7), key=lambda c: -sums[c])[:5]
    rows = _read_zip_csv(write_ma52_top5_csv(r, tmp_path, coarse_rule="map_top1"))
    for row, s in zip(rows[1:], r.scores):
        body = [int(v) for v in row[6:]]
        assert body[0] == ma52.FINE_TO_COARSE[int(np.argmax(s))] and len(set(body)) == 5


# --------------------------------------------------------------------------------------------
# ensembles
# --------------------------------------------------------------------------------------------


def test_ensemble_weighted_sum_and_mismatches():
    a, b = _random_results(seed=1), _random_results(seed=2)
    b.labels = a.labels
    e = ensemble([a, b], [0.7, 0.4])
    np.testing.assert_allclose(e.scores, 0.7 * a.scores.astype(np.float64) + 0.4 * b.scores, rtol=1e-6)
    assert e.names == a.names and e.meta["ensemble"][1]["weight"] == 0.4
    swapped = Results([a.names[0], a.names[2], a.names[1]] + a.names[3:], a.scores, None)
    with pytest.raises(ResultsError, match=r"index 1: 'test0001.mp4'.*'test0002.mp4'"):
        ensemble([a, swapped])
    with pytest.raises(ResultsError, match="holds 29 videos"):
        ensemble([a, Results(a.names[:29], a.scores[:29], None)])
    with pytest.raises(ResultsError, match="classes"):
        ensemble([a, Results(a.names, a.scores[:, :40], None)])
    with pytest.raises(ResultsError, match="3 weights"):
        ensemble([a, b], [1, 2, 3])


def test_ensemble_with_nameless_mmaction2_dumps(tmp_path):
    """mmaction2 dumps carry no video names: they combine with named dumps, and the names can be supplied later."""
    named, other = _random_results(n=8, seed=11, labels=False), _random_results(n=8, seed=12, labels=False)
    _mmaction2_dump(tmp_path / "a.pkl", named.scores, np.zeros(8))
    _mmaction2_dump(tmp_path / "b.pkl", other.scores, np.zeros(8))
    mm_a, mm_b = load_results(tmp_path / "a.pkl"), load_results(tmp_path / "b.pkl")
    expected = 0.3 * other.scores.astype(np.float64) + 0.6 * named.scores.astype(np.float64)
    # a named microact result with a nameless one, in either order: the real names are kept
    for parts, weights in (([mm_b, named], [0.3, 0.6]), ([named, mm_b], [0.6, 0.3])):
        e = ensemble(parts, weights)
        assert e.names == named.names and e.meta["names_from"] != "index"
        np.testing.assert_allclose(e.scores, expected, rtol=1e-6)
    # a nameless length mismatch is still refused
    with pytest.raises(ResultsError, match="holds 7 videos"):
        ensemble([named, Results([str(i) for i in range(7)], other.scores[:7], None, meta={"names_from": "index"})])
    # two nameless dumps: the saved ensemble stays nameless, so the test list can name it afterwards
    e = ensemble([mm_a, mm_b], [0.6, 0.3])
    save_results(e, tmp_path / "ens.pkl")
    lst = _write_list(tmp_path / "test_list_videos.txt", named.names, np.zeros(8))
    for path in (tmp_path / "ens.pkl", tmp_path / "ens.npz"):
        back = load_results(path, list_file=lst)
        assert back.names == named.names
        np.testing.assert_allclose(back.scores, expected, rtol=1e-6)
    rows = _read_zip_csv(write_mac2024_submission(load_results(tmp_path / "ens.pkl", list_file=lst), tmp_path))
    assert [row[0] for row in rows[1:]] == named.names


def _noisy_models(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 52, n)
    names = [f"v{i}" for i in range(n)]
    good = rng.dirichlet(np.ones(52), n)
    good[np.arange(n), y] += np.where(rng.random(n) < 0.7, 1.0, 0.0)
    medium = rng.dirichlet(np.ones(52), n)
    medium[np.arange(n), y] += np.where(rng.random(n) < 0.4, 1.0, 0.0)
    noise = rng.dirichlet(np.ones(52) * 0.2, n) * 3  # confident and useless
    return [Results(names, s / s.sum(1, keepdims=True) if i < 2 else s, y) for i, s in enumerate((good, medium, noise))]


@pytest.mark.parametrize("max_exhaustive", [4096, 1])  # exhaustive grid, coordinate ascent
def test_search_weights_never_worse_than_equal(max_exhaustive):
    models = _noisy_models()
    y = models[0].labels
    weights, best = search_weights(models, (0.0, 0.5, 1.0), max_exhaustive=max_exhaustive)
    equal = ensemble(models).metrics()["f1_mean"]
    assert best >= equal
    assert best > equal  # the useless confident model must be down-weighted
    # the reported score is the real score of the returned weights
    pred = ensemble(models, weights).predictions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = np.asarray(ma52.FINE_TO_COARSE)
        ref = (f1_score(y, pred, average="macro") + f1_score(y, pred, average="micro")
               + f1_score(g[y], g[pred], average="macro") + f1_score(g[y], g[pred], average="micro")) / 4
    assert best == pytest.approx(ref)
    assert weights[2] < max(weights[0], weights[1])


def test_cross_validated_search_scores_each_fold_with_weights_from_the_others():
    models = _noisy_models()
    y = models[0].labels
    cv = cross_validate_search(models, (0.0, 0.5, 1.0), folds=4, resamples=400)
    assert cv["folds"] == 4 and len(cv["fold_weights"]) == 4
    # each fold's weights are the search's on the other folds' videos (the folds: a seeded permutation, 4 slices)
    fold_of = np.random.default_rng(0).permutation(len(y)) % 4
    searched = np.empty(len(y), dtype=np.int64)
    for f, weights in enumerate(cv["fold_weights"]):
        train, held_out = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
        subsets = [Results([m.names[i] for i in train], m.scores[train], y[train]) for m in models]
        assert weights == search_weights(subsets, (0.0, 0.5, 1.0))[0]
        assert weights[2] < max(weights[0], weights[1])  # the useless confident model is down-weighted in every fold
        searched[held_out] = ensemble([Results([m.names[i] for i in held_out], m.scores[held_out], y[held_out])
                                       for m in models], weights).predictions
    assert cv["searched"] == pytest.approx(_sk_f1_mean(y, searched))
    assert cv["equal"] == pytest.approx(ensemble(models).metrics()["f1_mean"])
    gain = cv["gain"]
    assert gain["diff"] == pytest.approx(cv["searched"] - cv["equal"])
    assert 0 < gain["low"] < gain["diff"] < gain["high"] and gain["p_better"] == 1.0  # a real gain, seen out of fold
    # identical models: nothing to gain, in any resample
    same = cross_validate_search([models[0], models[0]], (0.0, 0.5, 1.0), folds=3, resamples=100)["gain"]
    assert (same["diff"], same["low"], same["high"], same["p_better"]) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ResultsError, match="5 videos, 3 folds"):
        cross_validate_search([_subset_of(m, 5) for m in models], folds=3)


def _subset_of(r, n):
    return Results(r.names[:n], r.scores[:n], r.labels[:n])


def _sk_f1_mean(y, pred):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = np.asarray(ma52.FINE_TO_COARSE)
        return (f1_score(y, pred, average="macro") + f1_score(y, pred, average="micro")
                + f1_score(g[y], g[pred], average="macro") + f1_score(g[y], g[pred], average="micro")) / 4


def test_search_needs_labels():
    with pytest.raises(ResultsError, match="labels"):
        search_weights([_random_results(labels=False)], (0.5, 1.0))


# --------------------------------------------------------------------------------------------
# report and CLIs
# --------------------------------------------------------------------------------------------


def test_write_report_files(tmp_path):
    from microact.plots.results import write_report

    r = _random_results(n=40, seed=7, sharp=0.2)
    r.meta["failed"] = ["broken.mp4: cannot decode"]
    m = write_report(r, tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["f1_mean"] == pytest.approx(m["f1_mean"]) and saved["failed"] == r.meta["failed"]
    from microact.metrics import f1_mean_interval, format_summary, predict_coarse

    assert saved["f1_mean_interval"] == f1_mean_interval(r.labels, r.predictions)
    assert saved["f1_mean_interval"]["low"] <= saved["f1_mean"] <= saved["f1_mean_interval"]["high"]
    assert "95 % bootstrap interval over the videos" in format_summary(saved)
    # the interval follows the body-part rule the report is scored with
    summed = write_report(r, tmp_path / "sum", coarse_rule="sum_probs")["f1_mean_interval"]
    assert summed == f1_mean_interval(r.labels, r.predictions, coarse_pred=predict_coarse(r.scores, "sum_probs"))
    for name in ("confusion_fine.png", "confusion_coarse.png", "per_class_f1.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with open(tmp_path / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 52 and rows[9]["name"] == "nodding" and rows[9]["body_part"] == "Head"
    assert sum(int(row["support"]) for row in rows) == 40


def test_cli_submit_with_mmaction2_dump_and_list(tmp_path, capsys):
    r = _random_results(n=10, seed=8, labels=False)
    _mmaction2_dump(tmp_path / "mma.pkl", r.scores, np.zeros(10))
    lst = _write_list(tmp_path / "test_list_videos.txt", r.names, np.zeros(10))
    assert cli(["submit", str(tmp_path / "mma.pkl"), "--out", str(tmp_path / "sub"), "--list", str(lst)]) == 0
    # a bare pickle says nothing about its classes: the submission says it takes them as MA-52's
    assert "records no classes; its 52 columns are taken as MA-52's" in capsys.readouterr().err
    rows = _read_zip_csv(tmp_path / "sub" / "submission_mac2024.zip")
    assert [row[0] for row in rows[1:]] == r.names
    assert (tmp_path / "sub" / "submission_ma52.zip").is_file()
    # without --list the ids are indexes, with a warning
    assert cli(["submit", str(tmp_path / "mma.pkl"), "--out", str(tmp_path / "sub2"), "--format", "mac2024"]) == 0
    assert "no video names" in capsys.readouterr().err
    # a refused pickle is a one-line error with exit status 2
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_Evil(tmp_path / "m"), f, protocol=2)
    assert cli(["submit", str(tmp_path / "evil.pkl"), "--out", str(tmp_path / "x")]) == 2
    assert "refused" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_cli_ensemble_with_search(tmp_path, capsys):
    models = _noisy_models(n=120, seed=1)
    val_paths, test_paths = [], []
    for i, m in enumerate(models):
        val_paths.append(str(save_results(m, tmp_path / f"val{i}.pkl")[0]))
        test_paths.append(str(save_results(m, tmp_path / f"test{i}.npz")[1]))
    out = tmp_path / "ens"
    code = cli(["ensemble", *test_paths, "--search-on", *val_paths, "--grid", "0", "0.5", "1", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "weights:" in printed and "equal weights" in printed
    info = json.loads((out / "ensemble.json").read_text())
    assert info["val_f1_mean"] >= info["val_f1_mean_equal"]
    # the search is cross-validated on the validation videos by default, and said so
    cv = info["cross_validation"]
    assert cv == cross_validate_search(models, (0.0, 0.5, 1.0), folds=5)
    assert "5-fold cross-validated on val" in printed and f"gain {100 * cv['gain']['diff']:+.2f}" in printed
    combined = load_results(out / "ensemble.npz")
    np.testing.assert_allclose(combined.scores, sum(w * m.scores for w, m in zip(info["weights"], models)), rtol=1e-5)
    assert json.loads((out / "metrics.json").read_text())["f1_mean"] == pytest.approx(combined.metrics()["f1_mean"])
    assert (out / "submission_mac2024.zip").is_file() and (out / "ensemble.pkl").is_file()
    assert cli(["ensemble", *test_paths, "--weights", "1", "2", "--out", str(out)]) == 2
    capsys.readouterr()
    assert cli(["ensemble", *test_paths, "--search-on", *val_paths, "--cv-folds", "0", "--out", str(out)]) == 0
    assert "cross-validated" not in capsys.readouterr().out
    assert "cross_validation" not in json.loads((out / "ensemble.json").read_text())


def test_cli_ensemble_of_mmaction2_dumps_takes_names_from_the_list(tmp_path, capsys):
    a, b = _random_results(n=6, seed=21, labels=False), _random_results(n=6, seed=22, labels=False)
    _mmaction2_dump(tmp_path / "a.pkl", a.scores, np.zeros(6))
    _mmaction2_dump(tmp_path / "b.pkl", b.scores, np.zeros(6))
    lst = _write_list(tmp_path / "test_list_videos.txt", a.names, np.zeros(6))
    dumps = [str(tmp_path / "a.pkl"), str(tmp_path / "b.pkl")]
    out = tmp_path / "ens"
    assert cli(["ensemble", *dumps, "--weights", "0.4", "0.6", "--list", str(lst), "--out", str(out)]) == 0
    assert "no video names" not in capsys.readouterr().err
    rows = _read_zip_csv(out / "submission_mac2024.zip")
    assert [row[0] for row in rows[1:]] == a.names
    expected = (0.4 * a.scores.astype(np.float64) + 0.6 * b.scores).argmax(1)
    assert [int(row[2]) for row in rows[1:]] == expected.tolist()
    # without the list the ids are row indexes, and the warning says how to name them
    assert cli(["ensemble", *dumps, "--out", str(tmp_path / "ens2")]) == 0
    assert "--list" in capsys.readouterr().err
    # a list of another length is refused with both files named
    short = _write_list(tmp_path / "short.txt", a.names[:5], np.zeros(5))
    assert cli(["ensemble", *dumps, "--list", str(short), "--out", str(tmp_path / "ens3")]) == 2
    err = capsys.readouterr().err
    assert "short.txt" in err and "a.pkl" in err


def test_coarse_head_scores_survive_saving_and_ensembling(tmp_path):
    rng = np.random.default_rng(9)
    a, b = _random_results(n=5, seed=31, labels=False), _random_results(n=5, seed=32, labels=False)
    a.coarse_head_scores = rng.dirichlet(np.ones(7), size=5).astype(np.float32)
    b.coarse_head_scores = rng.dirichlet(np.ones(7), size=5).astype(np.float32)
    pkl, npz = save_results(a, tmp_path / "a.pkl")
    for path in (pkl, npz):
        np.testing.assert_array_equal(load_results(path).coarse_head_scores, a.coarse_head_scores)
    e = ensemble([a, b], [0.3, 0.7])
    np.testing.assert_allclose(e.coarse_head_scores, 0.3 * a.coarse_head_scores.astype(np.float64)
                               + 0.7 * b.coarse_head_scores, rtol=1e-6)
    assert ensemble([a, _random_results(n=5, seed=33, labels=False)]).coarse_head_scores is None  # not every model has them
    with pytest.raises(ResultsError, match=r"\[5, 7\]"):
        Results(a.names, a.scores, coarse_head_scores=np.zeros((5, 6)))


def test_cli_ensemble_refuses_validation_dumps_of_other_models(tmp_path, capsys):
    """--search-on pairs its i-th dump with the i-th test dump; `microact test` records each dump's checkpoint
    (in the .npz beside a .pkl), so a swapped order is caught instead of giving each model the other's weight."""
    models = _noisy_models(n=60, seed=3)[:2]
    test_paths, val_paths = [], []
    for i, m in enumerate(models):
        for split, paths in (("test", test_paths), ("val", val_paths)):
            r = Results(m.names, m.scores, m.labels, meta={"checkpoint": f"run{i}/model_final.safetensors",
                                                            "split": split})
            paths.append(str(save_results(r, tmp_path / f"{split}{i}.pkl")[0]))
    out = str(tmp_path / "ens")
    assert cli(["ensemble", *test_paths, "--search-on", *reversed(val_paths), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "run0/model_final.safetensors" in err and "run1/model_final.safetensors" in err and "same order" in err
    assert cli(["ensemble", *test_paths, "--search-on", *val_paths, "--out", out]) == 0
    assert "tuned on the test set" not in capsys.readouterr().err
    # searching on test dumps works but says what it is doing
    assert cli(["ensemble", *test_paths, "--search-on", *test_paths, "--out", out]) == 0
    assert capsys.readouterr().err.count("tuned on the test set") == 2


def test_cli_ensemble_says_when_the_search_pairing_cannot_be_checked(tmp_path, capsys):
    models = _noisy_models(n=40, seed=4)[:2]
    paths = [str(save_results(m, tmp_path / f"m{i}.npz")[1]) for i, m in enumerate(models)]  # no checkpoint recorded
    assert cli(["ensemble", *paths, "--search-on", *paths, "--out", str(tmp_path / "ens")]) == 0
    assert "do not record their checkpoint" in capsys.readouterr().err


def test_cli_ensemble_follows_the_coarse_rule_its_dumps_were_scored_with(tmp_path, capsys):
    from microact.metrics import coarse_scores

    rng = np.random.default_rng(12)
    paths, parts = [], []
    for i in range(2):
        r = _random_results(n=10, seed=40 + i, labels=False)
        r.coarse_head_scores = rng.dirichlet(np.ones(7), size=10).astype(np.float32)
        r.meta.update(coarse_rule="coarse_head", checkpoint=f"m{i}.safetensors")
        paths.append(str(save_results(r, tmp_path / f"d{i}.pkl")[0]))
        parts.append(r)
    out = tmp_path / "ens"
    assert cli(["ensemble", *paths, "--weights", "0.3", "0.7", "--out", str(out)]) == 0
    assert "predict.coarse_rule=coarse_head, as the dumps were scored" in capsys.readouterr().out
    fine = 0.3 * parts[0].scores.astype(np.float64) + 0.7 * parts[1].scores
    head = 0.3 * parts[0].coarse_head_scores.astype(np.float64) + 0.7 * parts[1].coarse_head_scores
    body = np.argmax(head * coarse_scores(fine), axis=1)
    assert body.tolist() != ma52.fine_to_coarse(fine.argmax(1)).tolist()  # the rules disagree on these videos
    assert [int(r[1]) for r in _read_zip_csv(out / "submission_mac2024.zip")[1:]] == body.tolist()
    # ... and so does a later `microact submit` of the saved ensemble
    assert cli(["submit", str(out / "ensemble.pkl"), "--out", str(tmp_path / "sub")]) == 0
    assert [int(r[1]) for r in _read_zip_csv(tmp_path / "sub" / "submission_mac2024.zip")[1:]] == body.tolist()
