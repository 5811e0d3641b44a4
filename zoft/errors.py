"""The error a user can cause and fix: the CLI turns it into one line and exit code 2, often with a suggestion."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A user-fixable problem with flags, a recipe, an algorithm option or an input path (the CLI exits with 2)."""


def did_you_mean(given: str, choices: Iterable[str], n: int = 1, quote: str = "") -> str:
    """" (did you mean X?)" with the closest of `choices` (up to `n`, joined by "or", each in `quote`s), or "" when
    none is close: the one suggestion format of every unknown name (algorithm, task, mode, key, recipe)."""
    close = difflib.get_close_matches(str(given), list(choices), n=n)
    return f" (did you mean {' or '.join(quote + c + quote for c in close)}?)" if close else ""
