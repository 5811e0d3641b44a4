"""The step runner: executes any ZO algorithm's step, resident, offloaded or replayed.

An algorithm (`zoft.algos.base.ZOOptimizer`) supplies only what is its own:

- its probes: the moves along its direction(s) made before each forward (`probe_moves`, e.g. MeZO's +ε then −2ε,
  HiZOO's none, +ε, −2ε) and the direction itself (`perturb`, `perturb_tensor`);
- how the probe losses become the step's scalars (`estimate`: the projected gradient g, HiZOO's curvature c);
- optionally, points to try once the estimate is known and how to choose among them (`trial_moves`, `choose`:
  ZO-SGD-Cons evaluates θ ∓ η·g·z and keeps the lowest loss); the choice joins the step's record;
- its update of one tensor from those scalars, fused with the restore of the last probe (`update_tensor`), and of
  every tensor when it has a faster fused pass (`update_all`, bitwise the same);
- its state (moments, H), which lives in `opt.state` per tensor.

The runner does the rest, the same way for every algorithm:

    resident    move, forward, move, forward, ...  → scalars → P3 over every tensor
    offloaded   all forwards of the step in one visit of each block (`zoft.offload`) → scalars → P3 deferred to
                each tensor's next visit
    replayed    the same moves and P3 from a trajectory record, with no forward: bitwise the trained weights

A probe loss or scalar that is not finite undoes the step's moves (nothing is applied, nothing lost) and raises
`NonFiniteLossError`. With stochastic rounding, P3 draws its rounding bits from the step seed, or, in a
`tensorwise` runner (offloaded runs and their replays), from a seed of each tensor's own, so the order the tensors
are visited in does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from zoft.perturb import step_seed

Move = tuple[int, float]  # (direction index, scale): θ ← θ + scale·Z_direction


class NonFiniteLossError(RuntimeError):
    """A probe returned NaN/inf; the weights have been restored to their value before the step."""


def restore_moves(moves: list[list[Move]]) -> list[Move]:
    """The moves that undo a step's probes: minus the net displacement along each direction."""
    net: dict[int, float] = {}
    for forward in moves:
        for direction, scale in forward:
            net[direction] = net.get(direction, 0.0) + scale
    return [(direction, -total) for direction, total in net.items() if total]


def check_finite(opt, values: Iterable[float], restore: Callable[[], None], what: str = "loss") -> None:
    """If a probe loss (or a step scalar) is NaN/inf: undo the step's perturbation with `restore`, so the step
    applies nothing and loses nothing, then raise."""
    bad = [x for x in values if not math.isfinite(x)]
    if bad:
        restore()
        raise NonFiniteLossError(
            f"{what} became {bad[0]} at step {opt.t}; weights were restored. With float16 weights try "
            "--dtype bfloat16 or float32; otherwise lower --lr or --eps")


