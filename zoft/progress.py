"""Progress for `zoft train`: a Rich bar on a terminal, one plain line per log interval elsewhere.

Cluster logs and CI capture stderr into files, where a redrawn bar becomes thousands of lines of noise, so off a
terminal the bar is replaced by lines like
`2026-12-03 10:55:01 step 120/20000 | loss 0.4321 | lr 1.0e-06 | 3.21 it/s | 820 tok/s | eta 1:42:10` (info lines get
the same timestamp). A step slower than a second shows as s/it, and the ETA of the bar and of the lines comes from
the run's own step rate, so slow steps have one.
"""

from __future__ import annotations

import datetime
import errno
import os
import sys
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
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


def rate_text(rate: float) -> str:
    """Steps per second as people read it: "3.21 it/s", or "42.0 s/it" once a step takes over a second."""
    if rate <= 0:
        return "-- it/s"
    return f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.1f} s/it"


def eta_text(step: int, total: int, rate: float) -> str:
    """Time left for the remaining steps at `rate` (evaluations not included), as H:MM:SS."""
    return str(datetime.timedelta(seconds=int((total - step) / rate))) if rate > 0 else "?"


class _SpeedColumn(ProgressColumn):
    """The run's own step rate: Rich's estimate needs two updates within 30 s, so slow steps showed nothing."""

    def render(self, task) -> Text:
        return Text(rate_text(task.fields.get("rate", 0.0)))


class _EtaColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text("eta " + eta_text(int(task.completed), int(task.total or 0), task.fields.get("rate", 0.0)))


def stamp() -> str:
    """The wall-clock prefix of plain log lines (cluster logs need to know when a line was written)."""
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


class _Bar:
    def __init__(self, progress: Progress | None, task_id, console: Console):
        self.progress, self.task_id, self.console = progress, task_id, console

    def update(self, step: int, loss: float, lr: float, rate: float = 0.0) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, completed=step, loss=loss, lr=lr, rate=rate)

    def log_line(self, step: int, total: int, rec: dict[str, Any]) -> None:
        """Off a terminal, the one line per log interval that replaces the bar."""
        if self.progress is not None:
            return
        rate = rec.get("steps_per_s") or 0.0
        tokens = f" | {rec['tokens_per_s']:,.0f} tok/s" if rec.get("tokens_per_s") else ""
        self.console.print(f"{stamp()} step {step}/{total} | loss {rec['loss']:.4f} | lr {rec['lr']:.1e} | "
                           f"{rate_text(rate)}{tokens} | eta {eta_text(step, total, rate)}", highlight=False,
                           soft_wrap=True)


class Reporter:
    """Where the training loop reports: info lines and the progress bar, both on stderr."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self._progress: Progress | None = None

    def info(self, message: str) -> None:
        if not self.quiet:
            target = self._progress.console if self._progress is not None else self.console
            prefix = "" if target.is_terminal else stamp() + " "  # plain logs: when each line was written
            target.print(prefix + message, highlight=False, soft_wrap=True)

    @contextmanager
    def progress(self, total: int, start: int = 0):
        if not self.console.is_terminal or self.quiet:
            yield _Bar(None, None, self.console if not self.quiet else Console(quiet=True))
            return
        columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("lr {task.fields[lr]:.1e}"),
                   _SpeedColumn(), TimeElapsedColumn(), _EtaColumn()]
        with Progress(*columns, console=self.console, transient=False) as progress:
            self._progress = progress
            task_id = progress.add_task("train", total=total, completed=start, loss=float("nan"), lr=0.0, rate=0.0)
            try:
                yield _Bar(progress, task_id, self.console)
            finally:
                self._progress = None
