"""What the published HiZOO code's curvature update does in fp16, the precision its README runs (`--load_float16`).

The released trainer keeps H in the parameters' dtype and updates it, per tensor, as

    Hessian_temp      = H * z * z
    Hessian_estimator = |L+ + L- - 2 L0| * Hessian_temp * alpha / (2 * eps * eps)
    H                 = (1 - alpha) * H + Hessian_estimator

evaluated left to right in fp16 (a 0-d fp32 loss times an fp16 tensor stays fp16). This script replays that
expression on N entries for a grid of alpha and |dL|, with z ~ N(0, 1) drawn in fp16 as the code draws it, and
reports how many entries of H ever leave 1.0 and whether H overflows; the same update in fp32 (what zoft keeps)
for comparison. At the README's alpha = 1e-8 the product underflows before the division by 2 eps^2 and
(1 - alpha) * H rounds back to H: H stays exactly 1, so published HiZOO at that setting is MeZO with a third
forward. Users comparing against published HiZOO numbers should know that.

    python bench/hizoo_published_fp16.py [--entries 1000000] [--steps 20]

Prints one JSON line per (dtype, alpha, |dL|) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json

import torch

EPS = 1e-3  # the README's zo_eps


def replay(alpha: float, dl: float, dtype: torch.dtype, entries: int, steps: int, seed: int = 0) -> dict:
    """Run the published H update `steps` times; returns what happened to H."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.ones(entries, dtype=dtype)
    loss_diff = torch.tensor(dl, dtype=torch.float32)  # |L+ + L- - 2 L0| as the code holds it: a 0-d fp32 tensor
    first_inf = None
    moved = torch.zeros(entries, dtype=torch.bool)
    for step in range(1, steps + 1):
        z = torch.randn(entries, generator=gen).to(dtype)  # torch.normal in the weights' dtype
        hessian_temp = h * z * z
        estimator = loss_diff.abs() * hessian_temp * alpha / (2 * EPS * EPS)
        h = (1 - alpha) * h + estimator
        moved |= h != 1
        if first_inf is None and not torch.isfinite(h).all():
            first_inf = step
    finite = h[torch.isfinite(h)].float()
    return {"dtype": str(dtype).split(".")[1], "alpha": alpha, "dL": dl, "steps": steps, "entries": entries,
            "moved_fraction": round(float(moved.float().mean()), 6), "first_inf_step": first_inf,
            "h_min": float(finite.min()) if finite.numel() else None,
            "h_max": float(finite.max()) if finite.numel() else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    rows = [replay(alpha, dl, dtype, args.entries, args.steps)
            for dtype in (torch.float16, torch.float32) for alpha in (1e-8, 1e-6, 1e-4, 1e-2)
            for dl in (1e-3, 1e-2, 1e-1)]
    for row in rows:
        print(json.dumps(row))
    print("\n| H dtype | alpha | dL | entries of H that left 1.0 | first step with inf | H range (finite) |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        span = "—" if r["h_min"] is None else f"{r['h_min']:.4g} … {r['h_max']:.4g}"
        print(f"| {r['dtype']} | {r['alpha']:g} | {r['dL']:g} | {100 * r['moved_fraction']:.2f} % | "
              f"{r['first_inf_step'] or 'none'} | {span} |")


if __name__ == "__main__":
    main()
