"""A complete run's bulk tables in Parquet (saedex/store/bulk.py) read back exactly as the run
file held them, and the bfloat16 value precision stores rounded values (docs/schema.md "Size")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from saedex.config import ConfigError, IndexConfig
from saedex.errors import SaedexError
from saedex.indexer import indexing
from saedex.indexer.indexing import IndexJob, run_index
from saedex.store import bulk, catalog
from saedex.store.catalog import Catalog, runs_dir
from saedex.store.layout import compact
from saedex.store.precision import round_values
from saedex.store.schema import RUN_TABLES
from saedex.store.views import connect
from tests.conftest import build_tiny_sae, make_corpus_docs

SETTINGS = {"context_size": 24, "batch_size": 4, "top_k": 4, "examples_per_interval": 2}


@pytest.fixture(scope="module")
def inputs(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("size")
    sae = build_tiny_sae(tmp / "sae", "topk")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in make_corpus_docs(8, seed=2)))
    return tiny_model, sae, corpus, tmp


def index(inputs, name: str, **settings) -> Path:
    model, sae, corpus, tmp = inputs
    db = tmp / name / "index.duckdb"
    db.parent.mkdir()
    cfg = IndexConfig(**SETTINGS, **settings)
    run_index(IndexJob(str(model), str(sae), str(corpus), db, "run", config=cfg), False)
    return db


def table_rows(con: duckdb.DuckDBPyConnection, table: str, prefix: str = "") -> list:
    return con.execute(f"SELECT * FROM {prefix}{table} ORDER BY ALL").fetchall()


@pytest.fixture(scope="module")
def uncompacted(inputs, tmp_path_factory):
    """A complete run file as the pass leaves it (every row in DuckDB), kept aside."""
    original = indexing.compact
    kept = tmp_path_factory.mktemp("kept") / "run.duckdb"
    try:
        indexing.compact = lambda path, memory_limit=None: shutil.copy(path, kept)
        index(inputs, "uncompacted")
    finally:
        indexing.compact = original
    return kept


def test_parquet_tables_read_back_as_the_run_file_held_them(uncompacted, tmp_path):
    run = tmp_path / "run.duckdb"
    shutil.copy(uncompacted, run)
    compact(run)
    assert sorted(p.name for p in bulk.folder(run).iterdir()) == sorted(
        f"{t}.parquet" for t in bulk.STORED
    )
    con = duckdb.connect()
    con.execute(f"ATTACH '{uncompacted}' AS before (READ_ONLY)")
    con.execute(f"ATTACH '{run}' AS after (READ_ONLY)")
    assert bulk.is_parquet(con, "after.") and not bulk.is_parquet(con, "before.")
    for table in RUN_TABLES:
        if table in bulk.STORED:
            assert table_rows(con, table, "after.") == []  # the rows moved out of the file
            sql = bulk.read_sql(con, table, run, "after")
            types = [r[:2] for r in con.execute(f"DESCRIBE {sql}").fetchall()]
            assert types == [r[:2] for r in con.execute(f"DESCRIBE before.{table}").fetchall()]
            got = con.execute(f"SELECT * FROM ({sql}) ORDER BY ALL").fetchall()
        else:
            got = table_rows(con, table, "after.")
        assert got == table_rows(con, table, "before."), table  # bit-identical, every column
    compact(run)  # compacting again (a kill before publishing) changes nothing
    assert bulk.is_parquet(duckdb.connect(str(run), read_only=True))


def test_compacted_index_reads_as_before(inputs, uncompacted, tmp_path):
    """The views over a compacted run give the rows of the uncompacted one (the readers, the
    API and the site query only these views)."""
    db = index(inputs, "compacted")
    (run,) = Catalog(db).complete().values()
    assert bulk.folder(run).is_dir()
    con = connect(db)
    ref = duckdb.connect(str(uncompacted), read_only=True)
    for table in RUN_TABLES:
        assert table_rows(con, table) == table_rows(ref, table) or table == "saes", table
    keys = "sae_id, feature, kind, interval, rank, context_id, max_position"
    assert (
        table_rows(con, "example_keys")
        == ref.sql(f"SELECT {keys} FROM examples ORDER BY ALL").fetchall()
    )
    # a run file copied without its Parquet folder is refused in one line
    copy = tmp_path / "copy"
    shutil.copytree(db.parent, copy)
    shutil.rmtree(bulk.folder(copy / run.relative_to(db.parent)))
    with pytest.raises(SaedexError, match="activations.*are missing from .*copy the whole"):
        connect(copy / db.name)


def test_replaced_run_is_deleted_after_a_grace(inputs, monkeypatch):
    """--overwrite retires the replaced run: a reader that has not refreshed yet still reads
    it (its Parquet files are read by path), and it is deleted RETIRE_S later."""
    db = index(inputs, "replaced")
    (first,) = Catalog(db).complete().values()
    stale = connect(db)
    n_rows = stale.execute("SELECT count(*) FROM activations").fetchall()

    def overwrite() -> Path:
        model, sae, corpus, _ = inputs
        cfg = IndexConfig(**SETTINGS)
        job = IndexJob(str(model), str(sae), str(corpus), db, "run", overwrite=True, config=cfg)
        run_index(job, False)
        (run,) = Catalog(db).complete().values()
        return run

    second = overwrite()
    assert second != first and bulk.folder(first).is_dir()
    assert stale.execute("SELECT count(*) FROM activations").fetchall() == n_rows
    monkeypatch.setattr(catalog, "RETIRE_S", 0.0)
    third = overwrite()
    for gone in (first, second):
        assert not gone.exists() and not bulk.folder(gone).exists()
    left = {p.name for p in runs_dir(db).iterdir() if not p.name.startswith(".")}
    assert left == {"catalog.json", catalog.RETIRED_FILE, third.name, bulk.folder(third).name}


def test_bfloat16_rounding_is_torchs():
    rng = np.random.default_rng(0)
    values = rng.exponential(3.0, 100_000).astype(np.float32)
    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1.00390625, 3.0e38], np.float32)
    values = np.concatenate([values, ties])
    want = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    assert np.array_equal(round_values(values, "bfloat16").view(np.uint32), want.view(np.uint32))
    assert round_values(values, "float32") is not None
    assert np.array_equal(round_values(values, "float32"), values)


def test_bfloat16_run_stores_rounded_values(inputs, uncompacted):
    db = index(inputs, "bf16", value_precision="bfloat16")
    con = connect(db)
    settings = json.loads(con.execute("SELECT settings FROM saes").fetchall()[0][0])
    assert settings["value_precision"] == "bfloat16"
    got = con.execute(
        "SELECT context_id, position, feature, value FROM activations ORDER BY ALL"
    ).fetchall()
    exact = (
        duckdb.connect(str(uncompacted), read_only=True)
        .execute("SELECT context_id, position, feature, value FROM activations ORDER BY ALL")
        .fetchall()
    )
    assert [r[:3] for r in got] == [r[:3] for r in exact]
    rounded = round_values(np.array([r[3] for r in exact], np.float32), "bfloat16")
    assert np.array_equal(np.array([r[3] for r in got], np.float32), rounded)
    # derived from the rounded values: the maxima are the rounded maxima
    maxima = con.execute("SELECT feature, max_activation FROM features ORDER BY 1").fetchall()
    ref = duckdb.connect(str(uncompacted), read_only=True)
    exact_max = ref.execute("SELECT feature, max_activation FROM features ORDER BY 1").fetchall()
    want = round_values(np.array([m for _, m in exact_max], np.float32), "bfloat16")
    assert np.array_equal(np.array([m for _, m in maxima], np.float32), want)


def test_value_precision_is_checked():
    with pytest.raises(ConfigError, match="value_precision"):
        IndexConfig(value_precision="float8")
