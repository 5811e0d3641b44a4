"""The perturbation engine shared by every ZO algorithm.

z is never stored. For step seed s_t, probe j and tensor index i, z_i is regenerated on demand from the integer
seed mix(s_t, j, i, tag) with a dedicated `torch.Generator` on the tensor's device (ALGORITHMS.md §1.2), into one
reusable fp32 buffer the size of the largest trainable tensor on that device. Each pass over the parameters
regenerates z tensor by tensor and applies it in place on the parameter's own storage and dtype, so the only
extra memory a pass needs is that single buffer (e.g. 113 MB for SmolLM2-135M's 49152×576 embedding in fp32).

Seeds are pure functions of integers, never of a stateful global RNG: the global torch/numpy RNGs are never
touched, any step can be replayed from (run seed, step), and resuming needs only the step index.
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
    """Whether an in-place op on half-precision p takes fp32 operands (bf16/fp16 weights with fp32 noise or state),
    the case where torch promotes through whole-tensor fp32 temporaries."""
    return (p.dtype in (torch.bfloat16, torch.float16) and p.is_contiguous()
            and any(o.dtype == torch.float32 for o in others))


def _mixed_apply(p: torch.Tensor, op, *others: torch.Tensor) -> None:
    """Apply `op(work_fp32, *other_chunks)` to p through a reused fp32 chunk buffer: copy the chunk up, operate,
    copy back (rounding once, as torch's own promotion does). torch would instead allocate fp32 temporaries the
    size of the whole tensor (measured: 214 MiB for SmolLM2's 28 M-element bf16 embedding), and allocating even
    chunk-sized ones on every call lets glibc's growing mmap threshold keep hundreds of MiB resident (measured
    404 MiB for a TeZO pass in bf16); the reused buffer needs 4 MiB per device."""
    work = _work(p.device)
    flat = [p.view(-1), *(o.reshape(-1) for o in others)]
    for a in range(0, flat[0].numel(), MIXED_CHUNK):
        chunks = [t[a:a + MIXED_CHUNK] for t in flat]
        w = work[:chunks[0].numel()]
        w.copy_(chunks[0])
        op(w, *chunks[1:])
        chunks[0].copy_(w)


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


class PerturbationEngine:
    """Regenerates seeded Gaussian directions per tensor and sweeps them over the parameters in place.

    Args:
        params: the trainable tensors θ_1..θ_K in their fixed order; the position in this list is the tensor
            index i that enters the seed.

    Counters `passes` (full sweeps over the parameters) and `regenerations` (z_i draws) let tests and
    benchmarks check the cost of an algorithm (ALGORITHMS.md §1.10 T6).
    """

    def __init__(self, params: Sequence[torch.Tensor]):
        self.params = list(params)
        if not self.params:
            raise ValueError("no trainable parameters to perturb")
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
        z = self._buffer(p.device, p.numel())[: p.numel()].view(p.shape)
        gen = self._generator(p.device)
        gen.manual_seed(tensor_seed(seed, index, probe, tag))
        z.normal_(generator=gen)  # drawn in fp32 whatever p's dtype (§1.2), so z never depends on the dtype
        self.regenerations += 1
        return z

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
        for _, p, z in self.sweep(seed, probe):
            add_(p, z, alpha)

    def max_buffer_bytes(self) -> int:
        """Transient memory of a pass: one fp32 buffer the size of the largest tensor per device."""
        per_device: dict[torch.device, int] = {}
        for p in self.params:
            per_device[p.device] = max(per_device.get(p.device, 0), p.numel())
        return 4 * sum(per_device.values())
