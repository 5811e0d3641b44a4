"""Exact bf16: bf16 weights plus the low 16 bits of their fp32 value.

In bf16 a perturb/restore cycle (+εz, −2εz, +εz) does not return θ: each pass rounds, and θ random-walks by 0.39 %
RMS per cycle on SmolLM2 (3.8 % after 100; 2-core CPU, `python bench/low_precision.py`). Keeping beside each bf16
weight the 16 bits that fp32 has and bf16 lacks makes every pass exact fp32 arithmetic on the pair, while the
forwards read the bf16 half: the run follows the fp32 trajectory at 2 extra bytes per weight. The bf16 half is the
fp32 value rounded to nearest (ties away from zero); the residual is the signed remainder of the bit patterns.
"""

from __future__ import annotations

import torch


def join(w: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor, tmp: torch.Tensor) -> None:
    """w (fp32) ← the value whose bit pattern is (hi's 16 bits << 16) + lo; `tmp`: an int32 buffer like w."""
    bits = w.view(torch.int32)
    tmp.copy_(hi.view(torch.int16)).bitwise_left_shift_(16)
    bits.copy_(lo).add_(tmp)


def split(w: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor, tmp: torch.Tensor) -> None:
    """hi ← w rounded to bf16 (half-up on the bit pattern), lo ← the remainder, in [−2^15, 2^15); w is consumed."""
    bits = w.view(torch.int32)
    torch.add(bits, 0x8000, out=tmp).bitwise_right_shift_(16)
    hi.view(torch.int16).copy_(tmp)
    lo.copy_(bits.sub_(tmp.bitwise_left_shift_(16)))


class Residuals:
    """The residuals of one engine's bf16 weights, found from any contiguous view of a registered weight (TeZO
    updates row blocks) through the storage it shares."""

    def __init__(self) -> None:
        self._by_storage: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_storage)

    def keep(self, p: torch.Tensor) -> torch.Tensor:
        """Register bf16 weight p for exact updates; returns its int16 residual (zeros: p is its own fp32 value)."""
        if p.dtype != torch.bfloat16 or not p.is_contiguous():
            raise ValueError("exact bf16 needs contiguous bfloat16 weights")
        residual = torch.zeros(p.shape, dtype=torch.int16, device=p.device)
        self._by_storage[p.untyped_storage().data_ptr()] = (p, residual)
        return residual

    def of(self, p: torch.Tensor) -> torch.Tensor | None:
        """The flat residual slice of p (p itself or a contiguous view of a registered weight), or None."""
        if not self._by_storage or p.dtype != torch.bfloat16:
            return None
        entry = self._by_storage.get(p.untyped_storage().data_ptr())
        if entry is None:
            return None
        base, residual = entry
        offset = (p.data_ptr() - base.data_ptr()) // 2
        return residual.view(-1)[offset:offset + p.numel()]

    def clear(self) -> None:
        self._by_storage.clear()
