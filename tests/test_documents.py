"""Document windows across context boundaries, against a brute-force run context by context."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from saedex.config import IndexConfig
from saedex.errors import SaedexError
from saedex.indexer.indexing import IndexJob, run_index
from saedex.store import IndexReader
from tests.conftest import build_tiny_sae
from tests.test_indexer import reference

CFG = IndexConfig(context_size=16, batch_size=8, sink_norm_multiple=1.6)
BODY = CFG.context_size - 1  # document tokens per context (BOS prepended)


@pytest.fixture(scope="module")
def windows(tiny_model, tiny_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("windows")
    db = tmp / "index.duckdb"
    saes = {}
    for name, arch in (("std", "standard"), ("topk", "topk")):
        saes[name] = build_tiny_sae(tmp / name, arch, seed=1 if arch == "topk" else 0)
        run_index(
            IndexJob(str(tiny_model), str(saes[name]), str(tiny_corpus), db, name, config=CFG),
            False,
        )
    refs = {name: reference(tiny_model, path, tiny_corpus, CFG) for name, path in saes.items()}
    with IndexReader(db) as reader:
        reader.db = db  # for the CLI test
        yield reader, refs, _documents(tiny_model, tiny_corpus)


def _documents(model: Path, corpus: Path) -> list[tuple[str, list[int], int]]:
    """(id, token ids, index of its first context) per document, as the reference cut them."""
    tok = AutoTokenizer.from_pretrained(model)
    docs, first = [], 0
    for line in corpus.read_text().splitlines():
        row = json.loads(line)
        ids = tok(row["text"], add_special_tokens=False)["input_ids"]
        docs.append((row["id"], ids, first))
        first += -(-len(ids) // BODY)
    return docs


def _expected(ref, first_context: int, start: int, end: int, feature: int):
    """Brute-force values and sink flags of document offsets [start, end)."""
    values, excluded = [], []
    for offset in range(start, end):
        context, position = first_context + offset // BODY, 1 + offset % BODY
        values.append(float(ref.acts[context][position, feature]))
        excluded.append(not bool(ref.counted[context][position]))
    return values, excluded


def _longest(docs):
    return max(range(len(docs)), key=lambda i: len(docs[i][1]))


def test_window_crosses_contexts_and_equals_brute_force(windows):
    reader, refs, docs = windows
    doc_id, ids, first = docs[_longest(docs)]
    assert len(ids) > 4 * BODY
    offset = 2 * BODY + 3
    features = list(range(64))
    got = reader.document_window(
        "std", features, document_id=doc_id, offset=offset, before=20, after=25
    )
    assert (got.start, got.end) == (offset - 20, offset + 26)
    assert got.token_ids == ids[got.start : got.end]
    assert got.context_starts == [BODY, 2 * BODY, 3 * BODY]  # contexts beginning inside it
    assert not got.live and got.document_tokens == got.indexed_tokens == len(ids)
    active = 0
    for wf in got.features:
        values, excluded = _expected(refs["std"], first, got.start, got.end, wf.index)
        np.testing.assert_allclose(wf.activations, values, rtol=1e-4, atol=1e-5)
        active += sum(v > 0 for v in values)
    assert active > 0
    assert got.excluded == excluded
    assert got.tokens == [reader.vocab(reader.sae("std").model_name)[t] for t in got.token_ids]


def test_window_from_an_example_centres_on_its_max_token(windows):
    reader, refs, docs = windows
    feature = next(f for f in range(64) if reader.top_examples("std", [f])[f])
    example = reader.top_examples("std", [feature])[feature][0]
    got = reader.document_window(
        "std",
        [feature],
        context_id=example.context_id,
        position=example.max_token_index,
        before=40,
        after=40,
    )
    centre = got.features[0].activations.index(max(got.features[0].activations))
    assert got.token_ids[centre] == example.token_ids[example.max_token_index]
    assert got.features[0].activations[centre] == pytest.approx(example.max_activation)
    assert got.document_id == example.document_id


def test_window_at_document_start_and_end(windows):
    reader, _, docs = windows
    doc_id, ids, _ = docs[_longest(docs)]
    head = reader.document_window("std", [0], document_id=doc_id, offset=2, before=50, after=3)
    assert (head.start, head.end) == (0, 6) and head.context_starts == [0]
    tail = reader.document_window(
        "std", [0], document_id=doc_id, offset=len(ids) - 2, before=3, after=50
    )
    assert (tail.start, tail.end) == (len(ids) - 5, len(ids))
    assert tail.token_ids == ids[-5:]


def test_features_of_two_saes_on_one_document(windows):
    reader, refs, docs = windows
    doc_id, ids, first = docs[_longest(docs)]
    got = reader.document_window(
        "std", [3, ("topk", 5), ("topk", 7)], document_id=doc_id, offset=BODY, before=10, after=10
    )
    assert [(f.sae_id, f.index) for f in got.features] == [("std", 3), ("topk", 5), ("topk", 7)]
    for wf in got.features:
        values, _ = _expected(refs[wf.sae_id], first, got.start, got.end, wf.index)
        np.testing.assert_allclose(wf.activations, values, rtol=1e-4, atol=1e-5)


def test_a_run_cut_short_says_where_the_index_stops(tiny_model, tiny_sae, tiny_corpus, tmp_path):
    db = tmp_path / "cut.duckdb"
    cfg = IndexConfig(context_size=16, batch_size=8, max_tokens=100)
    run_index(
        IndexJob(str(tiny_model), str(tiny_sae), str(tiny_corpus), db, "cut", config=cfg), False
    )
    with IndexReader(db) as reader:
        last = reader.document_window(
            "cut", [0], context_id=reader.sae("cut").n_contexts - 1, position=1, after=1000
        )
        assert last.indexed_tokens == last.end < last.document_tokens
        with pytest.raises(SaedexError, match="the index holds its tokens"):
            reader.document_window("cut", [0], document_id=last.document_id, offset=last.end)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"context_id": 10**6}, "no context"),
        ({"context_id": 0, "position": 0}, "outside context"),
        ({"document_id": "no-such-doc"}, "no document"),
        ({"document_id": "doc-0", "offset": -1}, "outside document"),
        ({"document_id": "doc-0", "before": -1}, "negative"),
        ({}, "needs a context id or a document id"),
    ],
)
def test_bad_window_requests(windows, kwargs, fragment):
    reader, _, _ = windows
    with pytest.raises(SaedexError, match=fragment):
        reader.document_window("std", [0], **kwargs)


def test_bad_features(windows):
    reader, _, _ = windows
    with pytest.raises(SaedexError, match="no feature 64"):
        reader.document_window("std", [64], document_id="doc-0")
    with pytest.raises(SaedexError, match="unknown SAE"):
        reader.document_window("std", [("nope", 1)], document_id="doc-0")


# -- the API: stored and live windows ------------------------------------------------------------

WINDOW = """
query ($sae: ID!, $doc: String, $ctx: Int, $pos: Int, $offset: Int!, $before: Int!, $after: Int!,
       $features: [Int!], $others: [FeatureRef!], $live: Boolean!) {
  documentWindow(sae: $sae, documentId: $doc, contextId: $ctx, position: $pos, offset: $offset,
                 before: $before, after: $after, features: $features, otherFeatures: $others,
                 live: $live) {
    sae documentId source start end tokens tokenIds excluded contextStarts documentTokens
    indexedTokens live features { sae index activations }
  }
}
"""


@pytest.fixture(scope="module")
def client(windows):
    from starlette.testclient import TestClient

    from saedex.api.app import create_app
    from saedex.api.inference import InferenceEngine
    from saedex.config import ServeConfig

    reader = windows[0]
    config = ServeConfig(max_window_side=100, max_live_window_tokens=80, max_window_features=4)
    with TestClient(create_app(reader, config, InferenceEngine("cpu"))) as c:
        yield c


def _window(client, **variables):
    defaults = {"offset": 0, "before": 10, "after": 10, "live": False, "sae": "std"}
    response = client.post("/graphql", json={"query": WINDOW, "variables": defaults | variables})
    return response.json()


def test_api_stored_window_equals_the_reader(client, windows):
    reader, _, docs = windows
    doc_id, ids, _ = docs[_longest(docs)]
    body = _window(
        client, doc=doc_id, offset=20, features=[1, 2], others=[{"sae": "topk", "index": 3}]
    )
    got = body["data"]["documentWindow"]
    want = reader.document_window(
        "std", [1, 2, ("topk", 3)], document_id=doc_id, offset=20, before=10, after=10
    )
    assert (
        got["tokenIds"] == want.token_ids and got["start"] == want.start and got["end"] == want.end
    )
    assert got["contextStarts"] == want.context_starts and got["live"] is False
    assert [f["activations"] for f in got["features"]] == [f.activations for f in want.features]
    assert [(f["sae"], f["index"]) for f in got["features"]] == [
        ("std", 1),
        ("std", 2),
        ("topk", 3),
    ]


def test_api_live_window_equals_one_brute_force_run(client, windows, tiny_model):
    from safetensors.numpy import load_file
    from transformers import LlamaForCausalLM

    from tests.test_indexer import encode_reference

    reader, _, docs = windows
    doc_id, ids, _ = docs[_longest(docs)]
    body = _window(
        client, doc=doc_id, offset=30, before=25, after=30, features=list(range(4)), live=True
    )
    got = body["data"]["documentWindow"]
    assert got["live"] is True and got["contextStarts"] == [got["start"]]
    window_ids = ids[got["start"] : got["end"]]
    assert got["tokenIds"] == window_ids
    sae_dir = Path(reader.sae("std").sae_path)
    w = load_file(str(sae_dir / "sae_weights.safetensors"))
    sae_cfg = json.loads((sae_dir / "cfg.json").read_text())
    model = LlamaForCausalLM.from_pretrained(tiny_model).eval()
    bos = AutoTokenizer.from_pretrained(tiny_model).bos_token_id
    acts, counted = encode_reference(model, w, sae_cfg, [bos, *window_ids], CFG)
    for f in got["features"]:
        np.testing.assert_allclose(f["activations"], acts[1:, f["index"]], rtol=1e-4, atol=1e-5)
    assert got["excluded"] == (~counted[1:]).tolist()
    stored = _window(client, doc=doc_id, offset=30, before=25, after=30, features=list(range(4)))
    assert stored["data"]["documentWindow"]["features"] != got["features"]  # attention differs


@pytest.mark.parametrize(
    ("variables", "fragment"),
    [
        ({"before": 101}, "before must be between 0 and 100"),
        ({"after": -1}, "after must be between 0 and 100"),
        ({"features": [1, 2, 3, 4, 5]}, "the limit is 4"),
        ({"features": []}, "at least one feature"),
        ({"before": 50, "after": 50, "live": True}, "at most 80 tokens"),
        ({"features": [999]}, "no feature 999"),
        ({"doc": "nope"}, "no document"),
        ({"sae": "nope"}, "unknown SAE"),
    ],
)
def test_api_window_limits(client, variables, fragment):
    body = _window(client, **({"doc": "doc-0", "features": [0]} | variables))
    assert body["data"] is None or body["data"]["documentWindow"] is None
    assert fragment in body["errors"][0]["message"]


# -- saedex show -------------------------------------------------------------------------------


def test_show_prints_an_example_in_its_document(windows):
    from typer.testing import CliRunner

    from saedex.cli import app

    reader, _, _ = windows
    feature = next(f for f in range(64) if len(reader.top_examples("std", [f])[f]) >= 2)
    example = reader.top_examples("std", [feature])[feature][1]
    db = reader.db
    result = CliRunner().invoke(
        app,
        [
            "show",
            "--db",
            str(db),
            "--sae",
            "std",
            "--feature",
            str(feature),
            "--example",
            "2",
            "--window",
            "20",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"std feature {feature} on document {example.document_id!r}" in result.output
    assert example.tokens[example.max_token_index] in result.output
    bad = CliRunner().invoke(app, ["show", "--db", str(db), "--sae", "std", "--feature", "999"])
    assert bad.exit_code == 2 and "has no top example" in bad.output
