"""saedex.Client against a live `saedex serve`: the same records as IndexReader on the file."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from starlette.testclient import TestClient

import saedex
from saedex.api.app import create_app
from saedex.config import IndexConfig, ServeConfig
from saedex.data import public_name
from saedex.errors import SaedexError
from saedex.indexer.indexing import IndexJob, run_index
from saedex.store import IndexReader
from tests.conftest import copy_index, run_file

SAE = "sae"


@pytest.fixture(scope="module")
def client_db(tmp_path_factory, tiny_model, tiny_sae, tiny_corpus) -> Path:
    db = tmp_path_factory.mktemp("client") / "index.duckdb"
    cfg = IndexConfig(context_size=48, batch_size=8, n_intervals=4, examples_per_interval=2)
    run_index(
        IndexJob(str(tiny_model), str(tiny_sae), str(tiny_corpus), db, SAE, config=cfg), False
    )
    return db


@pytest.fixture(scope="module")
def reader(client_db):
    with IndexReader(client_db) as r:
        yield r


@pytest.fixture(scope="module")
def remote(client_db):
    """A real `saedex serve` on a free loopback port, and a Client pointed at it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "saedex.cli", "serve", "--db", str(client_db)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--no-inference"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = saedex.Client(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "saedex serve exited"
            try:
                client.saes()
                break
            except SaedexError:
                assert time.monotonic() < deadline, "saedex serve did not come up"
                time.sleep(0.3)
        yield client
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _public(info):
    """The SAE as the API shows it: local paths reduced to their last part (data.public_name)."""
    paths = {k: public_name(getattr(info, k)) for k in ("model_name", "sae_path", "corpus")}
    return dataclasses.replace(info, **paths)


def test_saes_equal_the_reader(remote, reader):
    assert remote.saes() == [_public(s) for s in reader.saes()]
    assert remote.sae(SAE) == _public(reader.sae(SAE))
    assert remote.sae(SAE).sae_weights_sha256 is not None
    assert remote.sae("nope") is None


def test_every_feature_equals_the_reader(remote, reader):
    d_sae = reader.sae(SAE).d_sae
    for index in range(d_sae):
        assert remote.feature(SAE, index) == reader.feature(SAE, index), index
    assert remote.feature(SAE, d_sae) is None
    assert remote.feature(SAE, -1) is None
    batch = remote.features(SAE, [3, 1, d_sae])
    assert sorted(batch) == [1, 3] and batch[3] == reader.feature(SAE, 3)


def test_batched_methods_equal_the_reader(remote, reader):
    indices = [0, 7, 2, 40]
    assert remote.summaries(SAE, indices) == reader.summaries(SAE, indices)
    assert remote.top_examples(SAE, indices, first=3) == reader.top_examples(SAE, indices, 3)
    assert remote.vectors(SAE, indices) == reader.vectors(SAE, indices)
    assert remote.vectors(SAE, [5], "encoder") == reader.vectors(SAE, [5], "encoder")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"order_by": "density", "descending": True, "offset": 5, "limit": 7},
        {"order_by": "max_activation", "min_density": 0.01, "max_density": 0.5},
    ],
)
def test_listing_equals_the_reader(remote, reader, kwargs):
    assert remote.list_features(SAE, **kwargs) == reader.list_features(SAE, **kwargs)


def test_search_equals_the_reader(remote, reader):
    for query in ("the", "fox", "zzzz-none"):
        assert remote.search_features(SAE, query) == reader.search_features(SAE, query)


def test_server_errors_and_unreachable_server(remote):
    with pytest.raises(SaedexError, match="first must be between"):
        remote.top_examples(SAE, [1], first=10_000)
    with pytest.raises(SaedexError, match="cannot reach saedex server"):
        saedex.Client("http://127.0.0.1:9/").saes()


def test_graphql_vectors_of_a_moved_sae_are_unavailable(client_db, tmp_path):
    moved = copy_index(client_db, tmp_path / "moved.duckdb")
    con = duckdb.connect(str(run_file(moved, SAE)))
    con.execute("UPDATE saes SET sae_path = ?", [str(tmp_path / "gone")])
    con.close()
    with IndexReader(moved) as r, TestClient(create_app(r, ServeConfig(inference=False))) as c:
        body = c.post("/graphql", json={"query": '{ feature(sae: "sae", index: 1) { decoder } }'})
    (err,) = body.json()["errors"]
    assert err["extensions"]["code"] == "UNAVAILABLE" and "moved or deleted" in err["message"]


def test_document_window_equals_the_reader(remote, reader):
    """Across context boundaries, by example or by document, and errors as one line."""
    example = reader.top_examples(SAE, [3], first=1)[3][0]
    at = {"context_id": example.context_id, "position": example.max_token_index}
    for kwargs in (at | {"before": 60, "after": 60}, {"document_id": example.document_id}):
        want = reader.document_window(SAE, [3, (SAE, 5)], **kwargs)
        assert remote.document_window(SAE, [3, (SAE, 5)], **kwargs) == want
    assert len(want.context_starts) > 1  # the tiny corpus's documents span several contexts
    with pytest.raises(SaedexError, match="live inference is off"):
        remote.document_window(SAE, [3], **at, live=True)
    with pytest.raises(SaedexError, match="no feature 999"):
        remote.document_window(SAE, [999], **at)


def test_explanations_and_their_filter_equal_the_reader(remote, reader, client_db):
    """Explanations written while the server runs (the user-edit store) reach the client as
    the reader's records, in its order, and `has_explanation` filters the listing alike."""
    from saedex.store.edits import EditStore, NewExplanation, edits_path

    fingerprint = reader.fingerprint(SAE)
    with EditStore(edits_path(client_db)) as store:
        store.add(SAE, NewExplanation(2, "Commas in lists", "human", "ann"), fingerprint)
        store.add(SAE, NewExplanation(2, "Older take", "import", None, "np"), "old-weights")
        store.add(
            SAE,
            NewExplanation(6, "Capitals", "model", "tiny", "default", {"fuzz": 0.7}),
            fingerprint,
        )
    got = remote.explanations(SAE, [2, 6, 9])
    assert got == reader.explanations(SAE, [2, 6, 9])
    assert [x.text for x in got[2]] == ["Commas in lists", "Older take"] and got[9] == []
    assert remote.feature(SAE, 6) == reader.feature(SAE, 6)
    for explained in (True, False):
        page = remote.list_features(SAE, limit=100, has_explanation=explained)
        assert page == reader.list_features(SAE, limit=100, has_explanation=explained)
    assert [s.index for s in remote.list_features(SAE, has_explanation=True).items] == [2, 6]


def test_every_client_method_takes_the_readers_parameters():
    """Client mirrors IndexReader's read methods: the same names, kinds and defaults, so code
    written against one runs on the other, and a parameter added to the reader but not to the
    client fails here. The client may add keyword-only options of the server's (document
    windows can run the model live there)."""
    import inspect

    from saedex.client import Client

    mirrored = [
        name for name, fn in vars(Client).items()
        if callable(fn) and not name.startswith("_") and hasattr(IndexReader, name)
    ]  # fmt: skip
    assert {"list_features", "feature", "search_features"} <= set(mirrored)
    for name in mirrored:

        def params(cls, name=name):
            sig = inspect.signature(getattr(cls, name))
            return [(p.name, p.kind, p.default) for p in sig.parameters.values()]

        theirs, ours = params(IndexReader), params(Client)
        assert ours[: len(theirs)] == theirs, name
        assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _ in ours[len(theirs) :])
