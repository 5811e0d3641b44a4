"""Custom classification tasks from a user's ``.jsonl`` or ``.csv`` file.

Example::

    zoft train --task custom --data-file train.jsonl --text-field sentence \\
        --label-field label --verbalizer '0=terrible,1=great' --template '{sentence} It was'

:func:`custom_task` reads and validates every row up front, so mistakes in the
flags or the data are reported before any model is loaded.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from zoft.tasks.base import Example, GenExample, Task, TaskDataError, read_table

_TEXT_FIELD_DEFAULTS = ("sentence", "text")
_SUFFIXES = (".jsonl", ".csv")


def parse_verbalizer(spec: str | None) -> tuple[tuple[str, str], ...]:
    """Parse ``"LABEL=word,LABEL=word"`` into ``((label, word), ...)`` in candidate order.

    Args:
        spec: The ``--verbalizer`` value. Entries are split on commas, then on the
            first ``=``; labels and words are stripped of surrounding whitespace.

    Returns:
        Pairs of (label text, label word); the position is the candidate index.

    Raises:
        TaskDataError: Missing spec, an entry without ``=``, an empty side, a
            repeated label, or fewer than two labels.
    """
    usage = "use e.g. --verbalizer '0=terrible,1=great'"
    if not spec or not spec.strip():
        raise TaskDataError(f"--verbalizer is required for --task custom; {usage}")
    pairs = []
    for entry in spec.split(","):
        label, sep, word = entry.partition("=")
        label, word = label.strip(), word.strip()
        if not sep or not label or not word:
            raise TaskDataError(f"--verbalizer entry {entry.strip()!r} is not LABEL=word; {usage}")
        if label in (seen for seen, _ in pairs):
            raise TaskDataError(f"--verbalizer lists label {label!r} twice; {usage}")
        pairs.append((label, word))
    if len(pairs) < 2:
        raise TaskDataError(f"--verbalizer needs at least two labels, got {len(pairs)}; {usage}")
    return tuple(pairs)


def template_fields(template: str) -> list[str]:
    """Return the record fields a ``str.format`` template refers to (root names, in order).

    Raises:
        TaskDataError: Invalid format syntax or a positional field such as ``{}``.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TaskDataError(f"--template {template!r} is not a valid format string ({exc}); write literal braces as {{{{ }}}}") from exc
    fields = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        # "{a.b}" and "{a[0]}" read record field "a".
        root = name.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise TaskDataError(f"--template {template!r} has a positional field {{{name}}}; name a column, e.g. {{sentence}}")
        if root not in fields:
            fields.append(root)
    return fields


def _label_index(value: Any, labels: tuple[str, ...]) -> int | None:
    """Find ``value`` among the verbalizer labels; booleans also match 1/0/true/false."""
    if isinstance(value, bool):
        wanted = {"true", "1"} if value else {"false", "0"}
        return next((i for i, label in enumerate(labels) if label.lower() in wanted), None)
    text = str(value).strip()
    return labels.index(text) if text in labels else None


def _fill(template: str, record: dict, where: str, file_name: str) -> str:
    """The prompt of `record`; a field the template reads that is null or absent is an error naming the row (it
    would otherwise become the text "None")."""
    for name in template_fields(template):
        if record.get(name) is None:
            state = "a null" if name in record else "no"
            raise TaskDataError(f"{where} of {file_name} has {state} '{name}' (read by the template); fill or drop "
                                "the row")
    try:
        return template.format_map(record)
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
        raise TaskDataError(f"{where} of {file_name} cannot fill --template {template!r} "
                            f"({type(exc).__name__}: {exc})") from exc


class _Converter:
    """Turns a custom record into an :class:`Example` (a class so errors can name the row)."""

    def __init__(self, template: str, label_field: str, verbalizer: tuple[tuple[str, str], ...]):
        self.template = template
        self.label_field = label_field
        self.labels = tuple(label for label, _ in verbalizer)
        self.words = tuple(word for _, word in verbalizer)

    def __call__(self, record: dict) -> Example:
        return self.convert(record, "a record", "the data file")

    def convert(self, record: dict, where: str, file_name: str) -> Example:
        """Convert ``record``; ``where`` (e.g. "row 3") and ``file_name`` go into error messages."""
        if self.label_field not in record:
            raise TaskDataError(f"{where} of {file_name} has no '{self.label_field}' field (--label-field); add it to every row")
        prompt = _fill(self.template, record, where, file_name)
        value = record[self.label_field]
        if value is None:
            raise TaskDataError(f"{where} of {file_name} has a null '{self.label_field}' (--label-field); fill or "
                                "drop the row")
        label = _label_index(value, self.labels)
        if label is None:
            raise TaskDataError(
                f"{where} of {file_name} has label {value!r}, which --verbalizer does not map "
                f"(labels: {', '.join(self.labels)}); add it to --verbalizer or drop the row"
            )
        # The candidate is appended directly to the prompt, so it needs its own separating space.
        prefix = "" if prompt[-1:].isspace() else " "
        return Example(prompt=prompt, candidates=tuple(prefix + word for word in self.words), label=label)


