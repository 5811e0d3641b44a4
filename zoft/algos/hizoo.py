"""HiZOO and HiZOO-L: Hessian-informed ZO (Zhao et al., arXiv 2402.15173, ICLR 2025).

HiZOO keeps a diagonal curvature estimate H > 0 (fp32, one number per weight) and probes along u = z/√H, so the
perturbation covariance is diag(1/H). Per step, with three forwards and three passes:

    L0 = L(θ)                                   forward 1 (also the reported loss: no 4th logging forward)
    P1  θ += ε·z/√H            → L+              forward 2
    P2  θ −= 2ε·z/√H           → L−              forward 3
        g = (L+ − L−)/(2ε),  c = |L+ + L− − 2·L0| / (2ε²)
    P3  θ_orig = θ + ε·z/√H_old
        H ← H·((1−α) + α·c·w),   w = z² (released code, default) or |z² − 1| (paper, `hessian_estimator="paper"`)
        θ ← (1−ηλ)·θ_orig − η·g·z/√H_new

The probe uses H_old and the step H_new, as in the released code (the published results depend on it; the
difference is O(α)). H is kept in **fp32** whatever the weight dtype: with α = 1e-8 the EMA increment α·c·z² is
far below half an fp16/bf16 ulp of H ≈ 1 and would be rounded away, freezing H at 1.
Guard: H is clamped to [1e-12, 1e30] after each update, so it stays positive and finite even if a noisy ΔL
spikes; the bounds never bind on healthy runs (the mean-field fixed point is (1 + d/2)·diag(A)).

HiZOO-L (**zoft's own design**, not a reproduction of the paper's HiZOO-L) replaces H of each m×n matrix
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

from zoft.algos.base import Estimate, ZOOptimizer
from zoft.algos.options import Option
from zoft.errors import ConfigError

_H_MIN, _H_MAX = 1e-12, 1e30
_RELATIVE_FLOOR = 1e-2  # centred estimator: H ≥ 1% of its mean
_BLOCK = 4096           # --hessian-block's default

OPTIONS = (
    Option("hessian_smooth", float, 1e-6, "α, the EMA coefficient of the diagonal Hessian H.", low=0, high=1),
    Option("hessian_schedule", str, None, "α by step, piecewise constant, e.g. '0:1e-4,2000:1e-6' (overrides "
           "--hessian-smooth)."),
    Option("hessian_estimator", str, "code", "The curvature sample: code (the released code's c·H·z²), paper "
           "(|ΔL/2ε²·H·(z²−1)|) or centred (zoft's: (c − c̄)·H·(z²−1), a signed EMA; probes scaled so that "
           "mean(1/H) = 1).", choices=("code", "paper", "centred")),
    Option("hessian_granularity", str, "weight", "How many weights share one H: weight (HiZOO), tensor, or block "
           "(--hessian-block consecutive weights of a tensor); zoft's, for research.",
           choices=("weight", "tensor", "block")),
    Option("hessian_block", int, _BLOCK, "Weights per H with --hessian-granularity block.", low=1),
    Option("hessian_warmup", int, 0, "Steps that estimate H under plain MeZO probes and steps before the "
           "preconditioning starts (zoft's).", low=0),
    Option("allow_degenerate", bool, False, "Permit α = 0 (H stays 1: MeZO with a wasted forward).",
           trajectory=False),
)


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
                raise ConfigError(f"--hessian-schedule: {part!r} is not STEP:ALPHA (e.g. '0:1e-6,9800:1e-8')") \
                    from None
    else:
        pairs = [(int(s), float(a)) for s, a in spec]
    pairs.sort()
    if pairs[0][0] != 0:
        raise ConfigError("--hessian-schedule must start at step 0 (e.g. '0:1e-6,9800:1e-8')")
    if any(not 0 <= a <= 1 for _, a in pairs):
        raise ConfigError("--hessian-schedule: every α must lie in [0, 1]")
    return pairs


class HiZOO(ZOOptimizer):
    """Diagonal-Hessian-informed ZO-SGD: 3 forwards, 3 passes, one fp32 curvature number per weight.

    Options:
        hessian_smooth: α, the EMA coefficient of H. 0 makes HiZOO MeZO with an extra forward and is refused
            unless `allow_degenerate=True`.
        hessian_schedule: optional step-indexed piecewise-constant α, e.g. "0:1e-4,2000:1e-6"; overrides α.
        hessian_estimator: "code" (released code: c·H·z², default), "paper" (|ΔL/(2ε²)·H·(z² − 1)|) or "centred"
            (zoft's: the signed sample (c − c̄)·P·(z² − 1), P the probe's H, with probes along z/√(H/h̄)).
        hessian_granularity: "weight" (default), "tensor" or "block": one H per weight, per tensor or per
            `hessian_block` consecutive weights of a tensor (zoft's).
        hessian_warmup: steps of plain MeZO probes and steps that only estimate H (zoft's).
    """

    summary = ("curvature-scaled probes (diagonal Hessian EMA): 3 forwards/step, +1 fp32 per weight; "
               "for ill-conditioned problems when memory for H is free")
    paper = "Zhao et al. 2024, arXiv 2402.15173"
    state_desc = "d fp32 (H per weight)"
    options = OPTIONS
    probes = (0.0, 1.0, -2.0)  # L0 at θ, then L+ and L− along z/√H
    forwards_per_step = 3
    estimate_what = "projected gradient or curvature"
    scratch_slots = 2  # √H (or the rebuilt factored H) and the curvature sample

    @classmethod
    def check_options(cls, options: dict) -> None:
        alphas = [a for _, a in parse_schedule(options["hessian_schedule"])] or [options["hessian_smooth"]]
        if max(alphas) == 0 and not options["allow_degenerate"]:
            raise ConfigError("--hessian-smooth 0 keeps H at 1, i.e. MeZO with a wasted forward; use a positive "
                              "value (default 1e-6) or add --allow-degenerate")
        if "hessian_block" in options and options["hessian_granularity"] != "block" and \
                options["hessian_block"] != _BLOCK:   # (HiZOO-L takes neither option)
            raise ConfigError("--hessian-block sets the block of --hessian-granularity block; add that or drop "
                              "--hessian-block")

    @classmethod
    def offload_refusal(cls, options: dict) -> str | None:
        if options.get("hessian_estimator") == "centred":
            return ("--offload cpu with --hessian-estimator centred: its probe scale h̄ is a sum over every tensor "
                    "after the last update, which a streamed step does not have; use code or paper")
        return None

    def init_state(self) -> None:
        self.alpha = self.settings["hessian_smooth"]
        self.schedule = parse_schedule(self.settings["hessian_schedule"])
        self.estimator = self.settings["hessian_estimator"]
        self.granularity = self.settings.get("hessian_granularity", "weight")
        self.block = self.settings.get("hessian_block", 1)
        self.warmup = self.settings.get("hessian_warmup", 0)
        #: the centred estimator's running mean c̄ of c = ΔL/(2ε²) and its sample count; the probe scale h̄ by step
        self.baseline, self.samples = 0.0, 0
        self._scale: tuple[int, float, float] = (-1, 1.0, 0.0)
        for i, p in enumerate(self.tensors):
            self._init_h(i, p)

    def _extra_state(self) -> dict:
        return {"baseline": self.baseline, "samples": self.samples} if self.estimator == "centred" else {}

    def _load_extra_state(self, extra: dict) -> None:
        self.baseline, self.samples = float(extra.get("baseline", 0.0)), int(extra.get("samples", 0))
        self._scale = (-1, 1.0, 0.0)   # H was replaced: h̄ is recomputed at the next step

    # -- curvature state (HiZOO-L overrides these five) ------------------------------------------------
    def _block_size(self, p: torch.Tensor) -> int:
        """Weights sharing one H in tensor p."""
        if self.granularity == "weight":
            return 1
        return p.numel() if self.granularity == "tensor" else min(self.block, p.numel())

    def _init_h(self, index: int, p: torch.Tensor) -> None:
        size = self._block_size(p)
        shape = p.shape if size == 1 else (-(-p.numel() // size),)
        self.state[p]["hessian"] = torch.ones(shape, dtype=torch.float32, device=p.device)

    def _sqrt_h(self, index: int, slot: int) -> torch.Tensor:
        """√H of tensor `index` (over the probe scale h̄ of the centred estimator) written into scratch `slot`."""
        out = self.engine.scratch(index, slot)
        p = self.tensors[index]
        h = self.state[p]["hessian"]
        scale = self._scale[1]
        if self._block_size(p) == 1:
            torch.sqrt(h, out=out)
            return out if scale == 1.0 else out.mul_(scale ** -0.5)
        return self._expand(h.div(scale).sqrt_(), out, self._block_size(p))

    @staticmethod
    def _expand(values: torch.Tensor, out: torch.Tensor, size: int) -> torch.Tensor:
        """out (dense, a tensor's shape) ← each block's value repeated over its `size` weights."""
        flat, full = out.view(-1), out.numel() // size
        flat[:full * size].view(full, size).copy_(values[:full, None].expand(full, size))
        if full * size < flat.numel():
            flat[full * size:].copy_(values[-1].expand(flat.numel() - full * size))
        return out

    @staticmethod
    def _block_mean(w: torch.Tensor, size: int) -> torch.Tensor:
        """Each block's mean of w (flattened, `size` weights a block, the last one shorter)."""
        flat, full = w.view(-1), w.numel() // size
        means = flat[:full * size].view(full, size).mean(1)
        if full * size < flat.numel():
            means = torch.cat([means, flat[full * size:].mean().reshape(1)])
        return means

    def _update_h(self, index: int, z: torch.Tensor, s: float, alpha: float, preconditioned: bool = True) -> None:
        """H ← (1−α)·H + α·s·P⊙w in place: P the probe's H (H/h̄ for centred; 1 in the warm-up, whose probes are
        MeZO's), w = z², |z² − 1| or z² − 1 (per weight, or its mean over a block), then clamped positive."""
        p = self.tensors[index]
        h = self.state[p]["hessian"]
        w = self._sample_weight(index, z)
        if self._block_size(p) > 1:
            w = self._block_mean(w, self._block_size(p))
        if preconditioned:
            w.mul_(alpha * s / self._scale[1]).add_(1.0 - alpha)    # H·((1−α) + α·s·w/h̄): P = H/h̄
            h.mul_(w)
        else:
            h.mul_(1.0 - alpha).add_(w, alpha=alpha * s)
        # the centred sample is signed: a block can be driven towards 0, and a tiny H would magnify its probe
        # without bound (and pull h̄ down with it); H ≥ 1% of H's mean caps that at 10× a MeZO probe
        h.clamp_(max(_H_MIN, _RELATIVE_FLOOR * self._scale[2]), _H_MAX)

    def _log_h(self, index: int) -> torch.Tensor:
        return self.state[self.tensors[index]]["hessian"].log()

    def _dense_hessians(self) -> list[torch.Tensor] | None:
        """H per tensor as dense fp32 tensors, which the fused kernel can read; None where H is factored, shared
        by blocks or scaled by h̄."""
        if self.granularity != "weight" or self.estimator == "centred":
            return None
        return [self.state[p]["hessian"] for p in self.tensors]

    # ---------------------------------------------------------------------------------------------------
    def _sample_weight(self, index: int, z: torch.Tensor) -> torch.Tensor:
        """w = z² (code), |z² − 1| (paper) or z² − 1 (centred) in scratch slot 1."""
        w = torch.mul(z, z, out=self.engine.scratch(index, 1))
        if self.estimator == "paper":
            w.sub_(1.0).abs_()
        elif self.estimator == "centred":
            w.sub_(1.0)
        return w

    def preconditioned(self, t: int) -> bool:
        """Whether step t probes along z/√H (False during the warm-up, which probes and steps along z)."""
        return t >= self.warmup

    def _set_scale(self, t: int) -> None:
        """The centred estimator's probe scale for step t: h̄ = d / Σ 1/H (H's harmonic mean over all weights), so
        that u = z/√(H/h̄) has MeZO's expected length and ε and lr keep MeZO's meaning, and H's mean (its floor's
        reference). Once per step, from H before the step's update; (1, 0) for the published rules."""
        if self.estimator != "centred" or self._scale[0] == t:
            return
        inv, total, n = 0.0, 0.0, 0
        for p in self.tensors:
            h, size = self.state[p]["hessian"], self._block_size(p)
            inv += float(torch.sum(h.reciprocal(), dtype=torch.float64)) * size
            total += float(torch.sum(h, dtype=torch.float64)) * size
            if size > 1:   # the last block is short by h.numel()·size − p.numel() weights
                short = h.numel() * size - p.numel()
                inv, total = inv - short / float(h[-1]), total - short * float(h[-1])
            n += p.numel()
        self._scale = (t, n / inv, total / n)

    def alpha_at(self, t: int) -> float:
        """α at step index t: the schedule's last entry at or before t, else the constant."""
        alpha = self.alpha
        for start, value in self.schedule:
            if start <= t:
                alpha = value
        return alpha

    def current_alpha(self) -> float:
        """α of the step about to be taken."""
        return self.alpha_at(self.t)

    @torch.no_grad()
    def perturb_tensor(self, index: int, seed: int, scale: float, direction: int = 0) -> None:
        """θ_i += scale·z_i/√H_i: tensor i's share of `perturb`, the same arithmetic (the fused kernel where the
        full pass would use it)."""
        if not self.preconditioned(self.t):
            self.engine.axpy_(index, seed, scale, direction)
            return
        self._set_scale(self.t)
        hessians = self._dense_hessians() if self.engine.kind == "philox" else None
        if hessians is not None and self.engine.fused_all():
            self.engine.axpy_one_(index, seed, scale, probe=direction, hessian=hessians[index])
            return
        self.ops.addcdiv_(self.tensors[index], self.engine.noise(index, seed, direction), self._sqrt_h(index, 0),
                          scale)

    @torch.no_grad()
    def perturb(self, seed: int, scale: float, direction: int = 0) -> None:
        """θ += scale·z/√H (one pass; with the philox kernel, H is read in the same fused pass)."""
        if not self.preconditioned(self.t):
            self.engine.add_(seed, scale, direction)
            return
        self._set_scale(self.t)
        hessians = self._dense_hessians()
        if hessians is not None and self.engine.fused_all():
            self.engine.axpy_all_(seed, [scale] * len(self.tensors), probe=direction, hessians=hessians)
            return
        for i, p, z in self.engine.sweep(seed, direction):
            self.ops.addcdiv_(p, z, self._sqrt_h(i, 0), scale)

    def estimate(self, losses: list[float]) -> Estimate:
        """g = (L+ − L−)/(2ε) and the curvature sample c = |L+ + L− − 2·L0|/(2ε²) (centred: signed, minus its
        running mean c̄ before this step); reports L0 (no logging forward)."""
        loss0, loss_plus, loss_minus = losses
        eps = self.eps
        g = (loss_plus - loss_minus) / (2.0 * eps)
        c = (loss_plus + loss_minus - 2.0 * loss0) / (2.0 * eps * eps)
        info = {"loss_plus": loss_plus, "loss_minus": loss_minus, "loss0": loss0,
                "hessian_smooth": self.alpha_at(self.t)}
        if self.estimator != "centred":
            return Estimate({"projected_grad": g, "curvature": abs(c)}, loss0, info)
        # c̄ is from earlier steps, independent of this z, so the sample stays unbiased; the first step has no c̄
        # yet and only sets it (c itself, ≈ ½·tr of the preconditioned Hessian, would swamp H's first update)
        centred = c - self.baseline if self.samples else 0.0
        # c̄: the running mean of c over the first 100 samples, then an EMA with a 100-step memory
        baseline = self.baseline + (c - self.baseline) * max(1.0 / (self.samples + 1), 0.01)
        return Estimate({"projected_grad": g, "curvature": centred, "baseline": baseline,
                         "baseline_n": self.samples + 1}, loss0, info)

    def update_tensor(self, index: int, seed: int, record: dict, t: int) -> None:
        """P3: restore with the probe's H_old, update H with the curvature sample, step along z/√H_new."""
        if "baseline" in record:   # centred: c̄ moves with the step (here, so that a replayed step moves it too)
            self.baseline, self.samples = record["baseline"], int(record["baseline_n"])
        p, group, z = self.tensors[index], self.hyper(index), self.engine.noise(index, seed)
        self._set_scale(t)
        pre = self.preconditioned(t)
        self._along(index, z, group["eps"], pre)                           # θ_orig, with the probe's H_old
        self._update_h(index, z, record["curvature"], self.alpha_at(t), preconditioned=pre)
        self.ops.scale_(p, self.decay_factor(index))
        self._along(index, z, -group["lr"] * record["projected_grad"], pre)   # along z/√H_new

    def _along(self, index: int, z: torch.Tensor, value: float, preconditioned: bool) -> None:
        """θ_i += value·z/√H_i, or value·z in the warm-up."""
        if preconditioned:
            self.ops.addcdiv_(self.tensors[index], z, self._sqrt_h(index, 0), value)
        else:
            self.ops.add_(self.tensors[index], z, value)

    def diagnostics(self) -> dict[str, float]:
        """Mean, spread and range of log H over all weights: H departing from 0 (= log 1) shows it learning."""
        n, s, s2, lo, hi = 0, 0.0, 0.0, math.inf, -math.inf
        with torch.no_grad():
            for i in range(len(self.tensors)):
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
    options = tuple(o for o in OPTIONS if o.name not in ("hessian_granularity", "hessian_block", "hessian_warmup"))

    @classmethod
    def check_options(cls, options: dict) -> None:
        super().check_options(options)
        if options["hessian_estimator"] == "centred":
            raise ConfigError("--hessian-estimator centred applies to --algo hizoo (HiZOO-L factors the code or "
                              "paper sample); use code or paper")

    def _init_h(self, index: int, p: torch.Tensor) -> None:
        if p.ndim != 2:
            return super()._init_h(index, p)
        m, n = p.shape
        # R = n·1, C = m·1 so that H = R·Cᵀ/ΣR = n·m/(m·n) ≡ 1 at init
        self.state[p]["hessian_row"] = torch.full((m,), float(n), dtype=torch.float32, device=p.device)
        self.state[p]["hessian_col"] = torch.full((n,), float(m), dtype=torch.float32, device=p.device)

    def _factors(self, index: int):
        st = self.state[self.tensors[index]]
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

    def _update_h(self, index: int, z: torch.Tensor, c: float, alpha: float, preconditioned: bool = True) -> None:
        factors = self._factors(index)   # (HiZOO-L has no warm-up: its probes are always preconditioned)
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
