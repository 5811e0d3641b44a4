"""MeZO (ZO-SGD) and its ZO-Bench relatives with dense state: ZO-SGD with momentum and ZO-Adam.

Papers: Malladi et al., *Fine-Tuning Language Models with Just Forward Passes*, arXiv 2305.17333 (MeZO);
Zhang et al., *Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A Benchmark*,
arXiv 2402.11592 (ZO-Bench: ZO-SGD-MMT, ZO-Adam).

All three probe with the two-sided SPSA estimate, z ~ N(0, I) regenerated from the step
seed, and differ only in the update ĝ = g·z feeds:

    g = (L(θ + εz) − L(θ − εz)) / (2ε)
    MeZO        θ ← θ − η(g·z + λθ)
    ZO-SGD-MMT  b ← β·b + (g·z + λθ) ;  θ ← θ − η·b                          (torch SGD, dampening 0)
    ZO-Adam     m ← β1·m + (1−β1)·g·z ;  v ← β2·v + (1−β2)·(g·z)² ;
                θ ← (1 − ηλ)·θ − η·m̂/(√v̂ + δ)                              (torch AdamW, bias-corrected)

λ applies only to 2-D weights that are neither bias nor norm. Cost per step: 2 forwards and 3 passes. The
published MeZO code makes 4 passes (+εz, −2εz, +εz restore, −ηgz update); zoft fuses restore and update into
one, which also rounds once instead of twice:

    P1  θ ← θ + εz → L+ ;   P2  θ ← θ − 2εz → L− ;   P3  regenerate z once: restore θ + εz, then update

The ZO-Bench reference pushes g·z through a torch optimizer one parameter at a time (set .grad, step, clear);
zoft applies the same math inside the fused pass P3 instead.

Extra state: MeZO none; ZO-SGD-MMT d fp32 numbers (b); ZO-Adam 2d fp32 (m, v). State is fp32 whatever the
weight dtype: (1−β2)·g²z² is often below fp16's smallest normal and would flush to zero.
"""

from __future__ import annotations

import math

import torch

from zoft.algos.base import ZOOptimizer, state_dtype
from zoft.algos.options import Option
from zoft.perturb import InPlace

MOMENTUM = Option("momentum", float, 0.9, "Momentum β (zo-sgd-mmt: heavy ball; tezo-m: EMA; the Adam variants: "
                  "β1).", low=0, high=1, high_open=True)
BETA2 = Option("beta2", float, 0.999, "Adam's β2, the EMA coefficient of the second moment.", low=0, high=1,
               high_open=True)
ADAM_EPS = Option("adam_eps", float, 1e-8, "Adam's δ in m̂/(√v̂ + δ).", low=0, low_open=True)
ADAM_OPTIONS = (MOMENTUM, BETA2, ADAM_EPS)


class MeZO(ZOOptimizer):
    """Memory-efficient ZO-SGD: 2 forwards, 3 in-place passes, no optimizer state."""

    summary = "ZO-SGD baseline: 2 forwards/step, no optimizer state; the memory floor and the reference"
    paper = "Malladi et al. 2023, arXiv 2305.17333"

    dense_z = False  # every pass is a fused θ ← θ + α·z: no z buffer

    def update_all(self, seed: int, record: dict, t: int) -> None:
        g = record["projected_grad"]
        decays = [self.decay_factor(i) for i in range(len(self.tensors))]   # P3: θ ← c·θ + (c·ε − η·g)·z
        self.engine.axpy_all_(seed, [c * self.eps - self.hyper(i)["lr"] * g for i, c in enumerate(decays)], decays)

    def update_tensor(self, index: int, seed: int, record: dict, t: int) -> None:
        c = self.decay_factor(index)
        self.engine.axpy_one_(index, seed, c * self.eps - self.hyper(index)["lr"] * record["projected_grad"], c)


