"""TeZO, TeZO-m and TeZO-Adam: temporal low-rank ZO (Sun et al., arXiv 2501.19057).

TeZO views the perturbations of one m×n weight over T steps as an m×n×T tensor with a rank-r CP form. Each
2-D weight W_i gets factors U ∈ R^{m×r}, V ∈ R^{n×r} with N(0, 1) entries, drawn once from mix(run_seed, i, "U"/"V")
and fixed for the run; step t draws only r numbers τ_t ~ N(0, I_r) from the step seed:

    Z_t = s_r · U·diag(τ_t)·Vᵀ            s_r = 1/√r (zoft's default, E‖Z‖_F² = m·n like MeZO's z) or 1 (paper)
    κ_t = (L(θ + εZ_t) − L(θ − εZ_t)) / (2ε)

    TeZO       W ← W − η(κ_t·Z_t + λW)
    TeZO-m     m_t = β·m_{t−1} + (1−β)·κ_t·τ_t ∈ R^r ;  W ← W − η(s_r·U·diag(m_t)·Vᵀ + λW)
    TeZO-Adam  m_t as TeZO-m ;  v_t = β2·v_{t−1} + (1−β2)·κ_t²·τ_t⊙τ_t ∈ R^r            (separable 2nd moment)
               M̂ = s_r·U·diag(m_t/(1−β1^t))·Vᵀ ;  V̂ = s_r²·(U⊙U)·diag(v_t/(1−β2^t))·(V⊙V)ᵀ
               W ← W − η·M̂/(√V̂ + δ) − η·λ·W

Because U and V are fixed, the momentum of the dense estimates κ_t·Z_t stays in the CP form, so the moments are
r numbers per matrix instead of m·n (TeZO-m is *exactly* dense momentum of κ_t·Z_t; TeZO-Adam drops the cross
terms τ_k·τ_l of the squared CP sum, which is exact for r = 1). The separable second moment is zoft's reading
of the paper's description. Tensors that are not 2-D (biases, norms) use a plain Gaussian z and dense
state, as MeZO / ZO-SGD momentum / ZO-Adam would.

Consequence worth knowing: W_T − W_0 always lies in the r-dimensional span of {u_k v_kᵀ}, a fixed random subspace.

Cost: 2 forwards and 3 passes per step, like MeZO. A pass applies Z with one in-place `addmm_` per matrix
(2·m·n·r FLOPs) and draws r + (1-D sizes) random numbers instead of m·n: generating noise, the bottleneck of a
dense ZO step on CPU, nearly disappears.

Memory. Persistent: U and V, (m + n)·r numbers per matrix, cached on the device in fp32 (SmolLM2-135M, r = 32:
11.4 M numbers, 45 MB, 8.5 % of the weights; OPT-13B: about 120 M numbers, 0.9 %); they are regenerated from
their seeds, never checkpointed, and with tezo_factors="regenerate" not even kept: each pass draws them again.
Moments: r (TeZO-m) or 2r (TeZO-Adam) fp32 per matrix, plus dense fp32 state for the 1-D tensors.
Transient, per matrix: a min(m, n)×r product of a factor with the coefficients (the low-rank product is added by
`addmm_` straight into W's storage, so no m×n noise matrix ever exists for fp32 weights). bf16/fp16 weights are
widened, summed and rounded in row blocks of 1 MiB of fp32 (`zoft.algos.lowrank`). TeZO-Adam builds M̂ and V̂ in
row blocks of 16 MiB for fp32 weights (and under stochastic rounding or exact bf16), two blocks at a time; for
bf16/fp16 weights rounded to nearest it restores and steps each 4 MiB row block in one sweep (three blocks at
a time, 12 MiB), which saves a sweep over the weights and is bitwise the same. Nothing is the size of the
largest tensor except the engine's z buffer, which only 1-D tensors use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from zoft.algos.base import ZOOptimizer, state_dtype
from zoft.algos.lowrank import CHUNK_ELEMENTS, add_product, add_rows, block_rows, row_blocks
from zoft.algos.mezo import ADAM_OPTIONS, MOMENTUM, adam_dense_update, dense_adam_state
from zoft.algos.options import Option
from zoft.errors import ConfigError
from zoft.perturb import MIXED_CHUNK, mix, tag_id, tensor_seed

#: fp32 numbers per row block of TeZO-Adam's M̂ and V̂ (16 MiB): measured faster than cache-sized blocks, whose
#: per-block temporaries (U⊙U) and calls cost more than the cache saves
ADAM_BLOCK = 1 << 22
#: fp32 numbers per row block when TeZO-Adam restores and steps a bf16/fp16 weight in one sweep
FUSED_BLOCK = 1 << 20

OPTIONS = (
    Option("rank", int, 32, "Rank r of each matrix's perturbation (capped at min(m, n)).", low=1),
    Option("rank_mode", str, "fixed", "fixed (--rank for every matrix) or spectrum (per matrix: singular values "
           "≥ --rank-threshold·σ₁ of the pretrained weight, clipped to [--rank-min, --rank-max]; zoft's "
           "heuristic).", choices=("fixed", "spectrum")),
    Option("rank_threshold", float, 0.5, "Spectrum mode: relative singular-value threshold.", low=0, high=1,
           low_open=True),
    Option("rank_min", int, 4, "Spectrum mode: smallest rank.", low=1),
    Option("rank_max", int, 64, "Spectrum mode: per-layer rank cap.", low=1),
    Option("tezo_scale", str, "sqrt-r", "sqrt-r (Z scaled by 1/√r so E‖Z‖² matches MeZO and its lr/eps carry "
           "over) or none (the paper as written: r× the energy).", choices=("sqrt-r", "none")),
    Option("tezo_factors", str, "cache", "cache (keep the U, V factors on the device, (m+n)·r fp32 per matrix) or "
           "regenerate (draw them in every pass: no factor memory, a little more time); same trajectory.",
           choices=("cache", "regenerate"), trajectory=False),
)


def select_ranks(params: Sequence[torch.Tensor], rank: int, rank_mode: str = "fixed", threshold: float = 0.5,
                 rank_min: int = 4, rank_max: int = 64) -> list[int]:
    """Rank per tensor (0 for tensors that are not 2-D), capped at min(m, n).

    fixed:    r for every matrix (default 32).
    spectrum: zoft's heuristic, not the paper's rule (which was not available): r_i = the number of singular
              values of the pretrained W_i above threshold·σ_1, clipped to [rank_min, rank_max].
    """
    ranks = []
    for p in params:
        if p.ndim != 2:
            ranks.append(0)
            continue
        if rank_mode == "spectrum":
            sv = torch.linalg.svdvals(p.detach().float())
            r = min(max(int((sv >= threshold * sv[0]).sum()), rank_min), rank_max)
        else:
            r = rank
        ranks.append(max(1, min(r, *p.shape)))
    return ranks


class TeZO(ZOOptimizer):
    """TeZO-SGD: rank-r CP perturbations with fixed factors and per-step temporal coefficients.

    Options:
        rank: r per matrix (capped at min(m, n)); in spectrum mode see `select_ranks`.
        rank_mode: "fixed" or "spectrum".
        rank_threshold, rank_min, rank_max: spectrum mode's σ_k ≥ threshold·σ_1 rule and its clip range.
        tezo_scale: "sqrt-r" (s_r = 1/√r: MeZO's ε and LR grids carry over) or "none" (the paper as written).
        tezo_factors: "cache" (keep U, V on the device: (m+n)·r fp32 per matrix) or "regenerate" (draw them again
            in every pass: no persistent factor memory, (m+n)·r extra random numbers per matrix per pass).
            The trajectory is bitwise the same either way.
    """

    summary = ("temporal low-rank ZO: rank-r perturbations from fixed factors, 2 forwards/step, no m×n noise; "
               "cheapest passes, for big models")
    paper = "Sun et al. 2025, arXiv 2501.19057"
    state_desc = "(m+n)·r cached factors per matrix (not checkpointed)"
    options = OPTIONS

    @classmethod
    def check_options(cls, options: dict) -> None:
        if options["rank_min"] > options["rank_max"]:
            raise ConfigError(f"--rank-min {options['rank_min']} exceeds --rank-max {options['rank_max']}")

    def init_state(self) -> None:
        o = self.settings
        self.rank_mode, self.tezo_scale, self.cache_factors = o["rank_mode"], o["tezo_scale"], \
            o["tezo_factors"] == "cache"
        self.ranks = select_ranks(self.tensors, o["rank"], o["rank_mode"], o["rank_threshold"], o["rank_min"],
                                  o["rank_max"])
        self._factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._init_moments()

    # -- state --------------------------------------------------------------------------------------------
    def _init_moments(self) -> None:
        """Moments (none for TeZO-SGD)."""

    def _extra_state(self) -> dict:
        return {"ranks": list(self.ranks)}

    def _load_extra_state(self, extra: dict) -> None:
        # spectrum ranks come from the *pretrained* weights; a resumed run must keep them, not recompute them
        ranks = extra.get("ranks")
        if ranks is not None and list(ranks) != self.ranks:
            self.ranks = [int(r) for r in ranks]
            self._factors.clear()

    def factor_bytes(self) -> int:
        """Bytes of the cached U and V factors ((m + n)·r per matrix; 0 when they are regenerated per pass)."""
        if not self.cache_factors:
            return 0
        return sum(4 * (p.shape[0] + p.shape[1]) * r * (2 if p.dtype == torch.float64 else 1)
                   for p, r in zip(self.tensors, self.ranks) if r)

    def state_bytes(self) -> int:
        return super().state_bytes() + self.factor_bytes()

    def state_breakdown(self) -> dict[str, int]:
        moments = super().state_bytes()
        factors = self.factor_bytes()
        return {**({"factors": factors} if factors else {}), **({"moments": moments} if moments else {})}

    def transient_bytes(self) -> int:
        """Temporaries of a step: the z buffer (and Adam's scratch) sized by the largest *non-matrix* tensor, the
        scaled factor of one matrix (min(m, n)·r), and for low-precision weights the reused fp32 row block
        (≤ 16 MiB) and the 4 MiB mixed-dtype chunk buffer."""
        dense_idx = [i for i, r in enumerate(self.ranks) if not r]
        dense = max((self.tensors[i].numel() for i in dense_idx), default=0)
        matrices = [(p, r) for p, r in zip(self.tensors, self.ranks) if r]
        factor = max((min(p.shape) * r * 4 for p, r in matrices), default=0)
        blocks = 0
        if any(p.dtype not in (torch.float32, torch.float64) for p, _ in matrices):
            blocks = 4 * max(block_rows(p.shape[0], CHUNK_ELEMENTS, p.shape[1]) * p.shape[1]
                             for p, _ in matrices) + 4 * MIXED_CHUNK
        z = self.engine.pass_bytes(True, dense_idx) if dense_idx else 0
        return z + 4 * dense * self.scratch_slots + factor + blocks

    def moment_shape(self, index: int) -> tuple[int, ...]:
        """Moments live in r-space for matrices, densely for the other tensors."""
        return (self.ranks[index],) if self.ranks[index] else tuple(self.tensors[index].shape)

    # -- the low-rank direction ---------------------------------------------------------------------------
    def scale(self, index: int) -> float:
        """s_r of tensor `index`."""
        return 1.0 / math.sqrt(self.ranks[index]) if self.tezo_scale == "sqrt-r" else 1.0

    def factors(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, V) of matrix `index`, drawn from mix(run_seed, i, "U"/"V"): cached after the first use, or drawn
        again on every call with tezo_factors="regenerate" (same seeds, so bitwise the same factors)."""
        cached = self._factors.get(index)
        if cached is None:
            p, r = self.tensors[index], self.ranks[index]
            m, n = p.shape
            u = self.engine.draw((m, r), mix(self.seed, index, tag_id("U")), p.device)
            v = self.engine.draw((n, r), mix(self.seed, index, tag_id("V")), p.device)
            dtype = state_dtype(p)
            cached = (u.to(dtype), v.to(dtype))
            if self.cache_factors:
                self._factors[index] = cached
        return cached

    def tau(self, index: int, seed: int, direction: int = 0) -> torch.Tensor:
        """τ_t of matrix `index` (r numbers), regenerated from s_{t,j,i,"tau"} in every pass."""
        p = self.tensors[index]
        return self.engine.draw((self.ranks[index],), tensor_seed(seed, index, direction, "tau"), p.device).to(
            state_dtype(p))

    def direction(self, index: int, seed: int) -> torch.Tensor:
        """Z_t of matrix `index` as a dense m×n tensor (for tests and analysis; the passes never build it)."""
        u, v = self.factors(index)
        return (u * (self.scale(index) * self.tau(index, seed))) @ v.t()

    def add_lowrank(self, index: int, coef: torch.Tensor, beta: float = 1.0,
                    factors: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """W ← β·W + U·diag(coef)·Vᵀ in place on W's storage, never holding an m×n temporary for fp32 weights.
        `factors`: (U, V) when the caller already holds them (so regenerated factors are drawn once per pass)."""
        p = self.tensors[index]
        u, v = factors or self.factors(index)
        # fp32: scale the smaller factor, so the only temporary is min(m, n)×r; half precision: the row blocks
        # read V scaled
        if p.dtype == u.dtype and p.shape[0] <= p.shape[1]:
            add_product(self, index, u * coef, v, beta)
        else:
            add_product(self, index, u, v * coef, beta)

    @torch.no_grad()
    def perturb_tensor(self, index: int, seed: int, scale: float, direction: int = 0) -> None:
        """θ_i ← θ_i + scale·Z_t,i: low-rank for a matrix, dense z for another tensor."""
        if self.ranks[index]:
            self.add_lowrank(index, self.tau(index, seed, direction) * (scale * self.scale(index)))
        else:
            self.engine.axpy_(index, seed, scale, direction)

    # -- P3 -----------------------------------------------------------------------------------------------
    def update_tensor(self, index: int, seed: int, record: dict, t: int) -> None:
        p, c, lr, g = self.tensors[index], self.decay_factor(index), self.hyper(index)["lr"], record["projected_grad"]
        if self.ranks[index]:
            # W ← c·W + s·U·diag((c·ε − η·κ)·τ)·Vᵀ = c·W_orig − η·κ·Z_t, one addmm
            self.add_lowrank(index, self.tau(index, seed) * ((c * self.eps - lr * g) * self.scale(index)), beta=c)
        else:  # MeZO's fused P3 on the dense tensor
            self.ops.scale_(p, c)
            self.engine.axpy_(index, seed, c * self.eps - lr * g)


class TeZOM(TeZO):
    """TeZO with momentum kept in the r-dimensional coefficient space (r numbers per matrix).

    Options (beyond TeZO's): momentum, β of m_t = β·m_{t−1} + (1−β)·κ_t·τ_t (an EMA, as in the paper).
    """

    summary = "TeZO with momentum in r-space: +r numbers per matrix; momentum at MeZO's memory"
    state_desc = "r fp32 per matrix (+ dense for 1-D) + cached factors"
    options = OPTIONS + (MOMENTUM,)

    def _init_moments(self) -> None:
        for i, p in enumerate(self.tensors):
            self.state[p]["exp_avg"] = torch.zeros(self.moment_shape(i), dtype=state_dtype(p), device=p.device)

    def update_tensor(self, index: int, seed: int, record: dict, t: int) -> None:
        p, group, c, g = self.tensors[index], self.hyper(index), self.decay_factor(index), record["projected_grad"]
        beta, lr, m = group["momentum"], group["lr"], self.state[p]["exp_avg"]
        if self.ranks[index]:
            tau = self.tau(index, seed)
            m.mul_(beta).add_(tau, alpha=(1.0 - beta) * g)
            # c·(W + ε·s·U diag(τ) Vᵀ) − η·s·U diag(m) Vᵀ in one addmm
            self.add_lowrank(index, (tau * (c * self.eps) - m * lr) * self.scale(index), beta=c)
        else:
            z = self.engine.noise(index, seed)
            self.ops.add_(p, z, self.eps)
            self.ops.scale_(p, c)
            m.mul_(beta).add_(z, alpha=(1.0 - beta) * g)
            self.ops.add_(p, m, -lr)


class TeZOAdam(TeZO):
    """TeZO with Adam moments in r-space (2r numbers per matrix) and a separable second moment.

    Options (beyond TeZO's): momentum (β1), beta2 (β2), adam_eps (δ).
    """

    summary = ("TeZO with Adam moments in r-space: +2r numbers per matrix; Adam-style steps below MeZO-SGD's "
               "memory")
    state_desc = "2r fp32 per matrix (+ dense 2× for 1-D) + cached factors"
    options = OPTIONS + ADAM_OPTIONS
    default_lr = 1e-5  # the paper's Adam-type grid {1e-4, 3e-5, 1e-5, 3e-6}
    lr_grid = "own"
    scratch_slots = 1  # the dense denominator of 1-D tensors

    def _init_moments(self) -> None:
        for i, p in enumerate(self.tensors):
            self.state[p].update(dense_adam_state(p, self.moment_shape(i)))

    def update_tensor(self, index: int, seed: int, record: dict, t: int) -> None:
        p, group, c, g = self.tensors[index], self.hyper(index), self.decay_factor(index), record["projected_grad"]
        corrections = self.bias_corrections(group["momentum"], group["beta2"], t)
        if not self.ranks[index]:
            adam_dense_update(self.ops, p, self.engine.noise(index, seed), self.state[p], g,
                              self.engine.scratch(index, 0), group, self.eps, c, corrections)
            return
        m, v = self.state[p]["exp_avg"], self.state[p]["exp_avg_sq"]
        tau = self.tau(index, seed)
        m.mul_(group["momentum"]).add_(tau, alpha=(1.0 - group["momentum"]) * g)
        v.mul_(group["beta2"]).addcmul_(tau, tau, value=(1.0 - group["beta2"]) * g * g)
        s = self.scale(index)
        factors = self.factors(index)
        m_hat, v_hat = m * (s / corrections[0]), v * (s * s / corrections[1])
        restore = tau * (c * self.eps * s)   # restore and decay: c·W_orig
        if p.dtype != factors[0].dtype and not self.ops.chunked(p):   # half precision, rounded to nearest
            self._adam_step(index, m_hat, v_hat, group, factors, restore, c)   # in the step's own sweep
            return
        self.add_lowrank(index, restore, beta=c, factors=factors)
        self._adam_step(index, m_hat, v_hat, group, factors)

    def transient_bytes(self) -> int:
        matrices = [(p, r) for p, r in zip(self.tensors, self.ranks) if r]
        if not matrices:
            return super().transient_bytes()
        # numerator and denominator row blocks, U⊙U of a block, and (V⊙m̂, V⊙V⊙v̂) of the widest matrix; an upper
        # bound for half-precision weights too, whose one-sweep path holds three 4 MiB blocks instead of two 16 MiB
        block = 4 * max(block_rows(p.shape[0], ADAM_BLOCK, p.shape[1]) * p.shape[1] for p, _ in matrices)
        widest = max(p.shape[1] * r for p, r in matrices) * 4
        return super().transient_bytes() + 2 * block + 3 * widest

    def _adam_step(self, index: int, m_hat: torch.Tensor, v_hat: torch.Tensor, group: dict,
                   factors: tuple[torch.Tensor, torch.Tensor], restore: torch.Tensor | None = None,
                   c: float = 1.0) -> None:
        """W ← W − η·(U diag(m̂) Vᵀ) / (√((U⊙U) diag(v̂) (V⊙V)ᵀ) + δ), built in row blocks of 16 MiB.

        With `restore` (bf16/fp16 weights rounded to nearest), each row block (4 MiB) is first restored as
        `add_lowrank(restore, beta=c)` would do it (widened, the product added, rounded once) and stepped while it
        is still in cache: one sweep over the weight instead of two, bitwise the same since both work per row
        block. Not under stochastic rounding, which draws its bits in the order of the calls."""
        p = self.tensors[index]
        u, v = factors
        m, n = p.shape
        vm, vv = (v * m_hat).t(), (v * v * v_hat).t()
        elements = ADAM_BLOCK if restore is None else FUSED_BLOCK
        size = block_rows(m, elements, n) * n
        num_buf = self.engine.work("block2", size, p.device, u.dtype)
        den_buf = self.engine.work("block3", size, p.device, u.dtype)
        if restore is not None:
            acc, rt = self.engine.work("block", size, p.device, u.dtype), (v * restore).t()
        for a, b in row_blocks(m, elements // n):
            ub, k = u[a:b], b - a
            if restore is not None:
                add_rows(self, p[a:b], ub, rt, c, acc[:k * n].view(k, n), False)
            num = torch.mm(ub, vm, out=num_buf[:k * n].view(k, n))
            den = torch.mm(ub * ub, vv, out=den_buf[:k * n].view(k, n)).sqrt_().add_(group["adam_eps"])
            self.ops.addcdiv_(p[a:b], num, den, -group["lr"])
