"""ZO step time against the time of its forwards, and peak memory, on the embedded SmolLM2-135M.

A ZO step can cost no less than its forwards; the rest is passes over the parameters (regenerating z and adding
it in place). This prints, measured in one run on the same batch:

    forward      one loss evaluation (batch of SST-2 examples × 2 candidates)
    pass         one perturbation pass of the algorithm (`opt.perturb`): MeZO-style methods regenerate z for all
                 134.5 M parameters and add it in place; TeZO draws r numbers per matrix and adds a rank-r product
    step         the algorithm's step (its forwards and passes: MeZO 2 + 3, HiZOO 3 + 3, ZO-SGD-Cons 5 + 5)
    ratio        step / (forwards per step × forward): 1.0 would be the physical floor
    products     the time per step in matrix products outside the forwards (aten::mm/addmm, from torch's
                 profiler): TeZO's, LOZO's and SubZero's rank-r products and TeZO-Adam's moment products. Their
                 bits fix the trajectory, so (forwards + products) / forwards is the lowest ratio any implementation
                 with the same bits reaches with this BLAS: the `floor` column
    peak         peak resident memory of the process while stepping (VmHWM after resetting it; tracemalloc
                 cannot see tensors); `extra` is that peak minus the resident memory after loading the model and
                 running the forwards (weights, activations, torch itself), i.e. what the optimizer adds: its
                 persistent state plus its transient buffers

With --compare-reference it also times, on the same model and batch, a faithful re-implementation of the step of
the MeZO paper's published code (princeton-nlp/MeZO, `zo_step` + `zo_update`): the global torch seed reset before
each of 4 sweeps, z = torch.normal(...) in the parameter dtype per tensor, parameters reassigned
(`param.data = param.data + ...`) instead of updated in place, one row per candidate and logits over the whole
sequence × vocabulary with a full log-softmax. It prints zoft's speedup over it.

Usage: python bench/step_time.py [--algo NAME|A,B,C|all] [--dtype bfloat16|float32] [--noise table|randn] [--exact-bf16]
       [--batch-size 16] [--repeats 5] [--threads N] [--compare-reference]
       (several algorithms or `all`: each in its own process so peaks do not mix, then one table)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from zoft.algos import ALGORITHMS, trainable_parameters  # noqa: E402
from zoft.memory import peak_memory, reset_peak_memory  # noqa: E402
from zoft.models import load_model  # noqa: E402
from zoft.perturb import step_seed  # noqa: E402
from zoft.scoring import classification_loss, collate, encode_examples  # noqa: E402
from zoft.tasks import get_task, load_splits  # noqa: E402


def interleaved(fns, repeats: int) -> list[float]:
    """Median wall time of each function, timed round-robin (f1, f2, f3, f1, ...) after one warm-up each, so that
    the drift of a shared machine's speed (forwards varied 0.6–1.4 s between minutes here) hits all of them alike
    and the ratios stay meaningful."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            t = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - t)
    return [statistics.median(b) for b in times]


def product_seconds(opt, loss_fn, steps: int = 2) -> float:
    """Seconds per step that `opt.step` spends in matrix products outside its forwards (self time of aten::mm and
    aten::addmm(_) in torch's profiler; products inside the forwards are excluded by their record_function)."""
    from torch.profiler import profile, record_function

    def closure():
        with record_function("forward"):
            return loss_fn()

    def in_forward(event) -> bool:
        while event is not None:
            if event.name == "forward":
                return True
            event = event.cpu_parent
        return False

    with profile() as prof:
        for _ in range(steps):
            opt.step(closure)
    total = sum(e.self_cpu_time_total for e in prof.events()
                if e.name in ("aten::mm", "aten::addmm", "aten::addmm_") and not in_forward(e))
    return total / 1e6 / steps


