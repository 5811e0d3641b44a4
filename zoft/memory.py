"""`zoft estimate-memory`: what a run will need, worked out before launch from the model's config alone.

The model is built on the meta device (shapes, no weights read or allocated), and the chosen ZO optimizer is
built over its trainable tensors there too, so the optimizer-state figure comes from the algorithm's own code
(`state_bytes`, `transient_bytes`), not from a separate table that could drift from it. The rest is arithmetic:

    weights       Σ numel × bytes of --dtype
    state         persistent optimizer state (fp32 H, moments, factors, ...)
    transient     the step's temporaries: the fp32 z buffer of the largest tensor, scratch buffers, row blocks
    activations   one inference forward's peak inside a decoder layer: the residual stream, its normed copy,
                  q/k/v and the attention output, or the MLP's gate/up/product (whichever phase is larger), plus
                  the attention scores when the model's attention materialises them (eager, or CPU)
    logits        the kept positions only (zoft scores with `logits_to_keep`), in the weight dtype, their fp32 copy
                  and the log-softmax
    runtime       CPU: the Python + torch + transformers process and what its first forward leaves resident
                  (505 MiB, 577 MiB with Triton installed, calibrated on SmolLM2); CUDA: the context is outside torch's
                  count and is left out, as `torch.cuda.max_memory_allocated` leaves it out

A ZO forward keeps no activations for a backward pass: memory is weights + state + one layer's working set. The
first-order comparison (AdamW with backprop) adds gradients, fp32 Adam moments, the activations every layer
saves for the backward pass and full-sequence logits; it is a rough guide (±30 %), the ZO figures are checked
against measured peaks (tests/test_memory.py, bench/memory_check.py).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zoft.errors import ConfigError

if TYPE_CHECKING:
    import torch

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: What a CPU process holds besides the model and one forward's tensors: Python, torch, transformers and zoft
#: imported, and what the forwards leave resident (thread pools, kernel caches, allocator arenas that keep freed
#: activations for reuse). Calibrated on SmolLM2-135M, fp32, 16 rows of 129 tokens (`bench/memory_check.py`, 2-core
#: CPU, torch 2.13): the peak minus the model-dependent estimate is 551-622 MiB over the ZO algorithms (median 580)
#: with Triton installed. The imports and a first forward of a two-layer toy model alone take 399 MiB (471 with
#: Triton, `measure_cpu_runtime`); a real model's forwards leave about 110 MiB more in the arenas. It varies with
#: the build, thread count and batch, which is why the tests measure the runtime in their own process instead. On
#: CUDA the context is outside torch's own count and is left out.
CPU_RUNTIME_BYTES = 505 * 2**20
#: torch and transformers import Triton when it is installed (CUDA builds ship it; zoft's test extra adds it on the
#: CPU): 72 MiB more resident, measured with `measure_cpu_runtime` with and without it
TRITON_IMPORT_BYTES = 72 * 2**20


def cpu_runtime_bytes() -> int:
    """The CPU runtime constant for this install."""
    import importlib.util

    return CPU_RUNTIME_BYTES + (TRITON_IMPORT_BYTES if importlib.util.find_spec("triton") else 0)


def measure_cpu_runtime() -> int:
    """This process's runtime measured as the constant counts it: its resident memory after one forward of a
    throwaway two-layer model, which leaves resident what any first forward does (thread pools, kernel caches,
    allocator arenas: about 225 MiB here, whatever the model's size), on top of the imports. Benchmarks and tests
    use it so that they check the model-dependent estimate, not this install's import size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
    model = LlamaForCausalLM(config).eval()
    with torch.inference_mode():
        model(input_ids=torch.zeros((4, 33), dtype=torch.long))
    del model
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def parse_size(text: str) -> int:
    """'80GB', '80 GiB', '24g', '512MB' → bytes (GB and GiB both read as 2^30, as GPU makers' "80 GB" means)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?b?)\s*", text.lower())
    if not m:
        raise ConfigError(f"--gpu-memory {text!r}: give a size like 80GB, 24GiB or 512MB")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2)]
    return int(float(m.group(1)) * scale)


@dataclass
class Shape:
    """The dimensions of a decoder-only model that its forward memory depends on."""

    hidden: int
    ffn: int
    heads: int
    kv_dim: int
    layers: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> Shape:
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or getattr(config, "d_model")
        heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
        ffn = (getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
               or getattr(config, "n_inner", None) or 4 * hidden)
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
        return cls(hidden, ffn, heads, kv_heads * head_dim, layers, config.vocab_size)


def forward_activation_bytes(shape: Shape, rows: int, seq_len: int, nbytes: int, scores: bool) -> int:
    """Peak live activations of one inference forward (no autograd graph: earlier layers are freed)."""
    tokens = rows * seq_len
    attention = tokens * (4 * shape.hidden + 2 * shape.kv_dim) * nbytes
    if scores:  # scores and probabilities, B × heads × L × L
        attention += 2 * rows * shape.heads * seq_len * seq_len * nbytes
    mlp = tokens * (2 * shape.hidden + 3 * shape.ffn) * nbytes
    return max(attention, mlp)


def logits_bytes(shape: Shape, rows: int, kept: int, nbytes: int) -> int:
    """Kept logits in the weight dtype, their fp32 copy and the fp32 log-softmax."""
    return rows * kept * shape.vocab * (nbytes + 8)


def first_order_bytes(params: int, shape: Shape, rows: int, seq_len: int, nbytes: int, weights: int | None = None,
                      trainable: int | None = None) -> dict[str, int]:
    """AdamW with backprop, for comparison: weights, gradients and fp32 moments of the trainable tensors, saved
    activations, full logits. `weights` (bytes) and `trainable` (count) default to full fine-tuning."""
    trainable = params if trainable is None else trainable
    tokens = rows * seq_len
    # per layer, backward keeps the inputs of every linear, norm and activation: ≈ 10·h + 4·ffn values per token
    saved = shape.layers * tokens * (10 * shape.hidden + 4 * shape.ffn) * nbytes
    saved += 2 * rows * shape.heads * seq_len * seq_len * nbytes * shape.layers  # attention probabilities
    return {"weights": params * nbytes if weights is None else weights, "gradients": trainable * nbytes,
            "adam moments": 8 * trainable, "activations": saved, "logits": tokens * shape.vocab * (nbytes + 8) * 2}


#: bytes per weight of a bitsandbytes-quantized linear layer: int8 plus an fp32 scale per row (≈ 1 B), NF4 plus
#: a double-quantized absmax per 64-element block (0.5 + 0.127/8 B); with `--mode scales` the fp32 absmax
#: (4/64 B) is the trainable tensor and counted as such, beside the 4-bit codes
QUANT_BYTES = {"8bit": 1.0, "4bit": 0.5 + 0.127 / 8, "4bit-scales": 0.5}
#: weights per NF4 block, one absmax each
NF4_BLOCK = 64


def _adapter_shapes(model, mode: str, shape: Shape, lora_r: int, lora_targets: tuple[str, ...],
                    virtual_tokens: int) -> list[tuple[str, tuple[int, ...]]]:
    """The trainable tensors of a tuning mode, by shape (as zoft.modes builds them)."""
    if mode == "lora":
        found = [(n, m.weight.shape) for n, m in model.named_modules()
                 if n.rsplit(".", 1)[-1] in lora_targets and hasattr(m, "weight")]
        if not found:
            raise ConfigError(f"--lora-targets: no module named {', '.join(lora_targets)} in this model")
        return [t for n, (out, inp) in found for t in ((f"{n}.lora_A", (lora_r, inp)), (f"{n}.lora_B", (out, lora_r)))]
    if mode == "prefix":
        heads_kv, head_dim = shape.kv_dim // (shape.hidden // shape.heads), shape.hidden // shape.heads
        return [(f"{kind}.{i}", (heads_kv, virtual_tokens, head_dim)) for i in range(shape.layers)
                for kind in ("keys", "values")]
    if mode == "scales":  # one fp32 absmax per NF4 block of every quantized linear layer
        import torch

        return [(f"{n}.absmax", (m.weight.numel() // NF4_BLOCK,)) for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    return [("prompt", (virtual_tokens, shape.hidden))]


def _knob(default: Any, help: str, panel: str, show: Any = None) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "panel": panel, "show": show})


@dataclass
class MemoryRequest:
    """What `zoft estimate-memory` was asked; each field's help is its flag's."""

    model: str
    algo: str = _knob("mezo", "ZO algorithm (see `zoft list`); its options below change its state (e.g. "
                      "--rank).", "ZO algorithm")
    mode: str = _knob("full", "Tuning mode: full, lora, prefix or prompt.", "Tuning mode")
    load_in_8bit: bool = _knob(False, "int8 base (bitsandbytes).", "Tuning mode")
    load_in_4bit: bool = _knob(False, "NF4 base (bitsandbytes).", "Tuning mode")
    lora_r: int = _knob(8, "LoRA rank.", "Tuning mode")
    lora_targets: str = _knob("q_proj,v_proj", "Comma-separated module names that get LoRA.", "Tuning mode")
    virtual_tokens: int | None = _knob(None, "Prefix/prompt length.", "Tuning mode", "5 prefix, 10 prompt")
    dtype: str = _knob("auto", "Weight dtype: auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16 or "
                       "float16.", "Hardware")
    device: str = _knob("cuda", "Where the run will be: cuda, cpu (adds the process runtime and materialised "
                        "attention scores) or auto (this machine's).", "Hardware")
    batch_size: int = _knob(16, "Examples per forward.", "Training")
    rows_per_example: int = _knob(1, "Sequences per example: 1 when candidates are single tokens (SST-2, RTE, "
                                  "BoolQ), else the number of candidates.", "Training")
    seq_len: int = _knob(256, "Tokens per sequence (padded length).", "Training")
    gpu_memory: str | None = _knob(None, "Memory of the target device, e.g. 80GB: says whether the run fits.",
                                   "Hardware", False)
    noise: str = _knob("table", "z generator of the run: table (44 MiB fp32 / 22 MiB bf16 of tables), philox "
                       "(none) or randn (a z buffer as large as the largest tensor).", "ZO algorithm")
    exact_bf16: bool = _knob(False, "Count 16-bit residuals for bf16 weights (2 bytes per weight).", "ZO algorithm")
    offload: str | None = _knob(None, "cpu: the run keeps its blocks in host memory (zoft train --offload cpu); GPU "
                                "figures count the resident modules and three blocks, and the host memory is "
                                "shown.", "Hardware", False)
    kept_positions: int = 1
    #: the CPU runtime of this process if it was measured (`measure_cpu_runtime`), else the install's constant
    runtime_bytes: int | None = None
    #: the algorithm's own options (`zoft.algos.option_table`), as `zoft train` takes them
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def quantize(self) -> str | None:
        return "8bit" if self.load_in_8bit else "4bit" if self.load_in_4bit else None


def _offload(req: MemoryRequest, model, opt, shape: Shape, rows: int, nbytes: int,
             components: dict[str, int]) -> int:
    """Turn the GPU figures into those of `--offload cpu` (zoft.offload); returns the pinned host bytes.

    On the GPU: the modules outside the blocks and their optimizer state, and at most three blocks with their
    state (computing, prefetched, draining); the other probes' residual streams, held while one probe runs the
    block; with tied embeddings, a copy of the shared matrix per probe but the last."""
    from zoft.algos import ALGORITHMS, get_algorithm
    from zoft.offload import OFFLOAD_KINDS, OFFLOAD_MODES, find_blocks

    if req.offload not in OFFLOAD_KINDS:
        raise ConfigError(f"--offload {req.offload}: choose {', '.join(OFFLOAD_KINDS)}")
    if req.device != "cuda":
        raise ConfigError("--offload cpu streams blocks to a CUDA GPU: estimate it with --device cuda")
    if not get_algorithm(req.algo).offloadable:
        ok = ", ".join(n for n, c in ALGORITHMS.items() if c.offloadable)
        raise ConfigError(f"--offload cpu with --algo {req.algo}: offload supports --algo {ok}")
    if req.mode not in OFFLOAD_MODES or req.quantize:
        raise ConfigError("--offload cpu applies to --mode full or lora over an unquantized base")
    import torch

    def state_of(p) -> int:
        return sum(t.numel() * t.element_size() for t in opt.state.get(p, {}).values() if isinstance(t, torch.Tensor))

    blocks = find_blocks(model)
    sizes = [sum(p.numel() * nbytes for p in block.parameters()) for block in blocks]
    states = [sum(state_of(p) for p in block.parameters()) for block in blocks]
    components["weights"] += 3 * max(sizes) - sum(sizes)
    components["optimizer state"] += 3 * max(states) - sum(states)
    probes = opt.forwards_per_step
    components["activations"] += (probes - 1) * rows * req.seq_len * shape.hidden * nbytes
    head = model.get_output_embeddings()
    if head is not None and head.weight is model.get_input_embeddings().weight and req.mode == "full":
        components["step temporaries"] += (probes - 1) * head.weight.numel() * nbytes
    return sum(sizes) + sum(states)


def _check(req: MemoryRequest):
    """Refuse what cannot be estimated, naming the flag; returns the algorithm class."""
    from zoft.algos import check_mode, get_algorithm
    from zoft.modes import MODES, check_scales_base
    from zoft.perturb import NOISE_KINDS

    cls = get_algorithm(req.algo)
    if req.mode not in MODES:
        raise ConfigError(f"--mode {req.mode}: choose {', '.join(MODES)}")
    if req.load_in_8bit and req.load_in_4bit:
        raise ConfigError("--load-in-8bit and --load-in-4bit contradict each other; keep one")
    if req.quantize and req.mode == "full":
        raise ConfigError(f"--mode full with --load-in-{req.quantize}: quantized weights cannot be perturbed in "
                          "place; use --mode scales (NF4), lora, prefix or prompt")
    check_scales_base(req.mode, req.quantize)
    check_mode(req.algo, req.mode)
    if req.dtype not in DTYPE_BYTES:
        raise ConfigError(f"--dtype {req.dtype}: choose from auto, {', '.join(DTYPE_BYTES)}")
    for flag, value in (("--batch-size", req.batch_size), ("--seq-len", req.seq_len),
                        ("--rows-per-example", req.rows_per_example), ("--lora-r", req.lora_r),
                        ("--virtual-tokens", req.virtual_tokens or 1)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1 (got {value})")
    if req.noise not in NOISE_KINDS:
        raise ConfigError(f"--noise {req.noise}: choose {' or '.join(NOISE_KINDS)}")
    if req.exact_bf16 and req.dtype != "bfloat16":
        raise ConfigError(f"--exact-bf16 applies to bfloat16 weights, not --dtype {req.dtype}")
    return cls


def _resolved(req: MemoryRequest) -> MemoryRequest:
    """`auto` device and dtype made concrete: this machine's device; bfloat16 on a GPU, float32 on a CPU."""
    device = req.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"--device {req.device}: choose cuda, cpu or auto")
    dtype = req.dtype if req.dtype != "auto" else ("float32" if device == "cpu" else "bfloat16")
    return dataclasses.replace(req, device=device, dtype=dtype)


