"""The perturbation engine shared by every ZO algorithm.

z is never stored. For step seed s_t, probe j and tensor index i, z_i is regenerated on demand from the integer
seed mix(s_t, j, i, tag) (`zoft.perturb.seeds`) and applied in place on the parameter's own storage and dtype.

Three generators (`--noise`):

* ``table`` (default): windows of a fixed table of Gaussian quantiles with random signs, at seeded offsets
  (`zoft.perturb.table`): a pass is one fused `addcmul_` per window, a memory sweep.
* ``philox`` (CUDA with Triton): z made inside one fused kernel from (tensor seed, element index) and applied in
  the same read+write of θ, many tensors per launch: no table, no z buffer (`zoft.kernels`).
* ``randn``: z_i = `torch.randn` from a dedicated `torch.Generator` seeded with the tensor seed, into one reusable
  fp32 buffer the size of the largest trainable tensor: exactly N(0, I), the reference, 10-20x slower on CPU.

The streams are reproducible per device type; CPU and CUDA generators differ, so the ``randn`` stream differs
between them (the table is built on the CPU and is the same everywhere). The global torch and numpy RNGs are
never touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager

import torch

from zoft.perturb.inplace import InPlace
from zoft.perturb.seeds import mix, tensor_seed
from zoft.perturb.table import TABLE_MIN, noise_table, table_bytes, windows

NOISE_KINDS = ("table", "randn", "philox")


class PerturbationEngine:
    """Regenerates seeded Gaussian directions per tensor and sweeps them over the parameters in place.

    Args:
        params: the trainable tensors θ_1..θ_K in their fixed order; the position in this list is the tensor
            index i that enters the seed.
        noise: "table" (seeded windows of the noise table, the default), "philox" (the fused Triton kernel) or
            "randn" (`torch.randn`, exact N(0, I)).

    Counters `passes` (full sweeps over the parameters) and `regenerations` (z_i draws) let tests and
    benchmarks check the cost of an algorithm (docs/algorithms.md, "Cost accounting").
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
        #: in-place arithmetic for every dtype, with this engine's rounding switch and exact-bf16 residuals
        self.ops = InPlace()

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
            g, s = noise_table(p.device, self._table_dtype(p))
            for a, b, og, os_ in windows(p.numel(), ts):
                torch.mul(g[og:og + b - a], s[os_:os_ + b - a], out=z[a:b])  # exact: ±1 times a table value
        else:
            gen = self._generator(p.device)
            gen.manual_seed(ts)
            z.normal_(generator=gen)  # drawn in fp32 whatever p's dtype, so z never depends on the dtype
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
            self.ops.add_(p, self.noise(index, seed, probe, tag), alpha)
            return
        g, s = noise_table(p.device, self._table_dtype(p))
        flat = p.view(-1)
        chunked = self.ops.chunked(p)
        for a, b, og, os_ in windows(p.numel(), tensor_seed(seed, index, probe, tag)):
            gw, sw = g[og:og + b - a], s[os_:os_ + b - a]
            if not chunked:
                flat[a:b].addcmul_(gw, sw, value=alpha)
            elif g.dtype == torch.float32:  # exact bf16: fp32's own addcmul_ on the joined value, as in fp32 runs
                self.ops.apply(flat[a:b], lambda w, gw_, sw_: w.addcmul_(gw_, sw_, value=alpha), gw, sw)
            else:  # stochastic rounding: the z window in fp32, then the rounded add
                self.ops.add_(flat[a:b], torch.mul(gw, sw, out=self.work("window", b - a, p.device)[:b - a]), alpha)
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
        self.ops.scale_(p, decay)
        self.axpy_(index, seed, coef, probe)

    def fused_all(self) -> bool:
        """Whether a pass over every tensor is one philox kernel launch per (device, dtype) group."""
        return all(self._fused_kernel(p) for p in self.params)

    def _fused_kernel(self, p: torch.Tensor) -> bool:
        """Whether the philox kernel applies p's update itself (not when p's updates go through the fp32 chunk
        path: stochastic rounding, exact bf16)."""
        return self.kind == "philox" and p.is_contiguous() and not self.ops.chunked(p)

    def max_buffer_bytes(self) -> int:
        """One fp32 buffer the size of the largest tensor per device: the z buffer of `noise`, or a scratch slot."""
        per_device: dict[torch.device, int] = {}
        for p in self.params:
            per_device[p.device] = max(per_device.get(p.device, 0), p.numel())
        return 4 * sum(per_device.values())

    def rounding(self, seed: int, enabled: bool = True) -> AbstractContextManager[None]:
        """Context: half-precision updates inside it round stochastically, with bits drawn from `seed`."""
        return self.ops.stochastic(seed, enabled)

    def tensor_rounding(self, seed: int, index: int, enabled: bool = True) -> AbstractContextManager[None]:
        """Stochastic rounding for one tensor's update, its bits drawn from a seed of the tensor's own, so the result
        does not depend on the order the tensors are visited in (offloaded runs and their replays)."""
        return self.ops.stochastic(mix(seed, index), enabled)

    def _table_dtype(self, p: torch.Tensor) -> torch.dtype:
        """Tables in the weights' dtype, so a pass is one same-dtype `addcmul_`; fp32 for exact-bf16 weights, whose
        passes are fp32 arithmetic."""
        if not p.is_floating_point() or self.ops.residuals.of(p) is not None:
            return torch.float32
        return p.dtype

    def _tabled(self, p: torch.Tensor) -> bool:
        return self.kind == "table" and p.numel() >= TABLE_MIN

    def pass_bytes(self, dense_z: bool = True, indices: Sequence[int] | None = None) -> int:
        """Transient memory of a pass over tensors `indices` (default all): the noise tables of each (device,
        dtype) that a table-drawn tensor uses, plus the fp32 z buffer, sized by the largest tensor that
        materialises z (all of them with `dense_z`; otherwise those that `axpy_` cannot fuse)."""
        params = [self.params[i] for i in (range(len(self.params)) if indices is None else indices)]
        tabled = [p for p in params if self._tabled(p)]
        tables = sum(table_bytes(dt) for _, dt in {(p.device, self._table_dtype(p)) for p in tabled})
        buffered = params if dense_z else [p for p in params if not (self._tabled(p) and p.is_contiguous())
                                                          and not self._fused_kernel(p)]
        per_device: dict[torch.device, int] = {}
        for p in buffered:
            per_device[p.device] = max(per_device.get(p.device, 0), p.numel())
        return tables + 4 * sum(per_device.values())
