"""Triton kernel for the `philox` generator: Gaussian noise made inside the kernel, applied in place, many tensors
per launch.

One launch covers every tensor of a (device, dtype) group. The host builds a block table (tensor j, first element)
so each program handles BLOCK elements of one tensor; per-tensor seed, coefficient and decay are read from small
device arrays, and tensors are addressed through an array of their data pointers. Each program computes

    θ[k] ← decay_j·θ[k] + coef_j·z[k]            (HiZOO: coef_j·z[k]/√H[k], H read in the same pass)
    z[k] = Philox-4x32 Box-Muller of (seed_j, k)  (`tl.randn`)

in fp32 and writes θ back in its own dtype (fp32, bf16 or fp16): one read and one write of θ, no z tensor, so
a MeZO step's peak memory is the inference peak. With `write_z`, the same stream is written to fp32 buffers instead
(for algorithms that need z itself, such as ZO-Adam's moments). TeZO's rank-r perturbations are matrix products
(`addmm_` of seeded factors), not elementwise noise, so they keep that path; its 1-D tensors draw here.

The stream is Triton's Philox, not the noise table's: runs with `--noise philox` differ from `--noise table` ones
and are reproducible on CUDA. Without a GPU the kernel runs under Triton's interpreter (`TRITON_INTERPRET=1`,
numpy), which the tests use; it is far too slow for training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is missing
    triton = None

BLOCK = 1024


def available(device: torch.device) -> bool:
    """Whether the kernel can run for tensors on `device`: Triton on CUDA, or its interpreter anywhere."""
    if triton is None:
        return False
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason() -> str:
    if triton is None:
        return "Triton is not installed (pip install triton)"
    return "it needs a CUDA device (or TRITON_INTERPRET=1, for tests only)"


if triton is not None:
    @triton.jit
    def _philox_axpy(addr_ptr, h_addr_ptr, block_tensor_ptr, block_start_ptr, numel_ptr, seed_ptr, coef_ptr,
                     decay_ptr, BLOCK: tl.constexpr, DTYPE: tl.constexpr, HAS_H: tl.constexpr,
                     WRITE_Z: tl.constexpr):
        pid = tl.program_id(0)
        j = tl.load(block_tensor_ptr + pid)
        offs = tl.load(block_start_ptr + pid) + tl.arange(0, BLOCK)
        mask = offs < tl.load(numel_ptr + j)
        z = tl.randn(tl.load(seed_ptr + j), offs)
        if WRITE_Z:
            out = tl.load(addr_ptr + j).to(tl.pointer_type(tl.float32))
            tl.store(out + offs, z, mask=mask)
        else:
            p = tl.load(addr_ptr + j).to(tl.pointer_type(DTYPE))
            step = tl.load(coef_ptr + j) * z
            if HAS_H:
                h = tl.load(h_addr_ptr + j).to(tl.pointer_type(tl.float32))
                # IEEE-rounded root and division, as torch.sqrt and addcdiv_ on CUDA (Triton's sqrt and `/` may
                # be approximate): the probe and the eager restore must divide by the same number
                step = tl.div_rn(step, tl.sqrt_rn(tl.load(h + offs, mask=mask, other=1.0)))
            x = tl.load(p + offs, mask=mask).to(tl.float32)
            tl.store(p + offs, (tl.load(decay_ptr + j) * x + step).to(DTYPE), mask=mask)

    _TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def launch(tensors: Sequence[torch.Tensor], seeds: Sequence[int], coefs: Sequence[float] | None = None,
           decays: Sequence[float] | None = None, hessians: Sequence[torch.Tensor] | None = None,
           write_z: bool = False) -> None:
    """θ_j ← decay_j·θ_j + coef_j·z_j (÷√H_j) for every tensor, in one launch per (device, dtype) group; with
    `write_z`, tensors are fp32 buffers that receive z_j. Tensors must be contiguous."""
    n = len(tensors)
    coefs = [1.0] * n if coefs is None else list(coefs)
    decays = [1.0] * n if decays is None else list(decays)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for j, t in enumerate(tensors):
        if not t.is_contiguous():
            raise ValueError("the philox kernel needs contiguous tensors")
        groups.setdefault((t.device, t.dtype), []).append(j)
    for (device, dtype), idx in groups.items():
        block_tensor, block_start = [], []
        for k, j in enumerate(idx):
            starts = range(0, tensors[j].numel(), BLOCK)
            block_tensor += [k] * len(starts)
            block_start += list(starts)
        if not block_tensor:
            continue

        def arr(values, dt):
            return torch.tensor(values, dtype=dt, device=device)

        h_addr = arr([hessians[j].data_ptr() for j in idx], torch.int64) if hessians is not None else arr([0],
                                                                                                          torch.int64)
        _philox_axpy[(len(block_tensor),)](
            arr([tensors[j].data_ptr() for j in idx], torch.int64), h_addr, arr(block_tensor, torch.int32),
            arr(block_start, torch.int32), arr([tensors[j].numel() for j in idx], torch.int64),
            arr([seeds[j] for j in idx], torch.int64), arr([coefs[j] for j in idx], torch.float32),
            arr([decays[j] for j in idx], torch.float32), BLOCK=BLOCK, DTYPE=_TL_DTYPES[dtype],
            HAS_H=hessians is not None, WRITE_Z=write_z)
