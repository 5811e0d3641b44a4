"""The perturbation engine shared by every ZO algorithm.

z is never stored. For step seed s_t, probe j and tensor index i, z_i is regenerated on demand from the integer
seed mix(s_t, j, i, tag) (ALGORITHMS.md §1.2) and applied in place on the parameter's own storage and dtype.
Seeds are pure functions of integers, never of a stateful global RNG: the global torch/numpy RNGs are never
touched, any step can be replayed from (run seed, step), and resuming needs only the step index.

Three generators (`--noise`):

* ``table`` (default): z is read from a fixed noise table, the evolution-strategies trick (Salimans et al. 2017)
  made exactly Gaussian in its marginals. The table holds the 2^23 quantiles Φ⁻¹((k+½)/2^23) of N(0, 1) in a
  fixed scrambled order (G) and 2^20 pseudo-random signs (S). Each tensor is cut into windows of 2^20 elements; window w of
  tensor i reads z[k] = G[a + k]·S[b + k] at two offsets (a, b) hashed from (seed, probe, i, tag, w). A pass is
  then one fused `addcmul_` per window, memory-bound: 0.03 s over SmolLM2-135M in bf16 where `torch.randn` takes
  0.55-0.70 s (`python bench/step_time.py`). How z differs from N(0, I):
    - marginals: each z[k] is a quantile of N(0, 1) with a random sign, rounded to bfloat16's 8-bit mantissa so
      that fp32, bf16 and fp16 tables give the same z: mean 0, E[z²] = 1 − 3e-6, E[z⁴] = 3 + 1.1e-5, |z| ≤ 5.28
      (N(0, 1) exceeds that with probability 1.3e-7), and values on a grid of relative spacing 2^-8;
    - independence: within a window the 2^20 values are distinct table entries; distinct windows, tensors, probes
      and steps use independently hashed offsets. Over the offsets, E[z zᵀ] = I + E with |E_kl| ≈ 2^-21.5 off the
      diagonal (a product of two table autocorrelations), so no direction is favoured beyond that;
    - memory: (2^23 + 3·2^20) entries per (device, dtype) in use, 44 MiB in fp32 and 22 MiB in bf16/fp16, built
      once per process in 0.2 s, instead of a z buffer as large as the largest tensor.
* ``philox`` (CUDA with Triton): z made inside one fused kernel from (tensor seed, element index) and applied in
  the same read+write of θ, many tensors per launch: no table, no z buffer (`zoft.kernels`).
* ``randn``: z_i = `torch.randn` from a dedicated `torch.Generator` seeded with the tensor seed, into one reusable
  fp32 buffer the size of the largest trainable tensor: exactly N(0, I), the reference, 10-20x slower on CPU.

Both streams are reproducible per device type; CPU and CUDA generators differ, so the ``randn`` stream differs
between them (the table is built on the CPU and is the same everywhere).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

_MASK64 = (1 << 64) - 1
_MASK63 = (1 << 63) - 1


def splitmix64(x: int) -> int:
    """One round of SplitMix64 (Steele et al.), a fast bijective 64-bit mixer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix(*values: int) -> int:
    """Hash a tuple of integers to a 63-bit seed (63 bits so `manual_seed` accepts it on every device)."""
    h = 0
    for v in values:
        h = splitmix64(h ^ (int(v) & _MASK64))
    return h & _MASK63


def tag_id(tag: str) -> int:
    """Stable integer for a stream tag such as "z", "U" or "tau" (first 8 bytes, little-endian)."""
    return int.from_bytes(tag.encode()[:8].ljust(8, b"\0"), "little")


def step_seed(run_seed: int, step: int) -> int:
    """s_t = mix(run_seed, t): the seed of step t, a pure function of the run seed and the step index."""
    return mix(run_seed, step)


def tensor_seed(seed: int, index: int, probe: int = 0, tag: str = "z") -> int:
    """s_{t,j,i} = mix(s_t, j, i, tag): independent of which other tensors exist or the order they are visited."""
    return mix(seed, probe, index, tag_id(tag))


#: elements per chunk of a mixed-dtype in-place update (4 MiB of fp32)
MIXED_CHUNK = 1 << 20
_WORK: dict[torch.device, torch.Tensor] = {}  # one fp32 chunk buffer per device, reused by every mixed update


