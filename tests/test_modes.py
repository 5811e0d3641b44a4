"""Tuning modes (docs/algorithms.md, "Tuning modes"): LoRA, prefix and prompt tuning, quantized bases, adapters on
disk."""

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import build_model
from zoft.algos import QZO, MeZO, trainable_parameters
from zoft.cli import app
from zoft.modes import PrefixModel, attach
from zoft.scoring import classification_loss, collate, encode_examples
from zoft.tasks import get_task, load_splits

runner = CliRunner()
MODES = ("lora", "prefix", "prompt")


@pytest.fixture(scope="module")
def batch(tokenizer):
    splits = load_splits(get_task("sst2"), "builtin", num_train=8, num_dev=0, num_eval=1)
    return [collate(encode_examples(tokenizer, splits.train), tokenizer.pad_token_id)]


def _loss(model, batch) -> float:
    with torch.inference_mode():
        return float(classification_loss(model, batch))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_only_the_adapter_trains_and_the_loss_falls(kind, mode, tokenizer, batch):
    base = build_model(kind, len(tokenizer))
    frozen = {id(p): p.detach().clone() for p in base.parameters()}
    model = attach(base, mode, seed=0)
    named = trainable_parameters(model)
    assert named and all(id(p) not in frozen for _, p in named)  # the trainable set is the adapter
    before = {n: p.detach().clone() for n, p in named}
    start = _loss(model, batch)
    opt = MeZO(named, lr={"lora": 1e-2, "prefix": 1e-1, "prompt": 1e-1}[mode], eps=1e-2, seed=0)
    for _ in range(40):
        opt.step(lambda: classification_loss(model, batch))
    assert _loss(model, batch) < start
    assert any(not torch.equal(p, before[n]) for n, p in named)
    for p in base.parameters():  # every base weight bitwise unchanged
        if id(p) in frozen:
            assert torch.equal(p.detach(), frozen[id(p)])


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_lora_count_and_zero_b_start_equal_the_base(kind, tokenizer):
    base = build_model(kind, len(tokenizer))
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.inference_mode():
        expected = base(input_ids=ids).logits.clone()
    shapes = {n: m.weight.shape for n, m in base.named_modules() if n.endswith(("q_proj", "v_proj"))}
    model = attach(base, "lora", lora_r=8)
    count = sum(p.numel() for _, p in trainable_parameters(model))
    assert count == sum(8 * (shape[1] + shape[0]) for shape in shapes.values())  # r·in (A) + out·r (B)
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, expected)  # B = 0: the base model


def test_prefix_starts_from_the_frozen_models_keys_and_values(tokenizer):
    base = build_model("llama", len(tokenizer))
    model = attach(base, "prefix", virtual_tokens=5, seed=3)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, base.get_input_embeddings().weight.shape[0], (1, 5), generator=gen)
    with torch.inference_mode():
        cache = base(input_ids=ids, use_cache=True).past_key_values
    for layer, k, v in zip(cache.layers, model.keys, model.values):
        assert torch.equal(k, layer.keys[0]) and torch.equal(v, layer.values[0])
    assert sum(p.numel() for _, p in trainable_parameters(model)) == 2 * 2 * 5 * 2 * 8  # layers·(K,V)·n·kv·d


def test_prefix_of_a_sequence_acts_like_those_tokens_in_front(tokenizer):
    """With activation init, a prefix equals feeding its tokens first: the logits of the rest match."""
    base = build_model("llama", len(tokenizer))
    model = attach(base, "prefix", virtual_tokens=5, seed=3)
    gen = torch.Generator().manual_seed(3)
    prefix_ids = torch.randint(0, base.get_input_embeddings().weight.shape[0], (1, 5), generator=gen)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.inference_mode():
        full = base(input_ids=torch.cat([prefix_ids, ids], 1)).logits[:, 5:]
        wrapped = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.allclose(full, wrapped, atol=1e-5)
    assert isinstance(model, PrefixModel)