def _read_custom_file(path_arg: str | Path | tuple[Path, list[dict]], flag: str) -> tuple[Path, list[dict]]:
    """(resolved path, rows) of a custom data file; a pair already read is returned as it is (read once)."""
    if isinstance(path_arg, tuple):
        return path_arg
    path = Path(path_arg).expanduser()
    if path.suffix.lower() not in _SUFFIXES:
        raise TaskDataError(f"{flag} {path_arg}: unsupported file type '{path.suffix}'; use .jsonl or .csv (with a header row)")
    if not path.is_file():
        raise TaskDataError(f"{flag} {path_arg}: no such file")
    records = read_table(path, flag)
    if not records:
        raise TaskDataError(f"{flag} {path_arg}: file has no data rows")
    return path.resolve(), records


def _require_column(name: str, flag: str, columns: list[str], file_name: str) -> None:
    if name not in columns:
        raise TaskDataError(f"{flag} {name!r} is not a column of {file_name}; available columns: {', '.join(sorted(columns))}")


def _resolve_text_field(text_field: str | None, template: str | None, columns: list[str], file_name: str) -> str | None:
    """Validate ``--text-field``, or pick the default when the template needs one."""
    if text_field is not None:
        _require_column(text_field, "--text-field", columns, file_name)
        return text_field
    if template is not None:
        return None
    for candidate in _TEXT_FIELD_DEFAULTS:
        if candidate in columns:
            return candidate
    raise TaskDataError(
        f"{file_name} has no 'sentence' or 'text' column; pass --text-field or --template; "
        f"available columns: {', '.join(sorted(columns))}"
    )


def _validate_rows(converter: _Converter, records: list[dict], path: Path) -> None:
    """Convert every row now: a bad label in row 9,000 should fail before the model loads. Errors name the data
    row of a CSV file and the line of a JSONL file (blank lines are skipped when reading, so count them here)."""
    if path.suffix.lower() == ".jsonl":
        lines = [n for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1) if line.strip()]
        places = [f"line {n}" for n in lines]
    else:
        places = [f"data row {n}" for n in range(1, len(records) + 1)]
    for place, record in zip(places, records):
        converter.convert(record, place, path.name)


def custom_task(
    data_file: str | Path | tuple[Path, list[dict]],
    text_field: str | None = None,
    label_field: str = "label",
    verbalizer: str | None = None,
    template: str | None = None,
    eval_file: str | Path | None = None,
) -> Task:
    """Build a classification task from a ``.jsonl`` or ``.csv`` (header row) file.

    The prompt is ``template.format_map(record)``; candidate ``i`` is the
    ``i``-th verbalizer word, with a leading space unless the prompt already ends
    in whitespace. Labels are compared as text (``str(value)``); JSON booleans
    also match ``1``/``0``/``true``/``false`` (any case).

    Splits: train and dev are sampled from ``data_file`` with the MeZO protocol.
    Eval comes from ``eval_file`` when given; otherwise it is the rows of
    ``data_file`` not used for train/dev (the first ``num_eval`` of the leftover
    seeded permutation), so nothing is scored twice. ``data_dir`` and the Hub
    do not apply: :func:`~zoft.tasks.base.load_splits` reads the files given here.

    Args:
        data_file: Training rows (``--data-file``).
        text_field: Text column (``--text-field``); default: the first of
            ``sentence``, ``text`` present. Only used for the default template.
        label_field: Label column (``--label-field``).
        verbalizer: ``"LABEL=word,LABEL=word"`` (``--verbalizer``), required.
        template: ``str.format`` template over the record fields (``--template``);
            default ``"{<text_field>}"``.
        eval_file: Optional evaluation rows (``--eval-file``), same columns.

    Returns:
        A :class:`Task` named ``"custom"``; its records are already read and validated.

    Raises:
        TaskDataError: Any problem with the flags or the files (one-line message).
    """
    pairs = parse_verbalizer(verbalizer)
    train_path, train_records = _read_custom_file(data_file, "--data-file")
    eval_path, eval_records = _read_custom_file(eval_file, "--eval-file") if eval_file is not None else (None, None)
    columns = list(train_records[0])
    text_field = _resolve_text_field(text_field, template, columns, train_path.name)
    template = template if template is not None else "{" + text_field + "}"
    _require_column(label_field, "--label-field", columns, train_path.name)
    for name in template_fields(template):
        _require_column(name, "--template field", columns, train_path.name)

    converter = _Converter(template, label_field, pairs)
    return _file_task(f"custom task from {train_path.name}: {template!r} -> {', '.join(w for _, w in pairs)}",
                      converter, (train_path, train_records), (eval_path, eval_records))


