"""One typed training config from three sources: defaults < recipe YAML < command-line flags.

Each `TrainConfig` field carries its help text and its `--help` panel; `zoft train`'s flags are generated from
these fields (`num_train` ↔ `--num-train`) and from the algorithms' declared options (`zoft.algos.option_table`),
which a recipe gives as top-level keys too and the config keeps in `algo_options`. A recipe is a YAML mapping of
these keys; unknown keys and wrong types are errors that name the key. The fully resolved config is written to
`<output_dir>/config.yaml` and is itself a recipe: `zoft train runs/x/config.yaml` reruns the same experiment.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from zoft.errors import ConfigError, did_you_mean

__all__ = ["ConfigError", "TrainConfig", "check_keys", "check_value", "finalize", "known_keys", "load_recipe",
           "resolve", "to_yaml", "trajectory_keys", "validate"]

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
MODEL, DATA, MODE, ALGO, TRAIN, CKPT, HARDWARE = ("Model", "Data", "Tuning mode", "ZO algorithm", "Training",
                                                 "Checkpointing", "Hardware")


def knob(default: Any, help: str, panel: str, show: str | bool | None = None, flags: tuple[str, ...] = (),
         trajectory: bool = False) -> Any:
    """A config field with its `--help` text and panel. `show`: the default as `--help` shows it (None: the value;
    False: none); `flags`: more names of the flag (`-o`); `trajectory`: the value changes the run's trajectory, so
    a resume must keep it."""
    return dataclasses.field(default=default, metadata={"help": help, "panel": panel, "show": show, "flags": flags,
                                                        "trajectory": trajectory})


@dataclass
class TrainConfig:
    """All knobs of `zoft train`; each field's help is the help of its flag."""

    # Model
    model: str = knob("smollm2-135m", "Hub id, local HF model dir, or the embedded offline default smollm2-135m.",
                      MODEL, trajectory=True)
    trust_remote_code: bool = knob(False, "Allow a model that ships its own Python code (auto_map) to run it. Off "
                                   "by default: read the code first.", MODEL)
    # Data
    task: str = knob("sst2", "sst2, rte, cb, boolq, wsc, wic, multirc, copa, record, squad, drop, sst5, snli, mnli, "
                     "trec or custom (see `zoft list`).", DATA, trajectory=True)
    data_dir: str | None = knob(None, "Dir with the task's original files (GLUE tsv, SuperGLUE jsonl, SQuAD "
                                "json/zip, TREC txt, LM-BFF k-shot tsv), or 'builtin' for zoft's SST-2 sample. "
                                "Default: the Hub, falling back to the sample offline.", DATA, False, trajectory=True)
    data_file: str | None = knob(None, "Custom task: train jsonl/csv.", DATA, False, trajectory=True)
    eval_file: str | None = knob(None, "Evaluate on this file instead of the task's eval split (e.g. "
                                 "snli/dev.jsonl beside a k-shot --data-dir). Custom task default: rows of "
                                 "--data-file not sampled.", DATA, False)
    text_field: str | None = knob(None, "Custom task: text column (default sentence or text).", DATA, False,
                                  trajectory=True)
    label_field: str = knob("label", "Custom task: label column.", DATA, trajectory=True)
    verbalizer: str | None = knob(None, "Custom task: label=word pairs, e.g. '0=terrible,1=great'.", DATA, False,
                                  trajectory=True)
    template: str | None = knob(None, "Custom task: prompt template over the columns, e.g. '{sentence} It was'.",
                                DATA, False, trajectory=True)
    prompt_field: str | None = knob(None, "Custom generation task: prompt column (or use --template).", DATA,
                                    "prompt", trajectory=True)
    target_field: str | None = knob(None, "Custom generation task: the column to generate; scored by token F1 / "
                                    "exact match.", DATA, False, trajectory=True)
    num_train: int = knob(1000, "Train examples sampled (MeZO protocol); per label with --per-label.", DATA,
                          trajectory=True)
    num_dev: int | None = knob(None, "Dev examples (taken from train) for checkpoint selection.", DATA,
                               "500; CB, COPA 100; --per-label: --num-train", trajectory=True)
    per_label: bool = knob(False, "k-shot sampling: --num-train (and --num-dev, default the same) examples per "
                           "label, as in MeZO's RoBERTa experiments (k = 16 or 512).", DATA, trajectory=True)
    num_eval: int = knob(1000, "Eval examples sampled from the validation split.", DATA)
    train_set_seed: int = knob(0, "Seed of the train/dev/eval sampling.", DATA, trajectory=True)
    max_length: int = knob(2048, "Max tokens per sequence (left-truncated, keeping BOS).", DATA, trajectory=True)
    # Tuning mode
    mode: str = knob("full", "full (every weight), lora (peft LoRA adapters), prefix (MeZO prefix tuning: 5 "
                     "key/value vectors per layer from real-token activations), prompt (10 soft input "
                     "embeddings) or scales (the fp32 block scales of an NF4 base, with --load-in-4bit: QZO). Other "
                     "modes freeze the base; their default lr/eps follow MeZO's grids (LoRA 1e-4/1e-2, prefix "
                     "1e-2/1e-1, prompt 1e-3/1e-1; scales 1e-5/1e-3).", MODE, trajectory=True)
    lora_r: int = knob(8, "LoRA rank r.", MODE, trajectory=True)
    lora_alpha: float = knob(16.0, "LoRA α (scale α/r).", MODE, "16", trajectory=True)
    lora_targets: str = knob("q_proj,v_proj", "Comma-separated module names that get LoRA.", MODE, trajectory=True)
    virtual_tokens: int | None = knob(None, "Prefix/prompt length.", MODE, "5 prefix, 10 prompt", trajectory=True)
    prefix_init: str = knob("activations", "Prefix init: activations (the frozen model's keys and values on random "
                            "real tokens, MeZO) or random.", MODE, trajectory=True)
    load_in_8bit: bool = knob(False, "Quantize the frozen base to int8 (bitsandbytes); adapter modes only.", MODE,
                              trajectory=True)
    load_in_4bit: bool = knob(False, "Quantize the base to NF4 (bitsandbytes); adapter modes, or --mode scales.", MODE,
                              trajectory=True)
    merge: bool = knob(False, "LoRA: write final/ as a plain HF model with the adapter merged (the adapter stays in "
                       "final/adapter/).", MODE)
    # ZO algorithm
    algo: str = knob("mezo", "The algorithm: {algorithms} (`zoft list` says when to pick each; fo-adam is "
                     "first-order AdamW with backprop, the reference). Its own options are in the panels below.",
                     ALGO, trajectory=True)
    objective: str = knob("ce", "ce (cross-entropy; COPA, ReCoRD and generation tasks: on the gold tokens), or a "
                          "non-differentiable one: accuracy (classification) or f1 (generation), minimising minus "
                          "the batch metric (MeZO Table 3).", ALGO, trajectory=True)
    lr: float | None = knob(None, "Learning rate (constant).", ALGO, "the algorithm's (MeZO full FT 1e-6; LoRA, "
                            "prefix, prompt: the mode's)", trajectory=True)
    eps: float | None = knob(None, "Perturbation scale ε.", ALGO, "1e-3 (LoRA 1e-2, prefix and prompt 1e-1)",
                             trajectory=True)
    weight_decay: float = knob(0.0, "Weight decay λ, decoupled (zo-sgd-mmt: L2 added to the momentum, as torch "
                               "SGD); never on 1-D, bias or norm tensors.", ALGO, "0", trajectory=True)
    noise: str = knob("table", "Generator of z: table (windows of a fixed table of Gaussian quantiles with random "
                      "signs, at seeded offsets: a pass costs a memory sweep, ~20x cheaper than torch.randn on a "
                      "2-core CPU; tables take 44 MiB fp32 / 22 MiB bf16), philox (a fused Triton kernel makes z "
                      "in the update's own pass: CUDA only) or randn (torch.randn, exact N(0, I)).", ALGO,
                      trajectory=True)
    stochastic_rounding: bool = knob(False, "Round the update pass stochastically so that updates far below half "
                                     "an ulp (most of MeZO's in bf16) survive in expectation; bfloat16/float16 "
                                     "weights only (no effect in float32).", ALGO, trajectory=True)
    exact_bf16: bool = knob(False, "Keep the 16 bits that fp32 has beyond bf16 beside each bf16 weight (+2 "
                            "bytes/weight): every pass is exact fp32 arithmetic while forwards run in bf16. Without "
                            "it bf16 weights random-walk: 3.8 % RMS after 100 perturb/restore cycles on SmolLM2.",
                            ALGO, trajectory=True)
    # Training
    steps: int | None = knob(None, "ZO steps. Default: MeZO's 20,000 on a GPU; on a CPU, where that takes many hours, "
                             "give --steps or a recipe (zoft recipes).", TRAIN, "20000 on a GPU")
    batch_size: int = knob(16, "Examples per step (each expands to one row per candidate).", TRAIN, trajectory=True)
    micro_batch_size: int | None = knob(None, "Examples per forward (exact accumulation under one perturbation).",
                                        TRAIN, "batch size")
    seed: int = knob(0, "Run seed: perturbations and data order.", TRAIN, trajectory=True)
    eval_every: int | None = knob(None, "Dev evaluation interval in steps (0: only at the end).", TRAIN, "steps/5")
    eval_batch_size: int = knob(16, "Examples per evaluation forward.", TRAIN)
    log_every: int = knob(10, "Metrics/log line interval in steps.", TRAIN)
    report_to: str = knob("none", "Also send what metrics.jsonl logs (and the config) to tensorboard, wandb and/or "
                          "mlflow, comma-separated; none: only metrics.jsonl and loss.png.", TRAIN)
    max_bad_steps: int = knob(3, "Stop (exit 3) after this many consecutive steps whose loss or projected gradient "
                              "is NaN/inf; those steps are skipped, never applied.", TRAIN)
    # Checkpointing
    output_dir: str | None = knob(None, "Run dir.", CKPT, "runs/<algo>-<task>", flags=("-o",))
    save_every: int | None = knob(None, "Checkpoint interval in steps (0: only best/ and final/).", CKPT,
                                  "eval interval")
    keep_last: int = knob(2, "checkpoint-<step>/ dirs kept (0: all); older ones are deleted only after the new one "
                          "is complete.", CKPT, flags=("--save-total-limit",))
    overwrite: bool = knob(False, "Replace an existing run dir.", CKPT)
    resume: bool = knob(False, "Continue from the run dir's latest checkpoint (none yet: start at step 0).", CKPT)
    # Hardware
    dtype: str = knob("auto", "Weight dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16 or "
                      "float16.", HARDWARE, trajectory=True)
    device: str = knob("auto", "Where to run: auto, cpu, cuda or cuda:N.", HARDWARE)
    device_map: str | None = knob(None, "Shard the model's layers over this machine's GPUs with accelerate (auto, "
                                  "balanced, balanced_low_0, sequential) for models larger than one GPU; ZO "
                                  "perturbs each tensor on its own device.", HARDWARE, False)
    offload: str | None = knob(None, "cpu: keep the transformer blocks in pinned CPU memory and stream them to the "
                               "GPU one at a time, every probe per upload (ZO2), for models larger than the GPU; "
                               "full or LoRA mode; CUDA only.", HARDWARE, False)
    #: the algorithm's own options (`zoft.algos.option_table`), given as top-level keys in recipes and flags
    algo_options: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"cli": False})

    def flag(self, name: str) -> str:
        return "--" + name.replace("_", "-")


