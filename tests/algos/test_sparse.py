"""Sparse-MeZO against its oracles (docs/algorithms.md, "Sparse-MeZO") on the quadratic of test_mezo."""

import math

import pytest
import torch

from tests.algos.test_mezo import Quadratic
from zoft.algos import MeZO, SparseMeZO
from zoft.algos.sparse import pack, unpack


def _mask(q, opt):
    return torch.cat([(p.detach().double().abs() <= opt.state[p]["threshold"]).reshape(-1) for p in q.params])


@pytest.mark.parametrize("n", [1, 7, 8, 13, 64])
def test_pack_unpack_round_trip(n):
    m = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.4
    packed = pack(m)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert torch.equal(unpack(packed, n), m)


def test_threshold_keeps_the_smallest_fraction_of_each_tensor():
    q = Quadratic(shapes=((10, 12), (40,)))
    opt = SparseMeZO(q.params, sparsity=0.75)
    for p in q.params:
        kept = p.detach().abs() <= opt.state[p]["threshold"]
        assert int(kept.sum()) == math.ceil(0.25 * p.numel())
        assert p.detach().abs()[kept].max() < p.detach().abs()[~kept].min()  # the small ones, not any quarter


def test_probes_scalar_and_update_follow_the_rule_on_the_mask_only():
    q = Quadratic(shapes=((6, 8), (9,)))
    opt = SparseMeZO(q.params, lr=1e-2, eps=1e-3, sparsity=0.5, seed=4)
    theta, grad, m = q.theta(), q.grad(), _mask(q, opt)
    opt.step(q.closure)
    zm = q.z(opt, 0) * m
    assert torch.allclose(q.seen[0], theta + 1e-3 * zm, atol=1e-14)
    assert torch.allclose(q.seen[1], theta - 1e-3 * zm, atol=1e-14)
    g = float(zm @ grad)  # central differences are exact on a quadratic
    assert opt.last["projected_grad"] == pytest.approx(g, rel=1e-9)
    assert torch.allclose(q.theta(), theta - 1e-2 * g * zm, atol=1e-13)
    assert opt.forwards == 2 and not opt._masks  # the step's bit masks are freed with the update


def test_weights_outside_the_mask_are_never_touched_even_with_weight_decay():
    q = Quadratic(shapes=((12, 10), (30,)), dtype=torch.float32)
    opt = SparseMeZO([("w", q.params[0]), ("b", q.params[1])], lr=1e-2, eps=1e-3, weight_decay=0.5,
                     sparsity=0.6, seed=1)
    big = [(p.detach().abs() > opt.state[p]["threshold"]) for p in q.params]
    frozen = [p.detach()[b].clone() for p, b in zip(q.params, big)]
    start = q.params[0].detach().clone()
    for _ in range(20):
        opt.step(q.closure)
    for p, b, f in zip(q.params, big, frozen):
        assert torch.equal(p.detach()[b], f)  # bitwise: the probes and the decayed update skip them
    assert not torch.equal(q.params[0].detach()[~big[0]], start[~big[0]])


def test_the_mask_follows_the_weights():
    q = Quadratic(shapes=((8, 8),))
    opt = SparseMeZO(q.params, lr=1e-30, eps=1e-3, sparsity=0.5, seed=0)
    p = q.params[0]
    small = (p.detach().abs() <= opt.state[p]["threshold"]).nonzero()[0].tolist()
    with torch.no_grad():
        p[small[0], small[1]] = 10.0  # now far above h: the next step must leave it out
    opt.step(q.closure)
    assert all(float(seen.view(8, 8)[small[0], small[1]]) == 10.0 for seen in q.seen)


def test_the_estimate_is_unbiased_for_the_masked_gradient():
    q = Quadratic(shapes=((4, 5),))
    grad, m = q.grad(), _mask(q, SparseMeZO(q.params, sparsity=0.5))
    total = torch.zeros_like(grad)
    n = 4000
    opt = SparseMeZO(q.params, lr=1e-30, eps=1e-3, sparsity=0.5)
    start = q.params[0].detach().clone()
    for s in range(n):
        opt.seed, opt.t = s, 0  # a fresh run per seed, from the same θ (the weight at h stays at h)
        with torch.no_grad():
            q.params[0].copy_(start)
        opt.step(q.closure)
        total += opt.last["projected_grad"] * q.z(opt, 0) * m
    mean = total / n
    assert torch.all(mean[~m] == 0)
    assert float((mean - grad * m).norm() / (grad * m).norm()) < 0.1


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_restore_is_exact(dtype, tol):
    q = Quadratic(dtype=dtype)
    before = [p.detach().clone() for p in q.params]
    opt = SparseMeZO(q.params, lr=1e-30, eps=1e-3)
    for _ in range(3):
        opt.step(q.closure)
    assert max((p - p0).abs().max().item() for p, p0 in zip(q.params, before)) <= tol


def test_sparsity_zero_is_mezo_and_it_descends():
    a, b = Quadratic(), Quadratic()
    opt_a, opt_b = SparseMeZO(a.params, lr=1e-2, sparsity=0.0, seed=3), MeZO(b.params, lr=1e-2, seed=3)
    for _ in range(5):
        opt_a.step(a.closure)
        opt_b.step(b.closure)
    assert torch.allclose(a.theta(), b.theta(), atol=1e-12)
    q = Quadratic(dense=False)
    opt = SparseMeZO(q.params, lr=5e-2, sparsity=0.5, seed=0)
    f0 = q.f()
    for _ in range(300):
        opt.step(q.closure)
    assert q.f() < f0 - 0.2 * abs(f0)
    assert opt.state_bytes() == 8 * len(q.params)  # one fp64 threshold per tensor: the only persistent state


def test_bf16_weights_step_and_leave_the_large_ones_alone():
    q = Quadratic(shapes=((16, 16),), dtype=torch.bfloat16)
    opt = SparseMeZO(q.params, lr=1e-1, eps=1e-2, sparsity=0.75)
    p = q.params[0]
    big = p.detach().float().abs() > opt.state[p]["threshold"]
    before = p.detach().clone()
    for _ in range(3):
        opt.step(q.closure)
    assert torch.equal(p.detach()[big], before[big]) and not torch.equal(p.detach(), before)
