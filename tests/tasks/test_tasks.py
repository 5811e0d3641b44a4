"""Tests for zoft.tasks: templates, readers, MeZO sampling, built-in sample, custom tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zoft.tasks import (
    BUILTIN,
    TASKS,
    Example,
    TaskDataError,
    custom_task,
    get_task,
    load_records,
    load_splits,
    read_records,
    sample_splits,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
REPO = Path(__file__).resolve().parents[2]


def shared_dir(task: str) -> Path:
    path = SHARED / task
    if not path.is_dir():
        pytest.skip(f"shared data {path} not present")
    return path


# ---------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------


def test_sst2_template_file_record():
    ex = TASKS["sst2"].to_example({"sentence": "it 's a charming and often affecting journey . ", "label": "1"})
    assert ex == Example("it 's a charming and often affecting journey . It was", (" terrible", " great"), 1)


def test_sst2_template_hub_record():
    ex = TASKS["sst2"].to_example({"sentence": "unflinchingly bleak and desperate ", "label": 0, "idx": 1})
    assert ex.prompt == "unflinchingly bleak and desperate It was"
    assert ex.label == 0


def test_rte_template_file_and_hub_labels():
    record = {"premise": "Cats purr.", "hypothesis": "Cats make sounds.", "label": "not_entailment", "idx": 0}
    ex = TASKS["rte"].to_example(record)
    assert ex.prompt == 'Cats purr.\nDoes this mean that "Cats make sounds." is true? Yes or No?\n'
    assert ex.candidates == ("Yes", "No")
    assert ex.label == 1
    assert TASKS["rte"].to_example({**record, "label": "entailment"}).label == 0
    assert TASKS["rte"].to_example({**record, "label": 0}).label == 0  # Hub: 0 = entailment
    assert TASKS["rte"].to_example({**record, "label": 1}).label == 1


def test_boolq_template_question_capitalised_single_question_mark():
    record = {"passage": "Persian is spoken in Iran.", "question": "do iran and afghanistan speak the same language", "answer": True}
    ex = TASKS["boolq"].to_example(record)
    assert ex.prompt == "Persian is spoken in Iran. Do iran and afghanistan speak the same language?\n"
    assert ex.candidates == ("No", "Yes")
    assert ex.label == 1
    with_mark = TASKS["boolq"].to_example({"passage": "P.", "question": "is it?", "label": False, "idx": 3})
    assert with_mark.prompt == "P. Is it?\n"
    assert with_mark.label == 0
    assert TASKS["boolq"].to_example({"passage": "P.", "question": "is it", "label": 1}).label == 1  # super_glue Hub


def test_bad_builtin_label_is_task_data_error():
    with pytest.raises(TaskDataError, match="label"):
        TASKS["rte"].to_example({"premise": "a", "hypothesis": "b", "label": "maybe"})
    with pytest.raises(TaskDataError, match="'sentence'"):
        TASKS["sst2"].to_example({"text": "a", "label": 1})


def test_get_task():
    assert get_task("SST2") is TASKS["sst2"]
    assert sorted(TASKS) == sorted(["sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad",
                                   "drop", "sst5", "snli", "mnli", "trec"])
    with pytest.raises(ValueError, match="choose from: boolq, cb, copa, .*, wsc, custom"):
        get_task("qnli")
    with pytest.raises(ValueError, match="--data-file"):
        get_task("custom")


# ---------------------------------------------------------------------------
# Reading the original files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, split, expected",
    [("sst2", "eval", 872), ("rte", "eval", 277), ("rte", "train", 2490), ("boolq", "eval", 3270), ("boolq", "train", 1000)],
)
def test_read_shared_files(task, split, expected):
    records = read_records(TASKS[task], split, shared_dir(task))
    assert len(records) == expected
    labels = [TASKS[task].to_example(r).label for r in records]
    share = sum(labels) / len(labels)
    assert set(labels) == {0, 1}
    assert 0.3 < share < 0.7  # all three tasks are within 38-62 % positive


def test_read_sst2_full_train_uses_fallback_name():
    records = read_records(TASKS["sst2"], "train", shared_dir("sst2"))
    assert len(records) == 67349
    assert records[0] == {"sentence": "hide new secretions from the parental units ", "label": "0"}


def test_data_dir_errors(tmp_path):
    with pytest.raises(TaskDataError, match=r"no train file for task rte; expected one of train\.jsonl"):
        load_records(TASKS["rte"], "train", tmp_path)
    with pytest.raises(TaskDataError, match="no such directory"):
        load_records(TASKS["rte"], "train", tmp_path / "missing")


def test_bad_jsonl_line_names_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"premise": "a"}\nnot json\n')
    with pytest.raises(TaskDataError, match="line 2 is not valid JSON"):
        read_records(TASKS["rte"], "train", tmp_path)


# ---------------------------------------------------------------------------
# MeZO sampling protocol
# ---------------------------------------------------------------------------


def _sst2_records(n: int) -> list[dict]:
    return [{"sentence": f"s{i}", "label": str(i % 2)} for i in range(n)]


def test_sample_splits_default_sizes_and_disjoint():
    splits = sample_splits(_sst2_records(3000), _sst2_records(2000), TASKS["sst2"])
    assert (len(splits.train), len(splits.dev), len(splits.eval)) == (1000, 500, 1000)
    train = {ex.prompt for ex in splits.train}
    assert len(train) == 1000 and not train & {ex.prompt for ex in splits.dev}


def test_sample_splits_protocol_indices():
    import numpy as np

    records = _sst2_records(3000)
    splits = sample_splits(records, records, TASKS["sst2"], num_train=10, num_dev=4, num_eval=5, seed=3)
    perm = np.random.RandomState(3).permutation(3000)
    assert [ex.prompt for ex in splits.train] == [f"s{i} It was" for i in perm[:10]]
    assert [ex.prompt for ex in splits.dev] == [f"s{i} It was" for i in perm[10:14]]
    assert [ex.prompt for ex in splits.eval] == [f"s{i} It was" for i in perm[:5]]


def test_sample_splits_small_sets_use_everything():
    splits = sample_splits(_sst2_records(250), _sst2_records(56), TASKS["sst2"], num_dev=100)
    assert (len(splits.train), len(splits.dev), len(splits.eval)) == (150, 100, 56)


def test_sample_splits_deterministic_per_seed():
    records = _sst2_records(3000)
    first = sample_splits(records, records, TASKS["sst2"], seed=0)
    assert first == sample_splits(records, records, TASKS["sst2"], seed=0)
    other = sample_splits(records, records, TASKS["sst2"], seed=1)
    assert [e.prompt for e in first.train] != [e.prompt for e in other.train]
    assert [e.prompt for e in first.eval] != [e.prompt for e in other.eval]


def test_sample_splits_empty_train_names_flags():
    with pytest.raises(TaskDataError, match="--num-dev"):
        sample_splits(_sst2_records(300), _sst2_records(10), TASKS["sst2"])


def test_load_splits_from_shared_files():
    splits = load_splits(TASKS["rte"], shared_dir("rte"))
    assert (len(splits.train), len(splits.dev), len(splits.eval)) == (1000, 500, 277)
    assert splits.source.startswith("files ")


# ---------------------------------------------------------------------------
# Built-in sample and Hub fallback
# ---------------------------------------------------------------------------


def test_builtin_sample_loads():
    train, source = load_records(TASKS["sst2"], "train", BUILTIN)
    dev, _ = load_records(TASKS["sst2"], "eval", BUILTIN)
    assert (len(train), len(dev)) == (2000, 872)
    assert source == "builtin sample zoft/tasks/data/sst2"
    splits = load_splits(TASKS["sst2"], BUILTIN)
    assert (len(splits.train), len(splits.dev), len(splits.eval)) == (1000, 500, 872)
    assert splits.source == "builtin sample zoft/tasks/data/sst2 (2,000 train rows)"


def test_builtin_missing_for_rte():
    with pytest.raises(TaskDataError, match=r"no built-in sample \(tasks with one: sst2\)"):
        load_records(TASKS["rte"], "train", BUILTIN)


def test_hub_failure_falls_back_only_with_builtin(monkeypatch, caplog):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    splits = load_splits(TASKS["sst2"], None)
    assert splits.source.startswith("builtin sample")
    assert "could not load nyu-mll/glue/sst2" in caplog.text
    with pytest.raises(TaskDataError, match=r"pass --data-dir DIR containing train\.jsonl and val\.jsonl \(or dev\.jsonl\)"):
        load_splits(TASKS["rte"], None)


def test_real_offline_hub_fallback(tmp_path):
    """The real `datasets` call, offline and with an empty cache, in a clean interpreter."""
    pytest.importorskip("datasets")
    script = textwrap.dedent(
        """
        from zoft.tasks import TASKS, TaskDataError, load_splits
        print(load_splits(TASKS["sst2"], None).source)
        try:
            load_splits(TASKS["rte"], None)
        except TaskDataError as exc:
            print("rte:", exc)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "builtin sample zoft/tasks/data/sst2 (2,000 train rows)"
    assert lines[1].startswith("rte: could not load aps/super_glue/rte from the Hugging Face Hub (")


