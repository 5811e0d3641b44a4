"""One typed training config from three sources: defaults < recipe YAML < command-line flags.

Every field's docstring-like comment in `TrainConfig` is the meaning of the flag of the same name
(`num_train` ↔ `--num-train`). A recipe is a YAML mapping of these keys; unknown keys and wrong types are errors
that name the key. The fully resolved config is written to `<output_dir>/config.yaml` and is itself a recipe:
`zoft train runs/x/config.yaml` reruns the same experiment.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A user-fixable problem with flags, a recipe or an input path (the CLI exits with code 2)."""


DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """All knobs of `zoft train`; see `zoft train --help` for each flag's meaning."""

    # Model
    model: str = "smollm2-135m"         # hub id, local HF dir, or the embedded alias smollm2-135m
    trust_remote_code: bool = False     # allow a model's own Python code (auto_map); off unless asked for
    # Data
    task: str = "sst2"
    data_dir: str | None = None         # dir with the task's original files, or "builtin" for the shipped sample
    data_file: str | None = None        # custom task: train jsonl/csv
    eval_file: str | None = None        # file to evaluate on instead of the eval split (custom: default = rows of
                                        # data_file not sampled)
    text_field: str | None = None
    label_field: str = "label"
    verbalizer: str | None = None       # custom task: "0=terrible,1=great"
    template: str | None = None         # custom task: "{sentence} It was"
    prompt_field: str | None = None     # custom generation task: prompt column (default prompt)
    target_field: str | None = None     # custom generation task: target column (makes the task a generation one)
    num_train: int = 1000               # MeZO protocol: 1000 train / 500 dev / 1000 eval
    num_dev: int | None = None          # None → the task's default (500; CB and COPA 100; --per-label: num_train)
    per_label: bool = False             # k-shot: num_train / num_dev are per label (RoBERTa experiments)
    num_eval: int = 1000
    train_set_seed: int = 0             # seed of the train/dev/eval sampling permutation
    max_length: int = 2048              # tokens per sequence, left-truncated keeping BOS
    # Tuning mode
    mode: str = "full"                  # full | lora | prefix | prompt: which tensors ZO perturbs
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "q_proj,v_proj"  # module names that get LoRA adapters
    virtual_tokens: int | None = None   # prefix / prompt length; None → 5 (prefix, MeZO) / 10 (prompt)
    prefix_init: str = "activations"    # prefix: activations (MeZO: K/V of random real tokens) or random
    load_in_8bit: bool = False          # frozen base quantized with bitsandbytes (adapter modes only)
    load_in_4bit: bool = False          # NF4 base (adapter modes only)
    merge: bool = False                 # lora: write final/ merged as a plain HF model (adapter in final/adapter)
    # ZO algorithm
    algo: str = "mezo"
    objective: str = "ce"               # ce | accuracy | f1: minus the batch metric (non-differentiable, MeZO Table 3)
    lr: float | None = None             # None → the algorithm's default (MeZO full FT: 1e-6)
    eps: float | None = None            # None → the algorithm's default (1e-3)
    weight_decay: float = 0.0
    noise: str = "table"                # z generator: table (seeded noise-table windows) or randn (torch.randn)
    stochastic_rounding: bool = False   # round the update pass stochastically (bf16/fp16 weights only)
    exact_bf16: bool = False            # bf16 weights + 16-bit residuals: the fp32 trajectory, bf16 forwards
    hessian_smooth: float | None = None  # HiZOO α (EMA of H); None → 1e-6
    hessian_schedule: str | None = None  # HiZOO piecewise-constant α by step, "0:1e-4,2000:1e-6"
    hessian_estimator: str = "code"     # HiZOO curvature sample: code (c·H·z², released code) or paper
    allow_degenerate: bool = False      # HiZOO: permit α = 0 (H frozen at 1: MeZO with a wasted forward)
    momentum: float | None = None       # β of ZO-SGD-MMT / TeZO-m, β1 of ZO-Adam / TeZO-Adam; None → 0.9
    beta2: float | None = None          # ZO-Adam / TeZO-Adam β2; None → 0.999
    adam_eps: float | None = None       # ZO-Adam / TeZO-Adam δ in √v̂ + δ; None → 1e-8
    rank: int | None = None             # TeZO rank r per matrix (capped at min(m, n)); None → 32
    rank_mode: str | None = None        # TeZO: fixed (rank for every matrix) or spectrum; None → fixed
    rank_threshold: float | None = None  # TeZO spectrum: count σ_k ≥ threshold·σ_1; None → 0.5
    rank_min: int | None = None         # TeZO spectrum: lower clip of r_i; None → 4
    rank_max: int | None = None         # TeZO spectrum: upper clip (per-layer cap) of r_i; None → 64
    tezo_scale: str | None = None       # TeZO: sqrt-r (Z scaled by 1/√r, MeZO's grids carry over) or none; None → sqrt-r
    tezo_factors: str | None = None     # TeZO: cache U, V on the device or regenerate them every pass; None → cache
    # Training
    steps: int = 20000
    batch_size: int = 16                # examples per step (each expands to one row per candidate)
    micro_batch_size: int | None = None  # examples per forward; None → batch_size
    seed: int = 0                       # run seed: perturbation seeds and data order
    eval_every: int | None = None       # None → steps // 5 (MeZO: 4000 of 20000); 0 → only at the end
    eval_batch_size: int = 16
    log_every: int = 10
    max_bad_steps: int = 3              # stop after this many consecutive steps with a non-finite loss/gradient
    # Checkpointing
    output_dir: str | None = None       # None → runs/<algo>-<task>
    save_every: int | None = None       # None → eval_every; 0 → only best/ and final/
    keep_last: int = 2                  # checkpoint-<step>/ dirs kept (0 = all)
    overwrite: bool = False
    resume: bool = False
    # Hardware
    dtype: str = "auto"                 # auto → float32 on CPU, bfloat16 on CUDA
    device: str = "auto"
    device_map: str | None = None       # shard layers over the GPUs with accelerate: auto, balanced, sequential
    offload: str | None = None          # cpu: blocks live in CPU memory and stream to the GPU (ZO2)

    def flag(self, name: str) -> str:
        return "--" + name.replace("_", "-")


