"""The contract every ZO algorithm implements, and the torch.optim-style base class that holds it.

A ZO optimizer is built over the trainable tensors and stepped with a loss closure that runs one forward on a
fixed minibatch and returns the loss (a float or a 0-d tensor)::

    opt = zoft.MeZO(zoft.trainable_parameters(model), lr=1e-6, eps=1e-3)
    for batch in loader:
        loss = opt.step(lambda: model(**batch).loss)

The closure is called under `torch.inference_mode()` (no autograd graph, so ZO trains with the memory of
inference) and must be deterministic: put the model in `eval()` mode so dropout cannot change the loss between
the probes of a step (docs/algorithms.md, "The two-point estimate").

An algorithm is one class that declares, and nothing else needs to know:

- **its options** (`options`: a tuple of `zoft.algos.options.Option`), from which the registry derives the recipe
  keys, the `zoft train` flags and `--help`, `estimate-memory` and the resume check;
- **its probes**: the moves before each forward in multiples of ε (`probes`, MeZO's (1, −2) is θ+εZ then θ−εZ)
  and its direction, dense z unless it overrides `perturb_tensor` (`perturb` then loops it over the tensors);
- **its estimate** (`estimate`): how the probe losses become the step's scalars, the loss it reports and logs;
- **its update** (`update_tensor`): P3 of one tensor, the restore of the last probe fused with the update, from
  the step's scalars, the tensor and its own state (`update_all` may fuse all tensors, bitwise the same);
- **its capabilities** (`replayable`, `offloadable`, `data_parallel`), which the CLI checks before loading.

`zoft.runner.StepRunner` executes the step from these parts, resident, offloaded (`--offload cpu`) or replayed from
a trajectory (`zoft replay`); this class owns the step counter, the forward count, weight-decay exemptions and
checkpointable state. Adding an algorithm is one file plus one entry in `zoft.algos.ALGORITHMS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from zoft.algos.options import Option, resolve
from zoft.perturb import MIXED_CHUNK, PerturbationEngine
from zoft.runner import StepRunner

Closure = Callable[[], "float | torch.Tensor"]

# MeZO excludes bias and LayerNorm weights from decay; widened to RMSNorm-style LLaMA names (docs/algorithms.md).
_NO_DECAY_MARKERS = ("bias", "norm", "layer_norm", "layernorm", "ln_")


def decays(name: str | None, param: torch.Tensor) -> bool:
    """Whether weight decay applies: 2-D+ tensors whose name has none of the bias/norm markers."""
    if param.ndim < 2:
        return False
    return name is None or not any(m in name.lower() for m in _NO_DECAY_MARKERS)


def state_dtype(p: torch.Tensor) -> torch.dtype:
    """dtype of moment-like optimizer state: fp32 for fp32/bf16/fp16 weights (small EMA increments vanish in half
    precision), fp64 for fp64 weights so that float64 oracles hold to 1e-10."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable tensors as (name, param) sorted by name: the fixed order that fixes each tensor's seed."""
    return sorted(((n, p) for n, p in model.named_parameters() if p.requires_grad), key=lambda np_: np_[0])


class Estimate(NamedTuple):
    """What a step's probe losses give: the scalars its update uses (`record`, which the trajectory keeps for
    replay), the loss it reports, and further scalars for logs (the probe losses, ...)."""

    record: dict[str, float]
    loss: float
    log: dict[str, float]


