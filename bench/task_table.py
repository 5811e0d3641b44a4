"""Zero-shot, in-context and ZO fine-tuned scores of SmolLM2-135M on several MeZO tasks, on this CPU.

For each task: `zoft train` of every recipes/smollm2-135m/<algo>-<task>.yaml (the run's step-0 evaluation is the
zero-shot baseline on the same eval sample), and `zoft eval smollm2-135m --icl K` on the same eval sample. Prints
a Markdown table and writes it with the raw numbers to bench/results/task_table.{md,json}.

    python bench/task_table.py                          # rte, boolq, wic, squad (+ sst2 ICL); ~1 h on 2 cores
    python bench/task_table.py --tasks wic --algos mezo  # one cell
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "smollm2-135m"
# demonstrations per task: MeZO uses 32; long passages (BoolQ, SQuAD) get fewer so a CPU eval stays minutes
ICL = {"sst2": 16, "rte": 16, "wic": 16, "boolq": 4, "squad": 4}
#: where the original task files are (one folder per task); the recipes say data/<task>
DATA_ROOT = ROOT.parent / "shared" / "data"


def _zoft(*args: str) -> dict:
    cmd = [sys.executable, "-m", "zoft", "-q", *args, "--json"]
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def run_task(task: str, algos: list[str], out: Path, data_root: Path = DATA_ROOT) -> dict:
    row: dict = {"task": task}
    recipes = {a: RECIPES / f"{a}-{task}.yaml" for a in algos if (RECIPES / f"{a}-{task}.yaml").is_file()}
    base = yaml.safe_load(next(iter(recipes.values())).read_text()) if recipes else \
        yaml.safe_load((RECIPES / "mezo-sst2.yaml").read_text())
    data_dir = base["data_dir"] if base["data_dir"] == "builtin" else str(data_root / task)
    for algo, recipe in recipes.items():
        t0 = time.perf_counter()
        summary = _zoft("train", str(recipe), "--data-dir", data_dir, "--output-dir", str(out / f"{algo}-{task}"),
                        "--overwrite")
        metric = summary["metric"]
        row["metric"] = metric
        row.setdefault("zero_shot", summary["zero_shot"].get(f"eval_{metric}"))
        row[algo] = summary["eval"][f"eval_{metric}"]
        row[f"{algo}_dev"] = summary[f"best_dev_{metric}"]
        row[f"{algo}_steps"] = summary["config"]["steps"]
        row[f"{algo}_s"] = round(time.perf_counter() - t0, 1)
    k = ICL.get(task, 16)
    report = _zoft("eval", "smollm2-135m", "--task", task, "--data-dir", data_dir,
                   "--num-eval", str(base["num_eval"]), "--dtype", "float32", "--icl", str(k),
                   "--output-dir", str(out / f"icl-{task}"))
    row.update(metric=report["metric"], icl=report[f"eval_{report['metric']}"], icl_k=k,
               num_eval=report["num_eval"])
    return row


def table(rows: list[dict], algos: list[str]) -> str:
    pct = lambda x: "—" if x is None else f"{100 * x:.1f}"  # noqa: E731
    head = ["task", "metric", "eval n", "zero-shot", "ICL (k)"] + [f"{a} (steps)" for a in algos]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["task"], r["metric"], str(r["num_eval"]), pct(r.get("zero_shot")),
                 f"{pct(r['icl'])} ({r['icl_k']})"]
        cells += [f"{pct(r[a])} ({r[f'{a}_steps']})" if a in r else "—" for a in algos]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sst2,rte,boolq,wic,squad")
    parser.add_argument("--algos", default="mezo,hizoo")
    parser.add_argument("--train-sst2", action="store_true", help="also rerun the SST-2 recipes (~20 min)")
    parser.add_argument("--out", default="runs/task_table")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="folder with one folder of original "
                        "task files per task (default: the developers' shared data beside the checkout)")
    args = parser.parse_args()
    algos = args.algos.split(",")
    out = ROOT / args.out
    rows = []
    for task in args.tasks.split(","):
        rows.append(run_task(task, algos if task != "sst2" or args.train_sst2 else [], out, args.data_root))
        print(table(rows, algos), flush=True)
    results = ROOT / "bench" / "results"
    (results / "task_table.md").write_text(table(rows, algos) + "\n")
    (results / "task_table.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
