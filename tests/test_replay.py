"""Seed-trajectory checkpoints: `zoft replay` rebuilds the saved weights bitwise from base + trajectory."""

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import mode_run, trained_tensors
from zoft.algos import ALGORITHMS
from zoft.cli import app

runner = CliRunner()
#: flags that make a tiny run exercise an algorithm's state (others run with none); every replayable algorithm of
#: the registry is replayed below
OPTIONS = {"hizoo": ("--hessian-smooth", "0.01"), "hizoo-l": ("--hessian-smooth", "0.01"),
           "tezo-adam": ("--rank", "4"), "tezo": ("--rank", "4"), "tezo-m": ("--rank", "4"),
           "lozo": ("--lozo-interval", "2"), "lozo-m": ("--lozo-interval", "2"),
           "subzero": ("--subzero-rank", "2", "--subzero-interval", "2"), "fzoo": ("--fzoo-probes", "3")}
#: variants "algo+name" with their own flags: HiZOO with zoft's estimator keeps c̄, which replay must move too
VARIANTS = {"hizoo+centred": ("--hessian-smooth", "0.05", "--hessian-estimator", "centred", "--hessian-granularity",
                              "block", "--hessian-block", "16", "--hessian-warmup", "2")}
REPLAYABLE = [name for name, cls in ALGORITHMS.items() if cls.replayable] + list(VARIANTS)


def _train(model_dir, out, algo, *extra):
    args = ["train", "--model", str(model_dir), "--data-dir", "builtin", "--num-train", "32", "--num-dev", "8",
            "--num-eval", "8", "--batch-size", "4", "--lr", "1e-3", "--eps", "1e-2", "--output-dir", str(out),
            "--device", "cpu", "--steps", "6", "--eval-every", "0", "--save-every", "2", "--keep-last", "0",
            "--algo", algo.partition("+")[0], *OPTIONS.get(algo, VARIANTS.get(algo, ())), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def _equal(a_dir, b_dir):
    a, b = trained_tensors(a_dir), trained_tensors(b_dir)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("algo", REPLAYABLE)
def test_replay_equals_the_saved_checkpoints_bitwise(algo, tiny_model_dirs, tmp_path, request):
    mode_flags, mode_model = mode_run(algo, request)
    model_dir = mode_model or tiny_model_dirs["llama"]
    run = tmp_path / "run"
    _train(model_dir, run, algo, *mode_flags)
    lines = (run / "trajectory.jsonl").read_text().splitlines()
    assert [json.loads(x)["t"] for x in lines] == [1, 2, 3, 4, 5, 6]
    for step, saved in ((4, run / "checkpoint-4"), (6, run / "final")):
        out = tmp_path / f"replay-{step}"
        result = runner.invoke(app, ["replay", str(model_dir), str(run), "--to-step", str(step), "--output-dir",
                                     str(out)])
        assert result.exit_code == 0, result.output
        assert _equal(out, saved), f"{algo}: replay to step {step} differs from {saved.name}"


def test_replayed_checkpoint_resumes_like_the_run(tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    run = tmp_path / "run"
    _train(model_dir, run, "zo-adam")
    out = tmp_path / "at2"
    assert runner.invoke(app, ["replay", "-", str(run), "--to-step", "2", "-o", str(out)]).exit_code == 0
    # the replayed optimizer state (Adam moments) is the run's at step 2
    a = torch.load(out / "zoft_optimizer.pt", weights_only=True)
    b = torch.load(run / "checkpoint-2" / "zoft_optimizer.pt", weights_only=True)
    for index, st in b["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(a["state"][index][key], value)


def test_skipped_steps_replay_too(tiny_model_dirs, tmp_path, monkeypatch):
    import zoft.runner

    real = zoft.runner.StepRunner.step

    def nan_at_step_3(self, closure):
        if self.opt.t == 2:
            return real(self, lambda: torch.tensor(float("nan")))
        return real(self, closure)

    monkeypatch.setattr(zoft.runner.StepRunner, "step", nan_at_step_3)
    run = tmp_path / "run"
    _train(tiny_model_dirs["llama"], run, "mezo")
    assert '"skipped": true' in (run / "trajectory.jsonl").read_text()
    monkeypatch.undo()
    out = tmp_path / "r"
    assert runner.invoke(app, ["replay", "-", str(run), "-o", str(out)]).exit_code == 0
    assert _equal(out, run / "final")


def test_replay_refusals(tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    run = tmp_path / "run"
    _train(model_dir, run, "mezo")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    for args, needle in ((["--to-step", "7"], "trajectory of 6 steps"), (["-o", str(run)], "would replace the run"),
                         (["-o", str(tmp_path / "other")], "already exists")):
        result = runner.invoke(app, ["replay", "-", str(run), *args])
        assert result.exit_code == 2 and needle in result.output, result.output
    fo = tmp_path / "fo"
    _train(model_dir, fo, "fo-adam")
    result = runner.invoke(app, ["replay", "-", str(fo)])
    assert result.exit_code == 2 and "cannot be replayed" in result.output
    result = runner.invoke(app, ["replay", "-", str(tmp_path)])
    assert result.exit_code == 2 and "not a zoft run dir" in result.output
