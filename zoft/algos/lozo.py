"""LOZO and LOZO-M: low-rank ZO with a lazily refreshed subspace (Chen et al., arXiv 2410.07698, ICLR 2025;
reference code optsuite/LOZO).

Each m×n weight is perturbed along a rank-r product Z_t = U_t·Vᵀ: U_t ∈ R^{m×r} is drawn fresh every step, V ∈
R^{n×r} only every ν steps (both N(0, 1), no normalisation, so E‖Z‖_F² = r·m·n). Tensors that are not 2-D use
MeZO's dense z.

    κ = (L(θ + εZ_t) − L(θ − εZ_t)) / (2ε)
    LOZO     W ← W − η(κ·U_t·Vᵀ + λW)
    LOZO-M   N ← β·N + (1 − β)·κ·U_t  (N_0 = κ_0·U_0)    (N ∈ R^{m×r}: momentum in the factor space)
             W ← W − η(N·Vᵀ + λW)
             when V changes (V_old → V_new): N ← β·N·(V_oldᵀV_new)/n + (1 − β)·κ·U_t

The rescaled product is the least-squares projection of N·V_oldᵀ onto the new row space (V_newᵀV_new ≈ n·I), so
most momentum is lost at a change, as in the paper. Within a period, W − W_start stays in the row space of V.

Seeds: U_t from the step seed (tag "U"), V of period k = ⌊t/ν⌋ from mix(run seed, k, i, "V"): separate streams.
The reference draws V and then U from one step seed on resample steps while its update draws U alone, so probe and
update disagree once every ν steps; separate streams cannot (tests check the probe/update identity on those
steps). V is cached per matrix (n·r fp32) and never checkpointed: it is regenerated from its seed.

P3 is one `addmm_` per matrix: W ← c·W + (c·ε − η·κ)·U_t·Vᵀ (LOZO) or c·W + (c·ε·U_t − η·N)·Vᵀ (LOZO-M); for
bf16/fp16 weights the product is built in fp32 row blocks of at most 16 MiB. Cost: 2 forwards, 3 passes.
"""

from __future__ import annotations

import torch

from zoft.algos.base import ZOOptimizer, state_dtype
from zoft.algos.lowrank import CHUNK_ELEMENTS, add_product, block_rows
from zoft.algos.mezo import MOMENTUM
from zoft.algos.options import Option
from zoft.perturb import MIXED_CHUNK, mix, step_seed, tag_id, tensor_seed

OPTIONS = (
    Option("lozo_rank", int, 2, "Rank r of each matrix's perturbation U_t·Vᵀ (capped at min(m, n); the paper uses "
           "1-2 for OPT, 4 for RoBERTa).", low=1),
    Option("lozo_interval", int, 50, "ν: steps between draws of V (U_t is new every step; the paper uses 50-100).",
           low=1),
)


