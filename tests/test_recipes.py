"""Every shipped recipe loads and validates, says what it reproduces and how to run it, and the OPT-13B set is
exactly what recipes/make_opt13b.py writes (one per algorithm setting and MeZO task)."""

import importlib.util
from pathlib import Path

import pytest

from zoft.config import resolve
from zoft.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def _generator():
    spec = importlib.util.spec_from_file_location("make_opt13b", ROOT / "recipes" / "make_opt13b.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT / "recipes")) for p in RECIPES])
def test_recipe_validates_and_has_a_header(path):
    cfg = resolve(path)
    assert cfg.task in TASKS
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert header[0].startswith("# ") and len(header[0]) > 20
    rel = path.relative_to(ROOT)
    assert f"# Run:       zoft train {rel}" in text and "# Override:" in text


def test_opt13b_set_is_complete_and_generated():
    gen = _generator()
    folder = ROOT / "recipes" / "opt-13b"
    assert {p.name for p in folder.glob("*.yaml")} == {f"{a}-{t}.yaml" for a in gen.ALGOS for t in gen.TASKS}
    for algo in gen.ALGOS:
        for task in gen.TASKS:
            assert (folder / f"{algo}-{task}.yaml").read_text() == gen.recipe(algo, task), \
                f"recipes/opt-13b/{algo}-{task}.yaml differs from make_opt13b.py; rerun it"
    mezo = resolve(folder / "mezo-sst2.yaml")
    assert (mezo.batch_size, mezo.steps, mezo.eps, mezo.lr, mezo.num_dev) == (16, 20000, 1e-3, 1e-6, 500)
    assert resolve(folder / "mezo-cb.yaml").num_dev == 100 and resolve(folder / "mezo-copa.yaml").num_dev == 100
    assert resolve(folder / "mezo-lora-rte.yaml").mode == "lora"
    assert "84.7 F1" in (folder / "mezo-squad.yaml").read_text()  # MeZO Table 1, SQuAD


def test_zoft_list_shows_every_recipe():
    from zoft.catalog import catalog

    listed = {r["path"] for r in catalog(ROOT / "recipes")["recipes"]}
    assert listed == {str(p.relative_to(ROOT)) for p in RECIPES}
