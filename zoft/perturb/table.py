"""The noise table: z read from fixed tables at seeded offsets instead of drawn by `torch.randn`.

The evolution-strategies trick (Salimans et al. 2017), made exactly Gaussian in its marginals. The table holds the
2^23 quantiles Φ⁻¹((k+½)/2^23) of N(0, 1) in a fixed scrambled order (G) and 2^20 pseudo-random signs (S). Each
tensor is cut into windows of 2^20 elements; window w of tensor i reads z[k] = G[a + k]·S[b + k] at two offsets
(a, b) hashed from (seed, probe, i, tag, w). A pass is then one fused `addcmul_` per window, memory-bound: 0.03 s
over SmolLM2-135M in bf16 where `torch.randn` takes 0.55-0.70 s (2-core CPU, `python bench/step_time.py`). How z
differs from N(0, I):

- marginals: each z[k] is a quantile of N(0, 1) with a random sign, rounded to bfloat16's 8-bit mantissa so that
  fp32, bf16 and fp16 tables give the same z: mean 0, E[z²] = 1 − 3e-6, E[z⁴] = 3 + 1.1e-5, |z| ≤ 5.28 (N(0, 1)
  exceeds that with probability 1.3e-7), and values on a grid of relative spacing 2^-8;
- independence: within a window the 2^20 values are distinct table entries; distinct windows, tensors, probes and
  steps use independently hashed offsets. Over the offsets, E[z zᵀ] = I + E with |E_kl| ≈ 2^-21.5 off the diagonal
  (a product of two table autocorrelations), so no direction is favoured beyond that;
- memory: (2^23 + 3·2^20) entries per (device, dtype) in use, 44 MiB in fp32 and 22 MiB in bf16/fp16, built once
  per process in 0.2 s, instead of a z buffer as large as the largest tensor.

The tables are constants of zoft (a fixed seed), not of a run, so one process-wide cache per (device, dtype) is
shared by every engine.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from zoft.perturb.seeds import splitmix64

TABLE_BITS = 23   # Gaussian quantiles in the table: 2^23 (32 MiB in fp32)
SIGN_BITS = 20    # random signs: 2^20
WINDOW_BITS = 20  # elements per window, each with its own pair of offsets
WINDOW = 1 << WINDOW_BITS
TABLE_MIN = 1 << 16  # smaller tensors draw with torch.randn: exact, as cheap, and no table is built for them
TABLE_SEED = 0x5A0F7  # fixed: the table is a constant of zoft, not of the run
_TABLES: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def scramble_(x: torch.Tensor, tmp: torch.Tensor, bits: int, key: int) -> torch.Tensor:
    """A fixed bijection of [0, 2^bits), in place on int64 `x` (`tmp`: a buffer like it): add a key, then odd
    multiplies and xor-shifts, each invertible mod 2^bits; products stay below 2^55, so int64 never overflows."""
    mask = (1 << bits) - 1
    x.add_(key).bitwise_and_(mask)
    for mult, shift in ((0x2C1B3C6D, 13), (0x297A2D39, 11), (0x5BD1E995, 12), (1, bits // 2)):
        x.bitwise_xor_(torch.bitwise_right_shift(x, shift, out=tmp)).mul_(mult).bitwise_and_(mask)
    return x


def _build_table(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU tables (G, S) in `dtype`, each padded with its first WINDOW entries so a window never wraps.

    G[k] = Φ⁻¹((π(k) + ½)/2^23) for a fixed scrambling bijection π. It is built in blocks through a few reused
    2 MiB buffers: a randperm would hold 64-128 MiB of indices, and fresh per-block temporaries let glibc keep
    ~100 MiB resident after the build (measured)."""
    n, block = 1 << TABLE_BITS, 1 << 18
    g = torch.empty(n + WINDOW, dtype=dtype)
    idx, tmp = torch.empty(block, dtype=torch.int64), torch.empty(block, dtype=torch.int64)
    q, r = torch.empty(block, dtype=torch.float64), torch.empty(block, dtype=torch.float64)
    tiny, half = torch.empty(block, dtype=torch.bool), torch.empty(block, dtype=torch.bfloat16)
    for a in range(0, n, block):
        scramble_(torch.arange(a, a + block, out=idx), tmp, TABLE_BITS, TABLE_SEED)
        torch.special.ndtri(q.copy_(idx).add_(0.5).div_(n), out=q)
        # The same values must be exact in bf16 and fp16: round to bf16's 8-bit mantissa, and put the ~0.005 % of
        # values below fp16's smallest normal (2^-14) on the 2^-17 grid, which both formats hold exactly.
        torch.lt(torch.abs(q, out=r), 2.0 ** -14, out=tiny)
        torch.where(tiny, torch.mul(q, 2.0 ** 17, out=r).round_().div_(2.0 ** 17), q, out=q)
        g[a:a + block].copy_(half.copy_(q))
    g[n:] = g[:WINDOW]
    s = torch.empty((1 << SIGN_BITS) + WINDOW, dtype=dtype)
    for a in range(0, 1 << SIGN_BITS, block):  # the low bit of another bijection: exactly balanced signs
        scramble_(torch.arange(a, a + block, out=idx), tmp, SIGN_BITS, TABLE_SEED ^ 0x1234)
        s[a:a + block].copy_(idx.bitwise_and_(1).mul_(-2).add_(1))
    s[1 << SIGN_BITS:] = s[:WINDOW]
    return g, s


def noise_table(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The (G, S) tables on `device` in `dtype`, built once per process and shared by every engine."""
    device = torch.device(device)
    key = (device, dtype)
    if key not in _TABLES:
        _TABLES[key] = tuple(t.to(device) for t in _build_table(dtype))
    return _TABLES[key]


def table_bytes(dtype: torch.dtype) -> int:
    """Memory of one (device, dtype) copy of the noise table."""
    return ((1 << TABLE_BITS) + (1 << SIGN_BITS) + 2 * WINDOW) * torch.empty(0, dtype=dtype).element_size()


def windows(numel: int, seed: int) -> Iterator[tuple[int, int, int, int]]:
    """(start, stop, offset into G, offset into S) of each window of a tensor whose tensor seed is `seed`."""
    for w, start in enumerate(range(0, numel, WINDOW)):
        h = splitmix64(seed ^ splitmix64(w))
        yield start, min(start + WINDOW, numel), h & ((1 << TABLE_BITS) - 1), (h >> 40) & ((1 << SIGN_BITS) - 1)
