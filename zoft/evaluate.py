"""`zoft eval`: score a run, a checkpoint or any base model on a task's eval split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoft.checkpoint import STATE_FILE, CheckpointDamagedError, check_intact
from zoft.config import TrainConfig, check_keys, read_mapping, validate
from zoft.errors import ConfigError


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
    icl: int = 0             # in-context demonstrations in front of every eval prompt (MeZO's ICL baseline)
    eval_file: str | None = None
    output: str | None = None  # write the report (and generation predictions) here
    trust_remote_code: bool = False


def _locate(model: str) -> tuple[str, Path | None, dict[str, Any]]:
    """(weights to load, run dir or None, the run's saved config) for a run dir, a checkpoint or a model id."""
    path = Path(model).expanduser()
    if (path / "config.yaml").is_file() and (path / "best" / STATE_FILE).is_file():
        return str(path / "best"), path, read_mapping(path / "config.yaml", "run config")
    if (path / STATE_FILE).is_file() and (path / "config.yaml").is_file():
        return str(path), None, read_mapping(path / "config.yaml", "run config")
    return model, None, {}


def _load(weights: str, cfg: TrainConfig, base: str | None):
    """A plain model dir (or a merged final/), or an adapter checkpoint rebuilt over its base model."""
    from zoft.models import load_model, load_tokenizer
    from zoft.modes import ADAPTER_CONFIG, adapter_kind, attach, base_model_of, load_adapter_into

    kind = adapter_kind(Path(weights)) if Path(weights).is_dir() else None
    if kind is None:
        model, tokenizer, _ = load_model(weights, cfg.dtype, cfg.device, trust_remote_code=cfg.trust_remote_code)
        return model, tokenizer
    base = base or (cfg.model if cfg.mode == kind else None) or base_model_of(Path(weights))
    from zoft.builders import quantization

    quantize = "4bit-scales" if kind == "scales" else quantization(cfg)  # trained scales need an NF4 base
    model, _, _ = load_model(base, cfg.dtype, cfg.device, quantize=quantize, trust_remote_code=cfg.trust_remote_code)
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
    return model, load_tokenizer(weights, cfg.trust_remote_code)


#: MeZO's in-context format: demonstrations (prompt + gold candidate, stripped) joined by a blank line, and a
#: blank line before the test prompt
ICL_SEPARATOR = "\n\n"


def icl_context(demonstrations) -> str:
    """The text put in front of every eval prompt for `--icl K`."""
    return "".join(d.demonstration() + ICL_SEPARATOR for d in demonstrations)


def run_eval(req: EvalRequest) -> dict[str, Any]:
    """Evaluate and return the report; a run dir also gets it as eval.json (eval_icl<K>.json with --icl)."""
    from zoft.builders import build_task
    from zoft.scoring import encode_examples, evaluate, fit_length, pad_id
    from zoft.tasks import load_splits

    # a path (not a hub id "org/name"): starts like one, or has more than one separator
    local = req.model.startswith((".", "/", "~")) or req.model.rstrip("/").count("/") > 1
    if local and not Path(req.model).expanduser().exists():  # the positional argument, not a --model flag
        raise ConfigError(f"MODEL {req.model}: no such directory; pass a run dir, a checkpoint or model dir, or "
                          "a hub id like facebook/opt-1.3b")
    weights, run_dir, saved = _locate(req.model)
    if Path(weights, STATE_FILE).is_file():  # a zoft checkpoint: its bytes must be the ones it was saved with
        try:
            check_intact(Path(weights))
        except CheckpointDamagedError as exc:
            raise ConfigError(f"{exc}; evaluate another checkpoint of the run or retrain") from None
    given = {"task": req.task, "data_dir": req.data_dir, "num_eval": req.num_eval,
             "train_set_seed": req.train_set_seed, "dtype": req.dtype, "device": req.device}
    values = check_keys({k: v for k, v in saved.items() if v is not None}, f"{req.model}/config.yaml")
    values.update({k: v for k, v in given.items() if v is not None})
    if req.eval_file is not None:
        values["eval_file"] = req.eval_file
    if req.trust_remote_code:
        values["trust_remote_code"] = True
    cfg = TrainConfig(**values)
    validate(cfg)
    if req.icl < 0:
        raise ConfigError(f"--icl must be >= 0 (got {req.icl})")
    task = build_task(cfg)
    num_train = max(cfg.num_train, req.icl) if not cfg.per_label else cfg.num_train
    splits = load_splits(task, cfg.data_dir, num_train=num_train, num_dev=cfg.num_dev, num_eval=cfg.num_eval,
                         seed=cfg.train_set_seed, per_label=cfg.per_label, eval_file=cfg.eval_file)
    if req.icl > len(splits.train):
        raise ConfigError(f"--icl {req.icl}: only {len(splits.train)} train examples to draw demonstrations from; "
                          "lower --icl")
    out_dir = Path(req.output) if req.output else run_dir
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = _load(weights, cfg, req.base)
    # the first K of the seeded train sample, one set for every eval example (MeZO's default ICL setting)
    context = icl_context(splits.train[:req.icl])
    virtual = getattr(model, "n", 0) if getattr(model, "mode", None) in ("prefix", "prompt") else 0
    encoded = encode_examples(tokenizer, splits.eval, fit_length(model, cfg.max_length, virtual), context=context)
    result = evaluate(model, encoded, pad_id(tokenizer), req.batch_size, next(model.parameters()).device,
                      task.objective, tokenizer)
    report = eval_report(result, task.metric, splits.eval, cfg.task, weights, out_dir)
    report.update(data=splits.source, icl=req.icl)
    if out_dir is not None:
        name = "eval.json" if req.icl == 0 else f"eval_icl{req.icl}.json"
        (out_dir / name).write_text(json.dumps(report, indent=1))
    return report


def eval_report(result: dict[str, Any], metric: str, examples, task: str, checkpoint: str,
                out: Path | None) -> dict[str, Any]:
    """The eval.json record of a scored split; generation tasks also write predictions.jsonl beside it."""
    report = {"task": task, "checkpoint": checkpoint, "metric": metric, f"eval_{metric}": result.get(metric),
              "eval_loss": result.get("loss"), "num_eval": result.get("num_examples", 0)}
    if "exact_match" in result:
        report["eval_exact_match"] = result["exact_match"]
    if "predictions" in result and out is not None:
        from zoft.tasks.metrics import best_f1

        lines = [json.dumps({"prompt_end": ex.prompt[-200:], "prediction": pred, "answers": list(ex.answers),
                             "f1": best_f1(pred, ex.answers)})
                 for ex, pred in zip(examples, result["predictions"])]
        (out / "predictions.jsonl").write_text("".join(line + "\n" for line in lines))
        report["predictions"] = str(out / "predictions.jsonl")
    return report
