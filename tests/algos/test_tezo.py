"""TeZO, TeZO-m and TeZO-Adam against their oracles (docs/algorithms.md, "TeZO, TeZO-m, TeZO-Adam"), float64
unless told."""

import math
import statistics

import pytest
import torch

from conftest import forwards_to_target
from zoft.algos import MeZO, TeZO, TeZOAdam, TeZOM, ZOAdam
from zoft.algos.tezo import select_ranks
from zoft.perturb import step_seed


class MatrixQuadratic:
    """W (m×n) and b (n,) with loss ½‖W − W*‖² + ½‖b − b*‖²; the gradient of W is G = W − W*."""

    def __init__(self, m=7, n=5, seed=0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.rand(m, n, generator=g, dtype=torch.float64).to(dtype))
        self.b = torch.nn.Parameter(torch.rand(n, generator=g, dtype=torch.float64).to(dtype))
        self.w_star = torch.randn(m, n, generator=g, dtype=torch.float64)
        self.b_star = torch.randn(n, generator=g, dtype=torch.float64)
        self.seen: list[torch.Tensor] = []

    @property
    def params(self):
        return [("weight", self.w), ("bias", self.b)]

    def f(self) -> float:
        return float(0.5 * ((self.w.detach().double() - self.w_star) ** 2).sum()
                     + 0.5 * ((self.b.detach().double() - self.b_star) ** 2).sum())

    def closure(self):
        self.seen.append(self.w.detach().clone())
        return self.f()


def test_perturbation_has_rank_at_most_r_and_factors_never_change():
    q = MatrixQuadratic(9, 8)
    opt = TeZO(q.params, lr=1e-3, eps=1e-3, seed=4, rank=3)
    u0, v0 = (t.clone() for t in opt.factors(0))
    for t in range(5):
        z = opt.direction(0, step_seed(4, t))
        assert torch.linalg.matrix_rank(z) <= 3
        opt.step(q.closure)
    u1, v1 = opt.factors(0)
    assert torch.equal(u0, u1) and torch.equal(v0, v1)
    # a fresh optimizer (e.g. after a resume, which does not checkpoint U and V) regenerates them bitwise
    other = TeZO(q.params, lr=1e-3, eps=1e-3, seed=4, rank=3)
    assert torch.equal(other.factors(0)[0], u0) and torch.equal(other.factors(0)[1], v0)
    assert torch.equal(other.tau(0, step_seed(4, 2)), opt.tau(0, step_seed(4, 2)))
    assert not torch.equal(opt.tau(0, step_seed(4, 2)), opt.tau(0, step_seed(4, 3)))


def test_projected_gradient_is_exact_and_probes_are_the_regenerated_direction():
    # κ == s_r·Σ_k τ_k·u_kᵀ G v_k + (1-D part) to 1e-10; P1 and P2 land on W ± εZ_t (the same Z in every pass)
    q = MatrixQuadratic()
    eps = 1e-3
    opt = TeZO(q.params, lr=1e-3, eps=eps, seed=1, rank=4)
    w0, b0 = q.w.detach().clone(), q.b.detach().clone()
    seed = step_seed(1, 0)
    u, v = opt.factors(0)
    tau = opt.tau(0, seed)
    zb = opt.engine.noise(1, seed).double().clone()
    grad_w, grad_b = w0 - q.w_star, b0 - q.b_star
    expected = 0.5 * float(sum(tau[k] * u[:, k] @ grad_w @ v[:, k] for k in range(4))) + float(zb @ grad_b)
    opt.step(q.closure)
    assert opt.last["projected_grad"] == pytest.approx(expected, rel=1e-10)
    z = opt.direction(0, seed)
    assert torch.allclose(q.seen[0], w0 + eps * z, atol=1e-14)
    assert torch.allclose(q.seen[1], w0 - eps * z, atol=1e-14)


