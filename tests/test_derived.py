"""Derived files (saedex/store/derived.py): rows computed from complete runs, published beside
them, seen by open readers without a restart, hidden once an input SAE is indexed again."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from saedex.config import IndexConfig
from saedex.errors import SaedexError
from saedex.indexer.indexing import IndexJob, run_index
from saedex.store import IndexReader
from saedex.store.catalog import Catalog, runs_dir
from saedex.store.derived import publish_derived
from saedex.store.views import connect

# coactivations=0: the runs store none of their own, so every row seen is a derived file's
CFG = IndexConfig(context_size=24, batch_size=4, top_k=3, examples_per_interval=1, coactivations=0)


@pytest.fixture
def store(tmp_path, tiny_model, tiny_sae, tiny_corpus):
    db = tmp_path / "index.duckdb"
    for sae_id in ("a", "b"):
        job = IndexJob(str(tiny_model), str(tiny_sae), str(tiny_corpus), db, sae_id, config=CFG)
        run_index(job, False)
    return db, IndexJob(str(tiny_model), str(tiny_sae), str(tiny_corpus), db, "a", config=CFG)


def rows(sae: str, n: int, offset: int = 0):
    """A fill inserting `n` co-activation rows of `sae` (values marking who wrote them)."""

    def fill(con):
        for i in range(n):
            con.execute(
                "INSERT INTO coactivations VALUES (?, ?, 0, ?, ?, 0.5, 2.0)",
                [sae, i, i + 1, offset + i],
            )

    return fill


def coactivations(db) -> list[tuple]:
    return (
        connect(db)
        .execute("SELECT sae_id, feature, count FROM coactivations ORDER BY ALL")
        .fetchall()
    )


def test_published_rows_appear_in_an_open_reader(store):
    db, _ = store
    with IndexReader(db) as reader:
        before = reader._rows("SELECT count(*) FROM coactivations")
        publish_derived(db, "coactivations/a", ["a"], rows("a", 3))
        reader._view.refresh(force=True)
        after = reader._rows("SELECT sae_id, feature FROM coactivations ORDER BY ALL")
    assert before == [(0,)] and after == [("a", 0), ("a", 1), ("a", 2)]
    match = [(k, e.inputs) for k, e in Catalog(db).derived().items()]
    assert match == [("coactivations/a", {"a": Catalog(db).runs()["a"].complete})]


def test_publishing_a_key_again_replaces_its_file(store):
    db, _ = store
    first = publish_derived(db, "coactivations/a", ["a"], rows("a", 2))
    second = publish_derived(db, "coactivations/a", ["a"], rows("a", 2, offset=10))
    assert not first.exists() and second.exists()
    assert coactivations(db) == [("a", 0, 10), ("a", 1, 11)]


def test_reindexing_an_input_hides_the_rows(store):
    """Rows about SAE a's old run are not shown once a is indexed again; b's stay."""
    db, job = store
    publish_derived(db, "coactivations/a", ["a"], rows("a", 2))
    publish_derived(db, "matches/a/b", ["a", "b"], rows("b", 1))
    publish_derived(db, "coactivations/b", ["b"], rows("b", 1, offset=5))
    run_index(dataclasses.replace(job, overwrite=True), False)
    assert coactivations(db) == [("b", 0, 5)]


def test_bad_inputs_and_failed_fills_leave_nothing(store):
    db, _ = store
    before = sorted(p.name for p in runs_dir(db).iterdir())
    catalog = (runs_dir(db) / "catalog.json").read_text()
    with pytest.raises(SaedexError, match="no complete run of SAE 'nope'.*it has: a, b"):
        publish_derived(db, "coactivations/nope", ["nope"], rows("nope", 1))

    def broken(con):
        rows("a", 2)(con)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        publish_derived(db, "coactivations/a", ["a"], broken)
    assert sorted(p.name for p in runs_dir(db).iterdir()) == before
    assert (runs_dir(db) / "catalog.json").read_text() == catalog
    assert coactivations(db) == []


def test_runs_indexed_later_keep_the_derived_entries(store, tiny_model, tiny_sae, tiny_corpus):
    """The catalog's run updates (begin, publish) keep derived entries as they are."""
    db, _ = store
    publish_derived(db, "coactivations/b", ["b"], rows("b", 1))
    job = IndexJob(str(tiny_model), str(tiny_sae), str(tiny_corpus), db, "c", config=CFG)
    run_index(job, False)
    raw = json.loads((runs_dir(db) / "catalog.json").read_text())
    assert list(raw["derived"]) == ["coactivations/b"] and sorted(raw["runs"]) == ["a", "b", "c"]
    assert coactivations(db) == [("b", 0, 0)]


def test_a_killed_publisher_leaves_no_visible_rows(store):
    """SIGKILL inside the fill: the unpublished file is never read."""
    db, _ = store
    code = (
        "import os, signal, sys\n"
        "from saedex.store.derived import publish_derived\n"
        "def fill(con):\n"
        "    con.execute(\"INSERT INTO coactivations VALUES ('a', 0, 0, 1, 1, 0.5, 2.0)\")\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "publish_derived(sys.argv[1], 'coactivations/a', ['a'], fill)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(db)])
    assert proc.returncode < 0
    assert coactivations(db) == [] and Catalog(db).derived() == {}
