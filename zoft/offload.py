"""CPU offload: ZO-train a model larger than the GPU by streaming its transformer blocks (`--offload cpu`).

The idea of ZO2 (Wang et al., arXiv 2503.12668). A ZO step needs no activations and no gradients, so the only thing
the GPU must hold for the whole step is the part of the model that is not in a block (embeddings, final norm, head:
2 % of OPT-13B); the blocks live in pinned CPU memory and visit the GPU one at a time:

* all probe forwards of a step run through a block during one upload (MeZO's two, HiZOO's three: the
  algorithm's `probes`). They run in one
  thread each, in lockstep: probe 0 runs block k and hands over to probe 1, which runs block k and hands over,
  and the last probe offloads the block and hands back to probe 0. Each thread computes its own loss with the
  unchanged objective code, so every task and loss works as it is;
* the perturbation is applied to a block while it is on the GPU, before each probe's forward (MeZO: +εz, then
  −2εz; HiZOO: none for L0, then ±εz/√H); the block goes back to the CPU holding the last probe's point, and
  the per-weight optimizer state (HiZOO's H, momentum, Adam moments) travels with it;
* the update of step t (which needs g_t, known only after the last block) is applied when the block is next
  uploaded, at step t+1, just before that step's first perturbation, so a block crosses the bus twice per step
  (up, down) and never a third time for its update. `flush` applies a pending update to every block before an
  evaluation, a checkpoint or the end of the run;
* uploads run on their own CUDA stream and the next block is prefetched while the current one computes; write-backs
  run on a third stream. At most three blocks are on the GPU: the one computing, the next, the last draining.

Per tensor the arithmetic is that of the unoffloaded step (its passes, with P3 moved to the next visit): with
fp32 weights an offloaded run equals the same run without offload bitwise on the same device type (tests use CPU
as the "GPU"). A tensor used by two units (tied input/output embeddings) keeps a copy of each probe's point for
the second use: one tensor more of GPU memory per probe but the last, and still bitwise.

What it supports: algorithms whose update of a tensor needs only the step's scalars, that tensor and its own
state, which is every ZO algorithm of the registry (`ZOOptimizer.offloadable`; TeZO's factors are per tensor and
regenerated from their seeds, so they travel as any state does; the first-order reference is refused), full
fine-tuning or LoRA, one forward per probe
(`--micro-batch-size` equal to `--batch-size`) and one process. Everything else is refused before the model
loads (`check_config`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

OFFLOAD_KINDS = ("cpu",)
OFFLOAD_MODES = ("full", "lora")


def check_config(cfg) -> str | None:
    """None if `--offload` fits the rest of the config, else the reason (one line naming the flag)."""
    from zoft.algos import ALGORITHMS

    if cfg.offload is None:
        return None
    if cfg.offload not in OFFLOAD_KINDS:
        return f"--offload {cfg.offload}: choose {', '.join(OFFLOAD_KINDS)}"
    cls = ALGORITHMS.get(cfg.algo)
    if cls is not None and not cls.offloadable:
        ok = ", ".join(name for name, c in ALGORITHMS.items() if c.offloadable)
        return f"--offload cpu with --algo {cfg.algo}: offload supports --algo {ok}"
    refusal = cls.offload_refusal(cfg.algo_options) if cls is not None else None
    if refusal:
        return refusal
    if cfg.mode not in OFFLOAD_MODES:
        return (f"--offload cpu with --mode {cfg.mode}: {cfg.mode} tensors are used outside the transformer "
                "blocks' forwards; use --mode full or lora")
    if cfg.device_map is not None:
        return "--offload cpu and --device-map both place the layers; pick one"
    if cfg.load_in_8bit or cfg.load_in_4bit:
        return "--offload cpu with a quantized base is not supported: drop --load-in-8bit/4bit"
    if cfg.exact_bf16:
        return "--offload cpu with --exact-bf16 is not supported: use --stochastic-rounding for bf16 weights"
    if cfg.micro_batch_size and cfg.micro_batch_size < cfg.batch_size:
        return ("--offload cpu needs one forward per probe (each block is visited once per step): set "
                "--micro-batch-size to --batch-size or drop it")
    if cfg.objective == "f1":
        return "--offload cpu with --objective f1: generations of the probes differ in length; use ce"
    return None


def attach(model: nn.Module, opt, device: torch.device | str) -> "Offloader":
    """Stream `model`'s blocks through `device` for `opt`: from here on `opt.step` runs offloaded
    (`zoft.runner.OffloadedRunner`). Returns the offloader."""
    from zoft.runner import OffloadedRunner

    offloader = Offloader(model, opt, device)
    opt.runner = OffloadedRunner(opt, offloader)
    return offloader


def require_cuda(device: torch.device) -> None:
    """Offloading streams blocks to a GPU; refuse on any other device (a CPU has nothing to offload to)."""
    if device.type != "cuda":
        raise ValueError(f"--offload cpu streams the transformer blocks from CPU memory to a CUDA GPU, and this run "
                         f"computes on {device.type}: drop --offload (on a CPU the whole model is already in CPU "
                         "memory)")


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks: the `nn.ModuleList` holding the most parameters (every Hugging Face causal LM keeps
    its decoder layers in one)."""
    best, size = None, 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            n = sum(p.numel() for p in module.parameters())
            if n > size:
                best, size = module, n
    if best is None:
        raise ValueError(f"{type(model).__name__} has no list of transformer blocks to offload")
    return best


