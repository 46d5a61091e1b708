"""The query API over a real index of the tiny fixtures, through a real HTTP client."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import pytest
from starlette.testclient import TestClient

from saedex.api.app import create_app
from saedex.api.inference import InferenceEngine
from saedex.config import IndexConfig, ServeConfig
from saedex.indexer.indexing import IndexJob, run_index
from saedex.store import IndexReader
from saedex.store.views import connect
from tests.conftest import API_SAE as SAE
from tests.conftest import build_tiny_sae

EXAMPLE = "contextId documentId source tokens tokenIds activations maxActivation maxTokenIndex"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def client(reader, engine) -> TestClient:
    with TestClient(create_app(reader, ServeConfig(), engine)) as c:
        yield c


def gql(client: TestClient, query: str, variables: dict | None = None) -> dict:
    response = client.post("/graphql", json={"query": query, "variables": variables or {}})
    assert response.status_code == 200, response.text
    return response.json()


def data(client: TestClient, query: str, variables: dict | None = None) -> dict:
    body = gql(client, query, variables)
    assert "errors" not in body, body["errors"]
    return body["data"]


def error(client: TestClient, query: str, variables: dict | None = None) -> dict:
    """The one error of a query that must fail; its field is null, not a 500."""
    body = gql(client, query, variables)
    assert len(body["errors"]) == 1, body
    if "data" in body and body["data"] is not None:
        assert all(v is None for v in body["data"].values())
    return body["errors"][0]


# -- SAEs --------------------------------------------------------------------------------------

SAE_FIELDS = (
    "id modelName hookName hookLayer architecture dIn dSae saePath corpus contextSize "
    "prependBos nDocuments nSkippedDocuments nContexts nTokens nExcludedTokens deadFeatures "
    "status settings startedAt finishedAt durationS"
)


def test_saes_and_sae_carry_every_run_field(client, reader):
    info = reader.sae(SAE)
    got = data(client, f'{{ saes {{ {SAE_FIELDS} }} sae(id: "{SAE}") {{ id dSae }} }}')
    (sae,) = got["saes"]
    assert sae["id"] == SAE and got["sae"] == {"id": SAE, "dSae": info.d_sae}
    assert (sae["modelName"], sae["hookName"], sae["dIn"]) == (
        Path(info.model_name).name,  # a local model directory: its name, not its path
        info.hook_name,
        info.d_in,
    )
    assert sae["nTokens"] == info.n_tokens and sae["nExcludedTokens"] == info.n_excluded_tokens
    assert sae["settings"]["context_size"] == 48 and sae["status"] == "complete"
    assert sae["startedAt"] and sae["finishedAt"] and sae["durationS"] > 0


def test_no_local_paths_are_published(client, reader):
    """The publisher's absolute paths stay private: names only."""
    info = reader.sae(SAE)
    assert Path(info.sae_path).is_absolute() and Path(info.corpus).is_absolute()
    (sae,) = data(client, "{ saes { modelName saePath corpus } }")["saes"]
    assert sae == {
        "modelName": Path(info.model_name).name,
        "saePath": Path(info.sae_path).name,
        "corpus": Path(info.corpus).name,
    }
    assert str(Path(info.sae_path).parent) not in client.get("/api/saes").text


def test_unknown_sae_is_null_plus_error(client):
    for query in (
        '{ sae(id: "nope") { id } }',
        '{ feature(sae: "nope", index: 0) { index } }',
        '{ features(sae: "nope") { totalCount } }',
        '{ searchFeatures(sae: "nope", query: "a") { index } }',
        '{ activeFeatures(sae: "nope", text: "a") { tokens } }',
    ):
        err = error(client, query)
        assert err["extensions"]["code"] == "NOT_FOUND" and "nope" in err["message"]


# -- one feature -------------------------------------------------------------------------------

FEATURE_QUERY = f"""
query ($sae: ID!, $index: Int!) {{ feature(sae: $sae, index: $index) {{
  sae index nActive density maxActivation meanActivation skew kurtosis
  histogram {{ binEdges counts }} logitHistogram {{ binEdges counts }}
  topLogits {{ token tokenId value }} bottomLogits {{ token tokenId value }}
  topExamples {{ {EXAMPLE} }}
  intervalSamples {{ index low high fraction examples {{ {EXAMPLE} }} }}
  neighbours {{ index cosine feature {{ index density }} }}
}} }}
"""