KEYS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("cli", True))
FIELDS = {f.name: f for f in fields(TrainConfig) if f.name in KEYS}
_TYPES = typing.get_type_hints(TrainConfig)


def _options():
    from zoft.algos import option_table

    return option_table()


def known_keys() -> tuple[str, ...]:
    """Every key a recipe may hold: the config's fields and the algorithms' options."""
    return KEYS + tuple(_options())


def _coerce(key: str, hint: Any, value: Any, source: str) -> Any:
    """Check `value` against a type hint; YAML 1.1 reads `1e-6` as a string, so numeric strings pass."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{source}: key '{key}' must not be empty")
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if t is str and isinstance(value, (str, Path)):
            return str(value)
    names = " or ".join(t.__name__ for t in allowed if t is not type(None))
    raise ConfigError(f"{source}: key '{key}' must be {names}, got {type(value).__name__} {value!r}")


def check_value(key: str, value: Any, source: str) -> Any:
    """One recipe key's value, type-checked (a config field or an algorithm option); unknown keys are refused with
    the closest known one."""
    if key in FIELDS:
        return _coerce(key, _TYPES[key], value, source)
    options = _options()
    if key in options:
        return _coerce(key, options[key][0].type | None, value, source)
    hint = f" (did you mean '{_HF_NAMES[key]}'?)" if key in _HF_NAMES else did_you_mean(key, known_keys(), quote="'")
    raise ConfigError(f"{source}: unknown key '{key}'{hint}")


#: what Hugging Face TrainingArguments (and MeZO's scripts) call zoft's keys
_HF_NAMES = {"learning_rate": "lr", "zo_eps": "eps", "max_steps": "steps", "per_device_train_batch_size":
             "batch_size", "num_train_epochs": "steps", "model_name": "model", "model_name_or_path": "model",
             "task_name": "task", "output": "output_dir",
             "save_steps": "save_every", "eval_steps": "eval_every", "logging_steps": "log_every",
             "save_total_limit": "keep_last"}


def check_keys(mapping: dict[str, Any], source: str) -> dict[str, Any]:
    """TrainConfig keyword arguments from a flat mapping (a recipe, flags): fields as they are, algorithm options
    gathered in `algo_options`; types checked and unknown keys refused, naming the key."""
    out: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in mapping.items():
        if key == "algo_options" and isinstance(value, dict):  # a TrainConfig turned into a dict
            for name, v in value.items():
                options[name] = check_value(name, v, source)
            continue
        checked = check_value(key, value, source)
        if key in FIELDS:
            out[key] = checked
        else:
            options[key] = checked
    if options:
        out["algo_options"] = options
    return out


def read_mapping(path: str | Path, what: str = "recipe") -> dict[str, Any]:
    """A YAML file of config keys (a recipe, a run's config.yaml) as a dict; ConfigError naming the file when it is
    missing, not UTF-8, not YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: must be a mapping of config keys, got {type(data).__name__}")
    return data


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML into checked config keys (algorithm options flat, as written)."""
    data = read_mapping(path)
    return {key: check_value(key, value, f"recipe {path}") for key, value in data.items()}


def resolve(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """defaults < recipe < overrides (None values in overrides mean 'not given'), then validated."""
    values: dict[str, Any] = dict(load_recipe(recipe)) if recipe is not None else {}
    given = {k: check_value(k, v, "command line") for k, v in (overrides or {}).items() if v is not None}
    values.update(given)
    kwargs = check_keys(values, "command line")
    if "algo" in kwargs:
        from zoft.algos import canonical

        kwargs["algo"] = canonical(kwargs["algo"])
    cfg = TrainConfig(**kwargs)
    validate(cfg, strict=tuple(given))
    return cfg


def validate(cfg: TrainConfig, strict: tuple[str, ...] = ()) -> None:
    """Range and combination checks, each naming the flag and what to do. An option of another algorithm is refused
    when given on the command line (`strict`: the keys given there) or with a value other than its default; a
    recipe may carry one at its default (zoft before 0.3 wrote every algorithm's options into each run's
    config.yaml)."""
    _validate_numbers(cfg)
    _validate_algorithm(cfg, strict)
    _validate_task(cfg)
    _validate_mode(cfg)
    _validate_hardware(cfg)
    from zoft import trackers

    trackers.check_installed(trackers.parse(cfg.report_to))


def _validate_numbers(cfg: TrainConfig) -> None:
    for key in FIELDS:  # nan < 0 and inf > 0 are both False/True the wrong way: check finiteness first
        value = getattr(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{cfg.flag(key)} must be a finite number (got {value})")
    positive = ["steps", "batch_size", "num_train", "num_eval", "eval_batch_size", "log_every", "max_length",
                "max_bad_steps", "micro_batch_size", "lr", "eps"]
    for key in positive:
        value = getattr(cfg, key)
        if value is not None and not value > 0:
            raise ConfigError(f"{cfg.flag(key)} must be > 0 (got {value})")
    for key in ["num_dev", "eval_every", "save_every", "keep_last", "weight_decay"]:
        value = getattr(cfg, key)
        if value is not None and not value >= 0:
            raise ConfigError(f"{cfg.flag(key)} must be >= 0 (got {value})")
    # step seeds hash the run seed as a 64-bit integer (a larger one would wrap onto another run's seeds); the
    # sampling permutation is numpy's RandomState, which takes 32 bits
    for key, bits in (("seed", 63), ("train_set_seed", 32)):
        value = getattr(cfg, key)
        if not 0 <= value < 2**bits:
            raise ConfigError(f"{cfg.flag(key)} {value}: must lie in [0, 2^{bits})")
    if cfg.micro_batch_size and cfg.micro_batch_size > cfg.batch_size:
        raise ConfigError(f"--micro-batch-size {cfg.micro_batch_size} exceeds --batch-size {cfg.batch_size}")
    if cfg.overwrite and cfg.resume:
        raise ConfigError("--overwrite and --resume contradict each other; pick one")


def _validate_algorithm(cfg: TrainConfig, strict: tuple[str, ...] = ()) -> None:
    """The algorithm, its own options (others' options refused by name), and what its capabilities rule out."""
    from zoft.algos import check_mode, check_owners, get_algorithm
    from zoft.algos.options import resolve as resolve_options
    from zoft.perturb import NOISE_KINDS

    cls = get_algorithm(cfg.algo)
    check_owners(cfg.algo, cfg.algo_options, strict)
    own = {o.name for o in cls.options}
    cls.check_options(resolve_options(cls.__name__, cls.options,
                                      {k: v for k, v in cfg.algo_options.items() if k in own}))
    check_mode(cfg.algo, cfg.mode)
    if cls.first_order:
        if cfg.objective != "ce":
            raise ConfigError(f"--algo {cfg.algo} backpropagates, and --objective {cfg.objective} has no gradient; "
                              "use --objective ce or a ZO algorithm")
        if cfg.exact_bf16 or cfg.stochastic_rounding or cfg.noise != "table":
            raise ConfigError(f"--exact-bf16/--stochastic-rounding/--noise shape ZO perturbation passes; --algo "
                              f"{cfg.algo} has none: drop them")
    if cfg.exact_bf16 and cfg.stochastic_rounding:
        raise ConfigError("--exact-bf16 and --stochastic-rounding contradict each other: exact updates need no "
                          "rounding; keep one")
    if cfg.noise not in NOISE_KINDS:
        raise ConfigError(f"--noise {cfg.noise}: choose {' or '.join(NOISE_KINDS)}")
    from zoft import distributed

    if distributed.launched() and not cls.data_parallel:
        raise ConfigError(f"--algo {cfg.algo} backpropagates: data-parallel zoft all-reduces losses, not "
                          "gradients; run it in one process")


def _validate_task(cfg: TrainConfig) -> None:
    from zoft.tasks import TASKS

    if cfg.task != "custom" and cfg.task not in TASKS:
        raise ConfigError(f"--task {cfg.task}: unknown task{did_you_mean(cfg.task.lower(), [*TASKS, 'custom'])}; choose "
                          f"from {', '.join([*TASKS, 'custom'])}")
    if cfg.task == "custom" and not cfg.data_file:
        raise ConfigError("--task custom needs --data-file (a jsonl or csv with text and label columns)")
    if cfg.task == "custom" and cfg.data_dir is not None:
        raise ConfigError(f"--data-dir {cfg.data_dir} does not apply to --task custom, which reads --data-file "
                          "(and --eval-file); drop --data-dir")
    custom_only = ("data_file", "verbalizer", "template", "prompt_field", "target_field", "text_field")
    given = [cfg.flag(k) for k in custom_only if getattr(cfg, k) is not None]
    if cfg.task != "custom" and given:
        raise ConfigError(f"{'/'.join(given)} apply to --task custom only; --task {cfg.task} has its own template")
    if cfg.target_field is not None and cfg.verbalizer is not None:
        raise ConfigError("--target-field (generation) and --verbalizer (classification) contradict each other; "
                          "keep one")
    if cfg.prompt_field is not None and cfg.target_field is None:
        raise ConfigError("--prompt-field needs --target-field (the column the model learns to generate)")
    from zoft.objectives import check

    # a custom task is a generation task exactly when it names a target column
    kind = TASKS[cfg.task].objective if cfg.task in TASKS else \
        "generation" if cfg.target_field is not None else "classification"
    problem = check(cfg.objective, kind, cfg.task)
    if problem:
        raise ConfigError(problem)


def _validate_mode(cfg: TrainConfig) -> None:
    from zoft.modes import MODES, check_scales_base

    if cfg.mode not in MODES:
        raise ConfigError(f"--mode {cfg.mode}: unknown mode{did_you_mean(cfg.mode.lower(), MODES)}; choose {', '.join(MODES)}")
    defaults = TrainConfig()
    for keys, modes in ((("lora_r", "lora_alpha", "lora_targets", "merge"), ("lora",)),
                        (("virtual_tokens",), ("prefix", "prompt")), (("prefix_init",), ("prefix",))):
        for key in keys:
            if cfg.mode not in modes and getattr(cfg, key) != getattr(defaults, key):
                raise ConfigError(f"{cfg.flag(key)} applies to --mode {' or '.join(modes)}, not {cfg.mode}")
    if cfg.prefix_init not in ("activations", "random"):
        raise ConfigError(f"--prefix-init {cfg.prefix_init}: choose activations or random")
    if cfg.lora_r < 1 or (cfg.virtual_tokens is not None and cfg.virtual_tokens < 1):
        raise ConfigError("--lora-r and --virtual-tokens must be >= 1")
    if not (cfg.lora_alpha > 0 and math.isfinite(cfg.lora_alpha)):
        raise ConfigError(f"--lora-alpha must be a finite number > 0 (got {cfg.lora_alpha})")
    if not [t for t in cfg.lora_targets.split(",") if t.strip()]:
        raise ConfigError("--lora-targets: give module names such as q_proj,v_proj")
    if cfg.load_in_8bit and cfg.load_in_4bit:
        raise ConfigError("--load-in-8bit and --load-in-4bit contradict each other; keep one")
    quantized = "--load-in-8bit" if cfg.load_in_8bit else "--load-in-4bit" if cfg.load_in_4bit else None
    if quantized and cfg.mode == "full":
        raise ConfigError(f"--mode full with {quantized}: int8/NF4 weights cannot take in-place float "
                          "perturbations (and re-quantising would erase them); use --mode scales (NF4: ZO on the "
                          "quantization scales), lora, prefix or prompt")
    check_scales_base(cfg.mode, "8bit" if cfg.load_in_8bit else "4bit" if cfg.load_in_4bit else None)
    if quantized and cfg.merge:
        raise ConfigError(f"--merge with {quantized}: adapters cannot be merged into quantized weights; drop "
                          "--merge (final/ keeps the adapter)")
    if quantized and (cfg.exact_bf16 or cfg.stochastic_rounding):
        raise ConfigError(f"{quantized}: adapters over a quantized base are fp32; drop --exact-bf16 / "
                          "--stochastic-rounding")


def _validate_hardware(cfg: TrainConfig) -> None:
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"--dtype {cfg.dtype}: choose from {', '.join(DTYPES)}")
    if cfg.device not in DEVICES and not cfg.device.startswith("cuda:"):
        raise ConfigError(f"--device {cfg.device}: choose from {', '.join(DEVICES)} (or cuda:N)")
    from zoft.offload import check_config

    problem = check_config(cfg)
    if problem:
        raise ConfigError(problem)
    if cfg.device_map is not None:
        if cfg.device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
            raise ConfigError(f"--device-map {cfg.device_map}: choose auto, balanced, balanced_low_0 or sequential")
        if cfg.load_in_8bit or cfg.load_in_4bit:
            raise ConfigError("--device-map with --load-in-8bit/4bit: quantized bases are placed on --device; "
                              "drop --device-map")


def trajectory_keys(cfg: TrainConfig) -> tuple[str, ...]:
    """The settings of `cfg` that change its trajectory: a resume must use the values of the run it continues
    (the config's trajectory fields and the algorithm's options but those declared otherwise)."""
    from zoft.algos import get_algorithm

    own = tuple(o.name for o in get_algorithm(cfg.algo).options if o.trajectory)
    return tuple(name for name, f in FIELDS.items() if f.metadata["trajectory"]) + own


def value_of(cfg: TrainConfig, key: str) -> Any:
    """A config field or an algorithm option of `cfg`, by key."""
    return getattr(cfg, key) if key in FIELDS else cfg.algo_options.get(key)


#: MeZO's step budget (OPT-13B, 20,000 steps of batch 16): the default where a GPU runs it
GPU_DEFAULT_STEPS = 20000


def _default_steps(cfg: TrainConfig) -> int:
    """MeZO's 20,000 steps on a GPU; on a CPU (about 1-3 s a step for a 135M model on 2 cores: 6-17 hours, days
    for larger ones) a run without --steps is refused rather than started."""
    import torch

    if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()):
        return GPU_DEFAULT_STEPS
    raise ConfigError(f"--steps not given: on a CPU, MeZO's {GPU_DEFAULT_STEPS:,} steps would take many hours; pass "
                      "--steps N (the demo recipe uses 150: zoft train mezo-sst2) or a recipe (zoft recipes)")


