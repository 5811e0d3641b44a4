"""CPU offload (`--offload cpu`, zoft.offload): blocks streamed one at a time, both probes per visit, the update
deferred to the next visit. The CPU plays the GPU here (the "upload" is a copy), which runs every step of the
protocol; the CUDA streams are checked in tests/test_gpu.py."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import build_model
from zoft.algos import ALGORITHMS, MeZO, NonFiniteLossError, trainable_parameters
from zoft.cli import app
from zoft.offload import Offloader, attach
from zoft.runner import StepRunner

runner = CliRunner()


# every algorithm that says it can run offloaded is held to it here, so a new one is tested without an edit
OFFLOADABLE = [name for name, cls in ALGORITHMS.items() if cls.offloadable]
OPTIONS = {"hizoo": {"hessian_smooth": 0.01}, "hizoo-l": {"hessian_smooth": 0.01}, "tezo": {"rank": 4},
           "tezo-m": {"rank": 4}, "tezo-adam": {"rank": 4}, "lozo": {"lozo_interval": 2},
           "lozo-m": {"lozo_interval": 2}, "subzero": {"subzero_rank": 2, "subzero_interval": 2},
           "fzoo": {"fzoo_probes": 3}}


def _pair(kind, dtype=torch.float32, algo="mezo"):
    plain = build_model(kind, 400).to(dtype)
    offloaded = copy.deepcopy(plain)
    cls = ALGORITHMS[algo]
    a = cls(trainable_parameters(plain), lr=1e-3, eps=1e-2, weight_decay=0.1, **OPTIONS.get(algo, {}))
    b = cls(trainable_parameters(offloaded), lr=1e-3, eps=1e-2, weight_decay=0.1, **OPTIONS.get(algo, {}))
    return plain, a, offloaded, b, attach(offloaded, b, "cpu")


def test_every_zo_algorithm_offloads_but_first_order_and_trial_points():
    # first-order steps need every block's activations; ZO-SGD-Cons needs a second round of forwards after the
    # probes (its trial points), which a single visit per block cannot give
    # QZO trains the scales of a 4-bit base, which offloading does not stream
    refused = {name for name, cls in ALGORITHMS.items() if cls.first_order} | {"zo-sgd-cons", "qzo"}
    assert set(OFFLOADABLE) == set(ALGORITHMS) - refused


def _loss(model, ids):
    return lambda: model(input_ids=ids, labels=ids).loss


def _same_weights(m1, m2):
    a, b = m1.state_dict(), m2.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("algo", OFFLOADABLE)
@pytest.mark.parametrize("kind", ["opt", "llama"])  # OPT ties its head to the input embedding
def test_an_offloaded_algorithm_equals_the_resident_one_bitwise(kind, algo):
    plain, a, offloaded, b, off = _pair(kind, algo=algo)
    ids = torch.randint(3, 400, (4, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        assert a.step(_loss(plain, ids)) == b.step(_loss(offloaded, ids))
    assert b.last == a.last and b.forwards == a.forwards == 4 * a.forwards_per_step
    assert b.engine.passes == a.engine.passes
    assert off.pending is not None and off.uploads == 4 * len(off.blocks)  # one upload per block per step
    with torch.inference_mode():  # a plain forward applies the pending update first
        assert torch.equal(plain(input_ids=ids).logits, offloaded(input_ids=ids).logits)
    assert off.pending is None and off.flushes == 1
    assert _same_weights(plain, offloaded)
    for p, q in zip(a.tensors, b.tensors):  # the state that travelled with the blocks
        assert all(torch.equal(v, b.state[q][k]) for k, v in a.state[p].items() if isinstance(v, torch.Tensor))
    # between visits the blocks' tensors are the CPU copies, not device copies
    assert all(s.param is None or s.param.data_ptr() == s.store.data_ptr() for slots in off._slots for s in slots)


def test_the_tied_embedding_is_perturbed_once_per_probe():
    _, _, _, _, off = _pair("opt")
    assert len(off._shared) == 1  # embed_tokens.weight, used again by lm_head
    assert sum(1 for u in off.units if u.block is None) == 4 and len(off.blocks) == 2


@pytest.mark.parametrize("algo", ["mezo", "hizoo"])
def test_stochastic_rounding_is_per_tensor_so_offload_equals_a_tensorwise_run(algo):
    plain, a, offloaded, b, _ = _pair("llama", torch.bfloat16, algo)
    a.stochastic_rounding = b.stochastic_rounding = True
    a.runner = StepRunner(a, tensorwise=True)
    ids = torch.randint(3, 400, (4, 12), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        assert a.step(_loss(plain, ids)) == b.step(_loss(offloaded, ids))
    b.runner.flush()
    assert _same_weights(plain, offloaded)


@pytest.mark.parametrize("algo", OFFLOADABLE)
def test_a_non_finite_step_is_restored_at_the_next_visit(algo):
    plain, a, offloaded, b, _ = _pair("llama", algo=algo)
    ids = torch.randint(3, 400, (4, 12), generator=torch.Generator().manual_seed(2))
    for step in range(3):
        for model, opt in ((plain, a), (offloaded, b)):
            closure = _loss(model, ids) if step != 1 else (lambda m=model: m(input_ids=ids).logits.sum() * float("inf"))
            try:
                opt.step(closure)
            except NonFiniteLossError:
                assert step == 1
                opt.t += 1  # as the training loop does: the seed of a skipped step is spent
    b.runner.flush()
    assert a.t == b.t == 3 and _same_weights(plain, offloaded)


def test_an_error_in_a_probe_is_raised_and_the_other_probe_does_not_hang():
    _, _, offloaded, b, _ = _pair("llama")

    def closure():
        raise RuntimeError("boom in the forward")

    with pytest.raises(RuntimeError, match="boom"):
        b.step(closure)


def test_offload_refuses_models_it_cannot_stream():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no list of transformer blocks"):
        Offloader(model, MeZO(model.parameters(), lr=1e-3), "cpu")


# -- the CLI: --offload cpu end to end, on the CPU standing in for the GPU ---------------------------------------
def _train(model_dir, out, *extra):
    args = ["train", "--model", str(model_dir), "--data-dir", "builtin", "--num-train", "32", "--num-dev", "8",
            "--num-eval", "8", "--batch-size", "4", "--lr", "1e-3", "--eps", "1e-2", "--output-dir", str(out),
            "--device", "cpu", "--steps", "6", "--eval-every", "3", "--save-every", "2", "--keep-last", "0", *extra]
    return runner.invoke(app, args)


def _weights(path):
    files = sorted(path.glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(f).items()}


def _equal(a, b):
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def cpu_as_gpu(monkeypatch):
    monkeypatch.setattr("zoft.offload.require_cuda", lambda device: None)


@pytest.mark.parametrize("mode, algo", [("full", "mezo"), ("lora", "mezo"), ("full", "hizoo")])
def test_an_offloaded_run_equals_the_same_run_without_offload(mode, algo, cpu_as_gpu, tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["opt"]
    extra = ("--mode", mode, "--lora-targets", "q_proj,v_proj") if mode == "lora" else ()
    extra += ("--algo", algo) + (("--hessian-smooth", "0.01") if algo == "hizoo" else ())
    plain, off = tmp_path / "plain", tmp_path / "off"
    assert (r := _train(model_dir, plain, *extra)).exit_code == 0, r.output
    assert (r := _train(model_dir, off, "--offload", "cpu", *extra)).exit_code == 0, r.output
    for name in ("checkpoint-2", "checkpoint-4", "best", "final"):
        assert _equal(plain / name, off / name), name
    evals = [json.loads(x) for x in (off / "metrics.jsonl").read_text().splitlines()]
    start = evals[0]
    assert start["offload"] == "cpu" and start["offload_blocks"] == 2
    plain_evals = [json.loads(x) for x in (plain / "metrics.jsonl").read_text().splitlines()]
    assert [e.get("dev_accuracy") for e in evals if e["event"] == "eval"] == \
           [e.get("dev_accuracy") for e in plain_evals if e["event"] == "eval"]


@pytest.mark.parametrize("algo", ["zo-adam", "hizoo-l"])
def test_an_offloaded_run_resumes_and_replays_bitwise(algo, cpu_as_gpu, tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    flags = ("--offload", "cpu", "--algo", algo) + (("--hessian-smooth", "0.01") if algo == "hizoo-l" else ())
    assert (r := _train(model_dir, whole, *flags)).exit_code == 0, r.output
    assert (r := _train(model_dir, split, *flags, "--steps", "4")).exit_code == 0, r.output
    assert (r := _train(model_dir, split, *flags, "--resume")).exit_code == 0, r.output
    assert _equal(whole / "final", split / "final")
    out = tmp_path / "replayed"
    r = runner.invoke(app, ["replay", str(model_dir), str(whole), "--to-step", "6", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert _equal(out, whole / "final")


@pytest.mark.parametrize("extra, message", [
    ((), "streams the transformer blocks from CPU memory to a CUDA GPU"),
    (("--algo", "fo-adam"), "--offload cpu with --algo fo-adam: offload supports --algo mezo, zo-sgd-mmt"),
    (("--mode", "prefix"), "use --mode full or lora"),
    (("--micro-batch-size", "2"), "one forward per probe"),
    (("--device-map", "auto"), "pick one"),
])
def test_offload_refusals_name_the_flag_and_exit_2(extra, message, tiny_model_dirs, tmp_path):
    out = tmp_path / "run"
    r = _train(tiny_model_dirs["llama"], out, "--offload", "cpu", *extra)
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())
    assert not out.exists()


def test_an_unknown_offload_target_is_refused(tiny_model_dirs, tmp_path):
    r = _train(tiny_model_dirs["llama"], tmp_path / "run", "--offload", "disk")
    assert r.exit_code == 2 and "--offload disk: choose cpu" in r.output
