"""The torch.optim-style base class every ZO algorithm derives from.

A ZO optimizer is built over the trainable tensors and stepped with a loss closure that runs one forward on a
fixed minibatch and returns the loss (a float or a 0-d tensor)::

    opt = zoft.MeZO(zoft.trainable_parameters(model), lr=1e-6, eps=1e-3)
    for batch in loader:
        loss = opt.step(lambda: model(**batch).loss)

The closure is called under `torch.inference_mode()` (no autograd graph, so ZO trains with the memory of
inference) and must be deterministic: put the model in `eval()` mode so dropout cannot change the loss between
the two probes of a step (ALGORITHMS.md §1.1).

Subclasses implement `_zo_step(closure, seed)`; this class owns the step counter, the step seed, the forward
count, weight-decay exemptions and checkpointable state. Adding an algorithm is one file plus one entry in
`zoft.algos.ALGORITHMS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from zoft.perturb import PerturbationEngine, mix, step_seed, stochastic_rounding

Closure = Callable[[], "float | torch.Tensor"]

# MeZO excludes bias and LayerNorm weights from decay; widened to RMSNorm-style LLaMA names (ALGORITHMS.md §1.6).
_NO_DECAY_MARKERS = ("bias", "norm", "layer_norm", "layernorm", "ln_")


class NonFiniteLossError(RuntimeError):
    """A probe returned NaN/inf; the weights have been restored to their value before the step."""


def decays(name: str | None, param: torch.Tensor) -> bool:
    """Whether weight decay applies: 2-D+ tensors whose name has none of the bias/norm markers."""
    if param.ndim < 2:
        return False
    return name is None or not any(m in name.lower() for m in _NO_DECAY_MARKERS)


def state_dtype(p: torch.Tensor) -> torch.dtype:
    """dtype of moment-like optimizer state: fp32 for fp32/bf16/fp16 weights (ALGORITHMS.md §1.8: small EMA
    increments vanish in half precision), fp64 for fp64 weights so that float64 oracles hold to 1e-10."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable tensors as (name, param) sorted by name: the fixed order that fixes each tensor's seed."""
    return sorted(((n, p) for n, p in model.named_parameters() if p.requires_grad), key=lambda np_: np_[0])


