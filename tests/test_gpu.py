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
