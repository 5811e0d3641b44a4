"""The training loop behind `zoft train`: one readable function, `train`, plus small helpers.

Protocol (ALGORITHMS.md §8): sample train/dev/eval from the task, evaluate dev every `eval_every` steps (and at
step 0, the zero-shot baseline), keep the checkpoint with the lowest dev loss as `best/`, and score the eval split
(the task's validation split) with the best weights at the end. Each step draws batch t deterministically from
(seed, t), so a resumed run sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from zoft import __version__
from zoft.algos import ALGORITHMS, NonFiniteLossError, trainable_parameters
from zoft.checkpoint import (latest_checkpoint, load_optimizer_state, load_weights_into,
                             prune_checkpoints, read_state, recover, save_checkpoint)
from zoft.config import NON_TRAJECTORY_OPTIONS, ConfigError, TrainConfig, algorithm_options, finalize, to_yaml
from zoft.memory import peak_memory, reset_peak_memory
from zoft.perturb import mix
from zoft.progress import Reporter
from zoft.objectives import Objective
from zoft.scoring import Encoded, encode_examples, evaluate, fit_length, pad_id

log = logging.getLogger(__name__)

# Settings that change the trajectory: a resume must use the same values as the run it continues.
# Algorithm options join them (all but NON_TRAJECTORY_OPTIONS), so a new algorithm's options are checked too.
_TRAJECTORY_KEYS = ("model", "task", "data_dir", "data_file", "num_train", "num_dev", "train_set_seed",
                    "max_length", "algo", "lr", "eps", "weight_decay", "noise", "stochastic_rounding", "exact_bf16",
                    "mode", "lora_r", "lora_alpha", "lora_targets", "virtual_tokens", "prefix_init", "load_in_8bit",
                    "load_in_4bit", "batch_size", "seed", "dtype", "objective", "per_label", "prompt_field",
                    "target_field", "text_field", "label_field", "verbalizer", "template")


def trajectory_keys() -> tuple[str, ...]:
    return _TRAJECTORY_KEYS + tuple(k for k in algorithm_options() if k not in NON_TRAJECTORY_OPTIONS)


TRAJECTORY_FILE = "trajectory.jsonl"
#: short names of the replay scalars in trajectory.jsonl (a 20 000-step MeZO trajectory is ~0.6 MB)
_SHORT = {"projected_grad": "g", "curvature": "c"}


def encode_record(record: dict[str, float]) -> dict[str, float]:
    return {_SHORT.get(k, k): v for k, v in record.items()}


def decode_record(line: dict[str, Any]) -> dict[str, Any]:
    long = {v: k for k, v in _SHORT.items()}
    return {long.get(k, k): v for k, v in line.items() if k != "t"}


class Diverged(Exception):
    """The loss or projected gradient stayed non-finite (or collapsed to 0) for `--max-bad-steps` steps; no bad
    step was applied and the last checkpoint is the last good state. The CLI exits with code 3."""

    code = 3


def _divergence_message(cfg: TrainConfig, count: int, step: int, what: str, checkpoint: Path | None) -> str:
    if cfg.dtype == "float16":
        cause = ("float16 overflow (MeZO and ZO-Bench users report fp16 Llama runs whose loss goes to 0 or NaN)",
                 "rerun with --dtype bfloat16 (or float32)")
    else:
        cause = (f"a learning rate or perturbation too large for this model (--lr {cfg.lr:g}, --eps {cfg.eps:g})",
                 f"lower --lr (e.g. {cfg.lr / 10:g}) or --eps")
    keep = (f"the last good checkpoint is {checkpoint} (continue from it with --resume and the new flags in a "
            f"new --output-dir, or --resume as is)") if checkpoint else "no checkpoint was written yet"
    return (f"training diverged: {what} on {count} consecutive steps (last: step {step}); those steps were not "
            f"applied. Likely cause: {cause[0]}. Fix: {cause[1]}; {keep}")


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint; `code` is the exit code (130/143)."""

    def __init__(self, code: int, checkpoint: Path):
        super().__init__(f"interrupted; saved {checkpoint}")
        self.code, self.checkpoint = code, checkpoint


