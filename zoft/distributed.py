"""Data-parallel ZO on torch.distributed: a whole step's communication is a few scalars.

Every rank holds the model and derives the same step seeds from the run seed (checked once at start-up), so every
rank perturbs identically. Each rank runs the forwards on its shard of the global batch and the shards' loss sums
and counts are all-reduced (two float64 numbers per forward), so every rank sees the global minibatch loss and
applies the identical update: the parameters stay equal without one tensor crossing the network. Rank 0 logs,
evaluates and writes checkpoints; at the end the ranks compare parameter checksums.

Launch with `torchrun --nproc_per_node N -m zoft train ...` (or `zoft train --nproc N`); gloo on CPU, NCCL on
CUDA (each rank on `cuda:LOCAL_RANK`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass

import torch

#: bytes a rank sends per all-reduce of a loss (sum and count, float64)
LOSS_REDUCE_BYTES = 16


class RankLost(RuntimeError):
    """Another process of the job died (or the network failed) during a collective."""


@dataclass
class World:
    """The processes of a run and what they share. A single process (`size` 1) is the world too: then every method
    does nothing, so the training loop has no data-parallel branches."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process logs, evaluates and saves (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def setup(self, cfg) -> None:
        """Check `cfg` against the job and put this rank on its own GPU (cuda:LOCAL_RANK)."""
        from zoft.errors import ConfigError

        if not self.active:
            return
        if cfg.batch_size < self.size:
            raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than the {self.size} ranks; each rank "
                              "needs at least one example")
        if cfg.offload:
            raise ConfigError("--offload cpu runs in one process: drop --nproc (or torchrun) or --offload")
        if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()):
            cfg.device = f"cuda:{self.local_rank}"
            torch.cuda.set_device(self.local_rank)
        check_same(cfg.seed, "run seed")

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's share of a global batch."""
        return indices[self.rank::self.size] if self.active else indices

    def loss(self, objective, model, batches: list, step: int):
        """The closure of a step: this rank's forward, its loss summed with the other ranks' (two float64 numbers
        per forward), so every rank sees the loss of the whole global batch."""
        if not self.active:
            return lambda: objective.loss(model, batches)

        def global_loss() -> float:
            total, count = all_reduce_sum([float(v) for v in objective.loss_parts(model, batches)], step)
            return total / count

        return global_loss

    def comm_bytes_per_step(self, forwards: int) -> int:
        """What a rank sends per step: the loss sums of each forward and the stop flag."""
        return LOSS_REDUCE_BYTES * forwards + 8 if self.active else 0

    def agree_stop(self, code: int, step: int) -> int:
        """A signal reaching one rank stops every rank at the same step (one more scalar per step)."""
        if not self.active:
            return code
        total = int(all_reduce_sum([float(code)], step)[0])
        return code or (total if total in (130, 143) else 143 if total else 0)

    def ranks_identical(self, params) -> bool | None:
        """Whether every rank holds the same parameters (None in a single process)."""
        return digests_agree(parameter_digest(params)) if self.active else None

    def barrier(self) -> None:
        if self.active:
            barrier()

    def close(self) -> None:
        """Meet at a barrier, then leave the process group (tearing it down under a saving rank aborts gloo)."""
        if self.active:
            barrier()
            shutdown()


def launched() -> bool:
    """True inside a torchrun job (WORLD_SIZE set by the launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str) -> World:
    """Join the job's process group when launched by torchrun; a single process otherwise."""
    if not launched():
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"
        dist.init_process_group(backend=backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _reduce_device() -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float], step: int | None = None) -> list[float]:
    """Sum a few numbers over the ranks (float64)."""
    import torch.distributed as dist

    buf = torch.tensor(values, dtype=torch.float64, device=_reduce_device())
    try:
        dist.all_reduce(buf)
    except Exception as exc:  # noqa: BLE001 - gloo/NCCL raise RuntimeError or DistBackendError
        where = f" at step {step}" if step is not None else ""
        raise RankLost(f"another rank of the job stopped{where} ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:120]}); rerun the job with --resume") from exc
    return buf.tolist()


def check_same(value: int, what: str) -> None:
    """Every rank must hold the same `value` (e.g. the run seed), or the job is misconfigured."""
    import torch.distributed as dist

    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if len(set(values)) != 1:
        raise RuntimeError(f"ranks disagree on the {what}: {values}")


def parameter_digest(params) -> str:
    """A checksum of the parameters' bytes, to prove the ranks still hold identical weights."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digests_agree(digest: str) -> bool:
    import torch.distributed as dist

    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, digest)
    return len(set(values)) == 1


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """`zoft train --nproc N ...`: rerun the same command under torchrun with N processes on this machine."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "zoft",
           *argv]
    env = dict(os.environ)
    # N processes on a CPU each get an equal share of the cores instead of all of them
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)
