"""Where a run lives: the base file (runs of single-file indexes from earlier saedex versions)
or its own run file in the catalog; and the base file made ready without writing it needlessly.

The indexer writes only its own run file and the catalog, so it can index into a store that a
server is reading (the server holds every file read-only).
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from saedex.store import bulk
from saedex.store.catalog import Catalog
from saedex.store.connection import limit_memory, open_db
from saedex.store.schema import SCHEMA_VERSION, check_version, ensure_schema
from saedex.store.writer import RunState, run_state

# Block size of a compacted run file: it keeps only small tables (DuckDB's default, 256 KiB,
# would spend a block on each).
_RUN_BLOCK = 16_384


def prepare_base(db: Path) -> None:
    """Create the base file, or upgrade one an earlier saedex wrote (see migrations.py). A
    current one is only read, so a server may hold it meanwhile."""
    if db.exists():
        con = open_db(db, read_only=True)
        try:
            version = check_version(con, db)
        finally:
            con.close()
        if version == SCHEMA_VERSION:
            return
    con = open_db(db)
    try:
        ensure_schema(con, db)
    finally:
        con.close()


def read_run_state(path: Path, sae_id: str) -> RunState | None:
    """The stored state of `sae_id` in one file (None if the file holds no row for it)."""
    if not path.exists():
        return None
    con = open_db(path, read_only=True)
    try:
        return run_state(con, sae_id)
    except duckdb.CatalogException:  # created, but killed before its tables were committed
        return None
    finally:
        con.close()


def locate_run(db: Path, sae_id: str) -> tuple[Path | None, RunState | None]:
    """The file holding `sae_id`'s run and its state: a run in progress (to resume) first, then
    the complete run readers see, then a run in the base file; (None, None) if there is none."""
    catalog = Catalog(db)
    pending = catalog.pending(sae_id)
    if pending is not None:
        state = read_run_state(pending, sae_id)
        if state is not None:
            return pending, state
    complete = catalog.complete().get(sae_id)
    if complete is not None:
        return complete, read_run_state(complete, sae_id)
    state = read_run_state(db, sae_id)
    return (db, state) if state is not None else (None, None)


def compact(path: Path, memory_limit: str | None = None) -> None:
    """Rewrite a finished run once, for good: its bulk tables as Parquet files beside it
    (saedex/store/bulk.py), the run file itself kept small (its `saes` row, its model's
    vocabulary, empty bulk tables, `meta.bulk = parquet`; 16 KiB blocks). A file with no bulk
    rows (a derived file) is only rewritten, with no free blocks left. The Parquet folder
    is complete before the new run file is renamed over the old one: a kill leaves the
    complete run as it was, and the next run of the command compacts and publishes it.
    `memory_limit` (IndexConfig.memory_limit) bounds DuckDB's memory: past it, sorting the
    activations feature-major spills to a folder beside the run file (not the working
    directory, an in-memory connection's default)."""
    tmp = path.with_name(path.name + ".compact")
    for stale in (tmp, tmp.with_name(tmp.name + ".wal")):
        stale.unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")  # the indexer shows its own progress
        con.execute(f"SET temp_directory = '{_quote(path.with_name(path.name + '.tmp'))}'")
        limit_memory(con, memory_limit)
        con.execute(f"ATTACH '{_quote(path)}' AS src (READ_ONLY)")
        if bulk.is_parquet(con, "src."):
            return  # compacted already (killed before the catalog published it)
        moved = bulk.has_rows(con, "src")  # a derived file has none: it stays all DuckDB
        if moved:
            bulk.write_tables(con, "src", path)
        con.execute(f"ATTACH '{_quote(tmp)}' AS dst (BLOCK_SIZE {_RUN_BLOCK})")
        con.execute("COPY FROM DATABASE src TO dst (SCHEMA)")
        tables = con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'src'"
        ).fetchall()
        for (table,) in tables:
            if not (moved and table in bulk.STORED):
                con.execute(f"INSERT INTO dst.{table} SELECT * FROM src.{table}")
        if moved:
            con.execute("INSERT INTO dst.meta VALUES (?, ?)", [bulk.BULK_KEY, bulk.BULK_PARQUET])
        con.execute("DETACH dst")
    finally:
        con.close()
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")