@pytest.mark.parametrize("cls", [TeZO, TeZOM, TeZOAdam])
def test_restore_is_exact_and_costs_two_forwards_three_passes(cls):
    q = MatrixQuadratic()
    opt = cls(q.params, lr=1e-30, eps=1e-3, seed=2, rank=3)
    w0, b0 = q.w.detach().clone(), q.b.detach().clone()
    opt.step(q.closure)
    assert torch.allclose(q.w, w0, rtol=0, atol=1e-12) and torch.allclose(q.b, b0, rtol=0, atol=1e-12)
    assert opt.forwards == 2 and opt.engine.passes == 3
    # only the 1-D tensor draws dense z: once per pass
    assert opt.engine.regenerations == 3


def test_update_is_along_the_probe():
    # T4: θ_{t+1} − θ_t == −(η·κ/ε)·(θ⁺ − θ_t)
    q = MatrixQuadratic()
    lr, eps = 1e-2, 1e-3
    opt = TeZO(q.params, lr=lr, eps=eps, seed=3, rank=2)
    for _ in range(3):
        q.seen.clear()
        w0 = q.w.detach().clone()
        opt.step(q.closure)
        g = opt.last["projected_grad"]
        assert torch.allclose(q.w.detach() - w0, -(lr * g / eps) * (q.seen[0] - w0), rtol=1e-8, atol=1e-14)


def test_trajectory_stays_in_the_span_of_the_factors():
    # after 200 steps W − W_0 lies in span{u_k v_kᵀ}: its residual off that span is ≤ 1e-8 and its rank ≤ r
    q = MatrixQuadratic(8, 6)
    w0 = q.w.detach().clone()
    opt = TeZO(q.params, lr=5e-3, eps=1e-3, seed=5, rank=3)
    for _ in range(200):
        opt.step(q.closure)
    u, v = opt.factors(0)
    basis = torch.stack([torch.outer(u[:, k], v[:, k]).reshape(-1) for k in range(3)], 1)  # (m·n)×r
    delta = (q.w.detach() - w0).reshape(-1)
    coef = torch.linalg.lstsq(basis, delta.unsqueeze(1)).solution
    assert float((delta - (basis @ coef).squeeze(1)).abs().max()) <= 1e-8
    assert torch.linalg.matrix_rank(q.w.detach() - w0) <= 3
    assert float(delta.norm()) > 1e-3  # it did move


def test_energy_matches_mezo_over_seeds():
    # E[vec Z vec Zᵀ] over run seeds: I with s_r = 1/√r (MeZO's E[zzᵀ]), r·I with tezo_scale="none".
    # Z_ab is a sum of r = 3 products of three Gaussians: E[Z_ab⁴] = (3·27 + 3·3·2)/9 = 11, so Var(Z_ab²) = 10 and
    # 20 000 draws give a standard error of 0.022 per diagonal entry (about 0.01 for their mean).
    p = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
    for scale, level in (("sqrt-r", 1.0), ("none", 3.0)):
        opt = TeZO([p], lr=1e-3, rank=3, tezo_scale=scale)
        cov = torch.zeros(12, 12, dtype=torch.float64)
        n = 20_000
        for s in range(n):
            opt.seed = s
            opt._factors.clear()
            z = opt.direction(0, step_seed(s, 0)).reshape(-1)
            cov += torch.outer(z, z)
        cov /= n * level
        assert float(cov.diagonal().mean()) == pytest.approx(1.0, abs=0.03)
        assert float((cov.diagonal() - 1).abs().max()) < 0.1
        assert float((cov - torch.diag(cov.diagonal())).abs().max()) < 0.05


def test_tezo_m_equals_dense_momentum_reference():
    # TeZO-m is exactly dense momentum M_t = β·M_{t−1} + (1−β)·κ_t·Z_t with W ← W − η(M_t + λW) (1e-10, float64)
    q = MatrixQuadratic()
    lr, beta, wd = 2e-2, 0.9, 0.1
    opt = TeZOM(q.params, lr=lr, eps=1e-3, seed=6, rank=3, momentum=beta, weight_decay=wd)
    w_ref = q.w.detach().clone()
    m_ref = torch.zeros_like(w_ref)
    for t in range(30):
        opt.step(q.closure)
        m_ref = beta * m_ref + (1 - beta) * opt.last["projected_grad"] * opt.direction(0, step_seed(6, t))
        w_ref = w_ref - lr * (m_ref + wd * w_ref)
    assert torch.allclose(q.w.detach(), w_ref, rtol=1e-10, atol=1e-12)


