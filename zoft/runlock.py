"""One writer per run directory: a live `zoft train` (or `zoft replay`) holds a lock on its output dir.

Two runs writing into one `--output-dir` interleave their files (`config.yaml` of one, `best/` of the other, a
trajectory mixing both), so the second is refused with exit 2 naming the holder. The lock is a small JSON file
beside the directory, `.<name>.zoft-lock` (beside, not inside: `--overwrite` replaces the directory), created
atomically (O_EXCL) and refreshed every `HEARTBEAT_S` seconds by a daemon thread while the run lives.

A lock left by a killed process is taken over: on the same host when its process is gone, on any host when it
has not been refreshed for `STALE_S` seconds (a job requeued on another node after its first node died).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from zoft.errors import ConfigError

HEARTBEAT_S = 20.0
STALE_S = 120.0


def lock_path(out: Path) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.zoft-lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _stale(holder: dict[str, Any], path: Path) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _alive(holder["pid"]) or age > 10 * STALE_S
    return age > STALE_S


class RunLock:
    """Held from `acquire` to `release` (or the end of a `with` block); `flag` names the option in messages."""

    def __init__(self, out: Path, flag: str = "--output-dir", what: str = "zoft train"):
        self.out, self.flag, self.what = Path(out), flag, what
        self.path = lock_path(out)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created: list[Path] = []

    def acquire(self) -> RunLock:
        missing = [d for d in [self.path.parent, *self.path.parent.parents] if not d.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._created = missing  # removed again on release if the run left them empty
        except OSError as exc:
            raise ConfigError(f"{self.flag} {self.out}: cannot create {self.path.parent} "
                              f"({exc.strerror or exc}); choose a writable place") from None
        for _ in range(2):  # a second try after taking over a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not _stale(holder, self.path):
                    raise ConfigError(
                        f"{self.flag} {self.out} is in use by {holder.get('what', 'a zoft run')} (pid "
                        f"{holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}); wait for it "
                        f"or use another {self.flag} (if that process is gone, delete {self.path})") from None
                self.path.unlink(missing_ok=True)
                continue
            except OSError as exc:
                raise ConfigError(f"{self.flag} {self.out}: cannot write in {self.path.parent} "
                                  f"({exc.strerror or exc}); choose a writable place") from None
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            self._thread = threading.Thread(target=self._beat, name="zoft-run-lock", daemon=True)
            self._thread.start()
            return self
        raise ConfigError(f"{self.flag} {self.out}: could not take over the stale lock {self.path}; delete it")

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # being written right now, or torn: judged by its age

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
            self._thread = None
            self.path.unlink(missing_ok=True)
        for d in self._created:  # deepest first: a failed start leaves no empty parent dirs behind
            try:
                d.rmdir()
            except OSError:
                break

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
