"""HiZOO and HiZOO-L against the oracles of docs/algorithms.md, "HiZOO" and "HiZOO-L", and the rule computed by hand."""

import copy
import statistics

import pytest
import torch

from conftest import forwards_to_target
from zoft.algos import HiZOO, HiZOOL, MeZO
from zoft.algos.hizoo import parse_schedule
from zoft.perturb import PerturbationEngine, step_seed


def diag_quadratic(a: torch.Tensor, x0: float = 1.0):
    p = torch.nn.Parameter(torch.full(a.shape, x0, dtype=torch.float64))
    return p, (lambda: float(0.5 * (a * p.detach() ** 2).sum()))


def test_first_step_probes_like_mezo_and_alpha_zero_is_mezo():
    a = torch.logspace(0, 1, 6, dtype=torch.float64)
    (p1, f1), (p2, f2) = diag_quadratic(a), diag_quadratic(a)
    hz = HiZOO([p1], lr=1e-2, seed=3, hessian_smooth=0.0, allow_degenerate=True)
    mz = MeZO([p2], lr=1e-2, seed=3)
    for _ in range(20):
        hz.step(f1)
        mz.step(f2)
        assert hz.last["loss_plus"] == pytest.approx(mz.last["loss_plus"], rel=1e-12)
        assert hz.last["loss_minus"] == pytest.approx(mz.last["loss_minus"], rel=1e-12)
    assert torch.allclose(p1, p2, rtol=0, atol=1e-12)


