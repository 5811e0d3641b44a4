"""ZO-SGD-Sign against its oracles (docs/algorithms.md, "ZO-SGD-Sign") on the quadratic of test_mezo."""

import pytest
import torch

from tests.algos.test_mezo import Quadratic
from zoft.algos import ALGORITHMS, MeZO, ZOSGDSign
from zoft.errors import ConfigError


def _step(mode="scalar", lr=1e-2, weight_decay=0.0, seed=5, **quad):
    q = Quadratic(**quad)
    opt = ZOSGDSign(q.params, lr=lr, eps=1e-3, weight_decay=weight_decay, seed=seed, sign_mode=mode)
    theta, q.grad0 = q.theta(), q.grad()
    opt.step(q.closure)
    return q, opt, theta, q.z(opt, 0)


@pytest.mark.parametrize("seed", range(4))
def test_scalar_step_has_length_lr_times_norm_z_along_minus_sign_g_z(seed):
    q, opt, theta, z = _step(seed=seed)
    g = opt.last["projected_grad"]
    assert g == pytest.approx(float(z @ q.grad0), rel=1e-10)  # MeZO's probe, unchanged
    delta = q.theta() - theta
    assert float(delta.norm()) == pytest.approx(1e-2 * float(z.norm()), rel=1e-9)  # ‖Δθ‖ = η‖z‖ whatever |g|
    assert torch.allclose(delta, -1e-2 * (1.0 if g > 0 else -1.0) * z, atol=1e-13)


def test_elementwise_step_moves_every_weight_by_lr_along_minus_sign_of_g_z():
    q, opt, theta, z = _step("elementwise")
    g = opt.last["projected_grad"]
    delta = q.theta() - theta
    assert torch.allclose(delta, -1e-2 * torch.sign(g * z), atol=1e-13)
    assert torch.allclose(delta.abs(), torch.full_like(delta, 1e-2), atol=1e-13)


@pytest.mark.parametrize("mode", ["scalar", "elementwise"])
def test_the_step_is_invariant_to_the_scale_of_the_loss(mode):
    a, b = Quadratic(), Quadratic()
    opt_a = ZOSGDSign(a.params, lr=1e-2, eps=1e-3, seed=1, sign_mode=mode)
    opt_b = ZOSGDSign(b.params, lr=1e-2, eps=1e-3, seed=1, sign_mode=mode)
    for _ in range(3):
        opt_a.step(a.closure)
        opt_b.step(lambda: 1000.0 * b.closure())
    assert torch.allclose(a.theta(), b.theta(), atol=1e-12)


def test_scalar_sign_equals_mezo_when_the_projected_gradient_is_plus_or_minus_one():
    """sign(g)·z is MeZO's g·z at |g| = 1: a loss of z-projection exactly ±1 per unit makes the two identical."""
    q1, q2 = Quadratic(), Quadratic()
    sign, mezo = ZOSGDSign(q1.params, lr=1e-2, eps=1e-3, seed=2), MeZO(q2.params, lr=1e-2, eps=1e-3, seed=2)
    sign.step(q1.closure)
    g = sign.last["projected_grad"]
    mezo.step(lambda: q2.closure() / abs(g))  # rescaled so that MeZO's g is sign(g)
    assert torch.allclose(q1.theta(), q2.theta(), atol=1e-12)


def test_restore_is_exact_and_zero_g_takes_no_step():
    for mode in ("scalar", "elementwise"):
        q = Quadratic()
        before = q.theta()
        ZOSGDSign(q.params, lr=1e-2, eps=1e-3, sign_mode=mode).step(lambda: 1.0)  # g = 0: sign 0, no step
        assert (q.theta() - before).abs().max() <= 1e-12


def test_weight_decay_is_decoupled_and_spares_1d_tensors():
    q = Quadratic()
    before = [p.detach().clone() for p in q.params]
    ZOSGDSign(q.params, lr=1e-2, eps=1e-3, weight_decay=0.5).step(lambda: 1.0)
    assert torch.allclose(q.params[0], (1 - 1e-2 * 0.5) * before[0], atol=1e-12)  # 2-D: (1 − ηλ)·θ
    assert torch.allclose(q.params[1], before[1], atol=1e-12)  # 1-D: no decay


def test_two_forwards_no_state_and_descends():
    q = Quadratic(dense=False)
    opt = ZOSGDSign(q.params, lr=2e-3, eps=1e-3, seed=0)
    f0 = q.f()
    for _ in range(400):
        opt.step(q.closure)
    assert q.calls == 800 == opt.forwards == opt.forwards_per_step * 400
    assert opt.state_bytes() == 0 and not opt.state
    assert q.f() < f0 - 0.5 * abs(f0)


def test_elementwise_mode_counts_its_z_buffer_and_a_bad_mode_is_a_config_error():
    q = Quadratic()
    assert not ZOSGDSign(q.params).dense_z and ZOSGDSign(q.params, sign_mode="elementwise").dense_z
    with pytest.raises(ConfigError, match="--sign-mode"):
        ZOSGDSign(q.params, sign_mode="both")
    assert ALGORITHMS["zo-sgd-sign"] is ZOSGDSign
