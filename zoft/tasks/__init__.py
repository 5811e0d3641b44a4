"""Tasks: prompts, data loading and the MeZO train/dev/eval sampling protocol.

Typical use::

    from zoft.tasks import get_task, load_splits
    splits = load_splits(get_task("sst2"), data_dir=None, num_train=1000, seed=0)

``TASKS`` holds the built-in tasks; custom tasks are built with :func:`custom_task`.
"""

from __future__ import annotations

from zoft.tasks.base import (
    BUILTIN,
    Example,
    GenExample,
    Splits,
    Task,
    TaskDataError,
    load_records,
    load_splits,
    read_records,
    read_table,
    sample_splits,
)
from zoft.tasks.custom import custom_task, parse_verbalizer
from zoft.tasks.glue import BOOLQ, RTE, SST2
from zoft.tasks.lmbff import MNLI, SNLI, SST5, TREC
from zoft.tasks.qa import DROP, SQUAD
from zoft.tasks.superglue import CB, COPA, MULTIRC, RECORD, WIC, WSC

#: MeZO's eleven OPT tasks (Table 1 order), then the RoBERTa-set tasks
TASKS: dict[str, Task] = {task.name: task for task in (SST2, RTE, CB, BOOLQ, WSC, WIC, MULTIRC, COPA, RECORD, SQUAD,
                                                       DROP, SST5, SNLI, MNLI, TREC)}


def get_task(name: str) -> Task:
    """Return the registered task called ``name`` (case-insensitive).

    Raises:
        ValueError: Unknown name, or ``"custom"``, which needs files and is built
            with :func:`custom_task` instead.
    """
    key = name.strip().lower()
    if key in TASKS:
        return TASKS[key]
    if key == "custom":
        raise ValueError("task 'custom' is built from files: pass --data-file and --verbalizer (custom_task(...))")
    raise ValueError(f"unknown task {name!r}; choose from: {', '.join(sorted(TASKS))}, custom")


__all__ = [
    "BUILTIN",
    "TASKS",
    "Example",
    "GenExample",
    "Splits",
    "Task",
    "TaskDataError",
    "custom_task",
    "get_task",
    "load_records",
    "load_splits",
    "parse_verbalizer",
    "read_records",
    "read_table",
    "sample_splits",
]