def build_task(cfg: TrainConfig):
    """The Task object for `cfg.task` (a registered task, or a custom one built from files)."""
    from zoft.tasks import custom_task, get_task

    if cfg.task == "custom" and cfg.target_field is not None:
        from zoft.tasks.custom import custom_generation_task

        return custom_generation_task(cfg.data_file, prompt_field=cfg.prompt_field, target_field=cfg.target_field,
                                      template=cfg.template, eval_file=cfg.eval_file)
    if cfg.task == "custom":
        return custom_task(cfg.data_file, text_field=cfg.text_field, label_field=cfg.label_field,
                           verbalizer=cfg.verbalizer, template=cfg.template, eval_file=cfg.eval_file)
    return get_task(cfg.task)


def build_model(cfg: TrainConfig, model_path: str):
    """(model, tokenizer, path): the base as `cfg` loads it, with the tuning mode's adapters attached (their init
    is seeded by `cfg.seed`, so `zoft replay` rebuilds the same ones)."""
    from zoft.models import load_model

    quantize = "8bit" if cfg.load_in_8bit else "4bit" if cfg.load_in_4bit else None
    dtype, device = cfg.dtype, cfg.device
    if cfg.offload:  # loaded into CPU memory in the GPU's dtype; the Offloader moves what is not a block
        from zoft.models import resolve_device, resolve_dtype

        dtype = str(resolve_dtype(cfg.dtype, resolve_device(cfg.device))).removeprefix("torch.")
        device = "cpu"
    model, tokenizer, model_path = load_model(model_path, dtype, device, quantize=quantize,
                                              trust_remote_code=cfg.trust_remote_code, device_map=cfg.device_map)
    if cfg.mode != "full":
        from zoft.modes import attach

        try:
            model = attach(model, cfg.mode, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                           lora_targets=tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip()),
                           virtual_tokens=cfg.virtual_tokens, prefix_init=cfg.prefix_init, seed=cfg.seed,
                           adapter_dtype=torch.float32 if quantize else None)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return model, tokenizer, model_path


def build_optimizer(cfg: TrainConfig, named):
    """The configured algorithm over the trainable tensors (stochastic rounding and exact-bf16 residuals set)."""
    algo_cls = ALGORITHMS[cfg.algo]
    opt = algo_cls(named, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, seed=cfg.seed, noise=cfg.noise,
                   **{k: getattr(cfg, k) for k in algo_cls.config_keys})
    opt.stochastic_rounding = cfg.stochastic_rounding
    # an offloaded run rounds tensor by tensor (the order it visits them in is the blocks'); so does its replay
    opt.tensorwise = cfg.offload is not None
    if cfg.exact_bf16:
        opt.keep_residuals()
    return opt


def batch_indices(step: int, batch_size: int, num_train: int, seed: int) -> list[int]:
    """Example indices of batch `step`: a fresh permutation per epoch, a pure function of (seed, step)."""
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, num_train)
        perm = _epoch_permutation(seed, epoch, num_train)
        out.append(int(perm[pos]))
    return out


_PERM_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    key = (seed, epoch, n)
    if key not in _PERM_CACHE:
        if len(_PERM_CACHE) > 4:
            _PERM_CACHE.clear()
        _PERM_CACHE[key] = np.random.RandomState(mix(seed, epoch, 0xDA7A) % (2**32)).permutation(n)
    return _PERM_CACHE[key]


def prepare_output_dir(cfg: TrainConfig) -> Path | None:
    """Check the output dir against --overwrite/--resume; returns the checkpoint to resume from, if any."""
    out = Path(cfg.output_dir)
    if cfg.resume:
        for note in recover(out):
            log.warning("--resume: %s in %s", note, out)
        ckpt = latest_checkpoint(out, report=True)
        if ckpt is None:
            log.warning("--resume: no checkpoint in %s yet; starting from step 0", out)
        else:
            _check_resume_config(cfg, ckpt)
        return ckpt
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"--output-dir {out} already exists; pass --overwrite to replace it or --resume "
                          "to continue it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file; choose a directory")
    return None


# What a key meant in runs saved before it existed (zoft 0.1 drew z with torch.randn only).
_LEGACY = {"objective": "ce", "per_label": False, "prompt_field": None, "target_field": None, "noise": "randn",
           "stochastic_rounding": False, "exact_bf16": False, "mode": "full", "lora_r": 8, "lora_alpha": 16.0, "lora_targets": "q_proj,v_proj", "virtual_tokens": None, "prefix_init": "activations",
           "load_in_8bit": False, "load_in_4bit": False}


