"""Experiment tracking (`--report-to`): what metrics.jsonl logs, also sent to the trackers users already run.

Every record the run writes to metrics.jsonl (train lines: loss, lr, projected gradient, forwards, steps/s,
tokens/s; evaluations: dev metrics and the optimizer's diagnostics such as HiZOO's log-H statistics; the end:
eval metrics and peak memory) goes to each tracker as scalars named `<event>/<key>` at the record's step, and the
resolved config goes with the run's start. metrics.jsonl stays the record of truth: a tracker that fails is
reported once and dropped, and the run goes on.

    tensorboard  event files in <run>/tensorboard (`tensorboard --logdir runs`)
    wandb        a W&B run named after the run dir, files in <run>/wandb; WANDB_MODE=offline works offline;
                 project from WANDB_PROJECT (default "zoft"); a resumed run continues the same W&B run
    mlflow       an MLflow run named after the run dir, in MLFLOW_TRACKING_URI (default: mlflow's) and
                 MLFLOW_EXPERIMENT_NAME (default "zoft"); config as params; a resumed run continues it
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from zoft.errors import ConfigError

#: tracker → (module to import, package to install)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow-skinny")}
_NOT_SCALARS = {"step", "event"}


def parse(value: str | None) -> tuple[str, ...]:
    """The trackers `--report-to` names (comma-separated; "none" or empty for none); ConfigError otherwise."""
    names = [v.strip().lower() for v in (value or "").split(",") if v.strip()]
    if names in ([], ["none"]):
        return ()
    bad = [n for n in names if n not in TRACKERS]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"--report-to {value}: choose from {', '.join(TRACKERS)} (comma-separated, each once) "
                          "or none")
    return tuple(names)


def check_installed(names: tuple[str, ...]) -> None:
    """Refuse, before any model loads, a tracker whose library is missing, saying what to install."""
    for name in names:
        module, package = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--report-to {name}: the {package} package is not installed; pip install "
                              f"'zoft[{name}]' (or {package}), or drop {name} from --report-to")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics record (nested dicts flattened with '/'), without its step and event."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _NOT_SCALARS:
            continue
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in scalars(value).items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class _TensorBoard:
    def __init__(self, out: Path, config: dict[str, Any], resumed: bool):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        if not resumed:
            import yaml

            self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def log(self, event: str, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{event}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


def _run_id(out: Path, name: str, resumed: bool) -> str | None:
    """The tracker's run id saved in the run dir by the first session, so a resumed run continues it."""
    path = out / f".{name}_run_id"
    return path.read_text().strip() if resumed and path.is_file() else None


class _WandB:
    def __init__(self, out: Path, config: dict[str, Any], resumed: bool):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "zoft"), name=out.name, dir=str(out),
                              config=config, id=_run_id(out, "wandb", resumed), resume="allow")
        (out / ".wandb_run_id").write_text(self.run.id)

    def log(self, event: str, step: int, values: dict[str, float]) -> None:
        self.run.log({f"{event}/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, out: Path, config: dict[str, Any], resumed: bool):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "zoft"))
        run_id = _run_id(out, "mlflow", resumed)
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else out.name)
        (out / ".mlflow_run_id").write_text(run.info.run_id)
        if run_id is None:  # params are immutable in MLflow: log them once
            mlflow.log_params({k: str(v)[:500] for k, v in config.items()})

    def log(self, event: str, step: int, values: dict[str, float]) -> None:
        self.mlflow.log_metrics({f"{event}/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


_CLASSES = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}


class Tracked:
    """A run's metrics log (`zoft.runlog.JsonLines`) that also forwards each record to the trackers.

    Args:
        log: the metrics.jsonl log; its `records` feed loss.png.
        names: the trackers (`parse`).
        out: the run dir.
        config: the resolved config, logged once per tracker run.
        resumed: whether the run resumes a checkpoint (trackers then continue their earlier run).
        warn: called with one line when a tracker fails (it is dropped; the run goes on).
    """

    def __init__(self, log, names: tuple[str, ...], out: Path, config: dict[str, Any], resumed: bool, warn):
        self.log, self.warn = log, warn
        self.trackers: dict[str, Any] = {}
        for name in names:
            try:
                self.trackers[name] = _CLASSES[name](out, config, resumed)
            except Exception as exc:  # a tracker's server or login problem must not stop a training run
                warn(f"--report-to {name}: could not start ({type(exc).__name__}: {exc}); metrics.jsonl only")

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.log.records

    def write(self, record: dict[str, Any]) -> None:
        self.log.write(record)
        values = scalars(record)
        if not values:
            return
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.log(str(record.get("event", "train")), int(record.get("step", 0)), values)
            except Exception as exc:
                self.warn(f"--report-to {name}: logging failed ({type(exc).__name__}: {exc}); dropped it, "
                          "metrics.jsonl goes on")
                self.trackers.pop(name)

    def close(self) -> None:
        for name, tracker in self.trackers.items():
            try:
                tracker.close()
            except Exception as exc:
                self.warn(f"--report-to {name}: closing failed ({type(exc).__name__}: {exc})")
        self.trackers = {}
