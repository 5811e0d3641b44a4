"""loss.png: training loss and dev accuracy against forward passes (the ZO cost unit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_metrics(records: list[dict[str, Any]], path: Path) -> None:
    """Draw loss (left axis) and dev accuracy (right axis) against forward passes from metrics records."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("event") == "train"]
    dev = [r for r in records if r.get("event") == "eval" and "dev_accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r["forwards"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train loss")
    ax.set_xlabel("forward passes")
    ax.set_ylabel("train loss", color="tab:blue")
    if dev:
        ax2 = ax.twinx()
        ax2.plot([r["forwards"] for r in dev], [r["dev_accuracy"] for r in dev], "o-", color="tab:orange",
                 label="dev accuracy")
        ax2.set_ylabel("dev accuracy", color="tab:orange")
    ax.set_title("zoft training")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
