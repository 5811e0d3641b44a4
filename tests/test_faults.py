"""Runs that survive: SIGKILL at seeded random points (inside a step, inside a checkpoint write, inside an
evaluation), then `--resume`, must end bitwise equal to an uninterrupted run; SIGTERM saves and exits 143.

The default suite runs one trial per algorithm (a different phase each); `pytest -m slow tests/test_faults.py`
runs 10 seeded trials per algorithm and prints the work lost per kill (in steps).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ALGOS = {"mezo": (), "hizoo": ("--hessian-smooth", "0.01"), "tezo-adam": ("--rank", "4")}
FORWARDS = {"mezo": 2, "hizoo": 3, "tezo-adam": 2}
STEPS = 10


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}


def _args(model_dir: Path, out: Path, algo: str, *extra: str) -> list[str]:
    return ["train", "--model", str(model_dir), "--data-dir", "builtin", "--num-train", "32", "--num-dev", "8",
            "--num-eval", "8", "--batch-size", "4", "--steps", str(STEPS), "--eval-every", "4", "--save-every", "2",
            "--keep-last", "2", "--log-every", "1", "--lr", "1e-3", "--eps", "1e-2", "--device", "cpu", "--algo",
            algo, *ALGOS[algo], "--output-dir", str(out), *extra]


def _zoft(args: list[str], fault: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "zoft", *args] if fault is None else \
        [sys.executable, str(ROOT / "tests" / "fault_child.py"), fault[0], str(fault[1]), "--", *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def references(tiny_model_dirs, tmp_path_factory):
    """Uninterrupted runs, one per algorithm (computed on first use)."""
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def get(algo: str) -> dict[str, torch.Tensor]:
        if algo not in cache:
            out = tmp_path_factory.mktemp(f"ref-{algo}") / "run"
            done = _zoft(_args(tiny_model_dirs["llama"], out, algo))
            assert done.returncode == 0, done.stderr
            cache[algo] = _weights(out)
        return cache[algo]

    return get


def _trial(algo: str, phase: str, n: int, model_dir: Path, out: Path, reference) -> int | None:
    """Kill, resume, compare; returns the steps of work the kill cost (done before it − resumed from), or None
    when a timed kill came after the run had finished."""
    killed = _zoft(_args(model_dir, out, algo), fault=(phase, n))
    if phase == "time" and killed.returncode == 0:
        return None
    assert killed.returncode == -signal.SIGKILL, (phase, n, killed.returncode, killed.stderr[-2000:])
    metrics = out / "metrics.jsonl"
    done = max((json.loads(x)["step"] for x in metrics.read_text().splitlines() if '"train"' in x), default=0) \
        if metrics.is_file() else 0
    resumed = _zoft(_args(model_dir, out, algo, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    match = re.search(r"resumed from \S+ at step (\d+)", resumed.stderr)
    start = int(match.group(1)) if match else 0
    final = _weights(out)
    ref = reference(algo)
    assert final.keys() == ref.keys()
    for name in ref:
        assert torch.equal(final[name], ref[name]), f"{algo} {phase}:{n}: {name} differs after resume"
    assert not list(out.glob(".*.tmp")), "a temp checkpoint dir was left behind"
    return max(done - start, 0)


# one kill point in the default suite; the others (a save, an evaluation) behind -m slow: each costs ~25 s
@pytest.mark.parametrize("algo,phase,n", [("mezo", "step", 9),
                                          pytest.param("hizoo", "save", 3, marks=pytest.mark.slow),
                                          pytest.param("tezo-adam", "eval", 3, marks=pytest.mark.slow)])
def test_sigkill_then_resume_is_bitwise_exact(algo, phase, n, tiny_model_dirs, tmp_path, references):
    _trial(algo, phase, n, tiny_model_dirs["llama"], tmp_path / "run", references)


@pytest.mark.slow
@pytest.mark.parametrize("algo", list(ALGOS))
def test_ten_seeded_random_kills_per_algorithm(algo, tiny_model_dirs, tmp_path, references):
    rng = random.Random(f"faults-{algo}")
    lost = []
    for trial in range(10):
        phase = rng.choice(["step", "save", "eval", "time"])
        n = {"step": rng.randint(1, STEPS * FORWARDS[algo]), "save": rng.randint(1, 6),
             "eval": rng.randint(1, 4), "time": rng.randint(3500, 6500)}[phase]
        cost = _trial(algo, phase, n, tiny_model_dirs["llama"], tmp_path / f"t{trial}", references)
        if cost is not None:
            lost.append((phase, n, cost))
    print(f"\n{algo}: {len(lost)} kills, steps of work lost per kill: {[x[2] for x in lost]} "
          f"(phases {[f'{p}:{n}' for p, n, _ in lost]})")
    assert len(lost) >= 8


def _long_run(model_dir: Path, out: Path, ready) -> tuple[subprocess.Popen, list[str]]:
    """A 400-step MeZO run in a child process, returned once `ready(out)` holds (or after 120 s)."""
    args = _args(model_dir, out, "mezo")
    args[args.index("--steps") + 1] = "400"
    proc = subprocess.Popen([sys.executable, "-m", "zoft", *args], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ready(out):
        time.sleep(0.1)
    return proc, args


def test_sigterm_saves_and_exits_143_with_a_resume_hint(tiny_model_dirs, tmp_path):
    out = tmp_path / "run"
    proc, _ = _long_run(tiny_model_dirs["llama"], out, lambda o: (o / "metrics.jsonl").is_file()
                        and '"train"' in (o / "metrics.jsonl").read_text())
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "--resume" in stderr
    saved = sorted(out.glob("checkpoint-*"))
    assert saved, "no checkpoint saved on SIGTERM"
    state = json.loads((saved[-1] / "zoft_state.json").read_text())
    assert 0 < state["step"] < 400


def test_a_second_sigint_exits_at_once_and_leaves_only_complete_checkpoints(tiny_model_dirs, tmp_path):
    from zoft.checkpoint import is_complete

    out = tmp_path / "run"
    proc, args = _long_run(tiny_model_dirs["llama"], out, lambda o: bool(list(o.glob("checkpoint-*"))))
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    for ckpt in out.glob("checkpoint-*"):
        assert is_complete(ckpt), ckpt
    resumed = _zoft([*args[:args.index("--steps") + 1], "8", *args[args.index("--steps") + 2:], "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
