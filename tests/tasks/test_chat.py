"""Chat (`messages`) and Alpaca-style instruction rows as custom generation tasks."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from zoft.cli import app
from zoft.tasks.base import TaskDataError
from zoft.tasks.custom import custom_chat_task, custom_instruction_task, data_format

runner = CliRunner()
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _chat_rows(n=24):
    return [{"messages": [{"role": "system", "content": "Answer with one word."},
                          {"role": "user", "content": f"Is {i} even?"},
                          {"role": "assistant", "content": "yes" if i % 2 == 0 else "no"}]} for i in range(n)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def chat_model_dir(tiny_model_dirs, tokenizer, tmp_path):
    path = tmp_path / "chat-llama"
    shutil.copytree(tiny_model_dirs["llama"], path)
    tok = tokenizer.__class__.from_pretrained(path)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    return path


def test_a_chat_row_trains_on_the_assistant_turn_through_the_template(chat_model_dir, tmp_path):
    from zoft.models import load_tokenizer

    data = _write(tmp_path / "chat.jsonl", _chat_rows())
    assert data_format(data) == "messages"
    task = custom_chat_task(data, load_tokenizer(str(chat_model_dir)))
    example = task.to_example(_chat_rows()[3])
    assert example.prompt == "<|system|>Answer with one word.<|end|>\n<|user|>Is 3 even?<|end|>\n<|assistant|>"
    assert example.target == "<|assistant|>no<|end|>\n"[len("<|assistant|>"):] and example.answers == ("no",)


def test_zoft_train_reads_chat_and_instruction_files_without_extra_flags(chat_model_dir, tmp_path):
    chat = _write(tmp_path / "chat.jsonl", _chat_rows())
    alpaca = _write(tmp_path / "alpaca.jsonl", [{"instruction": "Say the number", "input": str(i) if i % 2 else "",
                                                 "output": f"number {i}"} for i in range(24)])
    for data in (chat, alpaca):
        out = tmp_path / f"run-{data.stem}"
        result = runner.invoke(app, ["train", "--task", "custom", "--data-file", str(data), "--model",
                                     str(chat_model_dir), "--steps", "2", "--batch-size", "4", "--num-train", "8",
                                     "--num-dev", "4", "--num-eval", "4", "--eval-every", "0",
                                     "--output-dir", str(out)])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "eval.json").read_text())["metric"] == "f1"


def test_instruction_rows_use_alpacas_prompt():
    convert = custom_instruction_task.__globals__["_InstructionConverter"]()
    with_input = convert({"instruction": "Add them", "input": "2 and 3", "output": "5"})
    assert "paired with an input" in with_input.prompt and "### Input:\n2 and 3\n\n### Response:\n" in with_input.prompt
    plain = convert({"instruction": "Say hi", "output": "hi"})
    assert "### Input" not in plain.prompt and plain.prompt.endswith("### Instruction:\nSay hi\n\n### Response:\n")
    assert plain.target == "hi\n" and plain.answers == ("hi",)


def test_bad_chat_data_is_refused_with_the_line_and_what_to_do(chat_model_dir, tiny_model_dirs, tmp_path):
    from zoft.models import load_tokenizer

    rows = _chat_rows(4)
    rows[2]["messages"][-1]["role"] = "user"
    data = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(TaskDataError, match="line 3 of bad.jsonl: the last turn must be a non-empty assistant turn"):
        custom_chat_task(data, load_tokenizer(str(chat_model_dir)))
    good = _write(tmp_path / "good.jsonl", _chat_rows(4))
    result = runner.invoke(app, ["train", "--task", "custom", "--data-file", str(good), "--model",
                                 str(tiny_model_dirs["llama"]), "--steps", "2", "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2 and "has no chat template" in result.output
