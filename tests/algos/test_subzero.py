"""SubZero against its oracles (docs/algorithms.md, "SubZero"), float64 unless told."""

import pytest
import torch

from tests.algos.test_lozo import MatrixQuadratic
from zoft.algos import SubZero
from zoft.perturb import step_seed


def test_bases_are_orthonormal_in_fp32_and_refresh_only_at_period_boundaries():
    w = torch.nn.Parameter(torch.randn(40, 30))
    opt = SubZero([w], subzero_rank=6, subzero_interval=3)
    u, v = (x.clone() for x in opt.bases(0, 0))
    eye = torch.eye(6)
    assert (u.t() @ u - eye).abs().max() <= 1e-5 and (v.t() @ v - eye).abs().max() <= 1e-5
    loss = lambda: float((w.detach() ** 2).sum())  # noqa: E731
    for _ in range(3):  # steps 0-2: period 0
        opt.step(loss)
        assert torch.equal(opt.state[w]["U"], u) and int(opt.state[w]["period"]) == 0
    opt.step(loss)  # step 3: period 1, fresh bases
    assert not torch.equal(opt.state[w]["U"], u) and int(opt.state[w]["period"]) == 1


def test_energy_matches_mezo_and_rank_is_at_most_r():
    w = torch.nn.Parameter(torch.zeros(12, 9, dtype=torch.float64))
    opt = SubZero([w], subzero_rank=3, subzero_interval=10**9)
    energies = []
    for t in range(4000):
        z = opt.lowrank(0, step_seed(opt.seed, t), 0)
        z = z[0] @ z[1].t()
        energies.append(float((z ** 2).sum()))
    assert torch.linalg.matrix_rank(z) <= 3
    assert sum(energies) / len(energies) == pytest.approx(12 * 9, rel=0.04)


def test_projected_gradient_probe_and_update_are_one_direction_across_base_refreshes():
    q = MatrixQuadratic(m=7, n=6)
    opt = SubZero(q.params, lr=1e-2, eps=1e-3, subzero_rank=2, subzero_interval=2, seed=4)
    for t in range(5):
        q.seen.clear()
        w0, b0 = q.w.detach().clone(), q.b.detach().clone()
        grad = w0 - q.w_star
        opt.step(q.closure)
        z = opt.direction(0, t)
        g = opt.last["projected_grad"]
        from zoft.perturb import PerturbationEngine

        zb = PerturbationEngine(q.params).noise(1, step_seed(opt.seed, t)).double()
        assert g == pytest.approx(float((grad * z).sum() + ((b0 - q.b_star) * zb).sum()), rel=1e-9)
        assert torch.allclose(q.seen[0][0], w0 + 1e-3 * z, atol=1e-13)
        assert torch.allclose(q.w - w0, -1e-2 * g * z, atol=1e-12), t


def test_restore_is_exact_and_the_bases_survive_a_state_dict_round_trip():
    q = MatrixQuadratic()
    w0 = q.w.detach().clone()
    opt = SubZero(q.params, lr=1e-30, eps=1e-3, subzero_rank=2, subzero_interval=2)
    for _ in range(3):
        opt.step(q.closure)
    assert (q.w - w0).abs().max() <= 1e-12
    q2 = MatrixQuadratic()
    other = SubZero(q2.params, lr=1e-30, eps=1e-3, subzero_rank=2, subzero_interval=2)
    other.load_state_dict(opt.state_dict())
    assert torch.equal(other.state[q2.w]["U"], opt.state[q.w]["U"]) and int(other.state[q2.w]["period"]) == 1
    assert opt.state_bytes() == 8 * (6 + 5) * 2 + 8  # U, V in float64 and the period
