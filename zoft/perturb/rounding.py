"""Stochastic rounding of half-precision updates.

A ZO update η·g·z of ~1e-6 is far below half a bf16 ulp of most weights (2^-9 relative): rounding to nearest drops
it. Rounding up with probability (x − lo)/(hi − lo) instead makes E[round(x)] = x, so updates survive in
expectation. Random bits come from a third table, U (2^20 uniform 16-bit integers, 8 MiB, a process-wide constant
built on first use), read in windows at offsets hashed from (update seed, call, window), so a run stays
reproducible.
"""

from __future__ import annotations

import torch

from zoft.perturb.seeds import mix, splitmix64, tag_id
from zoft.perturb.table import SIGN_BITS, TABLE_SEED, scramble_

#: elements per chunk of a mixed-dtype in-place update (4 MiB of fp32); the U table is padded by one chunk
MIXED_CHUNK = 1 << 20
_UNIFORM: dict[torch.device, torch.Tensor] = {}


def _uniform_table(device: torch.device) -> torch.Tensor:
    table = _UNIFORM.get(device)
    if table is None:
        idx = scramble_(torch.arange(1 << SIGN_BITS), torch.empty(1 << SIGN_BITS, dtype=torch.int64), SIGN_BITS,
                        TABLE_SEED ^ 0x5EED)
        bits = idx.bitwise_and_(0xFFFF).to(torch.int32)  # low 16 bits of a bijection of 20 bits: exactly uniform
        table = _UNIFORM[device] = torch.cat([bits, bits[:MIXED_CHUNK]]).to(device)
    return table


class StochasticRounding:
    """The rounding switch of one engine: off, or on with a seed and a count of the calls made under it."""

    def __init__(self) -> None:
        self.seed: int | None = None
        self.calls = 0

    @property
    def active(self) -> bool:
        return self.seed is not None

    def start(self, seed: int) -> None:
        self.seed, self.calls = mix(seed, tag_id("sr")), 0

    def stop(self) -> None:
        self.seed, self.calls = None, 0

    def bits(self, device: torch.device, n: int) -> torch.Tensor:
        """n uniform integers in [0, 2^16) (int32) for the next rounding call: a window of the U table."""
        table = _uniform_table(device)
        self.calls += 1
        offset = splitmix64(self.seed ^ splitmix64(self.calls)) & ((1 << SIGN_BITS) - 1)
        return table[offset:offset + n]

    def round_(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """dst (bf16/fp16) ← src (fp32, overwritten) rounded up or down with probabilities that make it unbiased."""
        u = self.bits(src.device, src.numel())
        if dst.dtype == torch.bfloat16:
            # bf16 is the top 16 bits of fp32: add uniform bits below them, then truncate (exact at every binade)
            bits = src.view(torch.int32)
            bits.add_(u).bitwise_and_(-65536)
            dst.copy_(src)
            return
        near = src.to(dst.dtype)  # fp16: the nearest value and its neighbour on src's side
        side = torch.where(src > near.float(), torch.tensor(float("inf"), dtype=dst.dtype, device=dst.device),
                           torch.tensor(float("-inf"), dtype=dst.dtype, device=dst.device))
        other = torch.nextafter(near, side)
        gap = (other.float() - near.float()).abs_()
        prob = (src - near.float()).abs_().div_(gap.clamp_min_(1e-45))
        dst.copy_(torch.where(u.float().add_(0.5).div_(65536.0) < prob, other, near))