def _example(e) -> dict:
    return {
        "contextId": e.context_id,
        "documentId": e.document_id,
        "source": e.source,
        "tokens": e.tokens,
        "tokenIds": e.token_ids,
        "activations": pytest.approx(e.activations),
        "maxActivation": pytest.approx(e.max_activation),
        "maxTokenIndex": e.max_token_index,
    }


def _logits(entries) -> list[dict]:
    return [
        {"token": e.token, "tokenId": e.token_id, "value": pytest.approx(e.value)} for e in entries
    ]


def test_feature_has_every_field_equal_to_the_store(client, reader):
    index = 5
    want = reader.feature(SAE, index)
    got = data(client, FEATURE_QUERY, {"sae": SAE, "index": index})["feature"]
    s = want.summary
    assert got["sae"] == SAE and got["index"] == index and got["nActive"] == s.n_active
    assert got["density"] == pytest.approx(s.density)
    assert got["maxActivation"] == pytest.approx(s.max_activation)
    assert got["meanActivation"] == pytest.approx(s.mean_activation)
    assert got["skew"] == pytest.approx(s.skew) and got["kurtosis"] == pytest.approx(s.kurtosis)
    assert got["histogram"] == {
        "binEdges": pytest.approx(want.histogram.bin_edges),
        "counts": want.histogram.counts,
    }
    assert got["logitHistogram"]["counts"] == want.logit_histogram.counts
    assert got["topLogits"] == _logits(s.top_logits)
    assert got["bottomLogits"] == _logits(want.bottom_logits)
    assert got["topExamples"] == [_example(e) for e in want.top_examples]
    assert len(got["topExamples"]) == 20 and got["topExamples"][0]["tokens"][0] == "<bos>"
    assert [(i["index"], i["fraction"]) for i in got["intervalSamples"]] == [
        (i.index, pytest.approx(i.fraction)) for i in want.interval_samples
    ]
    assert got["intervalSamples"][0]["examples"] == [
        _example(e) for e in want.interval_samples[0].examples
    ]
    assert [(n["index"], n["cosine"]) for n in got["neighbours"]] == [
        (n.index, pytest.approx(n.cosine)) for n in want.neighbours
    ]
    first = got["neighbours"][0]
    assert first["feature"]["index"] == first["index"]


def test_tokens_are_the_decoded_vocab(client, reader):
    got = data(
        client, '{ feature(sae: "sae", index: 1) { topExamples(first: 1) { tokens tokenIds } } }'
    )
    (example,) = got["feature"]["topExamples"]
    vocab = reader.vocab(reader.sae(SAE).model_name)
    assert example["tokens"] == [vocab[t] for t in example["tokenIds"]]


@pytest.mark.parametrize("n", [0, 1, 3])
def test_first_arguments_cut_lists(client, n):
    got = data(
        client,
        'query ($n: Int!) { feature(sae: "sae", index: 2) { topExamples(first: $n) '
        "{ contextId } topLogits(first: $n) { token } bottomLogits(first: $n) { token } "
        "neighbours(first: $n) { index } } }",
        {"n": n},
    )["feature"]
    assert [len(v) for v in got.values()] == [n] * 4


@pytest.mark.parametrize("index", [-1, 64, 10**6])
def test_unknown_feature_index_is_null_plus_error(client, index):
    err = error(
        client, 'query ($i: Int!) { feature(sae: "sae", index: $i) { index } }', {"i": index}
    )
    assert err["extensions"]["code"] == "NOT_FOUND" and "0..63" in err["message"]


@pytest.mark.parametrize(
    "query",
    [
        '{ features(sae: "sae", first: 101) { totalCount } }',
        '{ features(sae: "sae", first: -1) { totalCount } }',
        '{ feature(sae: "sae", index: 0) { topExamples(first: 500) { tokens } } }',
        '{ feature(sae: "sae", index: 0) { neighbours(first: 101) { index } } }',
        '{ searchFeatures(sae: "sae", query: "a", first: 1000) { index } }',
    ],
)
def test_page_size_limit(client, query):
    err = error(client, query)
    assert err["extensions"]["code"] == "BAD_USER_INPUT" and "between 0 and 100" in err["message"]


