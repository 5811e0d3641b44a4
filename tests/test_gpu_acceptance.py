"""bench/gpu_acceptance.py in its smoke mode: every check of the GPU run executes on the CPU at tiny shapes (the
Philox kernel under Triton's interpreter), so the script is known to work before a GPU ever runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_smoke_run_passes_every_check(tmp_path):
    pytest.importorskip("triton")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_acceptance.py"), "--smoke", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_acceptance_smoke.json").read_text())
    checks = {row["check"] for row in report["rows"]}
    assert checks == {"kernel", "step", "quantized", "offload", "train"}
    assert all(row["ok"] for row in report["rows"])
    steps = {row["algo"] for row in report["rows"] if row["check"] == "step"}
    assert {"mezo", "hizoo", "zo-adam", "tezo-adam", "lozo", "subzero", "fzoo", "sparse-mezo", "published MeZO"} <= steps
    assert {(r["noise"], r["dtype"]) for r in report["rows"] if r["check"] == "kernel"} >= {("philox", "bfloat16")}
    assert "| published MeZO |" in (tmp_path / "gpu_acceptance_smoke.md").read_text()
