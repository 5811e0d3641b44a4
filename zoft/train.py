"""The training loop behind `zoft train`, read top to bottom: prepare → steps → finish.

Protocol (MeZO's, docs/algorithms.md "Task protocol"): sample train/dev/eval from the task, evaluate dev every
`eval_every` steps (and at step 0, the zero-shot baseline), keep the checkpoint with the lowest dev loss as
`best/`, and score the eval split (the task's validation split) with the best weights at the end. Each step draws
batch t deterministically from (seed, t), so a resumed run sees exactly the batches the uninterrupted run would
have. What the loop is built from lives elsewhere: `zoft.builders` (task, placement, model, optimizer),
`zoft.rundir` (the output dir and resume checks), `zoft.runstate` (the state between steps), `zoft.trajectory`,
and `zoft.distributed.World`, whose single-process form does nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoft import __version__, trajectory
from zoft.algos import NonFiniteLossError, trainable_parameters
from zoft.builders import Placement, build_model, build_optimizer, build_task, place
from zoft.checkpoint import latest_checkpoint, link_tree, load_optimizer_state, load_weights_into, \
    prune_checkpoints, read_state, save_checkpoint, share_files
from zoft.config import TrainConfig, finalize, to_yaml
from zoft.errors import ConfigError
from zoft.memory import peak_memory, reset_peak_memory
from zoft.perturb import mix
from zoft.progress import Reporter
from zoft.runlog import Discard, JsonLines
from zoft.runstate import RunState
from zoft.scoring import evaluate

log = logging.getLogger(__name__)


class Diverged(Exception):
    """The loss or projected gradient stayed non-finite (or collapsed to 0) for `--max-bad-steps` steps; no bad
    step was applied and the last checkpoint is the last good state. The CLI exits with code 3."""

    code = 3


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint; `code` is the exit code (130/143)."""

    def __init__(self, code: int, checkpoint: Path):
        super().__init__(f"interrupted; saved {checkpoint}")
        self.code, self.checkpoint = code, checkpoint


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


@dataclass
class Run:
    """Everything a prepared run holds; `steps` and `finish` do the rest."""

    cfg: TrainConfig
    world: Any                      # zoft.distributed.World
    reporter: Reporter
    out: Path
    task: Any
    splits: Any
    placement: Placement
    device: torch.device
    model: Any
    tokenizer: Any
    opt: Any
    objective: Any
    encoded: dict[str, list]        # "train", "dev", "eval" → encoded examples
    pad: int
    state: RunState = field(default_factory=RunState)
    metrics: Any = None             # JsonLines of metrics.jsonl (Discard on ranks other than 0)
    trajectory: Any = None          # JsonLines of trajectory.jsonl, or None (first-order runs, other ranks)
    config_yaml: str = ""

    @property
    def metric(self) -> str:
        return self.task.metric