# -- listing -----------------------------------------------------------------------------------

PAGE = """
query ($after: String, $first: Int, $order: FeatureOrder, $min: Float, $max: Float, $tok: String) {
  features(sae: "sae", first: $first, after: $after, orderBy: $order, minDensity: $min,
           maxDensity: $max, topToken: $tok) {
    totalCount
    edges { cursor node { index density maxActivation topLogits { token } } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""


def walk(client: TestClient, **variables) -> tuple[list[dict], list[dict]]:
    """Every node of a listing, page by page, and the pages."""
    nodes, pages, after = [], [], None
    while True:
        page = data(client, PAGE, {**variables, "after": after})["features"]
        pages.append(page)
        nodes += [e["node"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return nodes, pages
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]


def test_pagination_round_trips_every_feature_once(client):
    nodes, pages = walk(client, first=7)
    assert [n["index"] for n in nodes] == list(range(64))
    assert len(pages) == 10 and all(p["totalCount"] == 64 for p in pages)
    assert not pages[0]["pageInfo"]["hasPreviousPage"] and pages[1]["pageInfo"]["hasPreviousPage"]
    assert [len(p["edges"]) for p in pages] == [7] * 9 + [1]


def test_page_after_the_end_is_empty(client):
    last = data(client, PAGE, {"first": 64})["features"]["pageInfo"]["endCursor"]
    page = data(client, PAGE, {"after": last})["features"]
    assert page["edges"] == [] and page["totalCount"] == 64
    assert page["pageInfo"] == {
        "hasNextPage": False,
        "hasPreviousPage": True,
        "startCursor": None,
        "endCursor": None,
    }


@pytest.mark.parametrize("cursor", ["garbage", "b2Zmc2V0Oi0x", "bm9wZToz"])
def test_bad_cursor_is_an_input_error(client, cursor):
    err = error(client, PAGE, {"after": cursor})
    assert err["extensions"]["code"] == "BAD_USER_INPUT" and "cursor" in err["message"]


@pytest.mark.parametrize(
    ("order", "key", "reverse"),
    [
        ("INDEX_DESC", "index", True),
        ("DENSITY_ASC", "density", False),
        ("DENSITY_DESC", "density", True),
        ("MAX_ACTIVATION_ASC", "maxActivation", False),
        ("MAX_ACTIVATION_DESC", "maxActivation", True),
    ],
)
def test_ordering(client, order, key, reverse):
    nodes, _ = walk(client, first=30, order=order)
    assert len(nodes) == 64
    values = [n[key] for n in nodes]
    assert values == sorted(values, reverse=reverse)
    assert values != sorted(values, reverse=not reverse)


def test_density_filters_and_total_count(client, reader):
    densities = {s.index: s.density for s in reader.summaries(SAE, list(range(64))).values()}
    low, high = sorted(densities.values())[10], sorted(densities.values())[50]
    nodes, pages = walk(client, first=9, min=low, max=high, order="DENSITY_ASC")
    want = sorted(i for i, d in densities.items() if low <= d <= high)
    assert sorted(n["index"] for n in nodes) == want
    assert pages[0]["totalCount"] == len(want) == 41


def test_top_token_filter(client, reader):
    token = reader.summaries(SAE, [7])[7].top_logits[0].token
    nodes, pages = walk(client, first=100, tok=token)
    assert 7 in [n["index"] for n in nodes]
    assert all(any(t["token"] == token for t in n["topLogits"]) for n in nodes)
    assert pages[0]["totalCount"] == len(nodes)


# -- search ------------------------------------------------------------------------------------

SEARCH = """query ($q: String!) { searchFeatures(sae: "sae", query: $q, first: 100) {
  index matchedTokens exampleMatches feature { index topLogits { token } } } }"""


def test_search_finds_top_logit_tokens(client, reader):
    token = reader.summaries(SAE, [11])[11].top_logits[0].token
    hits = data(client, SEARCH, {"q": token.strip().upper()})["searchFeatures"]
    hit = next(h for h in hits if h["index"] == 11)
    assert token in hit["matchedTokens"] and hit["feature"]["index"] == 11
    assert all(token.strip().lower() in t.lower() for h in hits for t in h["matchedTokens"])


def test_search_finds_example_text(client, reader):
    word = "wizards"
    hits = data(client, SEARCH, {"q": word})["searchFeatures"]
    assert hits and all(h["exampleMatches"] > 0 or h["matchedTokens"] for h in hits)
    index = hits[0]["index"]
    texts = ["".join(e.tokens) for e in reader.top_examples(SAE, [index])[index]]
    assert sum(word in t for t in texts) == hits[0]["exampleMatches"]


def test_search_without_match_and_bad_query(client):
    assert data(client, SEARCH, {"q": "zzzqqq"})["searchFeatures"] == []
    for q in ("   ", "x" * 201):
        assert error(client, SEARCH, {"q": q})["extensions"]["code"] == "BAD_USER_INPUT"


# -- live inference ----------------------------------------------------------------------------

ACTIVE = """query ($text: String!, $k: Int) { activeFeatures(sae: "sae", text: $text, topK: $k) {
  sae tokens tokenIds excluded
  positions { position token tokenId excluded features { index value } }
  features { index maxValue maxTokenIndex values feature { index } }
} }"""


def _document(corpus: Path, doc_id: str) -> str:
    for line in corpus.read_text().splitlines():
        row = json.loads(line)
        if row["id"] == doc_id:
            return row["text"]
    raise KeyError(doc_id)


def _index_activations(db: Path, doc_id: str) -> tuple[dict, set]:
    """The index's own activations for a document: {(text position, feature): value}, and
    its excluded text positions (BOS dropped, contexts laid end to end)."""
    con = connect(db)  # every run of the index, as readers see them
    rows = con.execute(
        "SELECT c.token_start + a.position - 1, a.feature, a.value FROM activations a "
        "JOIN contexts c USING (sae_id, context_id) JOIN documents d USING (sae_id, doc_index) "
        "WHERE d.doc_id = ?",
        [doc_id],
    ).fetchall()
    excluded = con.execute(
        "SELECT c.token_start + x.position - 1 FROM excluded_tokens x "
        "JOIN contexts c USING (sae_id, context_id) JOIN documents d USING (sae_id, doc_index) "
        "WHERE d.doc_id = ?",
        [doc_id],
    ).fetchall()
    con.close()
    return {(p, f): v for p, f, v in rows}, {r[0] for r in excluded}


@pytest.fixture(scope="module")
def topk_db(tmp_path_factory, tiny_model, tiny_corpus) -> Path:
    """A TopK SAE's index (its sparse encode path), over the first documents only."""
    root = tmp_path_factory.mktemp("api-topk")
    sae = build_tiny_sae(root / "topk-sae", architecture="topk", seed=1)
    cfg = IndexConfig(context_size=40, batch_size=8, sink_norm_multiple=1.3, max_documents=6)
    job = IndexJob(str(tiny_model), str(sae), str(tiny_corpus), root / "i.duckdb", SAE, config=cfg)
    run_index(job, False)
    return root / "i.duckdb"


