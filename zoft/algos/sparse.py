"""Sparse-MeZO: MeZO that perturbs and updates only the small-magnitude weights of each tensor (Liu et al.,
*Sparse MeZO: Less Parameters for Better Performance in Zeroth-Order LLM Fine-Tuning*, arXiv 2402.15751).

    h_i  = the (1 − s)-quantile of |θ_i| at the start of the run, per tensor (s = `sparsity`)
    m_t  = 1[|θ_t| ≤ h_i]                 (recomputed every step from the current weights: the mask follows θ)
    g    = (L(θ + ε·m⊙z) − L(θ − ε·m⊙z)) / (2ε)
    θ    ← θ − η·(g·m⊙z + λ·m⊙θ)          (weights outside the mask are never read into the update, nor decayed)

The paper's observation is that ZO noise added to large weights hurts more than on small ones; restricting the
probe to the smallest (1 − s) of each tensor lets it take larger steps (its grids go to lr 1e-5..1e-4 beside MeZO's
1e-6..1e-7). 2 forwards, 3 passes, no persistent state beyond one threshold per tensor.

The mask is a function of the weights, and in-place probes move the weights: after θ + ε·m⊙z no function of the
perturbed weights and z alone recovers m exactly (an entry just inside h that moved out, and one just outside that
never moved, can hold the same value), so an in-place step must carry the mask from its first pass to its last.
zoft computes m_t in the step's first pass, from θ_t itself, and keeps it packed at one bit per weight until the
tensor's update (d/8 bytes, freed as each tensor is updated; 1/16 of a bf16 model). This keeps the restore exact
and the step reproducible (replay, offload, resume); the paper's memory-efficient variant instead perturbs a copy
of each layer inside its forward, which costs one layer's copy per forward rather than the bit mask.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from zoft.algos.base import ZOOptimizer, state_dtype
from zoft.algos.options import Option

#: masks are built and applied in chunks of this many entries (a multiple of 8: whole bytes), so a pass's temporaries
#: (|θ|, the bool mask) stay a few MiB whatever the tensor's size
CHUNK = 1 << 20
# packing: 8 bool bytes read as one int64 and multiplied by this constant gather their low bits into the top byte
_GATHER = 0x0102040810204080
# unpacking: byte value → its 8 bools in the order the multiply packed them (bit k of the byte is entry k)
_SPREAD = torch.tensor([[(v >> k) & 1 for k in range(8)] for v in range(256)], dtype=torch.bool)
_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16,
             torch.float16: torch.int16}


def pack(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, 8 entries a byte (entry k of a group is bit k), zero-padded at the end."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return ((flat.view(torch.uint8).view(torch.int64) * _GATHER) >> 56).to(torch.uint8)


def unpack(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The first `numel` bools that `pack` stored."""
    return _SPREAD.to(packed.device).index_select(0, packed.int()).view(-1)[:numel]


