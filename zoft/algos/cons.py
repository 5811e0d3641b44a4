"""ZO-SGD-Cons: MeZO's estimate, then a conservative step that is kept only if it lowers the minibatch loss.

ZO-Bench (Zhang et al., arXiv 2402.11592), trainer `zo_conserv_step`:

    L0 = L(θ),  L± = L(θ ± εz),  g = (L+ − L−)/(2ε)
    candidates θ_a = θ − η·g·z and θ_b = θ + η·g·z, evaluated on the same minibatch: La, Lb
    keep θ_b if La > L0 and L0 ≥ Lb, θ if La > L0 and L0 < Lb, θ_a if La ≤ L0 and La < Lb, else θ_b

(the reference's comparisons, ties included). 5 forwards and 5 passes: P1 +εz, P2 −2εz, P3 to θ_a (+(ε − ηg)z),
P4 to θ_b (+2ηg·z), P5 to the kept point, with decoupled weight decay c = 1 − ηλ applied there: θ ← c·θ + target·z.
No state. The reported loss is the kept point's (the reference returns La whichever point it keeps). A trial loss
that is not finite is never kept. The choice (−1: θ_a, 0: θ, +1: θ_b) joins the trajectory, so replay is exact.
Trial points need a second round of forwards after the probes, which CPU offload's single visit per block cannot
give: `offloadable` is False.
"""

from __future__ import annotations

import math

from zoft.algos.base import Estimate, ZOOptimizer


class ZOSGDCons(ZOOptimizer):
    """Conservative ZO-SGD: the MeZO step θ − η·g·z, its opposite θ + η·g·z or no step, whichever has the lowest
    minibatch loss."""

    summary = "conservative ZO-SGD (ZO-Bench): 5 forwards/step, keeps the best of θ, θ∓ηgz: never a worse batch loss"
    paper = "Zhang et al. 2024 (ZO-Bench), arXiv 2402.11592"
    probes = (0.0, 1.0, -2.0)
    forwards_per_step = 5
    offloadable = False
    dense_z = False  # every pass is a fused axpy

    def _step_size(self, record: dict) -> float:
        return self.param_groups[0]["lr"] * record["projected_grad"]

    def estimate(self, losses: list[float]) -> Estimate:
        loss0, loss_plus, loss_minus = losses
        g = (loss_plus - loss_minus) / (2.0 * self.eps)
        return Estimate({"projected_grad": g}, loss0,
                        {"loss_0": loss0, "loss_plus": loss_plus, "loss_minus": loss_minus})

    def trial_moves(self, record: dict) -> list[list[tuple[int, float]]]:
        step = self._step_size(record)  # from θ − εz: to θ_a = θ − ηgz, then to θ_b = θ + ηgz
        return [[(0, self.eps - step)], [(0, 2.0 * step)]]

    def choose(self, estimate: Estimate, trial_losses: list[float]) -> Estimate:
        loss0 = estimate.log["loss_0"]
        loss_a, loss_b = (x if math.isfinite(x) else math.inf for x in trial_losses)
        if loss_a > loss0:
            choice, loss = (0, loss0) if loss0 < loss_b else (1, loss_b)
        else:
            choice, loss = (-1, loss_a) if loss_a < loss_b else (1, loss_b)
        return Estimate({**estimate.record, "choice": choice}, loss,
                        {**estimate.log, "loss_a": trial_losses[0], "loss_b": trial_losses[1]})

    def _coef(self, index: int, record: dict) -> tuple[float, float]:
        """(decay c, coefficient of z) taking θ_b = θ + ηgz to c·θ + target·z."""
        step = self._step_size(record)
        c = self.decay_factor(index)
        return c, record["choice"] * step - c * step

    def update_all(self, seed: int, record: dict, t: int) -> None:
        pairs = [self._coef(i, record) for i in range(len(self.tensors))]
        self.engine.axpy_all_(seed, [a for _, a in pairs], [c for c, _ in pairs])

    def update_tensor(self, index: int, seed: int, record: dict, t: int) -> None:
        c, a = self._coef(index, record)
        self.engine.axpy_one_(index, seed, a, c)
