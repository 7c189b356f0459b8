"""Dataset plots: the class distribution (coloured by group, MA-52: body part) and the person-crop preview.

Drawn on matplotlib's Agg canvas directly (no ``pyplot``), like :mod:`microact.plots.results`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from microact.plots.results import FLAT_COLOUR, _figure, _save, group_colour
from microact.taxonomy import MA52, Taxonomy


def _read_counts(list_files: Sequence[str | os.PathLike]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for f in list_files:
        for line in Path(f).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2:
                label = int(parts[-1])
                counts[label] = counts.get(label, 0) + 1
    return counts


def plot_class_distribution(counts: Mapping[int, int] | Sequence[int] | Sequence[str | os.PathLike],
                            names: Sequence[str] | None = None, path: str | os.PathLike = "class_distribution.png",
                            *, log: bool = False, title: str = "", taxonomy: Taxonomy = MA52) -> Path:
    """Bar chart of clips per class, bars coloured by the taxonomy's groups (MA-52: body parts; one colour when
    flat).

    Args:
        counts: ``{fine id: clips}``, a sequence of counts indexed by fine id, or list files
            (``<file> <label>`` lines) whose labels are counted.
        names: class names indexed by fine id (default: the taxonomy's).
        path: output PNG.
        log: logarithmic y axis (for long-tailed data).
        title: figure title.
        taxonomy: the classes and their groups (default MA-52).
    """
    names = taxonomy.fine_names if names is None else names
    if isinstance(counts, Mapping):
        table = {int(k): int(v) for k, v in counts.items()}
    elif len(counts) and isinstance(counts[0], (str, os.PathLike)):
        table = _read_counts(counts)  # type: ignore[arg-type]
    else:
        table = {i: int(v) for i, v in enumerate(counts) if int(v) > 0}
    ids = sorted(table)
    values = [table[i] for i in ids]
    grouped = taxonomy.has_coarse
    colours = [(group_colour(taxonomy.fine_to_coarse[i]) if grouped else FLAT_COLOUR) if i < taxonomy.num_fine
               else "grey" for i in ids]
    fig = _figure(max(4.0, 0.28 * len(ids) + 1.5), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(ids)), values, color=colours)
    ax.set_xticks(range(len(ids)))
    ax.set_xticklabels([f"{i} {names[i]}" if i < len(names) else str(i) for i in ids], rotation=80, fontsize=7)
    ax.set_ylabel("clips")
    if log:
        ax.set_yscale("log")
    if grouped:
        from matplotlib.patches import Patch

        parts = sorted({taxonomy.fine_to_coarse[i] for i in ids if i < taxonomy.num_fine})
        ax.legend(handles=[Patch(color=group_colour(p), label=taxonomy.coarse_names[p]) for p in parts], fontsize=7)
    ax.set_title(title or f"{sum(values)} clips, {len(ids)} classes")
    return _save(fig, Path(path))


def plot_crop_preview(items: Sequence[tuple], path: str | os.PathLike, cols: int = 4) -> Path:
    """A grid of frames with their crop box (green) and, when given, the raw detector box (orange dashed).

    Args:
        items: ``(frame_rgb [H, W, 3] uint8, box [x1, y1, x2, y2], raw_box or None, title)`` tuples.
        path: output PNG.
        cols: grid columns.
    """
    from matplotlib.patches import Rectangle

    cols = max(1, min(cols, len(items)))
    rows = (len(items) + cols - 1) // cols
    fig = _figure(3.0 * cols, 2.6 * rows)
    for k, item in enumerate(items):
        frame, box, raw, title = (list(item) + [None, None])[:4]
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(np.asarray(frame))
        x1, y1, x2, y2 = box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", linewidth=1.5))
        if raw is not None:
            ax.add_patch(Rectangle((raw[0], raw[1]), raw[2] - raw[0], raw[3] - raw[1], fill=False, color="orange",
                                   linewidth=1.0, linestyle="--"))
        ax.set_title(str(title or ""), fontsize=7)
        ax.axis("off")
    return _save(fig, Path(path))
