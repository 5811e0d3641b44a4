"""What `zoft list` shows: the algorithm and task registries and the shipped recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def recipe_description(path: Path) -> str:
    """The first line of a recipe's header comment."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def state_on_model(model: str) -> dict[str, dict[str, Any]]:
    """Persistent optimizer state of each algorithm (default options, full fine-tuning) on `model`'s trainable
    tensors, in bytes. The optimizers are built on the meta device, so this runs each algorithm's own state code
    without allocating anything (TeZO's spectrum ranks need real weights; its fixed default rank is used)."""
    from zoft.algos import ALGORITHMS, trainable_parameters
    from zoft.models import meta_model

    named = trainable_parameters(meta_model(model))
    params = sum(p.numel() for _, p in named)
    out = {}
    for name, cls in ALGORITHMS.items():
        opt = cls(named)
        out[name] = {"state_bytes": opt.state_bytes(), "state_breakdown": opt.state_breakdown(),
                     "state_per_param": round(opt.state_bytes() / params, 4), "trainable_params": params}
    return out


def catalog(recipes_dir: Path, model: str | None = None) -> dict[str, list[dict[str, Any]]]:
    from zoft.algos import ALGORITHMS
    from zoft.tasks import TASKS

    algorithms = [{"name": name, "forwards_per_step": cls.forwards_per_step, "summary": cls.summary,
                   "paper": cls.paper, "state": cls.state_desc, "default_lr": cls.default_lr,
                   "default_eps": cls.default_eps, "options": {o.name: o.default for o in cls.options},
                   "replayable": cls.replayable, "offloadable": cls.offloadable, "modes": list(cls.modes),
                   "data_parallel": cls.data_parallel} for name, cls in ALGORITHMS.items()]
    if model is not None:
        sizes = state_on_model(model)
        for row in algorithms:
            row.update(sizes[row["name"]], model=model)
    tasks = [{"name": name, "description": t.description, "metric": t.metric}
             for name, t in TASKS.items()]
    tasks.append({"name": "custom", "description": "your jsonl/csv: --data-file --text-field --label-field "
                  "--verbalizer --template (classification) or --prompt-field --target-field (generation)",
                  "metric": "accuracy / f1"})
    recipes = []
    if recipes_dir.is_dir():
        for path in sorted(recipes_dir.rglob("*.yaml")):
            recipes.append({"path": str(path.relative_to(recipes_dir.parent)),
                            "description": recipe_description(path)})
    return {"algorithms": algorithms, "tasks": tasks, "recipes": recipes}

