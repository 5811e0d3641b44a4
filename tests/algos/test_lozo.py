"""LOZO and LOZO-M against their oracles (docs/algorithms.md, "LOZO, LOZO-M"), float64 on ½‖W − W*‖² + ½‖b − b*‖²."""

import pytest
import torch

from zoft.algos import LOZO, LOZOM
from zoft.perturb import PerturbationEngine, step_seed


class MatrixQuadratic:
    def __init__(self, m=6, n=5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(m, n, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))
        self.w_star = torch.randn(m, n, generator=g, dtype=torch.float64)
        self.b_star = torch.randn(n, generator=g, dtype=torch.float64)
        self.seen = []

    @property
    def params(self):
        return [self.w, self.b]

    def f(self) -> float:
        return float(0.5 * ((self.w - self.w_star) ** 2).sum() + 0.5 * ((self.b - self.b_star) ** 2).sum())

    def closure(self):
        self.seen.append((self.w.detach().clone(), self.b.detach().clone()))
        return self.f()


def _dense_z(opt, q, t):
    """MeZO's z of the 1-D tensor at step t (index 1)."""
    return PerturbationEngine(q.params).noise(1, step_seed(opt.seed, t)).double()


def test_projected_gradient_is_exact_along_u_vt_and_the_probes_are_that_direction():
    q = MatrixQuadratic()
    opt = LOZO(q.params, lr=1e-2, eps=1e-3, lozo_rank=2, lozo_interval=4, seed=3)
    w0, b0 = q.w.detach().clone(), q.b.detach().clone()
    g_w, g_b = w0 - q.w_star, b0 - q.b_star
    opt.step(q.closure)
    z_w, z_b = opt.direction(0, 0), _dense_z(opt, q, 0)
    assert torch.linalg.matrix_rank(z_w) <= 2
    assert opt.last["projected_grad"] == pytest.approx(float((g_w * z_w).sum() + (g_b * z_b).sum()), rel=1e-10)
    assert torch.allclose(q.seen[0][0], w0 + 1e-3 * z_w, atol=1e-14)
    assert torch.allclose(q.seen[1][0], w0 - 1e-3 * z_w, atol=1e-14)


@pytest.mark.parametrize("cls", [LOZO, LOZOM])
def test_update_is_along_the_probe_on_every_step_including_v_resample_steps(cls):
    q = MatrixQuadratic()
    opt = cls(q.params, lr=1e-2, eps=1e-3, lozo_rank=2, lozo_interval=3, **({"momentum": 0.0} if cls is LOZOM
                                                                              else {}))
    for t in range(8):  # steps 3 and 6 draw a new V (the published code's probe/update mismatch)
        q.seen.clear()
        w0 = q.w.detach().clone()
        opt.step(q.closure)
        g = opt.last["projected_grad"]
        plus = q.seen[0][0]
        assert torch.allclose(q.w - w0, -(1e-2 * g / 1e-3) * (plus - w0), rtol=1e-8, atol=1e-13), t


def test_v_is_constant_within_a_period_and_the_change_stays_in_its_row_space():
    q = MatrixQuadratic(m=8, n=7)
    opt = LOZO(q.params, lr=1e-2, eps=1e-3, lozo_rank=2, lozo_interval=5, seed=1)
    v0 = opt.v_factor(0, 0).clone()
    w0 = q.w.detach().clone()
    for _ in range(5):
        opt.step(q.closure)
    assert torch.equal(opt.v_factor(0, 0), v0) and not torch.equal(opt.v_factor(0, 1), v0)
    delta = q.w.detach() - w0
    off = delta - delta @ v0 @ torch.linalg.pinv(v0)  # the part outside the row space of Vᵀ
    assert off.abs().max() <= 1e-10 and torch.linalg.matrix_rank(delta) <= 2


def test_restore_is_exact_and_two_forwards_per_step():
    q = MatrixQuadratic()
    w0 = q.w.detach().clone()
    opt = LOZO(q.params, lr=1e-30, eps=1e-3, lozo_interval=2)
    for _ in range(5):
        opt.step(q.closure)
    assert (q.w - w0).abs().max() <= 1e-12
    assert opt.forwards == 10 == len(q.seen)


def test_lozo_m_without_v_changes_equals_dense_momentum_of_kappa_u_vt():
    q = MatrixQuadratic()
    opt = LOZOM(q.params, lr=1e-2, eps=1e-3, lozo_rank=2, lozo_interval=10**9, momentum=0.9)
    w, m = q.w.detach().clone(), torch.zeros_like(q.w)
    for t in range(6):
        opt.step(q.closure)
        kappa = opt.last["projected_grad"]
        m = (0.9 * m + 0.1 * kappa * opt.direction(0, t)) if t else kappa * opt.direction(0, t)  # as the reference
        w = w - 1e-2 * m
        n_buf = opt.state[q.w]["momentum_buffer"]
        assert torch.allclose(n_buf @ opt.v_factor(0, 0).t(), m, atol=1e-10)
        assert torch.allclose(q.w.detach(), w, atol=1e-10)


def test_lozo_m_projects_its_momentum_onto_a_new_v():
    q = MatrixQuadratic(m=6, n=40)
    opt = LOZOM(q.params, lr=1e-2, eps=1e-3, lozo_rank=2, lozo_interval=2, momentum=0.9)
    opt.step(q.closure)
    opt.step(q.closure)
    before = opt.state[q.w]["momentum_buffer"].clone()
    opt.step(q.closure)  # step index 2: V changes
    v_old, v_new = opt.v_factor(0, 0), opt.v_factor(0, 1)
    expected = 0.9 * before @ (v_old.t() @ v_new) / 40 + 0.1 * opt.last["projected_grad"] * opt.u_factor(
        0, step_seed(opt.seed, 2))
    assert torch.allclose(opt.state[q.w]["momentum_buffer"], expected, atol=1e-12)


def test_state_is_the_cached_v_plus_lozo_m_momentum_and_it_descends():
    q = MatrixQuadratic(m=8, n=6)
    opt = LOZO(q.params, lr=2e-3, eps=1e-3, lozo_rank=2, lozo_interval=20, seed=0)
    assert opt.state_bytes() == 8 * 6 * 2  # V: n·r float64
    f0 = q.f()
    for _ in range(1500):
        opt.step(q.closure)
    assert q.f() < 0.2 * f0
    m = LOZOM(MatrixQuadratic(m=8, n=6).params, lozo_rank=2)
    assert m.state_bytes() == 8 * 6 * 2 + 8 * (8 * 2 + 6)  # V + N (m·r) + dense momentum of b
