"""Data-parallel ZO on this CPU: steps/s of 1 vs 2 gloo processes on a tiny Llama, bytes communicated per step,
and the size of a 1 000-step seed trajectory against a checkpoint.

    python bench/data_parallel.py            # ~2 min on 2 cores

The model is built from config (hidden 256, 4 layers, ~4 M parameters) so that the forwards, not process start-up,
dominate; the single process gets both cores (2 threads), each rank of the pair one core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import build_tokenizer

    tok = build_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512,
                                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                                         eos_token_id=2))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def run(model: Path, out: Path, nproc: int, steps: int) -> dict:
    args = ["--model", str(model), "--data-dir", "builtin", "--num-train", "256", "--num-dev", "16",
            "--num-eval", "16", "--batch-size", "16", "--steps", str(steps), "--eval-every", "0", "--save-every",
            "0", "--lr", "1e-4", "--eps", "1e-3", "--device", "cpu", "--output-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    subprocess.run([sys.executable, *launcher, "-m", "zoft", "-q", "train", *args], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in metrics if r.get("event") == "train"]
    return {"steps_per_s": train[-1]["steps_per_s"], "comm_bytes_per_step": metrics[0]["comm_bytes_per_step"],
            "trajectory_bytes": (out / "trajectory.jsonl").stat().st_size,
            "checkpoint_bytes": sum(f.stat().st_size for f in (out / "final").iterdir())}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp) / "model")
        one = run(model, Path(tmp) / "one", 1, 60)
        two = run(model, Path(tmp) / "two", 2, 60)
        long = run(model, Path(tmp) / "long", 1, 1000)
    print(f"1 process : {one['steps_per_s']:.2f} steps/s, {one['comm_bytes_per_step']} bytes/step communicated")
    print(f"2 ranks   : {two['steps_per_s']:.2f} steps/s ({two['steps_per_s'] / one['steps_per_s']:.2f}x), "
          f"{two['comm_bytes_per_step']} bytes/step communicated per rank")
    print(f"1000-step trajectory.jsonl: {long['trajectory_bytes']:,} bytes "
          f"({long['trajectory_bytes'] / 1000:.1f} B/step, any model size)")
    smol = 134_515_008 * 4  # SmolLM2-135M fp32 weights, what one full checkpoint holds
    print(f"one checkpoint of this model: {long['checkpoint_bytes']:,} bytes; of SmolLM2-135M (fp32): {smol:,} "
          f"bytes = {smol / long['trajectory_bytes']:,.0f}x the 1000-step trajectory")


if __name__ == "__main__":
    main()