class ZOOptimizer(torch.optim.Optimizer):
    """Base of all ZO optimizers.

    Args:
        params: tensors, (name, tensor) pairs (names enable the bias/norm weight-decay exemption) or param-group
            dicts as for `torch.optim`.
        lr: learning rate η (default: the algorithm's `default_lr`).
        eps: perturbation scale ε (default: `default_eps`).
        weight_decay: decoupled weight decay λ (not applied to 1-D, bias or norm tensors).
        seed: run seed; step t perturbs with seed mix(seed, t).
        noise: the z generator, "table" (default), "randn" or "philox" (see `zoft.perturb.engine`).
        **options: the algorithm's own `options`, by name.
    """

    #: one line for `zoft list` and `--help`: when to pick this algorithm
    summary: str = ""
    #: paper reference shown by `zoft list`
    paper: str = ""
    #: persistent optimizer state, in words, for `zoft list`
    state_desc: str = "none"
    #: the algorithm's own options (declared once: flags, recipe keys, validation and help derive from them)
    options: tuple[Option, ...] = ()
    #: defaults for full fine-tuning
    default_lr: float = 1e-6
    default_eps: float = 1e-3
    #: "mode": in LoRA/prefix/prompt mode the default lr is that mode's MeZO grid (SGD-like steps scale with the
    #: gradient); "own": `default_lr` in every mode (normalised steps, e.g. Adam's, whose size is ≈ η per weight)
    lr_grid: str = "mode"
    #: capabilities: rebuilt from a trajectory of scalars (`zoft replay`), run with blocks streamed from CPU memory
    #: (`--offload cpu`), run data-parallel with losses all-reduced (`torchrun`)
    replayable: bool = True
    offloadable: bool = True
    data_parallel: bool = True
    #: whether steps backpropagate (the first-order reference) instead of probing
    first_order: bool = False
    #: the tuning modes it runs in (empty: every mode); the CLI refuses the others before loading
    modes: tuple[str, ...] = ()
    #: the step: moves before each forward, in multiples of ε along direction 0
    probes: tuple[float, ...] = (1.0, -2.0)
    #: forward passes per step, for budgets, logs and the data-parallel traffic
    forwards_per_step: int = 2
    #: what the step's scalars are called in the message of a non-finite step
    estimate_what: str = "projected gradient"
    #: memory: whether a step materialises dense z (False: every pass is a fused `axpy_`, as in MeZO), and how many
    #: fp32 work buffers the size of the largest tensor it uses besides the z buffer
    dense_z: bool = True
    scratch_slots: int = 0

    def __init__(self, params: Iterable[Any], lr: float | None = None, eps: float | None = None,
                 weight_decay: float = 0.0, seed: int = 0, noise: str = "table", **options: Any):
        lr = self.default_lr if lr is None else lr
        eps = self.default_eps if eps is None else eps
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        resolved = resolve(type(self).__name__, self.options, options)
        self.check_options(resolved)
        super().__init__(_as_groups(params), dict(lr=lr, eps=eps, weight_decay=weight_decay, **resolved))
        #: the algorithm's options as resolved (given or default); also each param group's defaults
        self.settings = resolved
        self.seed = int(seed)
        self.t = 0  # steps taken; the next step uses step_seed(seed, t)
        self.forwards = 0
        self.tensors: list[torch.Tensor] = []
        self._group_index: list[int] = []
        self._decay: list[bool] = []
        for gi, group in enumerate(self.param_groups):
            names = group.get("param_names") or [None] * len(group["params"])
            for name, p in zip(names, group["params"]):
                self.tensors.append(p)
                self._group_index.append(gi)
                self._decay.append(decays(name, p))
        self.engine = PerturbationEngine(self.tensors, noise=noise)
        self.ops = self.engine.ops  # in-place arithmetic for any dtype, with the rounding switch and residuals
        self.residuals: dict[int, torch.Tensor] = {}  # exact bf16: int16 low halves of the fp32 weights
        self.stochastic_rounding = False  # round P3 stochastically for bf16/fp16 weights
        self.record: dict[str, float] = {}  # the scalars of the last step's update (its trajectory record)
        self.last: dict[str, float] = {}  # the scalars of the last step for logs (projected_grad, loss_plus, ...)
        self.runner = StepRunner(self)
        self.init_state()

    def init_state(self) -> None:
        """Create the algorithm's per-tensor state in `self.state` (moments, H) and anything it derives from its
        options; called once at the end of the constructor."""

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Checks across options (each option's own range is checked already); raise `ConfigError`."""

    @classmethod
    def offload_refusal(cls, options: dict[str, Any]) -> str | None:
        """Why `--offload cpu` cannot run these options (as given), or None; the CLI checks it before loading."""
        return None

    # -- helpers for subclasses ---------------------------------------------------------------------------
    def hyper(self, index: int) -> dict[str, Any]:
        """The param group (lr, eps, weight_decay, ...) of tensor `index`, read at step time so schedulers work."""
        return self.param_groups[self._group_index[index]]

    def decay_factor(self, index: int) -> float:
        """c = 1 − η·λ for decayed tensors, 1 otherwise."""
        group = self.hyper(index)
        return 1.0 - group["lr"] * group["weight_decay"] if self._decay[index] else 1.0

    @property
    def eps(self) -> float:
        return self.param_groups[0]["eps"]

    def bias_corrections(self, beta1: float, beta2: float, t: int) -> tuple[float, float]:
        """Adam's 1 − β1^t and 1 − β2^t for step index `t` (counted from 0 here and from 1 in torch.optim.Adam)."""
        return 1.0 - beta1 ** (t + 1), 1.0 - beta2 ** (t + 1)

    def evaluate(self, closure: Closure) -> float:
        """One forward: the closure under inference mode, its loss read back as a Python float.

        Reading the float is the only host-device sync of a step.
        """
        with torch.inference_mode():
            loss = closure()
        self.forwards += 1
        return float(loss)

    # -- the step, as `zoft.runner` executes it -----------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        """Take one ZO step; returns the loss to report (no extra forward is spent on it)."""
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that returns the minibatch loss")
        return self.runner.step(closure)

    @torch.no_grad()
    def replay(self, record: dict[str, Any]) -> None:
        """Apply the next step from its trajectory record without a forward (`zoft.runner.StepRunner.replay`)."""
        if not self.replayable:
            raise ValueError(f"{type(self).__name__} steps depend on gradients, which a trajectory does not hold")
        self.runner.replay(record)

    def probe_moves(self) -> list[list[tuple[int, float]]]:
        """(direction, scale) moves made before each forward of a step, from `probes` (all along direction 0)."""
        return [[(0, multiple * self.eps)] if multiple else [] for multiple in self.probes]

    def estimate(self, losses: list[float]) -> Estimate:
        """The two-sided SPSA estimate g = (L+ − L−)/(2ε); the reported loss is (L+ + L−)/2, so no forward is spent
        on logging."""
        loss_plus, loss_minus = losses
        g = (loss_plus - loss_minus) / (2.0 * self.eps)  # Python float: fp64 arithmetic on the two fp32 losses
        return Estimate({"projected_grad": g}, 0.5 * (loss_plus + loss_minus),
                        {"loss_plus": loss_plus, "loss_minus": loss_minus})

    def trial_moves(self, record: dict[str, Any]) -> list[list[tuple[int, float]]]:
        """Moves to points tried once the estimate is known, one forward after each (none by default); the runner
        makes them after the probes and then calls `choose` with their losses. Replay makes them too, from the
        record, so they must depend on the record only."""
        return []

    def choose(self, estimate: Estimate, trial_losses: list[float]) -> Estimate:
        """The step's estimate once the trial points' losses are known (their choice goes into the record)."""
        return estimate

    @torch.no_grad()
    def perturb(self, seed: int, scale: float, direction: int = 0) -> None:
        """θ ← θ + scale·Z(seed) in place: one pass along the algorithm's direction. With the engine's dense z it
        is the engine's fused pass; an algorithm that defines its own direction per tensor (`perturb_tensor`: low-rank,
        masked, Rademacher) gets one pass of that over every tensor, and overrides this only to fuse it."""
        if type(self).perturb_tensor is ZOOptimizer.perturb_tensor:
            self.engine.add_(seed, scale, direction)
            return
        self.engine.count_pass()
        for i in range(len(self.tensors)):
            self.perturb_tensor(i, seed, scale, direction)

    @torch.no_grad()
    def perturb_tensor(self, index: int, seed: int, scale: float, direction: int = 0) -> None:
        """θ_i ← θ_i + scale·Z_i for one tensor: its share of `perturb`, the same arithmetic."""
        self.engine.axpy_(index, seed, scale, direction)

    def update_tensor(self, index: int, seed: int, record: dict[str, Any], t: int) -> None:
        """P3 of tensor `index` at step index `t`: restore the last probe and apply the update from the step's
        scalars `record` (an offloaded run applies it during the next step, when `self.t` has moved on)."""
        raise NotImplementedError(f"{type(self).__name__} defines no update")

    def update_all(self, seed: int, record: dict[str, Any], t: int) -> None:
        """P3 of every tensor (one pass); an algorithm with a fused pass overrides it, bitwise the same."""
        self.engine.count_pass()
        for i in range(len(self.tensors)):
            self.update_tensor(i, seed, record, t)

    def trajectory_record(self) -> dict[str, float]:
        """What `replay` needs of the step just taken (besides its seed, which the step index gives)."""
        return dict(self.record)

    # -- state -----------------------------------------------------------------------------------------------
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
        mixed = ((self.dense_z or self.residuals or self.stochastic_rounding)
                 and any(p.dtype not in (torch.float32, torch.float64) for p in self.tensors))
        return (self.engine.pass_bytes(self.dense_z) + self.engine.max_buffer_bytes() * self.scratch_slots
                + (4 * MIXED_CHUNK * (2 if self.residuals else 1) if mixed else 0))

    def keep_residuals(self) -> None:
        """Exact bf16: keep beside every bf16 weight the 16 bits its fp32 value has beyond bf16 (2 bytes per
        weight), so that every pass is exact fp32 arithmetic while the forwards read bf16 (`zoft.perturb`)."""
        self.residuals = {i: self.ops.residuals.keep(p) for i, p in enumerate(self.tensors)
                          if p.dtype == torch.bfloat16}
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
        # cannot be overridden). ZO state is fp32 by design (a bf16 Hessian or moment loses its small EMA
        # increments), so put the saved tensors back in their own dtype.
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
