"""The bounds of the API's arguments, in one place: the resolvers check them and the OpenAPI
document declares them, so a limit the server enforces is a limit the document states.

Bounds are keyed by argument name (camelCase, as clients write them); a name means the same
thing wherever it appears (`first` is always a page size, `topK` always a live top-k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saedex.api.errors import BadInput
from saedex.config import ServeConfig

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_QUERY_CHARS = 200


@dataclass(frozen=True)
class Bound:
    """An inclusive range: of the value for integers, of the length for strings."""

    low: int
    high: int | None = None
    length: bool = False

    def json_schema(self) -> dict[str, Any]:
        if self.length:
            found = {"minLength": self.low, "maxLength": self.high}
        else:
            found = {"minimum": self.low, "maximum": self.high}
        return {k: v for k, v in found.items() if v is not None}

    def check(self, name: str, value: int) -> int:
        """`value` itself, or a BadInput naming the argument and its range."""
        high = INT32_MAX if self.high is None else self.high
        if not self.low <= value <= high:
            raise BadInput(f"{name} must be between {self.low} and {high}, got {value}")
        return value


def bounds(config: ServeConfig) -> dict[str, Bound]:
    """Every bounded argument under this server's limits."""
    return {
        "first": Bound(0, config.max_page_size),
        "topK": Bound(1, config.max_active_top_k),
        "index": Bound(0),
        "text": Bound(1, config.max_text_chars, length=True),
        "query": Bound(1, MAX_QUERY_CHARS, length=True),
        # live steering and ablation (checked by saedex.steering.check_request and run_ablation)
        "prompt": Bound(1, config.max_text_chars, length=True),
        "nTokens": Bound(1, config.max_steer_new_tokens),
        "nShifts": Bound(0, 50),
        "temperature": Bound(0, 10),
    }


def check_unicode(name: str, value: Any) -> None:
    """Refuse strings JSON can carry but UTF-8 cannot: a lone UTF-16 surrogate ("\\ud800")."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadInput(
                f"{name} is not valid Unicode: a lone surrogate at character {exc.start}"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(f"{name}.{key}", item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_unicode(f"{name}[{i}]", item)
