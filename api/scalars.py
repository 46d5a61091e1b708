"""Array scalars: a whole token or activation list is one leaf, serialised by one call.

graphql-core completes a `[String!]!` item by item (a null check, a type check and a
`serialize` call per element). A feature's top examples hold 20 x 128 tokens and as many
activations, so that per-item loop is most of a naive response's time; these scalars hand the
list to the JSON encoder as it is. They are output types only.
"""

from __future__ import annotations

from typing import Any, NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

TokenList = NewType("TokenList", list[str])
FloatList = NewType("FloatList", list[float])
IntList = NewType("IntList", list[int])
Long = NewType("Long", int)
JSON = NewType("JSON", object)


def _same(value: Any) -> Any:
    return value


def _output_only(value: Any) -> Any:
    raise ValueError("this scalar is output-only")


def _array(name: str, description: str) -> ScalarDefinition:
    return strawberry.scalar(
        name=name, description=description, serialize=_same, parse_value=_output_only
    )


# Each scalar's value as JSON Schema, for the OpenAPI document the REST mirror derives.
JSON_SCHEMAS: dict[str, dict[str, Any]] = {
    "TokenList": {"type": "array", "items": {"type": "string"}},
    "FloatList": {"type": "array", "items": {"type": "number"}},
    "IntList": {"type": "array", "items": {"type": "integer"}},
    "Long": {"type": "integer"},
    "JSON": {},
    # strawberry writes datetime.isoformat(): ISO 8601, but with no zone, so not RFC 3339's
    # "date-time" format
    "DateTime": {"type": "string", "description": "ISO 8601 local date and time."},
}

SCALARS: dict[object, ScalarDefinition] = {
    TokenList: _array("TokenList", "A JSON array of decoded token strings."),
    FloatList: _array("FloatList", "A JSON array of numbers (per-token activations)."),
    IntList: _array("IntList", "A JSON array of integers (token ids)."),
    Long: strawberry.scalar(
        name="Long", description="An integer that may exceed 32 bits.", serialize=int
    ),
    JSON: _array("JSON", "Any JSON value (the run's stored settings)."),
}
