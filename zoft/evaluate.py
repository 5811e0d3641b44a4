"""`zoft eval`: score a run, a checkpoint or any base model on a task's eval split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from zoft.checkpoint import STATE_FILE
from zoft.config import TrainConfig, check_keys, validate


@dataclass
class EvalRequest:
    """What `zoft eval` was asked; None fields fall back to the run's config, then to the defaults."""

    model: str
    task: str | None = None
    data_dir: str | None = None
    num_eval: int | None = None
    train_set_seed: int | None = None
    batch_size: int = 16
    dtype: str | None = None
    device: str | None = None
    base: str | None = None  # the base model under an adapter checkpoint (default: the one it was trained on)


def _locate(model: str) -> tuple[str, Path | None, dict[str, Any]]:
    """(weights to load, run dir or None, the run's saved config) for a run dir, a checkpoint or a model id."""
    path = Path(model).expanduser()
    if (path / "config.yaml").is_file() and (path / "best" / STATE_FILE).is_file():
        return str(path / "best"), path, yaml.safe_load((path / "config.yaml").read_text())
    if (path / STATE_FILE).is_file() and (path / "config.yaml").is_file():
        return str(path), None, yaml.safe_load((path / "config.yaml").read_text())
    return model, None, {}


def _load(weights: str, cfg: TrainConfig, base: str | None):
    """A plain model dir (or a merged final/), or an adapter checkpoint rebuilt over its base model."""
    from zoft.config import ConfigError
    from zoft.models import load_model, load_tokenizer
    from zoft.modes import ADAPTER_CONFIG, adapter_kind, attach, base_model_of, load_adapter_into

    kind = adapter_kind(Path(weights)) if Path(weights).is_dir() else None
    if kind is None:
        model, tokenizer, _ = load_model(weights, cfg.dtype, cfg.device)
        return model, tokenizer
    base = base or (cfg.model if cfg.mode == kind else None) or base_model_of(Path(weights))
    quantize = "8bit" if cfg.load_in_8bit else "4bit" if cfg.load_in_4bit else None
    model, _, _ = load_model(base, cfg.dtype, cfg.device, quantize=quantize)
    if kind == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, weights).eval()  # r, α and targets from adapter_config.json
    else:
        n = json.loads((Path(weights) / ADAPTER_CONFIG).read_text())["virtual_tokens"]
        model = attach(model, kind, virtual_tokens=n)
        try:
            load_adapter_into(model, Path(weights))
        except KeyError as exc:
            raise ConfigError(f"{weights}: the {kind} adapter does not fit --base {base} ({exc})") from None
    return model, load_tokenizer(weights)


def run_eval(req: EvalRequest) -> dict[str, Any]:
    """Evaluate and return the report; a run dir also gets it as eval.json."""
    from zoft.scoring import pad_id, encode_examples, evaluate
    from zoft.tasks import load_splits
    from zoft.train import build_task

    weights, run_dir, saved = _locate(req.model)
    given = {"task": req.task, "data_dir": req.data_dir, "num_eval": req.num_eval,
             "train_set_seed": req.train_set_seed, "dtype": req.dtype, "device": req.device}
    values = check_keys({k: v for k, v in saved.items() if v is not None}, f"{req.model}/config.yaml")
    values.update({k: v for k, v in given.items() if v is not None})
    cfg = TrainConfig(**values)
    validate(cfg)
    task = build_task(cfg)
    splits = load_splits(task, cfg.data_dir, num_train=cfg.num_train, num_dev=cfg.num_dev,
                         num_eval=cfg.num_eval, seed=cfg.train_set_seed)
    model, tokenizer = _load(weights, cfg, req.base)
    encoded = encode_examples(tokenizer, splits.eval, cfg.max_length)
    result = evaluate(model, encoded, pad_id(tokenizer), req.batch_size, next(model.parameters()).device)
    report = {"task": cfg.task, "checkpoint": weights, "data": splits.source,
              "eval_accuracy": result["accuracy"], "eval_loss": result["loss"], "num_eval": result["num_examples"]}
    if run_dir is not None:
        (run_dir / "eval.json").write_text(json.dumps(report, indent=1))
    return report
