"""Result plots: confusion matrices, per-class F1 coloured by group (MA-52: body part), and the metrics report.

Colours follow the taxonomy's groups (:class:`~microact.taxonomy.Taxonomy`); a flat taxonomy (no groups) gets one
colour for every class bar and no coarse confusion matrix.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never through
``pyplot``, so nothing here touches global plotting state or needs a display.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from microact.metrics import confusion_matrix, evaluate_scores, f1_mean_interval, predict_coarse
from microact.taxonomy import MA52, Taxonomy

# One colour per body part (tab10 entries), shared by every plot that colours by part.
PART_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
# Further groups of other taxonomies: the rest of tab10, then tab20's lighter shades (cycled beyond that).
_MORE_COLOURS = ("#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
                 "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")
FLAT_COLOUR = "#1f77b4"  # every bar of a flat taxonomy (no groups)


def group_colour(group: int) -> str:
    """The colour of group id ``group``: MA-52's body-part colours first (so its plots are unchanged)."""
    palette = PART_COLOURS + _MORE_COLOURS
    return palette[int(group) % len(palette)]


def group_boundaries(taxonomy: Taxonomy) -> list[int]:
    """Fine ids where a new group starts, when every group is one contiguous id range (else none)."""
    if not taxonomy.has_coarse:
        return []
    g = taxonomy.fine_to_coarse
    starts = [i for i in range(1, len(g)) if g[i] != g[i - 1]]
    return starts if len(starts) == taxonomy.num_coarse - 1 else []


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def plot_confusion(y_true, y_pred, names: Sequence[str], path: str | os.PathLike, *, normalize: bool = True,
                   classes: Sequence[int] | None = None, title: str = "", taxonomy: Taxonomy | None = MA52) -> Path:
    """Confusion matrix image: rows = true class, columns = predicted class.

    Args:
        y_true: true ids ``[N]``.
        y_pred: predicted ids ``[N]``.
        names: class names indexed by id.
        path: PNG to write.
        normalize: divide each row by its support (recall on the diagonal) instead of showing counts.
        classes: ids to show (default: every id in ``names``).
        title: figure title.
        taxonomy: on the full fine matrix of this taxonomy, lines mark where its groups start (contiguous groups).

    Returns:
        ``path``.
    """
    cm = confusion_matrix(y_true, y_pred, len(names)).astype(np.float64)
    classes = list(range(len(names))) if classes is None else [int(c) for c in classes]
    cm = cm[np.ix_(classes, classes)]
    counts = cm.astype(np.int64)
    if normalize:
        support = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
    k = len(classes)
    side = max(4.0, 0.28 * k + 2.5)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else max(1.0, cm.max()))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="fraction of the true class" if normalize else "videos")
    labels = [f"{c} {names[c]}" for c in classes]
    font = 9 if k <= 12 else 6
    ax.set_xticks(range(k), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(k), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 12:  # numbers fit inside the cells only for small matrices
        for i in range(k):
            for j in range(k):
                text = f"{cm[i, j]:.2f}" if normalize else str(counts[i, j])
                dark = cm[i, j] > 0.5 * (1 if normalize else max(1.0, cm.max()))
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    full = taxonomy is not None and k == taxonomy.num_fine and classes == list(range(k))
    if full:  # group (body-part) boundaries on the full fine matrix
        for start in group_boundaries(taxonomy):
            ax.axhline(start - 0.5, color="grey", lw=0.5)
            ax.axvline(start - 0.5, color="grey", lw=0.5)
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix (counts)"))
    return _save(fig, Path(path))


def _class_bars(rows: Sequence[dict], values: Sequence[float], path: str | os.PathLike, *, ylabel: str, title: str,
                taxonomy: Taxonomy, ylim: tuple[float, float] | None = None) -> Path:
    """One bar per class row (``id``, ``name``, ``support``), labelled with its support, coloured by group (MA-52:
    body part; one colour for a flat taxonomy)."""
    from matplotlib.patches import Patch

    rows = list(rows)
    k = len(rows)
    fig = _figure(max(6.0, 0.22 * k + 2.0), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    grouped = taxonomy.has_coarse
    colours = [group_colour(taxonomy.fine_to_coarse[r["id"]]) if grouped else FLAT_COLOUR for r in rows]
    ax.bar(range(k), list(values), color=colours)
    if ylim is None:
        ax.axhline(0.0, color="black", lw=0.8)  # signed values: gains above, losses below
    else:
        ax.set_ylim(*ylim)
    ax.set_xticks(range(k), [f"{r['id']} {r['name']} ({r['support']})" for r in rows], rotation=90,
                  fontsize=7 if k > 12 else 9)
    ax.set_ylabel(ylabel)
    ax.set_title(title + "  (support in brackets)", fontsize=9 if len(title) > 60 else None)
    if grouped:
        parts = sorted({taxonomy.fine_to_coarse[r["id"]] for r in rows})
        ax.legend(handles=[Patch(color=group_colour(c), label=taxonomy.coarse_names[c]) for c in parts], fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside the axes: bars reach the top
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))


def plot_per_class_f1(rows: Sequence[dict], path: str | os.PathLike, title: str = "per-class F1",
                      taxonomy: Taxonomy = MA52) -> Path:
    """Bar chart of per-class F1 (rows of :func:`microact.metrics.per_class_report`), coloured by group (MA-52:
    body part); one colour for a flat taxonomy."""
    rows = list(rows)
    return _class_bars(rows, [100 * r["f1"] for r in rows], path, ylabel="F1 (%)", title=title, taxonomy=taxonomy,
                       ylim=(0, 100))


def plot_per_class_f1_delta(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "per-class F1 change",
                            taxonomy: Taxonomy = MA52) -> Path:
    """Bar chart of per-class F1 differences between two models (rows of ``microact.compare``'s ``per_class``:
    ``id``, ``name``, ``support``, ``diff``), in class order, coloured by group; bars above zero are gains."""
    rows = list(rows)
    return _class_bars(rows, [100 * r["diff"] for r in rows], path, ylabel="F1 change (points)", title=title,
                       taxonomy=taxonomy)


def write_per_class_csv(rows: Sequence[dict], path: str | os.PathLike, taxonomy: Taxonomy = MA52) -> Path:
    """``per_class.csv``: id, name, group (``body_part`` for MA-52, ``group`` for other taxonomies with groups, no
    such column for a flat one), precision, recall, F1, support, predicted count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    group_column = [taxonomy.coarse_label.replace(" ", "_")] if taxonomy.has_coarse else []
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "name", *group_column, "precision", "recall", "f1", "support", "predicted"])
        for r in rows:
            group = [taxonomy.group_name(r["id"])] if taxonomy.has_coarse else []
            writer.writerow([r["id"], r["name"], *group, f"{r['precision']:.6f}", f"{r['recall']:.6f}",
                             f"{r['f1']:.6f}", r["support"], r["predicted"]])
    return path


def write_report(results, out_dir: str | os.PathLike, *, macro_labels: str = "present",
                 coarse_rule: str = "map_top1", extra: dict | None = None) -> dict:
    """Score labelled results and write ``metrics.json``, ``per_class.csv`` and the plots into ``out_dir``.

    Files: ``metrics.json`` (F1_mean with its bootstrap 95 % interval over the videos, its four parts, top-1/5,
    mean class accuracy, per-class rows, failed videos, the taxonomy), ``per_class.csv``, ``confusion_fine.png`` (row-normalised, classes present in truth or
    prediction), ``confusion_coarse.png`` (groups x groups counts: MA-52's 7x7 body parts; not for a flat
    taxonomy, which has no coarse level) and ``per_class_f1.png``.

    Args:
        results: a :class:`microact.results.Results` with labels.
        out_dir: output folder (created).
        macro_labels: label set of the macro F1 terms (SEED.md §12 row 13).
        coarse_rule: body-part rule (SEED.md §12 row 12).
        extra: more keys for ``metrics.json`` (config, checkpoint, ...).

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    from microact.results import ResultsError

    if results.labels is None:
        raise ResultsError("cannot write a metrics report: the results have no labels")
    taxonomy = results.require_taxonomy()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_scores(results.scores, results.labels, macro_labels=macro_labels, coarse_rule=coarse_rule,
                              coarse_head_scores=results.coarse_head_scores, taxonomy=taxonomy)
    coarse_pred = (predict_coarse(results.scores, coarse_rule, results.coarse_head_scores, taxonomy)
                   if taxonomy.has_coarse else None)
    # how far F1_mean would move on another draw of as many videos: what a reported score should be read with
    metrics["f1_mean_interval"] = f1_mean_interval(results.labels, results.predictions, coarse_pred=coarse_pred,
                                                   macro_labels=macro_labels, taxonomy=taxonomy)
    metrics["failed"] = results.meta.get("failed", [])
    if not taxonomy.is_ma52:  # MA-52's reports stay as they were; other classes are named in the report itself
        metrics["taxonomy"] = taxonomy.to_dict()
    metrics.update(extra or {})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    write_per_class_csv(metrics["per_class"], out / "per_class.csv", taxonomy)
    pred = results.predictions
    present = np.union1d(results.labels, pred)
    plot_confusion(results.labels, pred, taxonomy.fine_names, out / "confusion_fine.png", classes=present,
                   title=f"fine classes, row-normalised (F1_mean {100 * metrics['f1_mean']:.2f})", taxonomy=taxonomy)
    if taxonomy.has_coarse:
        coarse_true = taxonomy.coarse_of(results.labels)
        plot_confusion(coarse_true, coarse_pred, taxonomy.coarse_names, out / "confusion_coarse.png",
                       normalize=False, title=f"{taxonomy.coarse_label}s (counts)",
                       taxonomy=None)
    shown = [r for r in metrics["per_class"] if r["support"] or r["predicted"]]
    plot_per_class_f1(shown, out / "per_class_f1.png", taxonomy=taxonomy)
    return metrics


def plot_timeline(pred: dict, path: str | os.PathLike, max_classes: int = 8, taxonomy: Taxonomy = MA52) -> Path:
    """Timeline of an untrimmed video's window predictions (:func:`microact.predict.predict_timeline`).

    Top: the probability of the classes that lead any window (at most ``max_classes``, the most frequent
    leaders first) at each window's centre; bottom: the segments (consecutive windows with the same top-1),
    coloured by group (MA-52: body part; a flat taxonomy: by class) and labelled with the class id.
    """
    windows = pred["windows"]
    if not windows:
        raise ValueError("plot_timeline: the prediction has no windows")
    probs = np.array([w["probs"] for w in windows])  # [windows, K]
    centres = np.array([(w["start_s"] + w["end_s"]) / 2 for w in windows])
    leaders, counts = np.unique(probs.argmax(axis=1), return_counts=True)
    shown = leaders[np.argsort(-counts, kind="stable")][:max_classes]

    fig = _figure(max(6.0, min(16.0, 0.12 * len(windows) + 5)), 4.2)
    ax, band = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [5, 1]})
    for c in shown:
        ax.plot(centres, probs[:, c], marker="o" if len(windows) <= 60 else None, markersize=3,
                label=f"{c}: {taxonomy.fine_names[c]}")
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{Path(pred['video']).name}: {len(windows)} windows of {pred['window_s']:.3g} s "
                 f"every {pred['stride_s']:.3g} s", fontsize=9)
    # the segments (consecutive windows with the same top-1), coloured by body part, labelled by class id
    span = windows[-1]["end_s"] - windows[0]["start_s"]
    segments = pred.get("segments") or []

    def colour_key(fine: int) -> int:  # what a segment's colour says: its group, or for a flat taxonomy its class
        return taxonomy.fine_to_coarse[fine] if taxonomy.has_coarse else fine

    for seg in segments:
        band.axvspan(seg["start_s"], seg["end_s"], color=group_colour(colour_key(seg["id"])), alpha=0.75, lw=0.5,
                     ec="white")
        if seg["end_s"] - seg["start_s"] < 0.025 * span:  # too narrow for a readable label
            continue
        band.text((seg["start_s"] + seg["end_s"]) / 2, 0.5, str(seg["id"]), ha="center", va="center", fontsize=7,
                  transform=band.get_xaxis_transform())  # x in seconds, y in the band's height
    band.set_yticks([])
    band.set_ylabel("top-1", fontsize=8)
    band.set_xlabel("time (s)")
    from matplotlib.patches import Patch

    if taxonomy.has_coarse:
        handles = [Patch(color=group_colour(g), alpha=0.75, label=name) for g, name in enumerate(taxonomy.coarse_names)]
    else:
        shown_ids = sorted({seg["id"] for seg in segments})
        handles = [Patch(color=group_colour(c), alpha=0.75, label=f"{c}: {taxonomy.fine_names[c]}") for c in shown_ids]
    band.legend(handles=handles, fontsize=7, ncol=min(7, max(1, len(handles))), loc="upper center",
                bbox_to_anchor=(0.5, -0.9), frameon=False)
    return _save(fig, Path(path))
