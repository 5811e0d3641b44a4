"""Is torch's eager fp32 `sqrt` correctly rounded on this machine? It decides whether a fused HiZOO pass can keep the
bits of the eager one (docs/costs.md, "Why a fused HiZOO pass cannot keep the bits on this CPU").

HiZOO-L's probe divides by √H with H = R·Cᵀ/ΣR. This builds such an H (1536×576, SmolLM2's MLP shape), takes its
square root with eager `sqrt_`, and counts the results that differ from the float64 root rounded to fp32 (the
correctly rounded one, which a fused kernel computes). With --compiled it also counts them for `torch.compile`'s
kernel of the whole expression √(outer(R, C)/ΣR) (needs a C++ compiler; about 30 s to compile on 2 cores).

Usage: python bench/sqrt_rounding.py [--compiled] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json

import torch


def h_matrix(device: str, m: int = 1536, n: int = 576) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    row, col = torch.rand(m, generator=gen) * n + 1, torch.rand(n, generator=gen) * m + 1
    return row.to(device), col.to(device), row.sum().to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compiled", action="store_true", help="also count torch.compile's square roots")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    row, col, total = h_matrix(args.device)
    h = torch.outer(row, col).div_(total)
    exact = h.double().sqrt().float()
    result = {"device": args.device, "torch": torch.__version__, "numel": h.numel(),
              "eager_sqrt_off_by_an_ulp": int((h.clone().sqrt_() != exact).sum())}
    if args.compiled:
        fused = torch.compile(lambda r, c, s: torch.sqrt(torch.outer(r, c) / s))(row, col, total)
        result["compiled_sqrt_off"] = int((fused != exact).sum())
        result["compiled_h_equals_eager_h"] = bool(torch.equal(torch.compile(
            lambda r, c, s: torch.outer(r, c) / s)(row, col, total), h))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