class StepRunner:
    """Runs `opt`'s steps on weights that stay where they are (one device, or sharded by `--device-map`).

    Args:
        opt: the ZO optimizer.
        tensorwise: apply P3 tensor by tensor with per-tensor rounding seeds, as an offloaded run does (the replay
            of an offloaded run needs it to come out bitwise).
    """

    def __init__(self, opt, tensorwise: bool = False):
        self.opt, self.tensorwise = opt, tensorwise

    # -- one step --------------------------------------------------------------------------------------------
    def step(self, closure) -> float:
        opt = self.opt
        seed, t = step_seed(opt.seed, opt.t), opt.t
        moves = opt.probe_moves()
        losses = []
        for forward in moves:
            self._move(seed, forward)
            losses.append(opt.evaluate(closure))
        estimate = self._checked(losses, lambda: self._move(seed, restore_moves(moves)))
        trials = opt.trial_moves(estimate.record)
        if trials:  # points chosen from the estimate (ZO-SGD-Cons): evaluate them, let the algorithm pick
            trial_losses = []
            for forward in trials:
                self._move(seed, forward)
                trial_losses.append(opt.evaluate(closure))
            estimate = opt.choose(estimate, trial_losses)
        self.apply_update(seed, estimate.record, t)
        return self._finish(estimate)

    def replay(self, record: dict[str, Any]) -> None:
        """Apply the next step's passes from its trajectory record, without a forward: the same in-place
        operations in the same order as the step that was trained. `record` is what `estimate` returned as the
        step's record, or `{"skipped": True}` for a step whose loss was not finite."""
        opt = self.opt
        seed, t = step_seed(opt.seed, opt.t), opt.t
        moves = opt.probe_moves()
        for forward in moves:
            self._move(seed, forward)
        trials = [] if record.get("skipped") else opt.trial_moves(record)
        if record.get("skipped"):
            self._move(seed, restore_moves(moves))  # the restore of a step that was not applied
        else:
            for forward in trials:
                self._move(seed, forward)
            self.apply_update(seed, record, t)
        opt.t += 1
        opt.forwards += len(moves) + len(trials)

    def flush(self) -> None:
        """Make every deferred update land in the weights (nothing is deferred here)."""

    # -- parts -----------------------------------------------------------------------------------------------
    def _move(self, seed: int, moves: list[Move]) -> None:
        for direction, scale in moves:
            self.opt.perturb(seed, scale, direction)

    def _checked(self, losses: list[float], restore: Callable[[], None]):
        opt = self.opt
        check_finite(opt, losses, restore=restore)
        estimate = opt.estimate(losses)
        check_finite(opt, estimate.record.values(), restore=restore, what=opt.estimate_what)
        return estimate

    def _finish(self, estimate) -> float:
        opt = self.opt
        opt.record = dict(estimate.record)
        opt.last = {**estimate.record, **estimate.log}
        opt.t += 1
        return estimate.loss

    def apply_update(self, seed: int, record: dict[str, Any], t: int) -> None:
        """P3 of step `t` over every tensor: restore the last probe and update, with the step's rounding."""
        opt = self.opt
        if self.tensorwise:
            opt.engine.count_pass()
            for i in range(len(opt.tensors)):
                self.update_one(i, seed, record, t)
            return
        with opt.engine.rounding(seed, opt.stochastic_rounding):
            opt.update_all(seed, record, t)

    def update_one(self, index: int, seed: int, record: dict[str, Any], t: int) -> None:
        """P3 of step `t` for one tensor, rounding with bits of its own."""
        opt = self.opt
        with opt.engine.tensor_rounding(seed, index, opt.stochastic_rounding):
            opt.update_tensor(index, seed, record, t)


class OffloadedRunner(StepRunner):
    """Runs `opt`'s steps with the transformer blocks streamed from CPU memory (`zoft.offload.Offloader`): every
    forward of a step runs through a block in one visit, and P3 of step t is applied at the block's next visit."""

    def __init__(self, opt, offloader):
        super().__init__(opt, tensorwise=True)
        self.offloader = offloader

    def step(self, closure) -> float:
        opt, offloader = self.opt, self.offloader
        seed, t = step_seed(opt.seed, opt.t), opt.t
        moves = opt.probe_moves()
        losses = offloader.probe(closure, seed, moves)
        opt.forwards += len(moves)
        opt.engine.passes += sum(len(forward) for forward in moves) + 1  # the probes' moves and the deferred P3
        undo = restore_moves(moves)

        def restore() -> None:  # a skipped step's restore, at the next visit too
            offloader.defer(lambda i: self._move_one(i, seed, undo))

        estimate = self._checked(losses, restore)
        offloader.defer(lambda i: self.update_one(i, seed, estimate.record, t))
        return self._finish(estimate)

    def _move_one(self, index: int, seed: int, moves: list[Move]) -> None:
        for direction, scale in moves:
            self.opt.perturb_tensor(index, seed, scale, direction)

    def flush(self) -> None:
        self.offloader.flush()
