"""`--offload cpu` against no offload on the same model: step time and peak device memory, in one run.

Both runs take the same steps of --algo (MeZO by default) on the same random batch from the same weights. On
CUDA the peak is `torch.cuda.max_memory_allocated`; the offloaded run keeps the blocks in pinned host memory and
streams them. On a CPU the "device" is the CPU itself (uploads are copies, no streams): that measures what the lockstep
protocol costs in Python and copies, not a GPU's bus, and the memory column is then not meaningful.

The model is a Llama built from config (random weights: speed and memory do not depend on them), or --model DIR.

Usage: python bench/offload.py [--algo mezo|hizoo|...] [--device cuda] [--layers 16] [--hidden 2048]
       [--steps 10] [--batch-size 16] [--seq-len 256] [--dtype bfloat16] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from zoft.algos import ALGORITHMS
from zoft.algos import trainable_parameters
from zoft.offload import attach


def build(args):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, args.dtype)
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    cfg = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=int(args.hidden * 8 / 3) // 64 * 64,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                      num_key_value_heads=args.hidden // 64, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device("cpu"):
        return LlamaForCausalLM(cfg).to(dtype).eval()


def run(model, device, offload: bool, args) -> dict:
    if not offload:
        model.to(device)
    opt = ALGORITHMS[args.algo](trainable_parameters(model), lr=1e-6, eps=1e-3)
    opt.stochastic_rounding = model.dtype != torch.float32
    off = attach(model, opt, device) if offload else None
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (args.batch_size, args.seq_len), generator=g).to(device)

    def closure():
        return model(input_ids=ids, labels=ids).loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    opt.step(closure)  # warm-up: kernels, noise tables, allocator
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = opt.step(closure)
    sync()
    step_s = (time.perf_counter() - t0) / args.steps
    opt.runner.flush()
    with torch.inference_mode():  # two plain forwards: the floor a ZO step cannot go below
        sync()
        t0 = time.perf_counter()
        for _ in range(2):
            model(input_ids=ids).logits.float().sum().item()
        sync()
        forwards_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"offload": offload, "step_s": step_s, "two_forwards_s": forwards_s, "loss": loss,
            "peak_device_bytes": peak, "blocks": len(off.blocks) if off else None,
            "block_bytes": off.block_bytes() if off else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", default="mezo", choices=[n for n, c in ALGORITHMS.items() if c.offloadable])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default=None)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    base = build(args)
    params = sum(p.numel() for p in base.parameters())
    rows = [run(copy.deepcopy(base), device, False, args), run(base, device, True, args)]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result = {"algo": args.algo, "device": str(device), "params": params, "dtype": args.dtype, "batch": args.batch_size,
              "seq_len": args.seq_len, "runs": rows,
              "offload_step_ratio": rows[1]["step_s"] / rows[0]["step_s"]}
    if rows[0]["peak_device_bytes"]:
        result["offload_memory_ratio"] = rows[1]["peak_device_bytes"] / rows[0]["peak_device_bytes"]
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.algo}, {params / 1e6:,.0f} M params, {args.dtype}, batch {args.batch_size} × {args.seq_len}, "
          f"on {device}")
    for r in rows:
        peak = f"{r['peak_device_bytes'] / 2**30:.2f} GiB" if r["peak_device_bytes"] else "n/a"
        print(f"  offload={str(r['offload']):5s} step {r['step_s']:.3f} s  (step / two forwards "
              f"{r['step_s'] / r['two_forwards_s']:.2f})  peak device memory {peak}")
    print(f"offload / no offload: step time {result['offload_step_ratio']:.2f}x"
          + (f", device memory {result['offload_memory_ratio']:.2f}x" if "offload_memory_ratio" in result else ""))


if __name__ == "__main__":
    main()
