"""In-place updates of weights of any dtype, without whole-tensor temporaries.

torch promotes `bf16.add_(fp32)` through fp32 temporaries the size of the whole tensor (measured: 214 MiB for
SmolLM2's 28 M-element bf16 embedding). `InPlace` instead copies a chunk of the weight into a reused fp32 buffer,
operates there and copies back, rounding once as torch's own promotion does. The same chunk path is where the two
precision tools act, both owned by the instance (one per perturbation engine):

- stochastic rounding (`stochastic`): inside the block, the copy back rounds up or down at random, unbiased;
- exact bf16 (`residuals`): a registered bf16 weight is joined with its 16-bit residual into its exact fp32 value,
  updated in fp32 and split again, so the update is exact fp32 arithmetic.

Allocating even chunk-sized temporaries on every call lets glibc's growing mmap threshold keep hundreds of MiB
resident (measured 404 MiB for a TeZO pass in bf16); the reused buffers need 4 MiB per device each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from zoft.perturb.residuals import Residuals, join, split
from zoft.perturb.rounding import MIXED_CHUNK, StochasticRounding

_HALF = (torch.bfloat16, torch.float16)


class InPlace:
    """`add_`, `addcdiv_` and `scale_` for parameters of any dtype, with the rounding switch and the exact-bf16
    residuals of one engine."""

    def __init__(self) -> None:
        self.residuals = Residuals()
        self.rounding = StochasticRounding()
        self._work: dict[torch.device, torch.Tensor] = {}
        self._join: dict[torch.device, torch.Tensor] = {}

    @contextmanager
    def stochastic(self, seed: int, enabled: bool = True) -> Iterator[None]:
        """Inside the block, half-precision updates round stochastically with bits drawn from `seed` (e.g. the
        step seed); with `enabled` False the block changes nothing."""
        if enabled:
            self.rounding.start(seed)
        try:
            yield
        finally:
            self.rounding.stop()

    def _buffer(self, store: dict, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        buf = store.get(device)
        if buf is None:
            buf = store[device] = torch.empty(MIXED_CHUNK, dtype=dtype, device=device)
        return buf

    def mixed(self, p: torch.Tensor, *others: torch.Tensor) -> bool:
        """Whether an in-place op on half-precision p goes through the fp32 chunk buffer: when it takes fp32
        operands (torch would promote through whole-tensor temporaries), and always while rounding
        stochastically or for an exact-bf16 weight (`chunked`)."""
        return (p.dtype in _HALF and p.is_contiguous()
                and (self.rounding.active or self.residuals.of(p) is not None
                     or any(o.dtype == torch.float32 for o in others)))

    def chunked(self, p: torch.Tensor) -> bool:
        """Whether every in-place update of p, whatever its operands, must go through the fp32 chunk buffer (to be
        rounded stochastically, or joined with its exact-bf16 residual)."""
        return self.mixed(p)

    def apply(self, p: torch.Tensor, op: Callable[..., object], *others: torch.Tensor) -> None:
        """`op(work_fp32, *other_chunks)` applied to p chunk by chunk through the reused fp32 buffer."""
        work = self._buffer(self._work, p.device, torch.float32)
        residual = self.residuals.of(p)
        flat = [p.view(-1), *(o.reshape(-1) for o in others)]
        for a in range(0, flat[0].numel(), MIXED_CHUNK):
            chunks = [t[a:a + MIXED_CHUNK] for t in flat]
            w = work[:chunks[0].numel()]
            if residual is not None:
                lo = residual[a:a + MIXED_CHUNK]
                tmp = self._buffer(self._join, p.device, torch.int32)[:w.numel()]
                join(w, chunks[0], lo, tmp)
                op(w, *chunks[1:])
                split(w, chunks[0], lo, tmp)
                continue
            w.copy_(chunks[0])
            op(w, *chunks[1:])
            if self.rounding.active:
                self.rounding.round_(chunks[0], w)
            else:
                chunks[0].copy_(w)

    def add_(self, p: torch.Tensor, other: torch.Tensor, alpha: float = 1.0) -> None:
        """p ← p + alpha·other in place."""
        if self.mixed(p, other):
            self.apply(p, lambda w, o: w.add_(o, alpha=alpha), other)
        else:
            p.add_(other, alpha=alpha)

    def addcdiv_(self, p: torch.Tensor, num: torch.Tensor, den: torch.Tensor, value: float) -> None:
        """p ← p + value·num/den in place."""
        if self.mixed(p, num, den):
            self.apply(p, lambda w, n, d: w.addcdiv_(n, d, value=value), num, den)
        else:
            p.addcdiv_(num, den, value=value)

    def scale_(self, p: torch.Tensor, c: float) -> None:
        """p ← c·p in place (weight decay)."""
        if c == 1.0:
            return
        if self.chunked(p):
            self.apply(p, lambda w: w.mul_(c))
        else:
            p.mul_(c)

    def master_fp32(self, p: torch.Tensor) -> torch.Tensor:
        """The exact fp32 value of bf16 weight p (with its residual, if registered)."""
        residual = self.residuals.of(p)
        out = torch.empty(p.shape, dtype=torch.float32, device=p.device)
        if residual is None:
            return out.copy_(p)
        tmp = torch.empty(p.numel(), dtype=torch.int32, device=p.device)
        join(out.view(-1), p.reshape(-1), residual, tmp)
        return out