def train(cfg: TrainConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run a ZO fine-tune as configured; returns the run summary (also written to summary.json). Rank 0 holds
    the output dir's lock (`zoft.runlock`) for the whole run, so a second writer is refused."""
    from zoft.runlock import RunLock

    cfg = finalize(cfg)
    main = int(os.environ.get("RANK", "0")) == 0
    with RunLock(Path(cfg.output_dir)) if main else contextlib.nullcontext():
        run = prepare(cfg, reporter)
        try:
            steps(run)
            return finish(run)
        finally:
            run.metrics.close()  # trackers flush and end their runs, also after Ctrl-C or a diverged run


# -- prepare -------------------------------------------------------------------------------------------------
def prepare(cfg: TrainConfig, reporter: Reporter | None = None) -> Run:
    """Check everything a user can get wrong before loading the model, load it, and open (or resume) the run
    dir. Nothing is written, or overwritten, before the model has loaded."""
    from zoft import distributed, rundir
    from zoft.models import resolve_model_path
    from zoft.objectives import Objective
    from zoft.scoring import encode_examples, fit_length, pad_id

    cfg = finalize(cfg)
    world = distributed.init(cfg.device)
    world.setup(cfg)
    reporter = (reporter or Reporter()) if world.main else Reporter(quiet=True)
    task = build_task(cfg)  # custom tasks validate their files here, before any model loads
    # rank 0 checks the run dir (and cleans up after a crash) before the others look for a checkpoint in it
    resume_from = rundir.check(cfg) if world.main else None
    world.barrier()
    if not world.main and cfg.resume:
        resume_from = latest_checkpoint(Path(cfg.output_dir), verify=True)
    placement = place(cfg)
    resolve_model_path(cfg.model, convert=False)  # cheap checks of --model before reading any data
    splits = _load_splits(cfg, task)
    data = splits.digests()
    if resume_from is not None:
        _check_same_data(resume_from, data, splits.source)
    model_path = resolve_model_path(cfg.model)  # may convert the embedded model once (~15 s)
    reporter.info(f"data: {splits.source}: {len(splits.train)} train / {len(splits.dev)} dev / "
                  f"{len(splits.eval)} eval")
    model, tokenizer, model_path = build_model(cfg, model_path, placement)
    device = placement.device if cfg.offload else next(model.parameters()).device
    pad = pad_id(tokenizer)
    max_length = fit_length(model, cfg.max_length, cfg.virtual_tokens or 0)
    encoded = {name: encode_examples(tokenizer, getattr(splits, name), max_length)
               for name in ("train", "dev", "eval")}
    named = trainable_parameters(model)
    opt = build_optimizer(cfg, named)
    reset_peak_memory(device)  # from here on: what training and evaluation need, not what loading took
    _warn_about_bf16_drift(cfg, named)
    run = Run(cfg, world, reporter, Path(cfg.output_dir), task, splits, placement, device, model, tokenizer, opt,
              Objective(cfg.objective, task.objective, pad, device, tokenizer), encoded, pad)
    _open(run, resume_from, model_path)
    run.state.data = data
    return run


def _check_same_data(ckpt: Path, data: dict[str, str], source: str) -> None:
    """Refuse to resume on other train or dev examples than the run was trained on (a data file edited in place,
    another sample): the run would silently continue into another trajectory or select on another dev set. The
    eval set only scores the result, and --num-eval may change on a resume."""
    saved = read_state(ckpt).get("data") or {}  # checkpoints saved before the digests existed have none
    changed = [name for name in ("train", "dev") if name in saved and saved[name] != data[name]]
    if changed:
        raise ConfigError(f"--resume: the {'/'.join(changed)} examples read now ({source}) differ from those "
                          f"{ckpt.parent} was trained on; restore the data the run used, or start a new "
                          "--output-dir")


def _load_splits(cfg: TrainConfig, task):
    from zoft.tasks import load_splits

    splits = load_splits(task, cfg.data_dir, num_train=cfg.num_train, num_dev=cfg.num_dev, num_eval=cfg.num_eval,
                         seed=cfg.train_set_seed, per_label=cfg.per_label, eval_file=cfg.eval_file)
    if cfg.batch_size > len(splits.train):
        raise ConfigError(f"--batch-size {cfg.batch_size} exceeds the {len(splits.train)} train examples sampled; "
                          "lower --batch-size or raise --num-train")
    if cfg.num_dev is None:
        cfg.num_dev = len(splits.dev)
    return splits


def _warn_about_bf16_drift(cfg: TrainConfig, named) -> None:
    if not cfg.exact_bf16 and any(p.dtype == torch.bfloat16 for _, p in named) and cfg.steps >= 100:
        # measured (bench/low_precision.py, 2-core CPU): 0.39 % RMS per perturb/restore cycle, growing as √steps
        log.warning("bf16 weights random-walk under ZO perturb/restore passes (%.0f %% RMS after %d steps on "
                    "SmolLM2, estimated); --exact-bf16 removes the drift for 2 more bytes per weight",
                    0.39 * cfg.steps ** 0.5, cfg.steps)


def _open(run: Run, resume_from: Path | None, model_path: str) -> None:
    """Write config.yaml, restore a checkpoint, stream the blocks if offloading, open the logs."""
    cfg, opt, out = run.cfg, run.opt, run.out
    run.config_yaml = f"# zoft {__version__} resolved config; rerun with: zoft train {out / 'config.yaml'}\n" + \
        to_yaml(cfg)
    if run.world.main:
        if cfg.overwrite and out.exists():
            shutil.rmtree(out)  # only now: a bad flag or a failed model load above loses nothing
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(run.config_yaml)
    if resume_from is not None:
        load_weights_into(run.model, resume_from)
        opt.load_state_dict(load_optimizer_state(resume_from))
        run.state = RunState.from_dict(read_state(resume_from))
        run.reporter.info(f"resumed from {resume_from} at step {run.state.step}")
    offload = {}
    if cfg.offload:
        offload = _attach_offload(run)
    kept = run.state.step if resume_from is not None else None
    run.metrics = _metrics_log(run, kept) if run.world.main else Discard()
    # the seed trajectory: with the base model and config.yaml it rebuilds the weights at any step (zoft replay)
    run.trajectory = trajectory.writer(out, kept) if opt.replayable and run.world.main else None
    n_trainable = sum(p.numel() for p in opt.tensors)
    if resume_from is None:
        run.metrics.write({"event": "start", "step": 0, "zoft": __version__, "model_path": model_path,
                           "algo": cfg.algo, "trainable_params": n_trainable, "state_bytes": opt.state_bytes(),
                           "state_breakdown": opt.state_breakdown(), "residual_bytes": opt.residual_bytes(),
                           "dtype": str(next(run.model.parameters()).dtype), "device": str(run.device),
                           "data": run.splits.source, "world_size": run.world.size,
                           "comm_bytes_per_step": run.world.comm_bytes_per_step(opt.forwards_per_step), **offload})
    run.reporter.info(f"{cfg.algo} on {n_trainable:,} trainable params ({model_path}), "
                      f"{opt.forwards_per_step} forwards/step, optimizer state {_state_text(opt)}")


def _attach_offload(run: Run) -> dict[str, Any]:
    from zoft.offload import attach

    try:
        offloader = attach(run.model, run.opt, run.device)
    except ValueError as exc:
        raise ConfigError(f"--offload cpu: {exc}") from None
    run.reporter.info(f"offload: {len(offloader.blocks)} blocks of {offloader.block_bytes() / 2**20:,.0f} MiB in "
                      f"CPU memory, {offloader.resident_bytes() / 2**20:,.0f} MiB resident on {run.device}")
    return {"offload": run.cfg.offload, "offload_blocks": len(offloader.blocks),
            "offload_block_bytes": offloader.block_bytes(), "offload_resident_bytes": offloader.resident_bytes()}


def _state_text(opt) -> str:
    """'12,345 B (factors 12,000 B, moments 345 B)': the persistent state a run holds beyond the weights."""
    parts = opt.state_breakdown()
    detail = f" ({', '.join(f'{k} {v:,} B' for k, v in parts.items())})" if len(parts) > 1 else ""
    residuals = f", exact-bf16 residuals {opt.residual_bytes():,} B" if opt.residuals else ""
    return f"{opt.state_bytes():,} B{detail}{residuals}"


# -- evaluation and checkpoints ------------------------------------------------------------------------------
def score(run: Run, split: str) -> dict[str, Any]:
    """The task's metric and loss on an encoded split, with the value model selection minimises: the dev loss
    under CE; under a non-differentiable objective, minus that objective. Announced first, since scoring a split
    can take minutes (the demo's 872 eval examples: about 2 min on 2 CPU cores)."""
    run.reporter.info(f"scoring {len(run.encoded[split])} {split} examples ...")
    t0 = time.perf_counter()
    result = evaluate(run.model, run.encoded[split], run.pad, run.cfg.eval_batch_size, run.device,
                      run.task.objective, run.tokenizer)
    result["seconds"] = time.perf_counter() - t0
    result["selection"] = result["loss"] if run.objective.differentiable else -result[run.metric]
    return result


def evaluate_dev(run: Run, step: int) -> dict[str, Any]:
    result = score(run, "dev")
    run.metrics.write({"event": "eval", "step": step, f"dev_{run.metric}": result[run.metric],
                       "dev_loss": result["loss"], "forwards": run.opt.forwards,
                       "elapsed_s": round(run.state.elapsed_s, 3), **run.opt.diagnostics()})
    run.reporter.info(f"step {step}: dev {run.metric} {result[run.metric]:.4f}, dev loss {result['loss']:.4f} "
                      f"({result['seconds']:.0f} s)")
    return result


def save(run: Run, path: Path) -> None:
    run.opt.runner.flush()  # an offloaded step's update is still pending in the blocks' next visit
    if run.world.main:
        save_checkpoint(path, run.model, run.tokenizer, run.opt, run.state.to_dict(), run.config_yaml)


def _zero_shot(run: Run) -> None:
    """Step 0: the dev (and eval) score of the untouched model, the first best/."""
    if not (run.state.step == 0 and len(run.encoded["dev"]) and run.cfg.eval_every > 0 and run.world.main):
        return
    metric = run.metric
    zs = evaluate_dev(run, 0)
    run.state.zero_shot[f"dev_{metric}"] = zs[metric]
    if len(run.encoded["eval"]):
        zs_eval = score(run, "eval")
        run.state.zero_shot[f"eval_{metric}"] = zs_eval[metric]
        run.metrics.write({"event": "eval", "step": 0, f"eval_{metric}": zs_eval[metric],
                           "eval_loss": zs_eval["loss"], "forwards": 0, "elapsed_s": 0.0})
    run.state.best_dev_loss, run.state.best_dev_metric, run.state.best_step = zs["selection"], zs[metric], 0
    save(run, run.out / "best")


# -- steps ---------------------------------------------------------------------------------------------------
@dataclass
class _Window:
    """What the loop tracks between log lines and across steps."""

    losses: list[float] = field(default_factory=list)
    zero_losses: int = 0
    bad_steps: int = 0
    start_step: int = 0
    train_s_start: float = 0.0
    t_last: float = field(default_factory=time.perf_counter)
    tokens: int = 0  # tokens forwarded since start_step: each example's longest row, once per forward

    def seconds(self, state: RunState) -> float:
        """Time spent stepping since this session started (evaluations and saves excluded)."""
        return max(state.train_s - self.train_s_start, 1e-9)

    def rate(self, state: RunState) -> float:
        """Steps per second of stepping in this session: the bar's speed and ETA, and the log lines'."""
        return (state.step - self.start_step) / self.seconds(state)


def steps(run: Run) -> None:
    """Steps from the run's state to `--steps`, with logs, evaluations, checkpoints and clean stops on signals."""
    _zero_shot(run)
    cfg, state = run.cfg, run.state
    window = _Window(start_step=state.step, train_s_start=state.train_s)
    with _stop_signals() as stop, run.reporter.progress(cfg.steps, state.step) as bar:
        for step in range(state.step, cfg.steps):
            t_step = time.perf_counter()
            loss = _one_step(run, step, window)
            state.train_s += time.perf_counter() - t_step  # steps only: evals and saves excluded from it/s
            if loss is not None:
                window.losses.append(loss)
            now = time.perf_counter()
            state.elapsed_s += now - window.t_last
            window.t_last = now
            state.step = done = step + 1
            bar.update(done, loss if loss is not None else float("nan"), run.opt.param_groups[0]["lr"],
                       window.rate(state))
            _log_train(run, done, window, bar)
            _evaluate_and_save(run, done)
            code = run.world.agree_stop(stop.get("code", 0), done)
            if code and done < cfg.steps:
                path = run.out / f"checkpoint-{done}"
                save(run, path)
                raise Interrupted(code, path)


def _one_step(run: Run, step: int, window: _Window) -> float | None:
    """Step `step` (0-based) on its batch; None when its loss was not finite (skipped, nothing applied)."""
    cfg, opt = run.cfg, run.opt
    indices = run.world.shard(batch_indices(step, cfg.batch_size, len(run.encoded["train"]), cfg.seed))
    train = run.encoded["train"]
    chunks = [[train[i] for i in indices[j:j + cfg.micro_batch_size]]
              for j in range(0, len(indices), cfg.micro_batch_size)]
    closure = run.world.loss(run.objective, run.model, run.objective.batches(chunks), step + 1)
    forwards = opt.forwards
    try:
        loss = opt.step(closure)
        window.tokens += (opt.forwards - forwards) * sum(max(map(len, train[i].rows)) for i in indices)
    except NonFiniteLossError as exc:
        # the optimizer restored the weights: this step applies nothing. Its seed is spent (opt.t moves on), so
        # a resumed run meets the same steps with the same seeds.
        opt.t = step + 1
        window.bad_steps += 1
        reason = str(exc).split(";")[0]
        run.metrics.write({"event": "bad_step", "step": step + 1, "reason": reason})
        log.warning("step %d skipped: %s", step + 1, reason)
        if window.bad_steps >= cfg.max_bad_steps:
            raise Diverged(_divergence_message(cfg, window.bad_steps, step + 1, reason,
                                               latest_checkpoint(run.out))) from None
        if run.trajectory is not None:
            run.trajectory.write({"t": step + 1, "skipped": True})
        return None
    window.bad_steps = 0
    if run.trajectory is not None:
        run.trajectory.write(trajectory.encode(step + 1, opt.trajectory_record()))
    # fp16 LLaMA runs are reported to collapse to exactly-zero loss
    window.zero_losses = window.zero_losses + 1 if loss == 0.0 and run.objective.differentiable else 0
    if window.zero_losses >= 20:
        raise Diverged(_divergence_message(cfg, 20, step + 1, "the loss has been exactly 0.0 for 20 steps",
                                           latest_checkpoint(run.out)))
    return loss


def _log_train(run: Run, done: int, window: _Window, bar) -> None:
    cfg, state = run.cfg, run.state
    if not ((done % cfg.log_every == 0 or done == cfg.steps) and window.losses):
        return
    rec = {"event": "train", "step": done, "loss": sum(window.losses) / len(window.losses),
           "lr": run.opt.param_groups[0]["lr"], "projected_grad": run.opt.last.get("projected_grad"),
           "forwards": run.opt.forwards, "elapsed_s": round(state.elapsed_s, 3),
           "steps_per_s": round(window.rate(state), 4), "tokens_per_s": round(window.tokens / window.seconds(state), 1)}
    run.metrics.write(rec)
    bar.log_line(done, cfg.steps, rec)
    window.losses.clear()


def _evaluate_and_save(run: Run, done: int) -> None:
    from zoft.plot import plot_metrics

    cfg, state = run.cfg, run.state
    if cfg.eval_every and done % cfg.eval_every == 0 and len(run.encoded["dev"]) and run.world.main:
        result = evaluate_dev(run, done)
        if result["selection"] < state.best_dev_loss:
            state.best_dev_loss, state.best_dev_metric, state.best_step = result["selection"], result[run.metric], done
            save(run, run.out / "best")
        plot_metrics(run.metrics.records, run.out / "loss.png", dataclasses.asdict(cfg))
    if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps and run.world.main:
        save(run, run.out / f"checkpoint-{done}")
        prune_checkpoints(run.out, cfg.keep_last)


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


def _metrics_log(run: Run, kept: int | None):
    """metrics.jsonl, forwarded to the `--report-to` trackers when there are any."""
    from zoft import trackers

    log = JsonLines(run.out / "metrics.jsonl", kept)
    names = trackers.parse(run.cfg.report_to)
    if not names:
        return log
    import yaml
    from rich.markup import escape

    config = yaml.safe_load(to_yaml(run.cfg))
    return trackers.Tracked(log, names, run.out, config, resumed=kept is not None,
                            warn=lambda line: run.reporter.info(f"[yellow]warning:[/] {escape(line)}"))


# -- finish --------------------------------------------------------------------------------------------------
def finish(run: Run) -> dict[str, Any]:
    """Save final/, score the eval split with the best weights, write eval.json and summary.json."""
    from zoft.plot import plot_metrics

    cfg, state, out = run.cfg, run.state, run.out
    identical = run.world.ranks_identical(run.opt.tensors)
    if not run.world.main:
        run.world.close()  # wait for rank 0's final save and eval: tearing the group down under it aborts gloo
        return {"rank": run.world.rank, "ranks_identical": identical}
    save(run, out / "final")
    if state.best_step is None:  # no dev evaluation: the final weights are the best we know
        state.best_step = cfg.steps
        link_tree(out / "final", out / "best")
    elif state.best_step == cfg.steps and (out / "best").is_dir():
        share_files(out / "final", out / "best")  # the same weights: one copy on disk
    summary = _final_eval(run)
    summary["peak_memory_bytes"] = peak_memory(run.device)
    if run.world.active:
        summary.update(world_size=run.world.size, ranks_identical=identical)
    if cfg.merge:
        _write_merged(run.model, run.tokenizer, out / "final")
    run.metrics.write({"event": "end", "step": cfg.steps, **summary["eval"],
                       "peak_memory_bytes": summary["peak_memory_bytes"]})
    plot_metrics(run.metrics.records, out / "loss.png", dataclasses.asdict(cfg))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    run.world.close()
    return summary


def _final_eval(run: Run) -> dict[str, Any]:
    """Score the eval split with the best weights (loaded in place) and write eval.json."""
    from zoft.evaluate import eval_report

    cfg, state, out, metric = run.cfg, run.state, run.out, run.metric
    if state.best_step != cfg.steps:
        load_weights_into(run.model, out / "best")
    result = score(run, "eval") if run.encoded["eval"] else {}
    report = eval_report(result, metric, run.splits.eval, cfg.task, str(out / "best"), out)
    report["best_step"] = state.best_step
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    return {"output_dir": str(out), "config": dataclasses.asdict(cfg), "metric": metric,
            "zero_shot": state.zero_shot, "best_step": state.best_step,
            f"best_dev_{metric}": state.best_dev_metric,
            "best_dev_loss": state.best_dev_loss if math.isfinite(state.best_dev_loss) else None,
            "eval": report, "elapsed_s": round(state.elapsed_s, 2)}


def _write_merged(model, tokenizer, final: Path) -> None:
    """final/ becomes a plain HF model with the final LoRA weights merged in; the adapter moves to final/adapter/
    (where a resume finds it). Done last: merging changes the in-memory model."""
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
