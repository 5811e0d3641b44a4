"""The `zoft` command line: parsing, messages and exit codes only; the work happens in the library.

Exit codes: 0 ok, 1 runtime error, 2 usage/config/data error (also a checkpoint that cannot be written: disk
full), 3 diverged (non-finite loss for --max-bad-steps steps), 130 (SIGINT) / 143 (SIGTERM) after saving a
checkpoint. torch and transformers are imported inside the commands so `zoft --help` stays fast.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from zoft import __version__
from zoft.errors import ConfigError
from zoft.flags import lazy

app = typer.Typer(
    name="zoft",
    help="Zeroth-order fine-tuning of Hugging Face causal LMs with the memory of inference.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
)
out = Console()                 # results (tables, --json) on stdout
err = Console(stderr=True)      # progress, info and errors on stderr


class Dtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    # escaped: a message quoting user input or an install hint (`pip install 'zoft[wandb]'`) is not Rich markup
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _user_errors():
    """The exception types a user can cause (→ exit 2)."""
    from zoft.checkpoint import CheckpointDamagedError, CheckpointWriteError
    from zoft.tasks import TaskDataError

    return (ConfigError, TaskDataError, CheckpointWriteError, CheckpointDamagedError)


def _version(value: bool) -> None:
    if value:
        out.print(f"zoft {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and full tracebacks.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    """Zeroth-order fine-tuning of Hugging Face causal LMs with the memory of inference."""
    from rich.logging import RichHandler

    from zoft.progress import protect_std_streams

    protect_std_streams()  # a closed pipe or terminal must not end a run before it saves

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=err, show_path=False)],
                        force=True)
    for noisy in ("transformers", "datasets", "huggingface_hub", "urllib3", "filelock", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    _STATE["verbose"], _STATE["quiet"] = verbose, quiet


_STATE: dict[str, bool] = {"verbose": False, "quiet": False}

_TRAIN_EPILOG = """[bold]Examples[/]

  zoft train --steps 200 --lr 1e-5 --data-dir builtin                 [dim]# embedded SmolLM2-135M, SST-2 sample[/]

  zoft train --algo mezo --model facebook/opt-1.3b --task sst2 --lr 1e-6

  zoft train recipes/smollm2-135m/mezo-sst2.yaml --steps 100 --output-dir runs/try   [dim]# recipe + override[/]
"""

M, DT, Z, TR, CK, HW = "Model", "Data", "ZO algorithm", "Training", "Checkpointing", "Hardware"
MD = "Tuning mode"


def _train_command():
    """`zoft train`'s real callback: a flag per config field and per algorithm option (`zoft.flags`)."""
    from zoft.config import TrainConfig
    from zoft.flags import field_flags, option_flags, recipe_argument, with_signature

    extra = [inspect.Parameter("nproc", inspect.Parameter.KEYWORD_ONLY, default=1, annotation=Annotated[
                 int, typer.Option(help="Data-parallel processes on this machine: reruns the command under torchrun "
                                   "(gloo on CPU, NCCL on GPUs); ranks share each step's batch and all-reduce 2-3 loss "
                                   "scalars per step. Under torchrun already, leave it 1.", rich_help_panel=HW)]),
             inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
                 bool, typer.Option("--json", help="Print the run summary as JSON.")])]
    params = [recipe_argument("Recipe YAML (or a run's config.yaml) with defaults for any option below; flags "
                              "override it."), *field_flags(TrainConfig), *option_flags(), *extra]
    return with_signature(_train, params)


@app.command(epilog=_TRAIN_EPILOG, cls=lazy(_train_command))
def train() -> None:
    """Fine-tune a causal LM with a zeroth-order algorithm (2–3 forwards per step, no backprop).

    Writes config.yaml, metrics.jsonl, trajectory.jsonl, checkpoint-<step>/, best/, final/ (Hugging Face model
    dirs), eval.json and loss.png to the run dir. Every flag can also be a key of the recipe; a boolean flag's
    --no- form turns off what a recipe turned on.
    """


