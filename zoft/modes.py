"""Tuning modes: which tensors ZO perturbs (docs/algorithms.md, "Tuning modes"). ZO touches exactly the tensors with
requires_grad = True; everything else is frozen and never written.

    full     every weight
    lora     peft LoRA adapters (r 8, α 16, on q_proj and v_proj by default; B = 0 at init, so the model starts
             as the base); saved in peft's format (adapter_model.safetensors + adapter_config.json)
    prefix   MeZO's prefix tuning, zoft's module: 5 key/value vectors per layer fed as a cache in front of every
             sequence, initialised from the frozen model's own keys and values on 5 random vocabulary tokens
             (MeZO: random init is markedly worse). peft's prefix tuning cannot start from those activations
             and drops `position_ids`, so zoft has its own
    prompt   soft prompt tuning (ZO-Bench): 10 trainable input embeddings in front of every sequence, initialised
             from random vocabulary embeddings. zoft's module rather than peft's, because peft drops
             `position_ids`, which left-padded batches need
    scales   the per-block scales of every NF4 layer of a 4-bit base (QZO, arXiv 2505.13430): W = absmax·code,
             the 4-bit codes frozen and the fp32 absmax of each block of 64 weights trained in place, so the
             whole model moves at 4.5 bits a weight; needs --load-in-4bit (loaded without double quantization,
             which would store the scales themselves in 8 bits)

Soft prompts and prefixes go *before* the padding of a left-padded row; position ids of the real tokens are
shifted by the number of virtual tokens, so a prompt sees the same positions in every row.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from zoft.errors import ConfigError

MODES = ("full", "lora", "prefix", "prompt", "scales")
ADAPTER_FILE = "zoft_adapter.safetensors"
ADAPTER_CONFIG = "zoft_adapter.json"
#: per-mode defaults of the algorithms whose steps scale with g (`lr_grid = "mode"`) when the user gives none
#: (docs/algorithms.md, "Tuning modes"): MeZO's grids for LoRA (lr {1e-4, 5e-5}, ε 1e-2) and prefix (lr {1e-2, 1e-3},
#: ε 1e-1); prompt tuning shares prefix's ε with a lower lr, zoft's choice (no published ZO grid was at hand); scales
#: keep MeZO's ε (absmax is the largest |w| of its block, ≈ 0.05-0.1: ε·z moves it ~1-2 %) with 10x MeZO's lr
#: (a scale's gradient sums its 64 weights'), zoft's choice: QZO's reference code was not available
MODE_DEFAULTS = {"lora": (1e-4, 1e-2), "prefix": (1e-2, 1e-1), "prompt": (1e-3, 1e-1), "scales": (1e-5, 1e-3)}
DEFAULT_VIRTUAL_TOKENS = {"prefix": 5, "prompt": 10}


def check_scales_base(mode: str, quantize: str | None) -> None:
    """`--mode scales` trains the scales of an NF4 base: refuse it over any other base, naming the flag."""
    if mode == "scales" and quantize not in ("4bit", "4bit-scales"):
        raise ConfigError("--mode scales trains the per-block scales of an NF4 base: add --load-in-4bit"
                          + (" (not --load-in-8bit)" if quantize == "8bit" else ""))


class _Virtual(nn.Module):
    """Shared plumbing of zoft's own adapters: a frozen base plus trainable tensors saved beside it (prefix and
    prompt: n virtual positions in front; scales: none)."""

    mode = ""

    def __init__(self, base: nn.Module, n: int):
        super().__init__()
        self.base = base
        self.n = n
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def config(self):
        return self.base.config

    def _extend(self, attention_mask: torch.Tensor, position_ids: torch.Tensor | None):
        ones = attention_mask.new_ones(attention_mask.shape[0], self.n)
        mask = torch.cat([ones, attention_mask], dim=1)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        return mask, position_ids + self.n

    def _head(self, hidden: torch.Tensor, logits_to_keep: int) -> CausalLMOutput:
        """The LM head on the kept positions, made contiguous. Through the full model, the kept hidden states of a
        sequence with virtual positions come out non-contiguous, and the head's matmul then broadcasts its weight
        over the batch (measured: an 864 MiB temporary per forward for SmolLM2 at batch 16, against 21 MiB)."""
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return CausalLMOutput(logits=self.base.get_output_embeddings()(hidden.contiguous()))

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def save_pretrained(self, directory, **_):
        """The adapter only: its tensors and a small JSON saying how to rebuild the wrapper over the base."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.adapter_state().items()}, directory / ADAPTER_FILE)
        (directory / ADAPTER_CONFIG).write_text(json.dumps(
            {"mode": self.mode, "virtual_tokens": self.n, "base_model": self.base.config._name_or_path}, indent=1))

    def load_adapter(self, directory) -> None:
        from safetensors.torch import load_file

        saved = load_file(Path(directory) / ADAPTER_FILE)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.requires_grad:
                    p.copy_(saved[name])


