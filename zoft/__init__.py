"""zoft: zeroth-order fine-tuning of Hugging Face causal LMs with the memory of inference.

The optimizers are importable from the top level (`zoft.MeZO`, `zoft.ALGORITHMS`); they are loaded lazily so
that `zoft --help` does not pay for importing torch (~0.8 s).
"""

__version__ = "0.1.0"

_LAZY = {"ALGORITHMS", "HiZOO", "HiZOOL", "MeZO", "NonFiniteLossError", "TeZO", "TeZOAdam", "TeZOM", "ZOAdam",
         "ZOOptimizer", "ZOSGDMomentum", "trainable_parameters"}


def __getattr__(name: str):
    if name in _LAZY:
        import zoft.algos

        return getattr(zoft.algos, name)
    raise AttributeError(f"module 'zoft' has no attribute {name!r}")


__all__ = ["__version__", *sorted(_LAZY)]