def _train(recipe: Path | None = None, nproc: int = 1, as_json: bool = False, **flags: Any) -> None:
    """Fine-tune a causal LM with a zeroth-order algorithm (2–3 forwards per step, no backprop)."""
    from zoft import distributed
    from zoft.algos import get_algorithm
    from zoft.config import resolve

    from zoft.catalog import find_recipe

    if recipe is not None:
        recipe = _guarded(find_recipe, recipe)
    cfg = _guarded(resolve, recipe, flags)
    if nproc < 1:
        _fail(f"--nproc must be >= 1 (got {nproc})")
    if nproc > 1 and not distributed.launched():
        if not get_algorithm(cfg.algo).data_parallel:
            _fail(f"--nproc with --algo {cfg.algo}: it backpropagates, and data-parallel zoft all-reduces losses, "
                  "not gradients; run it in one process")
        raise typer.Exit(distributed.launch(nproc, _without_nproc(sys.argv[1:])))
    _run_training(cfg, as_json)


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _guarded(fn, *args):
    """Run a library call, turning its exceptions into one line and the documented exit code."""
    from zoft.train import Diverged, Interrupted

    try:
        return fn(*args)
    except Diverged as exc:
        _fail(str(exc), code=Diverged.code)
    except Interrupted as exc:
        err.print(f"[yellow]interrupted:[/] saved {exc.checkpoint}; continue with --resume", highlight=False)
        raise typer.Exit(exc.code)
    except _user_errors() as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/] before a checkpoint could be saved")
        raise typer.Exit(130)
    except Exception as exc:  # runtime failure: one line, traceback only with -v
        if _STATE["verbose"]:
            raise
        _fail(f"{type(exc).__name__}: {exc} (rerun with -v for the traceback)", code=1)


def _run_training(cfg, as_json: bool) -> None:
    from zoft.progress import Reporter
    from zoft.train import train as run_train

    summary = _guarded(run_train, cfg, Reporter(err, quiet=_STATE["quiet"]))
    if "rank" not in summary:  # a data-parallel rank other than 0 reports nothing: rank 0 does
        if as_json:
            out.print_json(json.dumps(summary))
        else:
            _print_summary(summary)
    if "world_size" in summary or "rank" in summary:
        # gloo's worker threads can abort the interpreter's shutdown ("terminate called without an active
        # exception", seen 2 in ~12 two-rank runs here); the run is complete and saved, so leave at once
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _print_summary(summary: dict[str, Any]) -> None:
    zs, metric = summary["zero_shot"], summary["metric"]
    mode = summary["config"].get("mode", "full")
    table = Table(title=f"zoft {summary['config']['algo']}{'' if mode == 'full' else f' ({mode})'} on "
                        f"{summary['config']['task']}  "
                        f"({summary['output_dir']}, {summary['elapsed_s']:.0f} s)")
    table.add_column("weights")
    table.add_column(f"dev {metric}", justify="right")
    table.add_column(f"eval {metric}", justify="right")
    fmt = lambda x: "—" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    table.add_row("zero-shot", fmt(zs.get(f"dev_{metric}")), fmt(zs.get(f"eval_{metric}")))
    table.add_row(f"[bold]fine-tuned[/] (best, step {summary['best_step']})", fmt(summary[f"best_dev_{metric}"]),
                  fmt(summary["eval"][f"eval_{metric}"]))
    out.print(table)


