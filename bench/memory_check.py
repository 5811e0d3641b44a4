"""`zoft estimate-memory` against measured peaks: every algorithm, one process each, on SmolLM2-135M (CPU).

For each algorithm a fresh process imports torch/transformers/zoft and measures its own runtime (resident memory
after one throwaway forward, `zoft.memory.measure_cpu_runtime`), loads the model, resets the kernel's high-water
mark, runs two ZO steps on a batch of `rows` sequences of `seq_len` tokens whose candidates are single tokens (one
row per example, as zoft scores SST-2), and reads the peak (VmHWM; tracemalloc cannot see tensors). Two ratios:

    ratio        the estimate a user sees (its CPU runtime term is the install's constant) / the peak
    model_ratio  the model-dependent estimate (total − runtime) / (peak − this process's measured runtime)

Prints a table and one JSON line per algorithm.

Usage: python bench/memory_check.py [--model smollm2-135m] [--dtype float32] [--rows 16] [--seq-len 128]
       [--algo NAME ...]      (the slow test tests/test_memory.py runs it with a tolerance of ±15 %)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def measure(args) -> dict:
    import torch

    from zoft.algos import ALGORITHMS, trainable_parameters
    from zoft.memory import MemoryRequest, estimate, measure_cpu_runtime, peak_memory, reset_peak_memory
    from zoft.models import load_model
    from zoft.scoring import Encoded, classification_loss, collate

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    imports = status_kib("VmRSS") * 1024
    runtime = measure_cpu_runtime()
    model, tok, path = load_model(args.model, args.dtype, "cpu")
    g = torch.Generator().manual_seed(0)
    encoded = []
    for i in range(args.rows):
        prompt = tuple(int(t) for t in torch.randint(10, min(1000, model.config.vocab_size), (args.seq_len,), generator=g))
        encoded.append(Encoded((prompt + (11,), prompt + (12,)), (1, 1), i % 2))
    batch = collate(encoded, tok.pad_token_id or 0)
    opt = ALGORITHMS[args.algo](trainable_parameters(model))
    reset_peak_memory()
    for _ in range(2):
        opt.step(lambda: classification_loss(model, [batch]))
    peak = peak_memory()
    est = estimate(MemoryRequest(model=args.model, algo=args.algo, dtype=args.dtype, device="cpu",
                                 batch_size=args.rows, seq_len=args.seq_len + 1, kept_positions=1))
    model_part = est["total"] - est["components"]["runtime"]
    return {"algo": args.algo, "dtype": args.dtype, "rows": args.rows, "seq_len": args.seq_len,
            "imports_rss_bytes": imports, "runtime_bytes": runtime, "peak_bytes": peak,
            "estimated_bytes": est["total"], "ratio": round(est["total"] / peak, 3),
            "model_ratio": round(model_part / (peak - runtime), 3), "components": est["components"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--algo", nargs="*", default=None)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process mode
    args = ap.parse_args()
    if args.one:
        args.algo = args.algo[0]
        print(json.dumps(measure(args)))
        return
    from zoft.algos import ALGORITHMS

    rows = []
    for algo in args.algo or list(ALGORITHMS):
        cmd = [sys.executable, __file__, "--one", "--algo", algo, "--model", args.model, "--dtype", args.dtype,
               "--rows", str(args.rows), "--seq-len", str(args.seq_len)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        print(line, flush=True)
        rows.append(json.loads(line))
    print(f"\n{'algo':10s} {'peak MiB':>9s} {'runtime MiB':>12s} {'estimate MiB':>13s} {'est/peak':>9s} "
          f"{'model est/peak':>15s}")
    for r in rows:
        print(f"{r['algo']:10s} {r['peak_bytes'] / 2**20:>9.0f} {r['runtime_bytes'] / 2**20:>12.0f} "
              f"{r['estimated_bytes'] / 2**20:>13.0f} {r['ratio']:>9.2f} {r['model_ratio']:>15.2f}")


if __name__ == "__main__":
    main()
