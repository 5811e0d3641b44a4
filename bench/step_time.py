"""MeZO step time against the time of its two forwards, on the embedded SmolLM2-135M.

A ZO step can cost no less than its forwards; the rest is passes over the parameters (regenerating z and adding
it in place). This prints, measured in one run on the same batch:

    forward      one loss evaluation (batch of SST-2 examples × 2 candidates)
    pass         one perturbation pass: regenerate z for all 134.5 M parameters and add it in place
    mezo step    2 forwards + 3 passes
    ratio        mezo step / (2 × forward): 1.0 would be the physical floor

Usage: python bench/step_time.py [--dtype bfloat16|float32] [--batch-size 16] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from zoft.algos import MeZO, trainable_parameters  # noqa: E402
from zoft.models import load_model  # noqa: E402
from zoft.perturb import step_seed  # noqa: E402
from zoft.scoring import classification_loss, collate, encode_examples  # noqa: E402
from zoft.tasks import get_task, load_splits  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median wall time of `fn` over `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok, _ = load_model("smollm2-135m", args.dtype, "cpu")
    splits = load_splits(get_task("sst2"), "builtin", num_train=args.batch_size, num_dev=0, num_eval=1)
    enc = encode_examples(tok, splits.train)
    batch = [collate(enc, tok.pad_token_id)]
    opt = MeZO(trainable_parameters(model), lr=1e-6, eps=1e-3)

    def forward():
        with torch.inference_mode():
            return float(classification_loss(model, batch))

    t_forward = timed(forward, args.repeats)
    t_pass = timed(lambda: opt.engine.add_(step_seed(0, 0), 0.0), args.repeats)
    t_step = timed(lambda: opt.step(lambda: classification_loss(model, batch)), args.repeats)
    tokens = int(batch[0].attention_mask.sum())
    result = {"model": "SmolLM2-135M", "dtype": args.dtype, "batch_examples": args.batch_size,
              "rows": int(batch[0].input_ids.shape[0]), "tokens": tokens, "threads": torch.get_num_threads(),
              "forward_s": round(t_forward, 4), "pass_s": round(t_pass, 4), "mezo_step_s": round(t_step, 4),
              "ratio_step_over_two_forwards": round(t_step / (2 * t_forward), 3)}
    print(f"SmolLM2-135M {args.dtype}, batch {args.batch_size} examples ({result['rows']} rows, {tokens} tokens), "
          f"{result['threads']} threads")
    print(f"  forward      {t_forward:.3f} s")
    print(f"  pass         {t_pass:.3f} s   (regenerate z for {sum(p.numel() for p in opt.engine.params):,} "
          "params + in-place add)")
    print(f"  mezo step    {t_step:.3f} s   (2 forwards + 3 passes)")
    print(f"  ratio        {result['ratio_step_over_two_forwards']:.2f}× two forwards")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