@app.command("eval", epilog="[bold]Examples[/]\n\n  zoft eval runs/mezo-sst2            [dim]# a run dir: "
             "scores best/, writes eval.json[/]\n\n  zoft eval smollm2-135m --task sst2 --data-dir builtin   "
             "[dim]# zero-shot baseline[/]\n\n  zoft eval smollm2-135m --task rte --data-dir data/rte --icl 32 "
             "[dim]# in-context learning baseline[/]")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="A run dir (scores its best/), a checkpoint or model dir (an "
                                         "adapter checkpoint of --mode lora/prefix/prompt is rebuilt over its "
                                         "base), a hub id, or smollm2-135m.")],
    base: Annotated[Optional[str], typer.Option(help="Base model under an adapter checkpoint (default: the one "
                                                "it was trained on).", show_default=False,
                                                rich_help_panel=M)] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow a model's own Python code "
                                                    "(auto_map) to run.", rich_help_panel=M)] = False,
    task: Annotated[Optional[str], typer.Option(help="Task (default: the run's, else sst2).",
                                                show_default=False, rich_help_panel=DT)] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="Dir with the task's original files, or 'builtin'.",
                                                    show_default=False, rich_help_panel=DT)] = None,
    num_eval: Annotated[Optional[int], typer.Option(help="Eval examples sampled from the validation split.",
                                                    show_default="1000", rich_help_panel=DT)] = None,
    train_set_seed: Annotated[Optional[int], typer.Option(help="Sampling seed.", show_default="0",
                                                          rich_help_panel=DT)] = None,
    eval_file: Annotated[Optional[str], typer.Option(help="Evaluate on this file instead of the task's eval split.",
                                                     show_default=False, rich_help_panel=DT)] = None,
    icl: Annotated[int, typer.Option(help="In-context learning baseline: put K demonstrations (the first K of "
                                     "the seeded train sample, prompt + gold answer, blank-line separated as in "
                                     "MeZO) before every eval prompt. MeZO's ICL rows use 32.",
                                     rich_help_panel=DT)] = 0,
    output_dir: Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Write eval.json (eval_icl<K>.json "
                                                      "with --icl) and generation predictions here (default: the "
                                                      "run dir, if MODEL is one).", show_default=False,
                                                      rich_help_panel=CK)] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per forward.", rich_help_panel=TR)] = 16,
    dtype: Annotated[Optional[Dtype], typer.Option(help="Weight dtype.", show_default="auto",
                                                   rich_help_panel=HW)] = None,
    device: Annotated[Optional[Device], typer.Option(help="Where to run.", show_default="auto",
                                                     rich_help_panel=HW)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Score a model or checkpoint on a task's eval split: accuracy (argmax of mean option log-prob) or, for
    generation tasks, token F1 / exact match of greedy decodes.

    Gives the zero-shot baseline of any base model, and with --icl K the in-context-learning baseline. Given a
    run dir, evaluates its best/ checkpoint with the run's task settings and writes eval.json into the run dir.
    """
    from zoft.evaluate import EvalRequest, run_eval

    request = EvalRequest(model=model, task=task, data_dir=data_dir, num_eval=num_eval,
                          train_set_seed=train_set_seed, batch_size=batch_size,
                          dtype=dtype.value if dtype else None, device=device.value if device else None,
                          base=base, icl=icl, eval_file=eval_file, output=output_dir,
                          trust_remote_code=trust_remote_code)
    report = _guarded(run_eval, request)
    if as_json:
        out.print_json(json.dumps(report))
    else:
        metric = report["metric"]
        shots = f", {report['icl']}-shot in context" if report["icl"] else ""
        em = f", exact match {100 * report['eval_exact_match']:.2f}%" if "eval_exact_match" in report else ""
        out.print(f"{report['task']} {metric} of {report['checkpoint']}{shots}: [bold]"
                  f"{100 * report[f'eval_{metric}']:.2f}%[/]{em} on {report['num_eval']} examples "
                  f"(loss {report['eval_loss']:.4f})", highlight=False)


@app.command("sweep", epilog="[bold]Examples[/]\n\n  zoft sweep recipes/opt-13b/mezo-sst2.yaml --grid lr=1e-6,1e-7 "
             "--grid eps=1e-3 --print-commands   [dim]# one line per cluster job[/]\n\n  zoft sweep "
             "recipes/smollm2-135m/mezo-wic.yaml --grid lr=1e-5,3e-5 --set steps=50   [dim]# run here, then the "
             "table[/]\n\n  zoft sweep recipes/opt-13b/mezo-sst2.yaml --grid lr=1e-6,1e-7 --collect   [dim]# "
             "gather finished jobs[/]")
def sweep_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML every grid point starts from.")],
    grid: Annotated[list[str], typer.Option(help="KEY=V1,V2,...: a recipe key (lr, eps, seed, an "
                                            "algorithm's option, ...) and its values; repeat for a "
                                            "product grid.",
                                            show_default=False)],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE applied to every point (e.g. "
                                                      "steps=100).", show_default=False)] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Sweep dir; each point runs "
                                                      "in <dir>/<key>=<value>_...", show_default="<recipe "
                                                      "output_dir>-sweep")] = None,
    print_commands: Annotated[bool, typer.Option("--print-commands", help="Print one `zoft train` command per "
                                                 "point (for cluster job scripts) and run nothing.")] = False,
    collect: Annotated[bool, typer.Option("--collect", help="Run nothing; gather the finished points into "
                                          "results.md / results.json.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rerun points that already finished.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Run a hyperparameter grid over a recipe and report it: best dev metric → its eval score (MeZO's
    selection). Finished points are kept, so an interrupted sweep continues where it stopped.
    """
    from zoft.progress import Reporter
    from zoft.sweep import SweepRequest, markdown, plan, run_sweep

    from zoft.catalog import find_recipe

    req = SweepRequest(recipe=str(_guarded(find_recipe, recipe)), grid=grid, set=set_ or [], output_dir=output_dir,
                       print_commands=print_commands, collect=collect, overwrite=overwrite)
    if print_commands:
        _, points = _guarded(plan, req)
        for point in points:
            out.print(point.command, highlight=False, soft_wrap=True, markup=False)
        return
    result = _guarded(run_sweep, req, Reporter(err, quiet=_STATE["quiet"]))
    if as_json:
        out.print_json(json.dumps(result))
        return
    out.print(markdown(result), highlight=False, markup=False)
    best = result["best"]
    if best:
        out.print(f"best dev: {best['run']} → eval {best['metric']} {100 * best['eval']:.1f}% "
                  f"({result['output_dir']}/results.md)", highlight=False, markup=False)


@app.command("replay", epilog="[bold]Examples[/]\n\n  zoft replay smollm2-135m runs/mezo-sst2 --to-step 100 "
             "--output-dir runs/mezo-sst2-at-100\n\n  zoft replay ./opt-1.3b runs/hizoo-rte   [dim]# the last step, "
             "into runs/hizoo-rte/replay-N[/]")
def replay_cmd(
    base: Annotated[str, typer.Argument(help="The run's base model (hub id, local dir or smollm2-135m); "
                                        "'-' takes the run's own --model.")],
    run_dir: Annotated[str, typer.Argument(help="A zoft run dir (config.yaml and trajectory.jsonl).")],
    to_step: Annotated[Optional[int], typer.Option(help="Rebuild the weights after this many steps.",
                                                   show_default="the last")] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Where to write the checkpoint.",
                                                      show_default="RUN_DIR/replay-<step>")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output dir.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Rebuild a run's weights at any step from its base model and seed trajectory, with no forward pass.

    A ZO run is determined by the base, config.yaml and each step's projected gradient: trajectory.jsonl keeps
    those (~30 bytes a step), so a checkpoint for any step can be made again, bitwise, from a file of a few
    hundred KB.
    """
    from zoft.progress import Reporter
    from zoft.replay import ReplayRequest, replay

    req = ReplayRequest(base=None if base == "-" else base, run_dir=run_dir, to_step=to_step,
                        output_dir=output_dir, overwrite=overwrite)
    result = _guarded(replay, req, Reporter(err, quiet=_STATE["quiet"]))
    if as_json:
        out.print_json(json.dumps(result))
    else:
        out.print(f"wrote {result['output_dir']}: {result['algo']} weights after step {result['step']} "
                  f"(from a {result['trajectory_bytes']:,}-byte trajectory)", highlight=False)


def _estimate_command():
    """`zoft estimate-memory`'s real callback: a flag per request field and per algorithm option."""
    from zoft.flags import field_flags, option_flags, with_signature
    from zoft.memory import MemoryRequest

    model = inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
        str, typer.Argument(help="Hub id (cached or reachable), local HF model dir, or smollm2-135m. Only its "
                                 "config is read.")])
    as_json = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--json", help="Print the estimate as JSON.")])
    return with_signature(_estimate, [model, *field_flags(MemoryRequest), *option_flags(), as_json])