def test_alpha_zero_is_refused_without_the_flag():
    from zoft.errors import ConfigError

    with pytest.raises(ConfigError, match="--allow-degenerate"):  # a user error: exit 2 on the command line
        HiZOO([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, hessian_smooth=0.0)
    with pytest.raises(ConfigError, match="--allow-degenerate"):  # a schedule of zeros too
        HiZOO([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, hessian_schedule="0:0")
    HiZOO([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, hessian_smooth=0.0, allow_degenerate=True)


def test_three_forwards_and_three_passes_per_step_and_logged_loss_is_l0():
    a = torch.ones(4, dtype=torch.float64)
    p, f = diag_quadratic(a, 0.5)
    calls = []
    opt = HiZOO([p], lr=1e-3, hessian_smooth=0.1)
    f0 = f()
    loss = opt.step(lambda: calls.append(1) or f())
    assert loss == f0 and len(calls) == 3 and opt.forwards == 3
    assert opt.engine.passes == 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_hessian_is_fp32_and_survives_state_dict_round_trip(dtype):
    p = torch.nn.Parameter(torch.rand(8, 4).to(dtype))
    opt = HiZOO([("w", p)], lr=1e-3, hessian_smooth=0.3)
    for _ in range(3):
        opt.step(lambda: float((p.float() ** 2).sum()))
    h = opt.state[p]["hessian"]
    assert h.dtype == torch.float32 and not torch.all(h == 1)
    q = torch.nn.Parameter(p.detach().clone())
    other = HiZOO([("w", q)], lr=1e-3, hessian_smooth=0.3)
    other.load_state_dict(opt.state_dict())
    assert other.state[q]["hessian"].dtype == torch.float32  # torch.optim would cast it to the weight dtype
    assert torch.equal(other.state[q]["hessian"], h)


def test_paper_sample_with_its_sign_restored_is_unbiased_for_the_diagonal():
    # hessian_estimator="paper": the sample is |ΔL/(2ε²)·h·(z² − 1)|. On a convex quadratic ΔL > 0, so multiplying by
    # sign(z² − 1) gives ΔL/(2ε²)·h·(z² − 1), whose mean at frozen H is the diagonal curvature A_ii
    # (docs/algorithms.md, "HiZOO"). Computing z² instead of |z² − 1| gives A_ii·3/2 + ½·h_i·Σ_j A_jj/h_j: caught.
    # Three weights keep the spread of c small: the standard error of each mean is about 2.5 % of A_ii, so 10 % is
    # a 4σ bound.
    a = torch.tensor([2.0, 3, 4], dtype=torch.float64)
    h = torch.tensor([1.0, 2, 1])
    p, f = diag_quadratic(a, 0.3)
    alpha, seed = 1e-3, 11
    opt = HiZOO([p], lr=1e-30, eps=1e-3, hessian_smooth=alpha, hessian_estimator="paper", seed=seed)
    engine = PerturbationEngine([p])
    total = torch.zeros(3, dtype=torch.float64)
    n = 20_000
    for t in range(n):
        opt.state[p]["hessian"].copy_(h)
        opt.step(f)
        sample = (opt.state[p]["hessian"].double() / h.double() - (1 - alpha)) / alpha * h.double()
        z = engine.noise(0, step_seed(seed, t)).double()
        total += sample * torch.sign(z * z - 1)
    assert torch.allclose(total / n, a, rtol=0.10)


def test_step_equals_the_rule_by_hand():
    torch.manual_seed(0)
    theta0 = torch.rand(3, 2, dtype=torch.float64)
    a = torch.rand(3, 2, dtype=torch.float64) + 0.5
    p = torch.nn.Parameter(theta0.clone())
    f = lambda: float(0.5 * (a * p.detach() ** 2).sum())  # noqa: E731
    eps, lr, alpha, wd = 1e-2, 0.05, 0.2, 0.1
    opt = HiZOO([("w", p)], lr=lr, eps=eps, weight_decay=wd, seed=7, hessian_smooth=alpha)
    h0 = torch.rand(3, 2, dtype=torch.float32) + 0.5
    opt.state[p]["hessian"].copy_(h0)
    opt.step(f)
    z = PerturbationEngine([p]).noise(0, step_seed(7, 0)).double()
    u = z / h0.double().sqrt()
    fq = lambda t: float(0.5 * (a * t**2).sum())  # noqa: E731
    lp, lm, l0 = fq(theta0 + eps * u), fq(theta0 - eps * u), fq(theta0)
    g, c = (lp - lm) / (2 * eps), abs(lp + lm - 2 * l0) / (2 * eps**2)
    h1 = h0.double() * ((1 - alpha) + alpha * c * z**2)
    expected = (1 - lr * wd) * theta0 - lr * g * z / h1.sqrt()
    assert torch.allclose(opt.state[p]["hessian"].double(), h1, rtol=1e-6)
    assert torch.allclose(p.detach(), expected, rtol=1e-6, atol=1e-9)
    assert opt.last["projected_grad"] == pytest.approx(g, rel=1e-6)


def test_one_step_expectation_of_the_curvature_sample():
    # E[c·h_i·z_i²] = A_ii + ½·h_i·Σ_j A_jj/h_j at frozen H (docs/algorithms.md, "HiZOO"). 40 000 draws keep the
    # test to a few seconds; their standard error (about 1.3 %) makes 6 % a 4.5σ bound.
    a = torch.tensor([1.0, 2, 4, 8, 16, 32], dtype=torch.float64)
    h = torch.tensor([1.0, 2, 1, 2, 1, 2])
    p, f = diag_quadratic(a, 0.3)
    alpha = 1e-3
    opt = HiZOO([p], lr=1e-30, eps=1e-3, hessian_smooth=alpha)  # η ≈ 0: θ stays put
    total = torch.zeros(6, dtype=torch.float64)
    n = 40_000
    for _ in range(n):
        opt.state[p]["hessian"].copy_(h)
        opt.step(f)
        total += (opt.state[p]["hessian"].double() / h.double() - (1 - alpha)) / alpha * h.double()
    expected = a + 0.5 * h.double() * (a / h.double()).sum()
    assert torch.allclose(total / n, expected, rtol=0.06)


def test_long_run_shape_follows_the_diagonal():
    # θ held fixed (η ≈ 0), α = 0.05: the geometric mean of H_i/A_ii over the second half is flat although A spans
    # 1000×, at a level near the mean-field 1 + d/2 = 6 (the long-run oracle). 40 000 steps as it asks.
    a = torch.logspace(0, 3, 10, dtype=torch.float64)
    p, f = diag_quadratic(a)
    opt = HiZOO([p], lr=1e-30, eps=1e-3, hessian_smooth=0.05, seed=1)
    log_sum = torch.zeros(10, dtype=torch.float64)
    steps = 40_000
    for t in range(steps):
        opt.step(f)
        if t >= steps // 2:
            log_sum += opt.state[p]["hessian"].double().log()
    ratio = (log_sum / (steps - steps // 2)).exp() / a
    assert ratio.max() / ratio.min() <= 2.0
    assert 0.5 * 6 <= ratio.mean() <= 2 * 6


def _forwards_to_target(cls, lr, seed, a=None, eps=1e-3, max_steps=20_000, **kw):
    """Forwards until f ≤ 1e-4·f(ones) on ½ Σ a_i x_i² (∞ if not reached)."""
    a = torch.logspace(0, 3, 10, dtype=torch.float64) if a is None else a
    p, f = diag_quadratic(a)
    return forwards_to_target(cls([p], lr=lr, eps=eps, seed=seed, **kw), f, 1e-4 * f(), max_steps)


def test_hizoo_beats_mezo_at_equal_forwards():
    # Best LRs of the oracle's grids (measured: MeZO 4e-4 → median 4 754 forwards, 6e-4 → 5 458, 8e-4 diverges;
    # HiZOO α = 0.1: 0.03 → 3 507, 0.1 → 2 520, 0.3 → 2 142). Counting forwards, 2 vs 3 per step.
    mezo = min(statistics.median(_forwards_to_target(MeZO, lr, s) for s in range(5)) for lr in (4e-4, 6e-4))
    hizoo = statistics.median(_forwards_to_target(HiZOO, 0.3, s, hessian_smooth=0.1) for s in range(5))
    assert hizoo <= 0.7 * mezo, (hizoo, mezo)


def test_hizoo_l_state_is_m_plus_n_and_starts_at_one():
    w, b = torch.nn.Parameter(torch.rand(5, 7)), torch.nn.Parameter(torch.rand(7))
    opt = HiZOOL([("w", w), ("b", b)], lr=1e-3)
    assert opt.state_bytes() == 4 * ((5 + 7) + 7)
    assert torch.allclose(opt._build_h(0, 0), torch.ones(5, 7))
    assert opt.diagnostics()["log_h_mean"] == pytest.approx(0.0, abs=1e-6)
    assert HiZOO([w, b], lr=1e-3).state_bytes() == 4 * (35 + 7)


def test_hizoo_l_factors_converge_to_a_rank_one_sample():
    pv, qv = torch.rand(4) + 0.5, torch.rand(6) + 0.5
    row, col = torch.full((4,), 6.0), torch.full((6,), 4.0)
    for _ in range(2000):
        HiZOOL.update_factors(row, col, torch.outer(pv, qv), 0.05)
    assert torch.allclose(torch.outer(row, col) / row.sum(), torch.outer(pv, qv), atol=1e-6)


def test_hizoo_l_on_a_row_matrix_equals_hizoo():
    a = torch.rand(1, 8, dtype=torch.float64) + 0.5
    p1 = torch.nn.Parameter(torch.ones(1, 8, dtype=torch.float64))
    p2 = torch.nn.Parameter(torch.ones(1, 8, dtype=torch.float64))
    o1 = HiZOO([p1], lr=0.05, seed=2, hessian_smooth=0.1)
    o2 = HiZOOL([p2], lr=0.05, seed=2, hessian_smooth=0.1)
    for _ in range(30):
        o1.step(lambda: float(0.5 * (a * p1.detach() ** 2).sum()))
        o2.step(lambda: float(0.5 * (a * p2.detach() ** 2).sum()))
    assert torch.allclose(p1, p2, rtol=1e-5)
    assert torch.allclose(o1.state[p1]["hessian"], o2._build_h(0, 0), rtol=1e-5)


def test_schedule_and_guards():
    assert parse_schedule("2000:1e-6,0:1e-4") == [(0, 1e-4), (2000, 1e-6)]
    with pytest.raises(ValueError, match="step 0"):
        parse_schedule("10:1e-4")
    with pytest.raises(ValueError, match="STEP:ALPHA"):
        parse_schedule("soon:1e-4")
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = HiZOO([p], lr=1e-3, hessian_schedule="0:0.5,2:1e-3")
    assert opt.current_alpha() == 0.5
    opt.t = 2
    assert opt.current_alpha() == 1e-3
    # a huge curvature spike cannot push H to inf
    opt.state[p]["hessian"].fill_(1e29)
    opt.step(lambda: float(1e6 * (p.detach() ** 2).sum()))
    assert torch.isfinite(opt.state[p]["hessian"]).all() and (opt.state[p]["hessian"] > 0).all()


def test_hizoo_beats_mezo_on_a_2d_ill_conditioned_quadratic():
    # ½(x² + 100y²) from (1, 1) to 1e-4·f0, the first panel of bench/hizoo_test_functions.py. Measured best medians
    # over that grid: MeZO lr 1e-2 → 454 forwards (1.5e-2 → 2 292, 2e-2 diverges); HiZOO lr 0.3, α 0.3 → 138.
    a = torch.tensor([1.0, 100.0], dtype=torch.float64)

    def cost(cls, lr, seed, **kw):
        return _forwards_to_target(cls, lr, seed, a=a, eps=1e-4, max_steps=5000, **kw)

    mezo = min(statistics.median(cost(MeZO, lr, s) for s in range(5)) for lr in (6e-3, 1e-2, 1.5e-2))
    hizoo = statistics.median(cost(HiZOO, 0.3, s, hessian_smooth=0.3) for s in range(5))
    assert hizoo <= 0.5 * mezo, (hizoo, mezo)


def _bench(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_published_fp16_update_leaves_h_at_one_where_fp32_moves_it():
    # bench/hizoo_published_fp16.py replays the released code's H update in fp16 (its README's precision): at its
    # alpha = 1e-8 the product underflows and (1 - alpha)·H rounds back to H, so H never leaves 1
    bench = _bench("hizoo_published_fp16")
    for dl in (1e-3, 1e-1):
        assert bench.replay(1e-8, dl, torch.float16, 20_000, 5)["moved_fraction"] == 0.0
    assert bench.replay(1e-8, 1e-1, torch.float32, 20_000, 5)["moved_fraction"] == 1.0
    assert bench.replay(1e-2, 1e-1, torch.float16, 20_000, 5)["first_inf_step"] is not None  # large alpha: inf


# -- zoft's estimator: the centred sample, H per tensor or block, a warm-up ------------------------------------
def test_the_centred_block_rule_learns_the_curvature_shape_at_d_1000():
    # bench/hessian_shape.py: θ fixed on ½·Σ a_i θ_i², 10 blocks of curvature over 100×; one H per block learns
    # log a (R² ≥ 0.95, slope 0.9–1.1), where the released code's per-weight rule is noise at this size (R² ≈ 0)
    bench = _bench("hessian_shape")
    a = bench.curvatures(1000)
    r2, slope = bench.shape_fit(bench.learned_h("centred", "block", 1000, 1e-3, 20_000), a)
    assert r2 >= 0.95 and 0.9 <= slope <= 1.1, (r2, slope)
    r2_weight, _ = bench.shape_fit(bench.learned_h("code", "weight", 1000, 1e-3, 5000), a)
    assert r2_weight < 0.2


def _expand(h: torch.Tensor, size: int, n: int) -> torch.Tensor:
    return h.double().repeat_interleave(size)[:n] if size > 1 else h.double().reshape(-1)


@pytest.mark.parametrize("granularity,size", [("weight", 1), ("block", 5), ("tensor", 12)])
def test_centred_step_equals_the_rule_by_hand(granularity, size):
    torch.manual_seed(1)
    theta0 = torch.rand(3, 4, dtype=torch.float64)
    a = torch.rand(3, 4, dtype=torch.float64) * 10 + 0.5
    p = torch.nn.Parameter(theta0.clone())
    f = lambda: float(0.5 * (a * p.detach() ** 2).sum())  # noqa: E731
    eps, lr, alpha, wd, c_bar = 1e-2, 0.05, 0.2, 0.1, 3.0
    opt = HiZOO([("w", p)], lr=lr, eps=eps, weight_decay=wd, seed=7, hessian_smooth=alpha,
                hessian_estimator="centred", hessian_granularity=granularity,
                **({"hessian_block": 5} if granularity == "block" else {}))
    h0 = torch.rand(opt.state[p]["hessian"].shape, dtype=torch.float32) + 0.5
    opt.state[p]["hessian"].copy_(h0)
    opt.baseline, opt.samples = c_bar, 5
    opt.step(f)
    z = PerturbationEngine([p]).noise(0, step_seed(7, 0)).double().reshape(-1)
    dense0 = _expand(h0, size, 12)
    h_bar, mean = 12 / (1 / dense0).sum(), dense0.mean()       # the probe scale: mean(1/(H/h̄)) = 1
    u = z / (dense0 / h_bar).sqrt()
    fq = lambda t: float(0.5 * (a.reshape(-1) * t**2).sum())  # noqa: E731
    th = theta0.reshape(-1)
    lp, lm, l0 = fq(th + eps * u), fq(th - eps * u), fq(th)
    g, c = (lp - lm) / (2 * eps), (lp + lm - 2 * l0) / (2 * eps**2)
    w = z**2 - 1
    if size > 1:
        w = torch.stack([w[i:i + size].mean() for i in range(0, 12, size)])
    h1 = (h0.double().reshape(-1) * ((1 - alpha) + alpha * (c - c_bar) * w / h_bar)).clamp(min=0.01 * mean)
    expected = (1 - lr * wd) * th - lr * g * z / (_expand(h1, size, 12) / h_bar).sqrt()
    assert torch.allclose(opt.state[p]["hessian"].double().reshape(-1), h1, rtol=1e-6)
    assert torch.allclose(p.detach().reshape(-1), expected, rtol=1e-6, atol=1e-9)
    assert opt.baseline == pytest.approx(c_bar + (c - c_bar) / 6, rel=1e-5)   # c: a cancelling difference


def test_the_centred_sample_is_unbiased_for_the_diagonal():
    # E[(c − c̄)·Ĥ_i·(z_i² − 1)] = A_ii for any c̄ and H: H = A is a fixed point of the expected update. With H
    # within 2× of A's shape, 20 000 draws give a standard error under 2 %, so 10 % is a 5σ bound.
    a = torch.tensor([1.0, 3, 10, 30], dtype=torch.float64)
    h = torch.tensor([0.5, 2, 4, 20])
    p, f = diag_quadratic(a, 0.3)
    alpha, n = 1e-3, 20_000
    opt = HiZOO([p], lr=1e-30, eps=1e-3, hessian_smooth=alpha, hessian_estimator="centred")
    total = torch.zeros(4, dtype=torch.float64)
    for _ in range(n):
        opt.state[p]["hessian"].copy_(h)
        opt.step(f)
        total += (opt.state[p]["hessian"].double() / h.double() - (1 - alpha)) / alpha * h.double()
    assert torch.allclose(total / n, a, rtol=0.10), total / n
    assert not torch.allclose(total / n, a * h.double() / h.double().mean(), rtol=0.3)   # not H's shape back


def test_warmup_steps_are_mezo_steps_then_probes_are_preconditioned():
    a = torch.logspace(0, 2, 8, dtype=torch.float64)
    (p1, f1), (p2, f2) = diag_quadratic(a), diag_quadratic(a)
    hz = HiZOO([p1], lr=1e-2, eps=1e-3, seed=4, hessian_smooth=0.05, hessian_estimator="centred",
               hessian_warmup=5)
    mz = MeZO([p2], lr=1e-2, eps=1e-3, seed=4)
    for _ in range(5):
        hz.step(f1)
        mz.step(f2)
    assert torch.allclose(p1, p2, rtol=0, atol=1e-12)
    assert not torch.equal(hz.state[p1]["hessian"], torch.ones(8))   # H was estimated meanwhile
    theta, h = p1.detach().clone(), hz.state[p1]["hessian"].double()
    hz.step(f1)                                                         # step 5 probes along z/√(H/h̄)
    z = PerturbationEngine([p1]).noise(0, step_seed(4, 5)).double()
    u = z / (h * (1 / h).mean()).sqrt()
    assert hz.last["loss_plus"] == pytest.approx(float(0.5 * (a * (theta + 1e-3 * u) ** 2).sum()), rel=1e-9)


def test_zofts_estimator_replays_and_resumes_bitwise():
    a = torch.logspace(0, 2, 24, dtype=torch.float64).reshape(4, 6)
    kw = dict(lr=1e-3, eps=1e-3, seed=2, hessian_smooth=0.05, hessian_estimator="centred",
              hessian_granularity="block", hessian_block=5, hessian_warmup=3)
    p, f = diag_quadratic(a)
    opt = HiZOO([p], **kw)
    records, middle = [], None
    for t in range(10):
        opt.step(f)
        records.append(opt.trajectory_record())
        if t == 5:
            middle = (p.detach().clone(), copy.deepcopy(opt.state_dict()))
    q, _ = diag_quadratic(a)
    replayed = HiZOO([q], **kw)
    for record in records:
        replayed.replay(record)
    assert torch.equal(q, p) and torch.equal(replayed.state[q]["hessian"], opt.state[p]["hessian"])
    assert replayed.baseline == opt.baseline
    r, fr = diag_quadratic(a)
    with torch.no_grad():
        r.copy_(middle[0])
    resumed = HiZOO([r], **kw)
    resumed.load_state_dict(middle[1])
    for _ in range(4):
        resumed.step(fr)
    assert torch.equal(r, p) and resumed.baseline == opt.baseline


def test_zofts_estimator_refusals():
    from types import SimpleNamespace

    from zoft.errors import ConfigError
    from zoft.offload import check_config

    with pytest.raises(ConfigError, match="--hessian-granularity block"):
        HiZOO([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, hessian_block=16)
    with pytest.raises(ConfigError, match="--algo hizoo"):
        HiZOOL([torch.nn.Parameter(torch.zeros(3, 2))], lr=1e-3, hessian_estimator="centred")
    cfg = SimpleNamespace(offload="cpu", algo="hizoo", algo_options={"hessian_estimator": "centred"})
    assert "--hessian-estimator centred" in check_config(cfg)


def test_the_oracle_benchmarks_preconditioned_step_is_newton_like_in_expectation():
    # bench/hizoo_oracle.py's "oracle": MeZO along u = z/√H with H fixed; E[g·u] = H⁻¹·∇f, so with H = diag(A) the
    # mean step on ½·Σ a_i θ_i² is −η·θ (every coordinate contracts alike), where MeZO's is −η·a⊙θ
    bench = _bench("hizoo_oracle")
    a = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)
    h = bench.condition([a.float()], [3], floor=0.01)
    assert float((1 / h[0]).mean()) == pytest.approx(1.0, rel=1e-6)       # probes as long as MeZO's
    total, n = torch.zeros(3, dtype=torch.float64), 4000
    for seed in range(n):
        p, f = diag_quadratic(a)
        opt = bench.OraclePreconditioned([p], h, lr=1e-3, eps=1e-4, seed=seed)
        opt.step(f)
        total += (1.0 - p.detach()) / 1e-3
    step = total / n                                   # ≈ H⁻¹·∇f = θ·a/h (h ∝ a): the same for every coordinate
    assert torch.allclose(step / step.mean(), torch.ones(3, dtype=torch.float64), rtol=0.15), step
    assert bench.condition([torch.tensor([-1.0, 2.0, 4.0])], [3], floor=0.25)[0].min() > 0   # ≤ 0 is floored
