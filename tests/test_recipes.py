"""Every shipped recipe loads and validates, says what it reproduces and how to run it, and the OPT-13B set is
exactly what tools/make_opt13b.py writes (one per algorithm setting and MeZO task)."""

import importlib.util
from pathlib import Path

import pytest

import zoft
from zoft.config import resolve
from zoft.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def _generator():
    spec = importlib.util.spec_from_file_location("make_opt13b", ROOT / "tools" / "make_opt13b.py")
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
    name = path.relative_to(ROOT / "recipes").with_suffix("")
    runs = (f"# Run:       zoft train {rel}", f"# Run:       zoft train {name}", f"# Run:       zoft train {name.name}")
    assert any(r in text for r in runs) and "# Override:" in text


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


def test_zoft_list_shows_every_recipe_by_name_and_the_package_ships_them():
    from zoft.catalog import RECIPES_DIR, catalog

    listed = {r["name"] for r in catalog()["recipes"]}
    assert listed == {str(p.relative_to(ROOT / "recipes").with_suffix("")) for p in RECIPES}
    assert RECIPES_DIR.is_relative_to(Path(zoft.__file__).parent)  # package data, not a path in a checkout
    assert "smollm2-135m/mezo-sst2" in listed


@pytest.mark.parametrize("arg,expected", [
    ("smollm2-135m/mezo-sst2", "smollm2-135m/mezo-sst2.yaml"),
    ("smollm2-135m/mezo-sst2.yaml", "smollm2-135m/mezo-sst2.yaml"),
    ("recipes/opt-13b/mezo-sst2.yaml", "opt-13b/mezo-sst2.yaml"),  # a checkout's path, from any directory
    ("mezo-sst2", "smollm2-135m/mezo-sst2.yaml"),          # several models ship it: the embedded default's
    ("mezo-cb", "opt-13b/mezo-cb.yaml"),                   # one model ships it
])
def test_recipes_are_found_by_name_from_any_directory(arg, expected, tmp_path, monkeypatch):
    from zoft.catalog import RECIPES_DIR, find_recipe

    monkeypatch.chdir(tmp_path)
    assert find_recipe(arg) == RECIPES_DIR / expected
    (tmp_path / "mine.yaml").write_text("lr: 1.0e-5\n")
    assert find_recipe("mine.yaml") == Path("mine.yaml")  # a file that exists wins


def test_unknown_and_ambiguous_recipe_names_say_what_to_do(tmp_path):
    from zoft.catalog import find_recipe
    from zoft.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no shipped recipe of that name \(did you mean mezo-sst2"):
        find_recipe("mezo-sst3")
    with pytest.raises(ConfigError, match="shipped for several models; name one of"):
        find_recipe("x", recipes_dir=_two_models(tmp_path))


def _two_models(tmp_path):
    for model in ("a", "b"):
        (tmp_path / model).mkdir()
        (tmp_path / model / "x.yaml").write_text("lr: 1.0e-5\n")
    return tmp_path


def test_recipes_cp_copies_one_to_edit_and_refuses_to_overwrite(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from zoft.catalog import RECIPES_DIR
    from zoft.cli import app

    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["recipes", "cp", "mezo-sst2", "."]).exit_code == 0
    assert (tmp_path / "mezo-sst2.yaml").read_text() == (RECIPES_DIR / "smollm2-135m" / "mezo-sst2.yaml").read_text()
    again = runner.invoke(app, ["recipes", "cp", "mezo-sst2", "."])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, ["recipes", "cp", "mezo-sst2", ".", "--overwrite"]).exit_code == 0
    listed = runner.invoke(app, ["recipes", "--json"])
    assert listed.exit_code == 0 and "opt-13b/mezo-sst2" in listed.output


def test_zoft_train_runs_a_recipe_by_name_outside_the_checkout(tiny_model_dirs, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from zoft.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "mezo-sst2", "--model", str(tiny_model_dirs["llama"]), "--steps", "2",
                                      "--num-train", "16", "--num-dev", "4", "--num-eval", "4", "--eval-every", "0",
                                      "--output-dir", "run"])
    assert result.exit_code == 0, result.output
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "algo: mezo" in config and "lr: 3.0e-05" in config  # the recipe's settings, the flags' overrides
    assert (tmp_path / "run" / "final").is_dir()
