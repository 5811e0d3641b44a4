"""How an algorithm declares its own options, once.

Each option is an `Option`: name, type, default, help text, the values it accepts and whether it changes the
trajectory. From these declarations alone the registry derives the recipe keys, the `zoft train` flags and their
`--help`, `estimate-memory`'s options, `zoft list` and the resume check; a value out of range raises `ConfigError`,
so a bad flag, recipe key or constructor argument is one clear line naming the flag (exit 2 on the command line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from zoft.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """One algorithm option.

    Args:
        name: the keyword argument and recipe key (`rank_min`); the flag is `--rank-min`.
        type: bool, int, float or str.
        default: the value used when the option is not given (None: the option is optional and unset).
        help: one or two sentences for `--help` and `zoft list`.
        choices: the accepted values of a str option.
        low, high: the accepted range of a number; `low_open`/`high_open` exclude the bound itself.
        trajectory: False for options that change how a step is computed but not its result (a resume may change
            them), e.g. whether TeZO caches its factors.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    trajectory: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"must lie in {lo}{self.low:g}, {self.high:g}{hi}"
        if self.low is not None:
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"must be {'<' if self.high_open else '<='} {self.high:g}"
        return ""

    def check(self, value: Any) -> Any:
        """`value`, checked: None stays None (not given); otherwise it must be of the type and in range."""
        if value is None:
            return None
        if self.type is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{self.flag} must be true or false (got {value!r})")
            return value
        if self.type is str:
            value = str(value)
            if self.choices and value not in self.choices:
                raise ConfigError(f"{self.flag} {value}: choose {' or '.join(self.choices)}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.type is int and not float(value).is_integer()):
            raise ConfigError(f"{self.flag} must be {'an integer' if self.type is int else 'a number'} "
                              f"(got {value!r})")
        value = self.type(value)
        if self.type is float and not math.isfinite(value):
            raise ConfigError(f"{self.flag} must be a finite number (got {value})")
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if below or above:
            raise ConfigError(f"{self.flag} {self.range_text()} (got {value:g})")
        return value


def resolve(cls_name: str, options: tuple[Option, ...], given: dict[str, Any]) -> dict[str, Any]:
    """Every option of an algorithm: the given value (checked) or the default. An unknown name is a TypeError, as
    for any keyword argument a class does not take."""
    known = {o.name: o for o in options}
    unknown = sorted(set(given) - set(known))
    if unknown:
        takes = ", ".join(known) or "no options"
        raise TypeError(f"{cls_name} got unexpected option(s) {', '.join(unknown)} (it takes {takes})")
    out = {}
    for option in options:
        value = option.check(given.get(option.name))
        out[option.name] = option.default if value is None else value
    return out