# ---------------------------------------------------------------------------
# Custom tasks
# ---------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _rows(n: int) -> list[dict]:
    return [{"sentence": f"movie {i}", "label": i % 2} for i in range(n)]


def test_custom_jsonl(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(40))
    task = custom_task(path, text_field="sentence", verbalizer="0=terrible,1=great", template="{sentence} It was")
    assert task.to_example({"sentence": "fine", "label": 1}) == Example("fine It was", (" terrible", " great"), 1)
    splits = load_splits(task, None, num_train=20, num_dev=5, num_eval=100)
    assert (len(splits.train), len(splits.dev), len(splits.eval)) == (20, 5, 15)
    used = {e.prompt for e in splits.train + splits.dev}
    assert not used & {e.prompt for e in splits.eval}  # eval = rows not used for train/dev
    assert "eval = rows not used" in splits.source


def test_custom_csv_with_eval_file_and_defaults(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nnice one,pos\nawful,neg\nok,pos\n")
    (tmp_path / "eval.csv").write_text("text,label\ngreat,pos\n")
    task = custom_task(tmp_path / "train.csv", verbalizer="neg=No,pos=Yes", eval_file=tmp_path / "eval.csv")
    assert task.to_example({"text": "great", "label": "pos"}) == Example("great", (" No", " Yes"), 1)
    splits = load_splits(task, None, num_train=2, num_dev=1)
    assert (len(splits.train), len(splits.dev), len(splits.eval)) == (2, 1, 1)
    assert splits.eval[0].prompt == "great"


def test_custom_trailing_newline_template_and_bool_labels(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"q": "Is it?", "answer": True}, {"q": "Not?", "answer": False}])
    task = custom_task(path, label_field="answer", verbalizer="false=No,true=Yes", template="Q: {q}\nA:\n")
    assert task.to_example({"q": "Is it?", "answer": True}) == Example("Q: Is it?\nA:\n", ("No", "Yes"), 1)
    numeric = custom_task(path, label_field="answer", verbalizer="0=No,1=Yes", template="{q}")
    assert numeric.to_example({"q": "x", "answer": False}).label == 0


