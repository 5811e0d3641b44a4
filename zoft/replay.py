"""`zoft replay`: rebuild a run's weights at any step from the base model, config.yaml and trajectory.jsonl.

A ZO run is fully determined by its base model, its config and, per step, the few scalars its update used (the
projected gradient; HiZOO also the curvature sample): the step seed follows from the run seed and the step index,
and z is regenerated from it. `trajectory.jsonl` holds those scalars, about 30 bytes a step against a model copy
per checkpoint. Replay applies each step's in-place passes in the trained order without a single forward, so the
result is bitwise the checkpoint the run saved at that step (same device type and library versions).

Every ZO algorithm is replayable, with its state (moments, Hessian, TeZO factors) rebuilt along the way;
`fo-adam` is not, because its steps need the gradients.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoft import trajectory
from zoft.config import TrainConfig, check_keys, read_mapping, to_yaml
from zoft.errors import ConfigError
from zoft.runstate import RunState


@dataclass
class ReplayRequest:
    base: str | None          # base model (default: the run's --model)
    run_dir: str
    to_step: int | None = None  # default: the last step of the trajectory
    output_dir: str | None = None
    overwrite: bool = False


def replay(req: ReplayRequest, reporter=None) -> dict[str, Any]:
    """Rebuild the weights after `to_step` steps into `output_dir` (a checkpoint `zoft train --resume` and
    `from_pretrained` both take); returns a summary."""
    from zoft.algos import get_algorithm
    from zoft.runlock import RunLock

    run = Path(req.run_dir)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{req.run_dir}: not a zoft run dir (no config.yaml)")
    cfg = TrainConfig(**check_keys(read_mapping(run / "config.yaml", "run config"), f"{run}/config.yaml"))
    if not get_algorithm(cfg.algo).replayable:
        raise ConfigError(f"--algo {cfg.algo} runs cannot be replayed: its steps depend on gradients; use its "
                          "checkpoints")
    records = trajectory.read(run, until=req.to_step)
    to_step = len(records) if req.to_step is None else req.to_step
    if not 0 <= to_step <= len(records):
        raise ConfigError(f"--to-step {to_step}: {run} has a trajectory of {len(records)} steps")
    out = Path(req.output_dir or run / f"replay-{to_step}")
    if out.resolve() == run.resolve() or out.resolve() in run.resolve().parents:
        raise ConfigError(f"--output-dir {out} would replace the run it replays ({run}); write the replay into a "
                          "new directory (default: <run>/replay-<step>)")
    if out.exists() and any(out.iterdir()) and not req.overwrite:
        raise ConfigError(f"--output-dir {out} already exists; pass --overwrite to replace it")
    if req.base:
        cfg.model = req.base
    with RunLock(out, what="zoft replay"):
        return _rebuild(cfg, run, out, records, to_step, reporter)


def _rebuild(cfg: TrainConfig, run: Path, out: Path, records: list, to_step: int, reporter) -> dict[str, Any]:
    """Apply the first `to_step` records to the base model and save the checkpoint at `out`."""
    import torch

    from zoft.algos import trainable_parameters
    from zoft.builders import build_model, build_optimizer, place
    from zoft.checkpoint import save_checkpoint
    from zoft.models import resolve_model_path

    model, tokenizer, _ = build_model(cfg, resolve_model_path(cfg.model), place(cfg, training=False))
    opt = build_optimizer(cfg, trainable_parameters(model))
    with torch.no_grad():
        for t, record in enumerate(records[:to_step], 1):
            opt.replay(record)
            if reporter and t % 1000 == 0:
                reporter.info(f"replayed {t}/{to_step} steps")
    if out.exists():
        shutil.rmtree(out)
    state = RunState(step=to_step, replayed_from=str(run))
    save_checkpoint(out, model, tokenizer, opt, state.to_dict(), to_yaml(cfg))
    return {"output_dir": str(out), "step": to_step, "algo": cfg.algo, "base": cfg.model,
            "trajectory_bytes": (run / "trajectory.jsonl").stat().st_size}
