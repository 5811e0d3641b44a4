"""QZO: zeroth-order fine-tuning of a quantized model through its quantization scales (Shang et al., *Fine-tuning
Quantized Neural Networks with Zeroth-order Optimization*, arXiv 2505.13430; reference code maifoundations/QZO).

A 4-bit weight is W = Δ ⊙ W̄: integer codes W̄ (frozen) times a continuous scale Δ per block. QZO probes and
updates Δ only:

    d  = (L((Δ + εz) ⊙ W̄) − L((Δ − εz) ⊙ W̄)) / (2ε)
    d' = clip(d, −C, C)                       (directional-derivative clipping)
    Δ  ← max(Δ − η·(d'·z + λΔ), 0)            (a scale stays non-negative: it is an absolute maximum)

zoft trains Δ as `--mode scales` (`zoft.modes.ScalesModel`): the fp32 absmax of every bitsandbytes NF4 block of 64
weights, perturbed in place, so the quantized model itself is what the forwards see and a full model is tuned with
the memory of its 4-bit inference plus one fp32 number per 64 weights. The step is MeZO's (2 forwards, the fused
P3), followed by the projection on the scales. Clipping bounds the step when a probe lands where the loss jumps,
which a perturbed scale does more easily than a perturbed weight (it moves 64 weights at once).

The reference repository held no code when this was written; the rule follows the paper. The clipping bound C has
no published default that zoft could check: `qzo_clip` defaults to 100, above the |d| of a settled run (a few to a
few tens on SmolLM2-135M) so that it acts only on outliers.
"""

from __future__ import annotations

from typing import Any

from zoft.algos.base import Estimate
from zoft.algos.mezo import MeZO
from zoft.algos.options import Option


class QZO(MeZO):
    """MeZO on the block scales of a 4-bit base, with the projected gradient clipped to [−C, C] and scales kept ≥ 0."""

    summary = ("QZO: ZO on the block scales of an NF4 base (--mode scales --load-in-4bit), clipped directional "
               "derivative; 2 forwards/step, full-model tuning at 4-bit memory")
    paper = "Shang et al. 2025, arXiv 2505.13430"
    options = (Option("qzo_clip", float, 100.0, "C: the projected gradient d is clipped to [−C, C] before the step.",
                      low=0, low_open=True),)
    modes = ("scales",)
    offloadable = False  # the scales live in bitsandbytes' quantization state, which offloading does not stream

    def estimate(self, losses: list[float]) -> Estimate:
        est = super().estimate(losses)
        d, c = est.record["projected_grad"], self.settings["qzo_clip"]
        clipped = min(max(d, -c), c)
        return Estimate({"projected_grad": clipped}, est.loss, {**est.log, "raw_projected_grad": d})

    def update_all(self, seed: int, record: dict[str, Any], t: int) -> None:
        super().update_all(seed, record, t)
        for p in self.tensors:
            p.clamp_(min=0.0)

    def update_tensor(self, index: int, seed: int, record: dict[str, Any], t: int) -> None:
        super().update_tensor(index, seed, record, t)
        self.tensors[index].clamp_(min=0.0)
