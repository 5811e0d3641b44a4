"""Run the zoft CLI with a SIGKILL planted at one point, for the fault-injection tests.

    python tests/fault_child.py PHASE N -- train --model ... (zoft arguments)

ZOFT_FAULT_RANK=R (under torchrun) plants it in rank R only.
PHASE: `step` kills at the N-th forward of the optimizer (inside a step, weights perturbed), `save` right after
the N-th torch.save (inside a checkpoint write, before its state file), `eval` at the N-th evaluation, `time`
after N milliseconds wherever the run is. The process dies as on a pre-empted node: no handler runs.
"""

import os
import signal
import sys
import threading


def main() -> None:
    phase, n = sys.argv[1], int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1:]
    target = os.environ.get("ZOFT_FAULT_RANK")  # under torchrun: plant the fault in one rank only
    if target is not None and os.environ.get("RANK") != target:
        phase = "none"
    calls = {"n": 0}

    def bomb():
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    if phase == "step":
        import zoft.algos.base as base

        real = base.ZOOptimizer.evaluate

        def evaluate(self, closure):
            bomb()
            return real(self, closure)

        base.ZOOptimizer.evaluate = evaluate
    elif phase == "save":
        import torch

        real_save = torch.save

        def save(*a, **k):
            real_save(*a, **k)
            bomb()

        torch.save = save
    elif phase == "eval":
        import zoft.train

        real_eval = zoft.train.evaluate

        def evaluate(*a, **k):
            bomb()
            return real_eval(*a, **k)

        zoft.train.evaluate = evaluate
    elif phase == "none":
        pass
    elif phase == "time":
        threading.Timer(n / 1000, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
    else:
        raise SystemExit(f"unknown phase {phase}")
    from zoft.cli import app

    app(args=args, prog_name="zoft")


if __name__ == "__main__":
    main()