def _file_task(description: str, converter, train: tuple[Path, list[dict]],
               evaluation: tuple[Path | None, list[dict] | None], **task_fields) -> Task:
    """A custom Task over records already read: every row converted once now (errors name the row), eval from
    the eval file or from the train rows the sample leaves."""
    (train_path, train_records), (eval_path, eval_records) = train, evaluation
    _validate_rows(converter, train_records, train_path)
    if eval_path is not None:
        _validate_rows(converter, eval_records, eval_path)

    def records_loader(split: str) -> tuple[list[dict], str]:
        if split == "eval" and eval_path is not None:
            return eval_records, f"file {eval_path}"
        return train_records, f"file {train_path}"

    return Task(
        name="custom",
        description=description,
        hub=("", None),
        hub_splits={},
        files={"train": (str(train_path),), "eval": (str(eval_path or train_path),)},
        to_example=converter,
        records_loader=records_loader,
        eval_from_train=eval_path is None,
        **task_fields,
    )


class _GenConverter:
    """Turns a custom record into a :class:`GenExample`: prompt from the template, target from a column."""

    def __init__(self, template: str, target_field: str):
        self.template, self.target_field = template, target_field

    def __call__(self, record: dict) -> GenExample:
        return self.convert(record, "a record", "the data file")

    def convert(self, record: dict, where: str, file_name: str) -> GenExample:
        prompt = _fill(self.template, record, where, file_name)
        value = record.get(self.target_field)
        target = "" if value is None else str(value).strip()
        if not target:
            raise TaskDataError(f"{where} of {file_name} has an empty '{self.target_field}' (--target-field); fill or drop the row")
        # Like SQuAD's " {answer}\n": a separating space, and a newline that teaches the model where to stop.
        prefix = "" if prompt[-1:].isspace() else " "
        return GenExample(prompt=prompt, target=f"{prefix}{target}\n", answers=(target,))


def custom_generation_task(
    data_file: str | Path,
    prompt_field: str | None = None,
    target_field: str = "target",
    template: str | None = None,
    eval_file: str | Path | None = None,
) -> Task:
    """Build a generation task from a ``.jsonl`` or ``.csv`` file with prompt and target columns.

    The prompt is ``template.format_map(record)`` (default ``"{<prompt_field>}"``, prompt_field default
    ``prompt``); the model is trained on `` {target}\\n`` (token cross-entropy) and evaluated by greedy decoding,
    token F1 and exact match against the target, as SQuAD is. Splits follow :func:`custom_task`.

    Raises:
        TaskDataError: Any problem with the flags or the files (one-line message).
    """
    train_path, train_records = _read_custom_file(data_file, "--data-file")
    eval_path, eval_records = _read_custom_file(eval_file, "--eval-file") if eval_file is not None else (None, None)
    columns = list(train_records[0])
    if template is None:
        prompt_field = prompt_field or "prompt"
        _require_column(prompt_field, "--prompt-field", columns, train_path.name)
        template = "{" + prompt_field + "}"
    elif prompt_field is not None:
        _require_column(prompt_field, "--prompt-field", columns, train_path.name)
    _require_column(target_field, "--target-field", columns, train_path.name)
    for name in template_fields(template):
        _require_column(name, "--template field", columns, train_path.name)
    converter = _GenConverter(template, target_field)
    return _file_task(f"custom generation task from {train_path.name}: {template!r} -> {target_field}", converter,
                      (train_path, train_records), (eval_path, eval_records), metric="f1", objective="generation")


# -- chat and instruction data -----------------------------------------------------------------------------------
#: Alpaca's prompt (Taori et al. 2023), with and without its input paragraph
ALPACA_PROMPT = ("Below is an instruction that describes a task{paired}. Write a response that appropriately "
                 "completes the request.\n\n### Instruction:\n{instruction}\n\n{input}### Response:\n")
CHAT_ROLES = ("system", "user", "assistant")


def read_custom_file(path_arg: str | Path, flag: str = "--data-file") -> tuple[Path, list[dict]]:
    """A custom data file's (resolved path, rows), to look at its format and build its task from one read."""
    return _read_custom_file(path_arg, flag)


