"""Divergence guards, crash-safe checkpoints, disk-full saves, best-checkpoint tracking and hostile model dirs."""

import errno
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import zoft.algos.mezo
import zoft.objectives
import zoft.train
from zoft.cli import app

runner = CliRunner()
CURRENT = {"step": 0}  # the step being taken, set by `_step_spy`, read by `nan_at`


def args(model_dir, out, *extra):
    return ["train", "--model", str(model_dir), "--data-dir", "builtin", "--num-train", "32", "--num-dev", "8",
            "--num-eval", "8", "--batch-size", "4", "--lr", "1e-3", "--eps", "1e-2", "--output-dir", str(out),
            "--log-every", "1", "--device", "cpu", "--steps", "8", "--eval-every", "0", "--save-every", "2", *extra]


@pytest.fixture
def nan_at(monkeypatch):
    """Make the minibatch loss NaN on the given (1-based) steps, counting steps by the optimizer's counter."""
    steps: set[int] = set()
    real = zoft.objectives.Objective.loss

    def loss(self, model, batches):
        value = real(self, model, batches)
        return value * float("nan") if CURRENT["step"] in steps else value

    monkeypatch.setattr(zoft.objectives.Objective, "loss", loss)
    return steps


def _step_spy(monkeypatch):
    """Record the trainable weights after each step and expose the current step to `nan_at`."""
    snapshots = {}
    real_step = zoft.algos.mezo.MeZO.step

    def step(self, closure=None):
        CURRENT["step"] = self.t + 1
        try:
            return real_step(self, closure)
        finally:
            snapshots[CURRENT["step"]] = [p.detach().clone() for p in self.tensors]

    monkeypatch.setattr(zoft.algos.mezo.MeZO, "step", step)
    return snapshots


def test_non_finite_steps_are_skipped_and_logged(tiny_model_dirs, tmp_path, monkeypatch, nan_at):
    snapshots = _step_spy(monkeypatch)
    nan_at.update({3, 4})  # two in a row: below --max-bad-steps 3, the run goes on
    out = tmp_path / "run"
    result = runner.invoke(app, args(tiny_model_dirs["llama"], out))
    assert result.exit_code == 0, result.output
    bad = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"bad_step"' in x]
    assert [b["step"] for b in bad] == [3, 4] and "loss became nan" in bad[0]["reason"]
    # a skipped step applies no update: +εz, −2εz, +εz leave each weight within fp32 rounding of where it was,
    # while a real step (lr 1e-3) moves them by orders of magnitude more
    def moved(before, after):
        return max(float((a - b).abs().max()) for a, b in zip(before, after))

    assert moved(snapshots[2], snapshots[3]) < 1e-6 and moved(snapshots[3], snapshots[4]) < 1e-6
    assert moved(snapshots[4], snapshots[5]) > 1e-4


def test_divergence_stops_with_the_cause_and_keeps_the_last_good_checkpoint(tiny_model_dirs, tmp_path, monkeypatch,
                                                                             nan_at):
    _step_spy(monkeypatch)
    nan_at.update({3, 4, 5})
    out = tmp_path / "run"
    result = runner.invoke(app, args(tiny_model_dirs["llama"], out))
    assert result.exit_code == 3, result.output
    text = " ".join(result.output.split())
    assert "training diverged" in text and "lower --lr" in text and "checkpoint-4" in text
    # checkpoint-4 holds step 2's weights: steps 3 and 4 were skipped, and nothing after step 5 was written
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / "final").exists()
    fp16 = runner.invoke(app, args(tiny_model_dirs["llama"], tmp_path / "fp16", "--dtype", "float16"))
    if fp16.exit_code == 3:  # fp16 on this CPU may or may not overflow by itself; injected NaNs always stop it
        assert "--dtype bfloat16" in " ".join(fp16.output.split())


def test_float16_overflow_names_bfloat16(tiny_model_dirs, tmp_path):
    # a learning rate this large overflows fp16 weights within a few steps: the real failure, not an injection
    result = runner.invoke(app, args(tiny_model_dirs["llama"], tmp_path / "run", "--dtype", "float16", "--lr",
                                     "1e4", "--eps", "1", "--steps", "30"))
    assert result.exit_code == 3, result.output
    text = " ".join(result.output.split())
    assert "float16 overflow" in text and "--dtype bfloat16" in text


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny_model_dirs, tmp_path, monkeypatch):
    import zoft.checkpoint

    calls = {"n": 0}
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # checkpoint-2 saved, checkpoint-4 hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(zoft.checkpoint.torch, "save", full_disk)
    out = tmp_path / "run"
    result = runner.invoke(app, args(tiny_model_dirs["llama"], out))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "no space left on the device" in text and "intact" in text and "--resume" in text
    assert (out / "checkpoint-2" / "zoft_state.json").is_file() and not (out / "checkpoint-4").exists()
    assert not list(out.glob(".*.tmp"))
    load_file(out / "checkpoint-2" / "model.safetensors")  # loads


