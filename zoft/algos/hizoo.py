"""HiZOO and HiZOO-L: Hessian-informed ZO (Zhao et al., arXiv 2402.15173, ICLR 2025).

HiZOO keeps a diagonal curvature estimate H > 0 (fp32, one number per weight) and probes along u = z/√H, so the
perturbation covariance is diag(1/H). Per step (ALGORITHMS.md §3.2), with three forwards and three passes:

    L0 = L(θ)                                   forward 1 (also the reported loss: no 4th logging forward)
    P1  θ += ε·z/√H            → L+              forward 2
    P2  θ −= 2ε·z/√H           → L−              forward 3
        g = (L+ − L−)/(2ε),  c = |L+ + L− − 2·L0| / (2ε²)
    P3  θ_orig = θ + ε·z/√H_old
        H ← H·((1−α) + α·c·w),   w = z² (released code, default) or |z² − 1| (paper, `hessian_estimator="paper"`)
        θ ← (1−ηλ)·θ_orig − η·g·z/√H_new

The probe uses H_old and the step H_new, as in the released code (the published results depend on it; the
difference is O(α)). H is kept in **fp32** whatever the weight dtype: with α = 1e-8 the EMA increment α·c·z² is
far below half an fp16/bf16 ulp of H ≈ 1 and would be rounded away, freezing H at 1 (ALGORITHMS.md §3.2, §3.5).
Guard: H is clamped to [1e-12, 1e30] after each update, so it stays positive and finite even if a noisy ΔL
spikes; the bounds never bind on healthy runs (the mean-field fixed point is (1 + d/2)·diag(A)).

HiZOO-L (**zoft's own design**, not a reproduction of the paper's HiZOO-L, §3.6) replaces H of each m×n matrix
by a rank-1 Adafactor-style factorisation H = R·Cᵀ / ΣR with R ∈ R^m (row sums) and C ∈ R^n (column sums),
updated as R ← (1−α)R + α·D·1, C ← (1−α)C + α·1ᵀD from the per-element sample D = c·H_old⊙w. Tensors that are
not 2-D keep a full diagonal. State: m + n numbers per matrix instead of m·n.

Extra state: HiZOO d fp32 numbers; HiZOO-L Σ(m + n) over matrices plus the 1-D tensors. Transient: two
largest-tensor fp32 scratch buffers besides the engine's z buffer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from zoft.algos.base import Closure, ZOOptimizer, check_finite
from zoft.perturb import addcdiv_, scale_, stochastic_rounding

_H_MIN, _H_MAX = 1e-12, 1e30


def parse_schedule(spec: str | Sequence[tuple[int, float]] | None) -> list[tuple[int, float]]:
    """A piecewise-constant α schedule: "0:1e-6,9800:1e-8" → [(0, 1e-6), (9800, 1e-8)] (step-indexed)."""
    if spec is None or spec == "":
        return []
    if isinstance(spec, str):
        pairs = []
        for part in spec.split(","):
            step, _, value = part.partition(":")
            try:
                pairs.append((int(step), float(value)))
            except ValueError:
                raise ValueError(f"hessian smooth schedule: {part!r} is not STEP:ALPHA "
                                 "(e.g. '0:1e-6,9800:1e-8')") from None
    else:
        pairs = [(int(s), float(a)) for s, a in spec]
    pairs.sort()
    if pairs[0][0] != 0:
        raise ValueError("hessian smooth schedule must start at step 0 (e.g. '0:1e-6,9800:1e-8')")
    if any(not 0 <= a <= 1 for _, a in pairs):
        raise ValueError("hessian smooth schedule: every α must lie in [0, 1]")
    return pairs


class HiZOO(ZOOptimizer):
    """Diagonal-Hessian-informed ZO-SGD: 3 forwards, 3 passes, one fp32 curvature number per weight.

    Args (beyond ZOOptimizer's):
        hessian_smooth: α, the EMA coefficient of H. 0 makes HiZOO MeZO with an extra forward and is refused
            unless `allow_degenerate=True`.
        hessian_schedule: optional step-indexed piecewise-constant α, e.g. "0:1e-4,2000:1e-6"; overrides α.
        hessian_estimator: "code" (released code: c·H·z², default) or "paper" (|ΔL/(2ε²)·H·(z² − 1)|).
    """

    summary = ("curvature-scaled probes (diagonal Hessian EMA): 3 forwards/step, +1 fp32 per weight; "
               "for ill-conditioned problems when memory for H is free")
    paper = "Zhao et al. 2024, arXiv 2402.15173"
    replay_keys = ("projected_grad", "curvature")
    state_desc = "d fp32 (H per weight)"
    forwards_per_step = 3
    scratch_slots = 2  # √H (or the rebuilt factored H) and the curvature sample
    default_hessian_smooth = 1e-6
    config_keys = ("hessian_smooth", "hessian_schedule", "hessian_estimator", "allow_degenerate")
    offloadable = True  # H travels with its block; the three probes run through it in lockstep

    def __init__(self, params, lr=None, eps=None, weight_decay=0.0, seed=0, hessian_smooth: float | None = None,
                 hessian_schedule=None, hessian_estimator: str = "code", allow_degenerate: bool = False,
                 noise: str = "table"):
        alpha = self.default_hessian_smooth if hessian_smooth is None else float(hessian_smooth)
        schedule = parse_schedule(hessian_schedule)
        if hessian_estimator not in ("code", "paper"):
            raise ValueError(f"hessian_estimator must be 'code' or 'paper', got {hessian_estimator!r}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"hessian_smooth must lie in [0, 1], got {alpha}")
        alphas = [a for _, a in schedule] or [alpha]
        if max(alphas) == 0 and not allow_degenerate:
            raise ValueError("hessian_smooth = 0 keeps H at 1, which makes HiZOO MeZO with a wasted forward; "
                             "pass a positive α (default 1e-6) or allow_degenerate=True")
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, seed=seed, noise=noise)
        self.alpha, self.schedule, self.estimator = alpha, schedule, hessian_estimator
        for i, p in enumerate(self._tensors):
            self._init_state(i, p)

    # -- curvature state (HiZOO-L overrides these five) ------------------------------------------------
    def _init_state(self, index: int, p: torch.Tensor) -> None:
        self.state[p]["hessian"] = torch.ones(p.shape, dtype=torch.float32, device=p.device)

    def _sqrt_h(self, index: int, slot: int) -> torch.Tensor:
        """√H of tensor `index` written into scratch `slot`."""
        out = self.engine.scratch(index, slot)
        return torch.sqrt(self.state[self._tensors[index]]["hessian"], out=out)

    def _update_h(self, index: int, z: torch.Tensor, c: float, alpha: float) -> None:
        """H ← H·((1−α) + α·c·w) in place, w = z² or |z² − 1|."""
        h = self.state[self._tensors[index]]["hessian"]
        factor = self._sample_weight(index, z)
        factor.mul_(alpha * c).add_(1.0 - alpha)
        h.mul_(factor).clamp_(_H_MIN, _H_MAX)

    def _log_h(self, index: int) -> torch.Tensor:
        return self.state[self._tensors[index]]["hessian"].log()

    def _dense_hessians(self) -> list[torch.Tensor] | None:
        """H per tensor as dense fp32 tensors, which the fused kernel can read; None where H is factored."""
        return [self.state[p]["hessian"] for p in self._tensors]

    # ---------------------------------------------------------------------------------------------------
    def _sample_weight(self, index: int, z: torch.Tensor) -> torch.Tensor:
        """w = z² (code) or |z² − 1| (paper) in scratch slot 1."""
        w = torch.mul(z, z, out=self.engine.scratch(index, 1))
        if self.estimator == "paper":
            w.sub_(1.0).abs_()
        return w

    def current_alpha(self) -> float:
        """α at the current step: the schedule's last entry at or before t, else the constant."""
        alpha = self.alpha
        for start, value in self.schedule:
            if start <= self.t:
                alpha = value
        return alpha

    @torch.no_grad()
    def perturb_tensor(self, index: int, seed: int, scale: float) -> None:
        """θ_i += scale·z_i/√H_i: tensor i's share of `perturb`, the same arithmetic (the fused kernel where the
        full pass would use it)."""
        hessians = self._dense_hessians() if self.engine.kind == "philox" else None
        if hessians is not None and self.engine.fused_all():
            self.engine.axpy_one_(index, seed, scale, hessian=hessians[index])
            return
        addcdiv_(self._tensors[index], self.engine.noise(index, seed), self._sqrt_h(index, 0), scale)

    @torch.no_grad()
    def perturb(self, seed: int, scale: float, probe: int = 0) -> None:
        """θ += scale·z/√H (one pass; with the philox kernel, H is read in the same fused pass)."""
        hessians = self._dense_hessians()
        if hessians is not None and self.engine.fused_all():
            self.engine.axpy_all_(seed, [scale] * len(self._tensors), probe=probe, hessians=hessians)
            return
        for i, p, z in self.engine.sweep(seed, probe):
            addcdiv_(p, z, self._sqrt_h(i, 0), scale)

    def _zo_step(self, closure: Closure, seed: int) -> float:
        if self.offloader is not None:
            return self._offloaded_step(closure, seed)
        eps = self.param_groups[0]["eps"]
        loss0 = self.evaluate(closure)
        self.perturb(seed, eps)                                     # P1
        loss_plus = self.evaluate(closure)
        self.perturb(seed, -2.0 * eps)                              # P2
        loss_minus = self.evaluate(closure)
        check_finite(self, (loss0, loss_plus, loss_minus), restore=lambda: self.perturb(seed, eps))
        g = (loss_plus - loss_minus) / (2.0 * eps)
        delta = loss_plus + loss_minus - 2.0 * loss0
        c = abs(delta) / (2.0 * eps * eps)
        check_finite(self, (g, c), restore=lambda: self.perturb(seed, eps), what="projected gradient or curvature")
        alpha = self._apply(seed, g, c)
        self.last = {"projected_grad": g, "loss_plus": loss_plus, "loss_minus": loss_minus, "loss0": loss0,
                     "curvature": c, "hessian_smooth": alpha}
        return loss0

    def _offloaded_step(self, closure: Closure, seed: int) -> float:
        """The step with the blocks streamed (`zoft.offload`): L0, L+ and L− in one visit of each block, P3
        deferred to the next visit."""
        eps = self.param_groups[0]["eps"]
        (loss0, loss_plus, loss_minus), restore = self._offloaded_probes(closure, seed, [0.0, eps, -2.0 * eps])
        check_finite(self, (loss0, loss_plus, loss_minus), restore=restore)
        g = (loss_plus - loss_minus) / (2.0 * eps)
        c = abs(loss_plus + loss_minus - 2.0 * loss0) / (2.0 * eps * eps)
        check_finite(self, (g, c), restore=restore, what="projected gradient or curvature")
        alpha = self.current_alpha()
        self.offloader.defer(lambda i: self._tensor_apply(i, seed, g, c, alpha))
        self.last = {"projected_grad": g, "loss_plus": loss_plus, "loss_minus": loss_minus, "loss0": loss0,
                     "curvature": c, "hessian_smooth": alpha}
        return loss0

    def _apply_record(self, seed: int, record: dict) -> None:
        self._apply(seed, record["projected_grad"], record["curvature"])

    def _apply(self, seed: int, g: float, c: float) -> float:
        """P3: restore, update H with the curvature sample c, step along z/√H with g; returns the α used."""
        alpha = self.current_alpha()
        if self.tensorwise:  # as an offloaded run applies it: rounding bits seeded per tensor
            self.engine.count_pass()
            for i in range(len(self._tensors)):
                self._tensor_apply(i, seed, g, c, alpha)
            return alpha
        with stochastic_rounding(seed, self.stochastic_rounding):
            for i, p, z in self.engine.sweep(seed):                  # P3: restore, update H, step
                self._apply_one(i, z, g, c, alpha)
        return alpha

    def _tensor_apply(self, index: int, seed: int, g: float, c: float, alpha: float) -> None:
        with self.tensor_rounding(seed, index):
            self._apply_one(index, self.engine.noise(index, seed), g, c, alpha)

    def _apply_one(self, i: int, z: torch.Tensor, g: float, c: float, alpha: float) -> None:
        p, group = self._tensors[i], self.hyper(i)
        addcdiv_(p, z, self._sqrt_h(i, 0), group["eps"])     # θ_orig, with the probe's H_old
        self._update_h(i, z, c, alpha)
        scale_(p, self.decay_factor(i))
        addcdiv_(p, z, self._sqrt_h(i, 0), -group["lr"] * g)  # step with H_new

    def diagnostics(self) -> dict[str, float]:
        """Mean, spread and range of log H over all weights: H departing from 0 (= log 1) shows it learning."""
        n, s, s2, lo, hi = 0, 0.0, 0.0, math.inf, -math.inf
        with torch.no_grad():
            for i in range(len(self._tensors)):
                log_h = self._log_h(i).double()
                n += log_h.numel()
                s += float(log_h.sum())
                s2 += float((log_h * log_h).sum())
                lo, hi = min(lo, float(log_h.min())), max(hi, float(log_h.max()))
        mean = s / n
        return {"log_h_mean": mean, "log_h_std": math.sqrt(max(s2 / n - mean * mean, 0.0)),
                "log_h_min": lo, "log_h_max": hi}


class HiZOOL(HiZOO):
    """HiZOO with a rank-1 factored Hessian per matrix (zoft's design): m + n fp32 numbers per m×n matrix."""

    summary = ("HiZOO with a factored (row × column) Hessian: m+n numbers per matrix, ~MeZO memory; "
               "pick it over HiZOO when d more fp32 numbers do not fit")
    paper = "zoft's rank-1 factored design after arXiv 2402.15173 (not the paper's HiZOO-L)"
    state_desc = "m+n fp32 per matrix, full H for 1-D"

    def _init_state(self, index: int, p: torch.Tensor) -> None:
        if p.ndim != 2:
            return super()._init_state(index, p)
        m, n = p.shape
        # R = n·1, C = m·1 so that H = R·Cᵀ/ΣR = n·m/(m·n) ≡ 1 at init
        self.state[p]["hessian_row"] = torch.full((m,), float(n), dtype=torch.float32, device=p.device)
        self.state[p]["hessian_col"] = torch.full((n,), float(m), dtype=torch.float32, device=p.device)

    def _factors(self, index: int):
        st = self.state[self._tensors[index]]
        return (st["hessian_row"], st["hessian_col"]) if "hessian_row" in st else None

    def _build_h(self, index: int, slot: int) -> torch.Tensor:
        """H = R·Cᵀ/ΣR into scratch `slot` (never stored)."""
        row, col = self._factors(index)
        out = self.engine.scratch(index, slot)
        torch.outer(row, col, out=out)
        return out.div_(row.sum())

    def _sqrt_h(self, index: int, slot: int) -> torch.Tensor:
        if self._factors(index) is None:
            return super()._sqrt_h(index, slot)
        return self._build_h(index, slot).sqrt_()

    def _update_h(self, index: int, z: torch.Tensor, c: float, alpha: float) -> None:
        factors = self._factors(index)
        if factors is None:
            return super()._update_h(index, z, c, alpha)
        row, col = factors
        sample = self._sample_weight(index, z).mul_(self._build_h(index, 0)).mul_(c)  # D = c·H_old⊙w
        self.update_factors(row, col, sample, alpha)

    @staticmethod
    def update_factors(row: torch.Tensor, col: torch.Tensor, sample: torch.Tensor, alpha: float) -> None:
        """R ← (1−α)R + α·D·1,  C ← (1−α)C + α·1ᵀD, clamped positive and finite."""
        row.mul_(1.0 - alpha).add_(sample.sum(1), alpha=alpha).clamp_(_H_MIN, _H_MAX)
        col.mul_(1.0 - alpha).add_(sample.sum(0), alpha=alpha).clamp_(_H_MIN, _H_MAX)

    def _log_h(self, index: int) -> torch.Tensor:
        if self._factors(index) is None:
            return super()._log_h(index)
        return self._build_h(index, 1).log_()

    def _dense_hessians(self) -> None:
        return None  # the matrices' H is factored: the perturbation rebuilds it per tensor
