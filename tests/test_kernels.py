"""The Triton `philox` kernel, run on the CPU under Triton's interpreter (TRITON_INTERPRET=1).

Triton reads TRITON_INTERPRET when a kernel is defined, so the checks run in a child pytest process that starts
with it set (`test_kernel_checks_pass_under_the_triton_interpreter`); in the parent they are skipped. On a CUDA
machine `pytest -m gpu` runs the same kernel compiled (tests/test_gpu.py).
"""

import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

from zoft.perturb import PerturbationEngine, step_seed, tensor_seed  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
inner = pytest.mark.skipif(not INTERPRETED, reason="runs in the child process with TRITON_INTERPRET=1")


@pytest.mark.skipif(INTERPRETED, reason="this is the parent")
def test_kernel_checks_pass_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" in done.stdout  # the inner checks ran, the parent skipped


@inner
def test_philox_z_is_seeded_independent_and_standard_normal():
    a, b = torch.zeros(30_000), torch.zeros(30_000)
    eng = PerturbationEngine([a, b], noise="philox")
    seed = step_seed(0, 4)
    z0 = eng.noise(0, seed).clone()
    assert torch.equal(z0, eng.noise(0, seed))
    assert not torch.equal(z0, eng.noise(0, seed + 1))
    z1 = eng.noise(1, seed).clone()
    assert abs(torch.corrcoef(torch.stack([z0, z1]))[0, 1].item()) < 0.03
    assert abs(z0.mean().item()) < 0.03 and abs(z0.std().item() - 1) < 0.03
    assert abs(((z0.double() ** 4).mean() - 3).item()) < 0.2


@inner
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_philox_axpy_applies_its_own_z_in_place(dtype):
    p = torch.randn(5_000, generator=torch.Generator().manual_seed(1)).to(dtype)
    ptr = p.data_ptr()
    eng = PerturbationEngine([p], noise="philox")
    seed = step_seed(2, 0)
    expected = p.float() + 1e-2 * eng.noise(0, seed)
    eng.axpy_(0, seed, 1e-2)
    assert p.data_ptr() == ptr
    ulp = {torch.float32: 1e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    assert ((p.float() - expected).abs() <= ulp * expected.abs().clamp_min(1)).all()


@inner
def test_one_launch_per_dtype_group_covers_all_tensors(monkeypatch):
    from zoft import kernels

    calls = []
    real = kernels._philox_axpy

    class Counting:
        def __getitem__(self, grid):
            calls.append(grid)
            return real[grid]

    monkeypatch.setattr(kernels, "_philox_axpy", Counting())
    ts = [torch.zeros(3000), torch.zeros(10), torch.zeros(2000, dtype=torch.bfloat16), torch.zeros(7)]
    eng = PerturbationEngine(ts, noise="philox")
    eng.add_(step_seed(0, 0), 1.0)
    assert len(calls) == 2  # fp32 tensors in one launch, bf16 in another
    for i, t in enumerate(ts):  # and each tensor got its own stream (bf16: within one ulp, as the interpreter's
        z = eng.noise(i, step_seed(0, 0))  # fp32→bf16 conversion need not round like torch's)
        assert ((t.float() - z).abs() <= 2**-7 * z.abs()).all()


@inner
def test_mezo_with_philox_restores_and_needs_no_z_buffer():
    from zoft.algos import ALGORITHMS

    p = torch.nn.Parameter(torch.rand(64, 64) * 2 - 1)
    before = p.detach().clone()
    opt = ALGORITHMS["mezo"]([p], lr=1e-3, eps=1e-3, noise="philox")
    assert opt.transient_bytes() == 0
    opt.step(lambda: 1.0)  # g = 0: a pure perturb/restore cycle
    assert (p.detach() - before).abs().max().item() <= 1e-6
    opt.step(lambda: float(p.detach().sum()))  # one real step changes the weights
    assert not torch.equal(p.detach(), before)


@inner
def test_hizoo_kernel_perturbation_reads_h_in_the_same_pass():
    from zoft.algos import ALGORITHMS

    p = torch.nn.Parameter(torch.zeros(40, 50))
    opt = ALGORITHMS["hizoo"]([p], noise="philox")
    h = torch.rand(40, 50, generator=torch.Generator().manual_seed(0)) * 3 + 0.5
    opt.state[p]["hessian"].copy_(h)
    seed = step_seed(0, 0)
    opt.perturb(seed, 0.1)
    z = opt.engine.noise(0, seed)
    assert torch.allclose(p.detach(), 0.1 * z / h.sqrt(), atol=1e-6)
    assert tensor_seed(seed, 0) != tensor_seed(seed, 1)
