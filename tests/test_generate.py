"""Generation tasks end to end (tiny models): greedy decoding, token F1 in eval.json and predictions.jsonl, the LM
objective of COPA-style tasks, the non-differentiable objectives, and their bad-flag cases."""

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import build_model
from zoft.cli import app
from zoft.generate import greedy_generate
from zoft.scoring import collate, encode_examples, lm_loss, pad_id
from zoft.tasks import TASKS, Example, GenExample
from zoft.tasks.metrics import best_f1

runner = CliRunner()


class _Hidden(torch.nn.Module):
    """The same model behind a plain Module, so decoding takes the no-cache path of zoft's wrappers."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids=None, logits_to_keep=0, use_cache=False):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          logits_to_keep=logits_to_keep, use_cache=False)


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_greedy_decoding_with_and_without_cache_agree(kind, tokenizer):
    model = build_model(kind, len(tokenizer))
    prompts = [tokenizer("It was great").input_ids, tokenizer("Does this mean that it is true? Yes").input_ids]
    with_cache = greedy_generate(model, tokenizer, prompts, pad_id(tokenizer), max_new_tokens=12)
    without = greedy_generate(_Hidden(model), tokenizer, prompts, pad_id(tokenizer), max_new_tokens=12)
    assert with_cache == without
    assert all("\n" not in text for text in with_cache)
    # left padding changes nothing: each prompt alone decodes the same
    alone = [greedy_generate(model, tokenizer, [p], pad_id(tokenizer), max_new_tokens=12)[0] for p in prompts]
    assert alone == with_cache


def test_lm_loss_is_token_cross_entropy_on_the_gold_continuation(tokenizer):
    model = build_model("llama", len(tokenizer))
    examples = [Example("It was", (" great", " terrible"), 1), Example("Yes or No?\n", ("No", "Yes"), 0)]
    enc = encode_examples(tokenizer, examples)
    with torch.no_grad():
        got = float(lm_loss(model, [collate([e.gold_only() for e in enc], pad_id(tokenizer))]))
        nll, count = 0.0, 0
        for ex in examples:  # unpadded, one at a time
            prompt = tokenizer(ex.prompt).input_ids
            full = tokenizer(ex.prompt + ex.candidates[ex.label]).input_ids
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0, :-1].float(), -1)
            for pos in range(len(prompt), len(full)):
                nll -= float(logp[pos - 1, full[pos]])
                count += 1
    assert got == pytest.approx(nll / count, rel=1e-5)


def _squad_dir(tmp_path):
    tmp_path.mkdir()
    rows = [{"context": f"The colour of item {i} is {c}.", "question": f"What colour is item {i}?", "answer": c}
            for i, c in enumerate(["red", "blue", "green", "great", "terrible"] * 6)]
    (tmp_path / "train_subset_4330.json").write_text(json.dumps(rows))
    dev = {"version": "1.1", "data": [{"title": "Colours", "paragraphs": [
        {"context": r["context"], "qas": [{"question": r["question"], "id": str(i),
                                           "answers": [{"text": r["answer"], "answer_start": 0}]}]}
        for i, r in enumerate(rows[:6])]}]}
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(dev))
    return tmp_path


def _args(model_dir, out, *extra):
    return ["train", "--model", str(model_dir), "--num-train", "16", "--num-dev", "4", "--num-eval", "6",
            "--batch-size", "4", "--lr", "1e-3", "--eps", "1e-2", "--output-dir", str(out), "--device", "cpu",
            "--steps", "2", "--eval-every", "1", "--log-every", "1", *extra]


def test_squad_run_writes_predictions_and_f1(tiny_model_dirs, tmp_path):
    data = _squad_dir(tmp_path / "squad")
    out = tmp_path / "run"
    result = runner.invoke(app, _args(tiny_model_dirs["llama"], out, "--task", "squad", "--data-dir", str(data),
                                      "--json"))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["metric"] == "f1" and report["num_eval"] == 6
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and all("\n" not in p["prediction"] for p in preds)
    assert {tuple(p["answers"]) for p in preds} <= {("red",), ("blue",), ("green",), ("great",), ("terrible",)}
    assert report["eval_f1"] == pytest.approx(sum(best_f1(p["prediction"], p["answers"]) for p in preds) / 6)
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"dev_f1"' in x]
    assert [r["step"] for r in evals] == [0, 1, 2]
    assert all(r["dev_loss"] > 0 for r in evals)  # teacher-forced CE on the gold answer selects best/


def test_f1_objective_trains_on_minus_batch_f1(tiny_model_dirs, tmp_path):
    data = _squad_dir(tmp_path / "squad")
    out = tmp_path / "run"
    result = runner.invoke(app, _args(tiny_model_dirs["opt"], out, "--task", "squad", "--data-dir", str(data),
                                      "--objective", "f1"))
    assert result.exit_code == 0, result.output
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert losses and all(-1.0 <= v <= 0.0 for v in losses)


def test_accuracy_objective(tiny_model_dirs, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, _args(tiny_model_dirs["llama"], out, "--data-dir", "builtin", "--objective",
                                      "accuracy"))
    assert result.exit_code == 0, result.output
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert all(-1.0 <= v <= 0.0 for v in losses)


def test_custom_generation_task(tiny_model_dirs, tmp_path):
    rows = [{"question": f"Capital number {i}?", "answer": f"city {i % 3}"} for i in range(30)]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    result = runner.invoke(app, _args(tiny_model_dirs["opt"], out, "--task", "custom", "--data-file", str(data),
                                      "--prompt-field", "question", "--target-field", "answer"))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "eval.json").read_text())["metric"] == "f1"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6


@pytest.mark.parametrize("extra,message", [
    (["--objective", "f1"], "--objective f1 applies to generation tasks"),
    (["--objective", "bleu"], "--objective bleu: choose ce, accuracy, f1"),
    (["--task", "squad", "--objective", "accuracy"], "use f1"),
    (["--target-field", "answer"], "apply to --task custom only"),
    (["--task", "custom", "--data-file", "x.jsonl", "--prompt-field", "q"], "--prompt-field needs --target-field"),
    (["--task", "custom", "--data-file", "x.jsonl", "--target-field", "a", "--verbalizer", "0=a,1=b"],
     "contradict"),
])
def test_bad_objective_and_generation_flags_exit_2(tiny_model_dirs, tmp_path, extra, message):
    result = runner.invoke(app, _args(tiny_model_dirs["opt"], tmp_path / "run", *extra))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_custom_generation_missing_column_lists_the_columns(tiny_model_dirs, tmp_path):
    data = tmp_path / "qa.csv"
    data.write_text("question,reply\nWhat?,this\n")
    result = runner.invoke(app, _args(tiny_model_dirs["opt"], tmp_path / "run", "--task", "custom", "--data-file",
                                      str(data), "--prompt-field", "question", "--target-field", "answer"))
    assert result.exit_code == 2
    assert "available columns: question, reply" in " ".join(result.output.split())


def test_per_label_with_a_generation_task_exits_2(tiny_model_dirs, tmp_path):
    data = _squad_dir(tmp_path / "squad")
    result = runner.invoke(app, _args(tiny_model_dirs["opt"], tmp_path / "run", "--task", "squad", "--data-dir",
                                      str(data), "--per-label"))
    assert result.exit_code == 2 and "has no labels" in " ".join(result.output.split())


def test_copa_trains_with_the_lm_loss(tiny_model_dirs, tmp_path):
    rows = [{"premise": f"The man number {i} fell.", "choice1": "He slipped.", "choice2": "It was great.",
             "question": "cause" if i % 2 else "effect", "label": i % 2, "idx": i} for i in range(40)]
    folder = tmp_path / "copa"
    folder.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    result = runner.invoke(app, _args(tiny_model_dirs["llama"], out, "--task", "copa", "--data-dir", str(folder)))
    assert result.exit_code == 0, result.output
    assert TASKS["copa"].objective == "lm"
    assert json.loads((out / "eval.json").read_text())["metric"] == "accuracy"


def test_eval_icl_puts_k_demonstrations_before_each_prompt(tiny_model_dirs, tmp_path, monkeypatch):
    import zoft.evaluate
    from zoft.evaluate import icl_context

    seen = {}
    real = zoft.scoring.encode_examples

    def spy(tokenizer, examples, max_length=2048, context=""):
        seen["context"] = context
        return real(tokenizer, examples, max_length, context)

    monkeypatch.setattr(zoft.scoring, "encode_examples", spy)
    result = runner.invoke(app, ["eval", str(tiny_model_dirs["opt"]), "--task", "sst2", "--data-dir", "builtin",
                                 "--num-eval", "5", "--icl", "3", "--output-dir", str(tmp_path / "e"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e" / "eval_icl3.json").read_text())
    assert report["icl"] == 3 and report["num_eval"] == 5
    blocks = seen["context"].split("\n\n")
    assert len(blocks) == 4 and blocks[-1] == ""  # three demonstrations, each followed by a blank line
    assert all(b.endswith((" It was terrible", " It was great")) for b in blocks[:3])
    assert icl_context([Example("Q?\n", ("No", "Yes"), 1)]) == "Q?\nYes\n\n"
    assert icl_context([GenExample("Question: q\nAnswer:", " red\n", ("red",))]) == "Question: q\nAnswer: red\n\n"
    bad = runner.invoke(app, ["eval", str(tiny_model_dirs["opt"]), "--task", "sst2", "--data-dir", "builtin",
                              "--icl", "-1"])
    assert bad.exit_code == 2 and "--icl must be >= 0" in bad.output