def _check_resume_config(cfg: TrainConfig, ckpt: Path) -> None:
    saved = yaml.safe_load((ckpt / "config.yaml").read_text())
    saved = {**_LEGACY, **saved}
    diffs = [f"{k} ({saved.get(k)!r} in the run, {getattr(cfg, k)!r} now)" for k in trajectory_keys()
             if saved.get(k) != getattr(cfg, k)]
    if diffs:
        raise ConfigError(f"--resume: {ckpt.parent} was trained with other settings: {'; '.join(diffs)}; "
                          "use the same flags or a new --output-dir")


@contextmanager
def _stop_signals():
    """First SIGINT/SIGTERM sets a flag the loop checks between steps (weights are never left perturbed);
    a second one interrupts at once."""
    flag: dict[str, int] = {}
    previous = {}

    def handler(signum, frame):
        if flag:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        flag["code"] = 128 + signum

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


class _Discard:
    """metrics.jsonl of ranks other than 0: they log nothing."""

    records: list = []

    def write(self, record: dict[str, Any]) -> None:
        pass


class _Metrics:
    """Appends JSON lines to metrics.jsonl (or trajectory.jsonl); with `keep`, also holds them for the plot."""

    def __init__(self, path: Path, keep_until_step: int | None, step_key: str = "step", keep: bool = True):
        self.path, self.keep = path, keep
        self.records: list[dict[str, Any]] = []
        if keep_until_step is not None and path.is_file():  # resume: drop what the lost steps logged
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


