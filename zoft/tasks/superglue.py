"""CB, WSC, WiC, MultiRC, COPA and ReCoRD with the MeZO prompts (docs/algorithms.md, "Prompts and verbalizers").

Converters read both the Hugging Face Hub rows (``super_glue/*``) and the original SuperGLUE files. Nested file
layouts (MultiRC's paragraph → questions → answers, ReCoRD's passage → queries) are flattened by each task's
``flatten`` into the flat Hub layout first, so one converter serves both sources.
"""

from __future__ import annotations

from zoft.tasks.base import HUB_SPLITS, Example, Task, TaskDataError, label_index, record_field


def cb_example(record: dict) -> Example:
    """CB: ``Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\\n`` → Yes / No / Maybe."""
    premise, hypothesis = record_field(record, ("premise",), "cb"), record_field(record, ("hypothesis",), "cb")
    # Hub: 0 entailment, 1 contradiction, 2 neutral (the candidate order)
    label = label_index(record_field(record, ("label",), "cb"),
                        {"entailment": 0, "contradiction": 1, "neutral": 2, "0": 0, "1": 1, "2": 2}, "cb")
    prompt = f'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n'
    return Example(prompt=prompt, candidates=("Yes", "No", "Maybe"), label=label)


_BOOL = {"false": 0, "true": 1, "0": 0, "1": 1}


def wsc_example(record: dict) -> Example:
    """WSC: ``{text}\\nIn the previous sentence, does the pronoun "{span2}" refer to {span1}? Yes or No?\\n``.

    Reads the flat Hub layout (``span1_text``, ``span2_text``) and SuperGLUE's nested ``target`` dict; local copies
    mix the two (``wsc_train.jsonl`` flat, ``train.jsonl``/``val.jsonl`` nested).
    """
    spans = record["target"] if isinstance(record.get("target"), dict) else record
    span1 = record_field(spans, ("span1_text",), "wsc")
    span2 = str(record_field(spans, ("span2_text",), "wsc")).lower()
    text = record_field(record, ("text",), "wsc")
    label = label_index(record_field(record, ("label",), "wsc"), _BOOL, "wsc")
    prompt = f'{text}\nIn the previous sentence, does the pronoun "{span2}" refer to {span1}? Yes or No?\n'
    return Example(prompt=prompt, candidates=("No", "Yes"), label=label)


def wic_example(record: dict) -> Example:
    """WiC: ``Does the word "{word}" have the same meaning in these two sentences? Yes, No?\\n{s1}\\n{s2}\\n``."""
    word, s1, s2 = (record_field(record, (k,), "wic") for k in ("word", "sentence1", "sentence2"))
    label = label_index(record_field(record, ("label",), "wic"), _BOOL, "wic")
    prompt = f'Does the word "{word}" have the same meaning in these two sentences? Yes, No?\n{s1}\n{s2}\n'
    return Example(prompt=prompt, candidates=("No", "Yes"), label=label)


def multirc_flatten(records: list[dict]) -> list[dict]:
    """SuperGLUE files hold one paragraph per line with nested questions and answers; the Hub has one row per
    (question, answer) pair. Both become the Hub layout: paragraph, question, answer, label."""
    flat = []
    for rec in records:
        passage = rec.get("passage")
        if not (isinstance(passage, dict) and "questions" in passage):
            flat.append(rec)  # already flat (Hub layout)
            continue
        for q in rec["passage"]["questions"]:
            for a in q["answers"]:
                flat.append({"paragraph": rec["passage"]["text"], "question": q["question"], "answer": a["text"],
                             "label": a["label"]})
    return flat


def multirc_example(record: dict) -> Example:
    """MultiRC, scored per (question, answer) pair: ``...I found this answer "{answer}". Is that correct?``."""
    paragraph, question, answer = (record_field(record, (k,), "multirc") for k in ("paragraph", "question", "answer"))
    label = label_index(record_field(record, ("label",), "multirc"), _BOOL, "multirc")
    prompt = (f'{paragraph}\nQuestion: {question}\nI found this answer "{answer}". Is that correct? '
              f"Yes or No?\n")
    return Example(prompt=prompt, candidates=("No", "Yes"), label=label)


def _copa_choice(text: str) -> str:
    first = text.split(" ", 1)[0]
    keep = first == "I" or first.startswith("I'")  # "I" stays capitalised, everything else is lower-cased
    return text if keep else text[:1].lower() + text[1:]


