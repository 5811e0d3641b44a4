"""Runs you can trust: damaged inputs are refused or named, never trained on silently, and no run is lost.

Each test is a hostile case a user or a cluster can produce; each must end in exit 2 with one line naming the flag
or file, or in a resume that equals the uninterrupted run bitwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from zoft.cli import app

runner = CliRunner()


def args(model_dir, out, *extra):
    return ["train", "--model", str(model_dir), "--data-dir", "builtin", "--num-train", "32", "--num-dev", "8",
            "--num-eval", "8", "--batch-size", "4", "--lr", "1e-3", "--eps", "1e-2", "--output-dir", str(out),
            "--device", "cpu", "--steps", "6", "--eval-every", "0", "--save-every", "2", "--keep-last", "0", *extra]


def _same_weights(a_dir, b_dir) -> bool:
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _flip(path, offset=4096, n=64):
    """XOR n bytes in the middle of a file: same size, other content (what a bad disk or a stray write does)."""
    data = bytearray(path.read_bytes())
    offset = min(offset, len(data) - n)
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# -- checkpoint content ------------------------------------------------------------------------------------------
def test_a_damaged_checkpoint_of_the_same_size_is_skipped_and_named(tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert runner.invoke(app, args(model_dir, ref, "--steps", "8")).exit_code == 0
    assert runner.invoke(app, args(model_dir, out)).exit_code == 0
    _flip(out / "final" / "model.safetensors")      # final/ (step 6) damaged: same size
    _flip(out / "checkpoint-4" / "zoft_optimizer.pt", offset=600)
    result = runner.invoke(app, args(model_dir, out, "--steps", "8", "--resume"))
    assert result.exit_code == 0, result.output
    assert "checkpoint-2 at step 2" in result.output
    said = " ".join(result.output.split()).replace(os.sep, "/")
    assert "final: model.safetensors differs" in said and "checkpoint-4: zoft_optimizer.pt differs" in said
    assert _same_weights(ref / "final", out / "final")


def test_eval_refuses_a_damaged_best_checkpoint(tiny_model_dirs, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, args(tiny_model_dirs["llama"], out, "--steps", "2")).exit_code == 0
    _flip(out / "best" / "model.safetensors")
    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 2, result.output
    assert "best/model.safetensors is damaged" in " ".join(result.output.split()).replace(os.sep, "/")


# -- a full disk, for real ----------------------------------------------------------------------------------------
def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.mark.skipif(not hasattr(os, "geteuid") or not _can_mount(), reason="mounting a tmpfs needs root")
def test_a_real_full_disk_while_saving_exits_2_and_keeps_the_previous_checkpoint(tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    ref = tmp_path / "ref"
    assert runner.invoke(app, args(model_dir, ref, "--steps", "2")).exit_code == 0
    ckpt = sum(f.stat().st_size for f in (ref / "final").iterdir())
    fs = tmp_path / "fs"
    fs.mkdir()
    # room for one checkpoint and the logs, not for two checkpoints side by side
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(ckpt * 1.5) // 1024 + 64}k", "tmpfs",
                              str(fs)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = fs / "run"
        result = runner.invoke(app, args(model_dir, out, "--keep-last", "1"))
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "no space left on the device" in text and "intact" in text and "--resume" in text
        assert not list(out.glob(".*.tmp"))
        assert (out / "checkpoint-2" / "zoft_state.json").is_file()
        load_file(out / "checkpoint-2" / "model.safetensors")  # the previous checkpoint loads
    finally:
        subprocess.run(["umount", str(fs)], check=False)


# -- models that are not what they claim -------------------------------------------------------------------------
def test_weights_that_do_not_match_the_config_are_refused_naming_the_tensors(tiny_model_dirs, tmp_path):
    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dirs["llama"], broken)
    weights = load_file(broken / "model.safetensors")
    dropped = sorted(weights)[0]
    del weights[dropped]
    weights["extra.weight"] = torch.zeros(3)
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    result = runner.invoke(app, args(broken, tmp_path / "o", "--steps", "1"))
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "do not match its config.json" in said and dropped in said and "extra.weight" in said
    assert not (tmp_path / "o").exists()  # nothing written


def test_a_bidirectional_encoder_is_refused(tokenizer, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    bert = tmp_path / "bert"
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    BertForMaskedLM(config).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    result = runner.invoke(app, args(bert, tmp_path / "o", "--steps", "1"))
    assert result.exit_code == 2, result.output
    assert "not a causal language model" in " ".join(result.output.split())


def test_a_checkpoint_of_another_model_is_refused_on_resume(tiny_model_dirs, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, args(tiny_model_dirs["llama"], out, "--steps", "2")).exit_code == 0
    from zoft.checkpoint import CheckpointDamagedError, load_weights_into
    from conftest import build_model

    with pytest.raises(CheckpointDamagedError, match="of another model|do not match"):
        load_weights_into(build_model("opt", 500), out / "final")


# -- data that would train on the wrong text ---------------------------------------------------------------------
@pytest.mark.parametrize("row, needle", [
    ('{"sentence": null, "label": 1}', "line 4 of d.jsonl has a null 'sentence'"),
    ('{"label": 1}', "line 4 of d.jsonl has no 'sentence'"),
    ('{"sentence": "fine", "label": null}', "line 4 of d.jsonl has a null 'label'"),
])
def test_a_null_or_missing_text_is_refused_naming_the_line(row, needle, tmp_path):
    rows = ['{"sentence": "good", "label": 1}', '{"sentence": "bad", "label": 0}', "", row]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(rows) + "\n")
    result = runner.invoke(app, ["train", "--steps", "2", "--task", "custom", "--data-file", str(data), "--verbalizer",
                                 "0=bad,1=good", "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())


def test_a_null_generation_target_or_prompt_is_refused(tmp_path):
    data = tmp_path / "g.jsonl"
    data.write_text('{"prompt": "Q: 1+1?", "target": "2"}\n{"prompt": null, "target": "3"}\n')
    result = runner.invoke(app, ["train", "--steps", "2", "--task", "custom", "--data-file", str(data), "--prompt-field", "prompt",
                                 "--target-field", "target", "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2 and "line 2 of g.jsonl has a null 'prompt'" in " ".join(result.output.split())


# -- resume on what the run was trained with ---------------------------------------------------------------------
def _custom_args(data, out, *extra):
    return ["train", "--task", "custom", "--data-file", str(data), "--verbalizer", "0=bad,1=good", "--model",
            extra[0], "--num-train", "16", "--num-dev", "4", "--num-eval", "4", "--batch-size", "4", "--steps", "4",
            "--save-every", "2", "--eval-every", "0", "--device", "cpu", "--output-dir", str(out), *extra[1:]]


def test_resume_refuses_data_that_changed_and_steps_below_the_checkpoint(tiny_model_dirs, tmp_path):
    model = str(tiny_model_dirs["llama"])
    data = tmp_path / "d.jsonl"
    rows = [json.dumps({"sentence": f"review {i} {'good' if i % 2 else 'bad'}", "label": i % 2}) for i in range(40)]
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    assert runner.invoke(app, _custom_args(data, out, model)).exit_code == 0
    before = (out / "config.yaml").read_text()
    result = runner.invoke(app, _custom_args(data, out, model, "--resume", "--steps", "2"))
    assert result.exit_code == 2 and "is at step 4, beyond --steps 2" in " ".join(result.output.split())
    assert (out / "config.yaml").read_text() == before  # the run is untouched
    data.write_text("\n".join(r.replace("review", "Review") for r in rows) + "\n")  # edited in place
    result = runner.invoke(app, _custom_args(data, out, model, "--resume", "--steps", "6"))
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "examples read now" in said and "d.jsonl" in said and "differ" in said
    assert (out / "config.yaml").read_text() == before
    data.write_text("\n".join(rows) + "\n")  # the original data back: the resume goes on
    assert runner.invoke(app, _custom_args(data, out, model, "--resume", "--steps", "6")).exit_code == 0


@pytest.mark.parametrize("flag, value", [("--seed", str(2**70)), ("--seed", "-1"), ("--train-set-seed", str(2**32))])
def test_seeds_out_of_range_are_refused(flag, value, tmp_path):
    result = runner.invoke(app, ["train", "--steps", "2", flag, value, "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2 and flag in result.output


# -- replay ------------------------------------------------------------------------------------------------------
def test_replay_names_a_damaged_middle_line_and_skips_only_a_torn_last_one(tiny_model_dirs, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, args(tiny_model_dirs["llama"], out, "--steps", "4")).exit_code == 0
    path = out / "trajectory.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:7])  # torn last line: steps 1-3 replay
    result = runner.invoke(app, ["replay", "-", str(out), "-o", str(tmp_path / "r3")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r3" / "zoft_state.json").read_text())["step"] == 3
    lines[1] = lines[1][:-3] + "#}"  # a damaged middle line
    path.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["replay", "-", str(out), "-o", str(tmp_path / "r")])
    assert result.exit_code == 2 and "line 2 is not a whole line" in " ".join(result.output.split())
    assert not (tmp_path / "r").exists()
    result = runner.invoke(app, ["replay", "-", str(out), "--to-step", "1", "-o", str(tmp_path / "r1")])
    assert result.exit_code == 0, result.output  # the steps before the damage still replay


def test_replay_never_overwrites_the_run_it_reads(tiny_model_dirs, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, args(tiny_model_dirs["llama"], out, "--steps", "2")).exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    for target in (out, tmp_path):
        result = runner.invoke(app, ["replay", "-", str(out), "-o", str(target), "--overwrite"])
        assert result.exit_code == 2 and "would replace the run it replays" in " ".join(result.output.split())
    assert sorted(p.name for p in out.iterdir()) == before


# -- runs lost or overwritten ------------------------------------------------------------------------------------
def test_a_live_run_holds_its_dir_and_a_dead_ones_lock_is_taken_over(tiny_model_dirs, tmp_path):
    from zoft.runlock import RunLock, lock_path

    out = tmp_path / "run"
    with RunLock(out, what="zoft train"):  # another live writer of the same dir
        for cmd in (args(tiny_model_dirs["llama"], out, "--steps", "2"),
                    args(tiny_model_dirs["llama"], out, "--steps", "2", "--resume")):
            result = runner.invoke(app, cmd)
            said = " ".join(result.output.split())
            assert result.exit_code == 2 and "is in use by zoft train (pid" in said, result.output
        assert not out.exists()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: its lock is stale
    lock_path(out).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "what": "zoft train"}))
    result = runner.invoke(app, args(tiny_model_dirs["llama"], out, "--steps", "2"))
    assert result.exit_code == 0, result.output
    assert not lock_path(out).exists()  # released at the end of the run
    replayed = tmp_path / "replayed"
    with RunLock(replayed):
        result = runner.invoke(app, ["replay", "-", str(out), "-o", str(replayed)])
        assert result.exit_code == 2 and "is in use" in result.output


def test_a_closed_stdout_does_not_end_the_run(tiny_model_dirs, tmp_path):
    out = tmp_path / "run"
    cmd = " ".join(["python", "-m", "zoft", *args(tiny_model_dirs["llama"], out, "--steps", "12", "--log-every",
                                                   "1", "--eval-every", "4")])
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} 2>&1 | head -2"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2
    assert (out / "final" / "model.safetensors").is_file() and (out / "eval.json").is_file()
    steps = [json.loads(x)["t"] for x in (out / "trajectory.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.write_text("x"), "is a file"),
    (lambda p: (p.parent / "ro").mkdir() or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                                                           str(p.parent / "ro")]), "Read-only file system"),
])
def test_an_output_dir_that_cannot_be_written_is_refused_before_loading(make, needle, tmp_path):
    target = tmp_path / "o"
    mounted = make(target)
    if needle == "Read-only file system":
        if mounted.returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs here")
        target = tmp_path / "ro" / "run"
    try:
        result = runner.invoke(app, ["train", "--steps", "2", "--output-dir", str(target)])
        assert result.exit_code == 2 and needle in " ".join(result.output.split()), result.output
    finally:
        if needle == "Read-only file system":
            subprocess.run(["umount", str(tmp_path / "ro")], check=False)


# -- user errors are one line and exit 2, before anything loads ----------------------------------------------------
def _model_variant(tiny_model_dirs, tmp_path, name, change):
    path = tmp_path / name
    shutil.copytree(tiny_model_dirs["llama"], path)
    change(path)
    return path


def _truncate(path):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


def _no_tokenizer(path):
    for f in path.glob("tokenizer*"):
        f.unlink()


def _small_embedding(path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(path)


@pytest.mark.parametrize("change, needle", [
    (_truncate, "safetensors weights are damaged or truncated"),
    (_no_tokenizer, "cannot load its tokenizer"),
    (_small_embedding, "but the embedding only 50 rows"),
])
def test_broken_model_dirs_are_named(change, needle, tiny_model_dirs, tmp_path):
    model = _model_variant(tiny_model_dirs, tmp_path, change.__name__, change)
    result = runner.invoke(app, args(model, tmp_path / "o", "--steps", "1"))
    assert result.exit_code == 2 and needle in " ".join(result.output.split()), result.output
    assert not (tmp_path / "o").exists()


def test_an_encoder_decoder_is_refused(tokenizer, tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = tmp_path / "t5"
    T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, num_layers=1, num_heads=2,
                                        d_kv=16)).save_pretrained(t5)
    tokenizer.save_pretrained(t5)
    result = runner.invoke(app, args(t5, tmp_path / "o", "--steps", "1"))
    assert result.exit_code == 2 and "not a causal language model" in " ".join(result.output.split())


def test_recipes_and_run_configs_that_are_not_utf8_yaml_mappings(tiny_model_dirs, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"lr: 1e-3\n# caf\xe9\n")
    result = runner.invoke(app, ["train", "--steps", "2", str(recipe)])
    assert result.exit_code == 2 and "not UTF-8" in result.output
    out = tmp_path / "run"
    assert runner.invoke(app, args(tiny_model_dirs["llama"], out, "--steps", "2")).exit_code == 0
    (out / "config.yaml").write_text("- a\n- b\n")
    for cmd in (["eval", str(out)], ["replay", "-", str(out)]):  # a resume reads its checkpoint's copy
        result = runner.invoke(app, cmd)
        assert result.exit_code == 2 and "must be a mapping" in " ".join(result.output.split()), (cmd, result.output)


@pytest.mark.parametrize("cmd, needle", [
    (["train", "--max-length", "1", "--data-dir", "builtin"], "--max-length 1 cannot hold the"),
    (["train", "--task", "custom", "--data-file", "x.jsonl", "--verbalizer", "0=a,1=b", "--data-dir", "d"],
     "--data-dir d does not apply to --task custom"),
    (["estimate-memory", "{model}", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["estimate-memory", "{model}", "--mode", "lora", "--lora-r", "0"], "--lora-r must be >= 1"),
    (["estimate-memory", "{model}", "--virtual-tokens", "-3", "--mode", "prefix"], "--virtual-tokens"),
    (["eval", "{model}", "--task", "sst2", "--data-dir", "builtin", "--num-eval", "0"], "--num-eval must be > 0"),
    (["replay", "-", "{run}", "--to-step", "-1"], "--to-step -1"),
    (["sweep", "{recipe}", "--grid", "lr=1e-3,1e-3"], "maps two points to one run dir"),
])
def test_bad_numbers_and_flags_exit_2_naming_the_flag(cmd, needle, tiny_model_dirs, tmp_path):
    run = tmp_path / "run"
    if "{run}" in cmd:
        assert runner.invoke(app, args(tiny_model_dirs["llama"], run, "--steps", "2")).exit_code == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_model_dirs['llama']}\ndata_dir: builtin\nsteps: 1\n")
    cmd = [c.format(model=tiny_model_dirs["llama"], run=run, recipe=recipe) for c in cmd]
    if cmd[0] == "train":
        cmd += ["--model", str(tiny_model_dirs["llama"]), "--steps", "1", "--output-dir", str(tmp_path / "o")]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 2 and needle in " ".join(result.output.split()), result.output
    assert not (tmp_path / "o").exists()


def test_a_null_field_of_a_builtin_task_is_refused_naming_the_record(tmp_path):
    from zoft.tasks import TaskDataError, get_task, load_splits

    records = [{"premise": f"A {i}.", "hypothesis": "B.", "label": "entailment", "idx": i} for i in range(20)]
    records.append({"premise": None, "hypothesis": "B.", "label": "entailment", "idx": 20})
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (tmp_path / "val.jsonl").write_text(json.dumps(records[0]) + "\n")
    with pytest.raises(TaskDataError, match="train record 21: rte record has a null 'premise'"):
        load_splits(get_task("rte"), tmp_path, num_train=20, num_dev=1, num_eval=1)


def test_eval_names_its_positional_argument(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "no-such-run")])
    assert result.exit_code == 2 and result.output.startswith("error: MODEL ") and "--model" not in result.output
