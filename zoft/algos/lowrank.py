"""The in-place low-rank product every factored-direction algorithm applies: W ← β·W + L·Rᵀ.

TeZO (U·diag(coef)·Vᵀ), LOZO (U_t·Vᵀ) and SubZero (U·Z0·Vᵀ) all add an m×r by r×n product into a weight. For fp32
weights this is one `addmm_` with no m×n temporary; for bf16/fp16 weights the fp32 product is built in row blocks of
at most `CHUNK_ELEMENTS` (16 MiB) in a reused buffer and added, rounding once.
"""

from __future__ import annotations

import torch

#: fp32 numbers per row block when an m×n product must exist (bf16/fp16 weights): 16 MiB
CHUNK_ELEMENTS = 1 << 22


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
    for a in range(0, m, rows):
        lb = left[a:a + rows]
        block = torch.mm(lb, rt, out=buf[:lb.shape[0] * n].view(lb.shape[0], n))
        target = p[a:a + rows]
        opt.ops.scale_(target, beta)
        opt.ops.add_(target, block)
