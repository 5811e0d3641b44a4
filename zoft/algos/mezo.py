"""MeZO (ZO-SGD) and its ZO-Bench relatives with dense state: ZO-SGD with momentum and ZO-Adam.

Papers: Malladi et al., *Fine-Tuning Language Models with Just Forward Passes*, arXiv 2305.17333 (MeZO);
Zhang et al., *Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A Benchmark*,
arXiv 2402.11592 (ZO-Bench: ZO-SGD-MMT, ZO-Adam).

All three probe with the two-sided SPSA estimate (ALGORITHMS.md §1.1), z ~ N(0, I) regenerated from the step
seed, and differ only in the update ĝ = g·z feeds:

    g = (L(θ + εz) − L(θ − εz)) / (2ε)
    MeZO        θ ← θ − η(g·z + λθ)
    ZO-SGD-MMT  b ← β·b + (g·z + λθ) ;  θ ← θ − η·b                          (torch SGD, dampening 0)
    ZO-Adam     m ← β1·m + (1−β1)·g·z ;  v ← β2·v + (1−β2)·(g·z)² ;
                θ ← (1 − ηλ)·θ − η·m̂/(√v̂ + δ)                              (torch AdamW, bias-corrected)

λ applies only to 2-D weights that are neither bias nor norm (§1.6). Cost per step: 2 forwards and 3 passes. The
published MeZO code makes 4 passes (+εz, −2εz, +εz restore, −ηgz update); zoft fuses restore and update into
one (§1.3), which also rounds once instead of twice:

    P1  θ ← θ + εz → L+ ;   P2  θ ← θ − 2εz → L− ;   P3  regenerate z once: restore θ + εz, then update

The ZO-Bench reference pushes g·z through a torch optimizer one parameter at a time (set .grad, step, clear);
zoft applies the same math inside the fused pass P3 instead (§2.5).

Extra state: MeZO none; ZO-SGD-MMT d fp32 numbers (b); ZO-Adam 2d fp32 (m, v). State is fp32 whatever the
weight dtype: (1−β2)·g²z² is often below fp16's smallest normal and would flush to zero (§2.5).
"""

from __future__ import annotations

import math

import torch

from zoft.algos.base import TwoPointZO, state_dtype
from zoft.perturb import add_, addcdiv_, scale_


class MeZO(TwoPointZO):
    """Memory-efficient ZO-SGD: 2 forwards, 3 in-place passes, no optimizer state."""

    summary = "ZO-SGD baseline: 2 forwards/step, no optimizer state; the memory floor and the reference"
    paper = "Malladi et al. 2023, arXiv 2305.17333"

    dense_z = False  # every pass is a fused θ ← θ + α·z: no z buffer
    offloadable = True

    def _update(self, seed: int, g: float) -> None:
        decays = [self.decay_factor(i) for i in range(len(self._tensors))]   # P3: θ ← c·θ + (c·ε − η·g)·z
        self.engine.axpy_all_(seed, [c * self.eps - self.hyper(i)["lr"] * g for i, c in enumerate(decays)], decays)

    def _update_tensor(self, index: int, seed: int, g: float, t: int) -> None:
        c = self.decay_factor(index)
        self.engine.axpy_one_(index, seed, c * self.eps - self.hyper(index)["lr"] * g, c)


class ZOSGDMomentum(TwoPointZO):
    """ZO-SGD with heavy-ball momentum (ZO-Bench's ZO-SGD-MMT): one fp32 buffer per weight.

    Args (beyond ZOOptimizer's):
        momentum: β of b ← β·b + (ĝ + λθ), as in `torch.optim.SGD(momentum=β, dampening=0)`.
    """

    summary = "ZO-SGD with momentum (ZO-Bench): 2 forwards/step, +1 fp32 per weight; smoother than MeZO"
    paper = "Zhang et al. 2024 (ZO-Bench), arXiv 2402.11592"
    state_desc = "d fp32 (momentum)"
    config_keys = ("momentum",)
    offloadable = True  # the momentum buffer travels with its block
    default_lr = 1e-7  # the buffer sums ~1/(1−β) = 10 steps, so MeZO's 1e-6 becomes 1e-7 (ZO-Bench grid 1e-5…1e-8)
    default_momentum = 0.9

    def __init__(self, params, lr=None, eps=None, weight_decay=0.0, seed=0, momentum: float | None = None,
                 noise: str = "table"):
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, seed=seed, noise=noise,
                         momentum=resolve_momentum(momentum, self.default_momentum))
        for p in self._tensors:
            self.state[p]["momentum_buffer"] = torch.zeros(p.shape, dtype=state_dtype(p), device=p.device)

    def _update_tensor(self, index: int, seed: int, g: float, t: int) -> None:
        p, z = self._tensors[index], self.engine.noise(index, seed)
        group, buf = self.hyper(index), self.state[p]["momentum_buffer"]
        add_(p, z, self.eps)                         # θ_orig (restore)
        buf.mul_(group["momentum"]).add_(z, alpha=g)
        if self._decay[index] and group["weight_decay"]:
            buf.add_(p, alpha=group["weight_decay"])  # coupled L2, as torch SGD does
        add_(p, buf, -group["lr"])