@pytest.mark.parametrize("which", ["standard", "topk"])
def test_active_features_equal_the_index_on_a_whole_document(
    which, request, api_db, client, engine, tiny_corpus
):
    """A document given as text gets exactly the index's activations, sinks included."""
    doc = "doc-3"
    db = api_db if which == "standard" else request.getfixturevalue("topk_db")
    want, want_excluded = _index_activations(db, doc)
    text = _document(tiny_corpus, doc)
    if which == "standard":
        got = data(client, ACTIVE, {"text": text, "k": 100})["activeFeatures"]
    else:
        with IndexReader(db) as r, TestClient(create_app(r, ServeConfig(), engine)) as c:
            got = data(c, ACTIVE, {"text": text, "k": 100})["activeFeatures"]
    assert len(got["tokens"]) > 48  # spans several contexts
    assert {i for i, x in enumerate(got["excluded"]) if x} == want_excluded != set()
    values = {
        (p, f["index"]): v for f in got["features"] for p, v in enumerate(f["values"]) if v != 0
    }
    assert values.keys() == want.keys()
    for key, value in want.items():
        assert values[key] == pytest.approx(value, rel=1e-4, abs=1e-4)


def test_active_features_shapes_and_ranking(client, reader):
    got = data(client, ACTIVE, {"text": "the quick brown fox jumps over", "k": 3})["activeFeatures"]
    n = len(got["tokens"])
    vocab = reader.vocab(reader.sae(SAE).model_name)
    assert got["sae"] == SAE and got["tokens"] == [vocab[t] for t in got["tokenIds"]]
    assert [p["position"] for p in got["positions"]] == list(range(n))
    assert [p["token"] for p in got["positions"]] == got["tokens"]
    assert len(got["features"]) == 3
    maxima = [f["maxValue"] for f in got["features"]]
    assert maxima == sorted(maxima, reverse=True)
    for f in got["features"]:
        assert len(f["values"]) == n and max(f["values"]) == pytest.approx(f["maxValue"])
        assert f["values"][f["maxTokenIndex"]] == pytest.approx(f["maxValue"])
        assert f["feature"]["index"] == f["index"]
    for p in got["positions"]:
        vals = [x["value"] for x in p["features"]]
        assert len(vals) <= 3 and vals == sorted(vals, reverse=True)
        assert not (p["excluded"] and p["features"])


