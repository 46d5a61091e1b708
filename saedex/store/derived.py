"""Rows computed from complete runs after they were indexed (an earlier run's co-activations,
matches between two SAEs), published beside the runs.

A derived file is a DuckDB file in the runs folder with the whole schema (its other tables
empty), written by one command and compacted, then named in the catalog together with the run
file each input SAE had when the rows were computed. Readers attach it like a run file, so the
rows appear under the usual table names (`coactivations`, `feature_matches`) without a restart.
Once an input SAE is indexed again its entry no longer matches and readers stop seeing the rows,
which describe weights or activations that are gone; running the command again replaces them.
A file that a killed command left unpublished is never read (docs/schema.md, "Layout").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb

from saedex.errors import SaedexError
from saedex.store.catalog import Catalog, input_names, new_file_name
from saedex.store.connection import open_db
from saedex.store.layout import compact
from saedex.store.schema import ensure_schema
from saedex.store.views import IndexView

Fill = Callable[[duckdb.DuckDBPyConnection], None]


def publish_derived(db: str | Path, key: str, inputs: Sequence[str], fill: Fill) -> Path:
    """Write a derived file with `fill` (given a read-write connection to a file that has the
    index's schema; it inserts the rows, in one transaction) and publish it under `key` as
    computed from the complete runs of `inputs` (SAE ids). The same key published again
    replaces the earlier file. Nothing is visible unless every step succeeds."""
    db = Path(db)
    catalog = Catalog(db)
    names = input_names(catalog.runs(), _complete_saes(db, inputs))
    catalog.dir.mkdir(exist_ok=True)  # an upgraded single-file index has no runs folder yet
    path = catalog.dir / new_file_name(f"derived-{key}")
    try:
        _write(path, fill)
        compact(path)
        catalog.publish_derived(key, path.name, names)
    except BaseException:
        for leftover in (path, path.with_name(path.name + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise
    return path


def _complete_saes(db: Path, inputs: Sequence[str]) -> list[str]:
    """The inputs, checked: each must be an SAE whose run is complete in this index."""
    view = IndexView(db)
    try:
        rows = view.con.execute("SELECT sae_id FROM saes WHERE status = 'complete'").fetchall()
    finally:
        view.close()
    known = {r[0] for r in rows}
    unknown = [sae for sae in inputs if sae not in known]
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise SaedexError(
            f"no complete run of SAE {', '.join(map(repr, unknown))} in {db} (it has: {listed})"
        )
    return list(dict.fromkeys(inputs))


def _write(path: Path, fill: Fill) -> None:
    con = open_db(path)
    try:
        ensure_schema(con, path)
        con.execute("BEGIN TRANSACTION")
        fill(con)
        con.execute("COMMIT")
    finally:
        con.close()
