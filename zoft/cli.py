"""The `zoft` command line: parsing, messages and exit codes only; the work happens in the library.

Exit codes: 0 ok, 1 runtime error, 2 usage/config/data error (also a checkpoint that cannot be written: disk
full), 3 diverged (non-finite loss for --max-bad-steps steps), 130 (SIGINT) / 143 (SIGTERM) after saving a
checkpoint. torch and transformers are imported inside the commands so `zoft --help` stays fast.
"""

from __future__ import annotations

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
from zoft.config import ConfigError, TrainConfig

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
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
_D = TrainConfig()              # defaults, shown in --help


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
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _user_errors():
    """The exception types a user can cause (→ exit 2)."""
    from zoft.checkpoint import CheckpointWriteError
    from zoft.tasks import TaskDataError

    return (ConfigError, TaskDataError, CheckpointWriteError)


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


@app.command(epilog=_TRAIN_EPILOG)
def train(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe YAML with defaults for any option below; "
                                                     "flags override it.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(help="Hub id, local HF model dir, or the embedded offline "
                                                 "default smollm2-135m.", show_default=_D.model,
                                                 rich_help_panel=M)] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow a model that ships its own "
                                                    "Python code (auto_map) to run it. Off by default: read the "
                                                    "code first.", rich_help_panel=M)] = False,
    task: Annotated[Optional[str], typer.Option(help="sst2, rte, cb, boolq, wsc, wic, multirc, copa, record, "
                                                "squad, drop, sst5, snli, mnli, trec or custom (see `zoft list`).",
                                                show_default=_D.task, rich_help_panel=DT)] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="Dir with the task's original files (GLUE tsv, "
                                                    "SuperGLUE jsonl, SQuAD json/zip, TREC txt, LM-BFF k-shot "
                                                    "tsv), or 'builtin' for zoft's SST-2 sample. Default: the "
                                                    "Hub, falling back to the sample offline.",
                                                    show_default=False, rich_help_panel=DT)] = None,
    data_file: Annotated[Optional[str], typer.Option(help="Custom task: train jsonl/csv.", show_default=False,
                                                     rich_help_panel=DT)] = None,
    eval_file: Annotated[Optional[str], typer.Option(help="Evaluate on this file instead of the task's eval "
                                                     "split (e.g. snli/dev.jsonl beside a k-shot --data-dir). "
                                                     "Custom task default: rows of --data-file not sampled.",
                                                     show_default=False, rich_help_panel=DT)] = None,
    text_field: Annotated[Optional[str], typer.Option(help="Custom task: text column (default sentence or text).",
                                                      show_default=False, rich_help_panel=DT)] = None,
    label_field: Annotated[Optional[str], typer.Option(help="Custom task: label column.",
                                                       show_default=_D.label_field, rich_help_panel=DT)] = None,
    verbalizer: Annotated[Optional[str], typer.Option(help="Custom task: label=word pairs, e.g. "
                                                      "'0=terrible,1=great'.", show_default=False,
                                                      rich_help_panel=DT)] = None,
    template: Annotated[Optional[str], typer.Option(help="Custom task: prompt template over the columns, e.g. "
                                                    "'{sentence} It was'.", show_default=False,
                                                    rich_help_panel=DT)] = None,
    prompt_field: Annotated[Optional[str], typer.Option(help="Custom generation task: prompt column (or use "
                                                        "--template).", show_default="prompt",
                                                        rich_help_panel=DT)] = None,
    target_field: Annotated[Optional[str], typer.Option(help="Custom generation task: the column to generate; "
                                                        "scored by token F1 / exact match.", show_default=False,
                                                        rich_help_panel=DT)] = None,
    num_train: Annotated[Optional[int], typer.Option(help="Train examples sampled (MeZO protocol); per label "
                                                     "with --per-label.", show_default=str(_D.num_train),
                                                     rich_help_panel=DT)] = None,
    per_label: Annotated[bool, typer.Option("--per-label", help="k-shot sampling: --num-train (and --num-dev, "
                                            "default the same) examples per label, as in MeZO's RoBERTa "
                                            "experiments (k = 16 or 512).", rich_help_panel=DT)] = False,
    num_dev: Annotated[Optional[int], typer.Option(help="Dev examples (taken from train) for checkpoint "
                                                   "selection.", show_default="500", rich_help_panel=DT)] = None,
    num_eval: Annotated[Optional[int], typer.Option(help="Eval examples sampled from the validation split.",
                                                    show_default=str(_D.num_eval), rich_help_panel=DT)] = None,
    train_set_seed: Annotated[Optional[int], typer.Option(help="Seed of the train/dev/eval sampling.",
                                                          show_default=str(_D.train_set_seed),
                                                          rich_help_panel=DT)] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Max tokens per sequence (left-truncated).",
                                                      show_default=str(_D.max_length), rich_help_panel=DT)] = None,
    mode: Annotated[Optional[str], typer.Option(help="full (every weight), lora (peft LoRA adapters), prefix "
                                                "(MeZO prefix tuning: 5 key/value vectors per layer from real-token "
                                                "activations) or prompt (10 soft input embeddings). Other modes "
                                                "freeze the base; their default lr/eps follow MeZO's grids (LoRA "
                                                "1e-4/1e-2, prefix 1e-2/1e-1, prompt 1e-3/1e-1).",
                                                show_default=_D.mode, rich_help_panel=MD)] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="LoRA rank r.", show_default=str(_D.lora_r),
                                                  rich_help_panel=MD)] = None,
    lora_alpha: Annotated[Optional[float], typer.Option(help="LoRA α (scale α/r).", show_default="16",
                                                        rich_help_panel=MD)] = None,
    lora_targets: Annotated[Optional[str], typer.Option(help="Comma-separated module names that get LoRA.",
                                                        show_default=_D.lora_targets, rich_help_panel=MD)] = None,
    virtual_tokens: Annotated[Optional[int], typer.Option(help="Prefix/prompt length.",
                                                          show_default="5 prefix, 10 prompt",
                                                          rich_help_panel=MD)] = None,
    prefix_init: Annotated[Optional[str], typer.Option(help="Prefix init: activations (the frozen model's keys "
                                                       "and values on random real tokens, MeZO) or random.",
                                                       show_default=_D.prefix_init, rich_help_panel=MD)] = None,
    load_in_8bit: Annotated[bool, typer.Option("--load-in-8bit", help="Quantize the frozen base to int8 "
                                               "(bitsandbytes); adapter modes only.", rich_help_panel=MD)] = False,
    load_in_4bit: Annotated[bool, typer.Option("--load-in-4bit", help="Quantize the frozen base to NF4 "
                                               "(bitsandbytes); adapter modes only.", rich_help_panel=MD)] = False,
    merge: Annotated[bool, typer.Option("--merge", help="LoRA: write final/ as a plain HF model with the adapter "
                                        "merged (the adapter stays in final/adapter/).", rich_help_panel=MD)] = False,
    algo: Annotated[Optional[str], typer.Option(help="mezo (2 forwards, no state: the memory floor); "
                                                "zo-sgd-mmt / zo-adam (dense momentum / Adam: +1 / +2 fp32 per "
                                                "weight); hizoo (3 forwards, +1 fp32/weight Hessian: "
                                                "ill-conditioned problems); hizoo-l (HiZOO with m+n numbers per "
                                                "matrix); tezo / tezo-m / tezo-adam (rank-r perturbations, "
                                                "moments in r-space: Adam-style below MeZO's memory); "
                                                "fo-adam (first-order AdamW with backprop: the reference, "
                                                "not ZO). See `zoft list`.",
                                                show_default=_D.algo, rich_help_panel=Z)] = None,
    objective: Annotated[Optional[str], typer.Option(help="ce (cross-entropy; COPA, ReCoRD and generation tasks: "
                                                     "on the gold tokens), or a non-differentiable one: accuracy "
                                                     "(classification) or f1 (generation), minimising minus the "
                                                     "batch metric (MeZO Table 3).", show_default=_D.objective,
                                                     rich_help_panel=Z)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (constant). Default: the algorithm's "
                                                "(MeZO full FT 1e-6).", show_default=False, rich_help_panel=Z)] = None,
    eps: Annotated[Optional[float], typer.Option(help="Perturbation scale ε.", show_default="1e-3",
                                                 rich_help_panel=Z)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Weight decay λ, decoupled (zo-sgd-mmt: L2 added to the momentum, as torch SGD); "
                                                          "never on 1-D, bias or norm tensors.",
                                                          show_default="0", rich_help_panel=Z)] = None,
    noise: Annotated[Optional[str], typer.Option(help="Generator of z: table (windows of a fixed table of "
                                                 "Gaussian quantiles with random signs, at seeded offsets: a pass "
                                                 "costs a memory sweep, ~20x cheaper than torch.randn on CPU; "
                                                 "tables take 44 MiB fp32 / 22 MiB bf16) or randn (torch.randn, "
                                                 "exact N(0, I)).", show_default=_D.noise,
                                                 rich_help_panel=Z)] = None,
    stochastic_rounding: Annotated[bool, typer.Option("--stochastic-rounding", help="Round the update pass "
                                                      "stochastically so that updates far below half an ulp "
                                                      "(most of MeZO's in bf16) survive in expectation; "
                                                      "bfloat16/float16 weights only (no effect in float32).",
                                                      rich_help_panel=Z)] = False,
    exact_bf16: Annotated[bool, typer.Option("--exact-bf16", help="Keep the 16 bits that fp32 has beyond "
                                             "bf16 beside each bf16 weight (+2 bytes/weight): every pass is exact "
                                             "fp32 arithmetic while forwards run in bf16. Without it bf16 weights "
                                             "random-walk: 3.8 %% RMS after 100 perturb/restore cycles on "
                                             "SmolLM2.", rich_help_panel=Z)] = False,
    hessian_smooth: Annotated[Optional[float], typer.Option(help="HiZOO: EMA coefficient α of the diagonal "
                                                            "Hessian H.", show_default="1e-6",
                                                            rich_help_panel=Z)] = None,
    hessian_schedule: Annotated[Optional[str], typer.Option(help="HiZOO: α by step, piecewise constant, e.g. "
                                                            "'0:1e-4,2000:1e-6' (overrides --hessian-smooth).",
                                                            show_default=False, rich_help_panel=Z)] = None,
    hessian_estimator: Annotated[Optional[str], typer.Option(help="HiZOO curvature sample: code (released "
                                                             "code, c·H·z²) or paper (|ΔL/2ε²·H·(z²−1)|).",
                                                             show_default="code", rich_help_panel=Z)] = None,
    allow_degenerate: Annotated[bool, typer.Option("--allow-degenerate", help="HiZOO: permit α = 0 (H stays 1: "
                                                   "MeZO with a wasted forward).", rich_help_panel=Z)] = False,
    momentum: Annotated[Optional[float], typer.Option(help="zo-sgd-mmt, tezo-m: momentum β; zo-adam, tezo-adam: "
                                                      "β1.", show_default="0.9", rich_help_panel=Z)] = None,
    beta2: Annotated[Optional[float], typer.Option(help="zo-adam, tezo-adam: β2.", show_default="0.999",
                                                   rich_help_panel=Z)] = None,
    adam_eps: Annotated[Optional[float], typer.Option(help="zo-adam, tezo-adam: δ in m̂/(√v̂ + δ).",
                                                      show_default="1e-8", rich_help_panel=Z)] = None,
    rank: Annotated[Optional[int], typer.Option(help="TeZO: rank r of each matrix's perturbation (capped at "
                                                "min(m, n)).", show_default="32", rich_help_panel=Z)] = None,
    rank_mode: Annotated[Optional[str], typer.Option(help="TeZO: fixed (--rank for every matrix) or spectrum "
                                                     "(per matrix: singular values ≥ --rank-threshold·σ₁ of the "
                                                     "pretrained weight, clipped to [--rank-min, --rank-max]; "
                                                     "zoft's heuristic).", show_default="fixed",
                                                     rich_help_panel=Z)] = None,
    rank_threshold: Annotated[Optional[float], typer.Option(help="TeZO spectrum: relative singular-value "
                                                            "threshold.", show_default="0.5",
                                                            rich_help_panel=Z)] = None,
    rank_min: Annotated[Optional[int], typer.Option(help="TeZO spectrum: smallest rank.", show_default="4",
                                                    rich_help_panel=Z)] = None,
    rank_max: Annotated[Optional[int], typer.Option(help="TeZO spectrum: per-layer rank cap.", show_default="64",
                                                    rich_help_panel=Z)] = None,
    tezo_scale: Annotated[Optional[str], typer.Option(help="TeZO: sqrt-r (Z scaled by 1/√r so E‖Z‖² matches "
                                                      "MeZO and its lr/eps carry over) or none (the paper as "
                                                      "written: r× the energy).", show_default="sqrt-r",
                                                      rich_help_panel=Z)] = None,
    tezo_factors: Annotated[Optional[str], typer.Option(help="TeZO: cache (keep the U, V factors on the device, "
                                                        "(m+n)·r fp32 per matrix) or regenerate (draw them in every "
                                                        "pass: no factor memory, a little more time); same "
                                                        "trajectory.", show_default="cache",
                                                        rich_help_panel=Z)] = None,
    steps: Annotated[Optional[int], typer.Option(help="ZO steps.", show_default=str(_D.steps),
                                                 rich_help_panel=TR)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per step.", show_default=str(_D.batch_size),
                                                      rich_help_panel=TR)] = None,
    micro_batch_size: Annotated[Optional[int], typer.Option(help="Examples per forward (exact accumulation "
                                                            "under one perturbation).", show_default="batch size",
                                                            rich_help_panel=TR)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Run seed: perturbations and data order.",
                                                show_default=str(_D.seed), rich_help_panel=TR)] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Dev evaluation interval in steps (0: none).",
                                                      show_default="steps/5", rich_help_panel=TR)] = None,
    eval_batch_size: Annotated[Optional[int], typer.Option(help="Examples per evaluation forward.",
                                                           show_default=str(_D.eval_batch_size),
                                                           rich_help_panel=TR)] = None,
    log_every: Annotated[Optional[int], typer.Option(help="Metrics/log line interval in steps.",
                                                     show_default=str(_D.log_every), rich_help_panel=TR)] = None,
    max_bad_steps: Annotated[Optional[int], typer.Option(help="Stop (exit 3) after this many consecutive steps "
                                                         "whose loss or projected gradient is NaN/inf; those "
                                                         "steps are skipped, never applied.",
                                                         show_default=str(_D.max_bad_steps),
                                                         rich_help_panel=TR)] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Run dir.",
                                                      show_default="runs/<algo>-<task>", rich_help_panel=CK)] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Checkpoint interval in steps (0: only best/ and "
                                                      "final/).", show_default="eval interval",
                                                      rich_help_panel=CK)] = None,
    keep_last: Annotated[Optional[int], typer.Option("--keep-last", "--save-total-limit",
                                                     help="checkpoint-<step>/ dirs kept (0: all); older ones are "
                                                     "deleted only after the new one is complete.",
                                                     show_default=str(_D.keep_last), rich_help_panel=CK)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run dir.",
                                            rich_help_panel=CK)] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run dir's latest checkpoint.",
                                         rich_help_panel=CK)] = False,
    dtype: Annotated[Optional[Dtype], typer.Option(help="Weight dtype; auto = float32 on CPU, bfloat16 on CUDA.",
                                                   show_default=_D.dtype, rich_help_panel=HW)] = None,
    device: Annotated[Optional[Device], typer.Option(help="Where to run.", show_default=_D.device,
                                                     rich_help_panel=HW)] = None,
    device_map: Annotated[Optional[str], typer.Option(help="Shard the model's layers over this machine's GPUs "
                                                      "with accelerate (auto, balanced, sequential) for models "
                                                      "larger than one GPU; ZO perturbs each tensor on its own "
                                                      "device.", show_default=False, rich_help_panel=HW)] = None,
    offload: Annotated[Optional[str], typer.Option(help="cpu: keep the transformer blocks in pinned CPU memory and "
                                                   "stream them to the GPU one at a time, every probe per upload "
                                                   "(ZO2), for models larger than the GPU; MeZO, ZO-SGD-MMT, "
                                                   "ZO-Adam, HiZOO(-L); full or LoRA; CUDA only.", show_default=False,
                                                   rich_help_panel=HW)] = None,
    nproc: Annotated[int, typer.Option(help="Data-parallel processes on this machine: reruns the command under "
                                       "torchrun (gloo on CPU, NCCL on GPUs); ranks share each step's batch and "
                                       "all-reduce 2-3 loss scalars per step. Under torchrun already, leave it 1.",
                                       rich_help_panel=HW)] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
) -> None:
    """Fine-tune a causal LM with a zeroth-order algorithm (2–3 forwards per step, no backprop).

    Writes config.yaml, metrics.jsonl, checkpoint-<step>/, best/, final/ (Hugging Face model dirs), eval.json
    and loss.png to the run dir.
    """
    overrides: dict[str, Any] = {k: v for k, v in locals().items()
                                 if k not in ("recipe", "as_json", "overwrite", "resume", "allow_degenerate", "nproc",
                                              "stochastic_rounding", "exact_bf16", "load_in_8bit", "load_in_4bit",
                                              "merge", "per_label", "trust_remote_code")}
    overrides = {k: (v.value if isinstance(v, Enum) else v) for k, v in overrides.items()}
    overrides["overwrite"] = overwrite or None
    overrides["resume"] = resume or None
    overrides["allow_degenerate"] = allow_degenerate or None
    overrides["stochastic_rounding"] = stochastic_rounding or None
    overrides["exact_bf16"] = exact_bf16 or None
    overrides["per_label"] = per_label or None
    overrides["trust_remote_code"] = trust_remote_code or None
    for flag, value in (("load_in_8bit", load_in_8bit), ("load_in_4bit", load_in_4bit), ("merge", merge)):
        overrides[flag] = value or None
    from zoft.config import resolve

    try:
        cfg = resolve(recipe, overrides)
    except ConfigError as exc:
        _fail(str(exc))
    if nproc < 1:
        _fail(f"--nproc must be >= 1 (got {nproc})")
    from zoft import distributed

    if nproc > 1 and not distributed.launched():
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


