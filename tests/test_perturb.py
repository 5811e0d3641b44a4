"""The perturbation engine: seeded regeneration of z (docs/algorithms.md, "Seeds, not stored noise" and the
determinism oracle)."""

import pytest
import torch

from zoft.perturb import InPlace, PerturbationEngine, mix, step_seed, tensor_seed


def test_mix_is_a_stable_63_bit_hash():
    assert mix(0, 0) == mix(0, 0)
    assert mix(0, 1) != mix(1, 0)
    assert all(0 <= mix(s, t) < 2**63 for s in range(5) for t in range(5))
    assert mix(0, 0) == 2812178212566171247  # pinned: changing the hash silently changes every run's trajectory


def test_same_seed_same_z_bitwise_and_other_step_differs():
    p = torch.zeros(50, 20)
    eng = PerturbationEngine([p])
    z1 = eng.noise(0, step_seed(7, 3)).clone()
    z2 = eng.noise(0, step_seed(7, 3)).clone()
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, eng.noise(0, step_seed(7, 4)))
    assert not torch.equal(z1, eng.noise(0, step_seed(8, 3)))


def test_z_does_not_depend_on_dtype_or_on_other_tensors():
    a32, a64, a16 = torch.zeros(10, 10), torch.zeros(10, 10, dtype=torch.float64), torch.zeros(10, 10,
                                                                                             dtype=torch.bfloat16)
    seed = step_seed(0, 5)
    ref = PerturbationEngine([a32]).noise(0, seed).clone()
    assert ref.dtype == torch.float32
    assert torch.equal(PerturbationEngine([a64]).noise(0, seed), ref)
    assert torch.equal(PerturbationEngine([a16]).noise(0, seed), ref)
    # a big extra tensor before or after (same index) does not change this tensor's z
    assert torch.equal(PerturbationEngine([a32, torch.zeros(1000)]).noise(0, seed), ref)


def test_different_tensor_index_gives_independent_z():
    eng = PerturbationEngine([torch.zeros(20000), torch.zeros(20000)])
    seed = step_seed(0, 0)
    z0 = eng.noise(0, seed).clone()
    z1 = eng.noise(1, seed).clone()
    corr = torch.corrcoef(torch.stack([z0, z1]))[0, 1].abs().item()
    assert corr < 0.03  # 4.2 standard errors of a correlation over 20 000 pairs
    assert tensor_seed(seed, 0) != tensor_seed(seed, 1)
    assert tensor_seed(seed, 0, probe=1) != tensor_seed(seed, 0)
    assert tensor_seed(seed, 0, tag="U") != tensor_seed(seed, 0)


def test_z_is_standard_normal():
    z = PerturbationEngine([torch.zeros(200_000)]).noise(0, 12345)
    assert abs(z.mean().item()) < 0.01
    assert abs(z.std().item() - 1) < 0.01
    assert abs(((z**4).mean() - 3).item()) < 0.1  # Gaussian kurtosis, needed wherever z² enters (HiZOO)


def test_global_rng_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    PerturbationEngine([torch.zeros(100)]).add_(step_seed(0, 0), 0.1)
    assert torch.equal(torch.rand(3), expected)


