"""The state of a run between steps, as `zoft_state.json` keeps it beside each checkpoint.

zoft keeps no stateful RNG: step t perturbs with mix(seed, t) and draws batch t from a permutation seeded by
(seed, epoch), so the step index *is* the RNG state and the data position. The rest is bookkeeping for model
selection (the best dev result so far) and timing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunState:
    step: int = 0                           # steps taken
    best_dev_loss: float = math.inf         # the selection value of best/ (dev loss, or minus the metric)
    best_dev_metric: float | None = None    # the dev metric (accuracy or F1) of best/
    best_step: int | None = None            # the step best/ holds
    elapsed_s: float = 0.0                  # wall time of steps, evaluations and saves
    train_s: float = 0.0                    # wall time of steps only (it/s)
    zero_shot: dict[str, float] = field(default_factory=dict)  # the step-0 dev (and eval) metric
    replayed_from: str | None = None        # the run dir a `zoft replay` checkpoint was rebuilt from
    data: dict[str, str] = field(default_factory=dict)  # SHA-256 of each split's examples (`Splits.digests`)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["replayed_from"] is None:
            del data["replayed_from"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        data = dict(data)
        if "best_dev_accuracy" in data:  # runs saved before generation tasks had one metric key
            data["best_dev_metric"] = data.pop("best_dev_accuracy")
        if data.get("best_dev_loss") is None:  # a replayed checkpoint has no selection yet
            data["best_dev_loss"] = math.inf
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
