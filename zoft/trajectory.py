"""The seed trajectory: per step, the few scalars its update used, in `trajectory.jsonl`.

A ZO run is fully determined by its base model, its config and, per step, the scalars of its update (the
projected gradient; HiZOO also the curvature sample): the step seed follows from the run seed and the step index,
and z is regenerated from it. So the file, about 30 bytes a step, rebuilds the weights at any step (`zoft replay`).
Each line is `{"t": step, <scalars>}`, or `{"t": step, "skipped": true}` for a step whose loss was not finite.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoft.errors import ConfigError
from zoft.runlog import JsonLines

TRAJECTORY_FILE = "trajectory.jsonl"
#: short names of the common scalars (a 20 000-step MeZO trajectory is ~0.6 MB)
_SHORT = {"projected_grad": "g", "curvature": "c"}
_LONG = {v: k for k, v in _SHORT.items()}


def encode(step: int, record: dict[str, Any]) -> dict[str, Any]:
    """The line of step `step` (1-based) for its update's scalars."""
    return {"t": step, **{_SHORT.get(k, k): v for k, v in record.items()}}


def decode(line: dict[str, Any]) -> dict[str, Any]:
    """A line back into the update's scalars (what `ZOOptimizer.replay` takes)."""
    return {_LONG.get(k, k): v for k, v in line.items() if k != "t"}


def writer(run_dir: Path, keep_until_step: int | None) -> JsonLines:
    """The trajectory of a run dir, truncated to `keep_until_step` on resume."""
    return JsonLines(run_dir / TRAJECTORY_FILE, keep_until_step, step_key="t", keep=False)


def read(run_dir: Path) -> list[dict[str, Any]]:
    """Every step's scalars in order; a cut-short last line (what a killed run leaves) ends the file."""
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
        records.append(decode(rec))
    return records