class ZOOptimizer(torch.optim.Optimizer):
    """Base of all ZO optimizers.

    Args:
        params: tensors, (name, tensor) pairs (names enable the bias/norm weight-decay exemption) or param-group
            dicts as for `torch.optim`.
        lr: learning rate η.
        eps: perturbation scale ε.
        weight_decay: decoupled weight decay λ (not applied to 1-D, bias or norm tensors).
        seed: run seed; step t perturbs with seed mix(seed, t).
        noise: the z generator, "table" (default) or "randn" (see `zoft.perturb`).
    """

    #: one line for `zoft list` and `--help`: when to pick this algorithm
    summary: str = ""
    #: paper reference shown by `zoft list`
    paper: str = ""
    #: persistent optimizer state, in words, for `zoft list`
    state_desc: str = "none"
    #: fp32 work buffers the size of the largest tensor that a step uses besides the z buffer
    scratch_slots: int = 0
    #: whether a step materialises dense z (False: every pass is a fused `axpy_`, as in MeZO)
    dense_z: bool = True
    #: round the update pass P3 stochastically for bf16/fp16 weights (`zoft.perturb.stochastic_rounding`)
    stochastic_rounding: bool = False
    #: forward passes per step, for budgets and logs
    forwards_per_step: int = 2
    #: TrainConfig keys passed to the constructor as keyword arguments (algorithm-specific options)
    config_keys: tuple[str, ...] = ()
    #: defaults for full fine-tuning (ALGORITHMS.md §9)
    default_lr: float = 1e-6
    default_eps: float = 1e-3
    #: scalars of `last` that, with the step seed, fix every pass of a step: a run's trajectory (`replay`)
    replay_keys: tuple[str, ...] = ("projected_grad",)
    #: whether `replay` can rebuild the weights from the trajectory alone (not for first-order methods)
    replayable: bool = True
    #: whether a step can run tensor by tensor as `--offload cpu` streams the blocks (`zoft.offload`): the
    #: update of each tensor depends only on the step's scalars, that tensor and its own state (which travels
    #: with its block), through `perturb_tensor` and a per-tensor P3
    offloadable: bool = False

    def __init__(self, params: Iterable[Any], lr: float | None = None, eps: float | None = None,
                 weight_decay: float = 0.0, seed: int = 0, noise: str = "table", **defaults: Any):
        lr = self.default_lr if lr is None else lr
        eps = self.default_eps if eps is None else eps
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(_as_groups(params), dict(lr=lr, eps=eps, weight_decay=weight_decay, **defaults))
        self.seed = int(seed)
        self.t = 0  # steps taken; the next step uses step_seed(seed, t)
        self.forwards = 0
        self._tensors: list[torch.Tensor] = []
        self._group_index: list[int] = []
        self._decay: list[bool] = []
        for gi, group in enumerate(self.param_groups):
            names = group.get("param_names") or [None] * len(group["params"])
            for name, p in zip(names, group["params"]):
                self._tensors.append(p)
                self._group_index.append(gi)
                self._decay.append(decays(name, p))
        self.engine = PerturbationEngine(self._tensors, noise=noise)
        self.residuals: dict[int, torch.Tensor] = {}  # exact bf16: int16 low halves of the fp32 weights
        self.last: dict[str, float] = {}  # scalars of the last step (projected_grad, loss_plus, ...) for logging
        self.offloader = None     # a `zoft.offload.Offloader` when the blocks live in CPU memory
        self.tensorwise = False   # P3 tensor by tensor, rounding bits seeded per tensor (offloaded runs, replays)

    # -- helpers for subclasses ---------------------------------------------------------------------------
    def hyper(self, index: int) -> dict[str, Any]:
        """The param group (lr, eps, weight_decay, ...) of tensor `index`, read at step time so schedulers work."""
        return self.param_groups[self._group_index[index]]

    def decay_factor(self, index: int) -> float:
        """c = 1 − η·λ for decayed tensors, 1 otherwise."""
        group = self.hyper(index)
        return 1.0 - group["lr"] * group["weight_decay"] if self._decay[index] else 1.0

    def evaluate(self, closure: Closure) -> float:
        """One forward: the closure under inference mode, its loss read back as a Python float.

        Reading the float is the only host-device sync of a step.
        """
        with torch.inference_mode():
            loss = closure()
        self.forwards += 1
        return float(loss)

    # -- public API ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        """Take one ZO step; returns the loss to report (no extra forward is spent on it)."""
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that returns the minibatch loss")
        loss = self._zo_step(closure, step_seed(self.seed, self.t))
        self.t += 1
        return loss

    def _zo_step(self, closure: Closure, seed: int) -> float:
        raise NotImplementedError  # abstract: each algorithm defines its step

    def trajectory_record(self) -> dict[str, float]:
        """What `replay` needs of the step just taken (besides its seed, which the step index gives)."""
        return {k: self.last[k] for k in self.replay_keys}

    @torch.no_grad()
    def replay(self, record: dict[str, Any]) -> None:
        """Apply the next step's passes from its trajectory record, without a forward: the same in-place
        operations in the same order as the step that was trained, so the weights and state come out bitwise
        equal. `record` is `trajectory_record()`, or `{"skipped": True}` for a step whose loss was not finite."""
        if not self.replayable:
            raise ValueError(f"{type(self).__name__} steps depend on gradients, which a trajectory does not hold")
        seed = step_seed(self.seed, self.t)
        eps = self.param_groups[0]["eps"]
        self.perturb(seed, eps)              # P1 and P2, as the step made them around its forwards
        self.perturb(seed, -2.0 * eps)
        if record.get("skipped"):
            self.perturb(seed, eps)          # the restore of a step that was not applied
        else:
            self._apply_record(seed, record)
        self.t += 1
        self.forwards += self.forwards_per_step

    def _apply_record(self, seed: int, record: dict[str, Any]) -> None:
        raise NotImplementedError  # abstract: P3 of `_zo_step` with the recorded scalars instead of the forwards

    def _update_tensor(self, index: int, seed: int, g: float, t: int) -> None:
        """P3 for tensor `index` alone, bitwise what `_update` does to it at step index `t` (the step being
        applied: an offloaded run applies it during the next step, when `self.t` has moved on)."""
        raise NotImplementedError(f"{type(self).__name__} cannot update one tensor at a time")

    @torch.no_grad()
    def perturb_tensor(self, index: int, seed: int, scale: float) -> None:
        """θ_i ← θ_i + scale·z_i for one tensor: its share of `perturb` (offloadable algorithms)."""
        self.engine.axpy_(index, seed, scale)

    def tensor_rounding(self, seed: int, index: int) -> stochastic_rounding:
        """Stochastic rounding (if on) for one tensor's P3, its bits drawn from a seed of the tensor's own, so the
        result does not depend on the order the tensors are visited in (offloaded runs and their replays)."""
        return stochastic_rounding(mix(seed, index), self.stochastic_rounding)

    def _offloaded_probes(self, closure: Closure, seed: int, scales: list[float]):
        """The probe losses of an offloaded step (`zoft.offload`: all probes in one visit of each block) and the
        restore that a skipped step defers to the next visit."""
        offloader, eps = self.offloader, self.param_groups[0]["eps"]
        losses = offloader.probe(closure, seed, scales)
        self.forwards += len(scales)
        self.engine.passes += 3  # the probe passes and the deferred P3, as in the resident step

        def restore() -> None:
            offloader.defer(lambda i: self.perturb_tensor(i, seed, eps))

        return losses, restore

    @torch.no_grad()
    def perturb(self, seed: int, scale: float, probe: int = 0) -> None:
        """θ ← θ + scale·Z(seed) in place: one pass along the algorithm's probe direction (dense z here)."""
        self.engine.add_(seed, scale, probe)

    def diagnostics(self) -> dict[str, float]:
        """Scalars describing the optimizer state, logged at each evaluation (none for stateless methods)."""
        return {}

    def state_bytes(self) -> int:
        """Persistent optimizer state in bytes (beyond the weights)."""
        return sum(t.numel() * t.element_size() for s in self.state.values() for t in s.values()
                   if isinstance(t, torch.Tensor))

    def transient_bytes(self) -> int:
        """Peak temporary memory of a step beyond the persistent state: the noise tables and z buffer of a pass
        (`PerturbationEngine.pass_bytes`), `scratch_slots` fp32 buffers the size of the largest tensor, and the
        fp32 chunk buffer of mixed-dtype in-place updates."""
        from zoft.perturb import MIXED_CHUNK

        mixed = ((self.dense_z or self.residuals or self.stochastic_rounding)
                 and any(p.dtype not in (torch.float32, torch.float64) for p in self._tensors))
        return (self.engine.pass_bytes(self.dense_z) + self.engine.max_buffer_bytes() * self.scratch_slots
                + (4 * MIXED_CHUNK * (2 if self.residuals else 1) if mixed else 0))

    def keep_residuals(self) -> None:
        """Exact bf16: keep beside every bf16 weight the 16 bits its fp32 value has beyond bf16 (2 bytes per
        weight), so that every pass is exact fp32 arithmetic while the forwards read bf16 (`zoft.perturb`)."""
        from zoft.perturb import keep_residual

        self.residuals = {i: keep_residual(p) for i, p in enumerate(self._tensors) if p.dtype == torch.bfloat16}
        if not self.residuals:
            raise ValueError("exact bf16 needs bfloat16 weights")

    def residual_bytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.residuals.values())

    def state_breakdown(self) -> dict[str, int]:
        """Persistent state in bytes by kind (e.g. moments, Hessian, cached factors), for logs and `zoft list`."""
        return {"state": self.state_bytes()} if self.state_bytes() else {}

    def _extra_state(self) -> dict[str, Any]:
        """Algorithm state kept outside `self.state` that a checkpoint must restore (plain Python values)."""
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        """Counterpart of `_extra_state`, called after the tensors of `self.state` are restored."""

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["zo"] = {"t": self.t, "seed": self.seed, "forwards": self.forwards, "algo": type(self).__name__,
                    "extra": self._extra_state(), "residuals": self.residuals}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo")
        if zo["algo"] != type(self).__name__:
            raise ValueError(f"optimizer state is from {zo['algo']}, not {type(self).__name__}")
        super().load_state_dict(state_dict)
        # torch.optim casts every state tensor to its parameter's dtype (and calls that policy by class name, so it
        # cannot be overridden). ZO state is fp32 by design (ALGORITHMS.md §1.8: a bf16 Hessian or moment loses
        # its small EMA increments), so put the saved tensors back in their own dtype.
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            p = params[int(index)]
            for key, value in saved.items():
                if isinstance(value, torch.Tensor):
                    self.state[p][key] = value.detach().to(device=p.device, copy=True)
        self.t, self.seed, self.forwards = int(zo["t"]), int(zo["seed"]), int(zo["forwards"])
        residuals = zo.get("residuals") or {}
        if set(residuals) != set(self.residuals):
            raise ValueError("optimizer state was saved with" + ("" if residuals else "out")
                             + " exact-bf16 residuals; resume with the same --exact-bf16 setting")
        for i, r in residuals.items():
            self.residuals[i].copy_(r)
        self._load_extra_state(zo.get("extra", {}))