class LOZO(ZOOptimizer):
    """Low-rank ZO-SGD: U_t·Vᵀ perturbations with V kept for `lozo_interval` steps, no optimizer state beyond the
    cached V (n·r per matrix, regenerated on resume)."""

    summary = ("low-rank ZO (LOZO): U_t·Vᵀ probes, V kept for ν steps; 2 forwards/step, no m×n noise, MeZO's "
               "memory")
    paper = "Chen et al. 2025, arXiv 2410.07698"
    state_desc = "n·r cached V per matrix (regenerated, not checkpointed)"
    options = OPTIONS
    default_lr = 1e-7  # Z has r× MeZO's energy; the reference script runs OPT-13B at 1e-7 (grid {1e-6, 1e-7})

    def init_state(self) -> None:
        self.ranks = [max(1, min(self.settings["lozo_rank"], *p.shape)) if p.ndim == 2 else 0 for p in self.tensors]
        self.interval = self.settings["lozo_interval"]
        self._v: dict[int, tuple[int, torch.Tensor]] = {}  # matrix → (period, V)
        self._init_moments()

    def _init_moments(self) -> None:
        """Momentum (none for LOZO)."""

    # -- the direction --------------------------------------------------------------------------------------
    def _step_of(self, seed: int) -> int:
        """The step index a pass belongs to, for its period's V: the current step, or the one before (an offloaded
        run restores a skipped step at the next visit). A pass with any other seed (a direct `perturb` call, a
        benchmark) uses the current step's period."""
        if self.t > 0 and step_seed(self.seed, self.t - 1) == seed:
            return self.t - 1
        return self.t

    def v_factor(self, index: int, period: int) -> torch.Tensor:
        """V of matrix `index` for period `period` (n×r, from mix(run seed, period, i, "V")), cached per matrix."""
        cached = self._v.get(index)
        if cached is None or cached[0] != period:
            p = self.tensors[index]
            v = self.engine.draw((p.shape[1], self.ranks[index]), mix(self.seed, period, index, tag_id("V")),
                                 p.device).to(state_dtype(p))
            cached = self._v[index] = (period, v)
        return cached[1]

    def u_factor(self, index: int, seed: int, direction: int = 0) -> torch.Tensor:
        """U_t of matrix `index` (m×r), regenerated from the step seed in every pass."""
        p = self.tensors[index]
        return self.engine.draw((p.shape[0], self.ranks[index]), tensor_seed(seed, index, direction, "U"),
                                p.device).to(state_dtype(p))

    def direction(self, index: int, t: int) -> torch.Tensor:
        """Z_t of matrix `index` as a dense m×n tensor (for tests; the passes never build it)."""
        return self.u_factor(index, step_seed(self.seed, t)) @ self.v_factor(index, t // self.interval).t()

    def add_product(self, index: int, left: torch.Tensor, right: torch.Tensor, beta: float = 1.0) -> None:
        """W ← β·W + left·rightᵀ in place (left m×r, right n×r), with no m×n temporary for fp32 weights."""
        add_product(self, index, left, right, beta)

    def lowrank(self, index: int, seed: int, t: int, direction: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R) with Z_t = L·Rᵀ for matrix `index` at step `t`: (U_t, V of t's period)."""
        return self.u_factor(index, seed, direction), self.v_factor(index, t // self.interval)

    @torch.no_grad()
    def perturb_tensor(self, index: int, seed: int, scale: float, direction: int = 0) -> None:
        """θ_i ← θ_i + scale·Z_t,i: L·Rᵀ for a matrix, dense z for another tensor."""
        if self.ranks[index]:
            left, right = self.lowrank(index, seed, self._step_of(seed), direction)
            self.add_product(index, left * scale, right)
        else:
            self.engine.axpy_(index, seed, scale, direction)

    # -- P3 ---------------------------------------------------------------------------------------------------
    def update_tensor(self, index: int, seed: int, record: dict, t: int) -> None:
        p, c, lr, g = self.tensors[index], self.decay_factor(index), self.hyper(index)["lr"], record["projected_grad"]
        if self.ranks[index]:  # W ← c·W + (c·ε − η·κ)·L·Rᵀ = c·W_orig − η·κ·Z_t
            left, right = self.lowrank(index, seed, t)
            self.add_product(index, left * (c * self.eps - lr * g), right, beta=c)
        else:
            self.ops.scale_(p, c)
            self.engine.axpy_(index, seed, c * self.eps - lr * g)

    # -- memory -----------------------------------------------------------------------------------------------
    def factor_bytes(self) -> int:
        return sum(4 * p.shape[1] * r * (2 if p.dtype == torch.float64 else 1)
                   for p, r in zip(self.tensors, self.ranks) if r)

    def state_bytes(self) -> int:
        return super().state_bytes() + self.factor_bytes()

    def state_breakdown(self) -> dict[str, int]:
        moments = super().state_bytes()
        return {"factors": self.factor_bytes(), **({"moments": moments} if moments else {})}

    def transient_bytes(self) -> int:
        """The z buffer of the non-matrix tensors, U_t of the tallest matrix (m×r), and for bf16/fp16 weights one
        fp32 row block (≤ 16 MiB) and the mixed-dtype chunk buffer."""
        dense_idx = [i for i, r in enumerate(self.ranks) if not r]
        matrices = [(p, r) for p, r in zip(self.tensors, self.ranks) if r]
        factor = max((p.shape[0] * r * 4 for p, r in matrices), default=0)
        blocks = 0
        if any(p.dtype not in (torch.float32, torch.float64) for p, _ in matrices):
            blocks = 4 * max(block_rows(p.shape[0], CHUNK_ELEMENTS, p.shape[1]) * p.shape[1]
                             for p, _ in matrices) + 4 * MIXED_CHUNK
        return (self.engine.pass_bytes(True, dense_idx) if dense_idx else 0) + 2 * factor + blocks


class LOZOM(LOZO):
    """LOZO with momentum in the m×r factor space (N), projected onto the new V at each change of V."""

    summary = "LOZO with momentum in factor space (LOZO-M): +m·r numbers per matrix; momentum near MeZO's memory"
    state_desc = "m·r fp32 momentum + n·r cached V per matrix (+ dense momentum for 1-D)"
    options = OPTIONS + (MOMENTUM,)

    def _init_moments(self) -> None:
        for i, p in enumerate(self.tensors):
            shape = (p.shape[0], self.ranks[i]) if self.ranks[i] else tuple(p.shape)
            self.state[p]["momentum_buffer"] = torch.zeros(shape, dtype=state_dtype(p), device=p.device)

    def update_tensor(self, index: int, seed: int, record: dict, t: int) -> None:
        p, group, c, g = self.tensors[index], self.hyper(index), self.decay_factor(index), record["projected_grad"]
        beta, lr, n_buf = group["momentum"], group["lr"], self.state[p]["momentum_buffer"]
        # as the reference code, the first step sets the momentum to its estimate (no (1 − β) damping at t = 0)
        keep, weight = (0.0, g) if t == 0 else (beta, (1.0 - beta) * g)
        if not self.ranks[index]:  # dense EMA momentum, MeZO's direction
            z = self.engine.noise(index, seed)
            self.ops.add_(p, z, self.eps)
            self.ops.scale_(p, c)
            n_buf.mul_(keep).add_(z, alpha=weight)
            self.ops.add_(p, n_buf, -lr)
            return
        period = t // self.interval
        v = self.v_factor(index, period)
        if t > 0 and t % self.interval == 0:  # a new V: carry N·V_oldᵀ over by least squares, ≈ N·(V_oldᵀV)/n
            v_old = self.v_factor(index, period - 1)
            n_buf.copy_(n_buf @ (v_old.t() @ v) / p.shape[1])
            v = self.v_factor(index, period)
        u = self.u_factor(index, seed)
        n_buf.mul_(keep).add_(u, alpha=weight)
        self.add_product(index, u * (c * self.eps) - n_buf * lr, v, beta=c)  # c·W_orig − η·N·Vᵀ, one addmm
