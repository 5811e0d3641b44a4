"""What half-precision weights do to a ZO run, on the embedded SmolLM2-135M's real weights.

Two measurements, printed as tables and one JSON line:

1. Drift of perturb/restore cycles. A MeZO step with g = 0 is a pure cycle (+εz, −2εz, +εz); in exact arithmetic
   it leaves θ unchanged. In bf16/fp16 each pass rounds, so θ random-walks. After 1, 10 and 100 cycles this reports
   the fraction of weights that differ from their start, the RMS drift relative to the weights' RMS, and the
   largest change, with the update pass rounded to nearest and stochastically (`--stochastic-rounding`), and for
   bf16 with `--exact-bf16` (16-bit residuals: every pass is fp32 arithmetic; the bf16 half is what is compared).
2. Updates lost to rounding. For MeZO's update −η·g·z with η ∈ {1e-6, 1e-7} and |g| = 3 (the median projected
   gradient of a SmolLM2 SST-2 run at ε = 1e-3), the fraction of weights whose value the update leaves
   unchanged when rounded to nearest, and the fraction of the update's total magnitude that survives on average
   with nearest and with stochastic rounding.

3. With --loss-cycles N, what the drift does to the model: the SST-2 loss of 64 training examples before and after
   N pure perturb/restore cycles of the bf16 model, rounded to nearest and with --exact-bf16.

Usage: python bench/low_precision.py [--cycles 100] [--eps 1e-3] [--loss-cycles 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from zoft.algos import MeZO  # noqa: E402
from zoft.models import load_model  # noqa: E402
from zoft.perturb import PerturbationEngine, step_seed  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def drift(start: list[torch.Tensor], now: list[torch.Tensor]) -> dict[str, float]:
    changed = sum(int((a != b).sum()) for a, b in zip(start, now))
    total = sum(a.numel() for a in start)
    sq = sum(float((b.double() - a.double()).pow(2).sum()) for a, b in zip(start, now))
    ref = sum(float(a.double().pow(2).sum()) for a in start)
    biggest = max(float((b.float() - a.float()).abs().max()) for a, b in zip(start, now))
    return {"changed": changed / total, "rms_rel": (sq / ref) ** 0.5, "max_abs": biggest}


def cycles(weights: list[torch.Tensor], n: int, eps: float, update: str) -> list[dict]:
    params = [torch.nn.Parameter(w.clone(), requires_grad=False) for w in weights]
    opt = MeZO(params, lr=1e-6, eps=eps)
    opt.stochastic_rounding = update == "stochastic"
    if update == "exact":
        opt.keep_residuals()
    rows = []
    for k in range(1, n + 1):
        opt.step(lambda: 0.0)  # L+ = L− → g = 0: +εz, −2εz, then the fused restore (+εz)
        if k in (1, 10, 100, n):
            rows.append({"cycles": k, **drift(weights, [p.detach() for p in params])})
    return rows


def lost_updates(weights: list[torch.Tensor], lr: float, g: float) -> dict[str, float]:
    """Nearest vs stochastic rounding of θ − η·g·z on every weight (one z, the table's)."""
    eng = PerturbationEngine(weights)
    unchanged = total = 0
    kept_rn = kept_sr = wanted = 0.0
    for i, w in enumerate(weights):
        z = eng.noise(i, step_seed(0, 0))
        exact = (-lr * g) * z
        near = w.clone()
        eng.ops.add_(near, z, -lr * g)
        sr = w.clone()
        with eng.rounding(1):
            eng.ops.add_(sr, z, -lr * g)
        unchanged += int((near == w).sum())
        total += w.numel()
        sign = exact.sign()
        wanted += float(exact.abs().double().sum())
        kept_rn += float(((near.double() - w.double()) * sign).sum())
        kept_sr += float(((sr.double() - w.double()) * sign).sum())
    return {"lr": lr, "g": g, "unchanged_nearest": unchanged / total, "kept_nearest": kept_rn / wanted,
            "kept_stochastic": kept_sr / wanted}


def loss_drift(n: int, eps: float) -> None:
    from zoft.algos import trainable_parameters
    from zoft.scoring import classification_loss, collate, encode_examples
    from zoft.tasks import get_task, load_splits

    rows = []
    for update in ("nearest", "exact"):
        model, tok, _ = load_model("smollm2-135m", "bfloat16", "cpu")
        splits = load_splits(get_task("sst2"), "builtin", num_train=64, num_dev=0, num_eval=1)
        batch = [collate(encode_examples(tok, splits.train), tok.pad_token_id)]

        def loss() -> float:
            with torch.inference_mode():
                return float(classification_loss(model, batch))

        opt = MeZO(trainable_parameters(model), lr=1e-6, eps=eps)
        if update == "exact":
            opt.keep_residuals()
        row = {"update": update, "loss_before": loss()}
        for k in range(1, n + 1):
            opt.step(lambda: 0.0)
            if k in (10, 100, n):
                row[f"loss_after_{k}"] = loss()
        rows.append(row)
        print(row, flush=True)
    print(json.dumps({"model": "SmolLM2-135M bf16", "eps": eps, "cycles": n, "rows": rows}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--loss-cycles", type=int, default=0, help="also measure the loss change after N cycles")
    args = ap.parse_args()
    if args.loss_cycles:
        return loss_drift(args.loss_cycles, args.eps)
    model, _, _ = load_model("smollm2-135m", "float32", "cpu")
    fp32 = [p.detach() for _, p in sorted(model.named_parameters())]
    result = {"model": "SmolLM2-135M", "params": sum(w.numel() for w in fp32), "eps": args.eps, "drift": [],
              "lost": []}
    for name, dtype in DTYPES.items():
        weights = [w.to(dtype) for w in fp32]
        for update in ("nearest", "stochastic", "exact") if dtype == torch.bfloat16 else ("nearest", "stochastic"):
            t = time.perf_counter()
            for row in cycles(weights, args.cycles, args.eps, update):
                result["drift"].append({"dtype": name, "rounding": update, **row})
            print(f"{name} {update}: {args.cycles} cycles in {time.perf_counter() - t:.0f} s", flush=True)
        for lr in (1e-6, 1e-7):
            result["lost"].append({"dtype": name, **lost_updates(weights, lr, 3.0)})
        del weights
    print(f"\nDrift of perturb/restore cycles (ε = {args.eps}, g = 0), {result['params']:,} weights")
    print(f"{'dtype':9s} {'update':11s} {'cycles':>6s} {'changed':>8s} {'RMS drift':>10s} {'max |Δ|':>9s}")
    for r in result["drift"]:
        print(f"{r['dtype']:9s} {r['rounding']:11s} {r['cycles']:>6d} {r['changed']:>8.1%} {r['rms_rel']:>10.2e} "
              f"{r['max_abs']:>9.2e}")
    print("\nMeZO updates −η·g·z, |g| = 3: weights left unchanged by rounding to nearest, and the share of the "
          "update's magnitude kept")
    print(f"{'dtype':9s} {'lr':>6s} {'unchanged':>10s} {'kept (nearest)':>15s} {'kept (stochastic)':>18s}")
    for r in result["lost"]:
        print(f"{r['dtype']:9s} {r['lr']:>6.0e} {r['unchanged_nearest']:>10.1%} {r['kept_nearest']:>15.1%} "
              f"{r['kept_stochastic']:>18.1%}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
