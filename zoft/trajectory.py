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


def read(run_dir: Path, until: int | None = None) -> list[dict[str, Any]]:
    """Every step's scalars in order (the first `until` steps only, when given: lines after them are not read); a
    torn last line (what a killed run leaves) ends the file, and any other damaged line is an error naming it."""
    path = run_dir / TRAJECTORY_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {TRAJECTORY_FILE} (runs write it since zoft 0.2; fo-adam runs have none)")
    records = []
    text = path.read_text()
    text_ends_whole = text.endswith("\n")
    lines = text.split("\n")
    if text_ends_whole:
        lines.pop()  # the empty string after the newline that ends the last whole line
    for number, line in enumerate(lines, 1):
        if until is not None and number > until:
            break
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and rec.get("t") == number
        except json.JSONDecodeError:
            rec, ok = None, False
        if not ok:
            if number == len(lines) and rec is None and not text_ends_whole:
                break  # a killed run's torn last line (no newline after it); everything before it is whole
            what = f"is step {rec.get('t')}, expected {number}" if isinstance(rec, dict) else "is not a whole line"
            raise ConfigError(f"{path}: line {number} {what}; the file is damaged (only a torn last line, which a "
                              "killed run leaves, is skipped): replay to a step before it with --to-step")
        records.append(decode(rec))
    return records
