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

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from zoft.config import ConfigError, TrainConfig, check_keys, to_yaml


@dataclass
class ReplayRequest:
    base: str | None          # base model (default: the run's --model)
    run_dir: str
    to_step: int | None = None  # default: the last step of the trajectory
    output_dir: str | None = None
    overwrite: bool = False


def read_trajectory(run_dir: Path) -> list[dict[str, Any]]:
    from zoft.train import TRAJECTORY_FILE, decode_record

    path = run_dir / TRAJECTORY_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {TRAJECTORY_FILE} (runs write it since zoft 0.2; fo-adam runs have none)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a killed run's last line; everything before it is whole
        if rec.get("t") != number:
            raise ConfigError(f"{path}: line {number} is step {rec.get('t')}, expected {number}; the file is damaged")
        records.append(decode_record(rec))
    return records


def replay(req: ReplayRequest, reporter=None) -> dict[str, Any]:
    """Rebuild the weights after `to_step` steps into `output_dir` (a checkpoint `zoft train --resume` and
    `from_pretrained` both take); returns a summary."""
    import torch

    from zoft.algos import ALGORITHMS, trainable_parameters
    from zoft.checkpoint import save_checkpoint
    from zoft.models import resolve_model_path
    from zoft.train import build_model, build_optimizer

    run = Path(req.run_dir)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{req.run_dir}: not a zoft run dir (no config.yaml)")
    cfg = TrainConfig(**check_keys(yaml.safe_load((run / "config.yaml").read_text()), f"{run}/config.yaml"))
    if not ALGORITHMS[cfg.algo].replayable:
        raise ConfigError(f"--algo {cfg.algo} runs cannot be replayed: its steps depend on gradients; use its "
                          "checkpoints")
    records = read_trajectory(run)
    to_step = len(records) if req.to_step is None else req.to_step
    if not 0 <= to_step <= len(records):
        raise ConfigError(f"--to-step {to_step}: {run} has a trajectory of {len(records)} steps")
    out = Path(req.output_dir or run / f"replay-{to_step}")
    if out.exists() and any(out.iterdir()) and not req.overwrite:
        raise ConfigError(f"--output-dir {out} already exists; pass --overwrite to replace it")
    if req.base:
        cfg.model = req.base
    model, tokenizer, _ = build_model(cfg, resolve_model_path(cfg.model))
    opt = build_optimizer(cfg, trainable_parameters(model))
    with torch.no_grad():
        for t, record in enumerate(records[:to_step], 1):
            opt.replay(record)
            if reporter and t % 1000 == 0:
                reporter.info(f"replayed {t}/{to_step} steps")
    if out.exists():
        shutil.rmtree(out)
    state = {"step": to_step, "replayed_from": str(run), "best_dev_loss": None, "best_dev_metric": None,
             "best_step": None, "elapsed_s": 0.0, "train_s": 0.0, "zero_shot": {}}
    save_checkpoint(out, model, tokenizer, opt, state, to_yaml(cfg))
    return {"output_dir": str(out), "step": to_step, "algo": cfg.algo, "base": cfg.model,
            "trajectory_bytes": (run / "trajectory.jsonl").stat().st_size}
