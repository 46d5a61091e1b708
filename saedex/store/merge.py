"""Shard files of a sharded pass, and their exact merge into the run file.

A sharded run (saedex.indexer.sharding) plans its contexts into the run file as usual, then
cuts them into contiguous ranges. Each range becomes a **shard file**: an ordinary run file
holding the run's `saes` row and only that range's contexts, its progress counter starting at
the range's first context. A Ray worker runs the usual pass over it (resumable like any run: a
worker killed mid-shard is retried and continues from the shard's last commit) and then marks
it complete: the shard row's `status = 'complete'` with `contexts_done` at the range's end is
the completion marker. Shard files sit in a folder beside the run file, never in the catalog,
so readers never see them.

The merge appends each complete shard's `activations` and `excluded_tokens` to the run file
in context order, one transaction per shard that also advances the run's `contexts_done`
(so a driver killed mid-merge resumes after the last merged shard) and adds the shard's token
counts. A shard without the marker is refused: partial output is never merged. The rows are
copied as stored (no float is recomputed), streamed by DuckDB from file to file, so the merge
holds no activations in Python; the aggregation that follows is the single-process one over
the same rows, hence the same index.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from saedex.errors import SaedexError
from saedex.store.layout import _quote, read_run_state
from saedex.store.writer import STATUS_COMPLETE, STATUS_RUNNING, IndexWriter

# What a shard adds to the run: its rows in these tables, and its counters.
SHARD_TABLES = ("activations", "excluded_tokens")


@dataclass(frozen=True)
class Shard:
    """Contexts `first` (included) to `end` (excluded) of a run, in the file `path`."""

    index: int
    first: int
    end: int
    path: Path


def create_shard(writer: IndexWriter, sae_id: str, shard: Shard) -> None:
    """Write a shard's input file from the run file: the run's row (progress at `first`, no
    tokens yet) and the shard's contexts. Written beside it and renamed: a shard file that
    exists is whole."""
    tmp = shard.path.with_name(shard.path.name + ".tmp")
    for stale in (tmp, tmp.with_name(tmp.name + ".wal")):
        stale.unlink(missing_ok=True)
    IndexWriter(tmp).close()  # the schema
    con = writer.con
    with _shard_attached(con, tmp):
        con.execute(
            "INSERT INTO shard.saes SELECT * REPLACE (? AS status, ? AS contexts_done, "
            "0 AS n_tokens, 0 AS n_excluded_tokens, 0.0 AS duration_s) "
            "FROM saes WHERE sae_id = ?",
            [STATUS_RUNNING, shard.first, sae_id],
        )
        con.execute(
            "INSERT INTO shard.contexts SELECT * FROM contexts "
            "WHERE sae_id = ? AND context_id >= ? AND context_id < ? ORDER BY context_id",
            [sae_id, shard.first, shard.end],
        )
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, shard.path)


def mark_complete(writer: IndexWriter, sae_id: str, shard: Shard) -> None:
    """The completion marker, once the shard's pass has committed every context."""
    done = writer.run_state(sae_id).contexts_done
    if done != shard.end:
        raise SaedexError(f"shard {shard.index} stopped at context {done} of {shard.end}")
    writer.con.execute("UPDATE saes SET status = ? WHERE sae_id = ?", [STATUS_COMPLETE, sae_id])
    writer.con.execute("CHECKPOINT")


def is_complete(sae_id: str, shard: Shard) -> bool:
    """Whether a shard file carries its completion marker (False while a worker holds it)."""
    try:
        state = read_run_state(shard.path, sae_id)
    except (duckdb.Error, SaedexError):  # locked by its worker, or a file being created
        return False
    return (
        state is not None and state.status == STATUS_COMPLETE and state.contexts_done == shard.end
    )


def merge_shard(writer: IndexWriter, sae_id: str, shard: Shard) -> None:
    """Append one complete shard's rows and counters to the run, with the run's progress, in
    one transaction; a shard that is not complete, or not next in line, is refused."""
    if not is_complete(sae_id, shard):
        raise SaedexError(f"shard {shard.index} ({shard.path}) is not complete: not merged")
    state = writer.run_state(sae_id)
    if state.contexts_done != shard.first:
        raise SaedexError(
            f"shard {shard.index} starts at context {shard.first}, the run is at "
            f"{state.contexts_done}: not merged"
        )
    con = writer.con
    with _shard_attached(con, shard.path, read_only=True):
        for table in SHARD_TABLES:
            con.execute(
                f"INSERT INTO {table} BY NAME SELECT * FROM shard.{table} WHERE sae_id = ?",
                [sae_id],
            )
        con.execute(
            "UPDATE saes SET contexts_done = s.contexts_done, "
            "n_tokens = saes.n_tokens + s.n_tokens, "
            "n_excluded_tokens = saes.n_excluded_tokens + s.n_excluded_tokens, "
            "duration_s = saes.duration_s + s.duration_s "
            "FROM shard.saes s WHERE saes.sae_id = ? AND s.sae_id = saes.sae_id",
            [sae_id],
        )


@contextmanager
def _shard_attached(con: duckdb.DuckDBPyConnection, path: Path, read_only: bool = False):
    """`path` attached as `shard` for one transaction of the connection (rolled back on any
    error), then detached."""
    con.execute(f"ATTACH '{_quote(path)}' AS shard{' (READ_ONLY)' if read_only else ''}")
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    finally:
        con.execute("DETACH shard")