class PromptModel(_Virtual):
    """Soft prompt tuning: n trainable input embeddings prepended to every sequence."""

    mode = "prompt"

    def __init__(self, base: nn.Module, n: int = 10, seed: int = 0):
        super().__init__(base, n)
        emb = base.get_input_embeddings().weight
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, emb.shape[0], (n,), generator=gen).to(emb.device)
        self.prompt = nn.Parameter(emb.detach()[ids].clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids=None, logits_to_keep=0,
                use_cache: bool = False, **kwargs):
        embeds = self.base.get_input_embeddings()(input_ids)
        prompt = self.prompt.to(embeds.dtype).unsqueeze(0).expand(input_ids.shape[0], -1, -1)
        mask, positions = self._extend(attention_mask, position_ids)
        front = torch.arange(self.n, device=positions.device).expand(positions.shape[0], -1)
        hidden = self.base.base_model(inputs_embeds=torch.cat([prompt, embeds], dim=1), attention_mask=mask,
                                      position_ids=torch.cat([front, positions], dim=1), use_cache=False,
                                      **kwargs).last_hidden_state
        return self._head(hidden, logits_to_keep)


class ScalesModel(_Virtual):
    """QZO's target: the fp32 per-block scales (absmax) of every bitsandbytes NF4 layer, trained in place: each is
    registered as a parameter that shares the quantization state's storage, so a ZO pass over it changes what the
    layer dequantizes, and nothing else (codes, embeddings, norms, head) is ever written."""

    mode = "scales"

    def __init__(self, base: nn.Module):
        super().__init__(base, 0)
        import bitsandbytes as bnb

        names, scales = [], []
        for name, module in base.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                state = module.weight.quant_state
                if getattr(state, "packing_format_for_cpu", False):
                    raise ValueError("--mode scales: this 4-bit base was repacked for bitsandbytes' CPU kernel "
                                     "(bf16 scales); load it with quantize='4bit-scales'")
                if state.nested:
                    raise ValueError("--mode scales needs the 4-bit base's scales in fp32; it was loaded with double "
                                     "quantization (8-bit scales)")
                # bitsandbytes quantizes under inference mode, whose tensors cannot become parameters, and may keep
                # absmax in the compute dtype (bf16, where a ZO step of ~1e-6 vanishes): hand the state a normal
                # fp32 copy, and make the parameter share that copy's storage (trained in place)
                state.absmax = state.absmax.to(torch.float32, copy=True)
                names.append(name)
                scales.append(nn.Parameter(state.absmax, requires_grad=True))
        if not scales:
            raise ValueError("--mode scales: the model has no 4-bit layers; load it with --load-in-4bit")
        self.layer_names = names
        self.scales = nn.ParameterList(scales)

    def forward(self, *args, **kwargs):
        return self.base(*args, **kwargs)