def test_custom_missing_column_lists_available(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(3))
    with pytest.raises(TaskDataError) as info:
        custom_task(path, label_field="lbl", verbalizer="0=a,1=b")
    assert str(info.value) == "--label-field 'lbl' is not a column of train.jsonl; available columns: label, sentence"
    with pytest.raises(TaskDataError, match="--text-field 'body'.*available columns: label, sentence"):
        custom_task(path, text_field="body", verbalizer="0=a,1=b")
    with pytest.raises(TaskDataError, match="--template field 'review'.*available columns: label, sentence"):
        custom_task(path, verbalizer="0=a,1=b", template="{review} It was")


@pytest.mark.parametrize("spec", [None, "", "0=terrible", "0:terrible,1:great", "0=,1=great", "0=a,0=b"])
def test_custom_bad_verbalizer(tmp_path, spec):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(3))
    with pytest.raises(TaskDataError, match="--verbalizer"):
        custom_task(path, verbalizer=spec)


def test_custom_unknown_label_names_value_and_row(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(3) + [{"sentence": "meh", "label": 7}])
    with pytest.raises(TaskDataError, match=r"line 4 of train\.jsonl has label 7.*--verbalizer"):
        custom_task(path, verbalizer="0=terrible,1=great")


def test_custom_missing_file_and_bad_extension(tmp_path):
    with pytest.raises(TaskDataError, match="--data-file .*no such file"):
        custom_task(tmp_path / "nope.jsonl", verbalizer="0=a,1=b")
    (tmp_path / "train.parquet").write_text("x")
    with pytest.raises(TaskDataError, match="--data-file .*unsupported file type '.parquet'"):
        custom_task(tmp_path / "train.parquet", verbalizer="0=a,1=b")


def test_custom_positional_template_rejected(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(3))
    with pytest.raises(TaskDataError, match="--template"):
        custom_task(path, verbalizer="0=a,1=b", template="{} It was")
    with pytest.raises(TaskDataError, match="--template"):
        custom_task(path, verbalizer="0=a,1=b", template="{sentence It was")
