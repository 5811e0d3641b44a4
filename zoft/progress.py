"""Progress for `zoft train`: a Rich bar on a terminal, one plain line per log interval elsewhere.

Cluster logs and CI capture stderr into files, where a redrawn bar becomes thousands of lines of noise, so off a
terminal the bar is replaced by lines like `step 120/20000 | loss 0.4321 | lr 1.0e-06 | 3.2 it/s | eta 1:42:10`.
"""

from __future__ import annotations

import datetime
import errno
import os
import sys
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text


class SafeStream:
    """stdout or stderr that a closed reader cannot break: `zoft train ... | head -3` must still finish, save and
    write its files. On the first broken pipe (or EIO, a terminal gone away) the file descriptor is pointed at
    /dev/null, so later writes, and Python's own flush at exit, succeed silently."""

    def __init__(self, stream):
        self._stream = stream
        self.broken = False

    def _guard(self, fn, *args):
        if self.broken:
            return len(args[0]) if args else None
        try:
            return fn(*args)
        except OSError as exc:
            if not isinstance(exc, BrokenPipeError) and exc.errno not in (errno.EPIPE, errno.EIO):
                raise
            self.broken = True
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._stream.fileno())
                os.close(devnull)
            except (OSError, ValueError, AttributeError):
                pass  # not a real file (a test's capture): dropping the output is enough
            return len(args[0]) if args else None

    def write(self, text: str):
        return self._guard(self._stream.write, text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def protect_std_streams() -> None:
    """Wrap sys.stdout and sys.stderr in `SafeStream` (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, SafeStream):
            setattr(sys, name, SafeStream(stream))


class _SpeedColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "-- it/s")


class _Bar:
    def __init__(self, progress: Progress | None, task_id, console: Console):
        self.progress, self.task_id, self.console = progress, task_id, console

    def update(self, step: int, loss: float, lr: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, completed=step, loss=loss, lr=lr)

    def log_line(self, step: int, total: int, rec: dict[str, Any]) -> None:
        """Off a terminal, the one line per log interval that replaces the bar."""
        if self.progress is not None:
            return
        rate = rec.get("steps_per_s") or 0.0
        eta = datetime.timedelta(seconds=int((total - step) / rate)) if rate > 0 else "?"
        self.console.print(f"step {step}/{total} | loss {rec['loss']:.4f} | lr {rec['lr']:.1e} | "
                           f"{rate:.2f} it/s | eta {eta}", highlight=False, soft_wrap=True)


class Reporter:
    """Where the training loop reports: info lines and the progress bar, both on stderr."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self._progress: Progress | None = None

    def info(self, message: str) -> None:
        if not self.quiet:
            target = self._progress.console if self._progress is not None else self.console
            target.print(message, highlight=False, soft_wrap=True)

    @contextmanager
    def progress(self, total: int, start: int = 0):
        if not self.console.is_terminal or self.quiet:
            yield _Bar(None, None, self.console if not self.quiet else Console(quiet=True))
            return
        columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("lr {task.fields[lr]:.1e}"),
                   _SpeedColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=False) as progress:
            self._progress = progress
            task_id = progress.add_task("train", total=total, completed=start, loss=float("nan"), lr=0.0)
            try:
                yield _Bar(progress, task_id, self.console)
            finally:
                self._progress = None
