"""Task model, data readers and the MeZO sampling protocol (docs/algorithms.md, "Sampling").

A :class:`Task` turns raw records (Hub rows or rows read from files) into
:class:`Example` objects: a prompt plus the candidate continuations scored by
the model. :func:`load_splits` is the one entry point the trainer needs: it
finds the records (Hub, a ``--data-dir`` folder or the built-in sample) and
samples train/dev/eval with a seeded permutation.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)

#: ``data_dir`` value that selects the sample shipped inside the package.
BUILTIN = "builtin"

_PACKAGE_DIR = Path(__file__).resolve().parent
_SPLITS = ("train", "eval")


class TaskDataError(ValueError):
    """A data problem the user can fix; the message is one line naming the file/flag/field."""


@dataclass(frozen=True)
class Example:
    """One classification or multiple-choice example.

    Attributes:
        prompt: Text before the candidate, rendered from the task template.
        candidates: Continuations appended to ``prompt``, in label order.
        label: Index of the gold candidate (the one trained on).
        golds: Every candidate counted correct at evaluation (ReCoRD: any entity in
            ``answers``); empty means ``(label,)``.
    """

    prompt: str
    candidates: tuple[str, ...]
    label: int
    golds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Catch converter bugs at construction instead of as a silent wrong metric.
        if not 0 <= self.label < len(self.candidates):
            raise ValueError(f"label {self.label} out of range for {len(self.candidates)} candidates")
        if any(not 0 <= g < len(self.candidates) for g in self.golds):
            raise ValueError(f"golds {self.golds} out of range for {len(self.candidates)} candidates")

    @property
    def correct(self) -> tuple[int, ...]:
        return self.golds or (self.label,)

    def demonstration(self) -> str:
        """The example as an in-context demonstration: prompt + gold candidate, stripped (MeZO's ICL format)."""
        return (self.prompt + self.candidates[self.label]).strip()


@dataclass(frozen=True)
class GenExample:
    """One generation example (SQuAD, DROP, custom prompt/target).

    Attributes:
        prompt: Text the model continues.
        target: The trained continuation (MeZO: ``" " + answers[0] + "\n"``).
        answers: Gold answers; evaluation takes the best token F1 / exact match over them.
    """

    prompt: str
    target: str
    answers: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.answers:
            raise ValueError("a generation example needs at least one gold answer")

    def demonstration(self) -> str:
        return (self.prompt + self.target).strip()


@dataclass(frozen=True)
class Task:
    """Static description of a task.

    Attributes:
        name: Registry key, e.g. ``"sst2"``.
        description: One line for ``zoft list``.
        hub: ``(path, name)`` for ``datasets.load_dataset``; ``("", None)`` for custom tasks.
        hub_splits: Hub split name per zoft split (``"train"``, ``"eval"``).
        files: Accepted file names in ``--data-dir`` per split; the first existing one wins.
        to_example: Converts a raw record (Hub or file layout) into an :class:`Example`.
        num_dev: Default dev-set size (MeZO: 500; CB/COPA: 100).
        builtin_dir: Package-relative folder of a shipped sample, or ``None``.
        metric: Evaluation metric name: ``accuracy`` or ``f1`` (generation).
        objective: Training loss with ``--objective ce``: ``classification`` (cross-entropy
            over the candidates' mean log-probs), ``lm`` (token cross-entropy on the gold
            candidate only: COPA, ReCoRD) or ``generation`` (token cross-entropy on the target).
        flatten: Turns the records of a split as read (nested file layouts such as
            MultiRC's paragraphs or SQuAD's articles, or Hub rows) into one flat record
            per example; ``None`` keeps them.
        missing: Per split, what to say when its file is not in ``--data-dir`` (a split
            that is often missing from local copies: where to get it, or to use the Hub).
        records_loader: If set, ``load_records`` calls ``records_loader(split)`` and
            ignores ``data_dir`` (custom tasks, whose files are fixed at construction).
        eval_from_train: If true, the eval split is drawn from the train records not
            used for train/dev instead of from a separate eval split.
    """

    name: str
    description: str
    hub: tuple[str, str | None]
    hub_splits: dict[str, str]
    files: dict[str, tuple[str, ...]]
    to_example: Callable[[dict], Example]
    num_dev: int = 500
    builtin_dir: str | None = None
    metric: str = "accuracy"
    records_loader: Callable[[str], tuple[list[dict], str]] | None = field(default=None, repr=False)
    eval_from_train: bool = False
    objective: str = "classification"
    flatten: Callable[[list[dict]], list[dict]] | None = field(default=None, repr=False)
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def generation(self) -> bool:
        return self.objective == "generation"


@dataclass
class Splits:
    """Sampled examples plus a human-readable description of where they came from."""

    train: list[Example | GenExample]
    dev: list[Example | GenExample]
    eval: list[Example | GenExample]
    source: str

    def digests(self) -> dict[str, str]:
        """SHA-256 of each split's examples (prompts, candidates, labels): a resume checks that it reads the data
        the run was trained on."""
        import dataclasses
        import hashlib

        out = {}
        for name in ("train", "dev", "eval"):
            h = hashlib.sha256()
            for example in getattr(self, name):
                h.update(json.dumps(dataclasses.asdict(example), sort_keys=True, ensure_ascii=False).encode())
                h.update(b"\n")
            out[name] = h.hexdigest()
        return out


# ---------------------------------------------------------------------------
# File readers
# ---------------------------------------------------------------------------


def read_table(path: str | Path, flag: str = "--data-dir") -> list[dict]:
    """Read a ``.tsv``, ``.csv``, ``.jsonl``, ``.json``, ``.txt`` or single-file ``.zip`` into a list of dicts.

    Args:
        path: File to read; the format is chosen by extension (a ``.zip`` by the
            extension of the one file inside, e.g. SQuAD's ``dev-v1.1.json.zip``).
        flag: CLI flag named in error messages.

    Returns:
        One dict per data row (TSV/CSV: keyed by the header; values are strings).
        A ``.json`` file gives its list of objects, or ``[object]`` for a top-level
        object (SQuAD/DROP layouts, which the task's ``flatten`` unpacks). A ``.txt``
        file gives ``{"line": text}`` per non-empty line (TREC's layout).

    Raises:
        TaskDataError: Unsupported extension, undecodable text or malformed rows.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".zip":
            return _read_zip(path, flag)
        suffix = path.suffix.lower()
        if suffix not in _READERS:
            raise TaskDataError(f"{flag} {path}: unsupported file type '{path.suffix}'; use .jsonl, .csv or .tsv")
        return _READERS[suffix](path.read_bytes().decode("utf-8-sig"), path)
    except UnicodeDecodeError as exc:
        raise TaskDataError(f"{flag} {path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8") from exc


def _read_zip(path: Path, flag: str) -> list[dict]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1 or Path(members[0]).suffix.lower() not in _READERS:
                raise TaskDataError(f"{flag} {path}: expected a zip holding one .json/.jsonl/.tsv/.csv file, "
                                    f"found {', '.join(members) or 'nothing'}")
            text = archive.read(members[0]).decode("utf-8-sig")
    except zipfile.BadZipFile as exc:
        raise TaskDataError(f"{flag} {path}: not a valid zip archive ({exc}); download it again") from exc
    return _READERS[Path(members[0]).suffix.lower()](text, path / members[0])


def _read_jsonl(text: str, path: Path) -> list[dict]:
    # text was decoded as utf-8-sig: a byte-order mark, which json.loads rejects on line 1, is already gone.
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskDataError(f"{path}: line {lineno} is not valid JSON ({exc.msg}); write one JSON object per line") from exc
        if not isinstance(record, dict):
            raise TaskDataError(f"{path}: line {lineno} is a JSON {type(record).__name__}, not an object; write one JSON object per line")
        records.append(record)
    return records


def _read_json(text: str, path: Path) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskDataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from exc
    rows = data if isinstance(data, list) else [data]
    if not all(isinstance(r, dict) for r in rows):
        raise TaskDataError(f"{path}: expected a JSON object or a list of objects")
    return rows


def _read_lines(text: str, path: Path) -> list[dict]:
    return [{"line": line} for line in text.splitlines() if line.strip()]


def _read_tsv(text: str, path: Path) -> list[dict]:
    # GLUE TSVs are unquoted: quote characters inside sentences are literal text.
    return _read_delimited(text, path, delimiter="\t", quoting=csv.QUOTE_NONE)


def _read_csv(text: str, path: Path) -> list[dict]:
    return _read_delimited(text, path, delimiter=",", quoting=csv.QUOTE_MINIMAL)


def _read_delimited(text: str, path: Path, delimiter: str, quoting: int) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    if not reader.fieldnames:
        raise TaskDataError(f"{path}: file is empty; it needs a header row naming the columns")
    records = []
    for row_number, row in enumerate(reader, 1):
        # DictReader stores surplus cells under None and fills short rows with None.
        if None in row.values():
            raise TaskDataError(
                f"{path}: data row {row_number} (line {row_number + 1}) has fewer cells than the header "
                f"({len(reader.fieldnames)}); fix that row"
            )
        if None in row:
            # GLUE SNLI/MNLI tsv: rows with five annotator labels run past the header, and gold_label is
            # always the last cell (LM-BFF reads line[-1]); anywhere else a long row is a broken row.
            if reader.fieldnames[-1] != "gold_label":
                raise TaskDataError(
                    f"{path}: data row {row_number} (line {row_number + 1}) has more cells than the header "
                    f"({len(reader.fieldnames)}); fix that row"
                )
            row["gold_label"] = row.pop(None)[-1]
        records.append(row)
    return records


_READERS = {".tsv": _read_tsv, ".csv": _read_csv, ".jsonl": _read_jsonl, ".json": _read_json, ".txt": _read_lines}


# ---------------------------------------------------------------------------
# Locating records
# ---------------------------------------------------------------------------


def read_records(task: Task, split: str, data_dir: str | Path) -> list[dict]:
    """Read one split of ``task`` from a folder.

    Args:
        task: The task; ``task.files[split]`` lists accepted file names.
        split: ``"train"`` or ``"eval"``.
        data_dir: Folder holding the files.

    Returns:
        The raw records of the first accepted file that exists.

    Raises:
        TaskDataError: The folder is missing or holds none of the accepted files.
    """
    _check_split(split)
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise TaskDataError(f"--data-dir {data_dir}: no such directory; pass a folder containing {_files_hint(task)}")
    names = task.files[split]
    for name in names:
        path = directory / name
        if path.is_file():
            return read_table(path)
    hint = f" ({task.missing[split]})" if split in task.missing else ""
    raise TaskDataError(f"--data-dir {data_dir}: no {split} file for task {task.name}; expected one of "
                        f"{', '.join(names)} in that folder{hint}")


def load_records(task: Task, split: str, data_dir: str | Path | None) -> tuple[list[dict], str]:
    """Load the raw records of one split.

    Args:
        task: The task.
        split: ``"train"`` or ``"eval"``.
        data_dir: ``None`` for the Hugging Face Hub (falling back to the built-in
            sample, with a warning, when the Hub fails and the task has one);
            ``"builtin"`` for the shipped sample; otherwise a folder of files.
            Ignored by tasks with a ``records_loader`` (custom tasks).

    Returns:
        ``(records, source)`` where ``source`` describes where the rows came from.

    Raises:
        TaskDataError: The data cannot be found or read.
    """
    records, source, _ = _load_records(task, split, data_dir)
    return records, source


def _load_records(task: Task, split: str, data_dir: str | Path | None) -> tuple[list[dict], str, str]:
    """Like :func:`load_records` but also returns the kind: hub, builtin, files or custom."""
    _check_split(split)
    if task.records_loader is not None:
        records, source = task.records_loader(split)
        return records, source, "custom"
    if data_dir is None:
        records, source, kind = _load_hub_or_builtin(task, split)
    elif str(data_dir) == BUILTIN:
        records, source, kind = _load_builtin(task, split), _builtin_source(task), "builtin"
    else:
        records, source, kind = read_records(task, split, data_dir), f"files {Path(data_dir).expanduser().resolve()}", "files"
    return _flat(task, records, source), source, kind


def _flat(task: Task, records: list[dict], source: str) -> list[dict]:
    if task.flatten is None:
        return records
    try:
        return task.flatten(records)
    except (KeyError, TypeError, AttributeError) as exc:
        raise TaskDataError(f"task {task.name}: {source} is not in a layout zoft reads ({type(exc).__name__}: {exc}); "
                            f"see `zoft list` for the expected files") from exc


def _load_hub_or_builtin(task: Task, split: str) -> tuple[list[dict], str, str]:
    hub_name = "/".join(part for part in task.hub if part)
    try:
        # Imported here so the package (and `zoft list`) works without `datasets` installed.
        import datasets

        dataset = datasets.load_dataset(task.hub[0], task.hub[1], split=task.hub_splits[split])
        return dataset.to_list(), f"hub {hub_name}", "hub"
    except Exception as exc:  # noqa: BLE001 - any Hub failure (offline, auth, missing package) has the same remedy
        reason = _short_reason(exc)
    if task.builtin_dir is None:
        raise TaskDataError(
            f"could not load {hub_name} from the Hugging Face Hub ({reason}); pass --data-dir DIR containing {_files_hint(task)}"
        )
    logger.warning(
        "could not load %s from the Hugging Face Hub (%s); using the built-in %s sample %s "
        "(pass --data-dir DIR for the full data)",
        hub_name, reason, task.name, _builtin_display(task),
    )
    return _load_builtin(task, split), _builtin_source(task), "builtin"


def _load_builtin(task: Task, split: str) -> list[dict]:
    if task.builtin_dir is None:
        # Imported lazily: the registry imports this module.
        from zoft.tasks import TASKS

        having = ", ".join(sorted(name for name, t in TASKS.items() if t.builtin_dir)) or "none"
        raise TaskDataError(
            f"--data-dir builtin: task {task.name} has no built-in sample (tasks with one: {having}); "
            f"pass --data-dir DIR containing {_files_hint(task)}"
        )
    return read_records(task, split, _PACKAGE_DIR / task.builtin_dir)


def _builtin_display(task: Task) -> str:
    return f"zoft/tasks/{task.builtin_dir}"


def _builtin_source(task: Task) -> str:
    return f"builtin sample {_builtin_display(task)}"


def _files_hint(task: Task) -> str:
    """E.g. 'train.tsv (or train_full.tsv) and dev.tsv'."""
    parts = []
    for split in _SPLITS:
        first, *others = task.files[split]
        parts.append(f"{first} (or {', '.join(others)})" if others else first)
    return " and ".join(parts)


def _short_reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------


def sample_splits(
    train_records: list[dict],
    eval_records: list[dict],
    task: Task,
    num_train: int = 1000,
    num_dev: int | None = None,
    num_eval: int = 1000,
    seed: int = 0,
    source: str = "in-memory records",
    per_label: bool = False,
) -> Splits:
    """Sample train/dev/eval with the MeZO protocol (docs/algorithms.md, "Sampling").

    ``perm = RandomState(seed).permutation(len(train_records))``; the first
    ``num_train + num_dev`` indices are used (all if fewer), the last ``num_dev``
    of them form dev and the rest train. Eval is
    ``RandomState(seed).permutation(len(eval_records))[:num_eval]``. For tasks with
    ``eval_from_train`` the eval set is instead the first ``num_eval`` train records
    left over after ``perm[:num_train + num_dev]``, and ``eval_records`` is ignored.

    Args:
        train_records: Raw records of the train split.
        eval_records: Raw records of the eval (validation) split.
        task: Converts records to examples and supplies the default ``num_dev``.
        num_train: Train examples wanted.
        num_dev: Dev examples wanted; ``None`` means ``task.num_dev``.
        num_eval: Eval examples wanted.
        seed: Permutation seed (MeZO ``train_set_seed``).
        source: Copied to :attr:`Splits.source`.
        per_label: k-shot sampling (RoBERTa experiments, LM-BFF): walk the same
            permutation and give each label its first ``num_train`` examples for
            train and its next ``num_dev`` for dev (``num_dev`` ``None`` → ``num_train``).

    Returns:
        The sampled :class:`Splits`.

    Raises:
        TaskDataError: Negative sizes, an empty train set, or no rows left for eval.
    """
    if per_label:
        num_dev = num_train if num_dev is None else num_dev
    num_dev = task.num_dev if num_dev is None else num_dev
    for flag, value in (("--num-train", num_train), ("--num-dev", num_dev), ("--num-eval", num_eval)):
        if value < 0:
            raise TaskDataError(f"{flag} must be >= 0, got {value}")
    perm = np.random.RandomState(seed).permutation(len(train_records))
    if per_label:
        return _sample_per_label(train_records, eval_records, task, perm, num_train, num_dev, num_eval, seed, source)
    used = perm[: num_train + num_dev]
    cut = max(len(used) - num_dev, 0)
    if cut == 0:
        raise TaskDataError(
            f"no train examples: task {task.name} has {len(train_records)} train rows and --num-dev {num_dev} "
            f"takes them all; lower --num-dev or raise --num-train"
        )
    if task.eval_from_train:
        eval_indices, eval_pool = perm[len(used):][:num_eval], train_records
        if num_eval and len(eval_indices) == 0:
            raise TaskDataError(
                f"no rows of {task.files['train'][0]} are left for evaluation after --num-train {num_train} "
                f"and --num-dev {num_dev}; lower them or pass --eval-file"
            )
    else:
        eval_indices, eval_pool = np.random.RandomState(seed).permutation(len(eval_records))[:num_eval], eval_records
    return Splits(
        train=_convert(task, train_records, used[:cut], "train"),
        dev=_convert(task, train_records, used[cut:], "train"),
        eval=_convert(task, eval_pool, eval_indices, "eval" if not task.eval_from_train else "train"),
        source=source,
    )


def _sample_per_label(train_records, eval_records, task: Task, perm, k_train: int, k_dev: int, num_eval: int,
                      seed: int, source: str) -> Splits:
    if task.generation:
        raise TaskDataError(f"--per-label: task {task.name} is a generation task and has no labels; drop --per-label")
    train, dev, counts, used = [], [], {}, set()
    for index in perm:
        ex = _convert(task, train_records, [index], "train")[0]
        n = counts.get(ex.label, 0)
        if n < k_train + k_dev:
            (train if n < k_train else dev).append(ex)
            used.add(int(index))
        counts[ex.label] = n + 1
    if not train:
        raise TaskDataError(f"--per-label: no train examples for task {task.name}; raise --num-train")
    short = {label: n for label, n in counts.items() if n < k_train + k_dev}
    if short:
        logger.warning("--per-label: labels %s have fewer than %d train+dev examples", sorted(short), k_train + k_dev)
    if task.eval_from_train:  # custom task without --eval-file: score rows the sample did not take
        eval_pool, eval_indices = train_records, [i for i in perm if int(i) not in used][:num_eval]
    else:
        eval_pool, eval_indices = eval_records, np.random.RandomState(seed).permutation(len(eval_records))[:num_eval]
    return Splits(train=train, dev=dev, eval=_convert(task, eval_pool, eval_indices, "eval"),
                  source=source + f"; {k_train} train / {k_dev} dev per label")


def _convert(task: Task, records: list[dict], indices: Any, split: str) -> list[Example | GenExample]:
    examples = []
    for index in indices:
        try:
            examples.append(task.to_example(records[int(index)]))
        except TaskDataError as exc:
            # Say which record broke; the converter only sees the record itself.
            raise TaskDataError(f"task {task.name}, {split} record {int(index) + 1}: {exc}") from exc
    return examples


def load_splits(
    task: Task,
    data_dir: str | Path | None = None,
    num_train: int = 1000,
    num_dev: int | None = None,
    num_eval: int = 1000,
    seed: int = 0,
    per_label: bool = False,
    eval_file: str | Path | None = None,
) -> Splits:
    """Load a task's records and sample train/dev/eval.

    Both splits come from the same place: if the Hub fails for train and the
    built-in sample is used, eval also comes from the built-in sample.

    Args:
        task: The task.
        data_dir: See :func:`load_records`.
        num_train: Train examples wanted (all available if fewer).
        num_dev: Dev examples wanted; ``None`` means ``task.num_dev``.
        num_eval: Eval examples wanted (all available if fewer).
        seed: Sampling seed.
        per_label: ``num_train``/``num_dev`` count examples per label (k-shot, RoBERTa protocol).
        eval_file: A file to evaluate on instead of the task's eval split (e.g. the full
            SNLI dev set beside an LM-BFF k-shot ``--data-dir``); same layouts as the split.

    Returns:
        The sampled :class:`Splits`; ``source`` says where the data came from.

    Raises:
        TaskDataError: The data cannot be found, read or sampled.
    """
    train_records, train_source, kind = _load_records(task, "train", data_dir)
    if eval_file is not None and task.records_loader is None:
        path = Path(eval_file).expanduser()
        if not path.is_file():
            raise TaskDataError(f"--eval-file {eval_file}: no such file")
        eval_source = f"file {path.resolve()}"
        eval_records = _flat(task, read_table(path, "--eval-file"), eval_source)
    else:
        eval_dir = BUILTIN if kind == "builtin" else data_dir
        eval_records, eval_source, _ = _load_records(task, "eval", eval_dir)
    source = train_source if eval_source == train_source else f"{train_source} (train), {eval_source} (eval)"
    if kind == "builtin":
        source += f" ({len(train_records):,} train rows)"
    if task.eval_from_train:
        source += "; eval = rows not used for train/dev"
    if not train_records:
        raise TaskDataError(f"task {task.name}: {train_source} has no train rows; check the file")
    return sample_splits(train_records, eval_records, task, num_train, num_dev, num_eval, seed, source=source,
                         per_label=per_label)


# -- helpers the task converters share ----------------------------------------------------------------------
#: the Hub's split names for zoft's train/eval splits
HUB_SPLITS = {"train": "train", "eval": "validation"}


def record_field(record: dict, names: tuple[str, ...], task: str) -> Any:
    """Return the first of ``names`` present in ``record`` (layouts differ between Hub and files); a null value
    is an error (it would become the text "None")."""
    for name in names:
        if name in record:
            if record[name] is None:
                raise TaskDataError(f"{task} record has a null '{name}'; fill or drop the record")
            return record[name]
    raise TaskDataError(
        f"{task} record has no '{names[0]}' field (fields: {', '.join(map(str, record))}); check the data file format"
    )


def label_index(value: Any, mapping: dict[str, int], task: str) -> int:
    """Map a raw label (int, bool or string) to a candidate index via its lower-cased text."""
    key = str(value).strip().lower()
    if key not in mapping:
        raise TaskDataError(f"{task} label {value!r} is not one of {', '.join(sorted(mapping))}; check the data file")
    return mapping[key]
