"""FZOO: N one-sided Rademacher probes per step, the step normalised by the spread of their losses (arXiv
2506.09034; reference code DKmiyan/FZOO, `trainer.py` `zo_step`/`zo_update`).

    L_j = L(θ + ε·u_j), u_j ∈ {−1, +1}^d (j = 1..N),   L0 = L(θ),   σ = std(L_1..L_N)  (population)
    g_j = (L_j − L0) / (N·σ)
    θ ← θ − η·(Σ_j g_j·u_j + λθ)

N + 1 forwards, no state. ε enters only through the probes: the division by σ makes the step invariant to the
scale of the loss, and its size is set by η per weight (every u_j entry is ±1). The probes run one after another
(the reference also has a batched variant that evaluates them in one forward of a widened model); each probe is
restored before the next, as in the reference, and L0 is evaluated last. u_j is the sign of the engine's seeded
Gaussian z for probe j, so it is Rademacher, regenerated from the step seed, and needs the z buffer. When all
probe losses are equal (σ = 0) the step is zero rather than the reference's division by zero.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from zoft.algos.base import Estimate, ZOOptimizer
from zoft.algos.options import Option


class FZOO(ZOOptimizer):
    """N Rademacher probes a step, normalised by the standard deviation of their losses (FZOO)."""

    summary = ("FZOO: N one-sided Rademacher probes, step normalised by the spread of their losses; N+1 "
               "forwards/step, no state")
    paper = "arXiv 2506.09034 (ICLR 2026)"
    options = (Option("fzoo_probes", int, 8, "N: one-sided probes per step (N + 1 forwards; the reference uses 8).",
                      low=2),)
    default_lr = 5e-5   # the reference's OPT-13B setting (its MeZO baseline: 1e-6): the step is ≈ η per weight
    default_eps = 1e-4
    lr_grid = "own"
    probes = ()
    forwards_per_step = 9  # with the default N = 8; an instance holds its own N + 1

    def init_state(self) -> None:
        self.n = self.settings["fzoo_probes"]
        self.forwards_per_step = self.n + 1

    def probe_moves(self) -> list[list[tuple[int, float]]]:
        """θ + εu_1, then θ + εu_2 (restoring u_1 first), ..., then θ itself for L0."""
        eps = self.eps
        moves = [[(0, eps)]] + [[(j - 1, -eps), (j, eps)] for j in range(1, self.n)]
        return moves + [[(self.n - 1, -eps)]]

    @torch.no_grad()
    def perturb_tensor(self, index: int, seed: int, scale: float, direction: int = 0) -> None:
        """θ_i ← θ_i + scale·u_j,i with u_j = sign(z_j) (Rademacher)."""
        z = self.engine.noise(index, seed, probe=direction)
        self.ops.add_(self.tensors[index], z.sign_(), scale)

    def estimate(self, losses: list[float]) -> Estimate:
        probe_losses, loss0 = losses[:-1], losses[-1]
        mean = sum(probe_losses) / self.n
        std = math.sqrt(sum((x - mean) ** 2 for x in probe_losses) / self.n)
        g = [(x - loss0) / (self.n * std) if std > 0 else 0.0 for x in probe_losses]
        return Estimate({f"g{j}": v for j, v in enumerate(g)}, loss0, {"loss_std": std, "loss_mean": mean})

    def update_tensor(self, index: int, seed: int, record: dict[str, Any], t: int) -> None:
        p, c, lr = self.tensors[index], self.decay_factor(index), self.hyper(index)["lr"]
        self.ops.scale_(p, c)
        for j in range(self.n):
            g = record[f"g{j}"]
            if g:
                self.ops.add_(p, self.engine.noise(index, seed, probe=j).sign_(), -lr * g)
