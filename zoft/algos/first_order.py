"""First-order AdamW fine-tuning (backprop): the reference that ZO is measured against, not a ZO method.

MeZO's tables put every ZO result beside "FT (Adam, 12× memory)": full fine-tuning with backpropagation.
`--algo fo-adam` runs that baseline through the same tasks, data order, checkpoints and evaluation as the ZO
algorithms, so a comparison changes the optimizer and nothing else. One forward and one backward per step; memory
adds what ZO avoids: the gradients (d), two fp32 moments (2d) and the activations kept for the backward pass
(`zoft estimate-memory` shows them in its first-order column). The update is `torch.optim.AdamW` itself, with
the same weight-decay exemptions as the ZO methods (no decay on 1-D, bias and norm tensors).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from zoft.algos.base import Closure, ZOOptimizer
from zoft.algos.mezo import ADAM_OPTIONS
from zoft.runner import NonFiniteLossError


class FirstOrderAdam(ZOOptimizer):
    """AdamW on backpropagated gradients, behind the ZO optimizer interface (`step(closure)` → loss).

    Options: momentum (β1), beta2 (β2), adam_eps (δ in m̂/(√v̂ + δ)). `eps` is unused: there is no perturbation.
    """

    summary = "first-order AdamW with backprop (MeZO's FT baseline): 1 forward + 1 backward, +3 fp32/weight"
    paper = "Loshchilov & Hutter 2019, arXiv 1711.05101 (the FT rows of MeZO)"
    state_desc = "2d fp32 (m, v) + d gradients + saved activations"
    options = ADAM_OPTIONS
    forwards_per_step = 1
    probes = ()
    first_order = True
    # its steps need gradients: a trajectory of scalars cannot rebuild them, losses cannot be all-reduced in
    # their place, and a block streamed through the GPU keeps no activations for a backward pass
    replayable = offloadable = data_parallel = False
    dense_z = False
    default_lr = 1e-5  # MeZO's FT grid for OPT-13B is {1e-5, 5e-5, 8e-5}
    lr_grid = "own"

    def init_state(self) -> None:
        decayed = [p for p, d in zip(self.tensors, self._decay) if d]
        kept = [p for p, d in zip(self.tensors, self._decay) if not d]
        group = self.param_groups[0]
        groups = [g for g in ({"params": decayed, "weight_decay": group["weight_decay"]},
                              {"params": kept, "weight_decay": 0.0}) if g["params"]]
        self.inner = torch.optim.AdamW(groups, lr=group["lr"], betas=(group["momentum"], group["beta2"]),
                                       eps=group["adam_eps"], foreach=False)

    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        if closure is None:
            raise ValueError("FirstOrderAdam.step needs a closure that returns the minibatch loss")
        for g in self.inner.param_groups:  # a scheduler sets lr on our groups; the inner optimizer follows
            g["lr"] = self.param_groups[0]["lr"]
        with torch.enable_grad():
            loss = closure()
            if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                raise ValueError("fo-adam needs a differentiable loss; --objective accuracy/f1 have no gradient")
            value = float(loss)
            if not math.isfinite(value):
                self.inner.zero_grad(set_to_none=True)
                raise NonFiniteLossError(f"loss became {value} at step {self.t}; weights are unchanged. With "
                                         "float16 weights try --dtype bfloat16 or float32; otherwise lower --lr")
            loss.backward()
        self.forwards += 1
        norm = math.sqrt(sum(float(p.grad.float().pow(2).sum()) for p in self.tensors if p.grad is not None))
        self.inner.step()
        self.inner.zero_grad(set_to_none=True)  # gradients live only inside a step
        self.t += 1
        self.last = {"grad_norm": norm}
        return value

    def state_bytes(self) -> int:
        # the moments AdamW allocates at its first step: 2 fp32-or-weight-dtype tensors per parameter
        if not self.inner.state:
            return sum(2 * p.numel() * p.element_size() for p in self.tensors)
        return sum(t.numel() * t.element_size() for s in self.inner.state.values() for t in s.values()
                   if isinstance(t, torch.Tensor) and t.ndim > 0)

    def state_breakdown(self) -> dict[str, int]:
        grads = sum(p.numel() * p.element_size() for p in self.tensors)
        return {"moments": self.state_bytes(), "gradients (inside a step)": grads}

    def _extra_state(self) -> dict[str, Any]:
        return {"adamw": self.inner.state_dict()}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.inner.load_state_dict(extra["adamw"])
