"""MeZO (ZO-SGD): Malladi et al., *Fine-Tuning Language Models with Just Forward Passes*, arXiv 2305.17333.

Update (two-sided SPSA, ALGORITHMS.md §1.1, §2.1), with z ~ N(0, I) regenerated from the step seed:

    g = (L(θ + εz) − L(θ − εz)) / (2ε)
    θ ← θ − η(g·z + λθ)                  (λ only on 2-D weights that are neither bias nor norm)

Cost per step: 2 forwards and 3 passes over the parameters. The published code makes 4 passes (+εz, −2εz,
+εz restore, −ηgz update); zoft fuses restore and update (§1.3):

    P1  θ ← θ + εz            → L+
    P2  θ ← θ − 2εz           → L−
    P3  θ ← c·θ + (c·ε − η·g)·z,   c = 1 − ηλ

P3 equals restore-then-update exactly in real arithmetic and rounds once instead of twice.
Extra state: none. The reported loss is (L+ + L−)/2, which costs no forward (§1.7).
"""

from __future__ import annotations

from zoft.algos.base import Closure, ZOOptimizer, check_finite


class MeZO(ZOOptimizer):
    """Memory-efficient ZO-SGD: 2 forwards, 3 in-place passes, no optimizer state."""

    summary = "ZO-SGD baseline: 2 forwards/step, no optimizer state; the memory floor and the reference"
    paper = "Malladi et al. 2023, arXiv 2305.17333"
    forwards_per_step = 2

    def _zo_step(self, closure: Closure, seed: int) -> float:
        eps = self.param_groups[0]["eps"]
        self.engine.add_(seed, eps)                      # P1: θ + εz
        loss_plus = self.evaluate(closure)
        self.engine.add_(seed, -2.0 * eps)               # P2: θ − εz
        loss_minus = self.evaluate(closure)
        check_finite(self, (loss_plus, loss_minus), restore=lambda: self.engine.add_(seed, eps))
        g = (loss_plus - loss_minus) / (2.0 * eps)       # Python float: fp64 arithmetic on the two fp32 losses
        for i, p, z in self.engine.sweep(seed):          # P3: restore fused with the update
            group = self.hyper(i)
            c = self.decay_factor(i)
            if c != 1.0:
                p.mul_(c)
            p.add_(z, alpha=c * group["eps"] - group["lr"] * g)
        self.last = {"projected_grad": g, "loss_plus": loss_plus, "loss_minus": loss_minus}
        return 0.5 * (loss_plus + loss_minus)