@app.command("estimate-memory", cls=lazy(_estimate_command),
             epilog="[bold]Examples[/]\n\n  zoft estimate-memory facebook/opt-13b --algo hizoo --gpu-memory 80GB\n\n"
                    "  zoft estimate-memory smollm2-135m --algo tezo-adam --rank 8 --device cpu --json")
def estimate_memory_cmd() -> None:
    """Estimate the memory of a ZO run before launch, next to first-order AdamW fine-tuning.

    Builds the model on the meta device (no weights are downloaded or allocated) and counts weights, the
    algorithm's state and step temporaries (from its own code, with its options), one forward's activations and
    the kept logits.
    """


def _estimate(model: str, as_json: bool = False, **flags: Any) -> None:
    from zoft.algos import check_owners, option_table
    from zoft.memory import MemoryRequest, estimate

    options = {k: flags.pop(k) for k in list(flags) if k in option_table() and flags[k] is not None}
    req = MemoryRequest(model=model, **{k: v for k, v in flags.items() if v is not None}, options=options)
    _guarded(check_owners, req.algo, options, tuple(options))
    result = _guarded(estimate, req)
    if as_json:
        out.print_json(json.dumps(result))
        return
    _print_estimate(result)


def _print_estimate(result: dict[str, Any]) -> None:
    gib = lambda b: f"{b / 2**30:,.2f}"  # noqa: E731
    base = f"{result['quantize']} base, " if result["quantize"] else ""
    table = Table(title=f"{result['model']}: {result['algo']} ({result['mode']}, {base}{result['dtype']}, "
                        f"{result['device']}), {result['rows']} rows × {result['seq_len']} tokens, "
                        f"{result['trainable_params']:,} trainable", title_justify="left")
    run = "first-order run" if result["first_order"] else "ZO"
    table.add_column("component")
    table.add_column(f"{run} GiB", justify="right")
    table.add_column("first-order AdamW GiB", justify="right")
    fo, parts = result["first_order_adamw"], result["components"]
    table.add_row("weights", gib(parts["weights"]), gib(fo["weights"]))
    table.add_row("optimizer state", gib(parts["optimizer state"]), gib(fo["adam moments"]) + " (moments)")
    if "exact-bf16 residuals" in parts:
        table.add_row("exact-bf16 residuals", gib(parts["exact-bf16 residuals"]), "—")
    table.add_row("gradients", gib(parts["gradients"]) if "gradients" in parts else "—", gib(fo["gradients"]))
    table.add_row("step temporaries", gib(parts["step temporaries"]), "—")
    table.add_row("activations", gib(parts["activations"]), gib(fo["activations"]) + " (saved)")
    table.add_row("logits", gib(parts["logits"]), gib(fo["logits"]))
    if "runtime" in parts:
        table.add_row("runtime (Python, torch)", gib(parts["runtime"]), gib(parts["runtime"]))
    table.add_row("[bold]total[/]", f"[bold]{gib(result['total'])}[/]", f"[bold]{gib(fo['total'])}[/]")
    out.print(table)
    if result["offload"]:
        out.print(f"offload: the blocks need {gib(result['host_bytes'])} GiB of pinned host memory; the GPU "
                  "figures count the modules outside them and three blocks")
    if result["gpu_memory"] is not None:
        verdict = lambda ok: "[green]fits[/]" if ok else "[red]does not fit[/]"  # noqa: E731
        out.print(f"on {gib(result['gpu_memory'])} GiB: {run} {verdict(result['fits'])}, first-order AdamW "
                  f"{verdict(result['first_order_fits'])}")


