"""Datasets with their own classes: the classes file, the Taxonomy, metrics, models, dumps, and a run end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from microact import ma52, metrics
from microact.config import ConfigError, load_config
from microact.data.annotations import AnnotationError
from microact.taxonomy import (MA52, Taxonomy, TaxonomyError, load_classes, read_recorded_taxonomy,
                               resolve_taxonomy, write_classes)

# MA-52's own label file: beside the checkout (shared/), else the machine's copy; without either, the same bytes
# rebuilt from the constants (CRLF line ends, no final newline, as the official file)
_CANDIDATES = [Path(__file__).resolve().parents[2] / "shared" / "data" / "ma52", Path("/work/shared/data/ma52")]
MA52_DIR = next((p for p in _CANDIDATES if (p / "label_name.txt").is_file()), None)


@pytest.fixture
def ma52_label_file(tmp_path) -> Path:
    if MA52_DIR is not None:
        return MA52_DIR / "label_name.txt"
    path = tmp_path / "label_name.txt"
    path.write_bytes("\r\n".join(f"{i}\t{n}" for i, n in enumerate(ma52.FINE_NAMES)).encode())
    return path


# A taxonomy whose groups are not contiguous id ranges (unlike MA-52's), so nothing can lean on id order.
SIX = Taxonomy(("wave", "nod", "shrug", "blink", "tap foot", "point"), ("hand", "head", "leg"), (0, 1, 1, 1, 2, 0))


# --------------------------------------------------------------------------------------------
# The classes file
# --------------------------------------------------------------------------------------------


def test_classes_file_with_groups(tmp_path):
    path = tmp_path / "classes.txt"
    # lines out of id order, a BOM, CRLF, a blank line, spaces inside names; groups numbered by first appearance
    # going up the class ids (so the line order does not matter)
    path.write_bytes(b"\xef\xbb\xbf2\tscratch the head\thead-hand\r\n0\tnod\thead\r\n\r\n1\tshake head\thead\r\n"
                     b"3\ttap foot\tleg")
    t = load_classes(path)
    assert t.fine_names == ("nod", "shake head", "scratch the head", "tap foot")
    assert t.coarse_names == ("head", "head-hand", "leg")  # class 0 is a head class
    assert t.fine_to_coarse == (0, 0, 1, 2)
    assert (t.num_fine, t.num_coarse, t.has_coarse, t.is_ma52) == (4, 3, True, False)
    assert t.source == str(path)
    assert load_classes(write_classes(t, tmp_path / "again.txt")) == t


def test_flat_classes_file_and_ma52s_own_files(tmp_path, ma52_label_file):
    flat = tmp_path / "flat.txt"
    flat.write_text("0\tsit\n1\tstand up\n")
    t = load_classes(flat)
    assert t.fine_names == ("sit", "stand up") and not t.has_coarse and t.num_coarse == 0
    # MA-52's label_name.txt (2 columns): a flat list of its 52 names
    own = load_classes(ma52_label_file)
    assert own.fine_names == ma52.FINE_NAMES and not own.has_coarse and own != MA52
    # a 3-column MA-52 file is MA-52
    three = tmp_path / "ma52_groups.txt"
    three.write_bytes("\r\n".join(f"{i}\t{n}\t{ma52.COARSE_NAMES[ma52.FINE_TO_COARSE[i]]}"
                                  for i, n in enumerate(ma52.FINE_NAMES)).encode())
    assert load_classes(three) == MA52 and load_classes(three).is_ma52


BAD_LINES = [
    (b"0 sit\n1\tstand\n", ":1: expected '<id><TAB><name>' or '<id><TAB><name><TAB><group>' (columns are "
     "TAB-separated: names may contain spaces), got 1 TAB-separated column(s): '0 sit'"),
    (b"0\tsit\tbody\textra\n", ":1: expected"),
    (b"zero\tsit\n", ":1: id 'zero' is not an integer"),
    (b"-1\tsit\n0\tstand\n", ":1: id -1 is negative"),
    (b"0\tsit\n0\tstand\n", ":2: id 0 appears twice (first on line 1)"),
    (b"0\tsit\n1\tsit\n", ":2: name 'sit' appears twice (first on line 1)"),
    (b"0\t\tbody\n", ":1: class 0 has an empty name"),
    (b"0\tsit\t \n", ":1: class 0 has an empty group name"),
    (b"0\tsit\tbody\n1\tstand\tbody\n2\twave\n", ":3: this line names no group but line 1 names one"),
    (b"0\tsit\n2\twave\n", ": ids missing: 1 (ids must be 0..K-1, each once)"),
    (b"0\tsit\xff\n", ":1: not valid UTF-8 (byte 0xff at column 6)"),
    (b"\n\n", ": no classes (the file is empty)"),
]


@pytest.mark.parametrize("data, expected", BAD_LINES, ids=[str(i) for i in range(len(BAD_LINES))])
def test_each_bad_line_is_reported_with_file_and_line(tmp_path, data, expected):
    path = tmp_path / "classes.txt"
    path.write_bytes(data)
    with pytest.raises(AnnotationError) as e:
        load_classes(path)
    assert f"{path}{expected}" in str(e.value)


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes(b"0\tsit\nx\tstand\n0\twave\n5 jump\n3\tclap\n")
    with pytest.raises(AnnotationError) as e:
        load_classes(path)
    assert len(e.value.problems) == 4  # bad id, duplicate id, one column, ids 1 and 2 missing
    assert [p.split(": ")[0] for p in e.value.problems] == [f"{path}:2", f"{path}:3", f"{path}:4", str(path)]
    with pytest.raises(AnnotationError, match="classes file not found"):
        load_classes(tmp_path / "nope.txt")
    # an id whose line has another problem is present all the same; the group rule's lines come in line order
    path.write_bytes(b"0\tsway\tbody\n1\tnod\tupper\n2\tsway\tupper\n3\twave\n4\tclap\thand\n")
    with pytest.raises(AnnotationError) as e:
        load_classes(path)
    assert [p.split(": ")[0] for p in e.value.problems] == [f"{path}:3", f"{path}:4"]
    assert "ids missing" not in str(e.value)


# --------------------------------------------------------------------------------------------
# The Taxonomy object
# --------------------------------------------------------------------------------------------


def test_taxonomy_maps_like_ma52s_fine_to_coarse():
    # the body-part id ranges as SEED.md §11.3 lists them, independent of ma52.FINE_TO_COARSE
    ranges = [range(0, 5), range(5, 11), range(11, 24), range(24, 32), range(32, 38), range(38, 48), range(48, 52)]
    part = {fine: g for g, ids in enumerate(ranges) for fine in ids}
    for labels, kind in ((9, int), ([0, 51, 24], np.ndarray), (np.array([11, 38]), np.ndarray),
                         (torch.tensor([5, 47, 48]), torch.Tensor)):
        expected = part[labels] if kind is int else [part[int(f)] for f in labels]
        for ours in (MA52.coarse_of(labels), ma52.fine_to_coarse(labels)):
            assert isinstance(ours, kind)
            assert (ours if kind is int else np.asarray(ours).tolist()) == expected
    for g in range(7):
        assert MA52.members(g) == tuple(ma52.coarse_members(g))
    assert SIX.coarse_of([0, 1, 2, 3, 4, 5]).tolist() == [0, 1, 1, 1, 2, 0]
    assert SIX.members(0) == (0, 5) and SIX.group_name(4) == "leg"
    flat = Taxonomy(("a", "b"))
    assert flat.group_name(1) is None
    with pytest.raises(TaxonomyError, match="flat"):
        flat.coarse_of([0])


def test_coarse_of_keeps_one_table_per_device_and_pickles_without_it():
    import copy
    import pickle

    six = Taxonomy(SIX.fine_names, SIX.coarse_names, SIX.fine_to_coarse, source="six.txt")
    labels = torch.tensor([5, 0, 3])
    first = six.coarse_of(labels)
    table = six._device_tables[labels.device]
    second = six.coarse_of(torch.tensor([4, 1]))
    assert six._device_tables[labels.device] is table  # made once, not on every training step
    assert first.tolist() == [0, 0, 1] and second.tolist() == [2, 1]
    # a tensor result must not be a view into the cached table (a caller writing into it would corrupt the map)
    first.fill_(9)
    assert six.coarse_of(torch.tensor([5, 0, 3])).tolist() == [0, 0, 1]
    for clone in (pickle.loads(pickle.dumps(six)), copy.deepcopy(six)):
        assert clone == six and clone.source == "six.txt" and clone._device_tables == {}
        assert clone.coarse_of(torch.tensor([2, 4])).tolist() == [1, 2]
    assert hash(six) == hash(SIX) and "_device_tables" not in repr(six)


def test_taxonomy_round_trip_and_equality():
    for t in (MA52, SIX, Taxonomy(("a", "b"))):
        back = Taxonomy.from_dict(json.loads(json.dumps(t.to_dict())), "somewhere")
        assert back == t and back.source == "somewhere"  # the source is not part of equality
        assert Taxonomy.from_json(t.to_json()) == t
    assert Taxonomy(ma52.FINE_NAMES, ma52.COARSE_NAMES, ma52.FINE_TO_COARSE, source="x").is_ma52
    assert SIX != Taxonomy(SIX.fine_names)  # the groups count


@pytest.mark.parametrize("kwargs, message", [
    ({"fine_names": ()}, "no classes"),
    ({"fine_names": ("a", "a")}, "class name 'a' appears twice"),
    ({"fine_names": ("a", "b"), "coarse_names": ("g",)}, "come together"),
    ({"fine_names": ("a", "b"), "coarse_names": ("g",), "fine_to_coarse": (0,)}, "1 entries for 2 classes"),
    ({"fine_names": ("a", "b"), "coarse_names": ("g",), "fine_to_coarse": (0, 1)}, "group id 1 is outside 0..0"),
    ({"fine_names": ("a", "b"), "coarse_names": ("g", "h"), "fine_to_coarse": (0, 0)}, "group 'h' has no classes"),
])
def test_inconsistent_taxonomies_are_refused(kwargs, message):
    with pytest.raises(TaxonomyError, match=message):
        Taxonomy(**kwargs)
    with pytest.raises(TaxonomyError, match="dump.npz: "):
        Taxonomy.from_dict({"fine_names": list(kwargs["fine_names"]), "coarse_names": list(kwargs.get(
            "coarse_names", ())), "fine_to_coarse": list(kwargs.get("fine_to_coarse", ()))}, "dump.npz")


# --------------------------------------------------------------------------------------------
# Metrics on a custom taxonomy, against scikit-learn on hand-mapped labels
# --------------------------------------------------------------------------------------------

HAND_MAP = {0: 0, 1: 1, 2: 1, 3: 1, 4: 2, 5: 0}  # SIX's groups, written out by hand


def _sk(y_true, y_pred, labels=None, coarse_labels=None):
    ct, cp = [HAND_MAP[v] for v in y_true], [HAND_MAP[v] for v in y_pred]
    parts = {"fine_macro": f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0),
             "fine_micro": f1_score(y_true, y_pred, average="micro", labels=labels, zero_division=0),
             "coarse_macro": f1_score(ct, cp, average="macro", labels=coarse_labels, zero_division=0),
             "coarse_micro": f1_score(ct, cp, average="micro", labels=coarse_labels, zero_division=0)}
    return {"f1_mean": sum(parts.values()) / 4, **parts}


@pytest.mark.parametrize("seed", range(6))
def test_f1_mean_of_a_custom_taxonomy_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    y_true, y_pred = rng.integers(0, 6, n), rng.integers(0, 6, n)
    ours = metrics.f1_mean(y_true, y_pred, taxonomy=SIX)
    ref = _sk(y_true.tolist(), y_pred.tolist())
    assert ours == pytest.approx(ref, abs=1e-12)
    every = metrics.f1_mean(y_true, y_pred, "all", taxonomy=SIX)
    assert every == pytest.approx(_sk(y_true.tolist(), y_pred.tolist(), list(range(6)), [0, 1, 2]), abs=1e-12)


def test_group_scores_and_rules_of_a_custom_taxonomy():
    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(6), size=20)
    sums = metrics.coarse_scores(scores, SIX)
    expected = np.stack([[sum(row[f] for f in range(6) if HAND_MAP[f] == g) for g in range(3)] for row in scores])
    np.testing.assert_allclose(sums, expected, rtol=1e-12)
    assert metrics.predict_coarse(scores, "sum_probs", taxonomy=SIX).tolist() == expected.argmax(1).tolist()
    assert metrics.predict_coarse(scores, taxonomy=SIX).tolist() == [HAND_MAP[int(i)] for i in scores.argmax(1)]
    from microact.models.recognizer import coarse_scores as torch_coarse_scores

    np.testing.assert_allclose(torch_coarse_scores(scores.astype(np.float32), "sum_probs", taxonomy=SIX), expected,
                               rtol=1e-5)
    with pytest.raises(metrics.MetricError, match="outside the taxonomy's 0..5"):
        metrics.f1_mean([0, 6], [0, 1], taxonomy=SIX)
    with pytest.raises(metrics.MetricError, match="need 6 fine columns"):
        metrics.coarse_scores(np.ones((2, 52)), SIX)


def test_flat_taxonomy_scores_the_fine_level_only():
    flat = Taxonomy(tuple(f"c{i}" for i in range(5)))
    rng = np.random.default_rng(4)
    scores = rng.dirichlet(np.ones(5), size=30)
    labels = rng.integers(0, 5, 30)
    pred = scores.argmax(1)
    out = metrics.evaluate_scores(scores, labels, taxonomy=flat)
    macro = f1_score(labels, pred, average="macro", zero_division=0)
    micro = f1_score(labels, pred, average="micro", zero_division=0)
    assert out["f1_mean"] == pytest.approx((macro + micro) / 2, abs=1e-12)
    assert not any(k.startswith("coarse_") for k in out) and "per_coarse_class" not in out
    assert [r["name"] for r in out["per_class"]] == list(flat.fine_names)
    assert "flat taxonomy" in out["f1_mean_of"]
    text = metrics.format_summary(out)
    assert "F1_mean = mean of fine macro and fine micro F1" in text and "coarse" not in text.replace(
        "no coarse level", "")
    with pytest.raises(metrics.MetricError, match="no coarse level to predict"):
        metrics.predict_coarse(scores, "sum_probs", taxonomy=flat)


def test_flat_report_writes_no_coarse_files(tmp_path):
    from microact.plots.results import write_report
    from microact.results import Results

    flat = Taxonomy(("sit", "stand", "wave"))
    rng = np.random.default_rng(1)
    results = Results([f"v{i}.mp4" for i in range(12)], rng.dirichlet(np.ones(3), size=12), rng.integers(0, 3, 12),
                      taxonomy=flat)
    m = write_report(results, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion_fine.png", "metrics.json", "per_class.csv",
                                                          "per_class_f1.png"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["taxonomy"] == flat.to_dict() and saved["f1_mean"] == pytest.approx(m["f1_mean"])
    header = (tmp_path / "per_class.csv").read_text().splitlines()[0]
    assert header == "id,name,precision,recall,f1,support,predicted"


# --------------------------------------------------------------------------------------------
# Models and losses
# --------------------------------------------------------------------------------------------

TINY = dict(num_frames=4, img_size=32)


def test_coarse_heads_and_loss_follow_the_taxonomy():
    from microact.losses import CrossEntropyF1LossDouble, build_loss
    from microact.models import create_model

    torch.manual_seed(0)
    model = create_model("videomae_test_frame_coarse_tsn", taxonomy=SIX, **TINY)
    assert model.taxonomy == SIX and model.num_classes == 6
    x = torch.randn(4, 3, 4, 32, 32)
    out = model(x)
    assert out.fine.shape == (4, 6) and out.coarse.shape == (4, 3) and out.coarse_frame.shape[-1] == 3
    labels = torch.tensor([0, 4, 5, 2])
    loss = build_loss(model.preset.loss, 6, taxonomy=model.taxonomy)
    terms = loss.terms(out, labels)
    hand = torch.tensor([HAND_MAP[int(v)] for v in labels])
    ref = CrossEntropyF1LossDouble(3).terms((out.coarse, out.coarse_frame), hand)
    assert torch.equal(terms["coarse"], ref["lead"]) and torch.equal(terms["coarse_frame"], ref["frame"])
    # the default stays MA-52 (52 classes, 7 body parts)
    assert create_model("videomae_test_frame_coarse_tsn", **TINY).taxonomy is MA52


def test_coarse_heads_on_a_flat_taxonomy_are_refused_with_the_override_to_use():
    from microact.errors import MicroactError
    from microact.models import create_model

    flat = Taxonomy(("a", "b", "c"))
    with pytest.raises(MicroactError) as e:
        create_model("videomae_test_frame_coarse_tsn", taxonomy=flat, **TINY)
    assert "model.overrides={use_coarse: false}" in str(e.value) and "no coarse level" in str(e.value)
    model = create_model("videomae_test_frame_coarse_tsn", taxonomy=flat, use_coarse=False, **TINY)
    assert model.preset.loss == "cef1_double" and not model.has_coarse and model.num_classes == 3
    with pytest.raises(MicroactError, match="num_classes=4 but the taxonomy lists 3"):
        create_model("videomae_test_frame_coarse_tsn", taxonomy=flat, use_coarse=False, num_classes=4, **TINY)


# --------------------------------------------------------------------------------------------
# The recipe: data.classes
# --------------------------------------------------------------------------------------------


@pytest.fixture
def classes_root(tmp_path):
    (tmp_path / "classes.txt").write_text("0\tnod\thead\n1\twave\thand\n2\tpoint\thand\n")
    (tmp_path / "flat.txt").write_text("0\tnod\n1\twave\n")
    return tmp_path


def test_resolve_taxonomy_takes_the_count_from_the_file(classes_root):
    cfg = load_config(None, [f"data.root={classes_root}", "data.classes=classes.txt"])
    assert resolve_taxonomy(cfg) == load_classes(classes_root / "classes.txt")
    assert cfg.data.num_classes == cfg.model.num_classes == 3
    assert "num_classes: 3" in cfg.to_yaml()  # the recipe a run records says it
    # a recipe file stating MA-52's 52 (every shipped recipe does) counts as the default
    recipe = classes_root / "r.yaml"
    recipe.write_text("data: {num_classes: 52}\nmodel: {num_classes: 52}\n")
    cfg = load_config(recipe, [f"data.root={classes_root}", "data.classes=classes.txt"])
    assert resolve_taxonomy(cfg).num_fine == 3 == cfg.data.num_classes
    # counts the user set that agree are fine; others are an error naming the keys and the file
    cfg = load_config(None, [f"data.root={classes_root}", "data.classes=classes.txt", "data.num_classes=3",
                             "model.num_classes=3"])
    assert resolve_taxonomy(cfg).num_fine == 3
    # one count typed to match the file is enough: the other one, left at 52, follows the file
    cfg = load_config(None, [f"data.root={classes_root}", "data.classes=classes.txt", "data.num_classes=3"])
    assert resolve_taxonomy(cfg).num_fine == 3 == cfg.model.num_classes
    cfg = load_config(None, [f"data.root={classes_root}", "data.classes=classes.txt", "data.num_classes=52",
                             "model.num_classes=52"])
    with pytest.raises(ConfigError) as e:
        resolve_taxonomy(cfg)
    assert str(e.value).startswith(f"data.num_classes=52, model.num_classes=52 but data.classes=classes.txt "
                                   f"({classes_root / 'classes.txt'}) lists 3 classes: set data.num_classes=3 and "
                                   "model.num_classes=3, leave them out")
    assert set(e.value.keys) == {"data.num_classes", "model.num_classes", "data.classes"}


def test_resolve_taxonomy_errors(classes_root):
    assert resolve_taxonomy(load_config(None, [])) is MA52
    with pytest.raises(ConfigError, match="data.num_classes=10 but data.classes is not set"):
        resolve_taxonomy(load_config(None, ["data.num_classes=10", "model.num_classes=10"]))
    with pytest.raises(ConfigError, match=r"data.classes=missing.txt: .*missing.txt not found"):
        resolve_taxonomy(load_config(None, [f"data.root={classes_root}", "data.classes=missing.txt"]))
    with pytest.raises(ConfigError, match="predict.coarse_rule=sum_probs predicts groups"):
        resolve_taxonomy(load_config(None, [f"data.root={classes_root}", "data.classes=flat.txt",
                                            "predict.coarse_rule=sum_probs"]))
    (classes_root / "bad.txt").write_text("0 nod\n")
    with pytest.raises(AnnotationError, match=r"bad.txt:1: expected"):
        resolve_taxonomy(load_config(None, [f"data.root={classes_root}", "data.classes=bad.txt"]))


# --------------------------------------------------------------------------------------------
# What a run records: weights metadata, result dumps, ensembles, submissions
# --------------------------------------------------------------------------------------------


def test_weights_record_the_taxonomy(tmp_path):
    from microact.engine.state import save_checkpoint, save_weights

    model = torch.nn.Linear(2, 2)
    save_weights(model, tmp_path / "w.safetensors", "recipe: 1\n", SIX)
    save_checkpoint(tmp_path, 3, model, {"epoch": 1}, keep=1, recipe="x: 1\n", taxonomy=SIX)
    save_weights(model, tmp_path / "old.safetensors")
    for name in ("w.safetensors", "checkpoints/model_00000003.safetensors"):
        back = read_recorded_taxonomy(tmp_path / name)
        assert back == SIX and back.coarse_names == SIX.coarse_names
    assert read_recorded_taxonomy(tmp_path / "old.safetensors") is None
    assert read_recorded_taxonomy(tmp_path / "nothing.safetensors") is None


def _results(taxonomy, n=10, seed=0, labels=True):
    from microact.results import Results

    rng = np.random.default_rng(seed)
    k = taxonomy.num_fine
    return Results([f"v{i}.mp4" for i in range(n)], rng.dirichlet(np.ones(k), size=n).astype(np.float32),
                   rng.integers(0, k, n) if labels else None, taxonomy=taxonomy)


def test_dumps_carry_their_taxonomy(tmp_path):
    from microact.results import ResultsError, load_results, save_results

    r = _results(SIX)
    save_results(r, tmp_path / "a.pkl")
    for name in ("a.npz", "a.pkl"):  # the pickle's from the .npz beside it
        back = load_results(tmp_path / name)
        assert back.taxonomy == SIX
        assert back.metrics()["f1_mean"] == pytest.approx(metrics.f1_mean(r.labels, r.predictions,
                                                                           taxonomy=SIX)["f1_mean"])
    # a pickle on its own (mmaction2's schema has no room for it) needs the taxonomy given
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "a.pkl").write_bytes((tmp_path / "a.pkl").read_bytes())
    bare = load_results(lone / "a.pkl")
    assert bare.taxonomy is None
    with pytest.raises(ResultsError, match=r"6 classes and no recorded taxonomy .*--classes FILE"):
        bare.metrics()
    assert load_results(lone / "a.pkl", taxonomy=SIX).taxonomy == SIX
    # a taxonomy that contradicts the recorded one is refused
    other = Taxonomy(tuple(f"x{i}" for i in range(6)), source="other.txt")
    with pytest.raises(ResultsError, match=r"a.npz records other classes than other.txt \(class 0 is 'wave' vs "
                                           r"'x0'\)"):
        load_results(tmp_path / "a.npz", taxonomy=other)
    # MA-52 dumps written before taxonomies existed still read as MA-52, and a 52-class pickle can be told otherwise
    r52 = _results(MA52, seed=2)
    save_results(r52, lone / "m.pkl")
    (lone / "m.npz").unlink()
    assert load_results(lone / "m.pkl").taxonomy is MA52
    custom52 = Taxonomy(tuple(f"c{i}" for i in range(52)))
    assert load_results(lone / "m.pkl", taxonomy=custom52).taxonomy == custom52


def test_ensembles_refuse_mixed_taxonomies_and_submissions_refuse_non_ma52(tmp_path, capsys):
    from microact.cli import main as cli
    from microact.results import ResultsError, save_results, write_mac2024_submission

    a, b = _results(SIX, seed=1), _results(SIX, seed=2)
    b.labels = a.labels
    other = Taxonomy(("wave", "nod", "shrug", "blink", "tap foot", "point"))  # the same names, flat
    c = _results(other, seed=3)
    c.labels = a.labels
    for name, r in (("a", a), ("b", b), ("c", c)):
        save_results(r, tmp_path / f"{name}.pkl")
    assert cli(["ensemble", str(tmp_path / "a.npz"), str(tmp_path / "c.npz"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'c.npz'} and {tmp_path / 'a.npz'} are over different classes (a flat list vs groups)" in err
    # one taxonomy: weights searched on the taxonomy's F1_mean, no challenge files
    assert cli(["ensemble", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--search-on", str(tmp_path / "a.npz"),
                str(tmp_path / "b.npz"), "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "no challenge submission files: the classes are not MA-52's" in out
    info = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    w = info["weights"]
    combined = w[0] * a.scores.astype(np.float64) + w[1] * b.scores.astype(np.float64)
    assert info["val_f1_mean"] == pytest.approx(_sk(a.labels.tolist(), combined.argmax(1).tolist())["f1_mean"])
    assert not list((tmp_path / "e").glob("submission_*"))
    # a 52-class taxonomy that is not MA-52 gets no MA-52 submission
    custom52 = Taxonomy(tuple(f"c{i}" for i in range(52)))
    with pytest.raises(ResultsError, match="submissions are MA-52's"):
        write_mac2024_submission(_results(custom52, labels=False), tmp_path)
    save_results(_results(custom52, labels=False), tmp_path / "t.pkl")
    assert cli(["submit", str(tmp_path / "t.npz"), "--out", str(tmp_path / "s")]) == 2
    assert "submissions are MA-52's, but these results are over other classes" in capsys.readouterr().err


def test_ensemble_of_bare_pickles_takes_classes(tmp_path, capsys):
    from microact.cli import main as cli
    from microact.results import save_results

    a = _results(SIX, seed=5)
    save_results(a, tmp_path / "a.pkl")
    (tmp_path / "a.npz").unlink()
    write_classes(SIX, tmp_path / "classes.txt")
    assert cli(["ensemble", str(tmp_path / "a.pkl"), "--out", str(tmp_path / "e")]) == 2
    assert "pass the classes file the model was trained with (--classes FILE)" in capsys.readouterr().err
    assert cli(["ensemble", str(tmp_path / "a.pkl"), "--classes", str(tmp_path / "classes.txt"), "--out",
                str(tmp_path / "e")]) == 0
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert report["f1_mean"] == pytest.approx(_sk(a.labels.tolist(), a.predictions.tolist())["f1_mean"])
    assert [r["name"] for r in report["per_coarse_class"]] == ["hand", "head", "leg"]


def test_data_check_with_a_classes_file(tmp_path):
    from conftest import write_labelled_clips
    from microact.data.check import check_dataset, format_report

    lines = write_labelled_clips(tmp_path, 4, num_classes=4)
    (tmp_path / "train_list_videos.txt").write_text("\n".join(lines) + "\n")  # labels 0..3
    (tmp_path / "classes.txt").write_text("0\tnod\n1\twave\n2\tsit\n")
    report = check_dataset(tmp_path, classes="classes.txt", decode=False, progress=False)
    assert report["classes"].startswith("3 classes without groups")
    assert any("label 3 is outside [0, 3)" in p for p in report["problems"])
    (tmp_path / "classes.txt").write_text("0\tnod\n1\twave\n2\tsit\n3\tjump\n4\tclap\n")
    report = check_dataset(tmp_path, classes="classes.txt", decode=False, progress=False)
    assert not report["problems"]
    assert "no clips of: 4 clap" in format_report(report)
    (tmp_path / "classes.txt").write_text("0 nod\n")
    report = check_dataset(tmp_path, classes="classes.txt", decode=False, progress=False)
    assert any(p.startswith(f"{tmp_path / 'classes.txt'}:1: expected") for p in report["problems"])


# --------------------------------------------------------------------------------------------
# End to end: synth -> own classes -> train -> test -> predict from the weights alone
# --------------------------------------------------------------------------------------------

RECIPE = """\
description: own classes, tiny
model: {preset: videomae_test_frame_coarse_tsn, head_dropout: 0.0}
data: {root: DATA, classes: my_classes.txt, train_lists: [train_list_videos.txt], val_list: val_list_videos.txt,
       clip_len: 4, img_size: 32, num_workers: 0}
