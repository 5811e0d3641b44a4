"""Data-parallel ZO with torch.distributed (gloo, 2 CPU processes): equal to one process, identical ranks, a lost
rank fails the job with a message, and `--resume` continues it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def _args(model_dir, out, *extra):
    return ["train", "--model", str(model_dir), "--data-dir", "builtin", "--num-train", "64", "--num-dev", "8",
            "--num-eval", "8", "--batch-size", "16", "--micro-batch-size", "4", "--steps", "6", "--eval-every", "3",
            "--save-every", "2", "--lr", "1e-3", "--eps", "1e-2", "--device", "cpu", "--log-every", "1",
            "--output-dir", str(out), *extra]


def _torchrun(entry, *args, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *entry, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("algo", ["mezo", pytest.param("hizoo", marks=pytest.mark.slow)])  # ~25 s each
def test_two_ranks_equal_one_process_and_each_other(algo, tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    extra = ("--algo", algo, *(("--hessian-smooth", "0.01") if algo == "hizoo" else ()))
    one = subprocess.run([sys.executable, "-m", "zoft", *_args(model_dir, tmp_path / "one", *extra)], cwd=ROOT,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(["-m", "zoft"], *_args(model_dir, tmp_path / "two", *extra, "--json"))
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_identical"] is True
    start = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["comm_bytes_per_step"] == 16 * (3 if algo == "hizoo" else 2) + 8
    a, b = load_file(tmp_path / "one" / "final" / "model.safetensors"), \
        load_file(tmp_path / "two" / "final" / "model.safetensors")
    for name in a:  # the global loss sums the shards in another order: equal to float rounding
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    losses = lambda run: [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()  # noqa
                          if '"train"' in x]
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), abs=1e-6)


def test_a_lost_rank_fails_the_job_cleanly_and_resume_continues(tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    out = tmp_path / "run"
    # rank 1 is SIGKILLed at its 7th forward (inside step 4); rank 0 must fail with a message, not hang
    killed = _torchrun([str(ROOT / "tests" / "fault_child.py"), "step", "7", "--"], *_args(model_dir, out),
                       env=_env(ZOFT_FAULT_RANK="1"))
    assert killed.returncode != 0
    assert "another rank of the job stopped" in killed.stderr or "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert (out / "checkpoint-2" / "zoft_state.json").is_file()
    resumed = _torchrun(["-m", "zoft"], *_args(model_dir, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["ranks_identical"] is True


def test_nproc_launches_torchrun_and_fo_adam_is_refused(tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["opt"]
    run = subprocess.run([sys.executable, "-m", "zoft", *_args(model_dir, tmp_path / "run", "--steps", "2",
                                                                 "--nproc", "2")],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 2
    fo = _torchrun(["-m", "zoft"], *_args(model_dir, tmp_path / "fo", "--algo", "fo-adam", "--steps", "2"))
    assert fo.returncode != 0 and "data-parallel zoft all-reduces losses, not gradients" in fo.stderr