def test_resume_skips_an_incomplete_checkpoint_and_restores_a_half_replaced_best(tiny_model_dirs, tmp_path,
                                                                                  caplog):
    model_dir = tiny_model_dirs["llama"]
    ref = tmp_path / "ref"
    assert runner.invoke(app, args(model_dir, ref, "--keep-last", "0")).exit_code == 0
    out = tmp_path / "run"
    assert runner.invoke(app, args(model_dir, out, "--steps", "6", "--keep-last", "0")).exit_code == 0
    # a crash while checkpoint-4 was written (file shorter than its manifest), and while best/ was replaced
    weights = out / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    os.replace(out / "best", out / ".best.old")
    (out / ".final.tmp").mkdir()
    (out / "final").rename(out / "final-gone")
    result = runner.invoke(app, args(model_dir, out, "--resume", "--keep-last", "0"))
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and "checkpoint-2 at step 2" in result.output
    assert (out / "best" / "zoft_state.json").is_file() and not (out / ".best.old").exists()
    assert not (out / ".final.tmp").exists()
    a, b = load_file(ref / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_best_checkpoint_follows_the_lowest_dev_loss(tiny_model_dirs, tmp_path, monkeypatch):
    losses = iter([0.9, 1.0, 0.95, 0.7, 0.5, 0.6])  # dev 0, eval 0, dev 2, 4, 6, 8 (then the final eval)
    real = zoft.train.evaluate

    def fake(*a, **k):
        result = real(*a, **k)
        result["loss"] = next(losses, 0.6)
        return result

    monkeypatch.setattr(zoft.train, "evaluate", fake)
    out = tmp_path / "run"
    result = runner.invoke(app, args(tiny_model_dirs["llama"], out, "--eval-every", "2"))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_step"] == 6 and summary["best_dev_loss"] == 0.5
    assert json.loads((out / "best" / "zoft_state.json").read_text())["step"] == 6


def test_model_dir_without_weights_and_remote_code(tiny_model_dirs, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((tiny_model_dirs["llama"] / "config.json").read_text())
    result = runner.invoke(app, args(bare, tmp_path / "o1"))
    assert result.exit_code == 2 and "no weights" in result.output and not (tmp_path / "o1").exists()
    remote = tmp_path / "remote"
    remote.mkdir()
    for f in tiny_model_dirs["llama"].iterdir():
        (remote / f.name).write_bytes(f.read_bytes())
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "remote-code-ran"
    (remote / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    result = runner.invoke(app, args(remote, tmp_path / "o2", "--steps", "1"))
    assert result.exit_code == 0, result.output  # loaded with the built-in Llama classes
    assert not marker.exists()  # the model's own code never ran
    runner.invoke(app, args(remote, tmp_path / "o3", "--steps", "1", "--trust-remote-code"))
    assert marker.exists()  # only when asked for


def test_a_tokenizer_without_pad_token_is_handled(tiny_model_dirs, tmp_path):
    from transformers import AutoTokenizer

    model_dir = tmp_path / "nopad"
    model_dir.mkdir()
    for f in tiny_model_dirs["llama"].iterdir():
        if not f.name.startswith("tokenizer") and f.name != "special_tokens_map.json":
            (model_dir / f.name).write_bytes(f.read_bytes())
    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    tok.pad_token = None
    tok.save_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir).pad_token_id is None
    result = runner.invoke(app, args(model_dir, tmp_path / "run", "--steps", "2"))
    assert result.exit_code == 0, result.output  # EOS pads, as MeZO does for OPT/Llama


def test_device_map_places_with_accelerate_and_trains_like_a_plain_load(tiny_model_dirs, tmp_path):
    # on a CPU-only machine accelerate puts every layer on the CPU: the same weights and trajectory as a plain
    # load; across GPUs the engine perturbs each tensor on its own device (tests/test_gpu.py, when one is lent)
    a, b = tmp_path / "plain", tmp_path / "mapped"
    assert runner.invoke(app, args(tiny_model_dirs["llama"], a, "--steps", "3")).exit_code == 0
    result = runner.invoke(app, args(tiny_model_dirs["llama"], b, "--steps", "3", "--device-map", "auto"))
    assert result.exit_code == 0, result.output
    x, y = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert all(torch.equal(x[k], y[k]) for k in x)
    bad = runner.invoke(app, args(tiny_model_dirs["llama"], tmp_path / "bad", "--device-map", "everywhere"))
    assert bad.exit_code == 2 and "--device-map everywhere" in bad.output