@pytest.mark.parametrize(
    ("text", "k", "fragment"),
    [
        ("", 5, "empty"),
        ("   ", 5, "empty"),
        ("a" * 2001, 5, "limit is 2000"),
        ("fox", 0, "topK"),
        ("fox", 101, "topK"),
    ],
)
def test_active_features_limits(client, text, k, fragment):
    err = error(client, ACTIVE, {"text": text, "k": k})
    assert err["extensions"]["code"] == "BAD_USER_INPUT" and fragment in err["message"]


def test_text_limit_is_configurable(reader, engine):
    with TestClient(create_app(reader, ServeConfig(max_text_chars=10), engine)) as c:
        assert "limit is 10" in error(c, ACTIVE, {"text": "a" * 11})["message"]
        assert data(c, ACTIVE, {"text": "a" * 10})["activeFeatures"]["tokens"]


def test_no_inference_mode(reader):
    app = create_app(reader, ServeConfig(inference=False))
    with TestClient(app) as c:
        err = error(c, ACTIVE, {"text": "fox"})
        assert err["extensions"]["code"] == "UNAVAILABLE" and "--no-inference" in err["message"]
        assert data(c, '{ feature(sae: "sae", index: 0) { index } }')["feature"]["index"] == 0
        response = c.post("/api/active-features", json={"sae": SAE, "text": "fox"})
        assert response.status_code == 503 and "--no-inference" in response.json()["error"]


def test_concurrent_live_requests_share_a_forward(reader):
    """Concurrent requests are batched (tests/test_live.py compares values brute force)."""
    engine = InferenceEngine("cpu", config=ServeConfig(batch_window_ms=50))
    app = create_app(reader, ServeConfig(), engine)
    texts = [f"the {w} fox" for w in ("quick", "lazy", "golden", "purple", "seven", "brown")]

    async def run() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            responses = await asyncio.gather(
                *(
                    c.post("/graphql", json={"query": ACTIVE, "variables": {"text": t}})
                    for t in texts
                )
            )
            return [r.json()["data"]["activeFeatures"] for r in responses]

    together = asyncio.run(run())
    assert max(engine.batch_sizes) > 1
    with TestClient(app) as c:
        alone = [data(c, ACTIVE, {"text": t})["activeFeatures"] for t in texts]
    for t, a in zip(together, alone, strict=True):
        assert t["tokens"] == a["tokens"] and t["excluded"] == a["excluded"]
        assert [f["index"] for f in t["features"]] == [f["index"] for f in a["features"]]
        for ft, fa in zip(t["features"], a["features"], strict=True):
            assert ft["values"] == pytest.approx(fa["values"], rel=1e-4, abs=1e-4)


# -- REST --------------------------------------------------------------------------------------