def test_tezo_adam_with_rank_one_equals_dense_zo_adam_on_the_same_directions():
    # r = 1 has no cross terms, so the separable second moment is exact: dense ZO-Adam (bias-corrected,
    # decoupled decay) driven by the same Z_t and κ_t gives the same weights (1e-8, float64)
    q = MatrixQuadratic()
    lr, b1, b2, delta, wd = 1e-2, 0.9, 0.999, 1e-8, 0.05
    opt = TeZOAdam(q.params, lr=lr, eps=1e-3, seed=7, rank=1, weight_decay=wd)
    w = q.w.detach().clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    for t in range(1, 41):
        opt.step(q.closure)
        grad = opt.last["projected_grad"] * opt.direction(0, step_seed(7, t - 1))
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        w = (1 - lr * wd) * w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + delta)
    assert torch.allclose(q.w.detach(), w, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("scale", ["sqrt-r", "none"])
def test_tezo_adam_rank_three_equals_its_separable_reference(scale):
    # r ≥ 2 against a dense reference that builds the documented moments explicitly: M̂ = s_r·U diag(m̂) Vᵀ and
    # V̂ = s_r²·(U⊙U) diag(v̂) (V⊙V)ᵀ with m, v the r-space EMAs of κ·τ and κ²·τ² (1e-10, float64); a second moment
    # scaled by s_r instead of s_r² fails it with the default scale
    q = MatrixQuadratic()
    lr, b1, b2, delta, wd = 1e-2, 0.9, 0.999, 1e-8, 0.05
    opt = TeZOAdam(q.params, lr=lr, eps=1e-3, seed=3, rank=3, weight_decay=wd, tezo_scale=scale)
    u, v_f = (f.double() for f in opt.factors(0))
    s = 1 / math.sqrt(3) if scale == "sqrt-r" else 1.0
    w = q.w.detach().clone()
    m, v = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for t in range(1, 21):
        opt.step(q.closure)
        kappa, tau = opt.last["projected_grad"], opt.tau(0, step_seed(3, t - 1)).double()
        m = b1 * m + (1 - b1) * kappa * tau
        v = b2 * v + (1 - b2) * kappa**2 * tau * tau
        m_hat = s * u @ torch.diag(m / (1 - b1**t)) @ v_f.T
        v_hat = s * s * (u * u) @ torch.diag(v / (1 - b2**t)) @ (v_f * v_f).T
        w = (1 - lr * wd) * w - lr * m_hat / (v_hat.sqrt() + delta)
    assert torch.allclose(q.w.detach(), w, rtol=1e-10, atol=1e-12)


def test_tezo_adam_rank_two_differs_from_dense_adam():
    # for r > 1 the cross terms make the separable second moment an approximation: a real difference
    q = MatrixQuadratic()
    opt = TeZOAdam(q.params, lr=1e-2, eps=1e-3, seed=7, rank=2)
    w = q.w.detach().clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t in range(1, 11):
        opt.step(q.closure)
        grad = opt.last["projected_grad"] * opt.direction(0, step_seed(7, t - 1))
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad * grad
        w = w - 1e-2 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    assert not torch.allclose(q.w.detach(), w, rtol=1e-4)


def test_state_is_r_numbers_per_matrix_plus_dense_for_1d():
    w, b = torch.nn.Parameter(torch.zeros(10, 6)), torch.nn.Parameter(torch.zeros(6))
    r = 4
    for cls, per_matrix, per_vector in ((TeZO, 0, 0), (TeZOM, r, 6), (TeZOAdam, 2 * r, 12)):
        opt = cls([("w", w), ("b", b)], lr=1e-3, rank=r)
        assert opt.state_breakdown().get("moments", 0) == 4 * (per_matrix + per_vector)
        assert opt.state_breakdown()["factors"] == 4 * (10 + 6) * r
        assert opt.state_bytes() == sum(opt.state_breakdown().values())
    # against the dense methods on the same tensors: ZO-Adam keeps 2·(60 + 6) fp32
    assert ZOAdam([w, b], lr=1e-3).state_bytes() == 4 * 2 * 66


def test_rank_selection_fixed_cap_and_spectrum():
    w = torch.nn.Parameter(torch.zeros(3, 50))
    assert TeZO([w], lr=1e-3, rank=32).ranks == [3]  # capped at min(m, n)
    g = torch.Generator().manual_seed(0)
    a, bvec = torch.randn(40, 6, generator=g), torch.randn(6, 30, generator=g)
    low = a @ torch.diag(torch.tensor([10.0, 9, 8, 7, 0.1, 0.1])) @ bvec  # ~4 dominant directions
    ranks = select_ranks([low, torch.zeros(5)], rank=32, rank_mode="spectrum", threshold=0.3, rank_min=1,
                         rank_max=64)
    assert ranks[1] == 0 and 2 <= ranks[0] <= 5
    assert select_ranks([low], 32, "spectrum", 0.3, rank_min=8, rank_max=64) == [8]
    assert select_ranks([low], 32, "spectrum", 1e-9, rank_min=1, rank_max=12) == [12]


def test_spectrum_ranks_survive_a_resume_from_trained_weights():
    w = torch.nn.Parameter(torch.randn(12, 10, generator=torch.Generator().manual_seed(1)))
    opt = TeZO([w], lr=1e-3, rank_mode="spectrum", rank_threshold=0.5, rank_min=1)
    saved = opt.state_dict()
    with torch.no_grad():
        w.mul_(torch.linspace(0.01, 1, 10))  # the weights change, so their spectrum does
    resumed = TeZO([w], lr=1e-3, rank_mode="spectrum", rank_threshold=0.5, rank_min=1)
    resumed.load_state_dict(saved)
    assert resumed.ranks == opt.ranks
    assert torch.equal(resumed.factors(0)[0], opt.factors(0)[0])


@pytest.mark.parametrize("cls", [TeZO, TeZOM, TeZOAdam])
def test_state_dict_round_trip_continues_bitwise(cls):
    q1, q2 = MatrixQuadratic(seed=3), MatrixQuadratic(seed=3)
    o1 = cls(q1.params, lr=1e-2, eps=1e-3, seed=9, rank=3)
    for _ in range(4):
        o1.step(q1.closure)
    with torch.no_grad():
        q2.w.copy_(q1.w)
        q2.b.copy_(q1.b)
    o2 = cls(q2.params, lr=1e-2, eps=1e-3, seed=9, rank=3)
    o2.load_state_dict(o1.state_dict())
    for _ in range(4):
        o1.step(q1.closure)
        o2.step(q2.closure)
    assert torch.equal(q1.w, q2.w) and torch.equal(q1.b, q2.b)


@pytest.mark.parametrize("cls", [TeZO, TeZOM, TeZOAdam])
def test_half_precision_weights_step_in_place_with_fp32_state(cls):
    # bf16 weights take the row-block path (fp32 product, added once); the state stays fp32
    w = torch.nn.Parameter(torch.randn(16, 8).to(torch.bfloat16))
    b = torch.nn.Parameter(torch.zeros(8, dtype=torch.bfloat16))
    ptr = w.data_ptr()
    opt = cls([("w", w), ("b", b)], lr=1e-2, eps=1e-2, seed=0, rank=4)
    before = w.detach().clone()
    for _ in range(3):
        opt.step(lambda: float((w.float() ** 2).sum() + (b.float() - 1).pow(2).sum()))
    assert w.dtype == torch.bfloat16 and w.data_ptr() == ptr and not torch.equal(w, before)
    assert all(t.dtype == torch.float32 for s in opt.state.values() for t in s.values())
    assert all(f.dtype == torch.float32 for pair in opt._factors.values() for f in pair)


def _lowrank_target_problem(seed: int, aligned: bool, m=20, n=16, r=4):
    """W_0 random; W* = W_0 + Δ with ‖Δ‖_F ≈ 1. aligned: Δ ∈ span{u_k v_kᵀ} of TeZO's own factors for this seed
    (the temporal-low-rank premise: the gradient W − W* stays in that fixed r-dimensional subspace); otherwise
    Δ = a·bᵀ, a rank-1 matrix unrelated to the factors."""
    g = torch.Generator().manual_seed(100 + seed)
    w0 = torch.randn(m, n, generator=g, dtype=torch.float64)
    if aligned:
        u, v = TeZO([torch.nn.Parameter(w0.clone())], lr=1.0, seed=seed, rank=r).factors(0)
        delta = (u * torch.randn(r, generator=g, dtype=torch.float64)) @ v.t() / math.sqrt(m * n)
    else:
        delta = torch.outer(torch.randn(m, generator=g, dtype=torch.float64),
                            torch.randn(n, generator=g, dtype=torch.float64)) / math.sqrt(m * n)
    return w0, w0 + delta


def _forwards_to_target(cls, lr, seed, aligned=True, max_steps=20_000, **kw):
    w0, w_star = _lowrank_target_problem(seed, aligned)
    p = torch.nn.Parameter(w0.clone())
    f = lambda: float(0.5 * ((p.detach() - w_star) ** 2).sum())  # noqa: E731
    return forwards_to_target(cls([p], lr=lr, eps=1e-3, seed=seed, **kw), f, 1e-4 * f(), max_steps)


def test_tezo_beats_mezo_when_the_gradient_stays_in_its_subspace():
    # ½‖W − W*‖² on 20×16 with W* − W_0 in TeZO's rank-4 span: TeZO's progress per step scales as 1/(r + 2), MeZO's
    # as 1/(m·n + 2). Measured medians over 5 seeds: MeZO lr 2e-3 → 6 718, 3e-3 → 5 868 (5e-3 → 9 368, 8e-3
    # diverges); TeZO lr 1e-3 → 106, 2e-3 → 118. Both at 2 forwards per step.
    mezo = min(statistics.median(_forwards_to_target(MeZO, lr, s) for s in range(5)) for lr in (2e-3, 3e-3))
    tezo = min(statistics.median(_forwards_to_target(TeZO, lr, s, rank=4) for s in range(5)) for lr in (1e-3, 2e-3))
    assert tezo <= 0.1 * mezo, (tezo, mezo)


def test_tezo_cannot_leave_its_span_when_the_gradient_does():
    # the flip side (the restriction reviewers noted): a rank-1 target outside the factors' span is never reached,
    # the loss stalls near its starting value, while MeZO gets there
    assert math.isinf(_forwards_to_target(TeZO, 2e-3, 0, aligned=False, max_steps=2000, rank=4))
    assert _forwards_to_target(MeZO, 3e-3, 0, aligned=False) < math.inf


def test_regenerated_factors_give_the_same_trajectory_without_factor_memory():
    q1, q2 = MatrixQuadratic(seed=4), MatrixQuadratic(seed=4)
    o1 = TeZOAdam(q1.params, lr=1e-2, seed=3, rank=3)
    o2 = TeZOAdam(q2.params, lr=1e-2, seed=3, rank=3, tezo_factors="regenerate")
    for _ in range(5):
        o1.step(q1.closure)
        o2.step(q2.closure)
    assert torch.equal(q1.w, q2.w) and torch.equal(q1.b, q2.b)
    assert "factors" not in o2.state_breakdown() and not o2._factors
    assert o1.state_bytes() - o2.state_bytes() == o1.state_breakdown()["factors"] == 8 * (7 + 5) * 3


@pytest.mark.parametrize("beta", [1.0, 0.999])
def test_the_blocked_low_rank_add_is_the_sum_rounded_once_on_every_smollm2_shape(beta):
    # zoft.algos.lowrank adds L·Rᵀ to a bf16 weight by accumulating into the widened weight (addmm_) in 1 MiB row
    # blocks; that must equal bf16(fp32(β·W) + L·Rᵀ) bit for bit, the rule before the blocking (and the golden
    # runs' tiny shapes never span two blocks). Shapes: SmolLM2-135M's embedding, attention, MLP matrices.
    from zoft.algos.lowrank import add_product

    torch.manual_seed(0)
    for m, n in [(49152, 576), (576, 576), (192, 576), (1536, 576), (576, 1536)]:
        for r in (1, 32):
            w = torch.nn.Parameter(torch.randn(m, n).to(torch.bfloat16))
            left, right = torch.randn(m, r) * 1e-2, torch.randn(n, r)
            expected = ((w.detach() * beta).float() + left @ right.t()).to(torch.bfloat16)
            opt = TeZO([w], lr=1e-3, rank=r)
            with torch.no_grad():
                add_product(opt, 0, left, right, beta)
            assert torch.equal(w.detach(), expected), (m, n, r)


@pytest.mark.parametrize("block", [None, 1 << 12])
def test_tezo_adams_one_sweep_restore_and_step_equals_the_two_sweeps_bit_for_bit(block, monkeypatch):
    # TeZO-Adam restores and steps a bf16 weight in one sweep of row blocks (tezo.FUSED_BLOCK fp32 numbers each);
    # it must equal the restore sweep (add_lowrank) followed by the Adam sweep (_adam_step) bit for bit. None: the
    # real block on SmolLM2-135M's shapes (the embedding spans 27 blocks); 4096: blocks of the 16-row minimum, and
    # 1540 rows leave 4, joined to the block before (101 × 70: blocks of 58 and 43 rows).
    import zoft.algos.tezo as tezo

    if block:
        monkeypatch.setattr(tezo, "FUSED_BLOCK", block)
    torch.manual_seed(0)
    for m, n in [(49152, 576), (1536, 576), (576, 1536)] if block is None else [(1540, 576), (101, 70)]:
        w = torch.randn(m, n).to(torch.bfloat16)
        fused, apart = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
        one, two = TeZOAdam([fused], lr=1e-3, rank=32), TeZOAdam([apart], lr=1e-3, rank=32)
        r = one.ranks[0]
        restore, m_hat, v_hat = torch.randn(r) * 1e-2, torch.randn(r) * 1e-2, torch.rand(r) * 1e-4
        with torch.no_grad():
            one._adam_step(0, m_hat, v_hat, one.hyper(0), one.factors(0), restore, 0.999)
            two.add_lowrank(0, restore, beta=0.999, factors=two.factors(0))
            two._adam_step(0, m_hat, v_hat, two.hyper(0), two.factors(0))
        assert torch.equal(fused, apart), (m, n)
        assert (fused != w).float().mean() > 0.5, (m, n)   # the step moved most weights


def test_row_blocks_cover_every_row_once_and_never_run_shorter_than_the_kernel_minimum():
    from zoft.algos.lowrank import MIN_ROWS, block_rows, row_blocks

    for m, rows in [(1, 455), (15, 4), (16, 16), (458, 455), (470, 455), (49152, 455), (1540, 7), (100, 1000)]:
        blocks = list(row_blocks(m, rows))
        assert blocks[0][0] == 0 and blocks[-1][1] == m
        assert all(a < b and b == c for (a, b), (c, _) in zip(blocks, blocks[1:] + [(m, None)]))
        assert all(b - a >= MIN_ROWS for a, b in blocks) or len(blocks) == 1, (m, rows, blocks)
        assert max(b - a for a, b in blocks) <= block_rows(m, rows, 1), (m, rows)   # the buffer holds every block
    assert list(row_blocks(458, 455)) == [(0, 458)] and list(row_blocks(471, 455)) == [(0, 455), (455, 471)]
    assert list(row_blocks(40, 7)) == [(0, 16), (16, 40)]   # 7-row blocks rise to 16; the 8 left join the last


@pytest.mark.parametrize("m, rows", [(456, 455), (1540, 7), (49152, 1820), (600, 12)])
def test_products_by_row_blocks_equal_the_whole_product_bit_for_bit(m, rows):
    # What the blocked passes rely on: each block's product is the whole product's rows. MKL sums an operand of a
    # few rows (1 of 456 rows with 455-row blocks; 7-row blocks) by another kernel, off in the last bit of ~450
    # numbers a row; row_blocks never yields such a block. (The bf16 rounding hides most of that, hence fp32 here.)
    from zoft.algos.lowrank import row_blocks

    torch.manual_seed(0)
    left, right = torch.randn(m, 32), torch.randn(576, 32)
    whole = left @ right.t()
    blocked = torch.cat([left[a:b] @ right.t() for a, b in row_blocks(m, rows)])
    assert torch.equal(blocked, whole)
