"""QZO against its oracles (docs/algorithms.md, "QZO") on the quadratic of test_mezo; its tuning mode (the NF4
scales) is tested in tests/test_modes.py."""

import pytest
import torch

from tests.algos.test_mezo import Quadratic
from zoft.algos import QZO, MeZO


def _positive(seed=0):
    q = Quadratic(seed=seed)
    with torch.no_grad():
        for p in q.params:
            p.add_(2.0)  # scales: well above 0, so the projection is inactive
    return q


def test_below_the_bound_it_is_mezo_bitwise():
    a, b = _positive(), _positive()
    opt_a, opt_b = QZO(a.params, lr=1e-3, seed=5), MeZO(b.params, lr=1e-3, seed=5)
    for _ in range(5):
        opt_a.step(a.closure)
        opt_b.step(b.closure)
    assert all(torch.equal(p, r) for p, r in zip(a.params, b.params))
    assert opt_a.last["projected_grad"] == opt_a.last["raw_projected_grad"]


def test_the_directional_derivative_is_clipped_to_c():
    q = _positive()
    opt = QZO(q.params, lr=1e-6, eps=1e-3, qzo_clip=5.0, seed=1)
    theta = q.theta()
    opt.step(lambda: 1e6 * q.closure())  # |d| ~ 1e6: far past C
    raw = opt.last["raw_projected_grad"]
    assert abs(raw) > 1e3 and opt.record["projected_grad"] == pytest.approx(5.0 if raw > 0 else -5.0)
    z = q.z(opt, 0)
    assert torch.allclose(q.theta(), theta - 1e-6 * opt.record["projected_grad"] * z, atol=1e-12)


def test_scales_never_go_negative():
    q = Quadratic()
    with torch.no_grad():
        for p in q.params:
            p.abs_().mul_(1e-3)  # small positive scales, a step far larger than them
    opt = QZO(q.params, lr=1.0, eps=1e-4, seed=2)
    for _ in range(5):
        opt.step(q.closure)
        assert min(float(p.detach().min()) for p in q.params) >= 0.0
    assert any(int((p.detach() == 0).sum()) > 0 for p in q.params)  # the projection acted


def test_it_descends_and_runs_in_the_scales_mode_only():
    q = _positive()
    opt = QZO(q.params, lr=2e-2, seed=0)
    f0 = q.f()
    for _ in range(200):
        opt.step(q.closure)
    assert q.f() < f0 - 0.2 * abs(f0) and opt.state_bytes() == 0 and opt.forwards == 400
    assert QZO.modes == ("scales",) and not QZO.offloadable
