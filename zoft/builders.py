"""What a run is built from, in one place for `zoft train`, `zoft replay` and `zoft eval`: the task, where the
run computes (device and dtype, resolved once), the model with its tuning mode's adapters, and the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoft.config import TrainConfig
from zoft.errors import ConfigError


@dataclass(frozen=True)
class Placement:
    """Where a run computes (`device`, `dtype`) and where its model is loaded: into CPU memory when the blocks are
    offloaded (the offloader moves what is not a block), else onto the device itself."""

    device: torch.device
    dtype: torch.dtype
    offload: bool = False

    @property
    def load_device(self) -> torch.device:
        return torch.device("cpu") if self.offload else self.device


def place(cfg: TrainConfig, training: bool = True) -> Placement:
    """Resolve `--device` and `--dtype` once, and check what depends on them before any data or model is read.
    `training` False (a replay): the weights are rebuilt where they are loaded, with no block streamed to a GPU,
    in the dtype the run trained in."""
    from zoft.models import resolve_device, resolve_dtype

    device = resolve_device(cfg.device)  # fails on --device cuda without a GPU
    dtype = resolve_dtype(cfg.dtype, device)
    if not training:
        return Placement(device, dtype)
    if cfg.offload:
        from zoft import offload

        try:
            offload.require_cuda(device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.exact_bf16 and dtype != torch.bfloat16:
        raise ConfigError(f"--exact-bf16 applies to bfloat16 weights, and --dtype {cfg.dtype} means "
                          f"{str(dtype).removeprefix('torch.')} on {device.type}; pass --dtype bfloat16")
    if cfg.noise == "philox":
        from zoft import kernels

        if not kernels.available(device):
            raise ConfigError(f"--noise philox: the fused Triton kernel cannot run here: "
                              f"{kernels.unavailable_reason()}; use --noise table")
    return Placement(device, dtype, offload=cfg.offload is not None)


def build_task(cfg: TrainConfig):
    """The Task object for `cfg.task` (a registered task, or a custom one built from files)."""
    from zoft.tasks import custom_task, get_task

    if cfg.task == "custom" and cfg.target_field is not None:
        from zoft.tasks.custom import custom_generation_task

        return custom_generation_task(cfg.data_file, prompt_field=cfg.prompt_field, target_field=cfg.target_field,
                                      template=cfg.template, eval_file=cfg.eval_file)
    if cfg.task != "custom":
        return get_task(cfg.task)
    train = cfg.data_file
    if cfg.text_field is None and cfg.verbalizer is None and cfg.template is None:
        from zoft.tasks.custom import custom_chat_task, custom_instruction_task, data_format, read_custom_file

        train = read_custom_file(cfg.data_file)  # read once: its columns say the format, its rows make the task
        kind = data_format(train)  # chat `messages` rows, or Alpaca-style instruction/input/output rows
        if kind == "messages":
            from zoft.models import load_tokenizer, resolve_model_path

            tokenizer = load_tokenizer(resolve_model_path(cfg.model), cfg.trust_remote_code)
            return custom_chat_task(train, tokenizer, eval_file=cfg.eval_file)
        if kind == "instruction":
            return custom_instruction_task(train, eval_file=cfg.eval_file)
    return custom_task(train, text_field=cfg.text_field, label_field=cfg.label_field,
                       verbalizer=cfg.verbalizer, template=cfg.template, eval_file=cfg.eval_file)


def quantization(cfg: TrainConfig) -> str | None:
    """"8bit", "4bit", "4bit-scales" (NF4 with the fp32 scales `--mode scales` trains) or None: how the base is
    loaded."""
    if cfg.load_in_4bit:
        return "4bit-scales" if cfg.mode == "scales" else "4bit"
    return "8bit" if cfg.load_in_8bit else None


def build_model(cfg: TrainConfig, model_path: str, placement: Placement):
    """(model, tokenizer, path): the base as `cfg` loads it, with the tuning mode's adapters attached (their init
    is seeded by `cfg.seed`, so `zoft replay` rebuilds the same ones)."""
    from zoft.models import load_model

    quantize = quantization(cfg)
    model, tokenizer, model_path = load_model(model_path, placement.dtype, placement.load_device, quantize=quantize,
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
    """The configured algorithm over the trainable tensors, with its options, stochastic rounding and exact-bf16
    residuals set. An offloaded run rounds tensor by tensor (it visits them in the blocks' order), so its replay
    must too: the runner is tensorwise for both."""
    from zoft.algos import get_algorithm
    from zoft.runner import StepRunner

    opt = get_algorithm(cfg.algo)(named, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, seed=cfg.seed,
                                  noise=cfg.noise, **cfg.algo_options)
    opt.stochastic_rounding = cfg.stochastic_rounding
    opt.runner = StepRunner(opt, tensorwise=cfg.offload is not None)
    if cfg.exact_bf16:
        opt.keep_residuals()
    return opt
