"""A complete run's bulk tables as Parquet files: written once when the run is compacted, read
back as the schema's tables (exactly the rows and columns the run file held).

Why Parquet: zstd over Parquet's encodings (dictionary/RLE and delta-coded ids, byte-stream-split
floats) stores a run's rows in about half the bytes DuckDB's own format takes (docs/schema.md,
"Size"). Each table is sorted for its readers and compresses well in that order: `activations`
feature-major (a feature's rows are contiguous, so a lookup reads one row group; its contexts
and positions ascend), the per-feature tables by feature.

What can be computed from other stored rows is not stored twice; the reading SQL recomputes it,
with the same arithmetic as the writer, so every value reads back bit-identical:
- `features.hist_edges`: `max_activation * i / bins` (the writer's definition);
- `intervals.low`, `high` and `fraction`: from the feature's `max_activation` and `n_active`;
- `examples.active_positions`, `active_values` and `max_activation`: the example's activations,
  from `activations` (the same rows the writer listed).

A run file whose bulk data lives here says so in its `meta` (`bulk = parquet`); its own bulk
tables are then empty. The files lie in a folder beside it, `<run file stem>.parquet/`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb

from saedex.errors import SaedexError

BULK_KEY = "bulk"
BULK_PARQUET = "parquet"
# zstd level 9: ~1.5% smaller than the default 3 for activations at twice the (seconds-long) cost.
_COPY_OPTIONS = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 9, PARQUET_VERSION v2"
# Activations' ids delta-coded rather than dictionary-coded: within a feature the contexts
# ascend, so the deltas stay small however long the corpus (a dictionary of context ids grows
# with it); 3% smaller already at 30k tokens.
_DELTA_IDS = ", DICTIONARY_SIZE_LIMIT 64"
# table -> (stored columns, sort order, rows per row group). Everything not listed here stays
# in the run file. Row groups are small enough that a query for a few features (constants:
# their min/max statistics prune the rest) decodes a small part of the file: ~30 features of
# a 4,608-feature SAE for `activations` at k = 32, fewer for the per-feature tables.
STORED: dict[str, tuple[str, str, int]] = {
    "documents": ("*", "doc_index", 65_536),
    "contexts": ("*", "context_id", 4_096),
    "excluded_tokens": ("*", "context_id, position", 65_536),
    "activations": (
        "sae_id, feature, context_id, position, value",
        "feature, context_id, position",
        65_536,
    ),
    "features": ("* EXCLUDE (hist_edges)", "feature", 512),
    "feature_logits": ("*", "feature, kind, rank", 8_192),
    "intervals": ("sae_id, feature, interval, n_activations", "feature, interval", 4_096),
    "examples": (
        "sae_id, feature, kind, interval, rank, context_id, max_position",
        "feature, kind DESC, interval, rank",
        16_384,
    ),
    "neighbours": ("*", "feature, rank", 4_096),
}


# Views over stored columns only, for readers that need no recomputed ones: `examples` joins
# each example to its activations, a cost a query for its keys should not pay.
KEY_VIEWS = {
    "example_keys": ("examples", "sae_id, feature, kind, interval, rank, context_id, max_position")
}


def folder(run_file: Path) -> Path:
    """Where a run file's Parquet tables are: `<stem>.parquet/` beside it."""
    return run_file.with_name(run_file.stem + ".parquet")


def is_parquet(con: duckdb.DuckDBPyConnection, prefix: str = "") -> bool:
    """Whether the (attached, with `prefix` its alias and a dot) run file keeps its bulk
    tables in Parquet."""
    rows = con.execute(f"SELECT value FROM {prefix}meta WHERE key = ?", [BULK_KEY]).fetchall()
    return bool(rows) and rows[0][0] == BULK_PARQUET


def has_rows(con: duckdb.DuckDBPyConnection, alias: str) -> bool:
    """Whether the attached file holds rows of any bulk table."""
    probes = " UNION ALL ".join(f"(SELECT 1 FROM {alias}.{t} LIMIT 1)" for t in STORED)
    return bool(con.execute(probes).fetchall())


