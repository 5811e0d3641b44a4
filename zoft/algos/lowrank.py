"""The in-place low-rank product every factored-direction algorithm applies: W ← β·W + L·Rᵀ.

TeZO (U·diag(coef)·Vᵀ), LOZO (U_t·Vᵀ) and SubZero (U·Z0·Vᵀ) all add an m×r by r×n product into a weight. For fp32
weights this is one `addmm_` with no m×n temporary; for bf16/fp16 weights each row block of at most `CHUNK_ELEMENTS`
(1 MiB of fp32) is widened into a reused buffer, the product accumulated into it by `addmm_` and the sum rounded
back once.

Why 1 MiB blocks and `addmm_`: a block that stays in the core's cache between the product and the rounding saves a
round trip to memory per weight, and accumulating into the widened weight saves writing and re-reading the product.
Timed interleaved in one process on a loaded 2-core CPU, TeZO's passes over SmolLM2-135M (bf16, r = 32) took
1.3–1.4× longer with the former 16 MiB product blocks; `bench/step_time.py` on the idle machine put TeZO at
1.36–1.47× its forwards against 1.42× before, within that machine's noise. The transient block shrinks from 16 MiB
to 1 MiB. Both are bitwise the same as the product added afterwards (fp32 W + the fp32 product, one rounding):
checked on every matrix shape of SmolLM2 (`tests/algos/test_tezo.py`).
"""

from __future__ import annotations

import torch

#: fp32 numbers per row block when an m×n product must exist (bf16/fp16 weights): 1 MiB, cache-sized
CHUNK_ELEMENTS = 1 << 18


def add_product(opt, index: int, left: torch.Tensor, right: torch.Tensor, beta: float = 1.0) -> None:
    """W_index ← β·W + left·rightᵀ in place (left m×r, right n×r) on `opt`'s tensor `index`."""
    p = opt.tensors[index]
    if p.dtype == left.dtype:
        p.addmm_(left, right.t(), beta=beta)
        return
    m, n = p.shape
    rows = max(1, CHUNK_ELEMENTS // n)
    buf = opt.engine.work("block", min(rows, m) * n, p.device, left.dtype)
    rt = right.t()
    rounded_by_chunks = opt.ops.chunked(p)   # stochastic rounding or exact-bf16 residuals: the chunked path
    for a in range(0, m, rows):
        lb, target = left[a:a + rows], p[a:a + rows]
        acc = buf[:lb.shape[0] * n].view(lb.shape[0], n)
        opt.ops.scale_(target, beta)
        if rounded_by_chunks:
            opt.ops.add_(target, torch.mm(lb, rt, out=acc))
            continue
        acc.copy_(target).addmm_(lb, rt)   # fp32(W) + L·Rᵀ, bitwise the sum of W and the separate product
        target.copy_(acc)                  # one round-to-nearest back to W's dtype
