"""FZOO against its oracles (docs/algorithms.md, "FZOO") on the quadratic of test_mezo, float64."""

import math

import pytest
import torch

from tests.algos.test_mezo import Quadratic
from zoft.algos import FZOO
from zoft.perturb import PerturbationEngine, step_seed


def _u(q, opt, t, j):
    eng = PerturbationEngine(q.params)
    return torch.cat([eng.noise(i, step_seed(opt.seed, t), probe=j).sign().double().reshape(-1)
                      for i in range(len(q.params))])


def test_probes_are_rademacher_the_scalars_follow_the_rule_and_the_update_is_their_sum():
    q = Quadratic()
    opt = FZOO(q.params, lr=1e-2, eps=1e-3, fzoo_probes=4, seed=2)
    theta = q.theta()
    opt.step(q.closure)
    us = [_u(q, opt, 0, j) for j in range(4)]
    assert all(set(u.unique().tolist()) == {-1.0, 1.0} for u in us) and not torch.equal(us[0], us[1])
    for j in range(4):
        assert torch.allclose(q.seen[j], theta + 1e-3 * us[j], atol=1e-14)  # one probe at a time
    assert torch.allclose(q.seen[4], theta, atol=1e-14)  # L0 last, at θ
    losses = [q.f(theta + 1e-3 * u) for u in us]
    l0, mean = q.f(theta), sum(losses) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in losses) / 4)
    g = [(x - l0) / (4 * std) for x in losses]
    assert [opt.last[f"g{j}"] for j in range(4)] == pytest.approx(g, rel=1e-8)
    assert torch.allclose(q.theta(), theta - 1e-2 * sum(gj * u for gj, u in zip(g, us)), atol=1e-12)
    assert opt.forwards == 5 == q.calls


def test_the_step_is_invariant_to_scaling_and_shifting_the_loss():
    a, b = Quadratic(), Quadratic()
    opt_a = FZOO(a.params, lr=1e-2, eps=1e-3, fzoo_probes=3, seed=1)
    opt_b = FZOO(b.params, lr=1e-2, eps=1e-3, fzoo_probes=3, seed=1)
    for _ in range(4):
        opt_a.step(a.closure)
        opt_b.step(lambda: 1000.0 * b.closure() + 7.0)
    assert torch.allclose(a.theta(), b.theta(), atol=1e-10)


def test_restore_is_exact_equal_losses_take_no_step_and_it_descends():
    q = Quadratic()
    before = q.theta()
    FZOO(q.params, lr=1e-2, eps=1e-3).step(lambda: 1.0)  # σ = 0: no step (the reference divides by zero)
    assert (q.theta() - before).abs().max() <= 1e-12
    q = Quadratic(dense=False)
    opt = FZOO(q.params, lr=2e-2, eps=1e-3, fzoo_probes=8, seed=0)
    f_star = float(-0.5 * q.b @ torch.linalg.solve(q.A, q.b))
    f0 = q.f() - f_star
    for _ in range(300):
        opt.step(q.closure)
    assert q.f() - f_star < 1e-2 * f0
    assert opt.state_bytes() == 0 and opt.forwards == 9 * 300


def test_perturb_works_on_leaf_parameters_outside_no_grad():
    q = Quadratic()
    before = q.theta()
    opt = FZOO(q.params)
    opt.perturb(step_seed(0, 0), 1e-3)  # a direct call (benchmarks do this), with autograd on
    opt.perturb(step_seed(0, 0), -1e-3)
    assert (q.theta() - before).abs().max() <= 1e-12
