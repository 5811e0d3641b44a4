"""Checkpoint writes are atomic and listing only sees complete checkpoints."""

import os

import torch

from zoft.algos import MeZO, trainable_parameters
from zoft.checkpoint import (OPTIMIZER_FILE, check_intact, latest_checkpoint, list_checkpoints, load_optimizer_state,
                             load_weights_into, prune_checkpoints, read_state, save_checkpoint)
from conftest import build_model


def test_save_replace_reload_and_prune(tmp_path, tokenizer):
    model = build_model("llama", len(tokenizer))
    opt = MeZO(trainable_parameters(model), lr=1e-3)
    for step in (2, 4, 6):
        save_checkpoint(tmp_path / f"checkpoint-{step}", model, tokenizer, opt, {"step": step}, "steps: 6\n")
    save_checkpoint(tmp_path / "checkpoint-6", model, tokenizer, opt, {"step": 6}, "steps: 6\n")  # replace
    (tmp_path / "checkpoint-8").mkdir()  # an incomplete dir (no state file) is never picked for resume
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 6]
    assert latest_checkpoint(tmp_path).name == "checkpoint-6"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dirs left behind
    assert read_state(tmp_path / "checkpoint-6") == {"step": 6}
    assert load_optimizer_state(tmp_path / "checkpoint-6")["zo"]["algo"] == "MeZO"
    assert (tmp_path / "checkpoint-6" / OPTIMIZER_FILE).is_file()
    prune_checkpoints(tmp_path, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]

    other = build_model("llama", len(tokenizer))
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    load_weights_into(other, tmp_path / "checkpoint-6")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_share_files_links_identical_checkpoint_files_and_leaves_the_others(tokenizer, tmp_path):
    from zoft.checkpoint import share_files

    model = build_model("llama", len(tokenizer))
    save_checkpoint(tmp_path / "final", model, tokenizer, None, {"step": 4})
    save_checkpoint(tmp_path / "best", model, tokenizer, None, {"step": 4})
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(tmp_path / "other", model, tokenizer, None, {"step": 2})
    weights = "model.safetensors"
    assert share_files(tmp_path / "final", tmp_path / "best") >= (tmp_path / "final" / weights).stat().st_size
    assert os.path.samefile(tmp_path / "final" / weights, tmp_path / "best" / weights)
    assert share_files(tmp_path / "final", tmp_path / "other") < (tmp_path / "final" / weights).stat().st_size
    assert not os.path.samefile(tmp_path / "final" / weights, tmp_path / "other" / weights)
    check_intact(tmp_path / "best")  # the manifest still holds for the linked files


def test_a_run_without_dev_evaluation_keeps_one_copy_of_its_weights(tiny_model_dirs, tmp_path):
    from typer.testing import CliRunner

    from zoft.cli import app

    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", str(tiny_model_dirs["llama"]), "--data-dir", "builtin",
                                 "--num-train", "16", "--num-dev", "8", "--num-eval", "8", "--batch-size", "4",
                                 "--steps", "4", "--eval-every", "0", "--output-dir", str(run)])
    assert result.exit_code == 0, result.output
    best, final = run / "best" / "model.safetensors", run / "final" / "model.safetensors"
    assert os.path.samefile(best, final) and os.stat(best).st_nlink >= 2  # best/ is final/: one copy on disk
    result = runner.invoke(app, ["eval", str(run / "best"), "--num-eval", "8", "--data-dir", "builtin", "--json"])
    assert result.exit_code == 0, result.output  # still a model dir that loads
