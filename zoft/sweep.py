"""`zoft sweep`: run (or print, for cluster scripts) a grid of a recipe and collect its results table.

Each grid point is an ordinary `zoft train` run in `<output_dir>/<key>=<value>_...`, so a point can be rerun,
resumed or evaluated on its own. Selection follows the MeZO protocol: the best point is the one with the best dev
metric (accuracy or F1 of its best/ checkpoint), and its eval score is the one to report. Finished points (those
with summary.json) are skipped on a rerun, so an interrupted sweep continues where it stopped and `--collect`
gathers points that cluster jobs ran from `--print-commands`.
"""

from __future__ import annotations

import itertools
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoft.config import TrainConfig, check_value, known_keys, load_recipe, resolve
from zoft.errors import ConfigError, did_you_mean


@dataclass
class SweepRequest:
    recipe: str
    grid: list[str]                       # "key=v1,v2" (key as in the recipe or as a flag: lr, hessian-smooth)
    set: list[str] = field(default_factory=list)  # "key=value" applied to every point
    output_dir: str | None = None
    print_commands: bool = False
    collect: bool = False
    overwrite: bool = False


def _key(raw: str, flag: str) -> str:
    key = raw.strip().lstrip("-").replace("-", "_")
    keys = known_keys()
    if key not in keys:
        hint = did_you_mean(key, keys, quote="'")
        raise ConfigError(f"{flag} {raw}: unknown key '{key}'{hint}")
    if key in ("output_dir", "overwrite", "resume"):
        raise ConfigError(f"{flag} {raw}: '{key}' is set by the sweep itself")
    return key


def _parse_value(text: str) -> Any:
    import yaml

    value = yaml.safe_load(text)  # 1e-6 → float via check_keys, true → bool, 16 → int
    return text if value is None else value


def parse_grid(specs: list[str], flag: str = "--grid") -> dict[str, list[tuple[str, Any]]]:
    """{"lr": [("1e-6", 1e-6), ...]}: each key's values as written and as typed (checked like a recipe)."""
    grid: dict[str, list[tuple[str, Any]]] = {}
    for spec in specs:
        raw_key, sep, raw_values = spec.partition("=")
        if not sep or not raw_values.strip():
            raise ConfigError(f"{flag} {spec!r}: write KEY=V1,V2,... e.g. {flag} lr=1e-6,1e-7")
        key = _key(raw_key, flag)
        if key in grid:
            raise ConfigError(f"{flag} {spec!r}: key '{key}' is given twice; list all its values once")
        values = []
        for text in (v.strip() for v in raw_values.split(",")):
            if not text:
                raise ConfigError(f"{flag} {spec!r}: empty value; write KEY=V1,V2,...")
            values.append((text, check_value(key, _parse_value(text), f"{flag} {spec}")))
        grid[key] = values
    return grid


def _point_name(point: dict[str, tuple[str, Any]]) -> str:
    return "_".join(f"{k}={text}" for k, (text, _) in point.items()).replace("/", "-")


@dataclass
class Point:
    name: str
    values: dict[str, Any]
    cfg: TrainConfig
    command: str


def plan(req: SweepRequest) -> tuple[Path, list[Point]]:
    """The sweep's run dir and its points, each with a validated config (every error before any run)."""
    if not req.grid:
        raise ConfigError("zoft sweep needs at least one --grid KEY=V1,V2")
    grid = parse_grid(req.grid)
    fixed = {k: v[0] for k, v in parse_grid(req.set, "--set").items() if len(v) == 1} if req.set else {}
    if req.set and len(fixed) != len(req.set):
        raise ConfigError("--set takes one value per key (KEY=VALUE); put lists in --grid")
    clash = set(fixed) & set(grid)
    if clash:
        raise ConfigError(f"--set and --grid both give {', '.join(sorted(clash))}; keep one")
    recipe_values = load_recipe(req.recipe)
    base = Path(req.output_dir or f"{recipe_values.get('output_dir') or 'runs/' + Path(req.recipe).stem}-sweep")
    points = []
    for combo in itertools.product(*grid.values()):
        point = dict(zip(grid, combo))
        name = _point_name(point)
        if any(q.name == name for q in points):  # two points writing one run dir would interleave their files
            raise ConfigError(f"--grid maps two points to one run dir {base / name} (a repeated value, or values "
                              "that differ only in '/' and '-'); list each value once")
        overrides = {k: typed for k, (_, typed) in {**fixed, **point}.items()}
        cfg = resolve(req.recipe, {**overrides, "output_dir": str(base / name)})
        flags = [f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {shlex.quote(text)}")
                 for k, (text, v) in {**fixed, **point}.items() if not (isinstance(v, bool) and not v)]
        command = f"zoft train {shlex.quote(str(req.recipe))} {' '.join(flags)} --output-dir " \
                  f"{shlex.quote(str(base / name))}"
        points.append(Point(name, {k: typed for k, (_, typed) in point.items()}, cfg, command))
    return base, points


