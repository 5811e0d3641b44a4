"""SubZero: random-subspace ZO with orthonormal per-layer bases and a small Gaussian core (Yu et al., arXiv
2410.08989; reference code zimingyy/SubZero).

Each m×n weight gets U ∈ R^{m×r} and V ∈ R^{n×r} with orthonormal columns (QR of Gaussian matrices), refreshed
every T0 steps; each step draws only an r×r core Z0 ~ N(0, 1):

    Z_t = (√(m·n) / r) · U·Z0·Vᵀ          (E‖Z‖_F² = m·n, MeZO's energy, so MeZO's ε and lr carry over)
    κ = (L(θ + εZ_t) − L(θ − εZ_t)) / (2ε) ;   W ← W − η(κ·Z_t + λW)

Tensors that are not 2-D use MeZO's dense z. A pass is one `addmm_` per matrix with the m×r product U·Z0 as the
only temporary; 2 forwards, 3 passes. U and V of period k = ⌊t/T0⌋ come from mix(run seed, k, i, "U"/"V") and live
in the optimizer state (U, V and their period), so checkpoints carry them and a resume does not depend on the QR
routine of the machine it runs on; a replay regenerates them.
"""

from __future__ import annotations

import math

import torch

from zoft.algos.base import state_dtype
from zoft.algos.lozo import LOZO
from zoft.algos.options import Option
from zoft.perturb import mix, tag_id, tensor_seed


class SubZero(LOZO):
    """Random-subspace ZO-SGD: U·Z0·Vᵀ perturbations, orthonormal U, V refreshed every `subzero_interval` steps."""

    summary = ("random-subspace ZO (SubZero): orthonormal per-layer bases and an r×r core, 2 forwards/step, "
               "MeZO's energy; +(m+n)·r per matrix")
    paper = "Yu et al. 2024, arXiv 2410.08989"
    state_desc = "(m+n)·r fp32 orthonormal bases per matrix (checkpointed)"
    options = (
        Option("subzero_rank", int, 8, "Rank r of each matrix's subspace (capped at min(m, n); the reference uses 8, "
               "its prompt-tuning example 24).", low=1),
        Option("subzero_interval", int, 2000, "T0: steps between fresh bases U, V (the reference uses 2000, its "
               "example 1000).", low=1),
    )
    default_lr = 1e-6  # Z has MeZO's energy: MeZO's grids apply

    def init_state(self) -> None:
        self.ranks = [max(1, min(self.settings["subzero_rank"], *p.shape)) if p.ndim == 2 else 0
                      for p in self.tensors]
        self.interval = self.settings["subzero_interval"]
        for p, r in zip(self.tensors, self.ranks):
            if r:
                dtype = state_dtype(p)
                self.state[p]["U"] = torch.zeros((p.shape[0], r), dtype=dtype, device=p.device)
                self.state[p]["V"] = torch.zeros((p.shape[1], r), dtype=dtype, device=p.device)
                self.state[p]["period"] = torch.full((), -1, dtype=torch.int64, device=p.device)

    def bases(self, index: int, period: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, V) of matrix `index` for `period`, orthonormalised by QR; refreshed in place when the period moves on
        (in place: an offloaded block holds these very tensors)."""
        p = self.tensors[index]
        state = self.state[p]
        if int(state["period"]) != period:
            for key, rows in (("U", p.shape[0]), ("V", p.shape[1])):
                g = self.engine.draw((rows, self.ranks[index]), mix(self.seed, period, index, tag_id(key)), p.device)
                q, r = torch.linalg.qr(g.to(state[key].dtype))
                state[key].copy_(q * torch.sign(torch.diagonal(r)))  # signs fixed: a unique factorisation
            state["period"].fill_(period)
        return state["U"], state["V"]

    def core(self, index: int, seed: int, direction: int = 0) -> torch.Tensor:
        """Z0 of matrix `index` at the step of `seed` (r×r), regenerated in every pass."""
        p, r = self.tensors[index], self.ranks[index]
        return self.engine.draw((r, r), tensor_seed(seed, index, direction, "core"), p.device).to(state_dtype(p))

    def lowrank(self, index: int, seed: int, t: int, direction: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R) = ((√(mn)/r)·U·Z0, V), so Z_t = L·Rᵀ."""
        p = self.tensors[index]
        u, v = self.bases(index, t // self.interval)
        scale = math.sqrt(p.shape[0] * p.shape[1]) / self.ranks[index]
        return (u @ self.core(index, seed, direction)) * scale, v

    def direction(self, index: int, t: int) -> torch.Tensor:
        from zoft.perturb import step_seed

        left, right = self.lowrank(index, step_seed(self.seed, t), t)
        return left @ right.t()

    def factor_bytes(self) -> int:
        return 0  # the bases are in self.state, which state_bytes counts

    def state_breakdown(self) -> dict[str, int]:
        return {"bases": self.state_bytes()} if self.state_bytes() else {}