train: {epochs: 1, global_batch: 2, micro_batch: 2, precision: fp32, tensorboard: false, log_every: 1}
eval: {resize_short: 36, crop_height: 48, batch_size: 4, val_clips: 1, test_clips: 1}
aug: {color_jitter: false}
"""
MY_CLASSES = "0\tsway torso\tbody\n1\tnod\thead\n2\tlean back\tbody\n"


@pytest.fixture(scope="module")
def own_dataset(tmp_path_factory):
    """`microact synth`'s real mp4s of 3 MA-52 classes, relabelled as a dataset of its own: 3 classes, 2 groups."""
    from microact.data.synth import synthesize

    root = tmp_path_factory.mktemp("own") / "data"
    summary = synthesize(root, num_classes=3, clips_per_class=4, seed=1, frames=8, fps=10, width=64, height=48,
                         workers=1, progress=False)
    remap = {c: i for i, c in enumerate(summary["classes"])}
    for split in ("train", "val", "test"):
        f = root / f"{split}_list_videos.txt"
        rows = [line.split() for line in f.read_text().splitlines() if line.strip()]
        f.write_text("".join(f"{name} {remap[int(label)]}\n" for name, label in rows))
    (root / "my_classes.txt").write_text(MY_CLASSES)
    (root / "label_name.txt").unlink()  # MA-52's names must not be needed anywhere
    return root