def _train(args, tmp_path, name, *extra):
    out = tmp_path / name
    result = runner.invoke(app, ["train", *args, "--output-dir", str(out), *extra])
    assert result.exit_code == 0, result.output
    return out


def _common(model_dir):
    return ["--model", str(model_dir), "--data-dir", "builtin", "--num-train", "32", "--num-dev", "8",
            "--num-eval", "8", "--batch-size", "4", "--device", "cpu", "--eval-every", "0", "--log-every", "1"]


def _adapter_tensors(path):
    from safetensors.torch import load_file

    files = list(path.glob("adapter_model.safetensors")) + list(path.glob("zoft_adapter.safetensors"))
    return load_file(files[0])


@pytest.mark.parametrize("mode", MODES)
def test_cli_mode_run_saves_the_adapter_resumes_exactly_and_evaluates(mode, tiny_model_dirs, tmp_path):
    args = [*_common(tiny_model_dirs["llama"]), "--mode", mode, "--lr", "1e-2"]
    a = _train(args + ["--steps", "4"], tmp_path, "a")
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((a / "config.yaml").read_text())))
    assert cfg["mode"] == mode and cfg["eps"] == {"lora": 1e-2, "prefix": 1e-1, "prompt": 1e-1}[mode]
    final = a / "final"
    assert not (final / "model.safetensors").exists()  # the adapter only
    if mode == "lora":
        assert (final / "adapter_model.safetensors").is_file() and (final / "adapter_config.json").is_file()
    # resume: 2 steps, then 2 more, equals 4 in one go
    _train(args + ["--steps", "2", "--save-every", "2"], tmp_path, "b")
    _train(args + ["--steps", "4", "--resume"], tmp_path, "b")
    x, y = _adapter_tensors(a / "final"), _adapter_tensors(tmp_path / "b" / "final")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    # zoft eval rebuilds the adapter over its base and reproduces the run's own evaluation
    report = json.loads((a / "eval.json").read_text())
    result = runner.invoke(app, ["eval", str(a), "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.output)
    assert again["eval_accuracy"] == report["eval_accuracy"]
    assert abs(again["eval_loss"] - report["eval_loss"]) < 1e-5


def test_lora_adapter_reloads_with_peft_and_merge_writes_a_plain_model(tiny_model_dirs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dirs["opt"]
    run = _train([*_common(model_dir), "--mode", "lora", "--lr", "1e-1", "--steps", "3", "--merge"], tmp_path,
                 "m")
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    merged = AutoModelForCausalLM.from_pretrained(run / "final", dtype=torch.float32).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                                             run / "final" / "adapter").eval()
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        a, b, c = (m(input_ids=ids).logits for m in (merged, with_adapter, plain))
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c)


@pytest.mark.parametrize("flag,mode", [("--load-in-8bit", "lora"), ("--load-in-4bit", "lora"),
                                       ("--load-in-8bit", "prefix")])
def test_quantized_base_trains_an_adapter_saves_reloads_and_refuses_full(flag, mode, tiny_llama_64, tmp_path):
    # bf16 compute under fp32 adapters: the adapters must meet the base in its dtype
    args = [*_common(tiny_llama_64), flag, "--lr", "1e-2", "--dtype", "bfloat16"]
    refused = runner.invoke(app, ["train", *args, "--output-dir", str(tmp_path / "full")])
    assert refused.exit_code == 2 and "--mode full with " + flag in refused.output
    assert not (tmp_path / "full").exists()
    run = _train(args + ["--mode", mode, "--steps", "3"], tmp_path, "q")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in metrics if r["event"] == "start")
    assert start["trainable_params"] < 10_000  # the adapter, not the int8/NF4 base
    result = runner.invoke(app, ["eval", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["eval_accuracy"] == json.loads((run / "eval.json").read_text())["eval_accuracy"]


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_scales_mode_trains_only_the_nf4_scales_and_the_loss_falls(tiny_llama_64, tokenizer, batch):
    from zoft.models import load_model

    base, _, _ = load_model(str(tiny_llama_64), "float32", "cpu", quantize="4bit-scales")
    before = _state(base)
    model = attach(base, "scales")
    named = trainable_parameters(model)
    layers = [n for n, m in base.named_modules() if type(m).__name__ == "Linear4bit"]
    assert len(named) == len(layers) == 14 and all(p.dtype == torch.float32 for _, p in named)
    assert sum(p.numel() for _, p in named) * 64 == sum(base.get_submodule(n).weight.quant_state.shape.numel()
                                                         for n in layers)  # one scale per block of 64 weights
    start = _loss(model, batch)
    opt = QZO(named, lr=2e-3, eps=1e-3, seed=0)
    for _ in range(30):
        opt.step(lambda: classification_loss(model, batch))
    assert _loss(model, batch) < start
    after = _state(base)
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    # the 4-bit codes, embeddings, norms and head are bitwise as loaded: only the block scales moved
    assert changed and all(k.endswith(".absmax") for k in changed), changed
    assert len(changed) == len(layers)


def test_scales_mode_restores_exactly_when_the_step_is_zero(tiny_llama_64, batch):
    from zoft.models import load_model

    base, _, _ = load_model(str(tiny_llama_64), "float32", "cpu", quantize="4bit-scales")
    model = attach(base, "scales")
    named = trainable_parameters(model)
    before = [p.detach().clone() for _, p in named]
    opt = QZO(named, lr=1e-3, eps=1e-3)
    def logits():
        with torch.inference_mode():
            return model(input_ids=batch[0].input_ids, attention_mask=batch[0].attention_mask).logits

    before_logits = logits()
    opt.perturb(0, 1e-2)  # the scales are what the forwards see
    moved = logits()
    assert not torch.allclose(before_logits, moved)
    opt.perturb(0, -1e-2)
    opt.step(lambda: 1.0)  # equal probe losses: g = 0, the step only restores
    assert max(float((p.detach() - b).abs().max()) for (_, p), b in zip(named, before)) <= 1e-6


def test_cli_scales_run_evaluates_its_checkpoint(tiny_llama_64, tmp_path):
    run = _train([*_common(tiny_llama_64), "--algo", "qzo", "--mode", "scales", "--load-in-4bit", "--lr", "1e-3",
                  "--steps", "3"], tmp_path, "s")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 2 layers × (q, o 64×64; k, v 32×64; gate, up, down 128×64) = 73,728 weights: 1,152 blocks of 64
    assert next(r for r in metrics if r["event"] == "start")["trainable_params"] == 1152
    assert json.loads((run / "final" / "zoft_adapter.json").read_text())["mode"] == "scales"
    result = runner.invoke(app, ["eval", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["eval_accuracy"] == json.loads((run / "eval.json").read_text())["eval_accuracy"]


@pytest.mark.parametrize("args,needle", [
    (["--mode", "adapters"], "--mode adapters"),
    (["--mode", "scales"], "--mode scales trains the per-block scales of an NF4 base: add --load-in-4bit"),
    (["--algo", "qzo"], "--algo qzo runs in --mode scales only, not full: add --mode scales --load-in-4bit"),
    (["--algo", "qzo", "--mode", "lora"], "--algo qzo runs in --mode scales only, not lora"),
    (["--lora-r", "4"], "--lora-r applies to --mode lora"),
    (["--mode", "lora", "--virtual-tokens", "4"], "--virtual-tokens applies to --mode prefix or prompt"),
    (["--mode", "prefix", "--prefix-init", "zeros"], "activations or random"),
    (["--mode", "lora", "--load-in-8bit", "--load-in-4bit"], "contradict"),
    (["--mode", "lora", "--load-in-8bit", "--merge"], "--merge with --load-in-8bit"),
    (["--mode", "prefix", "--merge"], "--merge applies to --mode lora"),
    (["--mode", "lora", "--lora-targets", "wq,wv"], "--lora-targets: no module named wq, wv"),
])
def test_bad_mode_flags_exit_2(args, needle, tiny_model_dirs, tmp_path):
    result = runner.invoke(app, ["train", *_common(tiny_model_dirs["llama"]), *args, "--steps", "2",
                                 "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert needle in result.output
