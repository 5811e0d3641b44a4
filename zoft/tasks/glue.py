"""SST-2, RTE and BoolQ with the MeZO prompts (docs/algorithms.md, "Prompts and verbalizers").

Each converter accepts both the Hugging Face Hub layout and the original file
layout of the task (GLUE TSV / SuperGLUE JSONL), so ``--data-dir`` and Hub
loading produce identical examples.
"""

from __future__ import annotations

from zoft.tasks.base import HUB_SPLITS, Example, Task, label_index, record_field


def sst2_example(record: dict) -> Example:
    """SST-2: ``{sentence} It was`` -> `` terrible`` (0) / `` great`` (1).

    GLUE TSV sentences end with a space before the tab, hence the strip.
    """
    sentence = str(record_field(record, ("sentence",), "sst2")).strip()
    label = label_index(record_field(record, ("label",), "sst2"), {"0": 0, "1": 1}, "sst2")
    return Example(prompt=f"{sentence} It was", candidates=(" terrible", " great"), label=label)


def rte_example(record: dict) -> Example:
    """RTE: premise + yes/no question -> ``Yes`` (entailment, 0) / ``No`` (1).

    Files carry "entailment"/"not_entailment"; the Hub carries 0 = entailment.
    ``sentence1``/``sentence2`` (GLUE layout) are accepted as premise/hypothesis.
    """
    premise = record_field(record, ("premise", "sentence1"), "rte")
    hypothesis = record_field(record, ("hypothesis", "sentence2"), "rte")
    mapping = {"entailment": 0, "not_entailment": 1, "0": 0, "1": 1}
    label = label_index(record_field(record, ("label",), "rte"), mapping, "rte")
    prompt = f'{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n'
    return Example(prompt=prompt, candidates=("Yes", "No"), label=label)


def boolq_example(record: dict) -> Example:
    """BoolQ: ``{passage} {Question}?\\n`` -> ``No`` (false, 0) / ``Yes`` (true, 1).

    The question is capitalised and ends with exactly one ``?``. The label is
    ``label`` (SuperGLUE files, bool or 0/1) or ``answer`` (google/boolq, bool).
    """
    passage = record_field(record, ("passage",), "boolq")
    question = str(record_field(record, ("question",), "boolq")).strip().rstrip("?").rstrip()
    question = question[:1].upper() + question[1:]
    mapping = {"false": 0, "true": 1, "0": 0, "1": 1}
    label = label_index(record_field(record, ("label", "answer"), "boolq"), mapping, "boolq")
    return Example(prompt=f"{passage} {question}?\n", candidates=("No", "Yes"), label=label)


SST2 = Task(
    name="sst2",
    description="SST-2 (GLUE) sentiment: '<sentence> It was' -> terrible/great",
    hub=("nyu-mll/glue", "sst2"),
    hub_splits=HUB_SPLITS,
    files={"train": ("train.tsv", "train_full.tsv"), "eval": ("dev.tsv",)},
    to_example=sst2_example,
    builtin_dir="data/sst2",
)

RTE = Task(
    name="rte",
    description="RTE (SuperGLUE) entailment: premise + 'Does this mean that ...?' -> Yes/No",
    hub=("aps/super_glue", "rte"),
    hub_splits=HUB_SPLITS,
    files={"train": ("train.jsonl",), "eval": ("val.jsonl", "dev.jsonl")},
    to_example=rte_example,
)

BOOLQ = Task(
    name="boolq",
    description="BoolQ yes/no questions: '<passage> <question>?' -> No/Yes",
    hub=("google/boolq", None),
    hub_splits=HUB_SPLITS,
    files={"train": ("train.jsonl", "boolq_train.jsonl"), "eval": ("val.jsonl", "dev.jsonl")},
    to_example=boolq_example,
)
