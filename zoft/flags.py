"""Command-line flags derived from where each setting is declared: the fields of a request dataclass (`TrainConfig`,
`MemoryRequest`), with their help text and panel in the field's metadata, and the algorithms' options
(`zoft.algos.option_table`), grouped in `--help` under the algorithms that take them.

The registry imports torch (the algorithms are torch optimizers), which `zoft --help` should not pay for, so
commands with derived flags are `LazyCommand`s: their flags are built the first time the command itself is parsed,
helped or completed.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand

KW = inspect.Parameter.KEYWORD_ONLY


def _base_type(hint: Any) -> type:
    """int for `int | None`, and so on."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def flag(name: str, typ: type, help: str, panel: str, show: Any = None, default: Any = None,
         names: tuple[str, ...] = ()) -> inspect.Parameter:
    """One option of a generated command, None when not given (so a recipe's value stands); booleans get their
    `--no-` form."""
    dashed = "--" + name.replace("_", "-")
    if typ is bool:
        decls = (f"{dashed}/--no-{name.replace('_', '-')}", *names)
        show = False
    else:
        decls = (dashed, *names)
        show = (False if default is None else str(default)) if show is None else show
    option = typer.Option(*decls, help=help, show_default=show, rich_help_panel=panel)
    return inspect.Parameter(name, KW, default=None, annotation=Annotated[Optional[typ], option])


def field_flags(cls: type, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """The flags of a dataclass's fields whose metadata has a help text."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta or f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        text = meta["help"]
        if "{algorithms}" in text:  # the registry's names, so the help cannot drift from it
            from zoft.algos import ALGORITHMS

            text = text.replace("{algorithms}", ", ".join(ALGORITHMS))
        out.append(flag(f.name, _base_type(hints[f.name]), text, meta["panel"], meta.get("show"), default,
                        tuple(meta.get("flags", ()))))
    return out


def option_flags() -> list[inspect.Parameter]:
    """One flag per algorithm option, in a panel named after the algorithms that take it."""
    from zoft.algos import option_table

    return [flag(name, option.type, option.help, f"Options of {', '.join(algos)}", None, option.default)
            for name, (option, algos) in option_table().items()]


def recipe_argument(help: str) -> inspect.Parameter:
    return inspect.Parameter("recipe", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                             annotation=Annotated[Optional[Path], typer.Argument(help=help, show_default=False)])


def with_signature(fn: Callable[..., Any], params: list[inspect.Parameter]) -> Callable[..., Any]:
    """`fn(**kwargs)` presented to Typer as a function of `params`."""

    def command(**kwargs: Any) -> Any:
        return fn(**kwargs)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {}
    command.__doc__ = fn.__doc__
    return command


class LazyCommand(TyperCommand):
    """A Typer command whose parameters and callback come from `load()` on first use (set `load` on a subclass);
    until then it is only a name and a help text, which is all that `zoft --help` needs."""

    load: Callable[[], Any]

    def _real(self) -> TyperCommand:
        real = self.__dict__.get("_real_command")
        if real is None:
            from typer.main import get_command_from_info
            from typer.models import CommandInfo

            info = CommandInfo(name=self.name, callback=type(self).load(), help=self.help, epilog=self.epilog,
                               context_settings={"help_option_names": ["-h", "--help"]})
            real = self.__dict__["_real_command"] = get_command_from_info(
                info, pretty_exceptions_short=True, rich_markup_mode="rich")
        return real

    def get_params(self, ctx):  # noqa: ANN001 - click's signature
        return self._real().get_params(ctx)

    def invoke(self, ctx):  # noqa: ANN001
        return self._real().invoke(ctx)


def lazy(load: Callable[[], Callable[..., Any]]) -> type[LazyCommand]:
    """A `LazyCommand` class for `app.command(cls=...)` whose real callback `load()` builds."""
    return type("LazyCommand", (LazyCommand,), {"load": staticmethod(load)})