def _trainable(req: MemoryRequest, model, shape: Shape, nbytes: int) -> tuple[list, int]:
    """The trainable tensors of the run (meta tensors) and the bytes of every weight, adapters and quantization
    included."""
    import torch

    from zoft.algos import trainable_parameters
    from zoft.modes import DEFAULT_VIRTUAL_TOKENS

    named = trainable_parameters(model)
    weights = sum(p.numel() * nbytes for p in model.parameters())
    if req.mode != "full":
        n_virtual = req.virtual_tokens or DEFAULT_VIRTUAL_TOKENS.get(req.mode, 0)
        adapter_dtype = torch.float32 if req.quantize else model.dtype
        targets = tuple(t.strip() for t in req.lora_targets.split(",") if t.strip())
        named = [(name, torch.nn.Parameter(torch.empty(s, device="meta", dtype=adapter_dtype)))
                 for name, s in _adapter_shapes(model, req.mode, shape, req.lora_r, targets, n_virtual)]
        weights += sum(p.numel() * p.element_size() for _, p in named)
    if req.quantize:  # the decoder layers' linear weights are quantized; embeddings, norms and lm_head are not
        linear = sum(mod.weight.numel() for n, mod in model.named_modules()
                     if isinstance(mod, torch.nn.Linear) and "lm_head" not in n)
        weights -= int(linear * (nbytes - QUANT_BYTES[req.quantize + ("-scales" if req.mode == "scales" else "")]))
    return named, weights