def finalize(cfg: TrainConfig) -> TrainConfig:
    """Fill the 'None → derived' fields so config.yaml records the values the run actually used."""
    from zoft.algos import get_algorithm
    from zoft.algos.options import resolve as resolve_options
    from zoft.modes import DEFAULT_VIRTUAL_TOKENS, MODE_DEFAULTS

    algo = get_algorithm(cfg.algo)
    cfg = dataclasses.replace(cfg, algo_options=dict(cfg.algo_options))
    mode_lr, mode_eps = MODE_DEFAULTS.get(cfg.mode, (algo.default_lr, algo.default_eps))
    # algorithms with normalised steps (Adam-like) keep their own lr in every mode; the SGD family takes the mode's
    cfg.lr = (algo.default_lr if algo.lr_grid == "own" else mode_lr) if cfg.lr is None else cfg.lr
    cfg.eps = mode_eps if cfg.eps is None else cfg.eps
    if cfg.mode in DEFAULT_VIRTUAL_TOKENS and cfg.virtual_tokens is None:
        cfg.virtual_tokens = DEFAULT_VIRTUAL_TOKENS[cfg.mode]
    own = {o.name for o in algo.options}
    # record the algorithm's defaults so config.yaml says what the run used
    cfg.algo_options = resolve_options(algo.__name__, algo.options,
                                       {k: v for k, v in cfg.algo_options.items() if k in own})
    cfg.steps = _default_steps(cfg) if cfg.steps is None else cfg.steps
    cfg.eval_every = max(cfg.steps // 5, 1) if cfg.eval_every is None else cfg.eval_every
    cfg.save_every = cfg.eval_every if cfg.save_every is None else cfg.save_every
    cfg.micro_batch_size = cfg.micro_batch_size or cfg.batch_size
    cfg.output_dir = cfg.output_dir or f"runs/{cfg.algo}-{cfg.task}"
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as a recipe: flat keys, the algorithm's options after the algorithm's section (run
    controls overwrite/resume are left out so a rerun starts fresh)."""
    data: dict[str, Any] = {}
    for key in KEYS:
        if key in ("overwrite", "resume"):
            continue
        data[key] = getattr(cfg, key)
        if key == "exact_bf16":
            data.update(cfg.algo_options)
    return yaml.safe_dump(data, sort_keys=False)