class TwoPointZO(ZOOptimizer):
    """The two-sided SPSA step shared by MeZO and every method that differs from it only in the direction it
    probes along or in the update it applies (ALGORITHMS.md §1.3):

        P1  θ ← θ + ε·Z           → L+        (`perturb(seed, ε)`)
        P2  θ ← θ − 2ε·Z          → L−        (`perturb(seed, −2ε)`)
            g = (L+ − L−)/(2ε)
        P3  restore θ + ε·Z fused with the algorithm's update   (`_update(seed, g)`, by default tensor by
            tensor through `_update_tensor`, which `--offload cpu` also uses)

    Z is the engine's dense Gaussian z unless a subclass overrides `perturb` (TeZO's low-rank Z). 2 forwards and
    3 passes per step; the reported loss is (L+ + L−)/2, so no forward is spent on logging (§1.7).
    """

    forwards_per_step = 2

    @property
    def eps(self) -> float:
        return self.param_groups[0]["eps"]

    def _update(self, seed: int, g: float) -> None:
        """The restore + update pass P3: tensor by tensor through `_update_tensor` unless the algorithm fuses it
        (MeZO's one `axpy_all_`, TeZO's low-rank passes)."""
        self.engine.count_pass()
        for i in range(len(self._tensors)):
            self._update_tensor(i, seed, g, self.t)

    def _apply_record(self, seed: int, record: dict[str, Any]) -> None:
        if self.tensorwise:
            self.engine.count_pass()
            for i in range(len(self._tensors)):
                self._tensor_update(i, seed, record["projected_grad"], self.t)
            return
        with stochastic_rounding(seed, self.stochastic_rounding):
            self._update(seed, record["projected_grad"])

    def _tensor_update(self, index: int, seed: int, g: float, t: int) -> None:
        """P3 of one tensor as an offloaded step applies it (`tensor_rounding`)."""
        with self.tensor_rounding(seed, index):
            self._update_tensor(index, seed, g, t)

    def _offloaded_step(self, closure: Closure, seed: int) -> float:
        """The same step with the blocks streamed: both probes in one visit of each block, P3 deferred."""
        eps = self.eps
        (loss_plus, loss_minus), restore = self._offloaded_probes(closure, seed, [eps, -2.0 * eps])
        check_finite(self, (loss_plus, loss_minus), restore=restore)
        g = (loss_plus - loss_minus) / (2.0 * eps)
        check_finite(self, (g,), restore=restore, what="projected gradient")
        t = self.t
        self.offloader.defer(lambda i: self._tensor_update(i, seed, g, t))
        self.last = {"projected_grad": g, "loss_plus": loss_plus, "loss_minus": loss_minus}
        return 0.5 * (loss_plus + loss_minus)

    def _zo_step(self, closure: Closure, seed: int) -> float:
        if self.offloader is not None:
            return self._offloaded_step(closure, seed)
        eps = self.eps
        self.perturb(seed, eps)                          # P1: θ + εZ
        loss_plus = self.evaluate(closure)
        self.perturb(seed, -2.0 * eps)                   # P2: θ − εZ
        loss_minus = self.evaluate(closure)
        check_finite(self, (loss_plus, loss_minus), restore=lambda: self.perturb(seed, eps))
        g = (loss_plus - loss_minus) / (2.0 * eps)       # Python float: fp64 arithmetic on the two fp32 losses
        check_finite(self, (g,), restore=lambda: self.perturb(seed, eps), what="projected gradient")
        self._apply_record(seed, {"projected_grad": g})  # P3 (the same call replays it)
        self.last = {"projected_grad": g, "loss_plus": loss_plus, "loss_minus": loss_minus}
        return 0.5 * (loss_plus + loss_minus)

    def bias_corrections(self, beta1: float, beta2: float, t: int | None = None) -> tuple[float, float]:
        """Adam's 1 − β1^t and 1 − β2^t for the step being taken (default `self.t`, counted from 0 here and from 1
        in torch.optim.Adam)."""
        t = self.t if t is None else t
        return 1.0 - beta1 ** (t + 1), 1.0 - beta2 ** (t + 1)


def check_finite(opt: ZOOptimizer, values: Iterable[float], restore: Callable[[], None], what: str = "loss") -> None:
    """If a probe loss (or the projected gradient) is NaN/inf: undo the step's perturbation with `restore`, so the
    step applies nothing and loses nothing, then raise."""
    bad = [x for x in values if not math.isfinite(x)]
    if bad:
        restore()
        raise NonFiniteLossError(
            f"{what} became {bad[0]} at step {opt.t}; weights were restored. With float16 weights try "
            "--dtype bfloat16 or float32; otherwise lower --lr or --eps")


def _as_groups(params: Iterable[Any]) -> list[dict[str, Any]]:
    """Normalise tensors / (name, tensor) pairs / group dicts into torch param groups with `param_names`."""
    items = list(params)
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    if isinstance(items[0], dict):
        return [dict(g, params=list(g["params"])) for g in items]
    if isinstance(items[0], tuple):
        return [{"params": [p for _, p in items], "param_names": [n for n, _ in items]}]
    return [{"params": items}]
