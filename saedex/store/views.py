"""All of an index's runs as one database: the tables' names, read across the run files.

An in-memory DuckDB connection attaches the base file and every complete run file read-only and
defines one view per table (`saes`, `activations`, ...) as the union of that table over them, so
SQL written against a single file runs unchanged. The catalog is polled (a stat, at most every
`POLL_S`); when it changes, new run files are attached and the views replaced in one
transaction: a query sees the runs before or after, and never a run that is not complete.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb

from saedex.errors import SaedexError
from saedex.store import bulk
from saedex.store.catalog import Catalog
from saedex.store.connection import failure, open_db
from saedex.store.schema import SCHEMA_VERSION, TABLES, check_version, ensure_schema

POLL_S = 0.5
# The tables every reader sees, under these names, whatever file holds their rows.
VIEWS = tuple(name for name in TABLES if name != "meta")
# Tables a derived file recomputes for whole SAEs (`saedex coactivations`): where a current
# derived file holds an SAE's rows, they replace what the run stored for it, never add to it.
REPLACED_BY_DERIVED = ("coactivations",)


class IndexView:
    """The connection readers query, kept in step with the catalog."""

    def __init__(self, db: Path):
        self.db = Path(db)
        if not self.db.exists():
            raise SaedexError(f"index file not found: {self.db}")
        self.catalog = Catalog(self.db)
        self.con = duckdb.connect()
        self.con.execute("SET parquet_metadata_cache = true")  # run files never change
        self.generation = 0  # bumped whenever the views change
        self.changed: set[str] = set()  # SAEs whose run file changed at the last refresh
        self._attached: dict[Path, str] = {}
        self._parquet: dict[str, bool] = {}  # alias -> bulk tables in Parquet
        self._runs: dict[str, Path] = {}
        self._stamp: object = "never"
        self._checked = 0.0
        self._lock = threading.Lock()
        try:
            self._attach(self.db, "base")
            self.refresh(force=True)
        except BaseException:
            self.con.close()
            raise

    def close(self) -> None:
        self.con.close()

    def refresh(self, force: bool = False) -> bool:
        """Pick up runs completed since the last look; True if the views changed."""
        now = time.monotonic()
        if not force and now - self._checked < POLL_S:
            return False
        with self._lock:
            self._checked = now
            stamp = self.catalog.stamp()
            if stamp == self._stamp:
                return False
            runs, current = self.catalog.snapshot()
            derived = list(current.values())
            for path in [*runs.values(), *derived]:
                if path not in self._attached:
                    self._attach(path, f"run{len(self._attached)}")
            self.changed = {k for k, p in runs.items() if self._runs.get(k) != p}
            self._define_views(runs, derived)
            self._runs, self._stamp = runs, stamp
            self.generation += 1
            return True

    def _attach(self, path: Path, alias: str) -> None:
        """Attach read-only, upgrading first a file an earlier saedex wrote."""
        open_db(path, read_only=True).close()  # damaged, locked or foreign: one clear line
        for _ in range(2):
            try:
                self.con.execute(f"ATTACH '{_quote(path)}' AS {alias} (READ_ONLY)")
            except duckdb.Error as exc:
                raise SaedexError(failure(path, exc)) from None
            version = check_version(self.con, path, f"{alias}.")
            if version is None or version == SCHEMA_VERSION:
                self._attached[path] = alias
                return
            self.con.execute(f"DETACH {alias}")
            rw = open_db(path)
            try:
                ensure_schema(rw, path)
            finally:
                rw.close()
        raise SaedexError(f"{path}: could not upgrade the index")

    def _define_views(self, runs: dict[str, Path], derived: list[Path]) -> None:
        """One view per table: the base file's rows (but runs a run file replaced), each
        complete run file's and each current derived file's; each model's vocabulary from the
        first file that has it."""
        sources = [("base", _not_in("sae_id", runs))]
        sources += [(self._attached[p], "TRUE") for p in [*runs.values(), *derived]]
        files = {alias: path for path, alias in self._attached.items()}
        replaced = self._replaced(derived)
        derived_aliases = {self._attached[p] for p in derived}
        models: set[str] = set()
        vocab_filters = {}
        for alias, _ in sources:
            sql = f"SELECT DISTINCT model_name FROM {alias}.vocab"
            have = {r[0] for r in self.con.execute(sql).fetchall()}
            vocab_filters[alias] = _not_in("model_name", models)
            models |= have
        self.con.execute("BEGIN TRANSACTION")
        try:
            # the tables, then the views of stored columns only (saedex.store.bulk.KEY_VIEWS)
            views = [(table, table, "*", False) for table in VIEWS]
            views += [(view, *spec, True) for view, spec in bulk.KEY_VIEWS.items()]
            for view, table, columns, stored_only in views:
                parts = [
                    f"SELECT {columns} FROM "
                    f"({self._source(table, alias, files[alias], stored_only)}) WHERE "
                    f"{vocab_filters[alias] if table == 'vocab' else where}"
                    + ("" if alias in derived_aliases else replaced.get(table, ""))
                    for alias, where in sources
                ]
                union = " UNION ALL BY NAME ".join(parts)
                self.con.execute(f"CREATE OR REPLACE VIEW {view} AS {union}")
            self.con.execute("CREATE OR REPLACE VIEW meta AS SELECT * FROM base.meta")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def _replaced(self, derived: list[Path]) -> dict[str, str]:
        """Per table of REPLACED_BY_DERIVED, the filter (" AND ...") that leaves out of the
        other files the SAEs whose rows a current derived file holds."""
        out = {}
        for table in REPLACED_BY_DERIVED:
            ids: set[str] = set()
            for path in derived:
                source = self._source(table, self._attached[path], path)
                ids |= {
                    r[0]
                    for r in self.con.execute(f"SELECT DISTINCT sae_id FROM ({source})").fetchall()
                }
            out[table] = f" AND {_not_in('sae_id', ids)}" if ids else ""
        return out

    def _source(self, table: str, alias: str, path: Path, stored_only: bool = False) -> str:
        """Where an attached file's rows of `table` are: its own table, or the Parquet file
        a compacted run keeps them in (saedex/store/bulk.py; `stored_only`: as stored, without
        the columns recomputed on reading)."""
        if alias not in self._parquet:
            self._parquet[alias] = bulk.is_parquet(self.con, f"{alias}.")
            if self._parquet[alias]:
                bulk.check_files(path)
        if self._parquet[alias] and table in bulk.STORED:
            if stored_only:
                return bulk.stored_sql(table, path)
            return bulk.read_sql(self.con, table, path, alias)
        return f"SELECT * FROM {alias}.{table}"


def connect(db: str | Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection over every complete run of the index at `db`, for your own SQL
    (docs/schema.md): the same table names as a single-file index, read-only."""
    return IndexView(Path(db)).con


def _not_in(column: str, values) -> str:
    """A filter leaving out `values` (none: every row; `NOT IN (NULL)` would drop them all)."""
    if not values:
        return "TRUE"
    return f"{column} NOT IN ({', '.join(repr_sql(v) for v in sorted(values))})"


def repr_sql(value: str) -> str:
    return f"'{_quote(value)}'"


def _quote(text: str | Path) -> str:
    return str(text).replace("'", "''")
