"""Dev accuracy against forward passes for several `zoft train` run dirs, on one plot.

Also prints, for each run, the forwards it needed to reach the first run's final dev accuracy (the reference,
e.g. MeZO), and its H statistics at the last evaluation when it logged them (HiZOO).

Usage: python bench/compare_runs.py RUN_DIR[=LABEL] ... [--out bench/results/sst2_runs.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def dev_curve(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("event") == "eval" and "dev_accuracy" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run dirs, optionally RUN_DIR=LABEL")
    ap.add_argument("--out", default="bench/results/sst2_runs.png")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    for spec in args.runs:
        path, _, label = spec.partition("=")
        curves.append((label or Path(path).name, Path(path), dev_curve(Path(path))))
    reference = curves[0][2][-1]["dev_accuracy"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    print(f"reference: {curves[0][0]} final dev accuracy {reference:.3f}")
    for label, path, curve in curves:
        ax.plot([r["forwards"] for r in curve], [r["dev_accuracy"] for r in curve], "o-", label=label)
        reached = next((r["forwards"] for r in curve if r["dev_accuracy"] >= reference), None)
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
        last = curve[-1]
        h = (f", log H mean {last['log_h_mean']:.3f} std {last['log_h_std']:.3f} max {last['log_h_max']:.2f}"
             if "log_h_mean" in last else "")
        print(f"  {label:28s} final dev {last['dev_accuracy']:.3f} at {last['forwards']} forwards; "
              f"eval {summary.get('eval', {}).get('eval_accuracy', float('nan')):.3f}; reaches reference at "
              f"{reached if reached is not None else 'never'} forwards{h}")
    ax.axhline(reference, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("forward passes")
    ax.set_ylabel("dev accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("SmolLM2-135M on SST-2, same seeds and batches")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