def copa_example(record: dict) -> Example:
    """COPA: ``{premise without final .} so`` (effect) / ``because`` (cause) + `` {choice}``, first letter
    lower-cased unless the word is "I"; trained by token cross-entropy on the gold choice (MeZO)."""
    premise = str(record_field(record, ("premise",), "copa")).strip()
    premise = premise[:-1] if premise.endswith(".") else premise
    question = str(record_field(record, ("question",), "copa")).strip().lower()
    if question not in ("cause", "effect"):
        raise TaskDataError(f"copa question {question!r} is not 'cause' or 'effect'; check the data file")
    connector = "because" if question == "cause" else "so"
    choices = tuple(" " + _copa_choice(str(record_field(record, (k,), "copa")).strip()) for k in ("choice1", "choice2"))
    label = label_index(record_field(record, ("label",), "copa"), {"0": 0, "1": 1}, "copa")
    return Example(prompt=f"{premise} {connector}", candidates=choices, label=label)


def record_flatten(records: list[dict]) -> list[dict]:
    """Original ReCoRD lines (passage{text, entities[start,end]}, qas[query, answers]) → Hub rows
    (passage, query, entities, answers), one per query."""
    flat = []
    for rec in records:
        if "qas" not in rec:
            flat.append(rec)
            continue
        text = rec["passage"]["text"]
        entities = [text[e["start"]:e["end"] + 1] for e in rec["passage"]["entities"]]
        for qa in rec["qas"]:
            flat.append({"passage": text, "query": qa["query"], "entities": entities,
                         "answers": [a["text"] for a in qa.get("answers", [])]})
    return flat


def record_example(record: dict) -> Example:
    """ReCoRD: the passage (``@highlight\\n`` → ``- ``) then ``\\n- `` + the query with each entity in
    ``@placeholder``; gold = any entity in ``answers``; trained on the first gold (token cross-entropy)."""
    passage = str(record_field(record, ("passage",), "record")).replace("@highlight\n", "- ")
    query = str(record_field(record, ("query",), "record"))
    entities = list(dict.fromkeys(record_field(record, ("entities",), "record")))  # dedupe, keep order
    answers = set(record_field(record, ("answers",), "record"))
    golds = tuple(i for i, e in enumerate(entities) if e in answers)
    if not golds:
        raise TaskDataError("record row has no answer among its entities; check the data file")
    candidates = tuple("\n- " + query.replace("@placeholder", e) for e in entities)
    return Example(prompt=passage, candidates=candidates, label=golds[0], golds=golds)


_MISSING_RECORD = ("--data-dir has no ReCoRD files: put SuperGLUE's ReCoRD train.jsonl and "
                   "val.jsonl there, or drop --data-dir to load super_glue/record from the Hub")

CB = Task(name="cb", description="CB (SuperGLUE) 3-way entailment: 'Suppose ... Can we infer that ...?' -> Yes/No/Maybe",
          hub=("aps/super_glue", "cb"), hub_splits=HUB_SPLITS,
          files={"train": ("train.jsonl",), "eval": ("val.jsonl", "dev.jsonl")}, to_example=cb_example, num_dev=100)
WSC = Task(name="wsc", description="WSC (SuperGLUE, wsc.fixed) coreference: 'does the pronoun ... refer to ...?' -> No/Yes",
           hub=("aps/super_glue", "wsc.fixed"), hub_splits=HUB_SPLITS,
           files={"train": ("train.jsonl", "wsc_train.jsonl"), "eval": ("val.jsonl", "dev.jsonl")},
           to_example=wsc_example)
WIC = Task(name="wic", description="WiC (SuperGLUE) word sense: 'Does the word ... have the same meaning ...?' -> No/Yes",
           hub=("aps/super_glue", "wic"), hub_splits=HUB_SPLITS,
           files={"train": ("train.jsonl",), "eval": ("val.jsonl", "dev.jsonl")}, to_example=wic_example)
MULTIRC = Task(name="multirc", description="MultiRC (SuperGLUE) per answer: 'I found this answer ... Is that correct?' -> No/Yes",
               hub=("aps/super_glue", "multirc"), hub_splits=HUB_SPLITS,
               files={"train": ("train.jsonl",), "eval": ("val.jsonl", "dev.jsonl")}, to_example=multirc_example,
               flatten=multirc_flatten)
COPA = Task(name="copa", description="COPA (SuperGLUE) causal choice: '<premise> so/because' -> choice1/choice2 (LM loss)",
            hub=("aps/super_glue", "copa"), hub_splits=HUB_SPLITS,
            files={"train": ("train.jsonl",), "eval": ("val.jsonl", "dev.jsonl")}, to_example=copa_example,
            num_dev=100, objective="lm")
RECORD = Task(name="record", description="ReCoRD (SuperGLUE) cloze over passage entities (LM loss; gold = any answer)",
              hub=("aps/super_glue", "record"), hub_splits=HUB_SPLITS,
              files={"train": ("train.jsonl",), "eval": ("val.jsonl", "dev.jsonl")}, to_example=record_example,
              objective="lm", flatten=record_flatten, missing={"train": _MISSING_RECORD, "eval": _MISSING_RECORD})