class PrefixModel(_Virtual):
    """MeZO prefix tuning: n key/value vectors per layer, fed as a cache in front of every sequence."""

    mode = "prefix"

    def __init__(self, base: nn.Module, n: int = 5, seed: int = 0, init: str = "activations"):
        super().__init__(base, n)
        keys, values = self._initial_kv(n, seed, init)
        self.keys = nn.ParameterList([nn.Parameter(k) for k in keys])
        self.values = nn.ParameterList([nn.Parameter(v) for v in values])

    @torch.no_grad()
    def _initial_kv(self, n: int, seed: int, init: str):
        """The frozen model's key/value states on n random vocabulary tokens (MeZO), or N(0, 1) with `random`."""
        emb = self.base.get_input_embeddings().weight
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, emb.shape[0], (1, n), generator=gen).to(emb.device)
        out = self.base(input_ids=ids, use_cache=True)
        cache = out.past_key_values
        keys = [layer.keys[0].clone() for layer in cache.layers]  # [kv_heads, n, head_dim] each
        values = [layer.values[0].clone() for layer in cache.layers]
        if init == "random":
            keys = [torch.randn(k.shape, generator=gen).to(k) for k in keys]
            values = [torch.randn(v.shape, generator=gen).to(v) for v in values]
        return keys, values

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids=None, logits_to_keep=0,
                use_cache: bool = False, **kwargs):
        from transformers.cache_utils import DynamicCache

        b = input_ids.shape[0]
        dtype = self.base.get_input_embeddings().weight.dtype  # fp32 adapters over a bf16/quantized base
        data = [(k.to(dtype).unsqueeze(0).expand(b, -1, -1, -1), v.to(dtype).unsqueeze(0).expand(b, -1, -1, -1))
                for k, v in zip(self.keys, self.values)]
        cache = DynamicCache(data, config=self.base.config)
        mask, positions = self._extend(attention_mask, position_ids)
        hidden = self.base.base_model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                      past_key_values=cache, use_cache=True, **kwargs).last_hidden_state
        return self._head(hidden, logits_to_keep)


def attach(model: nn.Module, mode: str, *, lora_r: int = 8, lora_alpha: float = 16.0,
           lora_targets: tuple[str, ...] = ("q_proj", "v_proj"), virtual_tokens: int | None = None,
           prefix_init: str = "activations", seed: int = 0, adapter_dtype: torch.dtype | None = None) -> nn.Module:
    """The model to train in `mode` (the base itself for full); base weights are frozen in every other mode."""
    if mode == "full":
        return model
    if mode == "scales":
        return ScalesModel(model).eval()
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in lora_targets if t not in present]
        if missing:
            raise ValueError(f"--lora-targets: no module named {', '.join(missing)} in this model; it has e.g. "
                             f"{', '.join(sorted(n for n in present if n.endswith('proj'))[:8])}")
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=list(lora_targets), lora_dropout=0.0,
                            bias="none", task_type="CAUSAL_LM")
        torch.manual_seed(seed)  # peft draws A (Kaiming-uniform) from the global RNG: make it a function of the seed
        wrapped = get_peft_model(model, config)
    else:
        n = virtual_tokens or DEFAULT_VIRTUAL_TOKENS[mode]
        wrapped = PrefixModel(model, n, seed, prefix_init) if mode == "prefix" else PromptModel(model, n, seed)
    if adapter_dtype is not None:
        for p in wrapped.parameters():
            if p.requires_grad:
                p.data = p.data.to(adapter_dtype)
    return wrapped.eval()


def adapter_kind(directory: Path) -> str | None:
    """'lora' for a peft adapter dir, 'prefix'/'prompt' for zoft's, None for a plain model dir."""
    directory = Path(directory)
    if (directory / "adapter_config.json").is_file():
        return "lora"
    if (directory / ADAPTER_CONFIG).is_file():
        return json.loads((directory / ADAPTER_CONFIG).read_text())["mode"]
    return None


def load_adapter_into(model: nn.Module, directory: Path) -> None:
    """Restore the trainable tensors of `model` (a peft LoRA model or a prefix/prompt wrapper) from `directory`."""
    directory = Path(directory)
    if hasattr(model, "load_adapter") and (directory / ADAPTER_FILE).is_file():
        model.load_adapter(directory)
        return
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))


def base_model_of(directory: Path) -> str:
    """The base model an adapter dir was trained on."""
    directory = Path(directory)
    if (directory / "adapter_config.json").is_file():
        return json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
    return json.loads((directory / ADAPTER_CONFIG).read_text())["base_model"]