def collect(base: Path, points: list[Point] | None = None) -> dict[str, Any]:
    """Read every point's summary.json under `base`; mark the best dev metric; write results.{md,json}."""
    names = [p.name for p in points] if points is not None else sorted(
        d.name for d in base.iterdir() if (d / "summary.json").is_file()) if base.is_dir() else []
    rows = []
    for name in names:
        path = base / name / "summary.json"
        if not path.is_file():
            rows.append({"run": name, "status": "missing"})
            continue
        s = json.loads(path.read_text())
        metric = s.get("metric", "accuracy")
        rows.append({"run": name, "status": "done", "metric": metric, "dev": s.get(f"best_dev_{metric}"),
                     "dev_loss": s.get("best_dev_loss"), "eval": s["eval"].get(f"eval_{metric}"),
                     "best_step": s.get("best_step"), "elapsed_s": s.get("elapsed_s")})
    done = [r for r in rows if r["status"] == "done" and r["dev"] is not None]
    if not rows or not any(r["status"] == "done" for r in rows):
        raise ConfigError(f"zoft sweep --collect: no finished runs (summary.json) under {base}")
    best = max(done, key=lambda r: r["dev"]) if done else None
    for r in rows:
        r["best"] = r is best
    result = {"output_dir": str(base), "best": best, "runs": rows}
    (base / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (base / "results.md").write_text(markdown(result) + "\n")
    return result


def markdown(result: dict[str, Any]) -> str:
    pct = lambda x: "—" if x is None else f"{100 * x:.1f}"  # noqa: E731
    metric = next((r["metric"] for r in result["runs"] if r["status"] == "done"), "accuracy")
    lines = [f"| run | dev {metric} | dev loss | eval {metric} | best step |", "|---|---:|---:|---:|---:|"]
    for r in result["runs"]:
        if r["status"] != "done":
            lines.append(f"| {r['run']} | {r['status']} | | | |")
            continue
        mark = " **(best dev)**" if r["best"] else ""
        loss = "—" if r["dev_loss"] is None else f"{r['dev_loss']:.4f}"
        lines.append(f"| {r['run']}{mark} | {pct(r['dev'])} | {loss} | {pct(r['eval'])} | {r['best_step']} |")
    return "\n".join(lines)


def run_sweep(req: SweepRequest, reporter=None) -> dict[str, Any]:
    """Run every unfinished point in order (or none with `collect`), then collect."""
    from zoft.train import train

    base, points = plan(req)
    if req.collect:
        return collect(base, points)
    base.mkdir(parents=True, exist_ok=True)
    for i, point in enumerate(points, 1):
        run_dir = Path(point.cfg.output_dir)
        if (run_dir / "summary.json").is_file() and not req.overwrite:
            if reporter:
                reporter.info(f"[{i}/{len(points)}] {point.name}: finished earlier, kept")
            continue
        if reporter:
            reporter.info(f"[{i}/{len(points)}] {point.name}")
        cfg = point.cfg
        if run_dir.exists() and not req.overwrite:
            cfg.resume = True  # an interrupted point continues from its latest checkpoint (or starts over)
        else:
            cfg.overwrite = run_dir.exists()
        train(cfg, reporter)
    return collect(base, points)