def test_add_is_in_place_and_counts_passes():
    p = torch.zeros(4, 4)
    storage = p.data_ptr()
    eng = PerturbationEngine([p, torch.zeros(3)])
    eng.add_(99, 0.5)
    assert p.data_ptr() == storage
    assert torch.equal(p, 0.5 * eng.noise(0, 99))
    assert eng.passes == 1 and eng.regenerations == 3
    assert eng.max_buffer_bytes() == 16 * 4


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def test_mixed_dtype_updates_are_chunked_identical_and_bounded():
    ops = InPlace()

    n = 6_000_000  # 12 MB of bf16; torch's own mixed-dtype add would hold ~46 MiB of fp32 temporaries
    p = torch.randn(n, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    z = torch.randn(n, generator=torch.Generator().manual_seed(1))
    den = torch.rand(n, generator=torch.Generator().manual_seed(2)) + 0.5
    expected = p.clone()
    expected.add_(z, alpha=1e-2)
    expected.addcdiv_(z, den, value=-3e-3)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _hwm_mib()
    ops.add_(p, z, 1e-2)
    ops.addcdiv_(p, z, den, -3e-3)
    assert _hwm_mib() - before < 20
    assert torch.equal(p, expected)


# -- the noise table (the default generator for tensors of TABLE_MIN elements or more) -------------------------
BIG = 3 * (1 << 20) + 12_345  # three full windows and a partial one
PINNED_TABLE_HEAD = [0.8125, -0.30078125, 0.7734375, 0.64453125]


def test_table_holds_gaussian_quantiles_exact_in_every_float_dtype():
    from zoft.perturb import SIGN_BITS, TABLE_BITS, WINDOW, noise_table

    g, s = noise_table(torch.device("cpu"), torch.float32)
    body = g[: 1 << TABLE_BITS].double()
    assert abs(body.mean().item()) < 1e-12  # symmetric set of quantiles
    assert abs((body**2).mean().item() - 1) < 1e-5 and abs((body**4).mean().item() - 3) < 1e-4
    assert body.abs().max().item() < 5.5
    assert torch.equal(g.bfloat16().float(), g) and torch.equal(g.half().float(), g)  # same z in any dtype
    assert torch.equal(g[-WINDOW:], g[:WINDOW]) and torch.equal(s[-WINDOW:], s[:WINDOW])  # windows never wrap
    assert set(s.unique().tolist()) == {-1.0, 1.0} and abs(s[: 1 << SIGN_BITS].mean().item()) < 3e-3
    assert torch.equal(noise_table(torch.device("cpu"), torch.bfloat16)[0].float(), g)
    # pinned: the table is a constant of zoft; changing it silently changes every run's trajectory
    assert g[:4].tolist() == PINNED_TABLE_HEAD
    # scrambled order: autocorrelations at short and power-of-two lags look like those of i.i.d. draws
    for lag in (1, 2, 3, 64, 1 << 12, 1 << 20):
        assert abs(torch.dot(body[:-lag], body[lag:]).item()) / (1 << TABLE_BITS) < 5 / 2**12


def test_table_z_is_seeded_dtype_independent_and_standard_normal():
    seed = step_seed(3, 1)
    ref = PerturbationEngine([torch.zeros(BIG)]).noise(0, seed).clone()
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        assert torch.equal(PerturbationEngine([torch.zeros(BIG, dtype=dtype)]).noise(0, seed), ref)
    assert not torch.equal(PerturbationEngine([torch.zeros(BIG)]).noise(0, seed + 1), ref)
    z = ref.double()
    assert abs(z.mean().item()) < 3e-3 and abs(z.var().item() - 1) < 3e-3
    assert abs((z**4).mean().item() - 3) < 0.03
    # Kolmogorov-Smirnov distance to N(0, 1) rounded to bf16's grid (the table's values): the empirical CDF at
    # each distinct value v against Φ at the midpoint to the next one; the 5 % critical value for n = 3.2 M is
    # 7.6e-4 (unrounded, the grid's atoms alone would put it at 1.1e-3)
    values, counts = torch.unique(z, return_counts=True)
    ecdf = counts.cumsum(0).double() / z.numel()
    cdf = torch.special.ndtr(torch.cat([(values[:-1] + values[1:]) / 2, values[-1:] + 1]))
    assert (ecdf - cdf).abs().max().item() < 7.6e-4


def test_table_windows_tensors_and_probes_are_uncorrelated():
    from zoft.perturb import WINDOW

    eng = PerturbationEngine([torch.zeros(BIG), torch.zeros(BIG)])
    seed = step_seed(0, 9)
    z0 = eng.noise(0, seed).clone()
    z1 = eng.noise(1, seed).clone()
    zp = eng.noise(0, seed, probe=1).clone()
    bound = 5 / WINDOW**0.5  # 5 standard errors of a normalised dot product over one window
    for a, b in ((z0[:WINDOW], z0[WINDOW:2 * WINDOW]), (z0[:WINDOW], z1[:WINDOW]), (z0[:WINDOW], zp[:WINDOW])):
        assert abs(torch.dot(a, b).item()) / WINDOW < bound
    # a shifted copy would betray reused offsets: windows 1 and 2 share no run of equal values with window 0
    assert (z0[WINDOW:2 * WINDOW] == z0[:WINDOW]).float().mean().item() < 0.01


def test_table_axpy_is_fused_and_rounds_once():
    seed = step_seed(1, 2)
    p = torch.randn(BIG, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        q = p.to(dtype)
        eng = PerturbationEngine([q])
        expected = (q.float() + 1e-3 * eng.noise(0, seed)).to(dtype)
        eng.axpy_(0, seed, 1e-3)
        assert torch.equal(q, expected), dtype


def test_small_tensors_use_randn_and_mezo_needs_no_z_buffer_with_the_table():
    from zoft.algos import ALGORITHMS
    from zoft.perturb import TABLE_MIN, table_bytes, tensor_seed

    small = torch.zeros(TABLE_MIN - 1)
    z = PerturbationEngine([small]).noise(0, 5)
    gen = torch.Generator().manual_seed(tensor_seed(5, 0))
    assert torch.equal(z, torch.randn(TABLE_MIN - 1, generator=gen))  # exact N(0, I), no table built
    assert PerturbationEngine([small]).pass_bytes() == 4 * (TABLE_MIN - 1)
    big = torch.nn.Parameter(torch.zeros(BIG))
    assert ALGORITHMS["mezo"]([big]).transient_bytes() == table_bytes(torch.float32)
    assert ALGORITHMS["mezo"]([big], noise="randn").transient_bytes() == 4 * BIG
    gen = torch.Generator().manual_seed(tensor_seed(5, 0))
    assert torch.equal(PerturbationEngine([big], noise="randn").noise(0, 5), torch.randn(BIG, generator=gen))


# -- stochastic rounding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_makes_the_expected_update_unbiased(dtype):
    ops = InPlace()
    gen = torch.Generator().manual_seed(0)
    n, trials = 50_000, 400
    p0 = (torch.rand(n, generator=gen) + 0.5).to(dtype)  # weights in [0.5, 1.5): ulp 2^-8..2^-7 (bf16)
    # typical ZO updates, 1e-6..1e-3 with either sign: most are far below half an ulp
    delta = torch.randn(n, generator=gen).sign() * 10 ** (-6 + 3 * torch.rand(n, generator=gen))
    nearest = p0.clone()
    ops.add_(nearest, delta)
    assert (nearest != p0).float().mean() < (0.02 if dtype == torch.bfloat16 else 0.3)  # nearest drops them
    total = torch.zeros(n, dtype=torch.float64)
    for t in range(trials):
        p = p0.clone()
        with ops.stochastic(t):
            ops.add_(p, delta)
        total += p.double() - p0.double()
    mean = total / trials
    # the expected update, projected on the update's signs, equals the exact one to within the trials' sampling
    # error (0.6 % here)
    sign = delta.sign().double()
    assert abs((mean * sign).sum().item() / delta.abs().double().sum().item() - 1) < 0.03
    big = delta.abs() > 3e-4  # per element, where the sampling error is small enough to see
    rel = (mean[big] - delta[big].double()).abs().mean() / delta[big].abs().double().mean()
    assert rel < 0.25


def test_stochastic_rounding_is_seeded_and_only_inside_its_block():
    ops = InPlace()
    p0 = torch.linspace(0.5, 1.5, 10_000).bfloat16()
    z = torch.full((10_000,), 1e-3)
    runs = []
    for seed in (1, 1, 2):
        p = p0.clone()
        with ops.stochastic(seed):
            ops.add_(p, z)
        runs.append(p)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    p = p0.clone()
    ops.add_(p, z)
    expected = p0.clone()
    expected.add_(z)
    assert torch.equal(p, expected)  # outside: round to nearest, as torch
    other = InPlace()  # the switch belongs to one engine's ops: another's updates are not rounded stochastically
    with ops.stochastic(1):
        p = p0.clone()
        other.add_(p, z)
    assert torch.equal(p, expected)


def test_fused_table_axpy_rounds_stochastically_like_add():
    seed = step_seed(0, 1)
    p0 = torch.randn(BIG, generator=torch.Generator().manual_seed(3)).bfloat16()
    fused, plain = p0.clone(), p0.clone()
    eng = PerturbationEngine([fused])
    with eng.rounding(9):
        eng.axpy_(0, seed, 1e-4)
    other = PerturbationEngine([plain])
    with other.rounding(9):
        other.ops.add_(plain, other.noise(0, seed), 1e-4)
    assert torch.equal(fused, plain)
    assert (fused != p0).float().mean() > 0.005  # some of the sub-ulp updates survive


# -- exact bf16 ------------------------------------------------------------------------------------------------
def test_split_and_join_are_exact_and_the_bf16_half_is_nearest():
    from zoft.perturb.residuals import join, split

    x = torch.randn(1 << 18, generator=torch.Generator().manual_seed(0)) * torch.logspace(-6, 4, 1 << 18)
    hi, lo = torch.empty(x.shape, dtype=torch.bfloat16), torch.empty(x.shape, dtype=torch.int16)
    tmp = torch.empty(x.shape, dtype=torch.int32)
    split(x.clone(), hi, lo, tmp)
    back = torch.empty_like(x)
    join(back, hi, lo, tmp)
    assert torch.equal(back, x)
    assert (hi != x.bfloat16()).float().mean() < 1e-4  # differs from torch's rounding only at ties


@pytest.mark.parametrize("algo", ["mezo", "zo-adam", "hizoo", "tezo-adam"])
def test_exact_bf16_follows_the_fp32_trajectory_bitwise(algo):
    from zoft.algos import ALGORITHMS

    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(300, 256, generator=gen).bfloat16()  # 76 800 elements: table-drawn z
    b0 = torch.randn(256, generator=gen).bfloat16()
    target = torch.randn(300, 256, generator=gen)
    opts = {"tezo-adam": {"rank": 4}}.get(algo, {})
    runs = {}
    for mode in ("fp32", "exact"):
        w = torch.nn.Parameter(w0.float() if mode == "fp32" else w0.clone(), requires_grad=False)
        b = torch.nn.Parameter(b0.float() if mode == "fp32" else b0.clone(), requires_grad=False)
        opt = ALGORITHMS[algo]([("w", w), ("b.bias", b)], lr=1e-3, eps=1e-2, weight_decay=0.1, **opts)
        if mode == "exact":
            opt.keep_residuals()
        master = opt.ops.master_fp32

        def loss():  # evaluated on the fp32 value in both runs, so both see the same losses
            return float(((master(w) if mode == "exact" else w) - target).pow(2).mean())

        for _ in range(4):
            opt.step(loss)
        runs[mode] = [master(t) if mode == "exact" else t.detach().clone() for t in (w, b)]
    assert all(torch.equal(a, b) for a, b in zip(runs["fp32"], runs["exact"]))


def test_exact_bf16_state_survives_a_checkpoint_round_trip():
    from zoft.algos import ALGORITHMS

    p = torch.nn.Parameter(torch.randn(70_000).bfloat16(), requires_grad=False)
    opt = ALGORITHMS["mezo"]([p], lr=1e-3, eps=1e-2)
    opt.keep_residuals()
    opt.step(lambda: float(p.float().sum()))
    sd = opt.state_dict()
    assert opt.residual_bytes() == 2 * 70_000 and sd["zo"]["residuals"][0].abs().sum() > 0
    other = ALGORITHMS["mezo"]([p], lr=1e-3, eps=1e-2)
    with pytest.raises(ValueError, match="--exact-bf16"):
        other.load_state_dict(sd)
