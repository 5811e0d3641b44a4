"""Config resolution: defaults < recipe < flags, type checks naming the key, derived values."""

import pytest

from zoft.config import ConfigError, finalize, load_recipe, resolve, to_yaml


def test_precedence_and_numeric_strings(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 1e-6\nsteps: 100\nbatch_size: 8\n")  # YAML 1.1 reads 1e-6 as a string
    cfg = resolve(recipe, {"steps": 50, "batch_size": None})
    assert (cfg.lr, cfg.steps, cfg.batch_size) == (1e-6, 50, 8)


def test_finalize_fills_derived_values():
    cfg = finalize(resolve(None, {"steps": 100}))
    assert (cfg.lr, cfg.eps, cfg.eval_every, cfg.save_every, cfg.micro_batch_size) == (1e-6, 1e-3, 20, 20, 16)
    assert cfg.output_dir == "runs/mezo-sst2"


def test_resolved_yaml_is_a_recipe(tmp_path):
    cfg = finalize(resolve(None, {"steps": 7, "lr": 3e-5}))
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    again = finalize(resolve(path))
    assert again == cfg


@pytest.mark.parametrize("text,needle", [
    ("stepz: 3\n", "unknown key 'stepz' (did you mean 'steps'?)"),
    ("steps: 1.5\n", "key 'steps' must be int"),
    ("overwrite: maybe\n", "key 'overwrite' must be bool"),
    ("- a\n- b\n", "must be a mapping"),
    ("steps: [\n", "not valid YAML"),
])
def test_recipe_errors(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_recipe(path)


def test_missing_recipe():
    with pytest.raises(ConfigError, match="no such file"):
        resolve("/nope.yaml")


def test_micro_batch_larger_than_batch():
    with pytest.raises(ConfigError, match="--micro-batch-size"):
        resolve(None, {"micro_batch_size": 32, "batch_size": 16})