KEYS = tuple(f.name for f in fields(TrainConfig))
_TYPES = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check `value` against the field's type; YAML 1.1 reads `1e-6` as a string, so numeric strings pass."""
    hint = _TYPES[key]
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


def check_keys(mapping: dict[str, Any], source: str) -> dict[str, Any]:
    """Reject unknown keys (suggesting the closest) and coerce types, naming the key."""
    out = {}
    for key, value in mapping.items():
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
        out[key] = _coerce(key, value, source)
    return out


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML into checked config keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: must be a mapping of config keys, got {type(data).__name__}")
    return check_keys(data, f"recipe {path}")


def resolve(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """defaults < recipe < overrides (None values in overrides mean 'not given'), then validated."""
    values: dict[str, Any] = {}
    if recipe is not None:
        values.update(load_recipe(recipe))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(check_keys(given, "command line"))
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Range and combination checks, each naming the flag and what to do."""
    from zoft.algos import ALGORITHMS
    from zoft.tasks import TASKS

    positive = ["steps", "batch_size", "num_train", "num_eval", "eval_batch_size", "log_every", "max_length",
                "max_bad_steps"]
    for key in positive + ["micro_batch_size", "lr", "eps"]:
        value = getattr(cfg, key)
        if value is not None and not value > 0:
            raise ConfigError(f"{cfg.flag(key)} must be > 0 (got {value})")
    for key in ["num_dev", "eval_every", "save_every", "keep_last", "weight_decay"]:
        value = getattr(cfg, key)
        if value is not None and value < 0:
            raise ConfigError(f"{cfg.flag(key)} must be >= 0 (got {value})")
    if cfg.algo not in ALGORITHMS:
        raise ConfigError(f"--algo {cfg.algo}: unknown algorithm; choose from {', '.join(ALGORITHMS)}")
    if cfg.task != "custom" and cfg.task not in TASKS:
        raise ConfigError(f"--task {cfg.task}: unknown task; choose from {', '.join([*TASKS, 'custom'])}")
    if cfg.task == "custom" and not cfg.data_file:
        raise ConfigError("--task custom needs --data-file (a jsonl or csv with text and label columns)")
    custom_only = ("data_file", "verbalizer", "template", "prompt_field", "target_field", "text_field")
    given = [cfg.flag(k) for k in custom_only if getattr(cfg, k) is not None]
    if cfg.task != "custom" and given:
        raise ConfigError(f"{'/'.join(given)} apply to --task custom only; --task {cfg.task} has its own template")
    if cfg.target_field is not None and cfg.verbalizer is not None:
        raise ConfigError("--target-field (generation) and --verbalizer (classification) contradict each other; "
                          "keep one")
    if cfg.prompt_field is not None and cfg.target_field is None:
        raise ConfigError("--prompt-field needs --target-field (the column the model learns to generate)")
    if getattr(ALGORITHMS[cfg.algo], "first_order", False):
        if cfg.objective != "ce":
            raise ConfigError(f"--algo {cfg.algo} backpropagates, and --objective {cfg.objective} has no gradient; "
                              "use --objective ce or a ZO algorithm")
        if cfg.exact_bf16 or cfg.stochastic_rounding or cfg.noise != "table":
            raise ConfigError(f"--exact-bf16/--stochastic-rounding/--noise shape ZO perturbation passes; --algo "
                              f"{cfg.algo} has none: drop them")
    from zoft.objectives import check

    # a custom task is a generation task exactly when it names a target column
    kind = TASKS[cfg.task].objective if cfg.task in TASKS else \
        "generation" if cfg.target_field is not None else "classification"
    problem = check(cfg.objective, kind, cfg.task)
    if problem:
        raise ConfigError(problem)
    algo_keys = ALGORITHMS[cfg.algo].config_keys
    defaults = TrainConfig()
    for key in algorithm_options():
        if key not in algo_keys and getattr(cfg, key) != getattr(defaults, key):
            takers = " or ".join(name for name, cls in ALGORITHMS.items() if key in cls.config_keys)
            raise ConfigError(f"{cfg.flag(key)} applies to --algo {takers}, not {cfg.algo}")
    _validate_algorithm_options(cfg)
    from zoft.perturb import NOISE_KINDS

    if cfg.exact_bf16 and cfg.stochastic_rounding:
        raise ConfigError("--exact-bf16 and --stochastic-rounding contradict each other: exact updates need no "
                          "rounding; keep one")
    if cfg.noise not in NOISE_KINDS:
        raise ConfigError(f"--noise {cfg.noise}: choose {' or '.join(NOISE_KINDS)}")
    _validate_mode(cfg)
    if cfg.hessian_estimator not in ("code", "paper"):
        raise ConfigError(f"--hessian-estimator {cfg.hessian_estimator}: choose code or paper")
    if cfg.hessian_smooth is not None and not 0 <= cfg.hessian_smooth <= 1:
        raise ConfigError(f"--hessian-smooth must lie in [0, 1] (got {cfg.hessian_smooth})")
    if cfg.hessian_smooth == 0 and not cfg.allow_degenerate:
        raise ConfigError("--hessian-smooth 0 keeps H at 1, i.e. MeZO with a wasted forward; use a positive "
                          "value (default 1e-6) or add --allow-degenerate")
    if cfg.hessian_schedule:
        from zoft.algos.hizoo import parse_schedule

        try:
            parse_schedule(cfg.hessian_schedule)
        except ValueError as exc:
            raise ConfigError(f"--hessian-schedule: {exc}") from None
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"--dtype {cfg.dtype}: choose from {', '.join(DTYPES)}")
    if cfg.device not in DEVICES and not cfg.device.startswith("cuda:"):
        raise ConfigError(f"--device {cfg.device}: choose from {', '.join(DEVICES)} (or cuda:N)")
    if cfg.micro_batch_size and cfg.micro_batch_size > cfg.batch_size:
        raise ConfigError(f"--micro-batch-size {cfg.micro_batch_size} exceeds --batch-size {cfg.batch_size}")
    if cfg.overwrite and cfg.resume:
        raise ConfigError("--overwrite and --resume contradict each other; pick one")
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


#: algorithm options that do not change the trajectory, so a resume may change them
NON_TRAJECTORY_OPTIONS = ("allow_degenerate", "tezo_factors")


def algorithm_options() -> tuple[str, ...]:
    """Keys that only some algorithms take (the union of their `config_keys`, in registry order); giving one to
    another algorithm is an error."""
    from zoft.algos import ALGORITHMS

    return tuple(dict.fromkeys(k for cls in ALGORITHMS.values() for k in cls.config_keys))


def _validate_algorithm_options(cfg: TrainConfig) -> None:
    from zoft.algos.tezo import FACTOR_POLICIES, RANK_MODES, SCALES

    for key in ("momentum", "beta2"):
        value = getattr(cfg, key)
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"{cfg.flag(key)} must lie in [0, 1) (got {value})")
    if cfg.adam_eps is not None and not cfg.adam_eps > 0:
        raise ConfigError(f"--adam-eps must be > 0 (got {cfg.adam_eps})")
    for key in ("rank", "rank_min", "rank_max"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{cfg.flag(key)} must be >= 1 (got {value})")
    if cfg.rank_min is not None and cfg.rank_max is not None and cfg.rank_min > cfg.rank_max:
        raise ConfigError(f"--rank-min {cfg.rank_min} exceeds --rank-max {cfg.rank_max}")
    if cfg.rank_threshold is not None and not 0 < cfg.rank_threshold <= 1:
        raise ConfigError(f"--rank-threshold must lie in (0, 1] (got {cfg.rank_threshold})")
    if cfg.rank_mode is not None and cfg.rank_mode not in RANK_MODES:
        raise ConfigError(f"--rank-mode {cfg.rank_mode}: choose {' or '.join(RANK_MODES)}")
    if cfg.tezo_scale is not None and cfg.tezo_scale not in SCALES:
        raise ConfigError(f"--tezo-scale {cfg.tezo_scale}: choose {' or '.join(SCALES)}")
    if cfg.tezo_factors is not None and cfg.tezo_factors not in FACTOR_POLICIES:
        raise ConfigError(f"--tezo-factors {cfg.tezo_factors}: choose {' or '.join(FACTOR_POLICIES)}")


def _validate_mode(cfg: TrainConfig) -> None:
    from zoft.modes import MODES

    if cfg.mode not in MODES:
        raise ConfigError(f"--mode {cfg.mode}: choose {', '.join(MODES)}")
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
    if not cfg.lora_alpha > 0:
        raise ConfigError(f"--lora-alpha must be > 0 (got {cfg.lora_alpha})")
    if not [t for t in cfg.lora_targets.split(",") if t.strip()]:
        raise ConfigError("--lora-targets: give module names such as q_proj,v_proj")
    if cfg.load_in_8bit and cfg.load_in_4bit:
        raise ConfigError("--load-in-8bit and --load-in-4bit contradict each other; keep one")
    quantized = "--load-in-8bit" if cfg.load_in_8bit else "--load-in-4bit" if cfg.load_in_4bit else None
    if quantized and cfg.mode == "full":
        raise ConfigError(f"--mode full with {quantized}: int8/NF4 weights cannot take in-place float "
                          "perturbations (and re-quantising would erase them); use --mode lora, prefix or prompt")
    if quantized and cfg.merge:
        raise ConfigError(f"--merge with {quantized}: adapters cannot be merged into quantized weights; drop "
                          "--merge (final/ keeps the adapter)")
    if quantized and (cfg.exact_bf16 or cfg.stochastic_rounding):
        raise ConfigError(f"{quantized}: adapters over a quantized base are fp32; drop --exact-bf16 / "
                          "--stochastic-rounding")


def finalize(cfg: TrainConfig) -> TrainConfig:
    """Fill the 'None → derived' fields so config.yaml records the values the run actually used."""
    from zoft.algos import ALGORITHMS

    algo = ALGORITHMS[cfg.algo]
    cfg = dataclasses.replace(cfg)
    from zoft.modes import DEFAULT_VIRTUAL_TOKENS, MODE_DEFAULTS

    mode_lr, mode_eps = MODE_DEFAULTS.get(cfg.mode, (algo.default_lr, algo.default_eps))
    # Adam-style algorithms normalise the step, so their own lr stays; the SGD family takes the mode's grid
    adam_like = "adam_eps" in algo.config_keys
    cfg.lr = (algo.default_lr if adam_like else mode_lr) if cfg.lr is None else cfg.lr
    cfg.eps = mode_eps if cfg.eps is None else cfg.eps
    if cfg.mode in DEFAULT_VIRTUAL_TOKENS and cfg.virtual_tokens is None:
        cfg.virtual_tokens = DEFAULT_VIRTUAL_TOKENS[cfg.mode]
    for key in algo.config_keys:  # record the algorithm's defaults so config.yaml says what the run used
        if getattr(cfg, key) is None and hasattr(algo, f"default_{key}"):
            setattr(cfg, key, getattr(algo, f"default_{key}"))
    cfg.eval_every = max(cfg.steps // 5, 1) if cfg.eval_every is None else cfg.eval_every
    cfg.save_every = cfg.eval_every if cfg.save_every is None else cfg.save_every
    cfg.micro_batch_size = cfg.micro_batch_size or cfg.batch_size
    cfg.output_dir = cfg.output_dir or f"runs/{cfg.algo}-{cfg.task}"
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as a recipe (run controls overwrite/resume are left out so a rerun starts fresh)."""
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("overwrite", "resume")}
    return yaml.safe_dump(data, sort_keys=False)