def test_rest_saes_and_feature_mirror_graphql(client):
    saes = client.get("/api/saes")
    assert saes.status_code == 200 and [s["id"] for s in saes.json()] == [SAE]
    rest = client.get("/api/features/sae/5")
    assert rest.status_code == 200
    feature = rest.json()
    graph = data(client, FEATURE_QUERY, {"sae": SAE, "index": 5})["feature"]
    assert feature["topExamples"] == graph["topExamples"]
    assert feature["density"] == graph["density"] and feature["histogram"] == graph["histogram"]
    assert [n["index"] for n in feature["neighbours"]] == [n["index"] for n in graph["neighbours"]]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/api/features/nope/1", None, 404),
        ("GET", "/api/features/sae/64", None, 404),
        ("GET", "/api/features/sae/abc", None, 422),
        ("GET", "/api/nothing", None, 404),
        ("POST", "/api/saes", None, 405),
        ("POST", "/api/active-features", b"{not json", 400),
        ("POST", "/api/active-features", b"[1, 2]", 422),
        ("POST", "/api/active-features", b'{"sae": "sae"}', 422),
        ("POST", "/api/active-features", b'{"sae": "sae", "text": "a", "topK": "3"}', 422),
        ("POST", "/api/active-features", b'{"sae": "sae", "text": ""}', 422),
        ("POST", "/api/active-features", b'{"sae": "nope", "text": "a"}', 404),
    ],
)
def test_rest_errors_are_json_with_status(client, method, path, body, status):
    response = client.request(method, path, content=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] and response.json()["code"]


def test_rest_active_features(client):
    response = client.post("/api/active-features", json={"sae": SAE, "text": "fox", "topK": 2})
    assert response.status_code == 200
    body = response.json()
    graph = data(client, ACTIVE, {"text": "fox", "k": 2})["activeFeatures"]
    assert body["tokens"] == graph["tokens"] and len(body["features"]) == 2
    assert [f["index"] for f in body["features"]] == [f["index"] for f in graph["features"]]


def openapi_schema(doc: dict, path: str, method: str, status: int) -> dict:
    """A response's JSON Schema, with the document's components for its $refs."""
    response = doc["paths"][path][method]["responses"][str(status)]
    return {**response["content"]["application/json"]["schema"], "components": doc["components"]}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("get", "/api/saes", None, 200),
        ("get", "/api/features/{sae}/{index}", ("sae", 5), 200),
        ("get", "/api/features/{sae}/{index}", ("sae", 0), 200),
        ("get", "/api/features/{sae}/{index}", ("sae", 64), 404),
        ("get", "/api/features/{sae}/{index}", ("sae", 2**31), 422),
        ("get", "/api/features/{sae}/{index}", ("nope", 1), 404),
        ("post", "/api/active-features", {"sae": SAE, "text": "the fox", "topK": 3}, 200),
        ("post", "/api/active-features", {"sae": SAE, "text": "x" * 3000}, 422),
        ("post", "/api/active-features", {"sae": "nope", "text": "a"}, 404),
    ],
)
def test_rest_responses_validate_against_the_openapi_document(client, method, path, body, status):
    """Real answers checked by jsonschema against the served document: every key declared,
    every type right, every status listed (additionalProperties is false on every object)."""
    doc = client.get("/api/openapi.json").json()
    if method == "get":
        url = path.format(sae=body[0], index=body[1]) if body else path
        response = client.get(url)
    else:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    jsonschema.validate(response.json(), openapi_schema(doc, path, method, status))


def test_openapi_walks_the_schema(client):
    """Every field of the GraphQL record types is in the REST answer, and the server's own
    limits are the document's bounds."""
    doc = client.get("/api/openapi.json").json()
    schemas = doc["components"]["schemas"]
    introspected = data(client, '{ __type(name: "Sae") { fields { name } } }')["__type"]
    assert set(schemas["Sae"]["properties"]) == {f["name"] for f in introspected["fields"]}
    body = doc["paths"]["/api/active-features"]["post"]["requestBody"]
    props = body["content"]["application/json"]["schema"]["properties"]
    assert props["topK"]["maximum"] == ServeConfig().max_active_top_k
    assert props["text"]["maxLength"] == ServeConfig().max_text_chars
    (index,) = [
        p
        for p in doc["paths"]["/api/features/{sae}/{index}"]["get"]["parameters"]
        if p["name"] == "index"
    ]
    assert index["schema"]["minimum"] == 0 and index["schema"]["maximum"] == 2**31 - 1


def test_rest_index_past_int32_is_a_declared_422(client):
    """issue 21: an index above 2^31 was an undeclared 400."""
    response = client.get(f"/api/features/sae/{2**31}")
    assert response.status_code == 422 and "index" in response.json()["error"]