def _exact_bf16(opt, named, components: dict[str, int]) -> None:
    """Residuals are not registered on meta tensors (they share one null pointer): count them here, with the
    passes' fp32 tables instead of bf16 ones and the 4 MiB join buffer."""
    import torch

    from zoft.perturb import table_bytes

    components["exact-bf16 residuals"] = 2 * sum(p.numel() for _, p in named)
    if any(opt.engine._tabled(p) for p in opt.engine.params):
        components["step temporaries"] += table_bytes(torch.float32) - table_bytes(torch.bfloat16)
    components["step temporaries"] += 4 * (1 << 20) * (1 if opt.dense_z else 2)


def estimate(req: MemoryRequest) -> dict[str, Any]:
    """The estimate as a JSON-able dict: components in bytes, totals, and whether it fits `gpu_memory`."""
    import torch

    from zoft.models import meta_model

    req = _resolved(req)
    cls = _check(req)
    limit = parse_size(req.gpu_memory) if req.gpu_memory else None
    nbytes = DTYPE_BYTES[req.dtype]
    model = meta_model(req.model, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16,
                                         "float16": torch.float16}[req.dtype])
    shape = Shape.from_config(model.config)
    params = sum(p.numel() for p in model.parameters())
    named, weights = _trainable(req, model, shape, nbytes)
    opt = cls(named, noise=req.noise, **req.options)  # the algorithm's own state code, on meta tensors
    rows = req.batch_size * req.rows_per_example
    attn = getattr(model.config, "_attn_implementation", None) or "sdpa"
    components = {
        "weights": weights,
        "optimizer state": opt.state_bytes(),
        "step temporaries": opt.transient_bytes(),
        "activations": forward_activation_bytes(shape, rows, req.seq_len, nbytes,
                                                scores=attn == "eager" or req.device == "cpu"),
        "logits": logits_bytes(shape, rows, req.kept_positions, nbytes),
    }
    if req.exact_bf16:
        _exact_bf16(opt, named, components)
    host = _offload(req, model, opt, shape, rows, nbytes, components) if req.offload else 0
    if req.device == "cpu":
        components["runtime"] = cpu_runtime_bytes() if req.runtime_bytes is None else req.runtime_bytes
    fo = first_order_bytes(params, shape, rows, req.seq_len, nbytes, weights=weights,
                           trainable=sum(p.numel() for _, p in named))
    if cls.first_order:
        # --algo fo-adam is the first-order run itself: both columns are the backprop estimate
        components = {"weights": fo["weights"], "optimizer state": fo["adam moments"], "step temporaries": 0,
                      "activations": fo["activations"], "logits": fo["logits"], "gradients": fo["gradients"],
                      **({"runtime": components["runtime"]} if "runtime" in components else {})}
    total = sum(components.values())
    fo_total = sum(fo.values()) + components.get("runtime", 0)
    return {
        "model": req.model, "algo": req.algo, "mode": req.mode, "dtype": req.dtype, "device": req.device,
        "quantize": req.quantize, "options": opt.settings, "first_order": cls.first_order,
        "params": params, "trainable_params": sum(p.numel() for _, p in named), "rows": rows,
        "seq_len": req.seq_len, "components": components, "state_breakdown": opt.state_breakdown(),
        "total": total, "first_order_adamw": {**fo, "total": fo_total},
        "offload": req.offload, "host_bytes": host,
        "gpu_memory": limit, "fits": None if limit is None else total <= limit,
        "first_order_fits": None if limit is None else fo_total <= limit,
    }


def reset_peak_memory(device: torch.device | str = "cpu") -> None:
    """Restart the peak-memory counter: CUDA's allocator peak, or the process's VmHWM on Linux (tracemalloc cannot
    see tensors)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory(device: torch.device | str = "cpu") -> int | None:
    """Peak bytes since `reset_peak_memory`: `torch.cuda.max_memory_allocated`, or resident memory (VmHWM, the
    whole process: weights, torch, activations) on the CPU; None where neither can be read."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return None