def _run_training(cfg: TrainConfig, as_json: bool) -> None:
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
    table = Table(title=f"zoft {summary['config']['algo']} on {summary['config']['task']}  "
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
             "[dim]# zero-shot baseline[/]\n\n  zoft eval smollm2-135m --task rte --data-dir ../shared/data/rte --icl 32 "
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
    grid: Annotated[list[str], typer.Option(help="KEY=V1,V2,...: a recipe key (lr, eps, hessian_smooth, seed, "
                                            "...) and its values; repeat for a product grid.",
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

    req = SweepRequest(recipe=str(recipe), grid=grid, set=set_ or [], output_dir=output_dir,
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


@app.command("estimate-memory", epilog="[bold]Examples[/]\n\n  zoft estimate-memory facebook/opt-13b --algo "
             "hizoo --gpu-memory 80GB\n\n  zoft estimate-memory smollm2-135m --algo tezo-adam --device cpu "
             "--dtype float32 --json")
def estimate_memory_cmd(
    model: Annotated[str, typer.Argument(help="Hub id (cached or reachable), local HF model dir, or smollm2-135m. "
                                         "Only its config is read.")],
    algo: Annotated[str, typer.Option(help="ZO algorithm (see `zoft list`).", rich_help_panel=Z)] = "mezo",
    mode: Annotated[str, typer.Option(help="Tuning mode: full, lora, prefix or prompt.", rich_help_panel=MD)] = "full",
    load_in_8bit: Annotated[bool, typer.Option("--load-in-8bit", help="int8 base (bitsandbytes).",
                                               rich_help_panel=MD)] = False,
    load_in_4bit: Annotated[bool, typer.Option("--load-in-4bit", help="NF4 base (bitsandbytes).",
                                               rich_help_panel=MD)] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.", rich_help_panel=MD)] = 8,
    lora_targets: Annotated[str, typer.Option(help="Modules with LoRA.", rich_help_panel=MD)] = "q_proj,v_proj",
    virtual_tokens: Annotated[Optional[int], typer.Option(help="Prefix/prompt length.", show_default="5 prefix, "
                                                          "10 prompt", rich_help_panel=MD)] = None,
    dtype: Annotated[Dtype, typer.Option(help="Weight dtype (auto = bfloat16 on CUDA, float32 on CPU).",
                                         rich_help_panel=HW)] = Dtype.auto,
    device: Annotated[Device, typer.Option(help="Where the run will be (cpu adds the process runtime and "
                                           "materialised attention scores; auto: this machine's).",
                                           rich_help_panel=HW)] = Device.cuda,
    batch_size: Annotated[int, typer.Option(help="Examples per forward.", rich_help_panel=TR)] = 16,
    rows_per_example: Annotated[int, typer.Option(help="Sequences per example: 1 when candidates are single "
                                                  "tokens (SST-2, RTE, BoolQ), else the number of candidates.",
                                                  rich_help_panel=TR)] = 1,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence (padded length).", rich_help_panel=TR)] = 256,
    gpu_memory: Annotated[Optional[str], typer.Option(help="Memory of the target device, e.g. 80GB: says "
                                                      "whether the run fits.", show_default=False,
                                                      rich_help_panel=HW)] = None,
    noise: Annotated[str, typer.Option(help="z generator of the run: table (44 MiB fp32 / 22 MiB bf16 of "
                                       "tables), philox (none) or randn (a z buffer as large as the largest "
                                       "tensor).", rich_help_panel=Z)] = "table",
    exact_bf16: Annotated[bool, typer.Option("--exact-bf16", help="Count 16-bit residuals for bf16 weights "
                                             "(2 bytes per weight).", rich_help_panel=Z)] = False,
    offload: Annotated[Optional[str], typer.Option(help="cpu: the run keeps its blocks in host memory (zoft train "
                                                   "--offload cpu); GPU figures count the resident modules and "
                                                   "three blocks, and the host memory is shown.",
                                                   show_default=False, rich_help_panel=HW)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON.")] = False,
) -> None:
    """Estimate the memory of a ZO run before launch, next to first-order AdamW fine-tuning.

    Builds the model on the meta device (no weights are downloaded or allocated) and counts weights, the
    algorithm's state and step temporaries, one forward's activations and the kept logits.
    """
    from zoft.memory import MemoryRequest, estimate

    if device == Device.auto:
        import torch

        device = Device.cuda if torch.cuda.is_available() else Device.cpu
    dt = dtype.value if dtype != Dtype.auto else ("bfloat16" if device != Device.cpu else "float32")
    req = MemoryRequest(model=model, algo=algo, mode=mode, dtype=dt, device=device.value, batch_size=batch_size,
                        rows_per_example=rows_per_example, seq_len=seq_len, gpu_memory=gpu_memory, noise=noise,
                        exact_bf16=exact_bf16, lora_r=lora_r, virtual_tokens=virtual_tokens,
                        lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
                        quantize="8bit" if load_in_8bit else "4bit" if load_in_4bit else None, offload=offload)
    if load_in_8bit and load_in_4bit:
        _fail("--load-in-8bit and --load-in-4bit contradict each other; keep one")
    result = _guarded(estimate, req)
    if as_json:
        out.print_json(json.dumps(result))
        return
    gib = lambda b: f"{b / 2**30:,.2f}"  # noqa: E731
    base = f"{result['quantize']} base, " if result["quantize"] else ""
    table = Table(title=f"{result['model']}: {result['algo']} ({result['mode']}, {base}{result['dtype']}, "
                        f"{result['device']}), {result['rows']} rows × {result['seq_len']} tokens, "
                        f"{result['trainable_params']:,} trainable",
                  title_justify="left")
    table.add_column("component")
    table.add_column("ZO GiB", justify="right")
    table.add_column("first-order AdamW GiB", justify="right")
    fo = result["first_order_adamw"]
    table.add_row("weights", gib(result["components"]["weights"]), gib(fo["weights"]))
    table.add_row("optimizer state", gib(result["components"]["optimizer state"]),
                  gib(fo["adam moments"]) + " (moments)")
    if "exact-bf16 residuals" in result["components"]:
        table.add_row("exact-bf16 residuals", gib(result["components"]["exact-bf16 residuals"]), "—")
    table.add_row("gradients", gib(result["components"]["gradients"]) if "gradients" in result["components"]
                  else "—", gib(fo["gradients"]))
    table.add_row("step temporaries", gib(result["components"]["step temporaries"]), "—")
    table.add_row("activations", gib(result["components"]["activations"]), gib(fo["activations"]) + " (saved)")
    table.add_row("logits", gib(result["components"]["logits"]), gib(fo["logits"]))
    if "runtime" in result["components"]:
        table.add_row("runtime (Python, torch)", gib(result["components"]["runtime"]),
                      gib(result["components"]["runtime"]))
    table.add_row("[bold]total[/]", f"[bold]{gib(result['total'])}[/]", f"[bold]{gib(fo['total'])}[/]")
    out.print(table)
    if result["offload"]:
        out.print(f"offload: the blocks need {gib(result['host_bytes'])} GiB of pinned host memory; the GPU "
                  "figures count the modules outside them and three blocks")
    if result["gpu_memory"] is not None:
        verdict = lambda ok: "[green]fits[/]" if ok else "[red]does not fit[/]"  # noqa: E731
        out.print(f"on {gib(result['gpu_memory'])} GiB: ZO {verdict(result['fits'])}, first-order AdamW "
                  f"{verdict(result['first_order_fits'])}")


@app.command("list", epilog="[bold]Examples[/]\n\n  zoft list\n\n  zoft list --model smollm2-135m --json   "
             "[dim]# optimizer state in bytes of every algorithm on that model[/]")
def list_cmd(
    model: Annotated[Optional[str], typer.Option(help="Also give each algorithm's optimizer state in bytes for "
                                                 "full fine-tuning of this model (built on the meta device: no "
                                                 "weights are loaded).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show the algorithms (when to pick each, forwards per step, persistent state), tasks and recipes."""
    from zoft.catalog import catalog

    data = _guarded(catalog, RECIPES_DIR, model)
    if as_json:
        out.print_json(json.dumps(data))
        return
    algo_columns = ("name", "forwards_per_step", "state", "summary", "paper")
    if model is not None:
        for row in data["algorithms"]:
            row["state_MiB"] = f"{row['state_bytes'] / 2**20:,.1f}"
        algo_columns = ("name", "forwards_per_step", "state", "state_MiB", "summary")
    for title, rows, columns in (
        ("Algorithms", data["algorithms"], algo_columns),
        ("Tasks", data["tasks"], ("name", "metric", "description")),
        ("Recipes", data["recipes"], ("path", "description")),
    ):
        table = Table(title=title, title_justify="left")
        for col in columns:
            table.add_column(col.replace("_", " "), justify="right" if col in ("forwards_per_step", "state_MiB")
                             else "left")
        for row in rows:
            table.add_row(*(str(row.get(c, "")) for c in columns))
        out.print(table)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
