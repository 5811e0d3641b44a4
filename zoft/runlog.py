"""Append-only JSON-lines logs of a run (metrics.jsonl, trajectory.jsonl).

A killed run may leave its last line cut short; a resumed run rewrites the file keeping what the steps up to its
checkpoint logged, so the log again describes one uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonLines:
    """Appends one JSON object per line to `path`; with `keep`, also holds them (for the plot).

    Args:
        path: the file, rewritten at construction.
        keep_until_step: on resume, the checkpoint's step: lines of later steps (and the end line) are dropped;
            None for a new run (the file starts empty).
        step_key: the key that holds a line's step.
        keep: hold the records in memory (metrics, which `loss.png` plots); False for the trajectory.
    """

    def __init__(self, path: Path, keep_until_step: int | None, step_key: str = "step", keep: bool = True):
        self.path, self.keep = path, keep
        self.records: list[dict[str, Any]] = []
        if keep_until_step is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed run may be cut short
                    continue
                if rec.get(step_key, 0) <= keep_until_step and rec.get("event") != "end":
                    self.records.append(rec)
        path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        if not keep:
            self.records = []

    def write(self, record: dict[str, Any]) -> None:
        if self.keep:
            self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Nothing to flush: every line is written when it is logged."""


class Discard:
    """The log of a data-parallel rank other than 0: it writes nothing."""

    records: list = []

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
