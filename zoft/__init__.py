"""zoft: zeroth-order fine-tuning of Hugging Face causal LMs with the memory of inference.

The optimizers are importable from the top level (`zoft.MeZO`, `zoft.ALGORITHMS`); they are loaded lazily so
that `zoft --help` does not pay for importing torch (~0.8 s).
"""

__version__ = "0.1.0"



def __getattr__(name: str):
    """`zoft.MeZO`, `zoft.ALGORITHMS`, ...: whatever `zoft.algos` exports (every registered class included)."""
    if not name.startswith("_"):
        import zoft.algos

        if name in zoft.algos.__all__:
            return getattr(zoft.algos, name)
    raise AttributeError(f"module 'zoft' has no attribute {name!r}")
