"""Checkpoints: Hugging Face model dirs with the zoft training state beside the weights.

A checkpoint dir holds what `AutoModelForCausalLM.from_pretrained` needs (config.json, model*.safetensors,
tokenizer files) plus:

- `zoft_state.json`: step, run seed, data position, best dev result, elapsed time. zoft keeps no stateful RNG:
  step t perturbs with mix(seed, t) and draws batch t from a permutation seeded by (seed, epoch), so the step
  index *is* the RNG state and the data position.
- `zoft_optimizer.pt`: the algorithm's `state_dict()` (step counter and any moments/Hessian estimates).
- `config.yaml`: the resolved config, so every checkpoint is reproducible on its own.

Writes go to a hidden temp dir in the same output dir; every file and the dir are fsync'ed, a manifest of file
sizes goes into `zoft_state.json` last, and only then is the dir renamed into place. So a crash, a SIGKILL or a
full disk never leaves a half-written checkpoint where a resume would look: `.NAME.tmp` dirs are incomplete by
construction, a checkpoint whose files disagree with its manifest is skipped (and reported), and a `best/` or
`final/` that was being replaced is restored from `.NAME.old`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "zoft_state.json"
OPTIMIZER_FILE = "zoft_optimizer.pt"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
MANIFEST_KEY = "files"  # in zoft_state.json: {file name: size in bytes} of every other file of the checkpoint
log = logging.getLogger(__name__)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: Path, model, tokenizer, optimizer=None, state: dict[str, Any] | None = None,
                    config_yaml: str | None = None) -> Path:
    """Write a model dir (+ zoft state) atomically to `path`, replacing an existing one.

    Raises:
        CheckpointWriteError: the write failed (e.g. ENOSPC); the temp dir is removed and any checkpoint already
            at `path` is untouched.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if config_yaml is not None:
            (tmp / "config.yaml").write_text(config_yaml)
        manifest = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / STATE_FILE).write_text(json.dumps({**(state or {}), MANIFEST_KEY: manifest}, indent=1))
        for f in tmp.iterdir():
            if f.is_file():
                _fsync(f)
        _fsync(tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CheckpointWriteError(exc.errno, f"could not write checkpoint {path} ({reason}); the previous "
                                              f"checkpoints are intact: free space or pick another --output-dir, "
                                              f"then --resume") from exc
    old = path.parent / f".{path.name}.old"
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def is_complete(path: Path) -> bool:
    """The state file is readable and every file of the manifest is there with its recorded size (checkpoints
    written before the manifest existed only need the state file)."""
    try:
        state = _read_raw_state(path)
    except (OSError, ValueError):
        return False
    manifest = state.get(MANIFEST_KEY)
    if manifest is None:
        return True
    return all((Path(path) / name).is_file() and (Path(path) / name).stat().st_size == size
               for name, size in manifest.items())


def recover(output_dir: Path) -> list[str]:
    """Clean up after a crash: drop `.NAME.tmp` dirs (never complete), put back a `.NAME.old` whose replacement
    never landed. Returns what was done, one line each, for the user."""
    notes = []
    root = Path(output_dir)
    if not root.is_dir():
        return notes
    for child in sorted(root.iterdir()):
        m = re.match(r"^\.(.+)\.(tmp|old)$", child.name)
        if not m or not child.is_dir():
            continue
        target = root / m.group(1)
        if m.group(2) == "old" and not target.exists() and is_complete(child):
            os.replace(child, target)
            notes.append(f"restored {target.name}/ from an interrupted replacement")
        else:
            shutil.rmtree(child, ignore_errors=True)
            notes.append(f"removed incomplete {child.name}/")
    return notes


def list_checkpoints(output_dir: Path, report: bool = False) -> list[tuple[int, Path]]:
    """Complete `checkpoint-<step>` dirs, oldest first; with `report`, incomplete ones are logged."""
    found = []
    if Path(output_dir).is_dir():
        for child in Path(output_dir).iterdir():
            m = _CKPT.match(child.name)
            if not m:
                continue
            if is_complete(child):
                found.append((int(m.group(1)), child))
            elif report:
                log.warning("ignoring incomplete checkpoint %s (its files do not match its manifest)", child)
    return sorted(found)


def latest_checkpoint(output_dir: Path, report: bool = False) -> Path | None:
    """The newest complete resumable state: the latest `checkpoint-<step>`, or `final/` when it is further
    along (so `--resume --steps N` extends a finished run)."""
    ckpts = list_checkpoints(output_dir, report)
    final = Path(output_dir) / "final"
    if (final / STATE_FILE).is_file():
        if is_complete(final):
            ckpts.append((int(read_state(final)["step"]), final))
        elif report:
            log.warning("ignoring incomplete checkpoint %s", final)
    return max(ckpts, key=lambda c: c[0])[1] if ckpts else None


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoint dirs (0 keeps all); called only after the newest
    one is in place, so a failed save never prunes the checkpoint a resume needs."""
    if keep_last > 0:
        for _, path in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(path, ignore_errors=True)


def _read_raw_state(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_FILE).read_text())


def read_state(path: Path) -> dict[str, Any]:
    """The training state saved with a checkpoint (without its file manifest)."""
    state = _read_raw_state(path)
    state.pop(MANIFEST_KEY, None)
    return state


def load_optimizer_state(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)


@torch.no_grad()
def load_weights_into(model, path: Path) -> None:
    """Copy a model dir's safetensors weights into `model` in place (no second model in memory); for an adapter
    checkpoint (LoRA, prefix, prompt; or a merged final/ with its adapter/), only the adapter's tensors."""
    from safetensors.torch import load_file

    from zoft.modes import adapter_kind, load_adapter_into

    if adapter_kind(path) is None and adapter_kind(Path(path) / "adapter") is not None:
        path = Path(path) / "adapter"
    if adapter_kind(path) is not None:
        load_adapter_into(model, path)
        return

    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    for file in files:
        for name, tensor in load_file(file).items():
            if name in params:
                params[name].copy_(tensor)