def test_own_classes_end_to_end(own_dataset, tmp_path, capsys, monkeypatch):
    from microact.cli import main as cli
    from microact.engine.evaluate import recorded_recipe
    from microact.results import load_results

    taxonomy = load_classes(own_dataset / "my_classes.txt")
    recipe = tmp_path / "own.yaml"
    recipe.write_text(RECIPE.replace("DATA", str(own_dataset)))
    run = tmp_path / "run"
    assert cli(["train", str(recipe), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"classes: 3 classes in 2 groups, from {own_dataset / 'my_classes.txt'}" in out
    assert "coarse_macro" in out  # validation has both levels
    weights = run / "model_final.safetensors"
    assert read_recorded_taxonomy(weights) == taxonomy
    assert "num_classes: 3" in recorded_recipe(weights)

    # microact test: the dump and the report carry the classes
    dump = tmp_path / "val.pkl"
    assert cli(["test", str(recipe), str(weights), "--split", "val", "--dump", str(dump)]) == 0
    out = capsys.readouterr().out
    assert "group" in out and "body part" not in out
    results = load_results(dump)
    assert results.taxonomy == taxonomy and results.scores.shape[1] == 3
    report = json.loads((tmp_path / "val_report" / "metrics.json").read_text())
    assert report["taxonomy"] == taxonomy.to_dict()
    assert report["f1_mean"] == pytest.approx(
        _sk_groups(results.labels, results.predictions, taxonomy)["f1_mean"])
    assert [r["name"] for r in report["per_class"]] == ["sway torso", "nod", "lean back"]
    # an unlabelled list (every label 0, as test lists): predictions, but no MA-52 submission for these classes
    rows = (own_dataset / "test_list_videos.txt").read_text().split()[::2]
    unlabelled = tmp_path / "unlabelled.txt"
    unlabelled.write_text("".join(f"{name} 0\n" for name in rows))
    assert cli(["test", str(recipe), str(weights), "--list", str(unlabelled), "--out", str(tmp_path / "t")]) == 0
    assert "no challenge submission files: the classes are not MA-52's" in capsys.readouterr().out
    assert not list((tmp_path / "t").glob("submission_*"))

    # predict on another machine: only the weights, the recipe's data folder is not there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    video = sorted(own_dataset.glob("*.mp4"))[0]
    pred_json = elsewhere / "pred.json"
    # the recorded recipe's data.root is this machine's: point it where no classes file is, as on another machine
    from safetensors.torch import load_file

    from microact.engine.state import save_weights

    recipe_yaml = recorded_recipe(weights).replace(str(own_dataset), "/nowhere/data")
    save_weights(load_file(str(weights)), elsewhere / "w.safetensors", recipe_yaml, read_recorded_taxonomy(weights))
    assert cli(["predict", str(video), "--checkpoint", "w.safetensors", "--detector", "none", "--device", "cpu",
                "--top-k", "5", "--json", str(pred_json)]) == 0
    captured = capsys.readouterr()
    assert "using the classes recorded in w.safetensors: 3 classes in 2 groups (data.classes=my_classes.txt is not "\
           "on this machine)" in captured.err
    doc = json.loads(pred_json.read_text())
    pred = doc["predictions"][0]
    assert doc["taxonomy"] == taxonomy.to_dict() and "body_part" not in pred
    assert {r["name"] for r in pred["top_k"]} == set(taxonomy.fine_names)  # top 5 of 3 classes: all three
    probs = np.asarray(pred["probs"])
    assert probs.shape == (3,)
    assert pred["group"]["map_top1"]["name"] == taxonomy.group_name(int(probs.argmax()))
    best = pred["top_k"][0]["name"]
    assert best in captured.out
    assert f"group: {pred['group']['map_top1']['name']} (that of the top-1 class)" in captured.out


def _sk_groups(y_true, y_pred, taxonomy):
    ct = [taxonomy.fine_to_coarse[int(v)] for v in y_true]
    cp = [taxonomy.fine_to_coarse[int(v)] for v in y_pred]
    parts = [f1_score(y_true, y_pred, average="macro", zero_division=0),
             f1_score(y_true, y_pred, average="micro", zero_division=0),
             f1_score(ct, cp, average="macro", zero_division=0), f1_score(ct, cp, average="micro", zero_division=0)]
    return {"f1_mean": sum(parts) / 4}


def test_flat_classes_train_with_the_override_and_refuse_coarse_heads(own_dataset, tmp_path, capsys):
    from microact.cli import main as cli

    (own_dataset / "flat.txt").write_text("0\tsway torso\n1\tnod\n2\tlean back\n")
    recipe = tmp_path / "flat.yaml"
    recipe.write_text(RECIPE.replace("DATA", str(own_dataset)).replace("my_classes.txt", "flat.txt"))
    run = tmp_path / "run"
    assert cli(["train", str(recipe), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "model.preset=videomae_test_frame_coarse_tsn: the model has coarse heads" in err
    assert "model.overrides={use_coarse: false}" in err
    assert not run.exists()  # refused before the run folder was made
    assert cli(["train", str(recipe), "model.overrides={use_coarse: false}", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "classes: 3 classes without groups" in out
    assert "F1_mean averages fine macro F1 and fine micro F1 (flat taxonomy: no coarse level)" in out
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["f1_mean_of"] == "fine macro F1 and fine micro F1 (flat taxonomy: no coarse level)"
    val = summary["val"][0]
    assert set(val) >= {"f1_mean", "fine_macro", "fine_micro"} and "coarse_macro" not in val
    assert val["f1_mean"] == pytest.approx((val["fine_macro"] + val["fine_micro"]) / 2)


def test_plots_colour_by_the_taxonomys_groups(tmp_path):
    from microact.plots.data import plot_class_distribution
    from microact.plots.results import PART_COLOURS, group_boundaries, group_colour, plot_per_class_f1, plot_timeline

    assert group_boundaries(MA52) == [5, 11, 24, 32, 38, 48]  # the lines drawn on MA-52's confusion matrix
    assert group_boundaries(SIX) == []  # groups that are not id ranges get none
    assert [group_colour(g) for g in range(7)] == list(PART_COLOURS)  # MA-52's plots keep their colours
    assert len({group_colour(g) for g in range(20)}) == 20
    flat = Taxonomy(("sit", "stand", "wave"))
    rows = metrics.per_class_report([0, 1, 2, 2], [0, 2, 2, 1], flat.fine_names)
    assert plot_per_class_f1(rows, tmp_path / "f1.png", taxonomy=flat).stat().st_size > 0
    assert plot_class_distribution({0: 3, 4: 1, 5: 2}, path=tmp_path / "dist.png", taxonomy=SIX).stat().st_size > 0
    windows = [{"start_s": float(i), "end_s": i + 1.0, "probs": p, "top_k": [{"id": int(np.argmax(p))}]}
               for i, p in enumerate([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2]])]
    pred = {"video": "x.mp4", "window_s": 1.0, "stride_s": 1.0, "windows": windows,
            "segments": [{"start_s": float(i), "end_s": i + 1.0, "id": w["top_k"][0]["id"]}
                         for i, w in enumerate(windows)]}
    assert plot_timeline(pred, tmp_path / "timeline.png", taxonomy=flat).stat().st_size > 0


# --------------------------------------------------------------------------------------------
# A classes file edited after training: predict warns (the weights' classes win), resume refuses
# --------------------------------------------------------------------------------------------

PREDICT_TINY = ["model.preset=videomae_test_frame_coarse_tsn", "data.clip_len=4", "data.img_size=32",
                "eval.resize_short=40", "eval.crop_height=48", "eval.test_clips=1"]


def test_predict_with_an_edited_classes_file_warns_and_uses_the_recorded_classes(tmp_path, make_video, capsys):
    from microact.cli import main as cli
    from microact.engine.state import save_weights
    from microact.models.presets import create_model_from_config
    from microact.predict import predict_video

    classes = tmp_path / "classes.txt"
    classes.write_text("0\tnod\thead\n1\twave\thand\n2\tpoint\thand\n")
    cfg = load_config(None, PREDICT_TINY + [f"data.root={tmp_path}", "data.classes=classes.txt"])
    trained = resolve_taxonomy(cfg)
    torch.manual_seed(3)
    model = create_model_from_config(cfg, pretrained=False, taxonomy=trained).eval()
    weights = tmp_path / "model_final.safetensors"
    save_weights(model, weights, cfg.to_yaml(), trained)  # as a run writes it: the recipe says num_classes: 3
    video = make_video("clip.mp4", num_frames=12, height=64, width=48)
    expected = predict_video(model, cfg, video, torch.device("cpu"), detector="none", taxonomy=trained)["probs"]

    def predict():
        out = tmp_path / "pred.json"
        code = cli(["predict", str(video), "--checkpoint", str(weights), "--detector", "none", "--device", "cpu",
                    "--top-k", "3", "--json", str(out)])
        err = capsys.readouterr().err
        assert code == 0, err
        return json.loads(out.read_text()), err

    # a fourth class added to the file since: the weights' 3 classes, a warning naming the file and the difference
    classes.write_text("0\tnod\thead\n1\twave\thand\n2\tpoint\thand\n3\tshrug\tbody\n")
    doc, err = predict()
    assert doc["taxonomy"] == trained.to_dict()
    pred = doc["predictions"][0]
    assert [r["name"] for r in pred["top_k"]] == [trained.fine_names[i] for i in np.argsort(expected)[::-1]]
    np.testing.assert_allclose(pred["probs"], expected, rtol=1e-5, atol=1e-7)
    assert (f"WARNING: {weights}: the weights were trained on other classes than {classes} now lists (3 classes "
            "vs 4;") in err
    assert "using the 3 classes recorded in the weights" in err
    # the same count, a class renamed: named too
    classes.write_text("0\tnod\thead\n1\twave hello\thand\n2\tpoint\thand\n")
    doc, err = predict()
    assert doc["taxonomy"] == trained.to_dict()
    assert f"{classes} now lists (class 1 is 'wave' vs 'wave hello';" in err
    # a broken file: a warning naming it, the recorded classes still predict
    classes.write_text("0 nod\n")
    doc, err = predict()
    assert doc["taxonomy"] == trained.to_dict()
    assert f"WARNING: {classes}:1: expected" in err and "using the 3 classes recorded in" in err
    # the file as it was: no warning
    write_classes(trained, classes)
    doc, err = predict()
    assert doc["taxonomy"] == trained.to_dict() and "WARNING" not in err


def test_resume_refuses_a_checkpoint_trained_on_other_classes(own_dataset, tmp_path, capsys):
    """data.classes is a path: the recipe comparison cannot see the file edited since the checkpoint. The resumed
    run would train on label ids that mean other classes and record the new ones for the old weights."""
    from safetensors.torch import load_file

    from microact.cli import main as cli
    from microact.engine.evaluate import recorded_recipe
    from microact.engine.state import latest_checkpoint, save_weights

    classes = own_dataset / "resume_classes.txt"
    classes.write_text(MY_CLASSES)
    trained = load_classes(classes)
    recipe = tmp_path / "own.yaml"
    recipe.write_text(RECIPE.replace("DATA", str(own_dataset)).replace("my_classes.txt", "resume_classes.txt"))
    run = tmp_path / "run"

    def train(steps: int, *flags):
        code = cli(["train", str(recipe), "data.val_list=null", f"train.max_steps={steps}", "--out", str(run), *flags])
        return code, capsys.readouterr()

    code, _ = train(1)
    assert code == 0
    weights, state = latest_checkpoint(run)
    assert read_recorded_taxonomy(weights) == trained
    before = weights.read_bytes()

    # the same count, a class renamed: refused, naming the checkpoint, the file, the difference and what to do
    classes.write_text(MY_CLASSES.replace("\tnod\t", "\tshake head\t"))
    code, captured = train(2, "--resume")
    assert code == 2
    err = captured.err
    assert (f"{weights}: the run was trained on other classes than data.classes=resume_classes.txt ({classes}) now "
            "lists: class 1 is 'nod' vs 'shake head'") in err
    assert f"restore {classes} as it was when the run started" in err and "start a new run (another --out)" in err
    assert latest_checkpoint(run) == (weights, state) and weights.read_bytes() == before  # nothing moved on
    # another count: the same message, not the weights' shape mismatch
    classes.write_text(MY_CLASSES + "3\tshrug\tbody\n")
    code, captured = train(2, "--resume")
    assert code == 2 and "now lists: 3 classes vs 4 (checkpoint: 3 classes in 2 groups; now: 4 classes" in captured.err
    # the file restored: the run continues
    classes.write_text(MY_CLASSES)
    code, captured = train(2, "--resume")
    assert code == 0 and "resumed from" in captured.out
    assert read_recorded_taxonomy(run / "model_final.safetensors") == trained

    # a checkpoint written before weights recorded their classes resumes as before, edited file or not
    weights, _ = latest_checkpoint(run)
    save_weights(load_file(str(weights)), weights, recorded_recipe(weights))
    assert read_recorded_taxonomy(weights) is None
    classes.write_text(MY_CLASSES.replace("\tnod\t", "\tshake head\t"))
    code, captured = train(3, "--resume")
    assert code == 0 and "resumed from" in captured.out, captured.err
