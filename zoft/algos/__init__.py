"""ZO algorithms: one file per family, one entry per algorithm in the plain-dict registry below.

Everything else about an algorithm is derived from its class: its options (`option_table`: recipe keys, `zoft
train` flags and help, the resume check), its capabilities and its `zoft list` row.
"""

from __future__ import annotations

from zoft.algos.base import Estimate, ZOOptimizer, decays, trainable_parameters
from zoft.algos.cons import ZOSGDCons
from zoft.algos.first_order import FirstOrderAdam
from zoft.algos.fzoo import FZOO
from zoft.algos.hizoo import HiZOO, HiZOOL
from zoft.algos.lozo import LOZO, LOZOM
from zoft.algos.mezo import MeZO, ZOAdam, ZOSGDMomentum
from zoft.algos.options import Option
from zoft.algos.qzo import QZO
from zoft.algos.sign import ZOSGDSign
from zoft.algos.sparse import SparseMeZO
from zoft.algos.subzero import SubZero
from zoft.algos.tezo import TeZO, TeZOAdam, TeZOM
from zoft.errors import ConfigError, did_you_mean
from zoft.runner import NonFiniteLossError

#: name on the command line → optimizer class (its `summary` is the one-line help)
ALGORITHMS: dict[str, type[ZOOptimizer]] = {
    "mezo": MeZO,
    "zo-sgd-mmt": ZOSGDMomentum,
    "zo-adam": ZOAdam,
    "zo-sgd-sign": ZOSGDSign,
    "zo-sgd-cons": ZOSGDCons,
    "hizoo": HiZOO,
    "hizoo-l": HiZOOL,
    "tezo": TeZO,
    "tezo-m": TeZOM,
    "tezo-adam": TeZOAdam,
    "lozo": LOZO,
    "lozo-m": LOZOM,
    "subzero": SubZero,
    "fzoo": FZOO,
    "sparse-mezo": SparseMeZO,
    "qzo": QZO,
    "fo-adam": FirstOrderAdam,  # the first-order reference (backprop), for memory and accuracy comparisons
}


def option_table() -> dict[str, tuple[Option, list[str]]]:
    """Every algorithm option by name, with the algorithms that take it (registry order). Algorithms sharing an
    option name share its declaration (one `Option` object), so a flag has one type, default and help."""
    table: dict[str, tuple[Option, list[str]]] = {}
    for name, cls in ALGORITHMS.items():
        for option in cls.options:
            known = table.setdefault(option.name, (option, []))
            if known[0] != option:
                raise TypeError(f"{cls.__name__} declares option {option.name} differently from "
                                f"{', '.join(known[1])}; share one Option")
            known[1].append(name)
    return table


def check_owners(algo: str, options: dict, strict: tuple[str, ...] = ()) -> None:
    """Refuse an option of another algorithm, naming the algorithms that take it: always when it was given
    explicitly (`strict`: those keys), else when its value differs from the default (a recipe may list an option
    at its default)."""
    own = {o.name for o in get_algorithm(algo).options}
    table = option_table()
    for key, value in options.items():
        option, takers = table[key]
        if key not in own and value is not None and (key in strict or value != option.default):
            raise ConfigError(f"{option.flag} applies to --algo {' or '.join(takers)}, not {canonical(algo)}")


def check_mode(algo: str, mode: str) -> None:
    """Refuse a tuning mode the algorithm cannot run in (its `modes`; first-order steps and NF4 scales), naming the
    flags to add: `zoft train` and `zoft estimate-memory` both ask here before anything loads."""
    cls = get_algorithm(algo)
    if cls.modes and mode not in cls.modes:
        raise ConfigError(f"--algo {canonical(algo)} runs in --mode {' or '.join(cls.modes)} only, not {mode}: add "
                          f"--mode {cls.modes[0]}" + (" --load-in-4bit" if cls.modes[0] == "scales" else ""))
    if cls.first_order and mode == "scales":
        raise ConfigError(f"--algo {canonical(algo)} backpropagates, and NF4 scales get no gradient through "
                          "bitsandbytes; use a ZO algorithm with --mode scales")


def canonical(name: str) -> str:
    """The registry name of an algorithm given in any case, with '_' for '-'."""
    return name.strip().lower().replace("_", "-")


def get_algorithm(name: str, flag: str = "--algo") -> type[ZOOptimizer]:
    """The class registered as `name` (case and '_'/'-' insensitive); ConfigError with a suggestion otherwise."""
    cls = ALGORITHMS.get(canonical(name))
    if cls is None:
        raise ConfigError(f"{flag} {name}: unknown algorithm{did_you_mean(canonical(name), ALGORITHMS)}; choose from "
                          f"{', '.join(ALGORITHMS)}")
    return cls


#: the registry's classes are exported by name (`zoft.algos.MeZO`, and lazily `zoft.MeZO`)
__all__ = ["ALGORITHMS", "ConfigError", "Estimate", "NonFiniteLossError", "Option", "ZOOptimizer", "canonical",
           "check_mode", "check_owners", "decays", "get_algorithm", "option_table", "trainable_parameters",
           *sorted({cls.__name__ for cls in ALGORITHMS.values()})]
