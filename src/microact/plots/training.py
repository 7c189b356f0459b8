"""Training curves of a run directory: loss, lr and throughput from ``log.csv``, validation F1 from ``metrics.json``."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """Draw ``plots/loss.png`` (loss and lr per step), ``plots/throughput.png`` (clips/s and the share of time
    the step waited for data) and, when validated, ``plots/val_f1.png``.

    Returns:
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    log = run_dir / "log.csv"
    if log.is_file():
        with open(log, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            steps = [int(r["step"]) for r in rows]
            fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
            ax.plot(steps, [float(r["loss"]) for r in rows], color="tab:blue", label="loss")
            ax.set_xlabel("optimiser step")
            ax.set_ylabel("training loss")
            ax2 = ax.twinx()
            ax2.plot(steps, [float(r["lr"]) for r in rows], color="tab:orange", alpha=0.6, label="lr")
            ax2.set_ylabel("lr (first group)")
            ax.set_title("training loss and learning rate")
            fig.tight_layout()
            fig.savefig(out / "loss.png")
            plt.close(fig)
            written.append(out / "loss.png")
            timed = [r for r in rows if r.get("data_wait")]  # rows logged before the column existed have none
            if timed:
                timed_steps = [int(r["step"]) for r in timed]
                fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
                ax.plot(timed_steps, [float(r["clips_per_s"]) for r in timed], color="tab:green")
                ax.set_xlabel("optimiser step")
                ax.set_ylabel("clips/s (all processes)")
                ax.set_ylim(bottom=0)
                ax2 = ax.twinx()
                ax2.plot(timed_steps, [100 * float(r["data_wait"]) for r in timed], color="tab:red", alpha=0.6)
                ax2.set_ylabel("% of the time waiting for data")
                ax2.set_ylim(0, 100)
                ax.set_title("throughput (green) and time waiting for the loader (red)")
                fig.tight_layout()
                fig.savefig(out / "throughput.png")
                plt.close(fig)
                written.append(out / "throughput.png")
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        val = json.loads(metrics.read_text()).get("val") or []
        if val:
            fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
            epochs = [v["epoch"] for v in val]
            for key in ("f1_mean", "fine_macro", "fine_micro", "coarse_macro", "coarse_micro"):
                if key in val[0]:
                    ax.plot(epochs, [v[key] for v in val], marker="o", lw=2 if key == "f1_mean" else 1, label=key)
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation score")
            ax.set_ylim(0, 1)
            ax.legend(loc="lower right", fontsize=8)
            ax.set_title("validation F1")
            fig.tight_layout()
            fig.savefig(out / "val_f1.png")
            plt.close(fig)
            written.append(out / "val_f1.png")
    return written