class ZOAdam(TwoPointZO):
    """ZO-Adam (MeZO-Adam): Adam moments of ĝ = g·z, two fp32 numbers per weight.

    Args (beyond ZOOptimizer's):
        momentum: β1.  beta2: β2.  adam_eps: δ in the denominator √v̂ + δ.
    """

    summary = ("ZO-Adam (MeZO-Adam): 2 forwards/step, +2 fp32 per weight (8 B/param); per-weight step sizes "
               "where that memory is free")
    paper = "Zhang et al. 2024 (ZO-Bench), arXiv 2402.11592"
    state_desc = "2d fp32 (Adam m, v)"
    scratch_slots = 1  # the denominator √v̂ + δ
    config_keys = ("momentum", "beta2", "adam_eps")
    offloadable = True  # the moments travel with their block
    default_lr = 1e-5  # Adam's step is ≈ η per weight whatever |ĝ|; ZO-Bench OPT grid 1e-5…1e-8
    default_momentum, default_beta2, default_adam_eps = 0.9, 0.999, 1e-8

    def __init__(self, params, lr=None, eps=None, weight_decay=0.0, seed=0, momentum: float | None = None,
                 beta2: float | None = None, adam_eps: float | None = None, noise: str = "table"):
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, seed=seed, noise=noise,
                         **resolve_adam(type(self), momentum, beta2, adam_eps))
        for p in self._tensors:
            self.state[p].update(dense_adam_state(p))

    def _update_tensor(self, index: int, seed: int, g: float, t: int) -> None:
        p, group = self._tensors[index], self.hyper(index)
        corrections = self.bias_corrections(group["momentum"], group["beta2"], t)
        adam_dense_update(p, self.engine.noise(index, seed), self.state[p], g, self.engine.scratch(index, 0), group,
                          self.eps, self.decay_factor(index), corrections)


def resolve_momentum(momentum: float | None, default: float) -> float:
    """β of a momentum method: the given value or the class default, checked to lie in [0, 1)."""
    momentum = default if momentum is None else float(momentum)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
    return momentum


def resolve_adam(cls, momentum: float | None, beta2: float | None, adam_eps: float | None) -> dict[str, float]:
    """Adam's param-group hyperparameters (β1 as `momentum`, β2, δ): given values or `cls`'s defaults, checked."""
    beta1 = cls.default_momentum if momentum is None else float(momentum)
    beta2 = cls.default_beta2 if beta2 is None else float(beta2)
    delta = cls.default_adam_eps if adam_eps is None else float(adam_eps)
    if not 0 <= beta1 < 1:
        raise ValueError(f"momentum (β1) must lie in [0, 1), got {beta1}")
    if not 0 <= beta2 < 1:
        raise ValueError(f"beta2 must lie in [0, 1), got {beta2}")
    if not delta > 0:
        raise ValueError(f"adam_eps must be > 0, got {delta}")
    return {"momentum": beta1, "beta2": beta2, "adam_eps": delta}


def dense_adam_state(p: torch.Tensor, shape: tuple[int, ...] | torch.Size | None = None) -> dict[str, torch.Tensor]:
    """Zeroed Adam moments (`exp_avg`, `exp_avg_sq`) of `shape` (default p's) in the state dtype of p."""
    shape = p.shape if shape is None else shape
    return {key: torch.zeros(shape, dtype=state_dtype(p), device=p.device) for key in ("exp_avg", "exp_avg_sq")}


def adam_dense_update(p: torch.Tensor, z: torch.Tensor, state: dict, g: float, scratch: torch.Tensor,
                      group: dict, eps: float, decay: float, corrections: tuple[float, float]) -> None:
    """Restore θ = θ_cur + ε·z, then one AdamW step with gradient g·z, all in place (torch.optim.AdamW's order:
    decay, moments, θ ← θ − (η/(1−β1^t))·m / (√v/√(1−β2^t) + δ))."""
    m, v = state["exp_avg"], state["exp_avg_sq"]
    bc1, bc2 = corrections
    add_(p, z, eps)
    scale_(p, decay)
    m.mul_(group["momentum"]).add_(z, alpha=(1.0 - group["momentum"]) * g)
    v.mul_(group["beta2"]).addcmul_(z, z, value=(1.0 - group["beta2"]) * g * g)
    denom = torch.sqrt(v, out=scratch).div_(math.sqrt(bc2)).add_(group["adam_eps"])
    addcdiv_(p, m, denom, -group["lr"] / bc1)
