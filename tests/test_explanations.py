"""Explanations end to end on the tiny fixtures: import/export, the API's edits (with and without
the key), search, the features filter, and survival across restarts and --overwrite re-indexes."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from saedex.api.app import create_app
from saedex.config import IndexConfig, ServeConfig
from saedex.errors import SaedexError
from saedex.explain.transfer import export_explanations, import_explanations
from saedex.indexer.indexing import IndexJob, run_index
from saedex.store import IndexReader
from saedex.store.edits import NewExplanation
from tests.conftest import build_tiny_sae, copy_index

SAE = "sae"
KEY = "k3y-for-tests-0123456789"
CFG = IndexConfig(context_size=48, batch_size=8, top_k=6, n_intervals=3, examples_per_interval=2)


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, tiny_model, tiny_sae, tiny_corpus) -> Path:
    db = tmp_path_factory.mktemp("explained") / "index.duckdb"
    run_index(
        IndexJob(str(tiny_model), str(tiny_sae), str(tiny_corpus), db, SAE, config=CFG), False
    )
    return db


@pytest.fixture
def db(built_index, tmp_path) -> Path:
    """A fresh copy of the index, with no edits yet."""
    copy = tmp_path / "index.duckdb"
    return copy_index(built_index, copy)


def np_row(index, text, model="gpt2-small", layer="0-res-test", author="gpt-4o", kind="np_max-act"):
    return {
        "id": f"x{index}", "modelId": model, "layer": layer, "index": str(index),
        "description": text, "explanationModelName": author, "typeName": kind,
        "authorId": "someone", "embedding": [0.0] * 4, "umap_x": None,
    }  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


# -- import / export -------------------------------------------------------------------------


def test_neuronpedia_import_is_idempotent_and_exports_back(db, tmp_path):
    rows = [np_row(1, "the word fox"), np_row(1, "foxes", kind="oai_token-act-pair"),
            np_row(5, "purple skies")]  # fmt: skip
    path = write_jsonl(tmp_path / "batch-0.jsonl.gz", rows)
    with IndexReader(db) as reader:
        first = import_explanations(reader, SAE, path)
        assert (first.format, first.added, first.skipped) == ("neuronpedia", 3, 0)
        assert first.origin == ("gpt2-small", "0-res-test")
        again = import_explanations(reader, SAE, path)
        assert (again.added, again.skipped) == (0, 3)
        shown = reader.feature(SAE, 1).explanations
        assert {(e.text, e.author, e.method, e.source) for e in shown} == {
            ("the word fox", "gpt-4o", "np_max-act", "import"),
            ("foxes", "gpt-4o", "oai_token-act-pair", "import"),
        }
        assert all(e.current and e.sae_fingerprint.startswith("sha256:") for e in shown)
        for fmt, name in (("neuronpedia", "out.jsonl.gz"), ("jsonl", "out.jsonl"),
                          ("csv", "out.csv")):  # fmt: skip
            out = tmp_path / name
            assert export_explanations(reader, SAE, out, fmt) == 3
            assert import_explanations(reader, SAE, out).added == 0  # the same three
        with gzip.open(tmp_path / "out.jsonl.gz", "rt") as fh:
            exported = [json.loads(line) for line in fh]
        assert {r["index"] for r in exported} == {"1", "5"}
        assert exported[0]["modelId"].startswith("tiny-model") and exported[0]["description"]


def test_plain_jsonl_and_csv_import(db, tmp_path):
    jsonl = write_jsonl(tmp_path / "mine.jsonl", [{"feature": 2, "text": "dogs"},
                                                  {"feature": 3, "text": "cats", "author": "me"}])  # fmt: skip
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text('feature,text\n2,dogs\n4,"rivers, lakes"\n')
    with IndexReader(db) as reader:
        assert import_explanations(reader, SAE, jsonl).added == 2
        result = import_explanations(reader, SAE, csv_path)
        assert (result.format, result.added, result.skipped) == ("csv", 1, 1)
        assert [e.text for e in reader.explanations(SAE, [4])[4]] == ["rivers, lakes"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([np_row(1, "a"), np_row(2, "b", layer="6-res-jb")], "mixes 2 modelId/layer pairs"),
        ([np_row(1, "a"), np_row(10_000, "b")], "out of range"),
        ([np_row(1, "a"), {**np_row(2, "b"), "index": "two"}], "feature must be an integer"),
        ([np_row(1, "a"), np_row(2, "  ")], "text is empty"),
    ],
)
def test_bad_files_are_refused_whole(db, tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with IndexReader(db) as reader:
        with pytest.raises(SaedexError, match=message):
            import_explanations(reader, SAE, path)
        assert reader.explanations(SAE, [1])[1] == []


def test_cli_import_and_export(db, tmp_path):
    from typer.testing import CliRunner

    from saedex.cli import app

    path = write_jsonl(tmp_path / "np.jsonl", [np_row(1, "fox"), np_row(2, "dog")])
    runner = CliRunner()
    got = runner.invoke(app, ["explanations", "import", str(path), "--db", str(db), "--sae", SAE])
    assert got.exit_code == 0, got.output
    assert "2 added, 0 already there" in got.output
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [np_row(1, "a"), np_row(2, "b", model="m2")])
    got = runner.invoke(app, ["explanations", "import", str(mixed), "--db", str(db), "--sae", SAE])
    assert got.exit_code == 2 and "mixes 2 modelId/layer pairs" in got.output
    out = tmp_path / "x.csv"
    got = runner.invoke(app, ["explanations", "export", str(out), "--db", str(db), "--sae", SAE])
    assert got.exit_code == 0 and out.read_text().count("\n") == 3


# -- the API ---------------------------------------------------------------------------------

ADD = """mutation ($text: String!) { addExplanation(sae: "sae", feature: 3, text: $text,
  author: "tester") { id feature text source author current } }"""
FEATURE = """{ feature(sae: "sae", index: 3) { explanations { id text source current } } }"""


@contextlib.contextmanager
def app_client(db: Path, key: str | None = KEY, monkeypatch=None) -> Iterator[TestClient]:
    """A server over the index (the key in a file), closed with its reader on exit."""
    if monkeypatch is not None:
        monkeypatch.delenv("SAEDEX_API_KEY", raising=False)
    key_file = None
    if key is not None:
        key_file = db.parent / "api.key"
        key_file.write_text(key + "\n")
    with IndexReader(db) as reader:
        config = ServeConfig(inference=False, api_key_file=key_file)
        with TestClient(create_app(reader, config)) as client:
            yield client


def post(client, query, variables=None, key=None):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return client.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
    ).json()


def test_mutations_need_the_key_and_write_nothing_without_it(db, monkeypatch, caplog):
    with app_client(db, monkeypatch=monkeypatch) as client, caplog.at_level(logging.DEBUG):
        for key in (None, "wrong-key-0123456789", KEY[:-1]):
            body = post(client, ADD, {"text": "foxes"}, key)
            assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", body
            assert body["data"] is None
        assert post(client, FEATURE)["data"]["feature"]["explanations"] == []
        added = post(client, ADD, {"text": "foxes"}, KEY)["data"]["addExplanation"]
        assert added["text"] == "foxes" and added["source"] == "human" and added["current"]
        edit = f'mutation {{ editExplanation(id: {added["id"]}, text: "fast foxes") {{ text }} }}'
        assert post(client, edit)["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert post(client, edit, key=KEY)["data"]["editExplanation"]["text"] == "fast foxes"
        shown = post(client, FEATURE)["data"]["feature"]["explanations"]
        assert [e["text"] for e in shown] == ["fast foxes"]
        delete = f"mutation {{ deleteExplanation(id: {added['id']}) }}"
        assert post(client, delete, key="nope-nope-nope-nope")["data"] is None
        assert post(client, delete, key=KEY)["data"]["deleteExplanation"] is True
        assert post(client, delete, key=KEY)["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        bad = post(client, ADD, {"text": "x" * 5000}, KEY)["errors"][0]
        assert bad["extensions"]["code"] == "BAD_USER_INPUT"
    assert KEY not in caplog.text


def test_editing_is_off_without_a_configured_key(db, monkeypatch):
    with app_client(db, key=None, monkeypatch=monkeypatch) as client:
        error = post(client, ADD, {"text": "foxes"}, KEY)["errors"][0]
        assert (
            error["extensions"]["code"] == "UNAUTHENTICATED"
            and "editing is off" in error["message"]
        )
    monkeypatch.setenv("SAEDEX_API_KEY", KEY)
    reader = IndexReader(db)
    with TestClient(create_app(reader, ServeConfig(inference=False))) as client:
        assert (
            post(client, ADD, {"text": "foxes"}, KEY)["data"]["addExplanation"]["text"] == "foxes"
        )


def test_rest_mirror(db, monkeypatch):
    with app_client(db, monkeypatch=monkeypatch) as client:
        auth = {"authorization": f"Bearer {KEY}"}
        body = {"sae": SAE, "feature": 3, "text": "rivers"}
        assert client.post("/api/explanations", json=body).status_code == 401
        assert (
            client.post(
                "/api/explanations", json={**body, "feature": "3"}, headers=auth
            ).status_code
            == 422
        )
        made = client.post("/api/explanations", json=body, headers=auth)
        assert made.status_code == 200 and made.json()["text"] == "rivers"
        eid = made.json()["id"]
        assert client.patch(f"/api/explanations/{eid}", json={"text": "lakes"}).status_code == 401
        edited = client.patch(f"/api/explanations/{eid}", json={"text": "lakes"}, headers=auth)
        assert edited.json()["text"] == "lakes"
        feature = client.get(f"/api/features/{SAE}/3").json()
        assert [e["text"] for e in feature["explanations"]] == ["lakes"]
        assert client.delete(f"/api/explanations/{eid}").status_code == 401
        assert client.delete(f"/api/explanations/{eid}", headers=auth).json() == {"deleted": True}
        assert client.delete(f"/api/explanations/{eid}", headers=auth).status_code == 404


def test_search_ranks_explanations_and_features_filter(db, monkeypatch):
    with IndexReader(db) as reader:
        reader.edits(create=True).add_many(
            SAE,
            [NewExplanation(7, "dogmatic claims"), NewExplanation(9, "the dog token"),
             NewExplanation(11, "cats")],
            reader.fingerprint(SAE),
        )  # fmt: skip
    with app_client(db, monkeypatch=monkeypatch) as client:
        query = (
            '{ searchFeatures(sae: "sae", query: "dog", first: 100) '
            "{ index matchedExplanation matchedTokens exampleMatches } }"
        )
        hits = post(client, query)["data"]["searchFeatures"]
        order = [h["index"] for h in hits]
        assert order[0] == 9 and hits[0]["matchedExplanation"] == "the dog token"
        assert {h["index"] for h in hits if h["matchedExplanation"]} == {7, 9}
        substring = order.index(7)  # after logit-token matches, before example-only ones
        assert all(h["matchedTokens"] for h in hits[1:substring] if h["index"] != 9)
        assert all(not h["matchedTokens"] for h in hits[substring + 1 :])
        assert any(h["exampleMatches"] for h in hits[substring + 1 :])
        listing = '{ features(sae: "sae", hasExplanation: %s, first: 100) { totalCount edges { node { index } } } }'
        with_ = post(client, listing % "true")["data"]["features"]
        assert [e["node"]["index"] for e in with_["edges"]] == [7, 9, 11]
        without = post(client, listing % "false")["data"]["features"]
        assert without["totalCount"] == 64 - 3
        assert not {7, 9, 11} & {e["node"]["index"] for e in without["edges"]}


def test_explanations_survive_restarts_and_overwrite_reindexes(
    tmp_path, tiny_model, tiny_corpus, monkeypatch
):
    sae_dir = build_tiny_sae(tmp_path / "my-sae")
    db = tmp_path / "index.duckdb"

    def index(overwrite: bool) -> None:
        job = IndexJob(str(tiny_model), str(sae_dir), str(tiny_corpus), db, SAE,
                       overwrite=overwrite, config=CFG)  # fmt: skip
        run_index(job, False)

    index(False)
    with app_client(db, monkeypatch=monkeypatch) as client:
        assert post(client, ADD, {"text": "written by hand"}, KEY)["data"]
    with app_client(db, monkeypatch=monkeypatch) as client:  # a restart
        assert post(client, FEATURE)["data"]["feature"]["explanations"][0]["current"] is True
    index(True)  # same weights
    with IndexReader(db) as reader:
        [kept] = reader.feature(SAE, 3).explanations
        assert kept.text == "written by hand" and kept.current
    build_tiny_sae(sae_dir, seed=1)  # other weights, same SAE id
    index(True)
    with IndexReader(db) as reader:
        [kept] = reader.feature(SAE, 3).explanations
        assert kept.text == "written by hand" and not kept.current
        assert reader.explained_features(SAE) == []
    with app_client(db, monkeypatch=monkeypatch) as client:
        shown = post(client, FEATURE.replace("explanations", "explanations(currentOnly: true)"))
        assert shown["data"]["feature"]["explanations"] == []
        assert post(client, FEATURE)["data"]["feature"]["explanations"][0]["current"] is False
