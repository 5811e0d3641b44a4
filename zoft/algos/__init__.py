"""ZO algorithms: one file per family, one entry per algorithm in the plain-dict registry below."""

from zoft.algos.base import NonFiniteLossError, TwoPointZO, ZOOptimizer, decays, trainable_parameters
from zoft.algos.first_order import FirstOrderAdam
from zoft.algos.hizoo import HiZOO, HiZOOL
from zoft.algos.mezo import MeZO, ZOAdam, ZOSGDMomentum
from zoft.algos.tezo import TeZO, TeZOAdam, TeZOM

#: name on the command line → optimizer class (its `summary` is the one-line help)
ALGORITHMS: dict[str, type[ZOOptimizer]] = {
    "mezo": MeZO,
    "zo-sgd-mmt": ZOSGDMomentum,
    "zo-adam": ZOAdam,
    "hizoo": HiZOO,
    "hizoo-l": HiZOOL,
    "tezo": TeZO,
    "tezo-m": TeZOM,
    "tezo-adam": TeZOAdam,
    "fo-adam": FirstOrderAdam,  # the first-order reference (backprop), for memory and accuracy comparisons
}

__all__ = ["ALGORITHMS", "FirstOrderAdam", "HiZOO", "HiZOOL", "MeZO", "NonFiniteLossError", "TeZO", "TeZOAdam", "TeZOM", "TwoPointZO",
           "ZOAdam", "ZOOptimizer", "ZOSGDMomentum", "decays", "trainable_parameters"]
