"""CUDA checks (opt-in: `pytest -m gpu`; skipped without a GPU): device-side generators and in-place passes."""

import pytest
import torch

from zoft.algos import MeZO
from zoft.perturb import PerturbationEngine, step_seed

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_z_is_deterministic_and_on_device():
    p = torch.zeros(1000, 64, device="cuda", dtype=torch.bfloat16)
    eng = PerturbationEngine([p])
    z1 = eng.noise(0, step_seed(0, 1)).clone()
    assert z1.device.type == "cuda" and z1.dtype == torch.float32
    assert torch.equal(z1, eng.noise(0, step_seed(0, 1)))
    assert abs(z1.std().item() - 1) < 0.01


def test_cuda_mezo_restores_fp32_and_stays_in_place():
    p = torch.nn.Parameter(torch.rand(256, 256, device="cuda") * 2 - 1)
    before, ptr = p.detach().clone(), p.data_ptr()
    opt = MeZO([p], lr=1e-3, eps=1e-3)
    opt.step(lambda: torch.tensor(1.0, device="cuda"))  # g = 0: a pure perturb/restore cycle
    assert p.data_ptr() == ptr
    assert (p - before).abs().max().item() <= 1e-6


def test_cuda_table_z_equals_cpu_table_z_and_axpy_is_fused():
    n = 3 << 20
    seed = step_seed(0, 2)
    cpu = PerturbationEngine([torch.zeros(n)]).noise(0, seed).clone()
    p = torch.zeros(n, device="cuda", dtype=torch.bfloat16)
    eng = PerturbationEngine([p])
    assert torch.equal(eng.noise(0, seed).cpu(), cpu)  # the table is built on the CPU: one stream everywhere
    eng.axpy_(0, seed, 1.0)
    assert torch.equal(p.float().cpu(), cpu)  # table values are exact in bf16


def test_cuda_philox_kernel_is_seeded_and_restores():
    pytest.importorskip("triton")
    p = torch.nn.Parameter(torch.rand(512, 300, device="cuda") * 2 - 1)
    before = p.detach().clone()
    opt = MeZO([p], lr=1e-3, eps=1e-3, noise="philox")
    z = opt.engine.noise(0, step_seed(0, 1)).clone()
    assert torch.equal(z, opt.engine.noise(0, step_seed(0, 1))) and abs(z.std().item() - 1) < 0.01
    opt.step(lambda: torch.tensor(1.0, device="cuda"))  # g = 0: perturb and restore in the fused kernel
    assert (p - before).abs().max().item() <= 1e-6


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_model_sharded_over_two_gpus_trains_each_tensor_on_its_device(tiny_model_dirs, tmp_path):
    from typer.testing import CliRunner

    from zoft.cli import app

    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dirs["llama"]), "--data-dir", "builtin",
                                      "--num-train", "32", "--num-dev", "8", "--num-eval", "8", "--batch-size", "4",
                                      "--steps", "3", "--device-map", "balanced", "--dtype", "float32",
                                      "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output



def test_offload_on_cuda_matches_the_resident_run_and_holds_less():
    """--offload cpu with real streams: the same losses and weights as the run kept on the GPU, less memory."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    from zoft.algos import trainable_parameters
    from zoft.offload import attach

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                                        num_attention_heads=4, num_key_value_heads=4)).eval()
    ids = torch.randint(3, 512, (4, 32), device="cuda")

    def steps(model, opt):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        losses = [opt.step(lambda: model(input_ids=ids, labels=ids).loss) for _ in range(3)]
        opt.runner.flush()  # an offloaded run's last update is pending until the blocks' next visit
        return losses, torch.cuda.max_memory_allocated()

    resident = copy.deepcopy(base).cuda()
    la, peak_resident = steps(resident, MeZO(trainable_parameters(resident), lr=1e-3, eps=1e-2))
    resident = resident.cpu()
    torch.cuda.empty_cache()
    b = MeZO(trainable_parameters(base), lr=1e-3, eps=1e-2)
    off = attach(base, b, "cuda")
    lb, peak_offloaded = steps(base, b)
    assert all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(la, lb))
    for (name, p), (_, q) in zip(resident.named_parameters(), base.named_parameters()):
        assert torch.allclose(p, q.cpu(), atol=1e-6), name
    assert not off._gpu and off.uploads == 3 * 8 + 8  # one upload per block per step, one per block to flush
    assert peak_offloaded < peak_resident - 4 * off.block_bytes()  # 8 blocks resident against at most 3
