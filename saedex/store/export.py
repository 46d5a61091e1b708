"""An index as Parquet files: every public table, hive-partitioned by SAE, for pandas, polars,
DuckDB, Arrow and HF datasets.

Layout under the output folder:

    manifest.json                      what was written: tables, rows, partitioning, versions
    saes.parquet  vocab.parquet  meta.parquet        small tables, one file each
    <table>/sae_id=<id>/data_0.parquet  per-SAE tables (activations, examples, ...)

A partitioned table's `sae_id` lives in the folder name (hive style), not in the files: readers
that understand hive partitioning (DuckDB, pandas/pyarrow, polars) give it back as a column.
The SQL here is the store's; the tables are read by name, so they export whatever layout the
store keeps behind them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from saedex.errors import SaedexError
from saedex.store.schema import SCHEMA_VERSION
from saedex.store.views import connect

# The public tables (docs/schema.md), in the order a reader meets them.
TABLES = (
    "meta",
    "saes",
    "vocab",
    "documents",
    "contexts",
    "excluded_tokens",
    "activations",
    "features",
    "feature_logits",
    "intervals",
    "examples",
    "neighbours",
    "coactivations",
    "feature_matches",
    "feature_families",
)
UNPARTITIONED = {"meta", "saes", "vocab"}  # small, or keyed by model rather than SAE
PARTITION = "sae_id"
MANIFEST = "manifest.json"


@dataclass
class ParquetExport:
    """What one export wrote: rows per table."""

    out: Path
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def export_parquet(
    db: str | Path, out: str | Path, sae_ids: list[str] | None = None, overwrite: bool = False
) -> ParquetExport:
    """Write every table of `db` (only the rows of `sae_ids`, if given) under `out`."""
    started = time.perf_counter()
    db, out = Path(db), Path(out)
    if not db.is_file():
        raise SaedexError(f"index file not found: {db}")
    _prepare(out, overwrite)
    con = connect(db)  # every complete run, upgraded if an earlier saedex wrote it
    try:
        known = {r[0] for r in con.execute("SELECT sae_id FROM saes").fetchall()}
        wanted = sorted(known) if sae_ids is None else list(dict.fromkeys(sae_ids))
        missing = [s for s in wanted if s not in known]
        if missing:
            raise SaedexError(
                f"no SAE {', '.join(map(repr, missing))} in {db} "
                f"(it has: {', '.join(sorted(known)) or 'none'})"
            )
        result = ParquetExport(out)
        for table in TABLES:
            result.rows[table] = _copy(con, table, out, wanted)
    finally:
        con.close()
    result.seconds = time.perf_counter() - started
    _write_manifest(result, wanted)
    return result


def _prepare(out: Path, overwrite: bool) -> None:
    """An empty folder; an earlier export (it has a manifest) is replaced only when asked."""
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise SaedexError(f"{out} is not empty and holds no saedex export; choose a new folder")
        if not overwrite:
            raise SaedexError(f"{out} already holds an export; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _select(con: duckdb.DuckDBPyConnection, table: str, sae_ids: list[str]) -> tuple[str, list]:
    """The table's rows for the chosen SAEs (vocab: of their models), as stored."""
    if table == "meta":
        return "SELECT * FROM meta ORDER BY key", []
    if table == "vocab":
        return (
            "SELECT * FROM vocab WHERE model_name IN "
            "(SELECT model_name FROM saes WHERE sae_id IN (SELECT unnest(?))) "
            "ORDER BY model_name, token_id",
            [sae_ids],
        )
    return f"SELECT * FROM {table} WHERE sae_id IN (SELECT unnest(?))", [sae_ids]


def _copy(con: duckdb.DuckDBPyConnection, table: str, out: Path, sae_ids: list[str]) -> int:
    query, params = _select(con, table, sae_ids)
    n = con.execute(f"SELECT count(*) FROM ({query})", params).fetchone()[0]
    if table in UNPARTITIONED or n == 0:
        # An empty table still gets a file, so its columns and types survive the trip.
        target = out / (f"{table}.parquet" if table in UNPARTITIONED else f"{table}/empty.parquet")
        target.parent.mkdir(parents=True, exist_ok=True)
        options = "FORMAT parquet, COMPRESSION zstd"
    else:
        target = out / table
        options = f"FORMAT parquet, COMPRESSION zstd, PARTITION_BY ({PARTITION})"
    con.execute(f"COPY ({query}) TO '{_literal(target)}' ({options})", params)
    return n


def _literal(path: Path) -> str:
    return str(path).replace("'", "''")


def _write_manifest(result: ParquetExport, sae_ids: list[str]) -> None:
    manifest = {
        "format": "saedex-parquet",
        "schema_version": SCHEMA_VERSION,
        "saes": sae_ids,
        "partitioning": {"column": PARTITION, "style": "hive"},
        "tables": {
            name: {
                "rows": rows,
                "path": f"{name}.parquet" if name in UNPARTITIONED else f"{name}/**/*.parquet",
                "partitioned": name not in UNPARTITIONED,
            }
            for name, rows in result.rows.items()
        },
    }
    (result.out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_table(out: str | Path, table: str) -> duckdb.DuckDBPyRelation:
    """A table of an export as DuckDB reads it back (sae_id read as text, as stored)."""
    out = Path(out)
    if table in UNPARTITIONED:
        return duckdb.read_parquet(str(out / f"{table}.parquet"))
    if (out / table / "empty.parquet").is_file():  # a table with no rows: no partitions
        return duckdb.read_parquet(str(out / table / "empty.parquet"))
    return duckdb.sql(
        f"SELECT * FROM read_parquet('{_literal(out / table)}/**/*.parquet', "
        "hive_partitioning = true, hive_types = {'sae_id': VARCHAR}, union_by_name = true)"
    )
