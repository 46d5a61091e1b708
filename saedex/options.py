"""CLI options generated from the config dataclasses (saedex/config.py), as Datasette builds its
`--setting` from one list of settings: each field is an option with its help, default, bounds
and name from the field's metadata, so a setting added to a config is on the CLI at once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from saedex.config import ConfigError
from saedex.errors import SaedexError


def flag(field: dataclasses.Field) -> str:
    """The option's name without dashes: `flag` metadata, else the field name in kebab case."""
    return field.metadata.get("flag") or field.name.replace("_", "-")


def _option(field: dataclasses.Field, hint: Any) -> tuple[Any, Any]:
    """(annotation, default) of the typer parameter for one config field."""
    meta = field.metadata
    default = field.default_factory() if field.default is dataclasses.MISSING else field.default
    name = flag(field)
    decls = [f"--{name}/--no-{name}"] if hint is bool else [f"--{name}"]
    if typing.get_origin(hint) is tuple:  # a repeatable option
        hint, default = list[str] | None, None
    info = typer.Option(
        *decls,
        help=meta.get("help"),
        min=meta.get("min"),
        max=meta.get("max"),
        show_default=meta.get("default_text", True),
    )
    return Annotated[hint, info], default


def config_options(param: str, config_cls: type, skip: tuple[str, ...] = ()) -> Callable:
    """Decorate a command whose parameter `param` is a `config_cls`: the CLI gets one option per
    field of the config (but `skip`), and the command gets the config built from them."""
    hints = typing.get_type_hints(config_cls)
    chosen = [f for f in dataclasses.fields(config_cls) if f.name not in skip]

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in signature.parameters.values()
            if p.name != param
        ]
        generated = []
        for field in chosen:
            annotation, default = _option(field, hints[field.name])
            generated.append(
                inspect.Parameter(
                    field.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=default,
                    annotation=annotation,
                )
            )

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {f.name: kwargs.pop(f.name) for f in chosen}
            for f in chosen:
                if typing.get_origin(hints[f.name]) is tuple:
                    values[f.name] = tuple(values[f.name] or ())
            try:
                config = config_cls(**values)
            except ConfigError as exc:
                field = next(f for f in chosen if f.name == exc.name)
                raise SaedexError(f"--{flag(field)} {exc.problem}") from None
            return command(**kwargs, **{param: config})

        # typer reads the signature: the command's own parameters, then the config's options
        parameters = [*own, *generated]
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # typer must see the new signature, not the command's
        return wrapper

    return decorate
