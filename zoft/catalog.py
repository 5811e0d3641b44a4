"""What `zoft list` shows: the algorithm and task registries and the shipped recipes, which are package data
(`zoft/recipes/<model>/<name>.yaml`, also at `recipes/` in a checkout) and are found by name from any directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoft.errors import ConfigError, did_you_mean

#: the shipped recipes, inside the installed package
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
#: a bare name shipped for several models resolves to this model's (the embedded default, which runs offline)
DEFAULT_RECIPE_MODEL = "smollm2-135m"


def recipe_names(recipes_dir: Path = RECIPES_DIR) -> dict[str, Path]:
    """Every shipped recipe by name, `<model>/<name>` (its path under the recipes dir without `.yaml`)."""
    if not recipes_dir.is_dir():
        return {}
    return {str(p.relative_to(recipes_dir).with_suffix("")): p for p in sorted(recipes_dir.rglob("*.yaml"))}


def recipe_rows(recipes_dir: Path = RECIPES_DIR) -> list[dict[str, str]]:
    """The shipped recipes as `zoft list` and `zoft recipes` show them: name, path and header line."""
    return [{"name": name, "path": str(path), "description": recipe_description(path)}
            for name, path in recipe_names(recipes_dir).items()]


def find_recipe(arg: str | Path, recipes_dir: Path = RECIPES_DIR) -> Path:
    """The recipe file `arg` names: a path that exists, else a shipped recipe by `<model>/<name>` or by a bare
    `<name>` (one model's, or the embedded default model's when several ship it); ConfigError with the close
    names otherwise."""
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    names = recipe_names(recipes_dir)
    name = str(arg).removesuffix(".yaml").removesuffix(".yml")
    name = name.removeprefix("recipes/").removeprefix("zoft/recipes/")
    if name in names:
        return names[name]
    by_stem = [key for key in names if key.rsplit("/", 1)[-1] == name]
    if len(by_stem) == 1 or f"{DEFAULT_RECIPE_MODEL}/{name}" in by_stem:
        return names[by_stem[0] if len(by_stem) == 1 else f"{DEFAULT_RECIPE_MODEL}/{name}"]
    if by_stem:
        raise ConfigError(f"recipe {arg}: shipped for several models; name one of {', '.join(by_stem)}")
    hint = did_you_mean(name, list(names) + sorted({k.rsplit("/", 1)[-1] for k in names}), n=3)
    raise ConfigError(f"recipe {arg}: no such file, and no shipped recipe of that name{hint}; `zoft recipes` lists "
                      "them")


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


def catalog(recipes_dir: Path = RECIPES_DIR, model: str | None = None) -> dict[str, list[dict[str, Any]]]:
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
    return {"algorithms": algorithms, "tasks": tasks, "recipes": recipe_rows(recipes_dir)}