def _work(device: torch.device) -> torch.Tensor:
    buf = _WORK.get(device)
    if buf is None:
        buf = _WORK[device] = torch.empty(MIXED_CHUNK, dtype=torch.float32, device=device)
    return buf


def _mixed(p: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether an in-place op on half-precision p goes through the fp32 chunk buffer: when it takes fp32 operands
    (bf16/fp16 weights with fp32 noise or state; torch would promote through whole-tensor fp32 temporaries), and
    always inside `stochastic_rounding` or for exact-bf16 weights (`_chunked`)."""
    return (p.dtype in (torch.bfloat16, torch.float16) and p.is_contiguous()
            and (bool(_SR) or _residual_of(p) is not None or any(o.dtype == torch.float32 for o in others)))


def _chunked(p: torch.Tensor) -> bool:
    """Whether every in-place update of p, whatever its operands, must go through the fp32 chunk buffer (to be
    rounded stochastically, or joined with its exact-bf16 residual)."""
    return _mixed(p)


def _mixed_apply(p: torch.Tensor, op, *others: torch.Tensor) -> None:
    """Apply `op(work_fp32, *other_chunks)` to p through a reused fp32 chunk buffer: copy the chunk up, operate,
    copy back (rounding once, as torch's own promotion does, or stochastically inside `stochastic_rounding`).
    torch would instead allocate fp32 temporaries the size of the whole tensor (measured: 214 MiB for SmolLM2's
    28 M-element bf16 embedding), and allocating even chunk-sized ones on every call lets glibc's growing mmap
    threshold keep hundreds of MiB resident (measured 404 MiB for a TeZO pass in bf16); the reused buffer needs
    4 MiB per device."""
    work = _work(p.device)
    residual = _residual_of(p)
    flat = [p.view(-1), *(o.reshape(-1) for o in others)]
    for a in range(0, flat[0].numel(), MIXED_CHUNK):
        chunks = [t[a:a + MIXED_CHUNK] for t in flat]
        w = work[:chunks[0].numel()]
        if residual is not None:
            lo = residual[a:a + MIXED_CHUNK]
            _join(w, chunks[0], lo)
            op(w, *chunks[1:])
            _split(w, chunks[0], lo)
            continue
        w.copy_(chunks[0])
        op(w, *chunks[1:])
        if _SR:
            _round_stochastic_(chunks[0], w)
        else:
            chunks[0].copy_(w)


# -- exact bf16: bf16 weights plus the low 16 bits of their fp32 value -------------------------------------------
# In bf16 a perturb/restore cycle (+εz, −2εz, +εz) does not return θ: each pass rounds, and θ random-walks by
# 0.39 % RMS per cycle on SmolLM2 (3.8 % after 100, `python bench/low_precision.py`). Keeping beside each bf16 weight
# the 16 bits that fp32 has and bf16 lacks makes every pass exact fp32 arithmetic on the pair, while the forwards
# read the bf16 half: the run follows the fp32 trajectory at 2 extra bytes per weight. The bf16 half is the fp32
# value rounded to nearest (ties away from zero); the residual is the signed remainder of the bit patterns.
_RESIDUAL: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # storage pointer → (bf16 weight, int16 residual)
_JOIN: dict[torch.device, torch.Tensor] = {}


def keep_residual(p: torch.Tensor) -> torch.Tensor:
    """Register bf16 weight p for exact updates; returns its int16 residual (zeros: p is its own fp32 value)."""
    if p.dtype != torch.bfloat16 or not p.is_contiguous():
        raise ValueError("exact bf16 needs contiguous bfloat16 weights")
    residual = torch.zeros(p.shape, dtype=torch.int16, device=p.device)
    _RESIDUAL[p.untyped_storage().data_ptr()] = (p, residual)
    return residual


def drop_residuals() -> None:
    """Forget every registered residual (a new optimizer registers its own)."""
    _RESIDUAL.clear()


def _residual_of(p: torch.Tensor) -> torch.Tensor | None:
    """The flat residual slice of p (p itself or a contiguous view of a registered weight), or None."""
    if not _RESIDUAL or p.dtype != torch.bfloat16:
        return None
    entry = _RESIDUAL.get(p.untyped_storage().data_ptr())
    if entry is None:
        return None
    base, residual = entry
    offset = (p.data_ptr() - base.data_ptr()) // 2
    return residual.view(-1)[offset:offset + p.numel()]


def master_fp32(p: torch.Tensor) -> torch.Tensor:
    """The exact fp32 value of bf16 weight p (with its residual, if registered)."""
    residual = _residual_of(p)
    out = torch.empty(p.shape, dtype=torch.float32, device=p.device)
    if residual is None:
        return out.copy_(p)
    _join(out.view(-1), p.reshape(-1), residual)
    return out


def _join(w: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor) -> None:
    """w (fp32) ← the value whose bit pattern is (hi's 16 bits << 16) + lo."""
    bits, tmp = w.view(torch.int32), _join_tmp(w.device, w.numel())
    tmp.copy_(hi.view(torch.int16)).bitwise_left_shift_(16)
    bits.copy_(lo).add_(tmp)


def _split(w: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor) -> None:
    """hi ← w rounded to bf16 (half-up on the bit pattern), lo ← the remainder, in [−2^15, 2^15)."""
    bits, tmp = w.view(torch.int32), _join_tmp(w.device, w.numel())
    torch.add(bits, 0x8000, out=tmp).bitwise_right_shift_(16)
    hi.view(torch.int16).copy_(tmp)
    lo.copy_(bits.sub_(tmp.bitwise_left_shift_(16)))


def _join_tmp(device: torch.device, n: int) -> torch.Tensor:
    buf = _JOIN.get(device)
    if buf is None:
        buf = _JOIN[device] = torch.empty(MIXED_CHUNK, dtype=torch.int32, device=device)
    return buf[:n]


# -- stochastic rounding ----------------------------------------------------------------------------------------
# A ZO update η·g·z of ~1e-6 is far below half a bf16 ulp of most weights (2^-9 relative): rounding to nearest
# drops it. Rounding up with probability (x − lo)/(hi − lo) instead makes E[round(x)] = x, so updates survive in
# expectation. Random bits come from a third table, U (2^20 uniform 16-bit integers, 8 MiB, built on first use),
# read in windows at offsets hashed from (update seed, call, window), so a run stays reproducible.
_SR: list[int] = []  # [seed, calls] while a `stochastic_rounding` block is active
_UNIFORM: dict[torch.device, torch.Tensor] = {}


class stochastic_rounding:
    """Context: inside it, half-precision in-place updates made through `add_`, `addcdiv_` and `scale_` round
    stochastically, with bits drawn deterministically from `seed` (e.g. the step seed)."""

    def __init__(self, seed: int, enabled: bool = True):
        self.seed, self.enabled = seed, enabled

    def __enter__(self):
        if self.enabled:
            _SR[:] = [mix(self.seed, tag_id("sr")), 0]
        return self

    def __exit__(self, *exc):
        _SR.clear()


def _uniform_bits(device: torch.device, n: int) -> torch.Tensor:
    """n uniform integers in [0, 2^16) (int32) for the next rounding call: a window of the U table."""
    table = _UNIFORM.get(device)
    if table is None:
        idx = _scramble_(torch.arange(1 << SIGN_BITS), torch.empty(1 << SIGN_BITS, dtype=torch.int64), SIGN_BITS,
                         _TABLE_SEED ^ 0x5EED)
        bits = idx.bitwise_and_(0xFFFF).to(torch.int32)  # low 16 bits of a bijection of 20 bits: exactly uniform
        table = _UNIFORM[device] = torch.cat([bits, bits[:MIXED_CHUNK]]).to(device)
    _SR[1] += 1
    offset = splitmix64(_SR[0] ^ splitmix64(_SR[1])) & ((1 << SIGN_BITS) - 1)
    return table[offset:offset + n]


def _round_stochastic_(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst (bf16/fp16) ← src (fp32, overwritten) rounded up or down with probabilities that make it unbiased."""
    u = _uniform_bits(src.device, src.numel())
    if dst.dtype == torch.bfloat16:
        # bf16 is the top 16 bits of fp32: add uniform bits below them, then truncate (exact at every binade)
        bits = src.view(torch.int32)
        bits.add_(u).bitwise_and_(-65536)
        dst.copy_(src)
        return
    near = src.to(dst.dtype)  # fp16: the nearest value and its neighbour on src's side
    side = torch.where(src > near.float(), torch.tensor(float("inf"), dtype=dst.dtype, device=dst.device),
                       torch.tensor(float("-inf"), dtype=dst.dtype, device=dst.device))
    other = torch.nextafter(near, side)
    gap = (other.float() - near.float()).abs_()
    prob = (src - near.float()).abs_().div_(gap.clamp_min_(1e-45))
    dst.copy_(torch.where(u.float().add_(0.5).div_(65536.0) < prob, other, near))


def add_(p: torch.Tensor, other: torch.Tensor, alpha: float = 1.0) -> None:
    """p ← p + alpha·other in place, without whole-tensor temporaries for mixed dtypes."""
    if _mixed(p, other):
        _mixed_apply(p, lambda w, o: w.add_(o, alpha=alpha), other)
    else:
        p.add_(other, alpha=alpha)


def addcdiv_(p: torch.Tensor, num: torch.Tensor, den: torch.Tensor, value: float) -> None:
    """p ← p + value·num/den in place, without whole-tensor temporaries for mixed dtypes."""
    if _mixed(p, num, den):
        _mixed_apply(p, lambda w, n, d: w.addcdiv_(n, d, value=value), num, den)
    else:
        p.addcdiv_(num, den, value=value)


def scale_(p: torch.Tensor, c: float) -> None:
    """p ← c·p in place (weight decay); rounds stochastically inside `stochastic_rounding` for bf16/fp16 p."""
    if c == 1.0:
        return
    if _chunked(p):
        _mixed_apply(p, lambda w: w.mul_(c))
    else:
        p.mul_(c)


NOISE_KINDS = ("table", "randn", "philox")
TABLE_BITS = 23   # Gaussian quantiles in the table: 2^23 (32 MiB in fp32)
SIGN_BITS = 20    # random signs: 2^20
WINDOW_BITS = 20  # elements per window, each with its own pair of offsets
WINDOW = 1 << WINDOW_BITS
TABLE_MIN = 1 << 16  # smaller tensors draw with torch.randn: exact, as cheap, and no table is built for them
_TABLE_SEED = 0x5A0F7  # fixed: the table is a constant of zoft, not of the run
_TABLES: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _scramble_(x: torch.Tensor, tmp: torch.Tensor, bits: int, key: int) -> torch.Tensor:
    """A fixed bijection of [0, 2^bits), in place on int64 `x` (`tmp`: a buffer like it): add a key, then odd
    multiplies and xor-shifts, each invertible mod 2^bits; products stay below 2^55, so int64 never overflows."""
    mask = (1 << bits) - 1
    x.add_(key).bitwise_and_(mask)
    for mult, shift in ((0x2C1B3C6D, 13), (0x297A2D39, 11), (0x5BD1E995, 12), (1, bits // 2)):
        x.bitwise_xor_(torch.bitwise_right_shift(x, shift, out=tmp)).mul_(mult).bitwise_and_(mask)
    return x


def _build_table(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU tables (G, S) in `dtype`, each padded with its first WINDOW entries so a window never wraps.

    G[k] = Φ⁻¹((π(k) + ½)/2^23) for a fixed scrambling bijection π. It is built in blocks through a few reused
    2 MiB buffers: a randperm would hold 64-128 MiB of indices, and fresh per-block temporaries let glibc keep
    ~100 MiB resident after the build (measured)."""
    n, block = 1 << TABLE_BITS, 1 << 18
    g = torch.empty(n + WINDOW, dtype=dtype)
    idx, tmp = torch.empty(block, dtype=torch.int64), torch.empty(block, dtype=torch.int64)
    q, r = torch.empty(block, dtype=torch.float64), torch.empty(block, dtype=torch.float64)
    tiny, half = torch.empty(block, dtype=torch.bool), torch.empty(block, dtype=torch.bfloat16)
    for a in range(0, n, block):
        _scramble_(torch.arange(a, a + block, out=idx), tmp, TABLE_BITS, _TABLE_SEED)
        torch.special.ndtri(q.copy_(idx).add_(0.5).div_(n), out=q)
        # The same values must be exact in bf16 and fp16: round to bf16's 8-bit mantissa, and put the ~0.005 % of
        # values below fp16's smallest normal (2^-14) on the 2^-17 grid, which both formats hold exactly.
        torch.lt(torch.abs(q, out=r), 2.0 ** -14, out=tiny)
        torch.where(tiny, torch.mul(q, 2.0 ** 17, out=r).round_().div_(2.0 ** 17), q, out=q)
        g[a:a + block].copy_(half.copy_(q))
    g[n:] = g[:WINDOW]
    s = torch.empty((1 << SIGN_BITS) + WINDOW, dtype=dtype)
    for a in range(0, 1 << SIGN_BITS, block):  # the low bit of another bijection: exactly balanced signs
        _scramble_(torch.arange(a, a + block, out=idx), tmp, SIGN_BITS, _TABLE_SEED ^ 0x1234)
        s[a:a + block].copy_(idx.bitwise_and_(1).mul_(-2).add_(1))
    s[1 << SIGN_BITS:] = s[:WINDOW]
    return g, s


def noise_table(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The (G, S) tables on `device` in `dtype`, built once per process and shared by every engine."""
    device = torch.device(device)
    key = (device, dtype)
    if key not in _TABLES:
        _TABLES[key] = tuple(t.to(device) for t in _build_table(dtype))
    return _TABLES[key]


def table_bytes(dtype: torch.dtype) -> int:
    """Memory of one (device, dtype) copy of the noise table."""
    return ((1 << TABLE_BITS) + (1 << SIGN_BITS) + 2 * WINDOW) * torch.empty(0, dtype=dtype).element_size()


def _table_dtype(p: torch.Tensor) -> torch.dtype:
    """Tables in the weights' dtype, so a pass is one same-dtype `addcmul_`; fp32 for exact-bf16 weights, whose
    passes are fp32 arithmetic."""
    if not p.is_floating_point() or _residual_of(p) is not None:
        return torch.float32
    return p.dtype


def _windows(numel: int, seed: int) -> Iterator[tuple[int, int, int, int]]:
    """(start, stop, offset into G, offset into S) of each window of a tensor whose tensor seed is `seed`."""
    for w, start in enumerate(range(0, numel, WINDOW)):
        h = splitmix64(seed ^ splitmix64(w))
        yield start, min(start + WINDOW, numel), h & ((1 << TABLE_BITS) - 1), (h >> 40) & ((1 << SIGN_BITS) - 1)


class PerturbationEngine:
    """Regenerates seeded Gaussian directions per tensor and sweeps them over the parameters in place.

    Args:
        params: the trainable tensors θ_1..θ_K in their fixed order; the position in this list is the tensor
            index i that enters the seed.
        noise: "table" (seeded windows of the noise table, the default), "philox" (the fused Triton kernel) or
            "randn" (`torch.randn`, exact N(0, I)).

    Counters `passes` (full sweeps over the parameters) and `regenerations` (z_i draws) let tests and
    benchmarks check the cost of an algorithm (ALGORITHMS.md §1.10 T6).
    """

    def __init__(self, params: Sequence[torch.Tensor], noise: str = "table"):
        self.params = list(params)
        if not self.params:
            raise ValueError("no trainable parameters to perturb")
        if noise not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {', '.join(NOISE_KINDS)}, got {noise!r}")
        if noise == "philox":
            from zoft import kernels

            for p in self.params:
                if p.device.type != "meta" and not kernels.available(p.device):  # meta: memory estimates
                    raise ValueError(f"noise 'philox' cannot run on {p.device}: {kernels.unavailable_reason()}")
        self.kind = noise
        self._generators: dict[torch.device, torch.Generator] = {}
        self._buffers: dict[torch.device, torch.Tensor] = {}
        self._scratch: dict[tuple[torch.device, int], torch.Tensor] = {}
        self.passes = 0
        self.regenerations = 0

    def _grown(self, store: dict, key, numel: int, device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """An fp32 buffer of at least `numel` elements, grown on demand (the smaller one is freed first, so growth
        never holds two): an algorithm that only draws dense z for small tensors (TeZO's 1-D ones) never pays
        for a buffer the size of the largest matrix."""
        buf = store.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            store.pop(key, None)
            buf = store[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf

    def work(self, key: str, numel: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A reusable buffer of at least `numel` elements, by name (e.g. TeZO's row blocks): reusing it keeps
        allocator churn, and the memory glibc then keeps resident, out of every pass."""
        return self._grown(self._scratch, (device, key), numel, device, dtype)

    def _buffer(self, device: torch.device, numel: int) -> torch.Tensor:
        # One fp32 buffer per device for z, as large as the largest tensor drawn there: the transient of a pass.
        return self._grown(self._buffers, device, numel, device)

    def scratch(self, index: int, slot: int = 0) -> torch.Tensor:
        """An fp32 work buffer shaped like tensor `index` (slot 0, 1, ...: independent buffers per device).

        Algorithms with per-element state (HiZOO's √H, HiZOO-L's rebuilt H, ZO-Adam's denominator) compute into
        these instead of allocating a temporary per tensor per pass; each slot grows to the largest tensor it
        serves.
        """
        p = self.params[index]
        buf = self._grown(self._scratch, (p.device, slot), p.numel(), p.device)
        return buf[: p.numel()].view(p.shape)

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            self._generators[device] = gen
        return gen

    def noise(self, index: int, seed: int, probe: int = 0, tag: str = "z") -> torch.Tensor:
        """z for tensor `index`: fp32, shaped like the parameter, on its device.

        The returned tensor is a view of the shared buffer and is overwritten by the next call; copy it to keep it.
        """
        p = self.params[index]
        z = self._buffer(p.device, p.numel())[: p.numel()]
        ts = tensor_seed(seed, index, probe, tag)
        if self.kind == "philox":
            from zoft import kernels

            kernels.launch([z], [ts], write_z=True)
        elif self._tabled(p):
            g, s = noise_table(p.device, _table_dtype(p))
            for a, b, og, os_ in _windows(p.numel(), ts):
                torch.mul(g[og:og + b - a], s[os_:os_ + b - a], out=z[a:b])  # exact: ±1 times a table value
        else:
            gen = self._generator(p.device)
            gen.manual_seed(ts)
            z.normal_(generator=gen)  # drawn in fp32 whatever p's dtype (§1.2), so z never depends on the dtype
        self.regenerations += 1
        return z.view(p.shape)

    @torch.no_grad()
    def axpy_(self, index: int, seed: int, alpha: float, probe: int = 0, tag: str = "z") -> None:
        """θ_i ← θ_i + α·z_i in place. With the table this is one `addcmul_` per window on the parameter's own
        dtype, rounding once (θ + α·g·s is formed in fp32 by torch's half-precision kernels): no z is written."""
        p = self.params[index]
        if self._fused_kernel(p):
            from zoft import kernels

            kernels.launch([p], [tensor_seed(seed, index, probe, tag)], [alpha])
            self.regenerations += 1
            return
        if not (self._tabled(p) and p.is_contiguous()):
            add_(p, self.noise(index, seed, probe, tag), alpha)
            return
        g, s = noise_table(p.device, _table_dtype(p))
        flat = p.view(-1)
        chunked = _chunked(p)
        for a, b, og, os_ in _windows(p.numel(), tensor_seed(seed, index, probe, tag)):
            gw, sw = g[og:og + b - a], s[os_:os_ + b - a]
            if not chunked:
                flat[a:b].addcmul_(gw, sw, value=alpha)
            elif g.dtype == torch.float32:  # exact bf16: fp32's own addcmul_ on the joined value, as in fp32 runs
                _mixed_apply(flat[a:b], lambda w, gw_, sw_: w.addcmul_(gw_, sw_, value=alpha), gw, sw)
            else:  # stochastic rounding: the z window in fp32, then the rounded add
                add_(flat[a:b], torch.mul(gw, sw, out=self.work("window", b - a, p.device)[:b - a]), alpha)
        self.regenerations += 1

    def draw(self, shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
        """A new fp32 N(0, 1) tensor from the device's dedicated generator seeded with `seed` (for small factors
        such as TeZO's U, V and τ; the global RNGs are never touched)."""
        gen = self._generator(torch.device(device))
        gen.manual_seed(seed)
        return torch.randn(shape, generator=gen, dtype=torch.float32, device=device)

    def count_pass(self) -> None:
        """Record one pass for algorithms that sweep the parameters themselves (low-rank perturbations)."""
        self.passes += 1

    def sweep(self, seed: int, probe: int = 0, tag: str = "z") -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """One pass: yields (i, θ_i, z_i) for every tensor; the caller applies its in-place update."""
        self.passes += 1
        for i, p in enumerate(self.params):
            yield i, p, self.noise(i, seed, probe, tag)

    @torch.no_grad()
    def add_(self, seed: int, alpha: float, probe: int = 0) -> None:
        """θ ← θ + α·z in place (one pass)."""
        self.axpy_all_(seed, [alpha] * len(self.params), probe=probe)

    @torch.no_grad()
    def axpy_all_(self, seed: int, coefs: Sequence[float], decays: Sequence[float] | None = None,
                  probe: int = 0, hessians: Sequence[torch.Tensor] | None = None) -> None:
        """θ_i ← decay_i·θ_i + coef_i·z_i for every tensor (one pass): one kernel launch per (device, dtype)
        with the philox generator, fused windows with the table. `hessians` (philox only, see `fused_all`):
        per-tensor H, read in the same pass to step by coef_i·z_i/√H_i (HiZOO)."""
        self.passes += 1
        decays = [1.0] * len(self.params) if decays is None else decays
        if self.fused_all():
            from zoft import kernels

            kernels.launch(self.params, [tensor_seed(seed, i, probe) for i in range(len(self.params))], coefs, decays,
                           hessians)
            self.regenerations += len(self.params)
            return
        if hessians is not None:
            raise ValueError("an H-scaled pass runs only in the fused philox kernel; check fused_all() first")
        for i in range(len(self.params)):
            self.axpy_one_(i, seed, coefs[i], decays[i], probe)

    @torch.no_grad()
    def axpy_one_(self, index: int, seed: int, coef: float, decay: float = 1.0, probe: int = 0,
                  hessian: torch.Tensor | None = None) -> None:
        """θ_i ← decay·θ_i + coef·z_i (÷√H_i with `hessian`, philox only) for one tensor, the same arithmetic as
        its share of `axpy_all_` (what a pass over every tensor does to this one), so that a caller visiting the
        tensors one at a time (CPU offload, `zoft.offload`) gets the same bits."""
        p = self.params[index]
        if self._fused_kernel(p):
            from zoft import kernels

            kernels.launch([p], [tensor_seed(seed, index, probe)], [coef], [decay],
                           None if hessian is None else [hessian])
            self.regenerations += 1
            return
        if hessian is not None:
            raise ValueError("an H-scaled pass runs only in the fused philox kernel; check fused_all() first")
        scale_(p, decay)
        self.axpy_(index, seed, coef, probe)

    def fused_all(self) -> bool:
        """Whether a pass over every tensor is one philox kernel launch per (device, dtype) group."""
        return all(self._fused_kernel(p) for p in self.params)

    def _fused_kernel(self, p: torch.Tensor) -> bool:
        """Whether the philox kernel applies p's update itself (not when p's updates go through the fp32 chunk
        path: stochastic rounding, exact bf16)."""
        return self.kind == "philox" and p.is_contiguous() and not _chunked(p)

    def max_buffer_bytes(self) -> int:
        """One fp32 buffer the size of the largest tensor per device: the z buffer of `noise`, or a scratch slot."""
        per_device: dict[torch.device, int] = {}
        for p in self.params:
            per_device[p.device] = max(per_device.get(p.device, 0), p.numel())
        return 4 * sum(per_device.values())

    def _tabled(self, p: torch.Tensor) -> bool:
        return self.kind == "table" and p.numel() >= TABLE_MIN

    def pass_bytes(self, dense_z: bool = True, indices: Sequence[int] | None = None) -> int:
        """Transient memory of a pass over tensors `indices` (default all): the noise tables of each (device,
        dtype) that a table-drawn tensor uses, plus the fp32 z buffer, sized by the largest tensor that
        materialises z (all of them with `dense_z`; otherwise those that `axpy_` cannot fuse)."""
        params = [self.params[i] for i in (range(len(self.params)) if indices is None else indices)]
        tabled = [p for p in params if self._tabled(p)]
        tables = sum(table_bytes(dt) for _, dt in {(p.device, _table_dtype(p)) for p in tabled})
        buffered = params if dense_z else [p for p in params if not (self._tabled(p) and p.is_contiguous())
                                                          and not self._fused_kernel(p)]
        per_device: dict[torch.device, int] = {}
        for p in buffered:
            per_device[p.device] = max(per_device.get(p.device, 0), p.numel())
        return tables + 4 * sum(per_device.values())