def reference_mezo_step(model, loss_fn, eps: float = 1e-3, lr: float = 1e-6, seed: int = 0):
    """One step of the published MeZO code, as written there (4 sweeps, global seed reset, z by torch.normal in the
    weight dtype, `param.data` reassignment) on the minibatch loss `loss_fn()` (`reference_loss`: full logits)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def perturb(scale: float) -> None:
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scale * z * eps

    def loss() -> float:
        with torch.inference_mode():
            return float(loss_fn())

    perturb(1)
    loss1 = loss()
    perturb(-2)
    loss2 = loss()
    g = (loss1 - loss2) / (2 * eps)
    perturb(1)
    torch.manual_seed(seed)
    for _, p in params:
        z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
        p.data = p.data - lr * (g * z)
    return loss1


def reference_loss(model, batch):
    """The MeZO code's classification loss: full logits, log-softmax over every position, mean option log-prob."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    k = batch.targets.shape[1]
    tok = logp[:, -k:].gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    row = (tok * batch.target_mask).sum(1) / batch.target_mask.sum(1)
    scores = torch.full((len(batch.labels), batch.num_candidates), float("-inf"))
    scores[batch.row_example, batch.row_candidate] = row
    return torch.nn.functional.cross_entropy(scores, batch.labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", default="mezo", help="an algorithm, several as a,b,c, or all")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--noise", default="table", choices=["table", "randn"], help="z generator (zoft.perturb)")
    ap.add_argument("--exact-bf16", action="store_true", help="bf16 weights with 16-bit residuals")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--compare-reference", action="store_true", help="also time the published MeZO step")
    args = ap.parse_args()
    names = list(ALGORITHMS) if args.algo == "all" else args.algo.split(",")
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown:
        ap.error(f"--algo {','.join(unknown)}: choose from {', '.join(ALGORITHMS)} or all")
    if len(names) > 1:
        return run_all(args, names)
    if args.threads:
        torch.set_num_threads(args.threads)

    if "scales" in ALGORITHMS[args.algo].modes:  # QZO: an NF4 base whose fp32 block scales are trained
        from zoft.modes import attach

        model, tok, _ = load_model("smollm2-135m", args.dtype, "cpu", quantize="4bit-scales")
        model = attach(model, "scales")
    else:
        model, tok, _ = load_model("smollm2-135m", args.dtype, "cpu")
    splits = load_splits(get_task("sst2"), "builtin", num_train=args.batch_size, num_dev=0, num_eval=1)
    enc = encode_examples(tok, splits.train)
    batch = [collate(enc, tok.pad_token_id)]

    def forward():
        with torch.inference_mode():
            return float(classification_loss(model, batch))

    forward()
    forward()
    reset_peak_memory()
    base_rss = peak_memory()  # weights + one forward's working set already touched
    opt = ALGORITHMS[args.algo](trainable_parameters(model), eps=1e-3, noise=args.noise)  # default lr
    if args.exact_bf16:
        opt.keep_residuals()
    t_forward, t_pass, t_step = interleaved([forward, lambda: opt.perturb(step_seed(0, 0), 0.0),
                                             lambda: opt.step(lambda: classification_loss(model, batch))],
                                            args.repeats)
    peak = peak_memory()
    k = opt.forwards_per_step
    before = opt.engine.passes
    t_products = product_seconds(opt, lambda: classification_loss(model, batch), steps=2)
    passes = (opt.engine.passes - before) / 2  # one step's passes, as the engine counts them
    if getattr(opt, "first_order", False):  # FO-Adam's products outside its forward are its backward: no floor
        t_products = 0.0
    tokens = int(batch[0].attention_mask.sum())
    result = {"model": "SmolLM2-135M", "algo": args.algo, "dtype": args.dtype, "noise": args.noise,
              "exact_bf16": args.exact_bf16, "batch_examples": args.batch_size,
              "rows": int(batch[0].input_ids.shape[0]), "tokens": tokens, "threads": torch.get_num_threads(),
              "forward_s": round(t_forward, 4), "pass_s": round(t_pass, 4), "step_s": round(t_step, 4),
              "forwards_per_step": k, "ratio_step_over_forwards": round(t_step / (k * t_forward), 3),
              "products_s": round(t_products, 4), "floor_ratio": round(1 + t_products / (k * t_forward), 3),
              "peak_rss_bytes": peak, "rss_before_optimizer_bytes": base_rss, "extra_peak_bytes": peak - base_rss,
              "state_bytes": opt.state_bytes(), "state_breakdown": opt.state_breakdown()}
    print(f"SmolLM2-135M {args.dtype}{' exact' if args.exact_bf16 else ''}, {args.algo}, noise {args.noise}, "
          f"batch {args.batch_size} examples ({result['rows']} rows, {tokens} tokens), {result['threads']} threads")
    print(f"  forward      {t_forward:.3f} s")
    print(f"  pass         {t_pass:.3f} s   (one perturbation of {sum(p.numel() for p in opt.engine.params):,} "
          "params, in place)")
    print(f"  step         {t_step:.3f} s   ({k} forwards + {passes:.0f} passes)")
    print(f"  ratio        {result['ratio_step_over_forwards']:.2f}× {k} forwards")
    if t_products:
        print(f"  products     {t_products:.3f} s a step (matrix products outside the forwards: the ratio cannot go "
              f"below {result['floor_ratio']:.2f}× without changing their bits)")
    print(f"  peak RSS     {peak / 2**30:.2f} GiB, {(peak - base_rss) / 2**20:.0f} MiB over inference "
          f"(optimizer state {opt.state_bytes() / 2**20:.1f} MiB)")
    if args.compare_reference:
        per_candidate = collate(enc, tok.pad_token_id, share=False)
        t_ref, t_zoft = interleaved([lambda: reference_mezo_step(model, lambda: reference_loss(model, per_candidate)),
                                     lambda: opt.step(lambda: classification_loss(model, batch))], args.repeats)
        result.update(reference_step_s=round(t_ref, 4), reference_rows=int(per_candidate.input_ids.shape[0]),
                      speedup_over_reference=round(t_ref / t_zoft, 3))
        print(f"  reference    {t_ref:.3f} s   (published MeZO step: 4 sweeps, {result['reference_rows']} rows, "
              f"full logits)  →  zoft {args.algo} is {t_ref / t_zoft:.2f}× faster")
    print(json.dumps(result))


