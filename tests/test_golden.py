"""Golden runs: short tiny-model runs whose results are pinned bitwise, so that a refactor cannot change behaviour.

Every registered algorithm, LoRA and prefix mode, --exact-bf16, --stochastic-rounding, CPU-simulated offload and a
2-rank gloo run each train a few steps through `zoft train`; the test compares what the run wrote with
`tests/golden/runs.json`: a SHA-256 of every final tensor (weights and optimizer state), the logged train losses and
projected gradients, the trajectory lines and the eval score.

The file pins bits of one platform (the torch version and CPU capability it records). On another platform float
kernels may round differently, so there the numbers are compared to 1e-5 relative instead of bitwise and the
checksums are skipped. Regenerate the file only for a change that is meant to alter trajectories, and say so in
the commit:

    python tests/test_golden.py --write   # every run
    python tests/test_golden.py --add     # only runs the file lacks (a new algorithm's), the others kept as they are
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "runs.json"

_COMMON = ("--data-dir", "builtin", "--num-train", "32", "--num-dev", "8", "--num-eval", "8", "--batch-size", "4",
           "--lr", "1e-3", "--eps", "1e-2", "--device", "cpu", "--steps", "4", "--eval-every", "0",
           "--save-every", "0", "--log-every", "1", "--max-length", "64")
_HIZOO = ("--hessian-smooth", "0.01")

#: name → (tiny model, extra flags, how it runs: "cli" in this process, "offload" with the CPU as the GPU, "gloo")
RUNS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "mezo": ("opt", ("--algo", "mezo", "--weight-decay", "0.1"), "cli"),
    "mezo-randn": ("llama", ("--algo", "mezo", "--noise", "randn"), "cli"),
    "mezo-microbatch": ("llama", ("--algo", "mezo", "--micro-batch-size", "2"), "cli"),
    "mezo-accuracy": ("llama", ("--algo", "mezo", "--objective", "accuracy"), "cli"),
    "zo-sgd-mmt": ("llama", ("--algo", "zo-sgd-mmt", "--weight-decay", "0.1"), "cli"),
    "zo-adam": ("opt", ("--algo", "zo-adam", "--weight-decay", "0.1"), "cli"),
    "hizoo": ("llama", ("--algo", "hizoo", *_HIZOO, "--weight-decay", "0.1"), "cli"),
    "hizoo-paper-schedule": ("opt", ("--algo", "hizoo", "--hessian-estimator", "paper", "--hessian-schedule",
                                     "0:0.02,2:0.005"), "cli"),
    "hizoo-l": ("opt", ("--algo", "hizoo-l", *_HIZOO), "cli"),
    "tezo": ("llama", ("--algo", "tezo", "--rank", "4", "--weight-decay", "0.1"), "cli"),
    "tezo-spectrum": ("opt", ("--algo", "tezo", "--rank-mode", "spectrum", "--rank-min", "2", "--rank-max", "6",
                              "--tezo-factors", "regenerate", "--tezo-scale", "none"), "cli"),
    "tezo-m": ("llama", ("--algo", "tezo-m", "--rank", "4"), "cli"),
    "tezo-adam": ("opt", ("--algo", "tezo-adam", "--rank", "4", "--weight-decay", "0.1"), "cli"),
    "zo-sgd-sign": ("opt", ("--algo", "zo-sgd-sign", "--lr", "1e-4", "--weight-decay", "0.1"), "cli"),
    "zo-sgd-sign-elementwise": ("llama", ("--algo", "zo-sgd-sign", "--sign-mode", "elementwise", "--lr", "1e-4"),
                                "cli"),
    "lozo": ("llama", ("--algo", "lozo", "--lozo-interval", "2", "--weight-decay", "0.1"), "cli"),
    "lozo-m": ("opt", ("--algo", "lozo-m", "--lozo-rank", "1", "--lozo-interval", "3"), "cli"),
    "subzero": ("opt", ("--algo", "subzero", "--subzero-rank", "2", "--subzero-interval", "2", "--weight-decay",
                        "0.1"), "cli"),
    "zo-sgd-cons": ("llama", ("--algo", "zo-sgd-cons", "--lr", "1e-2", "--weight-decay", "0.1"), "cli"),
    "fzoo": ("llama", ("--algo", "fzoo", "--fzoo-probes", "3", "--lr", "1e-3", "--weight-decay", "0.1"), "cli"),
    "sparse-mezo": ("opt", ("--algo", "sparse-mezo", "--sparsity", "0.5", "--lr", "1e-3", "--weight-decay", "0.1"),
                    "cli"),
    "qzo": ("llama64", ("--algo", "qzo", "--mode", "scales", "--load-in-4bit", "--lr", "1e-3", "--qzo-clip", "5"),
            "cli"),
    "fo-adam": ("llama", ("--algo", "fo-adam", "--lr", "1e-4"), "cli"),
    "mezo-lora": ("opt", ("--algo", "mezo", "--mode", "lora", "--lora-r", "4"), "cli"),
    "zo-adam-lora": ("llama", ("--algo", "zo-adam", "--mode", "lora"), "cli"),
    "mezo-prefix": ("llama", ("--algo", "mezo", "--mode", "prefix", "--lr", "1e-2", "--eps", "1e-1"), "cli"),
    "hizoo-prefix": ("opt", ("--algo", "hizoo", *_HIZOO, "--mode", "prefix"), "cli"),
    "mezo-prompt": ("llama", ("--algo", "mezo", "--mode", "prompt"), "cli"),
    "mezo-exact-bf16": ("llama", ("--algo", "mezo", "--dtype", "bfloat16", "--exact-bf16"), "cli"),
    "tezo-exact-bf16": ("opt", ("--algo", "tezo-m", "--rank", "4", "--dtype", "bfloat16", "--exact-bf16"), "cli"),
    "mezo-sr": ("llama", ("--algo", "mezo", "--dtype", "bfloat16", "--stochastic-rounding"), "cli"),
    "hizoo-sr": ("opt", ("--algo", "hizoo", *_HIZOO, "--dtype", "bfloat16", "--stochastic-rounding"), "cli"),
    "tezo-adam-sr": ("llama", ("--algo", "tezo-adam", "--rank", "4", "--dtype", "bfloat16",
                               "--stochastic-rounding"), "cli"),
    # bf16 rounded to nearest: P3 restores and steps each row block in one sweep
    # (an lr and decay large enough that the step and c·W move bf16 weights by more than half an ulp)
    "tezo-adam-bf16": ("opt", ("--algo", "tezo-adam", "--rank", "4", "--dtype", "bfloat16", "--lr", "1e-3",
                               "--weight-decay", "2"), "cli"),
    "offload-mezo": ("opt", ("--algo", "mezo", "--offload", "cpu", "--weight-decay", "0.1"), "offload"),
    "offload-zo-adam-lora": ("llama", ("--algo", "zo-adam", "--offload", "cpu", "--mode", "lora"), "offload"),
    "offload-hizoo-l": ("llama", ("--algo", "hizoo-l", *_HIZOO, "--offload", "cpu"), "offload"),
    "offload-hizoo-sr": ("opt", ("--algo", "hizoo", *_HIZOO, "--offload", "cpu", "--dtype", "bfloat16",
                                 "--stochastic-rounding"), "offload"),
    "offload-zo-sgd-sign-elementwise": ("opt", ("--algo", "zo-sgd-sign", "--sign-mode", "elementwise", "--lr",
                                                "1e-4", "--offload", "cpu"), "offload"),
    "offload-lozo-m": ("llama", ("--algo", "lozo-m", "--lozo-interval", "2", "--offload", "cpu"), "offload"),
    "gloo-hizoo": ("llama", ("--algo", "hizoo", *_HIZOO, "--micro-batch-size", "1"), "gloo"),
}


def platform() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def _digest(t: torch.Tensor) -> str:
    data = t.detach().reshape(-1).contiguous().cpu().view(torch.uint8)  # reshape: a 0-d tensor has no byte view
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]


def _tensors(final: Path) -> dict[str, str]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(final.rglob("*.safetensors")):
        for name, t in sorted(load_file(f).items()):
            out[f"{f.relative_to(final)}:{name}"] = _digest(t)
    opt = torch.load(final / "zoft_optimizer.pt", map_location="cpu", weights_only=True)
    for index, state in sorted(opt["state"].items()):
        for key, value in sorted(state.items()):
            if isinstance(value, torch.Tensor):
                out[f"optimizer:{index}:{key}"] = _digest(value)
    return out


def fingerprint(run: Path) -> dict:
    """What a run wrote that the refactor must not change."""
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    trajectory = run / "trajectory.jsonl"
    report = json.loads((run / "eval.json").read_text())
    return {"tensors": _tensors(run / "final"),
            "losses": [r["loss"] for r in train],
            "projected_grads": [r.get("projected_grad") for r in train],
            "forwards": [r["forwards"] for r in train],
            "trajectory": trajectory.read_text().splitlines() if trajectory.is_file() else None,
            "eval": [report.get("eval_accuracy"), report.get("eval_loss")]}


def run(name: str, model_dirs: dict[str, Path], out: Path) -> dict:
    kind, extra, how = RUNS[name]
    args = ["train", "--model", str(model_dirs[kind]), *_COMMON, "--output-dir", str(out), *extra]
    if how == "gloo":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "zoft",
               *args]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        from typer.testing import CliRunner

        from zoft.cli import app

        patch = pytest.MonkeyPatch()
        if how == "offload":  # the CPU stands in for the GPU (tests/test_offload.py)
            import zoft.offload

            patch.setattr(zoft.offload, "require_cuda", lambda device: None)
        try:
            result = CliRunner().invoke(app, args)
        finally:
            patch.undo()
        assert result.exit_code == 0, result.output
    return fingerprint(out)


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_every_registered_algorithm_has_a_golden_run(golden):
    from zoft.algos import ALGORITHMS

    algos = {RUNS[name][1][RUNS[name][1].index("--algo") + 1] for name in golden["runs"]}
    assert set(ALGORITHMS) <= algos


@pytest.mark.parametrize("name", list(RUNS))
def test_a_golden_run_is_unchanged(name, golden, tiny_model_dirs, tmp_path):
    if name not in golden["runs"]:
        pytest.fail(f"{name} has no golden record; run `python tests/test_golden.py --write` once, on main")
    got, want = run(name, tiny_model_dirs, tmp_path / name), golden["runs"][name]
    if golden["platform"] == platform():
        assert got == want
        return
    # another platform: float kernels may round differently; the numbers must still agree closely
    for key in ("losses", "projected_grads", "forwards", "eval"):
        assert _close(got[key], want[key]), key
    assert got["tensors"].keys() == want["tensors"].keys()


def _write(only_missing: bool = False) -> None:
    """Record every run (`--write`), or only those the file does not hold yet (`--add`: a new algorithm's run,
    leaving the recorded ones as they are)."""
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_model, build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = build_tokenizer()
        dirs = {}
        for kind in ("opt", "llama", "llama64"):
            dirs[kind] = tmp / f"tiny-{kind}"
            build_model(kind, len(tokenizer)).save_pretrained(dirs[kind])
            tokenizer.save_pretrained(dirs[kind])
        runs = json.loads(GOLDEN.read_text())["runs"] if only_missing else {}
        if only_missing and json.loads(GOLDEN.read_text())["platform"] != platform():
            sys.exit("--add must run on the platform the file records; use --write to record all runs here")
        for name in [n for n in RUNS if n not in runs]:
            runs[name] = run(name, dirs, tmp / name)
            print(name, runs[name]["losses"], flush=True)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"platform": platform(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if sys.argv[1:] not in (["--write"], ["--add"]):
        sys.exit(__doc__)
    _write(only_missing=sys.argv[1:] == ["--add"])