def _as_flag(name: str, value: Any) -> str:
    dashed = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{dashed}" if value else f"--no-{dashed}"
    return f"--{dashed} {value:g}" if isinstance(value, float) else f"--{dashed} {value}"


@app.command("list", epilog="[bold]Examples[/]\n\n  zoft list\n\n  zoft list --model smollm2-135m --json   "
             "[dim]# optimizer state in bytes of every algorithm on that model[/]")
def list_cmd(
    model: Annotated[Optional[str], typer.Option(help="Also give each algorithm's optimizer state in bytes for "
                                                 "full fine-tuning of this model (built on the meta device: no "
                                                 "weights are loaded).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show the algorithms (when to pick each, forwards per step, persistent state), tasks and recipes."""
    from zoft.catalog import RECIPES_DIR, catalog

    data = _guarded(catalog, RECIPES_DIR, model)
    if as_json:
        out.print_json(json.dumps(data))
        return
    for row in data["algorithms"]:  # each option at its default, as a flag
        row["flags"] = " ".join(_as_flag(k, v) for k, v in row["options"].items() if v is not None)
    algo_columns = ("name", "forwards_per_step", "state", "flags", "summary", "paper")
    if model is not None:
        for row in data["algorithms"]:
            row["state_MiB"] = f"{row['state_bytes'] / 2**20:,.1f}"
        algo_columns = ("name", "forwards_per_step", "state", "state_MiB", "flags", "summary")
    for title, rows, columns in (
        ("Algorithms", data["algorithms"], algo_columns),
        ("Tasks", data["tasks"], ("name", "metric", "description")),
        ("Recipes (zoft train NAME; zoft recipes cp NAME DEST to edit one)", data["recipes"],
         ("name", "description")),
    ):
        table = Table(title=title, title_justify="left")
        for col in columns:
            table.add_column(col.replace("_", " "), justify="right" if col in ("forwards_per_step", "state_MiB")
                             else "left")
        for row in rows:
            table.add_row(*(str(row.get(c, "")) for c in columns))
        out.print(table)


@app.command("env", epilog="[bold]Examples[/]\n\n  zoft env   [dim]# paste into a bug report[/]\n\n  zoft env "
             "--json")
def env_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Show what a bug report needs: versions of zoft, torch, transformers, peft, bitsandbytes, triton, ..., CUDA
    and the GPUs, CPU threads, offline switches and the cache dir."""
    from zoft.environment import collect

    data = collect()
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(title=f"zoft {data['zoft']}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    rows = [("python", data["python"]), ("platform", data["platform"])]
    rows += [(name, version or "not installed") for name, version in data["packages"].items()]
    cuda = data["cuda"]
    rows.append(("CUDA", f"torch built with {cuda['torch_built_with']}; available: {cuda['available']}"
                 if cuda["torch_built_with"] else "torch built without CUDA (CPU only)"))
    rows += [(f"GPU {g['index']}", f"{g['name']}, {g['memory_gib']} GiB, sm {g['capability']}") for g in cuda["gpus"]]
    rows += [("CPU threads", str(data["cpu_threads"])), ("cache dir", data["cache_dir"])]
    rows += [(key, value) for key, value in data["env"].items() if value is not None]
    for row in rows:
        table.add_row(*row)
    out.print(table)


recipes_app = typer.Typer(help="The recipes shipped with zoft: list them, or copy one to edit (`zoft train NAME` "
                          "runs one from any directory).", rich_markup_mode="rich",
                          context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(recipes_app, name="recipes")


@recipes_app.callback(invoke_without_command=True, epilog="[bold]Examples[/]\n\n  zoft recipes\n\n  zoft "
                      "recipes cp mezo-sst2 my-run.yaml   [dim]# then edit it and: zoft train my-run.yaml[/]")
def recipes_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON (name, path, description).")] = False,
) -> None:
    """List the shipped recipes by name: `<model>/<name>`, or `<name>` alone (the embedded model's when
    several models ship it)."""
    if ctx.invoked_subcommand is not None:
        return
    from zoft.catalog import recipe_rows

    rows = recipe_rows()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="Recipes (zoft train NAME, then any flag)", title_justify="left")
    table.add_column("name")
    table.add_column("description")
    for row in rows:
        table.add_row(row["name"], row["description"])
    out.print(table)


@recipes_app.command("cp")
def recipes_cp(
    name: Annotated[str, typer.Argument(help="A shipped recipe: <model>/<name> or <name>.", show_default=False)],
    dest: Annotated[Path, typer.Argument(help="File to write, or a directory to copy it into.", show_default=False)],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace DEST if it exists.")] = False,
) -> None:
    """Copy a shipped recipe to DEST for editing (like `tune cp`); run it with `zoft train DEST`."""
    import shutil

    from zoft.catalog import find_recipe, recipe_names

    src = _guarded(find_recipe, name)
    if src not in recipe_names().values():
        _fail(f"recipe {name}: not a shipped recipe; `zoft recipes` lists them")
    target = dest / src.name if dest.is_dir() else dest
    if target.exists() and not overwrite:
        _fail(f"{target} exists; pass --overwrite to replace it")
    if not target.parent.is_dir():
        _fail(f"{target.parent}: no such directory")
    shutil.copyfile(src, target)
    err.print(f"wrote {target} (from {src.parent.name}/{src.name})", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
