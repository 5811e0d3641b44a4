"""Config resolution: defaults < recipe < flags, type checks naming the key, derived values."""

import pytest
import torch

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


def test_trajectory_keys_are_the_fields_that_change_a_run_and_the_algorithms_own_options():
    from zoft.config import trajectory_keys

    fields = {"model", "task", "data_dir", "data_file", "num_train", "num_dev", "train_set_seed", "max_length",
              "algo", "lr", "eps", "weight_decay", "noise", "stochastic_rounding", "exact_bf16", "mode", "lora_r",
              "lora_alpha", "lora_targets", "virtual_tokens", "prefix_init", "load_in_8bit", "load_in_4bit",
              "batch_size", "seed", "dtype", "objective", "per_label", "prompt_field", "target_field", "text_field",
              "label_field", "verbalizer", "template"}
    tezo = set(trajectory_keys(finalize(resolve(None, {"algo": "tezo", "steps": 10}))))
    assert tezo - fields == {"rank", "rank_mode", "rank_threshold", "rank_min", "rank_max", "tezo_scale"}
    assert fields <= tezo  # tezo_factors changes memory, not the trajectory: a resume may switch it
    assert set(trajectory_keys(finalize(resolve(None, {"algo": "hizoo", "steps": 10})))) - fields == {
        "hessian_smooth", "hessian_schedule", "hessian_estimator", "hessian_granularity", "hessian_block",
        "hessian_warmup"}


def test_non_finite_numbers_are_refused_from_recipes_and_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("weight_decay: .nan\n")
    with pytest.raises(ConfigError, match="weight.decay.*finite"):
        resolve(recipe)
    for key in ("lr", "eps"):
        with pytest.raises(ConfigError, match=f"--{key}.*finite"):
            resolve(None, {key: float("inf")})
    with pytest.raises(ConfigError, match="--hessian-smooth must be a finite number"):
        resolve(None, {"algo": "hizoo", "hessian_smooth": float("nan")})


def test_every_algorithm_declares_its_forwards_per_step():
    from zoft.algos import ALGORITHMS

    w = torch.nn.Parameter(torch.zeros(4, 3))
    for name, cls in ALGORITHMS.items():
        opt = cls([w])
        trials = 2 if name == "zo-sgd-cons" else 0  # its two trial points after the probes
        assert opt.forwards_per_step == (len(opt.probe_moves()) + trials if not cls.first_order else 1), name
        assert cls.forwards_per_step == opt.forwards_per_step, name  # the class default is an instance's


def test_hugging_face_key_names_point_at_zofts(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 1e-5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rate' \(did you mean 'lr'\?\)"):
        resolve(recipe)
    with pytest.raises(ConfigError, match=r"did you mean 'steps'"):
        resolve(None, {"max_steps": 10})


def test_the_embedded_alias_is_case_insensitive():
    from zoft.models import resolve_model_path

    assert resolve_model_path("SmolLM2-135M", convert=False) == "smollm2-135m"