def kth_smallest_abs(p: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest |θ| of `p` (1-based), exactly, in p's dtype, without sorting a copy of p: non-negative
    floats order as their bit patterns, so a bisection over the bits with one counting sweep (in chunks) per step
    finds it in at most 16 sweeps for bf16 and 32 for fp32, with a chunk's temporaries only."""
    flat = p.detach().reshape(-1)
    itype = _INT_VIEW[p.dtype]

    def value(bits: int) -> torch.Tensor:
        return torch.tensor(bits, dtype=itype).view(p.dtype).to(p.device)

    def count_le(x: torch.Tensor) -> int:
        return sum(int((flat[a:a + CHUNK].abs() <= x).sum()) for a in range(0, flat.numel(), CHUNK))

    top = max(float(flat[a:a + CHUNK].abs().max()) for a in range(0, flat.numel(), CHUNK))
    lo, hi = 0, int(torch.tensor(top, dtype=p.dtype).view(itype))
    while lo < hi:  # the smallest bit pattern whose value has at least k entries at or below it
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if count_le(value(mid)) >= k else (mid + 1, hi)
    return value(lo)


class SparseMeZO(ZOOptimizer):
    """MeZO on the smallest-magnitude weights of each tensor: the mask is recomputed from θ at every step.

    Options: sparsity s, the fraction of each tensor's weights (the largest in magnitude) that is left out.
    """

    summary = ("Sparse-MeZO: MeZO on each tensor's smallest-magnitude weights (mask from θ every step), "
               "2 forwards/step; takes larger lr than MeZO")
    paper = "Liu et al. 2024, arXiv 2402.15751"
    state_desc = "one threshold per tensor; a 1-bit mask per weight during a step"
    options = (Option("sparsity", float, 0.75, "Fraction of each tensor's weights left out of the probe and the "
                      "update: its largest in magnitude (0.75 perturbs the 25 % smallest).", low=0, high=1,
                      high_open=True),)
    default_lr = 1e-5   # the paper's grids run above MeZO's (its 1e-6): the probe covers a fraction of the weights

    def init_state(self) -> None:
        keep = 1.0 - self.settings["sparsity"]
        self._masks: dict[int, tuple[int, torch.Tensor]] = {}  # tensor index → (step seed, packed mask)
        for p in self.tensors:
            self.state[p]["threshold"] = self._threshold(p, keep)

    @staticmethod
    def _threshold(p: torch.Tensor, keep: float) -> torch.Tensor:
        """h: the k-th smallest |θ| with k = ⌈keep·n⌉, so that a fraction `keep` of the entries is at or below it
        (+inf for keep = 1, so the mask never drops a weight that grows, and where that value is 0: a tensor that
        starts at zero, as LoRA's B does, has no magnitudes to rank and is probed whole)."""
        k = max(1, math.ceil(keep * p.numel()))
        if p.device.type == "meta":  # memory estimates: shapes only
            return torch.empty((), dtype=state_dtype(p), device=p.device)
        if keep >= 1.0:  # s = 0: every weight, now and after it grows (MeZO, bitwise)
            return torch.full((), math.inf, dtype=state_dtype(p), device=p.device)
        h = kth_smallest_abs(p, k).to(state_dtype(p))
        return h if h > 0 else torch.full((), math.inf, dtype=h.dtype, device=h.device)

    def _outside(self, index: int, seed: int) -> torch.Tensor | None:
        """The packed bits of 1 − m for tensor `index` at the step of `seed`, if the step has computed them."""
        cached = self._masks.get(index)
        return cached[1] if cached is not None and cached[0] == seed else None

    def masked_noise(self, index: int, seed: int) -> torch.Tensor:
        """m⊙z for tensor `index` (the engine's z buffer, zeroed outside the mask in place). The first call of a step
        is at θ_t, before its first probe: it computes m from the weights (chunk by chunk) and keeps 1 − m packed,
        one bit per weight, until the tensor's update; later calls of the step unpack it."""
        p = self.tensors[index]
        z = self.engine.noise(index, seed).view(-1)
        packed = self._outside(index, seed)
        fresh = packed is None
        if fresh:
            packed = torch.empty((p.numel() + 7) // 8, dtype=torch.uint8, device=p.device)
            h = self.state[p]["threshold"].to(p.dtype)
            flat = p.detach().reshape(-1)
        for a in range(0, p.numel(), CHUNK):
            b = min(a + CHUNK, p.numel())
            if fresh:
                outside = flat[a:b].abs() > h
                packed[a // 8:(b + 7) // 8] = pack(outside)
            else:
                outside = unpack(packed[a // 8:(b + 7) // 8], b - a)
            z[a:b].masked_fill_(outside, 0.0)
        if fresh:
            self._masks[index] = (seed, packed)
        return z.view(p.shape)

    def mask(self, index: int, seed: int) -> torch.Tensor:
        """m of tensor `index` at the step of `seed` as a bool tensor shaped like it (for the decayed update)."""
        p = self.tensors[index]
        if self._outside(index, seed) is None:
            self.masked_noise(index, seed)
        return ~unpack(self._outside(index, seed), p.numel()).view(p.shape)

    @torch.no_grad()
    def perturb_tensor(self, index: int, seed: int, scale: float, direction: int = 0) -> None:
        self.ops.add_(self.tensors[index], self.masked_noise(index, seed), scale)

    def update_tensor(self, index: int, seed: int, record: dict[str, Any], t: int) -> None:
        p, c, lr = self.tensors[index], self.decay_factor(index), self.hyper(index)["lr"]
        zm = self.masked_noise(index, seed)
        if c != 1.0:  # restore, then decay the masked weights only: θ_m ← c·(w + ε·z)_m
            self.ops.add_(p, zm, self.eps)
            self.ops.add_(p, p.to(state_dtype(p)) * self.mask(index, seed), c - 1.0)
            self.ops.add_(p, zm, -lr * record["projected_grad"])
        else:  # P3 fused: θ ← w + (ε − η·g)·m⊙z
            self.ops.add_(p, zm, self.eps - lr * record["projected_grad"])
        self._masks.pop(index, None)

    def state_breakdown(self) -> dict[str, int]:
        return {"thresholds": self.state_bytes()}

    def transient_bytes(self) -> int:
        """MeZO's dense pass plus the step's bit masks (d/8 bytes) and a chunk's |θ| and bool mask."""
        return (super().transient_bytes() + sum((p.numel() + 7) // 8 for p in self.tensors)
                + CHUNK * (1 + max(p.element_size() for p in self.tensors)))
