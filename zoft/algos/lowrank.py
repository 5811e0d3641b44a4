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

from collections.abc import Iterator

import torch

#: fp32 numbers per row block when an m×n product must exist (bf16/fp16 weights): 1 MiB, cache-sized
CHUNK_ELEMENTS = 1 << 18
#: the fewest rows a block has. MKL multiplies an operand of fewer than 12 rows (not a multiple of 4) by another
#: kernel whose sums differ from the big kernel's in the last bit (2-core AVX-512 CPU, torch 2.13), so a block that
#: short would make the result depend on where the blocks fall; a short last block joins the one before it.
MIN_ROWS = 16


def row_blocks(m: int, rows: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive blocks of `rows` rows (at least MIN_ROWS) over m rows; the last block takes the
    remainder, or joins the previous one when the remainder is shorter than MIN_ROWS. Blocks have at most
    rows + MIN_ROWS − 1 rows."""
    rows = max(rows, MIN_ROWS)
    starts = list(range(0, m, rows))
    if len(starts) > 1 and m - starts[-1] < MIN_ROWS:
        starts.pop()
    for a, b in zip(starts, [*starts[1:], m]):
        yield a, b


def block_rows(m: int, elements: int, n: int) -> int:
    """Rows of the largest block `row_blocks(m, elements // n)` yields: the size of its reused buffer."""
    return min(m, max(elements // n, MIN_ROWS) + MIN_ROWS - 1)


def add_product(opt, index: int, left: torch.Tensor, right: torch.Tensor, beta: float = 1.0) -> None:
    """W_index ← β·W + left·rightᵀ in place (left m×r, right n×r) on `opt`'s tensor `index`."""
    p = opt.tensors[index]
    if p.dtype == left.dtype:
        p.addmm_(left, right.t(), beta=beta)
        return
    m, n = p.shape
    buf = opt.engine.work("block", block_rows(m, CHUNK_ELEMENTS, n) * n, p.device, left.dtype)
    rt = right.t()
    rounded_by_chunks = opt.ops.chunked(p)   # stochastic rounding or exact-bf16 residuals: the chunked path
    for a, b in row_blocks(m, CHUNK_ELEMENTS // n):
        add_rows(opt, p[a:b], left[a:b], rt, beta, buf[:(b - a) * n].view(b - a, n), rounded_by_chunks)


def add_rows(opt, target: torch.Tensor, left: torch.Tensor, right_t: torch.Tensor, beta: float, acc: torch.Tensor,
             rounded_by_chunks: bool) -> None:
    """target ← β·target + left·right_t on one row block of a half-precision weight, through the fp32 block `acc`
    (target's shape): the product is added to the widened weight and the sum rounded once."""
    opt.ops.scale_(target, beta)
    if rounded_by_chunks:
        opt.ops.add_(target, torch.mm(left, right_t, out=acc))
        return
    acc.copy_(target).addmm_(left, right_t)   # fp32(W) + L·Rᵀ, bitwise the sum of W and the separate product
    target.copy_(acc)                         # one round-to-nearest back to W's dtype
