"""HiZOO vs MeZO on test functions: forwards to a target at each method's best LR, and a trajectory plot.

For each function, every (method, LR[, α]) on a grid runs from the same start with 5 seeds; a run's cost is the
number of forward passes until f ≤ target (MeZO 2 per step, HiZOO 3), ∞ if it diverges or runs out of steps.
The table gives the best median per method; the figure shows one seed's trajectory at each method's best setting
over the function's contours (as in the HiZOO paper's test-function figure).

Usage: python bench/hizoo_test_functions.py [--out bench/results/hizoo_test_functions.png] [--max-steps 20000]
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from zoft.algos import HiZOO, MeZO

FUNCTIONS = {
    # name: (f, start, target, plot window)
    "ill-conditioned quadratic ½(x² + 100y²)": (lambda v: 0.5 * (v[0] ** 2 + 100 * v[1] ** 2), (1.0, 1.0), 5.05e-3,
                                                ((-1.2, 1.2), (-1.2, 1.2))),
    "Rosenbrock (1−x)² + 100(y−x²)²": (lambda v: (1 - v[0]) ** 2 + 100 * (v[1] - v[0] ** 2) ** 2, (-1.0, 1.5), 1e-3,
                                       ((-1.6, 1.4), (-0.4, 2.2))),
}
GRIDS = {
    "MeZO": [dict(lr=lr) for lr in (3e-4, 1e-3, 2e-3, 3e-3, 6e-3, 1e-2, 1.5e-2)],
    "HiZOO": [dict(lr=lr, hessian_smooth=a) for a in (0.1, 0.3, 0.9) for lr in (0.01, 0.03, 0.1, 0.3)],
}
CLASSES = {"MeZO": MeZO, "HiZOO": HiZOO}


def run(method: str, f, start, target: float, seed: int, max_steps: int, **kw):
    """Forwards to reach `target` (∞ on divergence or budget) and the trajectory."""
    p = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    opt = CLASSES[method]([p], eps=1e-4, seed=seed, **kw)
    path = [tuple(start)]
    for _ in range(max_steps):
        opt.step(lambda: float(f(p.detach())))
        value = float(f(p.detach()))
        path.append(tuple(p.detach().tolist()))
        if not math.isfinite(value) or value > 1e8:
            return math.inf, path
        if value <= target:
            return opt.forwards, path
    return math.inf, path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/hizoo_test_functions.png")
    ap.add_argument("--max-steps", type=int, default=20000)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FUNCTIONS), figsize=(6 * len(FUNCTIONS), 5), dpi=110)
    for ax, (name, (f, start, target, (xr, yr))) in zip(axes, FUNCTIONS.items()):
        print(f"\n{name}: start {start}, target f ≤ {target:g}, median over 5 seeds")
        for method, grid in GRIDS.items():
            best = (math.inf, None)
            for kw in grid:
                cost = statistics.median(run(method, f, start, target, s, args.max_steps, **kw)[0] for s in range(5))
                best = min(best, (cost, kw), key=lambda b: b[0])
            cost, kw = best
            print(f"  {method:6s} best {kw}: {cost:g} forwards")
            if kw is not None:
                _, path = run(method, f, start, target, 0, args.max_steps, **kw)
                xs, ys = zip(*path)
                label = f"{method} ({', '.join(f'{k}={v:g}' for k, v in kw.items())}): {cost:g} fwd"
                ax.plot(xs, ys, ".-", ms=2, lw=0.8, label=label)
        gx, gy = torch.meshgrid(torch.linspace(*xr, 200), torch.linspace(*yr, 200), indexing="xy")
        ax.contour(gx, gy, f((gx, gy)), levels=torch.logspace(-3, 3, 15).tolist(), colors="grey", linewidths=0.4)
        ax.plot(*start, "ks")
        ax.set_xlim(*xr)
        ax.set_ylim(*yr)
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