class ZOSGDMomentum(ZOOptimizer):
    """ZO-SGD with heavy-ball momentum (ZO-Bench's ZO-SGD-MMT): one fp32 buffer per weight.

    Options: momentum, β of b ← β·b + (ĝ + λθ), as in `torch.optim.SGD(momentum=β, dampening=0)`.
    """

    summary = "ZO-SGD with momentum (ZO-Bench): 2 forwards/step, +1 fp32 per weight; smoother than MeZO"
    paper = "Zhang et al. 2024 (ZO-Bench), arXiv 2402.11592"
    state_desc = "d fp32 (momentum)"
    options = (MOMENTUM,)
    default_lr = 1e-7  # the buffer sums ~1/(1−β) = 10 steps, so MeZO's 1e-6 becomes 1e-7 (ZO-Bench grid 1e-5…1e-8)

    def init_state(self) -> None:
        for p in self.tensors:
            self.state[p]["momentum_buffer"] = torch.zeros(p.shape, dtype=state_dtype(p), device=p.device)

    def update_tensor(self, index: int, seed: int, record: dict, t: int) -> None:
        p, z = self.tensors[index], self.engine.noise(index, seed)
        group, buf = self.hyper(index), self.state[p]["momentum_buffer"]
        self.ops.add_(p, z, self.eps)                 # θ_orig (restore)
        buf.mul_(group["momentum"]).add_(z, alpha=record["projected_grad"])
        if self._decay[index] and group["weight_decay"]:
            buf.add_(p, alpha=group["weight_decay"])  # coupled L2, as torch SGD does
        self.ops.add_(p, buf, -group["lr"])


class ZOAdam(ZOOptimizer):
    """ZO-Adam (MeZO-Adam): Adam moments of ĝ = g·z, two fp32 numbers per weight.

    Options: momentum (β1), beta2 (β2), adam_eps (δ in the denominator √v̂ + δ).
    """

    summary = ("ZO-Adam (MeZO-Adam): 2 forwards/step, +2 fp32 per weight (8 B/param); per-weight step sizes "
               "where that memory is free")
    paper = "Zhang et al. 2024 (ZO-Bench), arXiv 2402.11592"
    state_desc = "2d fp32 (Adam m, v)"
    scratch_slots = 1  # the denominator √v̂ + δ
    options = ADAM_OPTIONS
    default_lr = 1e-5  # Adam's step is ≈ η per weight whatever |ĝ|; ZO-Bench OPT grid 1e-5…1e-8
    lr_grid = "own"

    def init_state(self) -> None:
        for p in self.tensors:
            self.state[p].update(dense_adam_state(p))

    def update_tensor(self, index: int, seed: int, record: dict, t: int) -> None:
        p, group = self.tensors[index], self.hyper(index)
        corrections = self.bias_corrections(group["momentum"], group["beta2"], t)
        adam_dense_update(self.ops, p, self.engine.noise(index, seed), self.state[p], record["projected_grad"],
                          self.engine.scratch(index, 0), group, self.eps, self.decay_factor(index), corrections)


def dense_adam_state(p: torch.Tensor, shape: tuple[int, ...] | torch.Size | None = None) -> dict[str, torch.Tensor]:
    """Zeroed Adam moments (`exp_avg`, `exp_avg_sq`) of `shape` (default p's) in the state dtype of p."""
    shape = p.shape if shape is None else shape
    return {key: torch.zeros(shape, dtype=state_dtype(p), device=p.device) for key in ("exp_avg", "exp_avg_sq")}


def adam_dense_update(ops: InPlace, p: torch.Tensor, z: torch.Tensor, state: dict, g: float, scratch: torch.Tensor,
                      group: dict, eps: float, decay: float, corrections: tuple[float, float]) -> None:
    """Restore θ = θ_cur + ε·z, then one AdamW step with gradient g·z, all in place (torch.optim.AdamW's order:
    decay, moments, θ ← θ − (η/(1−β1^t))·m / (√v/√(1−β2^t) + δ))."""
    m, v = state["exp_avg"], state["exp_avg_sq"]
    bc1, bc2 = corrections
    ops.add_(p, z, eps)
    ops.scale_(p, decay)
    m.mul_(group["momentum"]).add_(z, alpha=(1.0 - group["momentum"]) * g)
    v.mul_(group["beta2"]).addcmul_(z, z, value=(1.0 - group["beta2"]) * g * g)
    denom = torch.sqrt(v, out=scratch).div_(math.sqrt(bc2)).add_(group["adam_eps"])
    ops.addcdiv_(p, m, denom, -group["lr"] / bc1)
