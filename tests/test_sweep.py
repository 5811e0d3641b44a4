"""`zoft sweep`: grid parsing, printed commands, runs, resumption of a sweep, collection and bad input."""

import json
import shlex

import pytest
from typer.testing import CliRunner

from zoft.cli import app
from zoft.config import ConfigError
from zoft.sweep import parse_grid

runner = CliRunner()


@pytest.fixture
def recipe(tiny_model_dirs, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(f"# tiny\nmodel: {tiny_model_dirs['llama']}\ndata_dir: builtin\nnum_train: 32\nnum_dev: 8\n"
                    f"num_eval: 8\nbatch_size: 4\nsteps: 2\neval_every: 1\ndevice: cpu\n"
                    f"output_dir: {tmp_path / 'runs' / 'tiny'}\n")
    return path


def test_grid_values_are_typed_and_flags_accepted():
    grid = parse_grid(["lr=1e-6,1e-7", "hessian-smooth=1e-8", "stochastic_rounding=true,false"])
    assert grid["lr"] == [("1e-6", 1e-6), ("1e-7", 1e-7)]
    assert grid["hessian_smooth"] == [("1e-8", 1e-8)]
    assert [v for _, v in grid["stochastic_rounding"]] == [True, False]
    for bad, message in [("lr", "write KEY=V1,V2"), ("lrr=1", "did you mean 'lr'"), ("steps=ten", "must be int"),
                         ("output_dir=x", "set by the sweep"), ("lr=1e-6,", "empty value")]:
        with pytest.raises(ConfigError, match=message):
            parse_grid([bad])


def test_print_commands_is_one_runnable_line_per_point(recipe, tmp_path):
    result = runner.invoke(app, ["sweep", str(recipe), "--grid", "lr=1e-3,1e-2", "--grid", "seed=0,1", "--set",
                                 "steps=3", "--print-commands"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4
    argv = shlex.split(lines[1])
    assert argv[:3] == ["zoft", "train", str(recipe)]
    assert argv[argv.index("--lr") + 1] == "1e-3" and argv[argv.index("--seed") + 1] == "1"
    assert argv[argv.index("--steps") + 1] == "3"
    assert argv[-1] == str(tmp_path / "runs" / "tiny-sweep" / "lr=1e-3_seed=1")
    assert not (tmp_path / "runs").exists()  # printing runs nothing


def test_sweep_runs_keeps_finished_points_and_collects(recipe, tmp_path, monkeypatch):
    import zoft.train

    args = ["sweep", str(recipe), "--grid", "lr=1e-3,1e-2", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    base = tmp_path / "runs" / "tiny-sweep"
    data = json.loads((base / "results.json").read_text())
    assert [r["run"] for r in data["runs"]] == ["lr=1e-3", "lr=1e-2"]
    assert sum(r["best"] for r in data["runs"]) == 1
    best = data["best"]
    assert best["dev"] == max(r["dev"] for r in data["runs"])
    summary = json.loads((base / best["run"] / "summary.json").read_text())
    assert best["eval"] == summary["eval"]["eval_accuracy"]
    assert "(best dev)" in (base / "results.md").read_text()

    calls = []
    monkeypatch.setattr(zoft.train, "train", lambda cfg, reporter=None: calls.append(cfg))
    again = runner.invoke(app, args)  # both points finished: nothing reruns, the table is the same
    assert again.exit_code == 0 and calls == []
    assert json.loads(again.stdout)["best"] == best
    collected = runner.invoke(app, ["sweep", str(recipe), "--grid", "lr=1e-3,1e-2", "--collect", "--json"])
    assert json.loads(collected.stdout)["best"] == best


@pytest.mark.parametrize("extra,message", [
    ([], "Missing option '--grid'"),
    (["--grid", "lr=0"], "--lr must be > 0"),
    (["--grid", "lr=1e-3", "--set", "lr=1e-2"], "both give lr"),
    (["--grid", "algo=mezo,nope"], "--algo nope: unknown algorithm"),
    (["--grid", "lr=1e-3", "--collect"], "no finished runs"),
])
def test_bad_sweeps_exit_2_before_running(recipe, tmp_path, extra, message):
    result = runner.invoke(app, ["sweep", str(recipe), *extra])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "runs" / "tiny-sweep" / "lr=1e-3").exists()