def write_tables(con: duckdb.DuckDBPyConnection, alias: str, run_file: Path) -> None:
    """Write every bulk table of the attached run `alias` into the run's Parquet folder.

    Written into a scratch folder, synced, then renamed into place: a kill leaves either no
    folder (the run file still holds every row; the next compaction starts again) or a
    complete one."""
    final = folder(run_file)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for table, (columns, order, row_group) in STORED.items():
        out = tmp / f"{table}.parquet"
        options = f"{_COPY_OPTIONS}, ROW_GROUP_SIZE {row_group}"
        if table == "activations":
            options += _DELTA_IDS
        con.execute(
            f"COPY (SELECT {columns} FROM {alias}.{table} ORDER BY {order}) "
            f"TO '{_quote(out)}' ({options})"
        )
        _fsync(out)
    _fsync(tmp)
    shutil.rmtree(final, ignore_errors=True)  # a stale one from a killed compaction
    os.replace(tmp, final)
    _fsync(final.parent)


def check_files(run_file: Path) -> None:
    """Refuse (one line) a compacted run whose Parquet files are not all there, e.g. a run
    file copied without its folder."""
    missing = [t for t in STORED if not (folder(run_file) / f"{t}.parquet").is_file()]
    if missing:
        raise SaedexError(
            f"{run_file}: its tables {', '.join(missing)} are missing from {folder(run_file)}: "
            "copy the whole runs folder with the index"
        )


def remove(run_file: Path) -> None:
    """Delete a run file's Parquet folder (if it has one)."""
    shutil.rmtree(folder(run_file), ignore_errors=True)


def stored_sql(table: str, run_file: Path) -> str:
    """A SELECT of the table's stored columns (no recomputed ones)."""
    return f"SELECT * FROM {_parquet(run_file, table)}"


def read_sql(con: duckdb.DuckDBPyConnection, table: str, run_file: Path, alias: str) -> str:
    """A SELECT giving `table`'s rows of the run: the columns of the run file's (empty) table,
    in its order. `alias` is the run file attached (its `saes` row holds the run's settings)."""
    columns = [r[0] for r in con.execute(f"DESCRIBE {alias}.{table}").fetchall()]
    return f"SELECT {', '.join(columns)} FROM ({_stored_sql(table, run_file, alias)})"


def _stored_sql(table: str, run_file: Path, alias: str) -> str:
    """The table's rows with every column, recomputed where not stored."""
    src = {t: _parquet(run_file, t) for t in STORED}
    if table == "features":
        return (
            f"SELECT *, CASE WHEN n_active = 0 THEN []::DOUBLE[] ELSE list_transform("
            f"range(len(hist_counts) + 1), lambda i: max_activation * i / len(hist_counts)) "
            f"END AS hist_edges FROM {src['features']}"
        )
    if table == "intervals":
        n = "(s.settings->>'n_intervals')::INTEGER"
        return (
            f"SELECT i.sae_id, i.feature, i.interval, f.max_activation * i.interval / {n} AS low, "
            f"f.max_activation * (i.interval + 1) / {n} AS high, i.n_activations, "
            f"i.n_activations / f.n_active AS fraction FROM {src['intervals']} i "
            f"JOIN {src['features']} f USING (sae_id, feature) JOIN {alias}.saes s USING (sae_id)"
        )
    if table == "examples":
        return (
            "SELECT sae_id, feature, kind, interval, rank, context_id, "
            "vs[list_position(ps, max_position)] AS max_activation, max_position, "
            "ps AS active_positions, vs AS active_values FROM ("
            "SELECT e.sae_id, e.feature, e.kind, e.interval, e.rank, e.context_id, "
            "e.max_position, list(a.position ORDER BY a.position) AS ps, "
            "list(a.value ORDER BY a.position) AS vs "
            f"FROM {src['examples']} e JOIN {src['activations']} a "
            "USING (sae_id, feature, context_id) GROUP BY ALL)"
        )
    return f"SELECT * FROM {src[table]}"


def _parquet(run_file: Path, table: str) -> str:
    return f"read_parquet('{_quote(folder(run_file) / f'{table}.parquet')}')"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")
