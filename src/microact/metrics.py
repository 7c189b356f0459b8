"""Recognition metrics: F1_mean of MAC 2024 (SEED.md §9), top-k accuracy, per-class reports, confusion matrices.

Everything here is plain NumPy on integer label vectors and ``[N, K]`` score matrices, so it is fast
enough for weight searches over thousands of ensembles and never emits scikit-learn's
``UndefinedMetricWarning``. The F1 functions reproduce ``sklearn.metrics.f1_score`` exactly (the
tests compare them on many random cases):

* **micro** F1 pools true/false positives over classes; for single-label data it equals accuracy.
* **macro** F1 is the unweighted mean of per-class F1 over a label set. With
  ``macro_labels="present"`` (the seed's behaviour: ``f1_score`` called without ``labels=``) the set
  is the union of the labels occurring in ``y_true`` **or** ``y_pred``; a class that is predicted but
  absent from the truth scores 0 and pulls the mean down. ``macro_labels="all"`` uses the fixed lists
  0..51 and 0..6 instead (SEED.md §12 row 13).
* A class with no true and no predicted sample has F1 0 (sklearn's ``zero_division=0``); it only
  counts in ``"all"`` mode.

The coarse level comes from a :class:`~microact.taxonomy.Taxonomy` (default :data:`~microact.taxonomy.MA52`: the
7 body parts). A flat taxonomy (a classes file without groups) has no coarse level: its F1_mean is the mean of the
fine macro and micro F1, and no coarse numbers are reported.

All returned values are fractions in [0, 1]; multiply by 100 for the percentages quoted in papers.
"""
from __future__ import annotations

from typing import Iterator, Literal, Sequence

import numpy as np

from microact.errors import MicroactError
from microact.taxonomy import MA52, Taxonomy

# What F1_mean averages for classes without groups (reports and run summaries say it in these words).
FLAT_F1_MEAN_OF = "fine macro F1 and fine micro F1 (flat taxonomy: no coarse level)"

MacroLabels = Literal["present", "all"]
CoarseRule = Literal["map_top1", "sum_probs", "coarse_head"]


class MetricError(MicroactError, ValueError):
    """Inputs to a metric are inconsistent (lengths, label ranges, score shapes)."""


# --------------------------------------------------------------------------------------------
# Label vectors
# --------------------------------------------------------------------------------------------


