"""ZO algorithms: one file per family, one entry per algorithm in the plain-dict registry below."""

from zoft.algos.base import NonFiniteLossError, ZOOptimizer, decays, trainable_parameters
from zoft.algos.hizoo import HiZOO, HiZOOL
from zoft.algos.mezo import MeZO

#: name on the command line → optimizer class (its `summary` is the one-line help)
ALGORITHMS: dict[str, type[ZOOptimizer]] = {
    "mezo": MeZO,
    "hizoo": HiZOO,
    "hizoo-l": HiZOOL,
}

__all__ = ["ALGORITHMS", "HiZOO", "HiZOOL", "MeZO", "NonFiniteLossError", "ZOOptimizer", "decays", "trainable_parameters"]
