"""`zoft estimate-memory`: components from the algorithms' own code, CLI behaviour, and measured peaks."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from conftest import ROOT
from zoft.cli import app
from zoft.memory import MemoryRequest, estimate, parse_size

runner = CliRunner()


def test_parse_size():
    assert parse_size("80GB") == parse_size("80 GiB") == 80 * 2**30
    assert parse_size("512MB") == 512 * 2**20 and parse_size("1.5g") == int(1.5 * 2**30)
    with pytest.raises(ValueError, match="--gpu-memory"):
        parse_size("lots")


@pytest.mark.parametrize("algo", ["mezo", "hizoo", "tezo-adam", "zo-adam"])
def test_weights_and_state_equal_the_real_model_and_optimizer(algo, tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    from zoft.algos import ALGORITHMS, trainable_parameters

    path = str(tiny_model_dirs["llama"])
    result = estimate(MemoryRequest(model=path, algo=algo, dtype="float32", device="cpu"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    opt = ALGORITHMS[algo](trainable_parameters(model))
    assert result["components"]["weights"] == sum(p.numel() * 4 for p in model.parameters())
    assert result["components"]["optimizer state"] == opt.state_bytes()
    assert result["components"]["step temporaries"] == opt.transient_bytes()
    assert result["first_order_adamw"]["total"] > result["total"]


def test_activations_grow_with_batch_and_length_and_bf16_halves_the_weights(tiny_model_dirs):
    path = str(tiny_model_dirs["opt"])
    small = estimate(MemoryRequest(model=path, batch_size=4, seq_len=64))
    big = estimate(MemoryRequest(model=path, batch_size=8, seq_len=128))
    assert big["components"]["activations"] >= 2 * small["components"]["activations"]
    fp32 = estimate(MemoryRequest(model=path, dtype="float32"))
    assert fp32["components"]["weights"] == 2 * small["components"]["weights"]


def test_cli_table_json_and_fit_verdict(tiny_model_dirs):
    path = str(tiny_model_dirs["llama"])
    result = runner.invoke(app, ["estimate-memory", path, "--algo", "hizoo", "--gpu-memory", "1MB"],
                           terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "does not fit" in result.output
    data = json.loads(runner.invoke(app, ["estimate-memory", path, "--gpu-memory", "80GB", "--json"]).output)
    assert data["fits"] is True and data["algo"] == "mezo" and data["dtype"] == "bfloat16"
    assert data["total"] == sum(data["components"].values())


def test_modes_and_quantized_bases_count_what_zoft_modes_builds(tiny_model_dirs, tokenizer):
    from conftest import build_model
    from zoft.algos import trainable_parameters
    from zoft.modes import attach

    path = str(tiny_model_dirs["llama"])
    full = estimate(MemoryRequest(model=path, dtype="float32"))
    for mode in ("lora", "prefix", "prompt"):
        est = estimate(MemoryRequest(model=path, dtype="float32", mode=mode))
        built = attach(build_model("llama", len(tokenizer)), mode)
        assert est["trainable_params"] == sum(p.numel() for _, p in trainable_parameters(built)), mode
        assert est["components"]["weights"] == full["components"]["weights"] + 4 * est["trainable_params"]
        assert est["first_order_adamw"]["adam moments"] == 8 * est["trainable_params"]
    q8 = estimate(MemoryRequest(model=path, dtype="float32", mode="lora", load_in_8bit=True))
    q4 = estimate(MemoryRequest(model=path, dtype="float32", mode="lora", load_in_4bit=True))
    assert q4["components"]["weights"] < q8["components"]["weights"] < full["components"]["weights"]


def test_generator_and_exact_bf16_change_the_estimate_as_documented(tiny_model_dirs):
    from zoft.perturb import table_bytes

    path = str(tiny_model_dirs["llama"])
    params = estimate(MemoryRequest(model=path))["trainable_params"]
    table = estimate(MemoryRequest(model=path, algo="mezo"))
    philox = estimate(MemoryRequest(model=path, algo="mezo", noise="philox"))
    randn = estimate(MemoryRequest(model=path, algo="mezo", noise="randn"))
    exact = estimate(MemoryRequest(model=path, algo="mezo", exact_bf16=True))
    temps = lambda r: r["components"]["step temporaries"]  # noqa: E731
    assert temps(philox) == 0 < temps(randn)  # no table, no z buffer: the fused kernel's promise
    assert exact["components"]["exact-bf16 residuals"] == 2 * params
    assert exact["total"] > table["total"] + 2 * params - 1
    # the tiny model's tensors are all under TABLE_MIN: they draw with torch.randn, and no table is counted
    assert 0 < temps(table) == temps(randn) < table_bytes(torch.bfloat16)


@pytest.mark.parametrize("args,needle", [
    (["--exact-bf16", "--dtype", "float32"], "--exact-bf16 applies to bfloat16"),
    (["--noise", "gauss"], "--noise gauss"),
    (["--algo", "adamzo"], "--algo adamzo"),
    (["--mode", "lora", "--lora-targets", "wq"], "--lora-targets: no module named wq"),
    (["--mode", "adapters"], "--mode adapters"),
    (["--load-in-8bit"], "--mode full with --load-in-8bit"),
    (["--gpu-memory", "lots"], "--gpu-memory"),
    (["--seq-len", "0"], "--seq-len"),
])
def test_bad_inputs_exit_2(args, needle, tiny_model_dirs):
    result = runner.invoke(app, ["estimate-memory", str(tiny_model_dirs["opt"]), *args])
    assert result.exit_code == 2 and needle in result.output


def test_offload_counts_three_blocks_on_the_gpu_and_the_rest_on_the_host(tiny_model_dirs, tmp_path):
    # a config.json is all an estimate needs (bench/model_configs holds the OPT shapes without weights)
    config_only = tmp_path / "opt-config"
    config_only.mkdir()
    (config_only / "config.json").write_text((tiny_model_dirs["opt"] / "config.json").read_text())
    plain = estimate(MemoryRequest(model=str(config_only), dtype="float32"))
    off = estimate(MemoryRequest(model=str(config_only), dtype="float32", offload="cpu"))
    from conftest import build_model

    model = build_model("opt", 400)
    layers = model.model.decoder.layers
    block = sum(p.numel() * 4 for p in layers[0].parameters())
    assert off["host_bytes"] == len(layers) * block
    # the tiny model has two blocks, so "three on the GPU" adds one block to the weights figure
    assert off["components"]["weights"] == plain["components"]["weights"] + block
    embed = model.get_input_embeddings().weight  # tied to the head: its + copy is a step temporary
    assert off["components"]["step temporaries"] == plain["components"]["step temporaries"] + embed.numel() * 4
    for args, needle in ((["--algo", "fo-adam"], "offload supports --algo mezo"),
                         (["--device", "cpu"], "estimate it with --device cuda"),
                         (["--offload", "disk"], "--offload disk")):
        result = runner.invoke(app, ["estimate-memory", str(config_only), "--offload", "cpu", *args])
        assert result.exit_code == 2 and needle in result.output, result.output


def test_missing_model_exit_2():
    result = runner.invoke(app, ["estimate-memory", "./no/such/model"])
    assert result.exit_code == 2 and "no/such/model" in result.output


def _check(model: str, algos: list[str], rows: int, seq_len: int) -> list[dict]:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "memory_check.py"), "--model", model, "--rows",
                          str(rows), "--seq-len", str(seq_len), "--algo", *algos],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def small_llama_dir(tmp_path_factory, tokenizer):
    """A 13.6 M-parameter Llama (54 MiB fp32): large enough that the model-dependent memory is measurable above
    the process runtime, small enough to load in a second."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("small-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_estimate_matches_the_measured_peak_with_the_runtime_measured_here(small_llama_dir):
    """The estimator, not this machine's runtime constant: the child process measures its own runtime
    (`measure_cpu_runtime`), and the estimate with that runtime must be within 15 % of the peak, its model-dependent
    part (weights, noise table, state, activations: 68-100 MiB here) within 25 % of the peak above the runtime.
    Measured here: total 0.97-0.98, model part 0.83-0.92 (a first forward of this model leaves ~15 MiB more
    resident than the throwaway one)."""
    for row in _check(str(small_llama_dir), ["mezo", "tezo-adam"], rows=4, seq_len=32):
        model_part = row["estimated_bytes"] - row["components"]["runtime"]
        assert 0.85 <= (model_part + row["runtime_bytes"]) / row["peak_bytes"] <= 1.15, row
        assert 0.75 <= row["model_ratio"] <= 1.25, row


@pytest.mark.slow
def test_estimate_within_15_percent_of_the_measured_peak_smollm2():
    # measured here (fp32, 16 rows × 129 tokens): est/peak 0.92-1.02 for every ZO algorithm. The first-order
    # reference is a rough guide (its backward activations are counted pessimistically: 1.45 here), not held to it.
    from zoft.algos import ALGORITHMS

    zo = [name for name, cls in ALGORITHMS.items() if not cls.first_order]
    for row in _check("smollm2-135m", zo, rows=16, seq_len=128):
        assert 0.85 <= row["ratio"] <= 1.15, row
