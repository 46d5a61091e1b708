"""`saedex.Client`: a running `saedex serve`, read through the same methods and records as
`IndexReader`, so a notebook works the same against a remote server or a local file.

    from saedex import Client, IndexReader
    index = Client("http://host:8000")        # or IndexReader("index.duckdb")
    data = index.feature("my-sae", 123)       # a saedex.data.FeatureData either way

The GraphQL selections are derived from the records in saedex.data (snake_case fields are the
API's camelCase fields), so a field added to a record is asked for without touching this
module. Standard library only (urllib): importing the client loads neither torch nor DuckDB.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import typing
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from saedex import data
from saedex.errors import SaedexError

# Record fields the API does not serve: a neighbour's SAE (and a co-activating feature's) is
# the one asked about (filled in from the request, `context`).
_NOT_SERVED = {
    data.FeatureData: {"summary"},
    data.Neighbour: {"sae_id"},
    data.Coactivation: {"sae_id"},
}
# Record fields whose API name is not the camelCase of the field name.
_RENAMED = {
    (data.FeatureSummary, "sae_id"): "sae",
    (data.DocumentWindow, "sae_id"): "sae",
    (data.WindowFeature, "sae_id"): "sae",
    (data.Explanation, "sae_id"): "sae",
}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(data))


def _record_type(hint: Any) -> type | None:
    """The record class inside `hint` (X, list[X], X | None), if it is one."""
    for arg in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _api_name(cls: type, name: str) -> str:
    return _RENAMED.get((cls, name), camel(name))


def selection(cls: type) -> str:
    """The GraphQL selection set that fetches every served field of a record."""
    parts = []
    skip = _NOT_SERVED.get(cls, set())
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        nested = _record_type(_hints(cls)[f.name])
        api = _api_name(cls, f.name)
        parts.append(f"{api} {{ {selection(nested)} }}" if nested else api)
    return " ".join(parts)


def _value(hint: Any, value: Any, context: dict) -> Any:
    nested = _record_type(hint)
    if value is None:
        return None
    if nested is not None:
        if isinstance(value, list):
            return [record(nested, v, context) for v in value]
        return record(nested, value, context)
    if datetime in (hint, *typing.get_args(hint)):
        return datetime.fromisoformat(value)
    return value


def record(cls: type, obj: dict, context: dict | None = None, **known: Any) -> Any:
    """A saedex.data record from the API's JSON object for it, plus fields `known`; a field
    the API does not serve comes from `context` (e.g. the SAE asked about) or its default."""
    context = context or {}
    values = dict(known)
    for f in dataclasses.fields(cls):
        if f.name in values:
            continue
        if f.name in _NOT_SERVED.get(cls, set()):
            if f.name in context:
                values[f.name] = context[f.name]
            continue
        values[f.name] = _value(_hints(cls)[f.name], obj[_api_name(cls, f.name)], context)
    return cls(**values)


_SAE = selection(data.SaeInfo)
_SUMMARY = selection(data.FeatureSummary)
_FEATURE = f"{_SUMMARY} {selection(data.FeatureData)}"
_WINDOW = selection(data.DocumentWindow)
_EXPLANATION = selection(data.Explanation)
_ORDERS = {"index": "INDEX", "density": "DENSITY", "max_activation": "MAX_ACTIVATION"}


def _feature_data(obj: dict, sae_id: str) -> data.FeatureData:
    """The API's Feature holds the summary's fields at its top level, beside the rest."""
    context = {"sae_id": sae_id}
    summary = record(data.FeatureSummary, obj, context)
    return record(data.FeatureData, obj, context, summary=summary)


class Client:
    """A remote index: IndexReader's read methods over a saedex server's GraphQL API."""

    def __init__(self, url: str, timeout: float = 60.0):
        base = url.rstrip("/").removesuffix("/graphql")
        self.url = f"{base}/graphql"
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        """Nothing to release (one HTTP request per call); here so code can treat a Client
        and an IndexReader alike."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------

    def query(self, document: str, variables: dict | None = None) -> dict:
        """Run a GraphQL document; returns `data`, or raises SaedexError with the first error
        (the server's one-line message and its code)."""
        body, errors = self._post(document, variables or {})
        if errors:
            first = errors[0]
            code = (first.get("extensions") or {}).get("code")
            raise RemoteError(first.get("message", "request failed"), code)
        return body

    def _post(self, document: str, variables: dict) -> tuple[dict, list]:
        payload = json.dumps({"query": document, "variables": variables}).encode()
        request = urllib.request.Request(
            self.url, payload, {"Content-Type": "application/json", "Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                reply = json.loads(exc.read())
            except ValueError:
                raise SaedexError(f"{self.url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SaedexError(f"cannot reach saedex server at {self.url}: {reason}") from exc
        if not isinstance(reply, dict):
            raise SaedexError(f"{self.url} did not answer like a saedex server")
        return reply.get("data") or {}, reply.get("errors") or []

    def _optional(self, document: str, variables: dict, key: str) -> Any:
        """`data[key]`, or None where the server says NOT_FOUND (as the reader returns None)."""
        try:
            return self.query(document, variables)[key]
        except RemoteError as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise

    # -- IndexReader's methods -----------------------------------------------------------------

    def saes(self) -> list[data.SaeInfo]:
        found = self.query(f"{{ saes {{ {_SAE} }} }}")["saes"]
        return sorted((record(data.SaeInfo, s) for s in found), key=lambda s: s.id)

    def sae(self, sae_id: str) -> data.SaeInfo | None:
        found = self._optional(
            f"query ($id: ID!) {{ sae(id: $id) {{ {_SAE} }} }}", {"id": sae_id}, "sae"
        )
        return None if found is None else record(data.SaeInfo, found)

    def feature(self, sae_id: str, index: int) -> data.FeatureData | None:
        """Everything one dashboard shows, or None for an index out of range."""
        document = (
            "query ($sae: ID!, $index: Int!) { "
            f"feature(sae: $sae, index: $index) {{ {_FEATURE} }} }}"
        )
        found = self._optional(document, {"sae": sae_id, "index": index}, "feature")
        return None if found is None else _feature_data(found, sae_id)

    def _features(self, sae_id: str, indices: list[int], fields: str) -> dict[int, dict]:
        """One request for many features (aliased), skipping indices out of range."""
        if not indices:
            return {}
        info = self.sae(sae_id)
        if info is None:
            raise SaedexError(f"unknown SAE: {sae_id!r}")
        wanted = [i for i in dict.fromkeys(indices) if 0 <= i < info.d_sae]
        parts = [f"f{i}: feature(sae: $sae, index: {int(i)}) {{ {fields} }}" for i in wanted]
        found = self.query(f"query ($sae: ID!) {{ {' '.join(parts)} }}", {"sae": sae_id})
        return {i: found[f"f{i}"] for i in wanted if found.get(f"f{i}") is not None}

    def summaries(self, sae_id: str, indices: list[int]) -> dict[int, data.FeatureSummary]:
        found = self._features(sae_id, indices, _SUMMARY)
        return {i: record(data.FeatureSummary, obj) for i, obj in found.items()}

    def features(self, sae_id: str, indices: list[int]) -> dict[int, data.FeatureData]:
        """Several dashboards in one request."""
        found = self._features(sae_id, indices, _FEATURE)
        return {i: _feature_data(obj, sae_id) for i, obj in found.items()}

    def top_examples(
        self, sae_id: str, indices: list[int], first: int | None = None
    ) -> dict[int, list[data.Example]]:
        arg = "" if first is None else f"(first: {int(first)})"
        fields = f"topExamples{arg} {{ {selection(data.Example)} }}"
        found = self._features(sae_id, indices, fields)
        return {i: [record(data.Example, e) for e in found[i]["topExamples"]] for i in found}

    def explanations(self, sae_id: str, indices: list[int]) -> dict[int, list[data.Explanation]]:
        """Each feature's explanations, current ones first, as IndexReader.explanations."""
        found = self._features(sae_id, indices, f"explanations {{ {_EXPLANATION} }}")
        out = {i: [record(data.Explanation, x) for x in found[i]["explanations"]] for i in found}
        return {i: out.get(i, []) for i in indices}

    def vectors(
        self, sae_id: str, indices: list[int], kind: str = "decoder"
    ) -> dict[int, list[float]]:
        """Decoder rows ("decoder") or encoder columns ("encoder"), as IndexReader.vectors."""
        if kind not in ("decoder", "encoder"):
            raise SaedexError(f"vector kind must be decoder or encoder, got {kind!r}")
        found = self._features(sae_id, indices, kind)
        return {i: obj[kind] for i, obj in found.items()}

    def list_features(
        self,
        sae_id: str,
        order_by: str = "index",
        descending: bool = False,
        offset: int = 0,
        limit: int = 20,
        min_density: float | None = None,
        max_density: float | None = None,
        top_token: str | None = None,
        has_explanation: bool | None = None,
    ) -> data.FeaturePage:
        if order_by not in _ORDERS:
            raise SaedexError(f"cannot order features by {order_by!r}")
        order = f"{_ORDERS[order_by]}_{'DESC' if descending else 'ASC'}"
        after = base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode() if offset else None
        document = (
            "query ($sae: ID!, $first: Int, $after: String, $min: Float, $max: Float, "
            "$token: String, $explained: Boolean) { features(sae: $sae, first: $first, "
            f"after: $after, orderBy: {order}, minDensity: $min, maxDensity: $max, "
            "topToken: $token, hasExplanation: $explained) { totalCount "
            f"edges {{ node {{ {_SUMMARY} }} }} }} }}"
        )
        variables = {
            "sae": sae_id,
            "first": limit,
            "after": after,
            "min": min_density,
            "max": max_density,
            "token": top_token,
            "explained": has_explanation,
        }
        page = self.query(document, variables)["features"]
        items = [record(data.FeatureSummary, e["node"]) for e in page["edges"]]
        return data.FeaturePage(items, page["totalCount"])

    def search_features(
        self, sae_id: str, query: str, limit: int = 20
    ) -> list[tuple[int, list[str], int]]:
        document = (
            "query ($sae: ID!, $q: String!, $first: Int) { searchFeatures(sae: $sae, "
            "query: $q, first: $first) { index matchedTokens exampleMatches } }"
        )
        found = self.query(document, {"sae": sae_id, "q": query, "first": limit})
        return [
            (m["index"], m["matchedTokens"], m["exampleMatches"]) for m in found["searchFeatures"]
        ]

    # -- document windows (issue 19.4) ---------------------------------------------------------

    def document_window(
        self,
        sae_id: str,
        features: list[int | tuple[str, int]],
        *,
        context_id: int | None = None,
        position: int | None = None,
        document_id: str | None = None,
        offset: int = 0,
        before: int = 64,
        after: int = 64,
        live: bool = False,
    ) -> data.DocumentWindow:
        """IndexReader.document_window from the server; `live` re-runs the model on the
        joined window (a server with inference on)."""
        own = [f for f in features if not isinstance(f, tuple)]
        other = [{"sae": s, "index": i} for s, i in (f for f in features if isinstance(f, tuple))]
        document = (
            "query ($sae: ID!, $features: [Int!], $other: [FeatureRef!], $contextId: Int, "
            "$position: Int, $documentId: String, $offset: Int!, $before: Int!, $after: Int!, "
            "$live: Boolean!) { documentWindow(sae: $sae, features: $features, "
            "otherFeatures: $other, contextId: $contextId, position: $position, "
            "documentId: $documentId, offset: $offset, before: $before, after: $after, "
            f"live: $live) {{ {_WINDOW} }} }}"
        )
        variables = {
            "sae": sae_id,
            "features": own,
            "other": other,
            "contextId": context_id,
            "position": position,
            "documentId": document_id,
            "offset": offset,
            "before": before,
            "after": after,
            "live": live,
        }
        return record(data.DocumentWindow, self.query(document, variables)["documentWindow"])


class RemoteError(SaedexError):
    """An error the server answered with; `code` is its GraphQL error code, if any."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


__all__ = ["Client", "RemoteError", "record", "selection"]