def train(cfg: TrainConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run a ZO fine-tune as configured; returns the run summary (also written to summary.json)."""
    from zoft.models import resolve_device, resolve_dtype, resolve_model_path
    from zoft.tasks import load_splits
    from zoft.plot import plot_metrics

    from zoft import distributed

    cfg = finalize(cfg)
    world = distributed.init(cfg.device)
    if world.active:
        if not ALGORITHMS[cfg.algo].replayable:
            raise ConfigError(f"--algo {cfg.algo} backpropagates: data-parallel zoft all-reduces losses, not "
                              "gradients; run it in one process")
        if cfg.batch_size < world.size:
            raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than the {world.size} ranks; each rank "
                              "needs at least one example")
        if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()):
            cfg.device = f"cuda:{world.local_rank}"
            torch.cuda.set_device(world.local_rank)
        distributed.check_same(cfg.seed, "run seed")
        if cfg.offload:
            raise ConfigError("--offload cpu runs in one process: drop --nproc (or torchrun) or --offload")
    reporter = reporter or Reporter()
    if not world.main:
        reporter = Reporter(quiet=True)
    out = Path(cfg.output_dir)
    task = build_task(cfg)  # custom tasks validate their files here, before any model loads
    # rank 0 checks the run dir (and cleans up after a crash) before the others look for a checkpoint in it
    resume_from = prepare_output_dir(cfg) if world.main else None
    if world.active:
        distributed.barrier()
        if not world.main and cfg.resume:
            resume_from = latest_checkpoint(out)
    device = resolve_device(cfg.device)  # fail on --device cuda without a GPU before reading any data
    if cfg.offload:
        from zoft import offload

        try:
            offload.require_cuda(device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.exact_bf16 and resolve_dtype(cfg.dtype, device) != torch.bfloat16:
        raise ConfigError(f"--exact-bf16 applies to bfloat16 weights, and --dtype {cfg.dtype} means "
                          f"{str(resolve_dtype(cfg.dtype, device)).removeprefix('torch.')} on {device.type}; "
                          "pass --dtype bfloat16")
    if cfg.noise == "philox":
        from zoft import kernels

        if not kernels.available(device):
            raise ConfigError(f"--noise philox: the fused Triton kernel cannot run here: "
                              f"{kernels.unavailable_reason()}; use --noise table")
    resolve_model_path(cfg.model, convert=False)  # cheap checks of --model before reading any data
    splits = load_splits(task, cfg.data_dir, num_train=cfg.num_train, num_dev=cfg.num_dev,
                         num_eval=cfg.num_eval, seed=cfg.train_set_seed, per_label=cfg.per_label,
                         eval_file=cfg.eval_file)
    if cfg.batch_size > len(splits.train):
        raise ConfigError(f"--batch-size {cfg.batch_size} exceeds the {len(splits.train)} train examples sampled; "
                          "lower --batch-size or raise --num-train")
    model_path = resolve_model_path(cfg.model)  # may convert the embedded model once (~15 s)
    if cfg.num_dev is None:
        cfg.num_dev = len(splits.dev)
    reporter.info(f"data: {splits.source}: {len(splits.train)} train / {len(splits.dev)} dev / "
                  f"{len(splits.eval)} eval")
    model, tokenizer, model_path = build_model(cfg, model_path)
    device = device if cfg.offload else next(model.parameters()).device
    pad = pad_id(tokenizer)
    max_length = fit_length(model, cfg.max_length, cfg.virtual_tokens or 0)
    train_enc = encode_examples(tokenizer, splits.train, max_length)
    dev_enc = encode_examples(tokenizer, splits.dev, max_length)
    eval_enc = encode_examples(tokenizer, splits.eval, max_length)

    metric = task.metric
    objective = Objective(cfg.objective, task.objective, pad, device, tokenizer)
    named = trainable_parameters(model)
    opt = build_optimizer(cfg, named)
    reset_peak_memory(device)  # from here on: what training and evaluation need, not what loading took
    if not cfg.exact_bf16 and any(p.dtype == torch.bfloat16 for _, p in named) and cfg.steps >= 100:
        # measured (bench/low_precision.py): 0.39 % RMS per perturb/restore cycle, growing as √steps
        log.warning("bf16 weights random-walk under ZO perturb/restore passes (%.0f %% RMS after %d steps on "
                    "SmolLM2, estimated); --exact-bf16 removes the drift for 2 more bytes per weight",
                    0.39 * cfg.steps ** 0.5, cfg.steps)
    n_trainable = sum(p.numel() for _, p in named)

    config_yaml = f"# zoft {__version__} resolved config; rerun with: zoft train {out / 'config.yaml'}\n" + \
        to_yaml(cfg)
    if world.main:
        if cfg.overwrite and out.exists():
            shutil.rmtree(out)  # only now: a bad flag or a failed model load above loses nothing
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_yaml)

    state: dict[str, Any] = {"step": 0, "best_dev_loss": math.inf, "best_dev_metric": None, "best_step": None,
                             "elapsed_s": 0.0, "train_s": 0.0, "zero_shot": {}}
    if resume_from is not None:
        load_weights_into(model, resume_from)
        opt.load_state_dict(load_optimizer_state(resume_from))
        state = read_state(resume_from)
        if "best_dev_accuracy" in state:  # runs saved before generation tasks had one metric key
            state["best_dev_metric"] = state.pop("best_dev_accuracy")
        reporter.info(f"resumed from {resume_from} at step {state['step']}")
    offloader = None
    if cfg.offload:
        from zoft.offload import Offloader

        try:
            offloader = Offloader(model, opt, device)
        except ValueError as exc:
            raise ConfigError(f"--offload cpu: {exc}") from None
        reporter.info(f"offload: {len(offloader.blocks)} blocks of {offloader.block_bytes() / 2**20:,.0f} MiB in "
                      f"CPU memory, {offloader.resident_bytes() / 2**20:,.0f} MiB resident on {device}")
    kept = state["step"] if resume_from is not None else None
    metrics = _Metrics(out / "metrics.jsonl", kept) if world.main else _Discard()
    # the seed-trajectory: with the base model and config.yaml it rebuilds the weights at any step (zoft replay)
    trajectory = _Metrics(out / TRAJECTORY_FILE, kept, "t", keep=False) if opt.replayable and world.main else None
    if resume_from is None:
        metrics.write({"event": "start", "step": 0, "zoft": __version__, "model_path": model_path,
                       "algo": cfg.algo, "trainable_params": n_trainable, "state_bytes": opt.state_bytes(),
                       "state_breakdown": opt.state_breakdown(), "residual_bytes": opt.residual_bytes(),
                       "dtype": str(next(model.parameters()).dtype), "device": str(device),
                       "data": splits.source, "world_size": world.size,
                       "comm_bytes_per_step": distributed.LOSS_REDUCE_BYTES * opt.forwards_per_step + 8
                       if world.active else 0,
                       **({"offload": cfg.offload, "offload_blocks": len(offloader.blocks),
                           "offload_block_bytes": offloader.block_bytes(),
                           "offload_resident_bytes": offloader.resident_bytes()} if offloader else {})})
    reporter.info(f"{cfg.algo} on {n_trainable:,} trainable params ({model_path}), "
                  f"{opt.forwards_per_step} forwards/step, optimizer state {_state_text(opt)}")

    def closure_for(indices: list[int], step: int):
        if world.active:  # this rank's shard of the global batch; the loss is summed over all shards
            indices = indices[world.rank::world.size]
        chunks = [[train_enc[i] for i in indices[j:j + cfg.micro_batch_size]]
                  for j in range(0, len(indices), cfg.micro_batch_size)]
        batches = objective.batches(chunks)
        if not world.active:
            return lambda: objective.loss(model, batches)

        def global_loss():
            total, count = distributed.all_reduce_sum([float(v) for v in objective.loss_parts(model, batches)], step)
            return total / count

        return global_loss

    def score(encoded: list[Encoded]) -> dict[str, Any]:
        result = evaluate(model, encoded, pad, cfg.eval_batch_size, device, task.objective, tokenizer)
        # model selection: lowest dev loss under CE; under a non-differentiable objective, that objective
        result["selection"] = result["loss"] if objective.differentiable else -result[metric]
        return result

    def run_eval(step: int) -> dict[str, Any]:
        result = score(dev_enc)
        rec = {"event": "eval", "step": step, f"dev_{metric}": result[metric], "dev_loss": result["loss"],
               "forwards": opt.forwards, "elapsed_s": round(state["elapsed_s"], 3), **opt.diagnostics()}
        metrics.write(rec)
        reporter.info(f"step {step}: dev {metric} {result[metric]:.4f}, dev loss {result['loss']:.4f}")
        return result

    def save(path: Path) -> None:
        if offloader is not None:
            offloader.flush()  # the last step's update is still pending in the blocks' next visit
        if world.main:
            save_checkpoint(path, model, tokenizer, opt, state, config_yaml)

    start_step = state["step"]
    if start_step == 0 and len(dev_enc) and cfg.eval_every > 0 and world.main:
        zs = run_eval(0)
        state["zero_shot"][f"dev_{metric}"] = zs[metric]
        if len(eval_enc):
            zs_eval = score(eval_enc)
            state["zero_shot"][f"eval_{metric}"] = zs_eval[metric]
            metrics.write({"event": "eval", "step": 0, f"eval_{metric}": zs_eval[metric],
                           "eval_loss": zs_eval["loss"], "forwards": 0, "elapsed_s": 0.0})
        state.update(best_dev_loss=zs["selection"], best_dev_metric=zs[metric], best_step=0)
        save(out / "best")

    window: list[float] = []
    zero_losses = bad_steps = 0
    t_last = time.perf_counter()
    train_s_start = state["train_s"]
    with _stop_signals() as stop, reporter.progress(cfg.steps, start_step) as bar:
        for step in range(start_step, cfg.steps):
            t_step = time.perf_counter()
            try:
                loss = opt.step(closure_for(batch_indices(step, cfg.batch_size, len(train_enc), cfg.seed),
                                            step + 1))
            except NonFiniteLossError as exc:
                # the optimizer restored the weights: this step applies nothing. Its seed is spent (opt.t moves
                # on), so a resumed run meets the same steps with the same seeds.
                opt.t = step + 1
                bad_steps += 1
                metrics.write({"event": "bad_step", "step": step + 1, "reason": str(exc).split(";")[0]})
                log.warning("step %d skipped: %s", step + 1, str(exc).split(";")[0])
                if bad_steps >= cfg.max_bad_steps:
                    raise Diverged(_divergence_message(cfg, bad_steps, step + 1, str(exc).split(";")[0],
                                                       latest_checkpoint(out))) from None
                loss = None
                if trajectory is not None:
                    trajectory.write({"t": step + 1, "skipped": True})
            else:
                bad_steps = 0
                if trajectory is not None:
                    trajectory.write({"t": step + 1, **encode_record(opt.trajectory_record())})
            state["train_s"] += time.perf_counter() - t_step  # steps only: evals and saves excluded from it/s
            # fp16 LLaMA runs are reported to collapse to exactly-zero loss (ALGORITHMS.md §1.8)
            zero_losses = zero_losses + 1 if loss == 0.0 and objective.differentiable else 0
            if zero_losses >= 20:
                raise Diverged(_divergence_message(cfg, 20, step + 1, "the loss has been exactly 0.0 for 20 steps",
                                                   latest_checkpoint(out)))
            if loss is not None:
                window.append(loss)
            now = time.perf_counter()
            state["elapsed_s"] += now - t_last
            t_last = now
            state["step"] = done = step + 1
            bar.update(done, loss if loss is not None else float("nan"), opt.param_groups[0]["lr"])
            if (done % cfg.log_every == 0 or done == cfg.steps) and window:
                rate = (done - start_step) / max(state["train_s"] - train_s_start, 1e-9)
                rec = {"event": "train", "step": done, "loss": sum(window) / len(window),
                       "lr": opt.param_groups[0]["lr"], "projected_grad": opt.last.get("projected_grad"),
                       "forwards": opt.forwards, "elapsed_s": round(state["elapsed_s"], 3),
                       "steps_per_s": round(rate, 4)}
                metrics.write(rec)
                bar.log_line(done, cfg.steps, rec)
                window.clear()
            if cfg.eval_every and done % cfg.eval_every == 0 and len(dev_enc) and world.main:
                result = run_eval(done)
                if result["selection"] < state["best_dev_loss"]:
                    state.update(best_dev_loss=result["selection"], best_dev_metric=result[metric],
                                 best_step=done)
                    save(out / "best")
                plot_metrics(metrics.records, out / "loss.png")
            if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps and world.main:
                save(out / f"checkpoint-{done}")
                prune_checkpoints(out, cfg.keep_last)
            if world.active:  # a signal reaching one rank stops every rank at the same step (one more scalar)
                stop_all = distributed.all_reduce_sum([float(stop.get("code", 0))], done)[0]
                if stop_all and not stop:
                    stop["code"] = int(stop_all) if int(stop_all) in (130, 143) else 143
            if stop and done < cfg.steps:
                path = out / f"checkpoint-{done}"
                save(path)
                raise Interrupted(stop["code"], path)

    if world.active:  # (offloaded runs are single-process: save() flushes their pending update)
        identical = distributed.digests_agree(distributed.parameter_digest(p for _, p in named))
        if not world.main:
            # wait for rank 0 to finish its final save and eval: tearing the group down under it aborts gloo
            distributed.barrier()
            distributed.shutdown()
            return {"rank": world.rank, "ranks_identical": identical}
    save(out / "final")
    if state["best_step"] is None:  # no dev evaluation: the final weights are the best we know
        state["best_step"] = cfg.steps
        shutil.copytree(out / "final", out / "best", dirs_exist_ok=True)
    summary = _final_eval(cfg, state, model, eval_enc, out, splits.eval, score, metric)
    summary["peak_memory_bytes"] = peak_memory(device)
    if world.active:
        summary.update(world_size=world.size, ranks_identical=identical)
    if cfg.merge:
        _write_merged(model, tokenizer, out / "final")
    metrics.write({"event": "end", "step": cfg.steps, **summary["eval"],
                   "peak_memory_bytes": summary["peak_memory_bytes"]})
    plot_metrics(metrics.records, out / "loss.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if world.active:
        distributed.barrier()
        distributed.shutdown()
    return summary


def _write_merged(model, tokenizer, final: Path) -> None:
    """final/ becomes a plain HF model with the final LoRA weights merged in; the adapter moves to final/adapter/
    (where a resume finds it). Done last: merging changes the in-memory model."""
    from zoft.checkpoint import load_weights_into

    load_weights_into(model, final)  # the final adapter (the final eval may have loaded best/)
    tmp = final.parent / ".final.merged.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.merge_and_unload().save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.copytree(final, tmp / "adapter")
    old = final.parent / ".final.old"
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _state_text(opt) -> str:
    """'12,345 B (factors 12,000 B, moments 345 B)': the persistent state a run holds beyond the weights."""
    parts = opt.state_breakdown()
    detail = f" ({', '.join(f'{k} {v:,} B' for k, v in parts.items())})" if len(parts) > 1 else ""
    residuals = f", exact-bf16 residuals {opt.residual_bytes():,} B" if opt.residuals else ""
    return f"{opt.state_bytes():,} B{detail}{residuals}"


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


def _final_eval(cfg: TrainConfig, state: dict[str, Any], model, eval_enc: list[Encoded], out: Path, examples,
                score, metric: str) -> dict[str, Any]:
    """Score the eval split with the best weights (loaded in place) and write eval.json."""
    if state["best_step"] != cfg.steps:
        load_weights_into(model, out / "best")
    result = score(eval_enc) if eval_enc else {}
    report = eval_report(result, metric, examples, cfg.task, str(out / "best"), out)
    report["best_step"] = state["best_step"]
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    return {"output_dir": str(out), "config": dataclasses.asdict(cfg), "metric": metric,
            "zero_shot": state["zero_shot"], "best_step": state["best_step"],
            f"best_dev_{metric}": state["best_dev_metric"],
            "best_dev_loss": state["best_dev_loss"] if math.isfinite(state["best_dev_loss"]) else None,
            "eval": report, "elapsed_s": round(state["elapsed_s"], 2)}
