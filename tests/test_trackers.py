"""`--report-to`: metrics.jsonl's records reach TensorBoard, W&B (offline) and MLflow (a local store), read back
here; a missing library or an unknown name is refused before any model loads; a failing tracker never stops a
run."""

import json

import pytest
from typer.testing import CliRunner

from zoft import trackers
from zoft.cli import app
from zoft.errors import ConfigError

runner = CliRunner()


def _train(model_dir, out, *extra):
    return runner.invoke(app, ["train", "--model", str(model_dir), "--data-dir", "builtin", "--num-train", "16",
                               "--num-dev", "8", "--num-eval", "8", "--batch-size", "4", "--steps", "4",
                               "--eval-every", "2", "--log-every", "1", "--lr", "1e-3", "--output-dir", str(out),
                               *extra])


def _train_records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]


def test_names_are_parsed_and_checked():
    assert trackers.parse("TensorBoard, mlflow") == ("tensorboard", "mlflow")
    assert trackers.parse("none") == trackers.parse("") == trackers.parse(None) == ()
    for bad in ("tensorbord", "wandb,wandb", "none,wandb"):
        with pytest.raises(ConfigError, match="--report-to"):
            trackers.parse(bad)
    assert trackers.scalars({"event": "end", "step": 3, "loss": 1, "ok": True, "name": "x", "sb": {"m": 2}}) == \
        {"loss": 1.0, "sb/m": 2.0}


def test_a_missing_library_is_refused_before_loading(tiny_model_dirs, tmp_path, monkeypatch):
    monkeypatch.setitem(trackers.TRACKERS, "wandb", ("zoft_no_such_module", "wandb"))
    result = _train(tiny_model_dirs["llama"], tmp_path / "r", "--report-to", "wandb")
    assert result.exit_code == 2
    assert "--report-to wandb: the wandb package is not installed; pip install 'zoft[wandb]'" in result.output
    assert not (tmp_path / "r").exists()


def test_tensorboard_event_files_hold_what_metrics_jsonl_holds(tiny_model_dirs, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    result = _train(tiny_model_dirs["llama"], out, "--report-to", "tensorboard")
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in _train_records(out)]
    tags = events.Tags()["scalars"]
    assert {"eval/dev_accuracy", "eval/dev_loss", "train/tokens_per_s", "end/eval_accuracy"} <= set(tags)
    assert "algo: mezo" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


def test_wandb_offline_and_mlflow_file_store_get_the_run(tiny_model_dirs, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "run"
    result = _train(tiny_model_dirs["llama"], out, "--report-to", "wandb,mlflow")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))  # W&B's offline run file
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    run_id = (out / ".mlflow_run_id").read_text()
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["loss"])) for r in _train_records(out)]
    assert client.get_run(run_id).data.params["algo"] == "mezo"


def test_a_failing_tracker_is_dropped_and_the_run_finishes(tiny_model_dirs, tmp_path, monkeypatch):
    class Broken:
        def __init__(self, *args):
            pass

        def log(self, *args):
            raise RuntimeError("server went away")

        def close(self):
            pass

    monkeypatch.setitem(trackers._CLASSES, "tensorboard", Broken)
    monkeypatch.setitem(trackers.TRACKERS, "tensorboard", ("json", "tensorboard"))  # "installed"
    out = tmp_path / "r"
    result = _train(tiny_model_dirs["llama"], out, "--report-to", "tensorboard")
    assert result.exit_code == 0, result.output
    assert "--report-to tensorboard: logging failed (RuntimeError: server went away)" in result.output
    assert (out / "final").is_dir() and len(_train_records(out)) == 4
