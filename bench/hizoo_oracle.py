"""Does diagonal curvature help ZO fine-tuning at all? MeZO preconditioned by a backprop curvature oracle vs MeZO.

On the embedded SmolLM2-135M (bf16 base, fp32 adapters) in prefix mode (57.6k weights) or LoRA mode (461k), the
script first computes the diagonal of the loss Hessian by backprop once, at the starting point: Hutchinson's
estimator E[v ⊙ Hv] over Rademacher v, Hv by double backprop through an fp32 copy of the model, averaged over
`--hutchinson-samples` probes on as many training batches. It is averaged per tensor (`--granularity tensor`, one
number per tensor: what a per-tensor ZO estimate could learn) or kept per weight (`weight`), floored at
`--floor` × the median curvature (of the positive values where the median is not: LoRA's A has exactly zero
curvature while B = 0; curvature can also be negative), and scaled so
that the mean of 1/H over the weights is 1: the probe u = z/√H then has MeZO's expected length, so ε means the same.

Then it runs, from the same start with the same batches and seeds,

    mezo       θ ← θ − η·g·z,        g = (L(θ + εz) − L(θ − εz)) / 2ε
    oracle     θ ← θ − η·g·u,        u = z/√H,  g = (L(θ + εu) − L(θ − εu)) / 2ε   (E[g·u] = H⁻¹∇L)
    learned    `--algo hizoo` with zoft's estimator: H learned per tensor from the centred sample
               (`hessian_estimator="centred", hessian_granularity="tensor"`), `--warmup` MeZO steps first, α `--alpha`;
               its probes are scaled the same way (mean(1/H) = 1); 3 forwards a step

mezo and oracle take 2 forwards a step, for `--forwards` forwards each, at every lr of `--lrs` and every seed of `--seeds`, and
scores the dev set (SST-2 sample, `--num-dev` examples) every `--eval-every` forwards. Each evaluation is one JSON
line on stdout and in `--out`; at the end it prints, per method and lr, the mean over seeds of the best and the
final dev loss, and with --plot the curves.

Usage: python bench/hizoo_oracle.py --mode prefix --lrs 1e-3,3e-3,1e-2 --seeds 0,1 --forwards 3000
       [--batch-size 8] [--eps 1e-2] [--granularity tensor|weight] [--methods mezo,oracle] [--out FILE.jsonl]
       python bench/hizoo_oracle.py --summarise FILE.jsonl [--plot bench/results/hizoo_oracle.png]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from zoft.algos import HiZOO, MeZO, trainable_parameters  # noqa: E402
from zoft.algos.base import Estimate, ZOOptimizer  # noqa: E402
from zoft.models import load_model  # noqa: E402
from zoft.modes import attach  # noqa: E402
from zoft.scoring import classification_loss, collate, encode_examples, evaluate  # noqa: E402
from zoft.tasks import get_task, load_splits  # noqa: E402


class OraclePreconditioned(HiZOO):
    """MeZO along u = z/√H with H fixed (HiZOO's probe and step, without its curvature forward or update)."""

    probes = (1.0, -2.0)
    forwards_per_step = 2

    def __init__(self, params, hessians: list[torch.Tensor], **kw):
        super().__init__(params, hessian_smooth=0.0, allow_degenerate=True, **kw)
        for p, h in zip(self.tensors, hessians):
            self.state[p]["hessian"].copy_(h.expand(p.shape))

    def estimate(self, losses: list[float]) -> Estimate:
        return ZOOptimizer.estimate(self, losses)   # the SPSA estimate: g = (L+ − L−)/2ε, loss (L+ + L−)/2

    def update_tensor(self, index: int, seed: int, record: dict, t: int) -> None:
        p, group, z = self.tensors[index], self.hyper(index), self.engine.noise(index, seed)
        sqrt_h = self._sqrt_h(index, 0)
        self.ops.addcdiv_(p, z, sqrt_h, group["eps"])                               # back to θ
        self.ops.addcdiv_(p, z, sqrt_h, -group["lr"] * record["projected_grad"])    # θ − η·g·z/√H


def build(mode: str, dtype: str, seed: int):
    model, tokenizer, _ = load_model("smollm2-135m", dtype, "cpu")
    return attach(model, mode, seed=seed, adapter_dtype=torch.float32), tokenizer


def hutchinson(mode: str, batches, samples: int, granularity: str) -> list[torch.Tensor]:
    """diag(∇²L) at the start, per weight or averaged per tensor, by E[v ⊙ Hv] over Rademacher v (fp32 model)."""
    model, _ = build(mode, "float32", 0)
    getattr(model, "base", model).set_attn_implementation("eager")   # SDPA has no double backward on CPU
    params = [p for _, p in trainable_parameters(model)]
    acc = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(1234)
    for k in range(samples):
        loss = classification_loss(model, [batches[k % len(batches)]])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        vs = [torch.randint(0, 2, p.shape, generator=gen).float().mul_(2).sub_(1) for p in params]
        hv = torch.autograd.grad(grads, params, grad_outputs=vs)
        for a, v, h in zip(acc, vs, hv):
            a.add_(v * h, alpha=1.0 / samples)
    if granularity == "tensor":
        acc = [a.mean().reshape(()) for a in acc]
    return acc


def condition(diag: list[torch.Tensor], sizes: list[int], floor: float, absolute: bool = False) -> list[torch.Tensor]:
    """Floor at `floor` × the median curvature over the weights (over the positive ones where that median is not
    positive: in LoRA mode most weights are A's, whose curvature is 0 while B = 0), then scale so that the mean of
    1/H over all weights is 1."""
    if absolute:   # |curvature|: negative-curvature tensors are preconditioned by their magnitude, not floored
        diag = [d.abs() for d in diag]
    flat = torch.cat([d.reshape(-1).expand(n) if d.numel() == 1 else d.reshape(-1) for d, n in zip(diag, sizes)])
    median = float(flat.median())
    lo = floor * (median if median > 0 else float(flat[flat > 0].median()))
    h = [d.clamp(min=lo) for d in diag]
    inv_mean = sum(float((1.0 / x).sum()) * (n if x.numel() == 1 else 1) for x, n in zip(h, sizes)) / sum(sizes)
    return [x * inv_mean for x in h]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="prefix", choices=("prefix", "lora"))
    ap.add_argument("--methods", default="mezo,oracle")
    ap.add_argument("--lrs", default="1e-3")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--forwards", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=250, help="forwards between dev evaluations")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eps", type=float, default=1e-2)
    ap.add_argument("--num-dev", type=int, default=128)
    ap.add_argument("--granularity", default="tensor", choices=("tensor", "weight"))
    ap.add_argument("--hutchinson-samples", type=int, default=16)
    ap.add_argument("--floor", type=float, default=0.01)
    ap.add_argument("--negative", default="floor", choices=("floor", "abs"),
                    help="curvature ≤ 0: floor it (default) or use its magnitude")
    ap.add_argument("--alpha", type=float, default=1e-2, help="learned: the EMA coefficient of H")
    ap.add_argument("--warmup", type=int, default=100, help="learned: MeZO steps that estimate H first")
    ap.add_argument("--oracle-cache", default=None, help="save/load the oracle diagonal here (.pt)")
    ap.add_argument("--out", default=None, help="append the JSON lines here too")
    ap.add_argument("--summarise", default=None, help="only summarise this JSON-lines file")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    if args.summarise:
        summarise([json.loads(line) for line in Path(args.summarise).read_text().splitlines() if line.strip()],
                  args.plot)
        return
    torch.manual_seed(0)
    model, tokenizer = build(args.mode, "bfloat16", 0)
    splits = load_splits(get_task("sst2"), "builtin", num_train=1000, num_dev=args.num_dev, num_eval=1)
    train = encode_examples(tokenizer, splits.train)
    dev = encode_examples(tokenizer, splits.dev)
    named = trainable_parameters(model)
    start = [p.detach().clone() for _, p in named]
    sizes = [p.numel() for _, p in named]
    hessians = None
    if "oracle" in args.methods:
        hessians = oracle(args, train, tokenizer, sizes)
    records = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for lr in [float(x) for x in args.lrs.split(",")]:
            for method in args.methods.split(","):
                with torch.no_grad():
                    for (_, p), s in zip(named, start):
                        p.copy_(s)
                records += run(args, method, lr, seed, model, named, train, dev, tokenizer, hessians)
    summarise(records, args.plot)