def test_rest_integral_float_top_k_is_accepted(client):
    """issue 21: JSON Schema's integer admits 2.0; the server now does too (and refuses 2.5)."""
    ok = client.post("/api/active-features", json={"sae": SAE, "text": "fox", "topK": 2.0})
    assert ok.status_code == 200 and len(ok.json()["features"]) == 2
    bad = client.post("/api/active-features", json={"sae": SAE, "text": "fox", "topK": 2.5})
    assert bad.status_code == 422 and "topK" in bad.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/api/saes", "GET"),
        ("GET", "/api/active-features", "POST"),
        ("DELETE", "/api/features/sae/1", "GET"),
        ("PUT", "/graphql", "GET"),
    ],
)
def test_405_names_the_allowed_methods(client, method, path, allow):
    """issue 21: 405s came without the Allow header."""
    response = client.request(method, path)
    assert response.status_code == 405 and allow in response.headers["allow"]


def post_escaped(client: TestClient, path: str, payload: dict):
    """POST JSON as json.dumps writes it: a lone surrogate goes as the escape \\ud800."""
    headers = {"content-type": "application/json"}
    return client.post(path, content=json.dumps(payload), headers=headers)


def test_lone_surrogate_is_bad_input_not_internal_error(client):
    """issue 21: "\\ud800x" is valid JSON but not Unicode; it gave "Internal server error."."""
    bad = "\ud800x"
    graph = post_escaped(client, "/graphql", {"query": ACTIVE, "variables": {"text": bad}})
    (err,) = graph.json()["errors"]
    assert err["extensions"]["code"] == "BAD_USER_INPUT" and "surrogate" in err["message"]
    rest = post_escaped(client, "/api/active-features", {"sae": SAE, "text": bad})
    assert rest.status_code == 422 and "surrogate" in rest.json()["error"]
    search = post_escaped(client, "/graphql", {"query": SEARCH, "variables": {"q": bad}})
    assert search.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_openapi_document(client):
    doc = client.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/api/saes",
        "/api/features/{sae}/{index}",
        "/api/active-features",
        "/api/steer",
        "/api/explanations",
        "/api/explanations/{id}",
    }
    refs = json.dumps(doc).count('"$ref": "#/components/schemas/')
    assert refs > 5 and {"Feature", "Error", "ActiveFeatures"} <= set(doc["components"]["schemas"])


# -- protocol, limits and plumbing -------------------------------------------------------------


def test_graphiql_is_served(client):
    page = client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()


def test_introspection_passes_the_depth_limit(client):
    """GraphiQL's own introspection query is deep; it must not trip the limiter."""
    from graphql import get_introspection_query

    schema = data(client, get_introspection_query())["__schema"]
    names = {t["name"] for t in schema["types"]}
    assert {"Feature", "Example", "TokenList", "FeatureConnection"} <= names


def test_live_sae_missing_is_unavailable(reader, engine, monkeypatch):
    app = create_app(reader, ServeConfig(), engine)
    state = [r for r in app.routes if r.path == "/graphql"][0].app.state
    info = state.saes[SAE]
    monkeypatch.setitem(state.saes, SAE, dataclasses.replace(info, sae_path="/no/such/sae"))
    with TestClient(app) as c:
        err = error(c, ACTIVE, {"text": "fox"})
        response = c.post("/api/active-features", json={"sae": SAE, "text": "fox"})
    assert err["extensions"]["code"] == "UNAVAILABLE" and "/no/such/sae" in err["message"]
    assert response.status_code == 503


def test_malformed_query_gets_a_spec_error(client):
    body = gql(client, '{ feature(sae: "sae", index: ')
    assert "data" not in body
    assert body["errors"][0]["message"].startswith("Syntax Error")
    assert body["errors"][0]["locations"] == [{"line": 1, "column": 30}]


def test_unknown_field_and_bad_variable_are_validation_errors(client):
    body = gql(client, '{ feature(sae: "sae", index: 0) { nosuchfield } }')
    assert "data" not in body and "nosuchfield" in body["errors"][0]["message"]
    body = gql(client, 'query ($i: Int!) { feature(sae: "sae", index: $i) { index } }', {"i": "x"})
    assert "data" not in body and "$i" in body["errors"][0]["message"]


