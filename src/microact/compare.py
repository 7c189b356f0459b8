"""Is model B better than model A, or is the difference noise? Paired comparisons of result dumps.

Recipes of the seed table differ by a few tenths of an F1_mean point (SEED.md §7: 72.33, 72.58, 72.70 on
validation), small enough that the choice of validation videos may explain them. ``microact compare`` scores
several dumps of one labelled list and puts each difference to the first dump (the baseline) next to

- a **paired bootstrap** 95 % interval: the videos are resampled with replacement many times, every model is
  scored on the same resample, and the spread of the differences says how much of the gap the choice of videos
  explains. F1_mean is not a mean over videos (its macro terms average per-class F1), so no closed-form interval
  exists; the bootstrap re-runs the whole metric, with the classes present in each resample as sklearn would count
  them. Resampling by subject (all clips of one MA-52 participant together) accounts for clips of one person not
  being independent draws;
- **McNemar's exact test** on top-1 correctness: of the videos exactly one model gets right, how lopsided the split
  is (a two-sided binomial test against a fair coin);
- the per-class F1 changes, largest first, as a table and a plot.

The resampling itself is :func:`microact.metrics.bootstrap_weights` and :func:`microact.metrics.resampled_f1_mean`.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from microact.metrics import (MacroLabels, bootstrap_weights, f1_mean, per_class_f1, predict_coarse,
                              resampled_f1_mean)
from microact.results import Results, ResultsError, check_compatible, load_results, video_names
from microact.taxonomy import Taxonomy

# F1_mean's parts, in the order reports print them
PARTS = ("f1_mean", "fine_macro", "fine_micro", "coarse_macro", "coarse_micro")


@dataclass(frozen=True)
class Predictions:
    """What the F1 metrics of one model on one list need: true and predicted fine ids, and their groups."""

    true_fine: np.ndarray
    pred_fine: np.ndarray
    true_coarse: np.ndarray | None = None  # None: the taxonomy's groups of the fine ids (the seed's rule)
    pred_coarse: np.ndarray | None = None

    @classmethod
    def of(cls, results: Results, coarse_rule: str = "map_top1") -> "Predictions":
        """The predictions of labelled ``results`` (groups by ``coarse_rule``; none for a flat taxonomy)."""
        if results.labels is None:
            raise ResultsError(f"{results.meta.get('source', 'these results')}: no labels (a test list?); "
                               "compare needs dumps of a labelled list, such as validation")
        taxonomy = results.require_taxonomy()
        pred = results.predictions
        if not taxonomy.has_coarse:
            return cls(results.labels, pred, None, None)
        coarse_pred = predict_coarse(results.scores, coarse_rule, results.coarse_head_scores, taxonomy)
        return cls(results.labels, pred, taxonomy.coarse_of(results.labels), np.asarray(coarse_pred))


def resample_scores(predictions: Predictions, weights: np.ndarray, taxonomy: Taxonomy,
                    macro_labels: MacroLabels = "present") -> dict[str, np.ndarray]:
    """F1_mean and its parts on each resample (a row of video weights ``[R, N]``, e.g. bootstrap counts)."""
    return resampled_f1_mean(predictions.true_fine, predictions.pred_fine, weights,
                             coarse_true=predictions.true_coarse, coarse_pred=predictions.pred_coarse,
                             macro_labels=macro_labels, taxonomy=taxonomy)


def bootstrap_differences(base: Predictions, others: Sequence[Predictions], taxonomy: Taxonomy, *,
                          resamples: int = 2000, seed: int = 0, macro_labels: MacroLabels = "present",
                          clusters: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
    """Paired bootstrap: for each of ``others``, its metric minus the baseline's on the same ``resamples`` draws.

    ``clusters``: a cluster id per video (:func:`subject_of` the names): whole clusters are resampled.

    Returns:
        One dict per other model: metric name -> ``[resamples]`` differences (fractions, not points).
    """
    diffs: list[dict[str, list]] = [{} for _ in others]
    for weights in bootstrap_weights(base.true_fine.size, resamples, seed, clusters=clusters):
        ref = resample_scores(base, weights, taxonomy, macro_labels)
        for d, other in zip(diffs, others):
            for key, values in resample_scores(other, weights, taxonomy, macro_labels).items():
                d.setdefault(key, []).append(values - ref[key])
    return [{k: np.concatenate(v) for k, v in d.items()} for d in diffs]


def subject_of(name: str) -> str:
    """The subject of an MA-52 video name ``SSSS_VV_NNNN.mp4`` (SEED.md §11: ``SSSS`` is the participant): the part
    of the file name before its first ``_``; a name without one is its own subject."""
    return os.path.basename(str(name)).split("_", 1)[0]


def difference_summary(diff: float, samples: np.ndarray) -> dict:
    """A difference with its bootstrap distribution: ``{"diff", "low", "high", "p_better"}`` (the 95 % percentile
    interval and the share of resamples above zero)."""
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"diff": float(diff), "low": float(low), "high": float(high), "p_better": float(np.mean(samples > 0))}


def mcnemar(base_correct: np.ndarray, other_correct: np.ndarray) -> dict:
    """McNemar's exact test on paired correctness: ``{"only_base", "only_other", "p_value"}``.

    The p-value is the two-sided binomial probability of a split at least as uneven as the observed one among the
    videos exactly one model gets right, were each equally likely to go either way.
    """
    only_base = int(np.sum(base_correct & ~other_correct))
    only_other = int(np.sum(other_correct & ~base_correct))
    n = only_base + only_other
    if n == 0:
        return {"only_base": 0, "only_other": 0, "p_value": 1.0}
    k = min(only_base, only_other)
    tail = sum(math.comb(n, i) for i in range(k + 1))  # exact integers: n is at most the number of videos
    p = min(1.0, 2 * tail / 2 ** n) if 2 * k != n else 1.0
    return {"only_base": only_base, "only_other": only_other, "p_value": float(p)}


def compare(results: Sequence[Results], names: Sequence[str], *, resamples: int = 2000, seed: int = 0,
            macro_labels: MacroLabels = "present", coarse_rules: Sequence[str] | None = None,
            resample_by: str = "video") -> dict:
    """Score each result and compare each with the first (the baseline).

    Args:
        results: labelled results of several models on one list (same videos, order, classes).
        names: a label per result for the report (e.g. the dump paths).
        resamples: bootstrap resamples (0: no intervals).
        seed: bootstrap seed (the same seed draws the same resamples).
        macro_labels: label set of the macro F1 terms (as ``metric.macro_labels``).
        coarse_rules: the group rule of each result (default ``map_top1``, the seed's).
        resample_by: ``"video"`` (each video drawn on its own) or ``"subject"`` (all videos of a subject together,
            :func:`subject_of`: one person's clips are not independent, so intervals by subject are honest for
            MA-52 and wider).

    Returns:
        ``{"num_videos", "resamples", "macro_labels", "models": [{name, f1_mean, parts..., top1}], "differences":
        [{name, metric -> {"diff", "low", "high", "p_better"}, "mcnemar", "per_class"}]}`` with fractions in [0, 1].

    Raises:
        ResultsError: fewer than two results, unlabelled results, or results of different lists or classes.
    """
    if len(results) < 2:
        raise ResultsError("compare needs at least two result dumps (the first is the baseline)")
    if resample_by not in ("video", "subject"):
        raise ResultsError(f"resample_by: {resample_by!r} is not one of 'video', 'subject'")
    check_compatible(results)
    taxonomy = results[0].require_taxonomy()
    rules = list(coarse_rules) if coarse_rules is not None else ["map_top1"] * len(results)
    preds = [Predictions.of(r, rule) for r, rule in zip(results, rules)]
    models = []
    for name, r, p in zip(names, results, preds):
        scores = f1_mean(p.true_fine, p.pred_fine, macro_labels, coarse_pred=p.pred_coarse,
                         num_classes=taxonomy.num_fine, taxonomy=taxonomy)
        models.append({"name": str(name), **scores, "top1": float(np.mean(p.true_fine == p.pred_fine))})
    clusters = None
    if resample_by == "subject":
        names_of_videos = video_names(results)
        if names_of_videos is None:
            raise ResultsError("resampling by subject needs the videos' names, which these dumps do not carry "
                               "(mmaction2's): pass the list file they were computed on (--list)")
        clusters = [subject_of(n) for n in names_of_videos]
    boot = (bootstrap_differences(preds[0], preds[1:], taxonomy, resamples=resamples, seed=seed,
                                  macro_labels=macro_labels, clusters=clusters)
            if resamples > 0 else [None] * (len(results) - 1))
    base_correct = preds[0].true_fine == preds[0].pred_fine
    label_set = np.arange(taxonomy.num_fine)
    _, base_f1 = per_class_f1(preds[0].true_fine, preds[0].pred_fine, label_set)
    support = np.bincount(preds[0].true_fine, minlength=taxonomy.num_fine)
    differences = []
    for model, p, b in zip(models[1:], preds[1:], boot):
        entry: dict = {"name": model["name"]}
        for key in PARTS:
            if key not in model:
                continue
            diff = model[key] - models[0][key]
            entry[key] = {"diff": diff} if b is None else difference_summary(diff, b[key])
        entry["mcnemar"] = mcnemar(base_correct, p.true_fine == p.pred_fine)
        _, f1 = per_class_f1(p.true_fine, p.pred_fine, label_set)
        entry["per_class"] = [{"id": int(i), "name": taxonomy.fine_names[i], "support": int(support[i]),
                               "base_f1": float(base_f1[i]), "f1": float(f1[i]), "diff": float(f1[i] - base_f1[i])}
                              for i in label_set if support[i] or base_f1[i] or f1[i]]
        differences.append(entry)
    return {"num_videos": int(preds[0].true_fine.size), "resamples": int(resamples), "seed": int(seed),
            "resample_by": resample_by, "num_subjects": len(set(clusters)) if clusters is not None else None,
            "macro_labels": macro_labels, "taxonomy": taxonomy.describe(), "models": models,
            "differences": differences}


def verdict(d: dict) -> str:
    """A few words on one metric's difference: whether its 95 % interval excludes zero."""
    if "low" not in d:
        return ""
    if d["low"] > 0:
        return "better beyond the noise"
    if d["high"] < 0:
        return "worse beyond the noise"
    return "within the noise"


def format_report(report: dict, top_classes: int = 5) -> str:
    """The comparison as text: a table of scores, then each difference to the baseline with its interval."""
    has_coarse = any("coarse_macro" in m for m in report["models"])
    columns = [("f1_mean", "F1_mean"), ("fine_macro", "fine macro"), ("fine_micro", "fine micro")]
    if has_coarse:
        group = "body" if report["taxonomy"].startswith("MA-52") else "group"
        columns += [("coarse_macro", f"{group} macro"), ("coarse_micro", f"{group} micro")]
    columns.append(("top1", "top-1"))
    width = max(len(m["name"]) for m in report["models"]) + 2
    lines = [f"{report['num_videos']} videos, {report['taxonomy']}; scores in %; the first dump is the baseline"]
    lines.append("".ljust(width) + "".join(f"{title:>13}" for _, title in columns))
    for m in report["models"]:
        lines.append(m["name"].ljust(width) + "".join(f"{100 * m[key]:13.2f}" for key, _ in columns))
    if report["resamples"]:
        what = ("the videos" if report.get("resample_by", "video") == "video"
                else f"the {report['num_subjects']} subjects (all videos of a subject together)")
        lines.append(f"\ndifferences to {report['models'][0]['name']} (points), paired bootstrap 95 % interval over "
                     f"{report['resamples']} resamples of {what} (seed {report['seed']}), and the share of "
                     "resamples in which the model is ahead:")
    else:
        lines.append(f"\ndifferences to {report['models'][0]['name']} (points; no bootstrap):")
    for d in report["differences"]:
        lines.append(f"{d['name']}:")
        for key, title in columns[:-1]:
            x = d[key]
            interval = (f"  [{100 * x['low']:+.2f}, {100 * x['high']:+.2f}]  ahead in {100 * x['p_better']:.0f} %  "
                        f"{verdict(x)}" if "low" in x else "")
            lines.append(f"  {title:<12}{100 * x['diff']:+7.2f}{interval}")
        mc = d["mcnemar"]
        lines.append(f"  top-1: {mc['only_other']} videos right only here, {mc['only_base']} only in the baseline "
                     f"(McNemar exact p = {mc['p_value']:.3g})")
        moved = sorted((c for c in d["per_class"] if c["diff"]), key=lambda c: -abs(c["diff"]))[:top_classes]
        if moved:
            lines.append("  largest per-class F1 changes: " + ", ".join(
                f"{c['name']} {100 * c['diff']:+.1f} ({c['support']} videos)" for c in moved))
    return "\n".join(lines)


def write_per_class_delta_csv(report: dict, path: str | os.PathLike) -> Path:
    """``per_class_delta.csv``: for each compared model and class, the baseline's and the model's F1."""
    import csv

    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "id", "name", "support", "base_f1", "f1", "diff"])
        for d in report["differences"]:
            for c in d["per_class"]:
                writer.writerow([d["name"], c["id"], c["name"], c["support"], f"{c['base_f1']:.6f}",
                                 f"{c['f1']:.6f}", f"{c['diff']:+.6f}"])
    return path