def _as_labels(y, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise MetricError(f"{name}: expected a 1-D vector of class ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise MetricError(f"{name}: class ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise MetricError(f"{name}: class ids must be >= 0, got {int(arr.min())}")
    return arr


def _check_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise MetricError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size == 0:
        raise MetricError("no samples to score (empty label vectors)")
    return t, p


def _counts(y_true: np.ndarray, y_pred: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, predicted counts and true counts over class ids ``0..size-1``."""
    tp = np.bincount(y_true[y_true == y_pred], minlength=size)
    pred_count = np.bincount(y_pred, minlength=size)
    true_count = np.bincount(y_true, minlength=size)
    return tp, pred_count, true_count


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_f1(y_true, y_pred, labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """F1 of each class in a label set.

    Args:
        y_true: true class ids ``[N]``.
        y_pred: predicted class ids ``[N]``.
        labels: the label set; ``None`` = sorted union of the ids in ``y_true`` and ``y_pred`` (sklearn's default).

    Returns:
        ``(labels, f1)``: the label set as int64 and F1 per label, ``2·TP / (2·TP + FP + FN)`` (0 when undefined).
    """
    t, p = _check_pair(y_true, y_pred)
    if labels is None:
        label_arr = np.union1d(t, p)
    else:
        label_arr = _as_labels(labels, "labels")
    size = int(max(t.max(), p.max(), label_arr.max(initial=-1))) + 1
    tp, pred_count, true_count = _counts(t, p, size)
    # 2TP / (2TP + FP + FN) with FP + TP = predicted count, FN + TP = true count.
    f1 = _safe_div(2.0 * tp[label_arr], (pred_count + true_count)[label_arr])
    return label_arr, f1


def macro_f1(y_true, y_pred, labels: Sequence[int] | None = None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (``None`` = union of present labels), as sklearn."""
    _, f1 = per_class_f1(y_true, y_pred, labels)
    return float(f1.mean()) if f1.size else 0.0


def micro_f1(y_true, y_pred, labels: Sequence[int] | None = None) -> float:
    """Micro F1 over ``labels`` (``None`` = all present labels, where it equals accuracy), as sklearn."""
    t, p = _check_pair(y_true, y_pred)
    if labels is None:
        return float(np.mean(t == p))
    label_arr = _as_labels(labels, "labels")
    size = int(max(t.max(), p.max(), label_arr.max(initial=-1))) + 1
    tp, pred_count, true_count = _counts(t, p, size)
    den = pred_count[label_arr].sum() + true_count[label_arr].sum()
    return float(2.0 * tp[label_arr].sum() / den) if den else 0.0


def f1_mean(y_true, y_pred, macro_labels: MacroLabels = "present", *, coarse_pred=None,
            num_classes: int | None = None, taxonomy: Taxonomy = MA52) -> dict[str, float]:
    """F1_mean of MAC 2024: the mean of fine/coarse macro and micro F1 (SEED.md §9).

    ``F1_mean = (F1_macro^fine + F1_micro^fine + F1_macro^coarse + F1_micro^coarse) / 4`` with
    coarse ids ``g(y)`` = ``taxonomy.coarse_of(y)``. For a flat taxonomy (no groups) there is no coarse level and
    ``F1_mean = (F1_macro^fine + F1_micro^fine) / 2``.

    Args:
        y_true: true fine ids ``[N]`` (``0..K-1`` of ``taxonomy``).
        y_pred: predicted fine ids ``[N]``.
        macro_labels: ``"present"`` (seed; sklearn's union of labels in truth and prediction) or
            ``"all"`` (fixed lists ``0..num_classes-1`` and every group id).
        coarse_pred: predicted group ids ``[N]``; ``None`` = ``g(y_pred)`` (the seed's rule).
        num_classes: size of the fixed fine label list used by ``macro_labels="all"`` (default: the taxonomy's K).
        taxonomy: the classes and their groups (default MA-52's 52 classes and 7 body parts).

    Returns:
        ``{"f1_mean", "fine_macro", "fine_micro", "coarse_macro", "coarse_micro"}``, fractions in [0, 1]; for a
        flat taxonomy ``{"f1_mean", "fine_macro", "fine_micro"}``.
    """
    t, p = _check_pair(y_true, y_pred)
    if max(t.max(), p.max()) >= taxonomy.num_fine:
        bad = int(max(t.max(), p.max()))
        if taxonomy.is_ma52:
            raise MetricError(f"fine class id {bad} is outside MA-52's 0..{taxonomy.num_fine - 1} "
                              "(fine_to_coarse needs MA-52 ids; pass the taxonomy of other classes)")
        raise MetricError(f"fine class id {bad} is outside the taxonomy's 0..{taxonomy.num_fine - 1} "
                          f"({taxonomy.describe()})")
    if macro_labels not in ("present", "all"):
        raise MetricError(f"metric.macro_labels: {macro_labels!r} is not one of 'present', 'all'")
    fine_labels = None if macro_labels == "present" else np.arange(num_classes or taxonomy.num_fine)
    parts = {"fine_macro": macro_f1(t, p, fine_labels), "fine_micro": micro_f1(t, p, fine_labels)}
    if not taxonomy.has_coarse:
        if coarse_pred is not None:
            raise MetricError("coarse_pred given but the taxonomy is flat (no coarse level)")
        return {"f1_mean": sum(parts.values()) / 2.0, **parts}
    ct = taxonomy.coarse_of(t)
    cp = taxonomy.coarse_of(p) if coarse_pred is None else _as_labels(coarse_pred, "coarse_pred")
    if cp.shape != ct.shape:
        raise MetricError(f"coarse_pred has {cp.size} labels but y_true has {ct.size}")
    coarse_labels = None if macro_labels == "present" else np.arange(taxonomy.num_coarse)
    parts.update(coarse_macro=macro_f1(ct, cp, coarse_labels), coarse_micro=micro_f1(ct, cp, coarse_labels))
    return {"f1_mean": sum(parts.values()) / 4.0, **parts}


# --------------------------------------------------------------------------------------------
# Bootstrap: F1_mean on resampled videos
# --------------------------------------------------------------------------------------------
# F1_mean is no mean over videos (its macro terms average per-class F1), so its uncertainty has no closed form; the
# bootstrap re-runs the whole metric on videos drawn with replacement. A resample is stored as how often it drew
# each video, so the per-class counts of a block of resamples are one matrix product.


def bootstrap_weights(n: int, resamples: int, seed: int = 0, block: int = 250,
                      clusters: Sequence[int] | np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``n`` items, in blocks of rows ``[R, n]``: how often each resample drew each item.

    The same ``seed`` draws the same resamples, so models scored on them are compared on the same videos.

    Args:
        clusters: a cluster id per item (e.g. MA-52's subject: the videos of one person are not independent draws);
            each resample then draws as many clusters as there are, with replacement, and takes every item of each
            drawn cluster. ``None``: items are drawn one by one.
    """
    if clusters is None:
        cluster_of, num_clusters = np.arange(n), n
    else:
        _, cluster_of = np.unique(np.asarray(clusters), return_inverse=True)
        if cluster_of.size != n:
            raise MetricError(f"{cluster_of.size} cluster ids for {n} items")
        num_clusters = int(cluster_of.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        count = min(block, resamples - done)
        drawn = rng.integers(0, num_clusters, size=(count, num_clusters)) + num_clusters * np.arange(count)[:, None]
        times = np.bincount(drawn.ravel(), minlength=count * num_clusters).reshape(count, num_clusters)
        yield times[:, cluster_of].astype(np.float64)  # an item counts as often as its cluster was drawn
        done += count


def _weighted_f1_terms(weights: np.ndarray, true: np.ndarray, pred: np.ndarray, size: int, macro_labels: str):
    """Macro and micro F1 ``[R]`` of each weighted resample, with :func:`f1_mean`'s label sets."""
    def per_class(ids: np.ndarray, values: np.ndarray | float = 1.0) -> np.ndarray:
        onehot = np.zeros((ids.size, size), dtype=np.float64)
        onehot[np.arange(ids.size), ids] = values
        return weights @ onehot

    tp = per_class(true, (true == pred).astype(np.float64))
    den = per_class(pred) + per_class(true)  # predicted + true counts = 2TP + FP + FN
    f1 = np.divide(2.0 * tp, den, out=np.zeros_like(den), where=den > 0)
    # "present": sklearn's union of the labels in truth and prediction, i.e. the classes with any weight in either
    counted = den > 0 if macro_labels == "present" else np.ones_like(den, dtype=bool)
    macro = (f1 * counted).sum(axis=1) / np.maximum(counted.sum(axis=1), 1)
    micro = 2.0 * tp.sum(axis=1) / np.maximum(den.sum(axis=1), 1e-12)  # single-label micro F1: accuracy
    return macro, micro


def resampled_f1_mean(y_true, y_pred, weights, *, coarse_true=None, coarse_pred=None,
                      macro_labels: MacroLabels = "present", taxonomy: Taxonomy = MA52) -> dict[str, np.ndarray]:
    """:func:`f1_mean` and its parts on each resample, a row of video weights ``[R, N]`` (:func:`bootstrap_weights`).

    ``coarse_true`` / ``coarse_pred`` default to the groups of ``y_true`` / ``y_pred`` (the seed's rule); a flat
    taxonomy has no coarse terms. Returns metric name -> ``[R]`` values.
    """
    t, p = _check_pair(y_true, y_pred)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != t.size:
        raise MetricError(f"weights have {w.shape[1]} columns but there are {t.size} labels")
    out = {}
    out["fine_macro"], out["fine_micro"] = _weighted_f1_terms(w, t, p, taxonomy.num_fine, macro_labels)
    if taxonomy.has_coarse:
        ct = taxonomy.coarse_of(t) if coarse_true is None else _as_labels(coarse_true, "coarse_true")
        cp = taxonomy.coarse_of(p) if coarse_pred is None else _as_labels(coarse_pred, "coarse_pred")
        out["coarse_macro"], out["coarse_micro"] = _weighted_f1_terms(w, ct, cp, taxonomy.num_coarse, macro_labels)
    parts = list(out.values())
    return {"f1_mean": sum(parts) / len(parts), **out}


def f1_mean_interval(y_true, y_pred, *, coarse_pred=None, macro_labels: MacroLabels = "present",
                     taxonomy: Taxonomy = MA52, resamples: int = 1000, seed: int = 0) -> dict:
    """Bootstrap 95 % percentile interval of F1_mean over the videos: ``{"low", "high", "resamples", "seed"}``.

    It says how much F1_mean would move on another draw of as many videos like these; two models on the same videos
    are compared with a paired bootstrap instead (``microact compare``), which is much tighter.
    """
    t = _as_labels(y_true, "y_true")
    values = np.concatenate([resampled_f1_mean(t, y_pred, w, coarse_pred=coarse_pred, macro_labels=macro_labels,
                                               taxonomy=taxonomy)["f1_mean"]
                             for w in bootstrap_weights(t.size, resamples, seed)])
    low, high = np.percentile(values, [2.5, 97.5])
    return {"low": float(low), "high": float(high), "resamples": int(resamples), "seed": int(seed)}


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def _as_scores(scores) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise MetricError(f"scores: expected a [N, K] matrix, got shape {arr.shape}")
    return arr


def _require_coarse(taxonomy: Taxonomy, what: str) -> None:
    if not taxonomy.has_coarse:
        raise MetricError(f"{what}: the taxonomy is flat ({taxonomy.describe()}): there is no coarse level to "
                          "predict; use predict.coarse_rule=map_top1 (ignored without groups)")


def coarse_scores(scores, taxonomy: Taxonomy = MA52) -> np.ndarray:
    """Sum fine scores ``[N, K]`` inside each group -> ``[N, G]`` (the "sum_probs" rule, SEED.md §10.2).

    With the default MA-52 taxonomy: ``[N, 52]`` -> ``[N, 7]`` body parts.
    """
    s = _as_scores(scores)
    _require_coarse(taxonomy, "coarse scores")
    if s.shape[1] != taxonomy.num_fine:
        raise MetricError(f"scores: group sums need {taxonomy.num_fine} fine columns ({taxonomy.describe()}), "
                          f"got {s.shape[1]}")
    out = np.zeros((s.shape[0], taxonomy.num_coarse), dtype=np.float64)
    np.add.at(out.T, np.asarray(taxonomy.fine_to_coarse), s.T)  # out.T[c] += s.T[f] for every fine f of group c
    return out


def predict_coarse(scores, rule: CoarseRule = "map_top1", head_scores=None, taxonomy: Taxonomy = MA52) -> np.ndarray:
    """Group (body-part) prediction ``[N]`` from fine scores (SEED.md §12 row 12).

    Rules: ``"map_top1"`` (seed): ``g(argmax)``; ``"sum_probs"``: argmax of the per-group sums of the fine scores;
    ``"coarse_head"``: argmax of ``head_scores(c) * sum_{k in c} scores(k)``, the coarse lead head's clip-averaged
    probabilities ``head_scores [N, G]`` taken as independent evidence next to the fine ones (the rule of
    :func:`microact.models.recognizer.coarse_scores`).

    Raises:
        MetricError: a flat taxonomy (no groups), an unknown rule, or missing / misshapen head scores.
    """
    _require_coarse(taxonomy, f"coarse rule {rule!r}")
    if rule == "map_top1":
        return taxonomy.coarse_of(np.argmax(_as_scores(scores), axis=1))
    if rule == "sum_probs":
        return np.argmax(coarse_scores(scores, taxonomy), axis=1)
    if rule == "coarse_head":
        if head_scores is None:
            raise MetricError("coarse rule 'coarse_head' needs the coarse head's scores, which these results do not "
                              "hold (a model without coarse heads, or a dump from another tool); use map_top1 or "
                              "sum_probs")
        sums = coarse_scores(scores, taxonomy)
        head = _as_scores(head_scores)
        if head.shape != sums.shape:
            raise MetricError(f"coarse head scores: expected shape {sums.shape}, got {head.shape}")
        return np.argmax(head * sums, axis=1)
    raise MetricError(f"coarse rule {rule!r} is not one of 'map_top1', 'sum_probs', 'coarse_head'")


def topk_accuracy(scores, labels, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of samples whose true class is among the ``k`` highest scores, for each ``k``.

    Ties between equal scores are broken towards the lower class id (a stable descending sort).

    Returns:
        ``{k: accuracy}``; ``k`` larger than the number of classes counts every sample as a hit.
    """
    s = _as_scores(scores)
    y = _as_labels(labels, "labels")
    if y.size != s.shape[0]:
        raise MetricError(f"scores have {s.shape[0]} rows but there are {y.size} labels")
    if y.size and y.max() >= s.shape[1]:
        raise MetricError(f"label {int(y.max())} is outside the {s.shape[1]} score columns")
    order = np.argsort(-s, axis=1, kind="stable")  # [N, K], best first
    # rank of the true class = its position in the sorted order
    rank = np.argmax(order == y[:, None], axis=1)
    return {int(k): float(np.mean(rank < k)) for k in ks}


def mean_class_accuracy(y_true, y_pred) -> float:
    """Mean per-class recall over the union of labels in truth and prediction (mmaction2's ``acc/mean1``).

    A class that is predicted but never true contributes 0, as in mmaction2 (VIDEOMAE.md §5.6).
    """
    t, p = _check_pair(y_true, y_pred)
    labels = np.union1d(t, p)
    size = int(labels.max()) + 1
    tp, _, true_count = _counts(t, p, size)
    return float(_safe_div(tp[labels], true_count[labels]).mean())


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts ``[num_classes, num_classes]`` int64, rows = true class, columns = predicted class."""
    t, p = _check_pair(y_true, y_pred)
    if max(t.max(), p.max()) >= num_classes:
        raise MetricError(f"class id {int(max(t.max(), p.max()))} is outside 0..{num_classes - 1}")
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)  # [K*K], index true*K + pred
    return flat.reshape(num_classes, num_classes)  # [K*K] -> [K(true), K(pred)]


def per_class_report(y_true, y_pred, names: Sequence[str]) -> list[dict]:
    """Precision, recall, F1 and support of every class ``0..len(names)-1``.

    Returns:
        One dict per class: ``{"id", "name", "precision", "recall", "f1", "support", "predicted"}``
        (fractions in [0, 1]; 0 when undefined).
    """
    t, p = _check_pair(y_true, y_pred)
    k = len(names)
    if max(t.max(), p.max()) >= k:
        raise MetricError(f"class id {int(max(t.max(), p.max()))} has no name ({k} names given)")
    tp, pred_count, true_count = _counts(t, p, k)
    precision = _safe_div(tp, pred_count)
    recall = _safe_div(tp, true_count)
    f1 = _safe_div(2.0 * tp, pred_count + true_count)
    return [
        {"id": i, "name": names[i], "precision": float(precision[i]), "recall": float(recall[i]),
         "f1": float(f1[i]), "support": int(true_count[i]), "predicted": int(pred_count[i])}
        for i in range(k)
    ]


def format_per_class(rows: list[dict], title: str = "class") -> str:
    """Render :func:`per_class_report` rows as a fixed-width text table (percentages)."""
    width = max([len(title)] + [len(str(r["name"])) for r in rows])
    lines = [f"{'id':>3}  {title:<{width}}  {'prec':>6}  {'recall':>6}  {'F1':>6}  {'support':>7}"]
    for r in rows:
        lines.append(f"{r['id']:>3}  {r['name']:<{width}}  {100 * r['precision']:6.2f}  {100 * r['recall']:6.2f}  "
                     f"{100 * r['f1']:6.2f}  {r['support']:>7}")
    return "\n".join(lines)


def format_summary(metrics: dict) -> str:
    """One block of text with F1_mean, its parts and the accuracies of :func:`evaluate_scores`.

    Without a coarse level (a flat taxonomy) it says that F1_mean is the mean of the fine macro and micro F1.
    """
    interval = metrics.get("f1_mean_interval")
    lines = [
        f"F1_mean       {100 * metrics['f1_mean']:6.2f}" + (
            f"   (95 % bootstrap interval over the videos: {100 * interval['low']:.2f}-{100 * interval['high']:.2f})"
            if interval else ""),
        f"  fine macro  {100 * metrics['fine_macro']:6.2f}   fine micro   {100 * metrics['fine_micro']:6.2f}",
    ]
    if "coarse_macro" in metrics:
        lines.append(f"  coarse macro{100 * metrics['coarse_macro']:6.2f}   coarse micro "
                     f"{100 * metrics['coarse_micro']:6.2f}")
    else:
        lines.insert(1, "  (flat taxonomy, no coarse level: F1_mean = mean of fine macro and fine micro F1)")
    lines.append(f"top-1 {100 * metrics['top1']:6.2f}   top-5 {100 * metrics['top5']:6.2f}   "
                 f"mean class acc {100 * metrics['mean_class_accuracy']:6.2f}   ({metrics['num_videos']} videos)")
    return "\n".join(lines)


def evaluate_scores(scores, labels, *, macro_labels: MacroLabels = "present", coarse_rule: CoarseRule = "map_top1",
                    names: Sequence[str] | None = None, coarse_head_scores=None, taxonomy: Taxonomy = MA52) -> dict:
    """Every number for ``metrics.json`` from clip-averaged scores and true labels.

    Args:
        scores: ``[N, K]`` scores (probabilities); the fine prediction is their argmax (SEED.md §4).
        labels: true fine ids ``[N]``.
        macro_labels: label set of the macro F1 terms (SEED.md §12 row 13).
        coarse_rule: group prediction rule (SEED.md §12 row 12); the seed uses ``"map_top1"``; ignored for a flat
            taxonomy.
        names: class names for the per-class rows (default: the taxonomy's names).
        coarse_head_scores: the coarse head's clip-averaged probabilities ``[N, G]`` (``coarse_rule="coarse_head"``).
        taxonomy: the classes and their groups (default MA-52).

    Returns:
        ``{"f1_mean", "fine_macro", "fine_micro", "coarse_macro", "coarse_micro", "top1", "top5",
        "mean_class_accuracy", "num_videos", "macro_labels", "coarse_rule", "per_class", "per_coarse_class"}``
        with fractions in [0, 1]. A flat taxonomy has no ``coarse_*`` keys (nor ``coarse_rule``) and no
        ``per_coarse_class``, and ``"f1_mean_of"`` says what F1_mean averages.
    """
    s = _as_scores(scores)
    y = _as_labels(labels, "labels")
    if y.size != s.shape[0]:
        raise MetricError(f"scores have {s.shape[0]} rows but there are {y.size} labels")
    pred = np.argmax(s, axis=1)
    coarse_pred = None
    if taxonomy.has_coarse and coarse_rule != "map_top1":
        coarse_pred = predict_coarse(s, coarse_rule, coarse_head_scores, taxonomy)
    out: dict = dict(f1_mean(y, pred, macro_labels, coarse_pred=coarse_pred, num_classes=s.shape[1],
                             taxonomy=taxonomy))
    topk = topk_accuracy(s, y, ks=(1, 5))
    out.update(top1=topk[1], top5=topk[5], mean_class_accuracy=mean_class_accuracy(y, pred), num_videos=int(y.size),
               macro_labels=macro_labels)
    if taxonomy.has_coarse:
        out["coarse_rule"] = coarse_rule
    names = list(names) if names is not None else list(taxonomy.fine_names[: s.shape[1]])
    out["per_class"] = per_class_report(y, pred, names)
    if taxonomy.has_coarse:
        coarse_pred = taxonomy.coarse_of(pred) if coarse_pred is None else coarse_pred
        out["per_coarse_class"] = per_class_report(taxonomy.coarse_of(y), coarse_pred, taxonomy.coarse_names)
    else:
        out["f1_mean_of"] = FLAT_F1_MEAN_OF
    return out
