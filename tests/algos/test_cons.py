"""ZO-SGD-Cons against its oracles (docs/algorithms.md, "ZO-SGD-Cons") on the quadratic of test_mezo."""

import math

import pytest
import torch

from tests.algos.test_mezo import Quadratic
from zoft.algos import ZOSGDCons


def test_the_full_batch_loss_never_increases_and_each_step_takes_five_forwards():
    q = Quadratic(dense=False)
    opt = ZOSGDCons(q.params, lr=0.12, eps=1e-3, seed=0)  # a step large enough that θ − ηgz often overshoots
    f_star = float(-0.5 * q.b @ torch.linalg.solve(q.A, q.b))
    values = [q.f()]
    choices = set()
    for _ in range(300):
        opt.step(q.closure)
        values.append(q.f())
        choices.add(opt.last["choice"])
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))
    assert values[-1] - f_star < 1e-2 * (values[0] - f_star)
    assert q.calls == opt.forwards == 5 * 300
    assert {-1, 0} <= choices  # steps kept and steps refused


@pytest.mark.parametrize("seed", range(6))
def test_the_kept_point_follows_the_reference_rule_and_its_loss_is_reported(seed):
    q = Quadratic()
    opt = ZOSGDCons(q.params, lr=0.3, eps=1e-3, seed=seed)
    theta = q.theta()
    loss = opt.step(q.closure)
    g, z = opt.last["projected_grad"], q.z(opt, 0)
    points = {0: theta, -1: theta - 0.3 * g * z, 1: theta + 0.3 * g * z}
    l0, la, lb = (q.f(points[k]) for k in (0, -1, 1))
    assert (opt.last["loss_a"], opt.last["loss_b"]) == pytest.approx((la, lb), rel=1e-9)
    want = (0 if l0 < lb else 1) if la > l0 else (-1 if la < lb else 1)
    assert opt.last["choice"] == want
    assert torch.allclose(q.theta(), points[want], atol=1e-12)
    assert loss == pytest.approx(q.f(), rel=1e-9)  # the kept point's loss


def test_a_non_finite_trial_is_never_kept_and_decay_applies_to_the_kept_point():
    q = Quadratic()
    opt = ZOSGDCons(q.params, lr=1e-2, eps=1e-3)
    calls = {"n": 0}

    def loss():
        calls["n"] += 1
        return math.nan if calls["n"] == 4 else q.f()  # θ_a's loss is NaN

    theta = q.theta()
    opt.step(loss)
    assert opt.last["choice"] in (0, 1)
    before = [p.detach().clone() for p in q.params]
    ZOSGDCons(q.params, lr=1e-2, eps=1e-3, weight_decay=0.5).step(lambda: 1.0)  # g = 0: decay only
    assert torch.allclose(q.params[0], (1 - 1e-2 * 0.5) * before[0], atol=1e-12)
    assert torch.allclose(q.params[1], before[1], atol=1e-12)
    assert theta.shape == q.theta().shape