def test_query_depth_limit(client):
    deep = "neighbours { feature { " * 5 + "index" + " } }" * 5
    body = gql(client, f'{{ feature(sae: "sae", index: 0) {{ {deep} }} }}')
    assert "data" not in body and "exceeds maximum operation depth" in body["errors"][0]["message"]
    ok = "neighbours { feature { " * 2 + "index" + " } }" * 2
    assert data(client, f'{{ feature(sae: "sae", index: 0) {{ {ok} }} }}')["feature"]


def test_unexpected_errors_are_masked(reader, engine, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals at /srv/index.duckdb")

    monkeypatch.setattr(reader, "top_examples", broken)
    with TestClient(create_app(reader, ServeConfig(), engine)) as c:
        body = gql(c, '{ feature(sae: "sae", index: 0) { index topExamples { tokens } } }')
        response = c.get("/api/features/sae/0")
    assert body["data"] == {"feature": None}
    assert body["errors"][0]["message"] == "Internal server error."
    assert body["errors"][0]["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    assert response.status_code == 500 and "secret" not in response.text
    assert "secret internals" in caplog.text  # logged for the operator, not sent


def test_listing_batches_nested_fields(reader, engine, monkeypatch):
    """No N+1: a page of 20 features with nested lists costs one store call per field."""
    calls: dict[str, int] = {}
    for name in ("top_examples", "neighbours", "histograms", "interval_samples", "summaries"):
        method = getattr(reader, name)

        def counted(*args, _method=method, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(reader, name, counted)
    query = """{ features(sae: "sae", first: 20) { edges { node { index
      topExamples(first: 2) { tokens } neighbours(first: 3) { index feature { density } }
      histogram { counts } intervalSamples { fraction } } } } }"""
    with TestClient(create_app(reader, ServeConfig(), engine)) as c:
        nodes = data(c, query)["features"]["edges"]
    assert len(nodes) == 20
    assert calls == {
        "top_examples": 1,
        "neighbours": 1,
        "histograms": 1,
        "interval_samples": 1,
        "summaries": 2,  # the listing's own, then every neighbour at once
    }


def test_cors_header_when_configured(reader):
    origin = "http://viewer.example"
    with TestClient(create_app(reader, ServeConfig(cors_origins=(origin,), inference=False))) as c:
        got = c.get("/api/saes", headers={"origin": origin})
        pre = c.options(
            "/graphql",
            headers={"origin": origin, "access-control-request-method": "POST"},
        )
        other = c.get("/api/saes", headers={"origin": "http://evil.example"})
    assert got.headers["access-control-allow-origin"] == origin
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_header_by_default(client):
    got = client.get("/api/saes", headers={"origin": "http://viewer.example"})
    assert "access-control-allow-origin" not in got.headers


def test_access_log_is_one_json_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="saedex.api.access"):
        client.get("/api/features/sae/3")
        client.get("/api/features/sae/999")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "saedex.api.access"]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("GET", "/api/features/sae/3", 200),
        ("GET", "/api/features/sae/999", 404),
    ]
    assert all(x["duration_ms"] > 0 for x in lines)


def test_concurrent_index_queries(client, reader):
    app = client.app
    indices = list(range(0, 64, 3))

    async def run() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            responses = await asyncio.gather(*(c.get(f"/api/features/sae/{i}") for i in indices))
            return [r.json() for r in responses]

    got = asyncio.run(run())
    assert [g["index"] for g in got] == indices
    for g in got:
        want = reader.top_examples(SAE, [g["index"]])[g["index"]]
        assert [e["contextId"] for e in g["topExamples"]] == [e.context_id for e in want]


def test_saedex_serve_runs_uvicorn_with_access_logs(api_db):
    """The CLI end to end: a real server on 127.0.0.1, JSON access lines on stdout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "saedex.cli", "serve", "--db", str(api_db), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--no-inference", "--cors-origin", "http://a.example"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        response = _get_when_up(f"http://127.0.0.1:{port}/api/saes", proc)
        assert response.status_code == 200 and response.json()[0]["id"] == SAE
        got = httpx.get(
            f"http://127.0.0.1:{port}/api/features/sae/1", headers={"origin": "http://a.example"}
        )
        assert got.headers["access-control-allow-origin"] == "http://a.example"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {"method": "GET", "path": "/api/features/sae/1", "status": 200}.items() <= lines[
        -1
    ].items()


def _get_when_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "saedex serve exited"
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("saedex serve did not start")