def cli_main(args) -> int:
    """``microact compare BASE OTHER... [--list FILE] [--classes FILE] [--resamples R] [--out DIR]``."""
    from microact.plots.results import plot_per_class_f1_delta
    from microact.results import dump_provenance
    from microact.taxonomy import load_classes

    taxonomy = load_classes(args.classes) if args.classes else None
    results = [load_results(p, list_file=args.list, taxonomy=taxonomy) for p in args.dumps]
    rules = [args.coarse_rule or dump_provenance(p, r).get("coarse_rule", "map_top1")
             for p, r in zip(args.dumps, results)]
    if args.coarse_rule is None and len(set(rules)) > 1:
        print("note: the dumps were scored with different coarse rules (" + ", ".join(
            f"{p}: {rule}" for p, rule in zip(args.dumps, rules)) + "); each is compared under its own",
              file=sys.stderr)
    report = compare(results, [str(p) for p in args.dumps], resamples=args.resamples, seed=args.seed,
                     macro_labels=args.macro_labels, coarse_rules=rules, resample_by=args.resample_by)
    print(format_report(report, top_classes=args.top_classes))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(report, indent=2))
        written = [out / "compare.json", write_per_class_delta_csv(report, out / "per_class_delta.csv")]
        taxonomy = results[0].require_taxonomy()
        for i, d in enumerate(report["differences"], start=1):
            name = "per_class_f1_delta.png" if len(report["differences"]) == 1 else f"per_class_f1_delta_{i}.png"
            written.append(plot_per_class_f1_delta(d["per_class"], out / name, taxonomy=taxonomy,
                                                   title=f"{d['name']} minus {report['models'][0]['name']}"))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
