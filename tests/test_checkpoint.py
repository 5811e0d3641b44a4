"""Checkpoint writes are atomic and listing only sees complete checkpoints."""

import torch

from zoft.algos import MeZO, trainable_parameters
from zoft.checkpoint import (OPTIMIZER_FILE, latest_checkpoint, list_checkpoints, load_optimizer_state,
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