def data_format(source: str | Path | tuple[Path, list[dict]]) -> str | None:
    """"messages" for chat rows (a `messages` list of role/content turns), "instruction" for Alpaca-style
    instruction/input/output rows, None for anything else (classification or prompt/target columns). `source` is a
    path or the pair `read_custom_file` returned."""
    _, records = _read_custom_file(source, "--data-file")
    columns = set(records[0])
    if "messages" in columns:
        return "messages"
    if {"instruction", "output"} <= columns:
        return "instruction"
    return None


class _ChatConverter:
    """A `messages` row as a generation example: the prompt is every turn but the last, through the tokenizer's chat
    template with the assistant's header; the target is the rest of the templated conversation (the last assistant
    turn with the template's end-of-turn), so the loss falls on the assistant turn only."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, record: dict) -> GenExample:
        return self.convert(record, "a record", "the data file")

    def convert(self, record: dict, where: str, file_name: str) -> GenExample:
        messages = record.get("messages")
        if not isinstance(messages, list) or len(messages) < 2:
            raise TaskDataError(f"{where} of {file_name}: 'messages' must be a list of at least two turns (a user "
                                "turn and the assistant's answer)")
        for turn in messages:
            if not (isinstance(turn, dict) and turn.get("role") in CHAT_ROLES and isinstance(turn.get("content"), str)):
                raise TaskDataError(f"{where} of {file_name}: every turn needs a role ({', '.join(CHAT_ROLES)}) and "
                                    f"a text content; got {str(turn)[:80]}")
        if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            raise TaskDataError(f"{where} of {file_name}: the last turn must be a non-empty assistant turn (the one "
                                "zoft trains on)")
        prompt = self.tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template(messages, tokenize=False)
        answer = messages[-1]["content"].strip()
        target = full[len(prompt):] if full.startswith(prompt) else answer + "\n"
        return GenExample(prompt=prompt, target=target, answers=(answer,))


class _InstructionConverter:
    """An Alpaca-style instruction/input/output row as a generation example with Alpaca's prompt."""

    def __call__(self, record: dict) -> GenExample:
        return self.convert(record, "a record", "the data file")

    def convert(self, record: dict, where: str, file_name: str) -> GenExample:
        instruction = str(record.get("instruction") or "").strip()
        output = str(record.get("output") or "").strip()
        if not instruction or not output:
            raise TaskDataError(f"{where} of {file_name} has an empty 'instruction' or 'output'; fill or drop the row")
        extra = str(record.get("input") or "").strip()
        prompt = ALPACA_PROMPT.format(paired=", paired with an input that provides further context" if extra else "",
                                      instruction=instruction, input=f"### Input:\n{extra}\n\n" if extra else "")
        return GenExample(prompt=prompt, target=f"{output}\n", answers=(output,))


def custom_chat_task(data_file: str | Path | tuple[Path, list[dict]], tokenizer,
                     eval_file: str | Path | None = None) -> Task:
    """A generation task from chat rows (`{"messages": [{"role": "user", "content": ...}, {"role": "assistant",
    ...}]}`), formatted by `tokenizer`'s chat template; trained on the last assistant turn, evaluated like SQuAD
    (greedy decoding, token F1 / exact match against that turn's text).

    Raises:
        TaskDataError: The tokenizer has no chat template, or a row is malformed (naming it).
    """
    train = _read_custom_file(data_file, "--data-file")
    if not getattr(tokenizer, "chat_template", None):
        raise TaskDataError(f"--data-file {train[0].name} holds chat 'messages', but the model's tokenizer "
                            "has no chat template; use a chat model, or prompt/target columns (--prompt-field, "
                            "--target-field)")
    evaluation = _read_custom_file(eval_file, "--eval-file") if eval_file is not None else (None, None)
    return _file_task(f"custom chat task from {train[0].name}: the last assistant turn", _ChatConverter(tokenizer),
                      train, evaluation, metric="f1", objective="generation")


def custom_instruction_task(data_file: str | Path | tuple[Path, list[dict]],
                            eval_file: str | Path | None = None) -> Task:
    """A generation task from Alpaca-style rows (instruction, optional input, output) with Alpaca's prompt."""
    train = _read_custom_file(data_file, "--data-file")
    evaluation = _read_custom_file(eval_file, "--eval-file") if eval_file is not None else (None, None)
    return _file_task(f"custom instruction task from {train[0].name}: instruction/input -> output",
                      _InstructionConverter(), train, evaluation, metric="f1", objective="generation")
