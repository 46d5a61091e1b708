"""GraphQL object types generated from the `saedex.data` records: one definition of a record.

A record's fields, types and descriptions (`doc` metadata) make its GraphQL type, so resolvers
return the records themselves (strawberry reads fields by attribute) and a field added to a
record is in GraphQL, REST and the OpenAPI document at once. The only per-field choices made
here are the wire types that plain Python types cannot say (`GRAPHQL_TYPES`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import strawberry

from saedex.api.scalars import JSON, FloatList, IntList, Long, TokenList

# Field name -> GraphQL type, where Python's type is not the wire type: per-token arrays are one
# scalar each (api/scalars.py), counts that can pass 2^31 are Long, free-form dicts are JSON.
GRAPHQL_TYPES: dict[str, Any] = {
    "tokens": TokenList,
    "token_ids": IntList,
    "activations": FloatList,
    "values": FloatList,
    "context_starts": IntList,
    "n_tokens": Long,
    "n_excluded_tokens": Long,
    "n_active": Long,
    "counts": list[Long],
    "settings": JSON,
    "scores": JSON,
}

# record class -> its generated GraphQL type, so records nested in records map too
_GENERATED: dict[type, type] = {}


def description(field: dataclasses.Field) -> str | None:
    return field.metadata.get("doc")


def field_doc(record: type, name: str) -> str | None:
    """The description of one field of a record."""
    return next(description(f) for f in dataclasses.fields(record) if f.name == name)


def graphql_type(hint: Any) -> Any:
    """The GraphQL annotation for a record field's Python type hint."""
    if hint in _GENERATED:
        return _GENERATED[hint]
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return list[graphql_type(item)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return graphql_type(args[0]) | None
    if origin is dict or hint is dict:
        return JSON
    return hint


def record_type(
    record: type,
    name: str | None = None,
    *,
    exclude: tuple[str, ...] = (),
    types_: dict[str, Any] | None = None,
    resolvers: dict[str, Callable[..., Any]] | None = None,
) -> type:
    """The strawberry type of a record: one field per dataclass field (minus `exclude`), typed by
    `types_`, then GRAPHQL_TYPES, then the field's own hint; `resolvers` add or replace fields
    (their docstring's first line is their description)."""
    hints = typing.get_type_hints(record)
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__annotations__": annotations, "__module__": __name__}
    resolvers = resolvers or {}
    for field in dataclasses.fields(record):
        if field.name in exclude:
            continue
        if field.name in resolvers:  # replaced in place, so the type keeps the record's order
            namespace[field.name] = _resolved(resolvers[field.name])
            continue
        chosen = (types_ or {}).get(field.name) or GRAPHQL_TYPES.get(field.name)
        annotations[field.name] = chosen or graphql_type(hints[field.name])
        namespace[field.name] = strawberry.field(description=description(field))
    for field_name, resolver in resolvers.items():
        namespace.setdefault(field_name, _resolved(resolver))
    cls = type(name or record.__name__, (), namespace)
    generated = strawberry.type(cls, description=(record.__doc__ or "").strip() or None)
    _GENERATED[record] = generated
    return generated


def _resolved(resolver: Callable[..., Any]) -> Any:
    lines = (resolver.__doc__ or "").strip().splitlines()
    return strawberry.field(resolver=resolver, description=lines[0] if lines else None)


def delegating_resolvers(
    record: type, load: Callable[..., Any], exclude: tuple[str, ...] = ()
) -> dict[str, Callable[..., Any]]:
    """A resolver per field of `record` (minus `exclude`) reading it from the record that
    `await load(root, info)` gives, with the field's description and wire type: for a type
    whose record is fetched only when one of its fields is asked for."""
    hints = typing.get_type_hints(record)
    found = {}
    for field in dataclasses.fields(record):
        if field.name not in exclude:
            found[field.name] = _delegate(field, hints[field.name], load)
    return found


def _delegate(field: dataclasses.Field, hint: Any, load: Callable[..., Any]) -> Callable:
    async def resolve(root: Any, info: strawberry.Info) -> Any:
        return getattr(await load(root, info), field.name)

    resolve.__annotations__ = {
        "root": strawberry.Parent[Any],
        "info": strawberry.Info,
        "return": GRAPHQL_TYPES.get(field.name) or graphql_type(hint),
    }
    resolve.__name__ = field.name
    resolve.__doc__ = description(field)
    return resolve