def oracle(args, train, tokenizer, sizes) -> list[torch.Tensor]:
    cache = Path(args.oracle_cache) if args.oracle_cache else None
    if cache is not None and cache.exists():
        diag = torch.load(cache)
    else:
        t0 = time.perf_counter()
        batches = [collate(train[i * 16:(i + 1) * 16], tokenizer.pad_token_id) for i in range(args.hutchinson_samples)]
        diag = hutchinson(args.mode, batches, args.hutchinson_samples, args.granularity)
        print(f"# Hutchinson diagonal: {args.hutchinson_samples} samples in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        if cache is not None:
            torch.save(diag, cache)
    flat = torch.stack([d.mean() for d in diag])
    print(f"# per-tensor mean curvature: min {float(flat.min()):.3g} median {float(flat.median()):.3g} "
          f"max {float(flat.max()):.3g}, ≤ 0 in {int((flat <= 0).sum())} of {len(flat)} tensors", file=sys.stderr)
    h = condition(diag, sizes, args.floor, absolute=args.negative == "abs")
    floored = [float(x.min()) <= float(min(y.min() for y in h)) * (1 + 1e-6) for x in h]
    share = sum(float((n / x).sum()) if x.numel() > 1 else n / float(x) for x, n, f in zip(h, sizes, floored) if f)
    print(f"# {sum(floored)} tensors at the floor take {100 * share / sum(sizes):.1f} % of the probe's energy "
          f"(E‖u‖² = Σ 1/H)", file=sys.stderr)
    return h


def run(args, method, lr, seed, model, named, train, dev, tokenizer, hessians) -> list[dict]:
    params = [p for _, p in named]
    if method == "mezo":
        opt = MeZO(params, lr=lr, eps=args.eps, seed=seed)
    elif method == "learned":
        opt = HiZOO(params, lr=lr, eps=args.eps, seed=seed, hessian_smooth=args.alpha, hessian_estimator="centred",
                    hessian_granularity="tensor", hessian_warmup=args.warmup)
    else:
        opt = OraclePreconditioned(params, hessians, lr=lr, eps=args.eps, seed=seed)
    gen = torch.Generator().manual_seed(10_000 + seed)   # the same batches for every method at a seed
    out, t0, train_losses = [], time.perf_counter(), []

    def score(forwards: int) -> None:
        res = evaluate(model, dev, tokenizer.pad_token_id, batch_size=32)
        rec = {"mode": args.mode, "method": method, "lr": lr, "seed": seed, "forwards": forwards,
               "dev_loss": res["loss"], "dev_acc": res["accuracy"],
               **({"log_h_std": opt.diagnostics()["log_h_std"]} if method == "learned" else {}),
               "train_loss": statistics.fmean(train_losses[-50:]) if train_losses else None,
               "granularity": args.granularity, "eps": args.eps, "batch_size": args.batch_size,
               **({"negative": args.negative} if method == "oracle" else {}),
               "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(rec), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        out.append(rec)

    score(0)
    while opt.forwards < args.forwards:
        idx = torch.randint(0, len(train), (args.batch_size,), generator=gen).tolist()
        batch = collate([train[i] for i in idx], tokenizer.pad_token_id)
        loss = opt.step(lambda: classification_loss(model, [batch]))
        train_losses.append(loss)
        if not math.isfinite(loss):
            break
        if opt.forwards // args.eval_every > (opt.forwards - opt.forwards_per_step) // args.eval_every:
            score(opt.forwards)   # the first step past each multiple of --eval-every (HiZOO takes 3 a step)
    return out


def summarise(records: list[dict], plot: str | None) -> None:
    runs: dict[tuple, list[dict]] = {}
    for r in records:
        name = r["method"] + ("-abs" if r.get("negative") == "abs" else "")
        runs.setdefault((r["mode"], name, r["lr"], r["seed"]), []).append(r)
    table: dict[tuple, list[tuple[float, float, float, int]]] = {}
    for (mode, method, lr, seed), rs in sorted(runs.items()):
        losses = [r["dev_loss"] for r in rs]
        table.setdefault((mode, method, lr), []).append((min(losses), losses[-1], rs[-1]["dev_acc"],
                                                         rs[-1]["forwards"]))
    print("| mode | method | lr | seeds | forwards | best dev loss | final dev loss | final dev acc |")
    print("|---|---|---|---|---|---|---|---|")
    for (mode, method, lr), vals in sorted(table.items()):
        print(f"| {mode} | {method} | {lr:g} | {len(vals)} | {min(v[3] for v in vals)} | "
              f"{statistics.fmean(v[0] for v in vals):.4f} | {statistics.fmean(v[1] for v in vals):.4f} | "
              f"{100 * statistics.fmean(v[2] for v in vals):.1f} % |")
    budgets = sorted({r["forwards"] for r in records if r["forwards"] and r["forwards"] % 250 == 0})
    if budgets:
        print("\nmean dev loss over seeds at equal forwards (the evaluation at each budget)\n")
        print("| mode | method | lr | " + " | ".join(f"{b} fwd" for b in budgets) + " |")
        print("|---|---|---|" + "---|" * len(budgets))
        for (mode, method, lr) in sorted(table):
            seeds = [rs for (m, me, l, _), rs in runs.items() if (m, me, l) == (mode, method, lr)]
            cells = []
            for b in budgets:
                # a 3-forward method evaluates at 252, 501, ...: its step that crosses the budget counts
                vals = [[r["dev_loss"] for r in rs if r["forwards"] <= b + 2][-1] for rs in seeds
                        if rs[-1]["forwards"] >= b]
                cells.append(f"{statistics.fmean(vals):.4f}" if len(vals) == len(seeds) else "")
            print(f"| {mode} | {method} | {lr:g} | " + " | ".join(cells) + " |")
    if plot:
        plot_curves(runs, plot)


def plot_curves(runs: dict[tuple, list[dict]], path: str) -> None:
    """Dev loss against forwards: each seed faint, the mean over seeds bold, one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"mezo": "tab:blue", "oracle": "tab:red", "learned": "tab:green", "oracle-abs": "tab:orange"}
    modes = sorted({k[0] for k in runs})
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        groups: dict[tuple, list[list[dict]]] = {}
        for (m, method, lr, _), rs in sorted(runs.items()):
            if m == mode:
                groups.setdefault((method, lr), []).append(rs)
        for (method, lr), seeds in groups.items():
            colour = colours.get(method, "k")
            for rs in seeds:
                ax.plot([r["forwards"] for r in rs], [r["dev_loss"] for r in rs], color=colour, alpha=0.3, lw=0.8)
            n = min(len(rs) for rs in seeds)
            ax.plot([r["forwards"] for r in seeds[0][:n]],
                    [statistics.fmean(rs[i]["dev_loss"] for rs in seeds) for i in range(n)], color=colour, lw=2,
                    label=f"{method} lr {lr:g} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
        ax.set(title=f"SmolLM2-135M / SST-2, {mode} mode", xlabel="forwards", ylabel="dev loss (128 examples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