@dataclass
class _Slot:
    """One tensor of an offloaded block: its CPU home and how to point the module at a copy."""

    module: nn.Module | dict    # the owning module, or the optimizer state dict of a trainable tensor
    name: str
    param: nn.Parameter | None  # None for a buffer or a state tensor
    store: torch.Tensor         # the CPU copy (pinned when streaming to CUDA); the value between visits
    index: int | None           # the optimizer's tensor index if trainable (or its state): written back after a step

    def point(self, t: torch.Tensor) -> None:
        if self.param is not None:
            self.param.data = t
        elif isinstance(self.module, dict):
            self.module[self.name] = t
        else:
            self.module._buffers[self.name] = t


@dataclass
class _Unit:
    """A module whose forward is a lockstep point: a block (offloaded) or a resident module that owns trainable
    tensors directly (embeddings, final norm, head)."""

    module: nn.Module
    tensors: list[int]       # optimizer indices of the trainable tensors it uses
    block: int | None        # position in the block list, or None if resident


class _Abort(Exception):
    """The other probe thread failed: stop this one where it waits."""


class Offloader:
    """Keeps the blocks of `model` in CPU memory and runs the steps of `opt` block by block on `device`.

    Args:
        model: the model, on the CPU (it may be larger than the GPU); the non-block modules are moved to `device`.
        opt: the optimizer over its trainable tensors (an `offloadable` algorithm). `attach` builds the offloader
            and gives `opt` the runner that steps through it.
        device: where forwards and passes run: a CUDA device, or the CPU itself in tests (no streams; the
            "upload" is a copy), which exercises every step of the protocol.

    Counters: `uploads` (block visits of the GPU) and `flushes`.
    """

    def __init__(self, model: nn.Module, opt, device: torch.device | str):
        if not getattr(opt, "offloadable", False):
            raise ValueError(f"{type(opt).__name__} cannot run offloaded")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.opt = opt
        index = {id(p): i for i, p in enumerate(opt.tensors)}
        blocks = list(find_blocks(model))
        self._slots: list[list[_Slot]] = []
        self.units: list[_Unit] = []
        block_tensors = self._place_blocks(blocks, index)
        in_block = {id(m) for b in blocks for m in b.modules()}
        uses, resident = self._place_resident(model, in_block, index)
        self._check_units(block_tensors, uses)
        self._shared = {i for i, n in uses.items() if n > 1}  # tied embeddings: used by two resident modules
        self.blocks = blocks
        self._resident_bytes = sum(resident.values())
        self.pending: Callable[[int], None] | None = None  # the last step's update, per tensor, not yet applied
        self.uploads = self.flushes = 0
        self._gpu: dict[int, list[torch.Tensor]] = {}       # block → its tensors on the device
        self._ready: dict[int, object] = {}                 # block → upload-done event
        self._written: dict[int, object] = {}               # block → write-back-done event
        if self.cuda:
            self._up, self._down = torch.cuda.Stream(self.device), torch.cuda.Stream(self.device)
        self._probe: tuple[int, float] | None = None
        self._local = threading.local()
        self._cond = threading.Condition()
        self._hooks = []
        for unit in self.units:
            self._hooks.append(unit.module.register_forward_pre_hook(lambda m, a, u=unit: self._pre(u)))
            self._hooks.append(unit.module.register_forward_hook(lambda m, a, o, u=unit: self._post(u)))

    # -- placement ----------------------------------------------------------------------------------------
    def _place_blocks(self, blocks: list[nn.Module], index: dict[int, int]) -> set[int]:
        """Move each block's parameters, buffers and per-weight state to host memory; returns the indices of the
        trainable tensors that live in blocks."""
        block_tensors: set[int] = set()
        for k, block in enumerate(blocks):
            slots, seen = [], set()
            for module in block.modules():
                for name, p in module._parameters.items():
                    if p is None or id(p) in seen:
                        continue
                    seen.add(id(p))
                    slots.append(_Slot(module, name, p, self._home(p.data), index.get(id(p))))
                    if id(p) in index:  # per-weight optimizer state (HiZOO's H, moments) travels with its block
                        state = self.opt.state[p]
                        slots.extend(_Slot(state, key, None, self._home(v), index[id(p)])
                                     for key, v in state.items() if isinstance(v, torch.Tensor))
                for name, b in module._buffers.items():
                    if b is not None:
                        slots.append(_Slot(module, name, None, self._home(b), None))
            for s in slots:
                s.point(s.store)
            self._slots.append(slots)
            trainable = [s.index for s in slots if s.index is not None and s.param is not None]
            block_tensors.update(trainable)
            self.units.append(_Unit(block, trainable, k))
        return block_tensors

    def _place_resident(self, model: nn.Module, in_block: set[int],
                        index: dict[int, int]) -> tuple[dict[int, int], dict[int, int]]:
        """Put everything outside the blocks (embeddings, final norm, head) on the device, each module that owns
        trainable tensors as one unit; returns how many units use each trainable tensor and the resident bytes."""
        uses: dict[int, int] = {}
        resident: dict[int, int] = {}
        for module in model.modules():
            if id(module) in in_block:
                continue
            for t in [*module._parameters.values(), *module._buffers.values()]:
                if t is not None:
                    resident[id(t)] = t.numel() * t.element_size()
            for name, p in module._parameters.items():
                if p is not None and p.device != self.device:
                    p.data = p.data.to(self.device)
            for name, b in module._buffers.items():
                if b is not None and b.device != self.device:
                    module._buffers[name] = b.to(self.device)
            own = [index[id(p)] for p in module._parameters.values() if p is not None and id(p) in index]
            for i in own:
                state = self.opt.state[self.opt.tensors[i]]
                for key, v in state.items():
                    if isinstance(v, torch.Tensor):
                        state[key] = v.to(self.device)
                        resident[id(v)] = v.numel() * v.element_size()
            if own:
                self.units.append(_Unit(module, own, None))
                for i in own:
                    uses[i] = uses.get(i, 0) + 1
        return uses, resident

    def _check_units(self, block_tensors: set[int], uses: dict[int, int]) -> None:
        """Refuse layouts whose forwards cannot run in lockstep: nested units, a tensor used inside and outside
        the blocks, or a trainable tensor no forward visits."""
        for unit in self.units:
            if unit.block is None and any(m is not unit.module and id(m) in {id(u.module) for u in self.units}
                                          for m in unit.module.modules()):
                raise ValueError(f"{type(unit.module).__name__} owns trainable tensors and contains other modules "
                                 "that do; its forward cannot be run in lockstep")
        if block_tensors & set(uses):
            raise ValueError("a trainable tensor is used both inside and outside the transformer blocks; "
                             "it cannot be offloaded")
        opt = self.opt
        unvisited = set(range(len(opt.tensors))) - block_tensors - set(uses)
        if unvisited:
            all_names = [n for g in opt.param_groups for n in (g.get("param_names") or [None] * len(g["params"]))]
            names = ", ".join(str(all_names[i] or f"#{i}") for i in sorted(unvisited)[:3])
            raise ValueError(f"trainable tensors {names} belong to no module that runs a forward; they cannot be "
                             "perturbed block by block")

    def _home(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to("cpu")
        return t.pin_memory() if self.cuda else t

    def resident_bytes(self) -> int:
        """Bytes that stay on the device for the whole run: the modules outside the blocks and their state."""
        return self._resident_bytes

    def block_bytes(self) -> int:
        """Bytes of the largest block: what one upload moves, and a third of what blocks add to the device."""
        return max(sum(s.store.numel() * s.store.element_size() for s in slots) for slots in self._slots)

    def _upload(self, k: int) -> None:
        self.uploads += 1
        if not self.cuda:
            self._gpu[k] = [s.store.clone() for s in self._slots[k]]
            return
        with torch.cuda.stream(self._up):
            if k in self._written:
                self._up.wait_event(self._written.pop(k))  # last step's write-back into the pinned copy
            self._gpu[k] = [torch.empty_like(s.store, device=self.device).copy_(s.store, non_blocking=True)
                            for s in self._slots[k]]
            self._ready[k] = self._up.record_event()

    def _acquire(self, k: int) -> None:
        """Point block k's modules at device copies (uploading now if it was not prefetched); prefetch k+1."""
        if k not in self._gpu:
            self._upload(k)
        tensors = self._gpu[k]
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(self._ready.pop(k))
            for t in tensors:
                t.record_stream(compute)
        for s, t in zip(self._slots[k], tensors):
            s.point(t)
        if k + 1 < len(self.blocks) and k + 1 not in self._gpu:
            self._upload(k + 1)

    def _release(self, k: int, write_back: bool) -> None:
        """Point block k back at its CPU copies, writing its trainable tensors back first if they changed."""
        tensors = self._gpu.pop(k)
        slots = self._slots[k]
        if not self.cuda:
            if write_back:
                for s, t in zip(slots, tensors):
                    if s.index is not None:
                        s.store.copy_(t)
        elif write_back:
            done = torch.cuda.current_stream(self.device).record_event()
            with torch.cuda.stream(self._down):
                self._down.wait_event(done)
                for s, t in zip(slots, tensors):
                    if s.index is not None:
                        s.store.copy_(t, non_blocking=True)
                        t.record_stream(self._down)
                self._written[k] = self._down.record_event()
        for s in slots:
            s.point(s.store)

    # -- steps --------------------------------------------------------------------------------------------
    def defer(self, update: Callable[[int], None]) -> None:
        """Apply `update(i)` to every tensor at its next visit (the step's P3, or the restore of a skipped step)."""
        self.pending = update

    def flush(self) -> None:
        """Apply the pending update to every tensor now (before a checkpoint, an evaluation, the end), then wait
        for the write-backs, so the CPU copies hold the weights."""
        pending, self.pending = self.pending, None
        if pending is not None:
            with torch.inference_mode(False), torch.no_grad():  # leaving inference mode turns grad mode back on
                self._apply_everywhere(pending)
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _apply_everywhere(self, pending: Callable[[int], None]) -> None:
        """`pending(i)` once for every tensor, each block uploaded for it and written back."""
        done: set[int] = set()
        for unit in self.units:
            if unit.block is not None:
                self._acquire(unit.block)
            for i in unit.tensors:
                if i not in done:
                    done.add(i)
                    pending(i)
            if unit.block is not None:
                self._release(unit.block, write_back=True)
        self.flushes += 1

    def probe(self, closure: Callable[[], object], seed: int, moves: list[list[tuple[int, float]]]) -> list[float]:
        """The losses of K lockstep forwards, each block uploaded once for all of them. Before probe j runs a
        tensor's first unit, the tensor is moved by `perturb_tensor(i, seed, scale, direction)` for each (direction,
        scale) of `moves[j]`, and the first probe applies the pending update first: MeZO's moves are [ε], [−2ε],
        HiZOO's [], [ε], [−2ε]. On return every tensor holds the last probe's point."""
        k = len(moves)
        self._probe = (seed, moves)
        self._seen: list[set[int]] = [set() for _ in range(k)]  # tensors each probe has moved this step
        self._copies: dict[tuple[int, int], torch.Tensor] = {}  # (probe, tensor) → its point, for a second user
        self._real: dict[int, torch.Tensor] = {}
        self._trace: list[list[int]] = [[] for _ in range(k)]
        self._turn, self._finished, self._error = 0, set(), None
        results: dict[int, float] = {}

        def run(j: int) -> None:
            self._local.who = j
            if self.cuda:
                torch.cuda.set_device(self.device)
            try:
                if j:
                    self._wait(j)
                with torch.inference_mode():
                    results[j] = float(closure())
            except _Abort:
                pass
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                with self._cond:
                    self._error = self._error or exc
                    self._cond.notify_all()
            finally:
                with self._cond:
                    self._finished.add(j)
                    self._turn = self._next(j)
                    self._cond.notify_all()

        threads = [threading.Thread(target=run, args=(j,), name=f"zoft-probe{j}") for j in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._probe = None
        self._copies.clear()
        if self._error is not None:
            raise self._error
        if any(trace != self._trace[0] for trace in self._trace):
            raise RuntimeError("the probe forwards ran different modules; an offloaded step needs a forward whose "
                               "modules do not depend on the weights")
        missed = len(self.opt.tensors) - len(self._seen[0])
        if missed:
            raise RuntimeError(f"{missed} trainable tensors were not used by the forward; they cannot be offloaded")
        self.pending = None
        return [results[j] for j in range(k)]

    def _next(self, j: int) -> int | None:
        """The probe that runs after probe j: the next one in order that has not finished."""
        k = len(self._trace)
        for step in range(1, k):
            if (j + step) % k not in self._finished:
                return (j + step) % k
        return None

    def _wait(self, j: int) -> None:
        with self._cond:
            while self._turn != j and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise _Abort

    def _hand_over(self, j: int) -> None:
        """Probe j finished a unit: the next probe runs the same unit, and so on round to j."""
        with self._cond:
            nxt = self._next(j)
            if nxt is None:
                return
            self._turn = nxt
            self._cond.notify_all()
        self._wait(j)

    def _pre(self, unit: _Unit) -> None:
        # the passes make buffers the engine keeps (z, tables): they must not be inference tensors, which could not
        # be updated in place by a later pass outside the probes' inference mode
        with torch.inference_mode(False), torch.no_grad():
            self._enter(unit)

    def _enter(self, unit: _Unit) -> None:
        if self._probe is None:  # a plain forward (evaluation, generation): weights must be current
            if self.pending is not None:
                self.flush()
            if unit.block is not None:
                self._acquire(unit.block)
            return
        j = self._local.who
        seed, moves = self._probe
        self._trace[j].append(id(unit))
        if j == 0 and unit.block is not None:
            self._acquire(unit.block)
        last = j == len(moves) - 1
        for i in unit.tensors:
            if i in self._seen[j]:  # its second user (a tied head): the point kept at its first
                if not last:
                    p = self.opt.tensors[i]
                    self._real[i] = p.data
                    p.data = self._copies[(j, i)]
                continue
            self._seen[j].add(i)
            if j == 0 and self.pending is not None:
                self.pending(i)                               # P3 of the last step
            for direction, scale in moves[j]:                 # MeZO: P1 (+εz), then P2 (−2εz)
                self.opt.perturb_tensor(i, seed, scale, direction)

    def _post(self, unit: _Unit) -> None:
        with torch.inference_mode(False), torch.no_grad():
            self._leave(unit)
        if self._probe is not None:
            self._hand_over(self._local.who)

    def _leave(self, unit: _Unit) -> None:
        if self._probe is None:
            if unit.block is not None:
                self._release(unit.block, write_back=False)
            return
        j = self._local.who
        last = j == len(self._probe[1]) - 1
        for i in unit.tensors:
            p = self.opt.tensors[i]
            if i in self._real:
                p.data = self._real.pop(i)
            elif i in self._shared and not last and (j, i) not in self._copies:
                self._copies[(j, i)] = p.detach().clone()
        if last and unit.block is not None:
            self._release(unit.block, write_back=True)
