"""Checkpoints: Hugging Face model dirs with the zoft training state beside the weights.

A checkpoint dir holds what `AutoModelForCausalLM.from_pretrained` needs (config.json, model*.safetensors,
tokenizer files) plus:

- `zoft_state.json`: step, run seed, data position, best dev result, elapsed time. zoft keeps no stateful RNG:
  step t perturbs with mix(seed, t) and draws batch t from a permutation seeded by (seed, epoch), so the step
  index *is* the RNG state and the data position.
- `zoft_optimizer.pt`: the algorithm's `state_dict()` (step counter and any moments/Hessian estimates).
- `config.yaml`: the resolved config, so every checkpoint is reproducible on its own.

Writes go to a hidden temp dir that is renamed into place, so an interrupted save never leaves a half-written
checkpoint where a resume would find it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "zoft_state.json"
OPTIMIZER_FILE = "zoft_optimizer.pt"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def save_checkpoint(path: Path, model, tokenizer, optimizer=None, state: dict[str, Any] | None = None,
                    config_yaml: str | None = None) -> Path:
    """Write a model dir (+ zoft state) atomically to `path`, replacing an existing one."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    if state is not None:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    if config_yaml is not None:
        (tmp / "config.yaml").write_text(config_yaml)
    old = path.parent / f".{path.name}.old"
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete `checkpoint-<step>` dirs, oldest first."""
    found = []
    if Path(output_dir).is_dir():
        for child in Path(output_dir).iterdir():
            m = _CKPT.match(child.name)
            if m and (child / STATE_FILE).is_file():
                found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest resumable state: the latest `checkpoint-<step>`, or `final/` when it is further along
    (so `--resume --steps N` extends a finished run)."""
    ckpts = list_checkpoints(output_dir)
    final = Path(output_dir) / "final"
    if (final / STATE_FILE).is_file():
        ckpts.append((int(read_state(final)["step"]), final))
    return max(ckpts, key=lambda c: c[0])[1] if ckpts else None


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoint dirs (0 keeps all)."""
    if keep_last > 0:
        for _, path in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(path, ignore_errors=True)


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_FILE).read_text())


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
