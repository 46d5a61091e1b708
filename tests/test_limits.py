"""The server's limits: node budget, aliases, tokens, time, body size (api/limits.py)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time

import duckdb
import httpx
import pytest
from graphql import GraphQLList, GraphQLNonNull, get_named_type, is_leaf_type
from starlette.testclient import TestClient

from saedex.api.app import create_app
from saedex.api.cost import BOUNDS, ListSizes
from saedex.api.rest import endpoints
from saedex.api.schema import build_schema
from saedex.config import ServeConfig
from tests.test_api import EXAMPLE, SAE, data, gql

ISSUE_ALIAS = (
    'f{i}: features(sae: "sae", first: 100) { edges { node { neighbours(first: 10) { '
    "feature { topExamples(first: 20) { tokens activations } } } } } }"
)
ISSUE_QUERY = "{ " + " ".join(ISSUE_ALIAS.replace("{i}", str(i)) for i in range(10)) + " }"
# The REST feature endpoint's document (every field of Feature, derived from the schema).
FEATURE_QUERY = next(
    e.document
    for e in endpoints(build_schema(ServeConfig())._schema)
    if e.path == "/api/features/{sae}/{index}"
)
PAGE_QUERY = f'{{ features(sae: "sae", first: 100) {{ edges {{ node {{ index topExamples(first: 20) {{ {EXAMPLE} }} }} }} }} }}'


def app_with(index, **limits):
    return create_app(index, ServeConfig(inference=False, **limits))


@pytest.fixture(scope="module")
def client(reader):  # noqa: F811
    with TestClient(app_with(reader)) as c:
        yield c


@pytest.fixture(scope="module")
def zero_budget(reader):  # noqa: F811
    """A server whose node budget is 0: every query with a list is refused and its error
    states the cost, which is how the tests read the computed cost."""
    with TestClient(app_with(reader, max_nodes=0)) as c:
        yield c


def cost(c: TestClient, query: str, variables: dict | None = None) -> int:
    body = gql(c, query, variables)
    if "errors" not in body:
        return 0
    (err,) = body["errors"]
    assert err["extensions"]["code"] == "MAX_NODE_LIMIT_EXCEEDED", err
    return int(re.search(r"could return ([\d,]+) nodes", err["message"])[1].replace(",", ""))


def nodes(value) -> int:
    """Brute force: the objects inside lists of a response (what the budget bounds)."""
    if isinstance(value, dict):
        return sum(nodes(v) for v in value.values())
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return len(value) + sum(nodes(v) for v in value)
    return 0


# -- node budget -------------------------------------------------------------------------------


def test_issue_query_is_refused_before_any_store_query(reader, monkeypatch):  # noqa: F811
    def no_store(*args):
        raise AssertionError("the store was queried")

    for name in ("list_features", "summaries", "top_examples", "neighbours"):
        monkeypatch.setattr(reader, name, no_store)
    with TestClient(app_with(reader)) as c:
        started = time.perf_counter()
        body = gql(c, ISSUE_QUERY)
        elapsed = time.perf_counter() - started
    (err,) = body["errors"]
    assert "data" not in body and err["extensions"]["code"] == "MAX_NODE_LIMIT_EXCEEDED"
    # 10 x (100 edges + 100 x 10 neighbours + 100 x 10 x 20 examples)
    assert "could return 211,000 nodes; the limit is 50,000" in err["message"]
    print(f"issue query refused in {elapsed * 1000:.1f} ms")


def test_default_budget_admits_the_rest_feature_query_and_a_page_of_100(client):
    assert client.get("/api/features/sae/3").status_code == 200
    edges = data(client, PAGE_QUERY)["features"]["edges"]
    assert len(edges) == 64 and all(len(e["node"]["topExamples"]) == 20 for e in edges)


def test_costs_of_the_reference_queries(zero_budget):
    assert cost(zero_budget, PAGE_QUERY) == 100 + 100 * 20
    # 10 top + 10 bottom logits, 20 examples, 10 intervals x 5 examples, 10 neighbours,
    # explanations (not capped per feature: a page, 100), a family's parents (one per SAE: 1)
    # and children (MAX_CHILDREN, 100)
    found = cost(zero_budget, FEATURE_QUERY, {"sae": SAE, "index": 1})
    assert found == 10 + 10 + 20 + 60 + 10 + 100 + 1 + 100
    assert cost(zero_budget, '{ feature(sae: "sae", index: 1) { index density } }') == 0


@pytest.mark.parametrize(
    "query",
    [
        # every list filled to its bound in the tiny index (64 features, 20 examples each)
        '{ features(sae: "sae", first: 64) { edges { node { topExamples { contextId } '
        "neighbours { cosine feature { topLogits(first: 3) { token } } } } } } }",
        '{ a: feature(sae: "sae", index: 2) { ...F } b: feature(sae: "sae", index: 9) { ...F } }'
        " fragment F on Feature { topExamples(first: 7) { contextId } "
        "bottomLogits { token } ... on Feature { neighbours(first: 4) { index } } }",
        '{ saes { id } feature(sae: "sae", index: 0) { intervalSamples { index } } }',
    ],
)
def test_cost_equals_the_nodes_a_full_response_holds(client, zero_budget, query):
    assert cost(zero_budget, query) == nodes(data(client, query))


def test_variables_cost_the_same_as_literals(zero_budget):
    literal = '{ features(sae: "sae", first: 30) { edges { node { topExamples(first: 4) { contextId } } } } }'
    query = (
        'query ($n: Int, $k: Int = 4) { features(sae: "sae", first: $n) '
        "{ edges { node { topExamples(first: $k) { contextId } } } } }"
    )
    assert cost(zero_budget, query, {"n": 30}) == cost(zero_budget, literal) == 30 + 30 * 4
    assert cost(zero_budget, query, {"n": 30, "k": 1}) == 30 + 30
    # an absent `first` takes the argument's default (20), and a null one the field's bound
    assert cost(zero_budget, query, {}) == 20 + 20 * 4
    assert cost(zero_budget, query, {"k": None}) == 20 + 20 * 20


def test_the_validation_cache_does_not_mix_variables(reader):  # noqa: F811
    query = (
        'query ($n: Int) { features(sae: "sae", first: $n) '
        "{ edges { node { topExamples(first: 20) { contextId } } } } }"
    )
    with TestClient(app_with(reader, max_nodes=1000)) as c:
        for n, admitted in [(10, True), (60, False), (10, True), (47, True), (48, False)]:
            body = gql(c, query, {"n": n})
            assert ("errors" not in body) == admitted, (n, body)


def test_a_repeated_document_is_validated_once(client):
    """The limits' rule classes are made once (and the budget's once per cost-relevant
    variable values), so strawberry's ValidationCache keeps working: the issue query is
    refused from the cache after its first time."""
    from strawberry.extensions.validation_cache import DEFAULT_MAXSIZE, _get_validate_cache

    cache = _get_validate_cache(DEFAULT_MAXSIZE)
    for i in range(3):
        before = cache.cache_info()
        client.post("/graphql", json={"query": ISSUE_QUERY})
        client.get(f"/api/features/sae/{i}")
        after = cache.cache_info()
        if i:
            assert (after.hits - before.hits, after.misses - before.misses) == (2, 0)


def test_fragment_cycles_and_deep_nesting_are_refused_cleanly(client):
    cyclic = (
        '{ feature(sae: "sae", index: 1) { ...F } } '
        "fragment F on Feature { neighbours { feature { ...F } } }"
    )
    body = gql(client, cyclic)
    assert "data" not in body and "Cannot spread fragment 'F' within itself." in str(body)
    deep = '{ feature(sae: "sae", index: 1) { ' + "neighbours { feature { " * 40 + "index"
    body = gql(client, deep + " } }" * 40 + " } }")
    codes = {e.get("extensions", {}).get("code") for e in body["errors"]}
    assert "data" not in body and "MAX_NODE_LIMIT_EXCEEDED" in codes
    assert "could return 1.11e+40 nodes" in str(body)


def test_live_inference_costs_by_text_length_and_top_k(zero_budget):
    query = (
        'query ($t: String!, $k: Int!) { activeFeatures(sae: "sae", text: $t, topK: $k) '
        "{ positions { features { index } } features { index } } }"
    )
    text = "the quick fox"
    assert cost(zero_budget, query, {"t": text, "k": 3}) == len(text) * (1 + 3) + 3


def test_rest_live_inference_within_the_budget(client):
    """The REST endpoint asks for `positions`: a 2,000-character text costs 2,000 x (1 + topK)
    + topK nodes, so topK 23 passes the budget (then meets --no-inference) and 24 does not."""
    body = {"sae": SAE, "text": "a" * 2000}
    admitted = client.post("/api/active-features", json={**body, "topK": 23})
    refused = client.post("/api/active-features", json={**body, "topK": 24})
    assert admitted.status_code == 503 and admitted.json()["code"] == "UNAVAILABLE"
    assert refused.status_code == 400 and refused.json()["code"] == "MAX_NODE_LIMIT_EXCEEDED"
    assert "could return 50,024 nodes; the limit is 50,000" in refused.json()["error"]


def test_every_list_of_objects_has_a_bound():
    """A list field with neither `first` nor an entry in BOUNDS would be counted at the page
    limit; a new list field must say how many items it can hold."""
    schema = build_schema(ServeConfig())._schema
    missing = []
    for type_ in schema.type_map.values():
        for name, field in getattr(type_, "fields", {}).items():
            inner = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
            is_list_of_objects = isinstance(inner, GraphQLList) and not is_leaf_type(
                get_named_type(inner)
            )
            coordinate = f"{type_.name}.{name}"
            if is_list_of_objects and "first" not in field.args and coordinate not in BOUNDS:
                missing.append(coordinate)
    assert [m for m in missing if not m.startswith("__")] == []  # introspection types aside


def test_list_sizes_come_from_the_index(reader):  # noqa: F811
    sizes = ListSizes.of(reader.saes(), ServeConfig(max_page_size=7))
    assert (sizes.saes, sizes.top_k, sizes.n_intervals, sizes.max_page_size) == (1, 20, 10, 7)


# -- aliases and tokens --------------------------------------------------------------------------


def test_alias_limit(reader):  # noqa: F811
    query = "{ " + " ".join(f'a{i}: sae(id: "sae") {{ id }}' for i in range(4)) + " }"
    with TestClient(app_with(reader, max_aliases=3)) as c:
        body = gql(c, query)
    assert "data" not in body and "4 aliases found. Allowed: 3" in body["errors"][0]["message"]


def test_token_limit(reader):  # noqa: F811
    with TestClient(app_with(reader, max_tokens=20)) as c:
        assert data(c, '{ sae(id: "sae") { id dSae } }')
        body = gql(c, "{ saes { " + "id " * 30 + "} }")
    assert "data" not in body and "more than 20 tokens" in body["errors"][0]["message"]


# -- time limit ----------------------------------------------------------------------------------

SLOW_SQL = "SELECT count(*) FROM range(1000000000) a, range(1000) b WHERE a.range + b.range = 7"


class CursorRecorder:
    """A connection that remembers the cursors it hands out."""

    def __init__(self, con):
        self.con = con
        self.cursors = []

    def cursor(self):
        self.cursors.append(self.con.cursor())
        return self.cursors[-1]

    def interrupt_all(self) -> None:
        for cursor in self.cursors:
            with contextlib.suppress(duckdb.Error):  # closed ones
                cursor.interrupt()

    def __getattr__(self, name):
        return getattr(self.con, name)


def test_slow_query_is_interrupted_while_others_are_answered(reader, monkeypatch):  # noqa: F811
    """A store query that would run for hours is stopped at the deadline (TIMEOUT, REST 504)
    and frees its thread; requests sent meanwhile are answered while it runs."""
    real = reader.top_examples

    def slow_for_feature_7(sae_id, indices, *args):
        if 7 in indices:
            reader._rows(SLOW_SQL)
        return real(sae_id, indices, *args)

    monkeypatch.setattr(reader, "top_examples", slow_for_feature_7)
    # If the deadline failed to interrupt, this watchdog would, so the test fails, not hangs.
    recorder = CursorRecorder(reader._con)
    monkeypatch.setattr(reader, "_con", recorder)
    watchdog = threading.Timer(60, recorder.interrupt_all)
    watchdog.start()
    app = app_with(reader, query_time_limit_s=2.0)
    query = '{ feature(sae: "sae", index: 7) { index topExamples { contextId } } }'

    async def run() -> tuple[httpx.Response, httpx.Response, list[httpx.Response], int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            slow = asyncio.ensure_future(c.post("/graphql", json={"query": query}))
            rest = asyncio.ensure_future(c.get("/api/features/sae/7"))
            fast, fast_during = [], 0
            while not (slow.done() and rest.done()):
                fast.append(await c.get(f"/api/features/sae/{len(fast) % 7}"))
                fast_during += not slow.done()
            return await slow, await rest, fast, fast_during

    started = time.perf_counter()
    try:
        slow, rest, fast, fast_during = asyncio.run(run())
    finally:
        watchdog.cancel()
    elapsed = time.perf_counter() - started
    body = slow.json()
    assert body["data"] == {"feature": None}
    assert body["errors"][0]["extensions"]["code"] == "TIMEOUT"
    assert "time limit of 2 s" in body["errors"][0]["message"]
    assert rest.status_code == 504 and rest.json()["code"] == "TIMEOUT"
    assert fast_during and all(r.status_code == 200 for r in fast)
    assert 2 <= elapsed < 10  # stopped at the deadline, not after the query's hours
    print(f"{fast_during} requests answered while the slow one ran; stopped after {elapsed:.2f} s")


def test_no_deadline_outside_the_api(reader):  # noqa: F811
    assert reader._rows("SELECT 42") == [(42,)]


# -- body size -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/graphql", "/api/active-features"])
def test_body_over_the_cap_is_413(reader, path):  # noqa: F811
    big = b'{"query": "' + b" " * 2000 + b'{ saes { id } }"}'
    with TestClient(app_with(reader, max_body_bytes=1000)) as c:
        declared = c.post(path, content=big, headers={"content-type": "application/json"})
        streamed = c.post(
            path,
            content=iter([big[:600], big[600:]]),  # chunked: no Content-Length to trust
            headers={"content-type": "application/json"},
        )
        small = c.post("/graphql", json={"query": "{ saes { id } }"})
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json() == {
            "error": "the request body is larger than the limit of 1,000 bytes",
            "code": "PAYLOAD_TOO_LARGE",
        }
    assert "content-length" not in streamed.request.headers
    assert small.status_code == 200 and small.json()["data"]["saes"][0]["id"] == SAE
