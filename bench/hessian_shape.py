"""Can a ZO curvature estimate learn the shape of the Hessian? HiZOO's rules on a diagonal quadratic, by size.

The problem: f(θ) = ½·Σ a_i θ_i² in d dimensions, a split into 10 equal blocks whose curvatures are log-spaced
over 100× (1 … 100), held at θ = 0 (both probes of a step see the same loss there, so g = 0 and θ never moves:
only H evolves). `zoft.HiZOO` runs for `--steps` steps at every α of `--alphas` with each curvature sample
(`--hessian-estimator` code, paper, centred) and granularity (one H per weight, or per block: `--hessian-granularity
block` with the block = a curvature block). For each (rule, granularity, d) it keeps the best α and prints one
JSON line:

    {"rule": ..., "granularity": ..., "d": ..., "alpha": ..., "r2": ..., "slope": ...}

r2 is the squared correlation between log H and log a over the weights, slope the least-squares slope of log H on
log a: a learned shape has r2 → 1 and slope → 1 (the scale of H does not matter, HiZOO's code rule converges to
(1 + d/2)·diag(A)). ε = 1 (exact on a quadratic), fp64.

Usage: python bench/hessian_shape.py [--sizes 10,100,1000,10000] [--steps 20000] [--alphas 1e-4,1e-3,1e-2,1e-1]
       [--rules code,paper,centred] [--granularities weight,block] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from zoft.algos import HiZOO

BLOCKS, SPREAD = 10, 100.0


def curvatures(d: int) -> torch.Tensor:
    """a: 10 equal blocks of log-spaced curvature from 1 to SPREAD (d a multiple of 10)."""
    levels = torch.logspace(0.0, math.log10(SPREAD), BLOCKS, dtype=torch.float64)
    return levels.repeat_interleave(d // BLOCKS)


def learned_h(rule: str, granularity: str, d: int, alpha: float, steps: int, seed: int = 0) -> torch.Tensor:
    """H per weight after `steps` HiZOO steps at θ = 0 on ½·Σ a_i θ_i²."""
    a = curvatures(d)
    theta = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
    extra = {"hessian_granularity": "block", "hessian_block": d // BLOCKS} if granularity == "block" else {}
    opt = HiZOO([theta], lr=1.0, eps=1.0, seed=seed, noise="randn", hessian_smooth=alpha,
                hessian_estimator=rule, **extra)

    def loss() -> torch.Tensor:
        return 0.5 * (a * theta.detach() ** 2).sum()

    for _ in range(steps):
        opt.step(loss)
    h = opt.state[theta]["hessian"].double()
    return h.repeat_interleave(d // BLOCKS) if granularity == "block" else h


def shape_fit(h: torch.Tensor, a: torch.Tensor) -> tuple[float, float]:
    """(R², slope) of log H regressed on log a."""
    x, y = a.log(), h.log()
    x, y = x - x.mean(), y - y.mean()
    sxx, syy, sxy = float((x * x).sum()), float((y * y).sum()), float((x * y).sum())
    if syy == 0.0:
        return 0.0, 0.0
    return sxy * sxy / (sxx * syy), sxy / sxx


def best(rule: str, granularity: str, d: int, alphas: list[float], steps: int, seed: int) -> dict:
    """The α with the highest R² (ties: the slope nearest 1) and its fit."""
    fits = []
    for alpha in alphas:
        h = learned_h(rule, granularity, d, alpha, steps, seed)
        r2, slope = shape_fit(h, curvatures(d)) if bool(torch.isfinite(h).all()) else (0.0, 0.0)
        fits.append((r2, -abs(slope - 1.0), alpha, slope))
    r2, _, alpha, slope = max(fits)
    return {"rule": rule, "granularity": granularity, "d": d, "alpha": alpha, "r2": round(r2, 4),
            "slope": round(slope, 3), "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000,10000")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--alphas", default="1e-4,1e-3,1e-2,1e-1")
    ap.add_argument("--rules", default="code,paper,centred")
    ap.add_argument("--granularities", default="weight,block")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    alphas = [float(x) for x in args.alphas.split(",")]
    for d in [int(x) for x in args.sizes.split(",")]:
        for granularity in args.granularities.split(","):
            for rule in args.rules.split(","):
                print(json.dumps(best(rule, granularity, d, alphas, args.steps, args.seed)), flush=True)


if __name__ == "__main__":
    main()
