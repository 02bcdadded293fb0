"""The command line's options, from the one source of each: MonkeyConfig's knobs (core.config) and the backend
options' table (runtime.backend.BACKEND_OPTIONS); and what every command shares (the console, warnings, sizes)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import typing
import warnings
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from monkey_trt.core.config import Knob, MonkeyConfig, Request, check_side, knobs
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.backend import BACKEND_OPTIONS

console = Console(stderr=True)
REQUEST = knobs(Request)
OR_ENGINE_SIZE = " [default: the engine's opt size, else {}]"


def int_list(text: str, flag: str, item: type = int) -> tuple:  # `1,2` -> (1, 2); item float: `0,0.5` -> (0.0, 0.5)
    try:
        return tuple(item(x) for x in text.replace(" ", "").split(",") if x != "")
    except ValueError:
        raise MonkeyError(f"{flag} must be comma-separated {'numbers' if item is float else 'integers'}, got {text!r}") from None


def cli_type(k: Knob) -> type:
    """A list of ints is typed as text on the command line (`1,2`)."""
    return str if k.kind is tuple else k.kind


KNOB_DEFAULT = object()


def knob_option(k: Knob, default: Any = KNOB_DEFAULT, help_suffix: str = "") -> Any:
    """typer.Option of a Knob: its flag, help (+ `help_suffix`) and default (`...` when required) unless `default` is given."""
    if default is KNOB_DEFAULT:
        default = ... if k.required else (",".join(map(str, k.default)) if k.kind is tuple else k.default)
    return typer.Option(default, k.flag, help=k.help + help_suffix)


def with_config_options(command: Callable) -> Callable:
    """Append one option per MonkeyConfig knob (in field order) to `command`'s options; the command
    receives them as `knob_values`, a dict of the raw option values, and builds the config with `config_from_options`.

    typer reads a command's options from inspect.signature, so the wrapper carries the extended signature."""
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values() if p.name != "knob_values"]
    config_knobs = knobs(MonkeyConfig)
    params += [inspect.Parameter(k.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=knob_option(k), annotation=cli_type(k))
               for k in config_knobs.values()]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in config_knobs}
        return command(knob_values=values, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def config_from_options(values: dict[str, Any]) -> MonkeyConfig:
    """The raw option values of `with_config_options` -> MonkeyConfig (lists parsed from `1,2`)."""
    k = knobs(MonkeyConfig)
    return MonkeyConfig(**{name: int_list(v, k[name].flag, k[name].item) if k[name].kind is tuple else v for name, v in values.items()})


def backend_option(name: str, face: str, default: Any = KNOB_DEFAULT) -> Any:
    """typer.Option of a backend option (runtime.backend.BACKEND_OPTIONS): the same flag and default on every
    command that has it; the help names the backends that command (`face`) offers."""
    o = BACKEND_OPTIONS[name]
    return typer.Option(o.default if default is KNOB_DEFAULT else default, *o.flags, help=o.help_for(face))


@contextlib.contextmanager
def quiet_libraries():
    """Library chatter (deprecations, 'truncated' notices) is replaced by our own one-line warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        yield


def check_sides(height: Optional[int], width: Optional[int]) -> None:
    """--height/--width left out take a default; given, they must be valid sides (0 is an error, not 'the default')."""
    for name, side in (("height", height), ("width", width)):
        if side is not None:
            check_side(name, side, f"--{name}")


def warn(msg: str) -> None:
    from rich.text import Text

    console.print(Text.assemble(("warning: ", "yellow"), msg), highlight=False)  # msg is never read as markup