def run_all(args, names: list[str]) -> None:
    """Each algorithm in a fresh process (so peaks are its own), then the table relative to MeZO (MeZO is run
    first when it is not among `names`)."""
    rows = []
    for algo in (names if "mezo" in names else ["mezo", *names]):
        cmd = [sys.executable, __file__, "--algo", algo, "--dtype", args.dtype, "--batch-size",
               str(args.batch_size), "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--noise", args.noise]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        print(out.strip())
        rows.append(json.loads(out.strip().splitlines()[-1]))
    by = {r["algo"]: r for r in rows}
    mezo, adam = by["mezo"], by.get("zo-adam")
    print(f"\n{'algo':10s} {'step/fwds':>10s} {'floor':>6s} {'pass s':>7s} {'peak GiB':>9s} {'extra MiB':>10s} "
          f"{'vs mezo':>8s} {'vs zo-adam':>10s} {'state MiB':>10s}")
    for r in rows:
        vs_adam = f"{r['extra_peak_bytes'] / adam['extra_peak_bytes']:>9.2f}×" if adam else ""
        floor = f"{r['floor_ratio']:.2f}×" if r["products_s"] else "–"
        print(f"{r['algo']:10s} {r['ratio_step_over_forwards']:>9.2f}× {floor:>6s} {r['pass_s']:>7.3f} "
              f"{r['peak_rss_bytes'] / 2**30:>9.2f} {r['extra_peak_bytes'] / 2**20:>10.0f} "
              f"{r['extra_peak_bytes'] / mezo['extra_peak_bytes']:>7.2f}× {vs_adam} {r['state_bytes'] / 2**20:>10.1f}")
    print("(vs mezo / vs zo-adam compare the memory each optimizer adds over inference; floor: the ratio with "
          "nothing but the step's matrix products beside its forwards)")


if __name__ == "__main__":
    main()
