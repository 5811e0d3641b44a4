"""`zoft estimate-memory` for OPT-13B and OPT-66B in every tuning mode and base precision, beside the MeZO paper's
measured figures (arXiv 2305.17333, Table 22: MeZO full fine-tuning in fp16 on MultiRC-length inputs used
26 GB of GPU memory at 13B and 128 GB at 66B; first-order fine-tuning needed 4× and 6× as much).

The models are built on the meta device from the configs in bench/model_configs (the published OPT shapes), so
no weights are needed. Rows: MeZO, batch 16 × 1 row × 400 tokens (MultiRC-like), bf16 compute, CUDA. The
offload column is the same run with `--offload cpu` (blocks in pinned host memory, streamed; zoft.offload).

Usage: python bench/estimate_table.py [--seq-len 400] [--batch-size 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from zoft.memory import MemoryRequest, estimate  # noqa: E402

CONFIGS = Path(__file__).parent / "model_configs"
PAPER_GB = {"opt-13b": 26, "opt-66b": 128}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for name in ("opt-13b", "opt-66b"):
        for mode in ("full", "lora", "prefix"):
            for quant in (None, "8bit", "4bit"):
                if quant and mode == "full":
                    continue
                r = estimate(MemoryRequest(model=str(CONFIGS / name), algo="mezo", mode=mode, dtype="bfloat16",
                                           device="cuda", batch_size=args.batch_size, seq_len=args.seq_len,
                                           load_in_8bit=quant == "8bit", load_in_4bit=quant == "4bit"))
                off = estimate(MemoryRequest(model=str(CONFIGS / name), algo="mezo", mode=mode, dtype="bfloat16",
                                             device="cuda", batch_size=args.batch_size, seq_len=args.seq_len,
                                             offload="cpu")) if mode in ("full", "lora") and not quant else None
                rows.append({"model": name, "mode": mode, "base": quant or "bf16",
                             "trainable": r["trainable_params"], "zo_gib": r["total"] / 2**30,
                             "offload_gib": off["total"] / 2**30 if off else None,
                             "offload_host_gib": off["host_bytes"] / 2**30 if off else None,
                             "first_order_gib": r["first_order_adamw"]["total"] / 2**30,
                             "paper_mezo_gb": PAPER_GB[name] if mode == "full" else None})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'model':8s} {'mode':7s} {'base':5s} {'trainable':>14s} {'MeZO GiB':>9s} {'offload GPU/host':>17s} "
          f"{'FO AdamW GiB':>13s} {'MeZO paper GB':>14s}")
    for r in rows:
        paper = f"{r['paper_mezo_gb']:>14d}" if r["paper_mezo_gb"] else f"{'':>14s}"
        off = f"{r['offload_gib']:.1f} / {r['offload_host_gib']:.1f}" if r["offload_gib"] else ""
        print(f"{r['model']:8s} {r['mode']:7s} {r['base']:5s} {r['trainable']:>14,d} {r['zo_gib']:>9.1f} "
              f"{off:>17s} {r['first_order_gib']:>13.1f} {paper}")


if __name__ == "__main__":
    main()
