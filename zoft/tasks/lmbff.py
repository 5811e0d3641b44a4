"""SST-5, SNLI, MNLI and TREC: the RoBERTa-large task set of MeZO (templates of Gao et al., LM-BFF).

LM-BFF scores a masked LM at ``<mask>``; a causal LM can only score what follows its prompt, so **[zoft]** cuts
each template at the mask and appends everything from the mask on as the candidate (docs/algorithms.md, "Prompts
and verbalizers"):

- SST-5: ``{s1} It was`` → `` terrible`` / `` bad`` / `` okay`` / `` good`` / `` great`` (the template ends at the mask).
- SNLI, MNLI: ``{s1 minus final punctuation}?`` → `` No, {s2'}`` / `` Yes, {s2'}`` / `` Maybe, {s2'}`` for
  contradiction / entailment / neutral, s2' with its first letter lower-cased: the label word and the hypothesis are
  scored together, as a full-sequence likelihood of LM-BFF's filled template.
- TREC: LM-BFF's ``<mask>: {s1}`` puts the mask first, where a causal LM has nothing to condition on; zoft asks
  ``{s1} Answer type:`` → `` Description`` / `` Entity`` / `` Expression`` / `` Human`` / `` Location`` / `` Number``.

The first-sentence truncation of LM-BFF (110 / 240 tokens) is not applied; ``--max-length`` truncates from the
left as for every task.
"""

from __future__ import annotations

from zoft.tasks.base import HUB_SPLITS, Example, Task, TaskDataError, label_index, record_field


def _unquote(text: str) -> str:
    """SST-5's jsonl conversion left some sentences wrapped in the csv's double quotes."""
    text = text.strip()
    return text[1:-1].strip() if len(text) > 1 and text[0] == text[-1] == '"' else text


SST5_WORDS = (" terrible", " bad", " okay", " good", " great")


def sst5_example(record: dict) -> Example:
    sentence = _unquote(str(record_field(record, ("sentence", "text"), "sst5")))
    label = label_index(record_field(record, ("label",), "sst5"), {str(i): i for i in range(5)}, "sst5")
    return Example(prompt=f"{sentence} It was", candidates=SST5_WORDS, label=label)


#: LM-BFF's label order: contradiction No, entailment Yes, neutral Maybe
NLI_LABELS = ("contradiction", "entailment", "neutral")
_NLI_WORDS = ("No", "Yes", "Maybe")
_NLI_MAP = {name: i for i, name in enumerate(NLI_LABELS)}
# Hub snli and glue/mnli: 0 entailment, 1 neutral, 2 contradiction
_NLI_MAP.update({"0": 1, "1": 2, "2": 0})


def nli_flatten(records: list[dict]) -> list[dict]:
    """Drop pairs without a gold label (Hub SNLI: -1; GLUE tsv: '-')."""
    out = []
    for rec in records:
        label = rec.get("gold_label", rec.get("label"))
        if str(label).strip() not in ("-1", "-", ""):
            out.append(rec)
    return out


def nli_example(record: dict, task: str = "nli") -> Example:
    s1 = str(record_field(record, ("premise", "sentence1"), task)).strip()
    s2 = str(record_field(record, ("hypothesis", "sentence2"), task)).strip()
    label = label_index(record_field(record, ("gold_label", "label"), task), _NLI_MAP, task)
    s1 = s1.rstrip(".?!,;:").rstrip()
    s2 = s2[:1].lower() + s2[1:]
    return Example(prompt=f"{s1}?", candidates=tuple(f" {w}, {s2}" for w in _NLI_WORDS), label=label)


def snli_example(record: dict) -> Example:
    return nli_example(record, "snli")


def mnli_example(record: dict) -> Example:
    return nli_example(record, "mnli")


TREC_COARSE = ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM")  # LM-BFF's label ids 0..5
TREC_WORDS = (" Description", " Entity", " Expression", " Human", " Location", " Number")
_TREC_HUB = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")  # CogComp/trec coarse_label ids


def trec_flatten(records: list[dict]) -> list[dict]:
    """Li & Roth lines ``COARSE:fine question`` → {question, coarse}; Hub rows (text, coarse_label) likewise."""
    out = []
    for rec in records:
        if "line" in rec:
            head, _, question = rec["line"].partition(" ")
            out.append({"question": question.strip(), "coarse": head.split(":", 1)[0]})
        elif "coarse_label" in rec:
            out.append({"question": rec["text"], "coarse": _TREC_HUB[int(rec["coarse_label"])]})
        else:
            out.append(rec)
    return out


def trec_example(record: dict) -> Example:
    question = str(record_field(record, ("question", "text"), "trec")).strip()
    coarse = str(record_field(record, ("coarse", "label"), "trec")).strip().upper()
    if coarse not in TREC_COARSE:
        raise TaskDataError(f"trec label {coarse!r} is not one of {', '.join(TREC_COARSE)}; check the data file")
    return Example(prompt=f"{question} Answer type:", candidates=TREC_WORDS, label=TREC_COARSE.index(coarse))


_NLI_FILES = {"train": ("train.tsv", "train.jsonl"), "eval": ("test.tsv", "test_matched.tsv", "dev.jsonl")}


def _nli_missing(name: str) -> dict[str, str]:
    return {"train": f"--data-dir has no full {name} train split: use an LM-BFF k-shot folder such as "
                     f"{name.lower()}/k-shot/16-13 with --eval-file {name.lower()}/dev.jsonl, or drop --data-dir "
                     f"to use the Hub",
            "eval": f"pass --eval-file with the {name} dev set (LM-BFF's {name.lower()}/dev.jsonl)"}


SST5 = Task(name="sst5", description="SST-5 5-way sentiment: '<sentence> It was' -> terrible/bad/okay/good/great",
            hub=("SetFit/sst5", None), hub_splits={"train": "train", "eval": "test"},
            files={"train": ("train.jsonl", "train.tsv"), "eval": ("test.jsonl", "test.tsv")}, to_example=sst5_example)
SNLI = Task(name="snli", description="SNLI entailment: '<s1>?' -> ' No/Yes/Maybe, <s2>' (LM-BFF template)",
            hub=("stanfordnlp/snli", None), hub_splits=HUB_SPLITS,
            files=_NLI_FILES, to_example=snli_example, flatten=nli_flatten, missing=_nli_missing("SNLI"))
MNLI = Task(name="mnli", description="MNLI (matched) entailment: '<s1>?' -> ' No/Yes/Maybe, <s2>' (LM-BFF template)",
            hub=("nyu-mll/glue", "mnli"), hub_splits={"train": "train", "eval": "validation_matched"},
            files=_NLI_FILES, to_example=mnli_example, flatten=nli_flatten, missing=_nli_missing("MNLI"))
TREC = Task(name="trec", description="TREC 6-way question type: '<question> Answer type:' -> Description/Entity/...",
            hub=("CogComp/trec", None), hub_splits={"train": "train", "eval": "test"},
            files={"train": ("train.txt",), "eval": ("test.txt",)}, to_example=trec_example, flatten=trec_flatten)
