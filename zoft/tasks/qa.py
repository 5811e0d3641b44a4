"""SQuAD and DROP: generation tasks with the MeZO prompts (docs/algorithms.md, "Task protocol").

Training: token cross-entropy on the target `` {answers[0]}\\n``. Evaluation: greedy decoding of at most 50 new
tokens, cut at the first newline or EOS, scored by token F1 (and exact match) against every gold answer.
"""

from __future__ import annotations

from zoft.tasks.base import HUB_SPLITS, GenExample, Task, TaskDataError, record_field


def squad_flatten(records: list[dict]) -> list[dict]:
    """Original SQuAD json ({data: [{title, paragraphs: [{context, qas}]}]}) → one row per question in the Hub
    layout (title, context, question, answers{text}); simplified rows ({context, question, answer}) likewise."""
    flat = []
    for rec in records:
        if "data" in rec and isinstance(rec["data"], list):
            for article in rec["data"]:
                for para in article["paragraphs"]:
                    for qa in para["qas"]:
                        flat.append({"title": article.get("title", ""), "context": para["context"],
                                     "question": qa["question"],
                                     "answers": {"text": [a["text"] for a in qa["answers"]]}})
        elif "answer" in rec and "answers" not in rec:
            flat.append({**rec, "answers": {"text": [rec["answer"]]}})
        else:
            flat.append(rec)
    return flat


def _answers(value, task: str) -> tuple[str, ...]:
    texts = value.get("text", value.get("spans")) if isinstance(value, dict) else value
    texts = tuple(str(t) for t in (texts if isinstance(texts, (list, tuple)) else [texts]) if str(t).strip())
    if not texts:
        raise TaskDataError(f"{task} row has no gold answer; check the data file")
    return texts


def squad_example(record: dict) -> GenExample:
    """``Title: {title}\\nContext: {context}\\nQuestion: {question}\\nAnswer:`` → `` {answers[0]}\\n``.

    **[zoft]** Rows without a title (simplified train subsets such as train_subset_4330.json) leave out the
    Title line.
    """
    context, question = record_field(record, ("context",), "squad"), record_field(record, ("question",), "squad")
    answers = _answers(record_field(record, ("answers",), "squad"), "squad")
    title = str(record.get("title") or "").replace("_", " ")
    head = f"Title: {title}\n" if title else ""
    prompt = f"{head}Context: {context}\nQuestion: {question}\nAnswer:"
    return GenExample(prompt=prompt, target=f" {answers[0]}\n", answers=answers)


def drop_flatten(records: list[dict]) -> list[dict]:
    """Original DROP json ({pid: {passage, qa_pairs: [{question, answer{number, date, spans}}]}}) → Hub rows
    (passage, question, answers_spans{spans})."""
    flat = []
    for rec in records:
        if "passage" in rec:
            flat.append(rec)
            continue
        for item in rec.values():
            for qa in item["qa_pairs"]:
                flat.append({"passage": item["passage"], "question": qa["question"],
                             "answers_spans": {"spans": _drop_answers(qa)}})
    return flat


def _drop_answers(qa: dict) -> list[str]:
    out = []
    for ans in [qa["answer"], *qa.get("validated_answers", [])]:
        if ans.get("spans"):
            text = " ".join(ans["spans"])
        elif str(ans.get("number", "")).strip():
            text = str(ans["number"])
        else:
            date = ans.get("date", {})
            text = " ".join(str(date.get(k, "")) for k in ("day", "month", "year") if str(date.get(k, "")).strip())
        if text and text not in out:
            out.append(text)
    return out


def drop_example(record: dict) -> GenExample:
    """``Passage: {passage}\\nQuestion: {question}\\nAnswer:`` → `` {answers_spans[0]}\\n``."""
    passage, question = record_field(record, ("passage",), "drop"), record_field(record, ("question",), "drop")
    answers = _answers(record_field(record, ("answers_spans", "answers"), "drop"), "drop")
    return GenExample(prompt=f"Passage: {passage}\nQuestion: {question}\nAnswer:", target=f" {answers[0]}\n",
                      answers=answers)


_MISSING_SQUAD_TRAIN = ("--data-dir has no SQuAD v1.1 train-v1.1.json: put it there (a subset such as "
                        "train_subset_4330.json is read as the train split too), or drop --data-dir to use the Hub")
_MISSING_DROP = ("--data-dir has no DROP files: put drop_dataset_train.json and "
                 "drop_dataset_dev.json there, or drop --data-dir to load ucinlp/drop from the Hub")

SQUAD = Task(name="squad", description="SQuAD v1.1 extractive QA, generated greedily (token F1 / exact match)",
             hub=("rajpurkar/squad", None), hub_splits=HUB_SPLITS,
             files={"train": ("train-v1.1.json", "train-v1.1.json.zip", "train_subset_4330.json", "train.json"),
                    "eval": ("dev-v1.1.json", "dev-v1.1.json.zip", "dev.json")},
             to_example=squad_example, metric="f1", objective="generation", flatten=squad_flatten,
             missing={"train": _MISSING_SQUAD_TRAIN})
DROP = Task(name="drop", description="DROP discrete reasoning over paragraphs, generated greedily (token F1)",
            hub=("ucinlp/drop", None), hub_splits=HUB_SPLITS,
            files={"train": ("drop_dataset_train.json", "train.json"), "eval": ("drop_dataset_dev.json", "dev.json")},
            to_example=drop_example, metric="f1", objective="generation", flatten=drop_flatten,
            missing={"train": _MISSING_DROP, "eval": _MISSING_DROP})
