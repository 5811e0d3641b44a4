"""loss.png: train loss, dev loss and the dev metric against forward passes (the ZO cost unit).

The train loss of a ZO run is a minibatch loss at perturbed weights and is noisy, so it is drawn faint with an
exponential moving average over it; the dev loss (what picks `best/`) shares its axis; the dev metric has its own.
With few points each gets a marker, so a 10-step run does not draw an invisible single point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: with at most this many points a series is drawn with markers
MARKERS_UP_TO = 30


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing): weight 0.6 at 10 points, 0.9 from 100."""
    if weight is None:
        weight = min(0.9, max(0.0, 1.0 - 4.0 / max(len(values), 1)))
    out, avg, norm = [], 0.0, 0.0
    for v in values:
        avg = weight * avg + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(avg / norm if norm else v)
    return out


def title(config: dict[str, Any] | None) -> str:
    """"<algo> (<mode>) on <task> · <model>" from the run's config, or a plain title without one."""
    if not config:
        return "zoft training"
    mode = config.get("mode", "full")
    model = Path(str(config.get("model", ""))).name or str(config.get("model", ""))
    return f"{config.get('algo')}{'' if mode == 'full' else f' ({mode})'} on {config.get('task')} · {model}"


def plot_metrics(records: list[dict[str, Any]], path: Path, config: dict[str, Any] | None = None) -> None:
    """Draw the run's curves from its metrics records to `path` (written to a temp file, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("event") == "train" and r.get("loss") is not None]
    dev = [r for r in records if r.get("event") == "eval" and "dev_loss" in r]
    metric = next((k for r in dev for k in r if k.startswith("dev_") and k != "dev_loss"), None)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    x, y = [r["forwards"] for r in train], [r["loss"] for r in train]
    few = len(train) <= MARKERS_UP_TO
    if train:
        ax.plot(x, y, "o" if few else "-", color="tab:blue", alpha=0.25, ms=3, lw=0.8, label="train loss")
        ax.plot(x, smooth(y), "-", color="tab:blue", lw=1.8, label="train loss (smoothed)")
    if dev:
        ax.plot([r["forwards"] for r in dev], [r["dev_loss"] for r in dev], "s-" if len(dev) <= MARKERS_UP_TO
                else "-", color="tab:green", ms=4, label="dev loss")
    ax.set_xlabel("forward passes")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if metric:
        ax2 = ax.twinx()
        points = [r for r in dev if metric in r]
        ax2.plot([r["forwards"] for r in points], [r[metric] for r in points],
                 "o-" if len(points) <= MARKERS_UP_TO else "-", color="tab:orange", ms=4,
                 label=metric.replace("_", " "))
        ax2.set_ylabel(metric.replace("_", " "), color="tab:orange")
        more_h, more_l = ax2.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + more_l
    if handles:
        ax.legend(handles, labels, loc="best", fontsize=8, framealpha=0.8)
    ax.set_title(title(config), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
