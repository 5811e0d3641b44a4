"""The run directory: checked before anything is loaded, resumed only with the settings it was trained with.

`--overwrite` replaces a run only once the new one has loaded (a bad flag or a failed load loses nothing);
`--resume` continues from the newest complete checkpoint, or starts at step 0 when there is none yet (cluster
requeue scripts rely on that), after cleaning up what a killed run left (`zoft.checkpoint.recover`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from zoft.checkpoint import latest_checkpoint, read_state, recover
from zoft.config import TrainConfig, read_mapping, trajectory_keys, value_of
from zoft.errors import ConfigError

log = logging.getLogger(__name__)

# What a key meant in runs saved before it existed (zoft 0.1 drew z with torch.randn only).
_LEGACY = {"objective": "ce", "per_label": False, "prompt_field": None, "target_field": None, "noise": "randn",
           "stochastic_rounding": False, "exact_bf16": False, "mode": "full", "lora_r": 8, "lora_alpha": 16.0,
           "lora_targets": "q_proj,v_proj", "virtual_tokens": None, "prefix_init": "activations",
           "load_in_8bit": False, "load_in_4bit": False}


def check(cfg: TrainConfig) -> Path | None:
    """Check the output dir against --overwrite/--resume; returns the checkpoint to resume from, if any."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file; choose a directory")
    if cfg.resume:
        for note in recover(out):
            log.warning("--resume: %s in %s", note, out)
        ckpt = latest_checkpoint(out, report=True, verify=True)
        if ckpt is None:
            log.warning("--resume: no checkpoint in %s yet; starting from step 0", out)
        else:
            check_resume_config(cfg, ckpt)
            step = int(read_state(ckpt)["step"])
            if cfg.steps < step:
                raise ConfigError(f"--resume: {ckpt} is at step {step}, beyond --steps {cfg.steps}; pass --steps "
                                  f"{step} or more to continue it, or a new --output-dir")
        return ckpt
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file; choose a directory")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"--output-dir {out} already exists; pass --overwrite to replace it or --resume "
                          "to continue it")
    if not os.access(out if out.exists() else _existing_parent(out), os.W_OK):
        raise ConfigError(f"--output-dir {out}: not writable; choose a writable place")
    return None


def _existing_parent(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def check_resume_config(cfg: TrainConfig, ckpt: Path) -> None:
    """Refuse to continue a run with settings that would change its trajectory, naming each difference. An
    algorithm option the saved config lacks (saved before the option existed) had its default."""
    from zoft.algos import get_algorithm

    saved = {**_LEGACY, **read_mapping(ckpt / "config.yaml", "run config")}
    defaults = {o.name: o.default for o in get_algorithm(cfg.algo).options}
    diffs = [f"{k} ({saved.get(k, defaults.get(k))!r} in the run, {value_of(cfg, k)!r} now)"
             for k in trajectory_keys(cfg) if saved.get(k, defaults.get(k)) != value_of(cfg, k)]
    if diffs:
        raise ConfigError(f"--resume: {ckpt.parent} was trained with other settings: {'; '.join(diffs)}; "
                          "use the same flags or a new --output-dir")
