"""The indexer's write path: a run's plan, its per-batch activations, and the final aggregation.

Crash safety comes from DuckDB transactions: each batch commits its activations together with
the run's progress counter, so a killed run resumes at the first uncommitted batch and nothing
is lost or doubled. Everything derived (stats, examples, intervals) is rebuilt in one final
transaction from the sparse `activations` table, so it never sees a partial run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from saedex.config import IndexConfig
from saedex.store.connection import limit_memory, open_db
from saedex.store.precision import EXACT, round_column
from saedex.store.schema import DERIVED_TABLES, PROVENANCE_COLUMNS, RUN_TABLES, ensure_schema

STATUS_PLANNING = "planning"
STATUS_RUNNING = "running"
STATUS_COMPLETE = "complete"


@dataclass(frozen=True)
class RunState:
    """Where a stored run stands, for resuming it."""

    status: str
    settings: dict
    n_contexts: int
    contexts_done: int
    duration_s: float
    provenance: dict  # the saes provenance columns (None where not recorded)


@dataclass(frozen=True)
class Batch:
    """A slice of a run's contexts, in context_id order."""

    context_ids: list[int]
    token_ids: list[list[int]]


def run_state(con: duckdb.DuckDBPyConnection, sae_id: str) -> RunState | None:
    """Where `sae_id`'s run stands in this file, or None if it has none."""
    row = con.execute(
        f"SELECT status, settings, n_contexts, contexts_done, duration_s, "
        f"{', '.join(PROVENANCE_COLUMNS)} FROM saes WHERE sae_id = ?",
        [sae_id],
    ).fetchone()
    if row is None:
        return None
    made_of = dict(zip(PROVENANCE_COLUMNS, row[5:], strict=True))
    return RunState(row[0], json.loads(row[1]), row[2], row[3], row[4], made_of)


class IndexWriter:
    """Owns the read-write connection while a run writes into the index file."""

    def __init__(self, path: str | Path, memory_limit: str | None = None):
        """`memory_limit` (IndexConfig.memory_limit) bounds DuckDB's memory on this connection;
        past it DuckDB spills to a temporary folder beside the file."""
        self.con = open_db(path)
        try:
            limit_memory(self.con, memory_limit)
            ensure_schema(self.con, path)
        except BaseException:
            self.con.close()  # else the file stays locked for the rest of the process
            raise

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- run lifecycle -------------------------------------------------------------------------

    def run_state(self, sae_id: str) -> RunState | None:
        return run_state(self.con, sae_id)

    def delete_run(self, sae_id: str) -> None:
        """Remove every row a run owns, atomically."""
        with self._transaction():
            for table in RUN_TABLES:
                self.con.execute(f"DELETE FROM {table} WHERE sae_id = ?", [sae_id])

    def write_plan(
        self,
        run: dict,
        documents: Iterable[dict],
        contexts: Iterable[dict],
        skipped: Callable[[], int] = lambda: 0,
        chunk: int = 4096,
    ) -> int:
        """Store the run's row, its documents and its tokenised contexts in one transaction.

        `run` holds the `saes` columns known up front; `contexts` may be a generator, consumed
        in chunks so memory stays bounded by `chunk`, not by the corpus. `skipped` counts the
        documents the corpus reader skipped, once the contexts are consumed (same transaction).
        """
        with self._transaction():
            for table in RUN_TABLES:
                self.con.execute(f"DELETE FROM {table} WHERE sae_id = ?", [run["sae_id"]])
            row = {**run, "status": STATUS_PLANNING, "settings": json.dumps(run["settings"])}
            cols = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            self.con.execute(f"INSERT INTO saes ({cols}) VALUES ({marks})", list(row.values()))
            n_contexts = self._insert_chunked("contexts", contexts, chunk)
            self._insert_chunked("documents", documents, chunk)
            self.con.execute(
                "UPDATE saes SET status = ?, n_contexts = ?, n_skipped_documents = ?, "
                "n_documents = (SELECT count(*) FROM documents WHERE sae_id = ?) "
                "WHERE sae_id = ?",
                [STATUS_RUNNING, n_contexts, skipped(), run["sae_id"], run["sae_id"]],
            )
        return n_contexts

    def vocab_size(self, model_name: str) -> int:
        """Token strings already stored for a model (0 if none)."""
        return self.con.execute(
            "SELECT count(*) FROM vocab WHERE model_name = ?", [model_name]
        ).fetchone()[0]

    def write_vocab(self, model_name: str, tokens: list[str]) -> None:
        """Store (or replace) the model's decoded token strings, so readers need no tokenizer."""
        table = pa.table(
            {
                "model_name": pa.array([model_name] * len(tokens)),
                "token_id": pa.array(range(len(tokens)), pa.int32()),
                "token": pa.array(tokens),
            }
        )
        with self._transaction():
            self.con.execute("DELETE FROM vocab WHERE model_name = ?", [model_name])
            insert_arrow(self.con, "vocab", table)

    # -- the pass ------------------------------------------------------------------------------

    def batches(
        self, sae_id: str, start: int, batch_size: int, per_read: int = 64
    ) -> Iterator[Batch]:
        """Yield the run's contexts from `start` on, `batch_size` at a time.

        They are read `per_read` batches per query (a range of context ids, which are
        contiguous and stored in order), each query finished before its batches are used.
        One query streamed over the whole pass would keep a transaction open across the pass's
        commits, and DuckDB does not checkpoint a commit holding an update (the progress row)
        while another transaction is open: the WAL and DuckDB's memory then grew with every
        token (a WAL of 437 MB and 5.6 GB of RSS two thirds through a 3M-token run).
        """
        last = self.con.execute(
            "SELECT max(context_id) FROM contexts WHERE sae_id = ?", [sae_id]
        ).fetchone()[0]
        step = batch_size * per_read
        for low in range(start, -1 if last is None else last + 1, step):
            rows = self.con.execute(
                "SELECT context_id, token_ids FROM contexts WHERE sae_id = ? "
                "AND context_id >= ? AND context_id < ? ORDER BY context_id",
                [sae_id, low, low + step],
            ).fetchall()
            for i in range(0, len(rows), batch_size):
                part = rows[i : i + batch_size]
                yield Batch([r[0] for r in part], [r[1] for r in part])

    def remaining_tokens(self, sae_id: str, start: int) -> int:
        return self.con.execute(
            "SELECT coalesce(sum(len(token_ids)), 0) FROM contexts "
            "WHERE sae_id = ? AND context_id >= ?",
            [sae_id, start],
        ).fetchone()[0]

    @contextmanager
    def pass_writer(self, sae_id: str) -> Iterator[PassWriter]:
        """Where the pass appends its batches; see PassWriter. DuckDB runs single-threaded
        meanwhile: the inserts are too small to gain from a second thread and the model's threads
        want the cores (two threads took ~1.7x as long per row)."""
        settings = self.con.execute("SELECT settings FROM saes WHERE sae_id = ?", [sae_id])
        precision = json.loads(settings.fetchall()[0][0]).get("value_precision", EXACT)
        with one_thread(self.con), PassWriter(self.con, sae_id, precision) as out:
            yield out

    # -- aggregation ---------------------------------------------------------------------------

    def finalize(
        self,
        sae_id: str,
        cfg: IndexConfig,
        d_sae: int,
        logits: pa.Table,
        logit_hist: pa.Table,
        neighbours: pa.Table,
        elapsed_s: float,
    ) -> None:
        """Derive every per-feature table from `activations` and mark the run complete.

        `logits` (feature, kind, rank, token_id, value), `logit_hist` (feature, edges, counts)
        and `neighbours` (feature, rank, neighbour, cosine) come from the SAE's weights.
        """
        params = {
            "sae": sae_id,
            "bins": cfg.hist_bins,
            "n_int": cfg.n_intervals,
            "per_int": cfg.examples_per_interval,
            "k": cfg.top_k,
            "top_rows": 4 * cfg.top_k,
            "sample_rows": 6 * cfg.examples_per_interval,
            "seed": cfg.seed,
            "d_sae": d_sae,
        }
        with self._transaction():
            for table in DERIVED_TABLES:
                self.con.execute(f"DELETE FROM {table} WHERE sae_id = ?", [sae_id])
            for name, table in (("_logits", logits), ("_lhist", logit_hist), ("_nb", neighbours)):
                self.con.register(name, table)
            with one_thread(self.con):  # float sums in one order: reruns are bit-identical
                self._execute_all((_STATS_SQL,), params)
            self._execute_all(_DERIVE_SQL, params)
            self._execute_all(_STORE_SQL, params)
            for name in ("_logits", "_lhist", "_nb"):
                self.con.unregister(name)
            self.con.execute(
                "UPDATE saes SET status = ?, finished_at = ?, duration_s = duration_s + ?, "
                "dead_features = (SELECT count(*) FROM features "
                "                 WHERE sae_id = $1 AND n_active = 0) "
                "WHERE sae_id = $1".replace("$1", "?"),
                [STATUS_COMPLETE, datetime.now(), elapsed_s, sae_id, sae_id],
            )

    # -- helpers -------------------------------------------------------------------------------

    def _execute_all(self, statements: Iterable[str], params: dict) -> None:
        """Run each statement with the named parameters (`$name`) it uses."""
        for sql in statements:
            self.con.execute(sql, {name: params[name] for name in set(_PARAM.findall(sql))})

    def _insert_chunked(self, table: str, rows: Iterable[dict], chunk: int) -> int:
        total, buf = 0, []
        for row in rows:
            buf.append(row)
            if len(buf) >= chunk:
                total += self._insert_rows(table, buf)
                buf = []
        if buf:
            total += self._insert_rows(table, buf)
        return total

    def _insert_rows(self, table: str, rows: list[dict]) -> int:
        insert_arrow(self.con, table, pa.Table.from_pylist(rows))
        return len(rows)

    def _transaction(self):
        return _Transaction(self.con)


@dataclass
class _Progress:
    """What the batches appended since the last commit add to the run's counters."""

    contexts_done: int = 0
    n_tokens: int = 0
    n_excluded: int = 0
    seconds: float = 0.0


class PassWriter:
    """Appends batches of sparse activations, committing them with the run's progress.

    Batches accumulate in one open transaction until `commit()` (the caller decides how often):
    a commit syncs the WAL to disk, which costs more than inserting a batch. A crash loses only
    the uncommitted batches, and the stored progress counter says where to resume.
    Activation values are stored at the run's `value_precision` (saedex.store.precision).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, sae_id: str, precision: str = EXACT):
        self.con = con
        self.sae_id = sae_id
        self.precision = precision
        self._open = False
        self._pending = _Progress()

    def __enter__(self) -> PassWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.commit()
        elif self._open:
            self.con.execute("ROLLBACK")

    def append(
        self,
        contexts_done: int,
        activations: pa.Table,
        excluded: pa.Table,
        n_tokens: int,
        elapsed_s: float,
    ) -> None:
        if not self._open:
            self.con.execute("BEGIN TRANSACTION")
            self._open = True
        activations = round_column(activations, "value", self.precision)
        insert_arrow(self.con, "activations", activations, self.sae_id)
        if excluded.num_rows:
            insert_arrow(self.con, "excluded_tokens", excluded, self.sae_id)
        pending = self._pending
        pending.contexts_done = contexts_done
        pending.n_tokens += n_tokens
        pending.n_excluded += excluded.num_rows
        pending.seconds += elapsed_s

    def commit(self) -> None:
        if not self._open:
            return
        p = self._pending
        self.con.execute(
            "UPDATE saes SET contexts_done = ?, n_tokens = n_tokens + ?, "
            "n_excluded_tokens = n_excluded_tokens + ?, duration_s = duration_s + ? "
            "WHERE sae_id = ?",
            [p.contexts_done, p.n_tokens, p.n_excluded, p.seconds, self.sae_id],
        )
        self.con.execute("COMMIT")
        self._open = False
        self._pending = _Progress()


def insert_arrow(
    con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table, sae_id: str | None = None
) -> None:
    """Insert an Arrow table's columns by name (never by position), with `sae_id` if given."""
    cols = ", ".join(rows.column_names)
    key, params = ("sae_id, ", [sae_id]) if sae_id is not None else ("", [])
    con.register("_rows", rows)
    try:
        con.execute(
            f"INSERT INTO {table} ({key}{cols}) SELECT {'?, ' if key else ''}{cols} FROM _rows",
            params,
        )
    finally:
        con.unregister("_rows")


@contextmanager
def one_thread(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """DuckDB on one thread for the block, then back to its default."""
    con.execute("SET threads = 1")
    try:
        yield
    finally:
        con.execute("RESET threads")


class _Transaction:
    """BEGIN/COMMIT, or ROLLBACK on any error, so a failure never leaves half a write."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def __enter__(self):
        self.con.execute("BEGIN TRANSACTION")

    def __exit__(self, exc_type, *_):
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")


# The derivation, step by step. Activations are the non-zero values on counted tokens only.
# Histogram bin and interval of a value v for a feature with maximum m: min(floor(v/m*n), n-1).
# "Random" interval examples are chosen by a seeded hash, so a rerun picks the same ones.
# Per-feature stats over non-zero activations (skew/kurtosis: bias-corrected sample stats).
# Float sums depend on summation order, so this one step runs on one thread: reruns and
# resumed runs then give bit-identical means and moments.
_STATS_SQL = """
    CREATE OR REPLACE TEMP TABLE _stats AS
    SELECT feature, count(*) AS n_active, max(value)::DOUBLE AS mx, avg(value::DOUBLE) AS mean,
           skewness(value::DOUBLE) AS skew, kurtosis(value::DOUBLE) AS kurt
    FROM activations WHERE sae_id = $sae GROUP BY feature
    """

_PARAM = re.compile(r"\$(\w+)")

# Every derived table but the weight-only ones.
_DERIVE_SQL = (
    # Each activation's histogram bin and interval, and the per-feature counts of both.
    """
    CREATE OR REPLACE TEMP TABLE _binned AS
    SELECT a.feature, a.context_id, a.position, a.value,
           least(floor(a.value::DOUBLE / s.mx * $bins), $bins - 1)::INTEGER AS bin,
           least(floor(a.value::DOUBLE / s.mx * $n_int), $n_int - 1)::INTEGER AS interval
    FROM activations a JOIN _stats s USING (feature) WHERE a.sae_id = $sae
    """,
    """
    CREATE OR REPLACE TEMP TABLE _counts AS
    SELECT feature, bin, interval, count(*) AS n FROM _binned GROUP BY ALL
    """,
    """
    CREATE OR REPLACE TEMP TABLE _hist AS
    SELECT s.feature, list(coalesce(c.n, 0) ORDER BY r.bin) AS counts
    FROM _stats s CROSS JOIN range($bins) r(bin)
    LEFT JOIN (SELECT feature, bin, sum(n)::BIGINT AS n FROM _counts GROUP BY ALL) c
           ON c.feature = s.feature AND c.bin = r.bin
    GROUP BY s.feature
    """,
    """
    INSERT INTO features
    SELECT $sae, f.feature, coalesce(s.n_active, 0),
           coalesce(s.n_active, 0) / greatest((SELECT n_tokens FROM saes WHERE sae_id = $sae), 1),
           coalesce(s.mx, 0), coalesce(s.mean, 0), s.skew, s.kurt,
           CASE WHEN s.mx IS NULL THEN []::DOUBLE[]
                ELSE list_transform(range($bins + 1), lambda i: s.mx * i / $bins) END,
           coalesce(h.counts, []::BIGINT[]), lh.edges, lh.counts
    FROM range($d_sae) f(feature)
    LEFT JOIN _stats s USING (feature)
    LEFT JOIN _hist h USING (feature)
    JOIN _lhist lh USING (feature)
    ORDER BY f.feature
    """,
    """
    INSERT INTO intervals
    SELECT $sae, s.feature, r.i, s.mx * r.i / $n_int, s.mx * (r.i + 1) / $n_int,
           coalesce(c.n, 0), coalesce(c.n, 0) / s.n_active
    FROM _stats s CROSS JOIN range($n_int) r(i)
    LEFT JOIN (SELECT feature, interval, sum(n)::BIGINT AS n FROM _counts GROUP BY ALL) c
           ON c.feature = s.feature AND c.interval = r.i
    ORDER BY s.feature, r.i
    """,
    # Top examples: the k contexts with the highest max; ties go to the earlier context.
    # Position -1: the example's own first maximum, found when its activations are stored.
    # Only activations in a feature's highest bins (at least $top_rows of them) are grouped by
    # context: any context with a value there beats every context without one, so when at
    # least k contexts have one the answer is exact; features with fewer are redone in full.
    """
    CREATE OR REPLACE TEMP TABLE _examples AS
    WITH above AS (
        SELECT feature, bin, sum(sum(n)) OVER (PARTITION BY feature ORDER BY bin DESC) AS n_above
        FROM _counts GROUP BY feature, bin
    ), cut AS (
        SELECT feature, coalesce(max(bin) FILTER (WHERE n_above >= $top_rows), 0) AS min_bin
        FROM above GROUP BY feature
    ), per_ctx AS (
        SELECT b.feature, b.context_id, max(b.value) AS v, any_value(c.min_bin) > 0 AS cut
        FROM _binned b JOIN cut c USING (feature) WHERE b.bin >= c.min_bin GROUP BY ALL
    ), short AS (
        SELECT feature FROM per_ctx WHERE cut GROUP BY ALL HAVING count(*) < $k
    ), candidates AS (
        SELECT feature, context_id, v FROM per_ctx WHERE feature NOT IN (SELECT feature FROM short)
        UNION ALL
        SELECT feature, context_id, max(value) FROM _binned
        WHERE feature IN (SELECT feature FROM short) GROUP BY ALL
    ), picked AS (
        SELECT feature, max_by(context_id, struct_pack(v := v, nc := -context_id), $k) AS ids
        FROM candidates GROUP BY feature
    )
    SELECT feature, 'top' AS kind, NULL::SMALLINT AS interval,
           generate_subscripts(ids, 1) AS rank, unnest(ids) AS context_id,
           -1::SMALLINT AS position
    FROM picked
    """,
    # Interval samples: every activation gets a seeded hash key with its position in the low
    # 16 bits; per interval, the contexts with the smallest key, each shown at that token.
    # Keys are uniform, so only those under a cut (about $sample_rows per interval) are grouped
    # by context: exact whenever enough contexts fall under it; other intervals are redone.
    """
    INSERT INTO _examples
    WITH cut AS (
        SELECT feature, interval,
               CASE WHEN sum(n) > $sample_rows
                    THEN 18446744073709551615::UBIGINT // sum(n)::UBIGINT * $sample_rows::UBIGINT
               END AS cut
        FROM _counts GROUP BY ALL
    ), keyed AS (
        SELECT feature, interval, context_id,
               hash(feature, context_id, position, $seed) >> 16 << 16 | position::UBIGINT AS h
        FROM _binned
    ), per_ctx AS (
        SELECT k.feature, k.interval, k.context_id, min(k.h) AS h, any_value(c.cut) IS NOT NULL AS cut
        FROM keyed k JOIN cut c USING (feature, interval)
        WHERE c.cut IS NULL OR k.h < c.cut
        GROUP BY ALL
    ), short AS (
        SELECT feature, interval FROM per_ctx WHERE cut GROUP BY ALL HAVING count(*) < $per_int
    ), candidates AS (
        SELECT feature, interval, context_id, h FROM per_ctx
        WHERE (feature, interval) NOT IN (SELECT (feature, interval) FROM short)
        UNION ALL
        SELECT feature, interval, context_id, min(h) FROM keyed
        WHERE (feature, interval) IN (SELECT (feature, interval) FROM short)
        GROUP BY ALL
    )
    SELECT feature, 'interval', interval,
           row_number() OVER (PARTITION BY feature, interval ORDER BY h, context_id) AS rank,
           context_id, (h & 65535)::SMALLINT
    FROM candidates QUALIFY rank <= $per_int
    """,
    # Each chosen example with its feature's non-zero activations in the context (sparse: a
    # context holds ~4 of them in 128 tokens, and dense lists took 1.2 s to write at 300k tokens).
    # Top examples (position -1) show their first maximum; interval samples the sampled token.
    """
    INSERT INTO examples
    WITH lists AS (
        SELECT e.feature, e.kind, e.interval, e.rank, e.context_id, e.position,
               list(a.position ORDER BY a.position) AS ps, list(a.value ORDER BY a.position) AS vs
        FROM _examples e JOIN _binned a USING (feature, context_id)
        GROUP BY ALL
    )
    SELECT $sae, feature, kind, interval, rank, context_id,
           CASE WHEN position < 0 THEN list_max(vs) ELSE vs[list_position(ps, position)] END,
           CASE WHEN position < 0 THEN ps[list_position(vs, list_max(vs))] ELSE position END,
           ps, vs
    FROM lists ORDER BY feature, kind DESC, interval, rank
    """,
)

# The weight-only tables, then the scratch tables go.
_STORE_SQL = (
    """
    INSERT INTO feature_logits
    SELECT $sae, feature, kind, rank, token_id, value FROM _logits ORDER BY feature, kind, rank
    """,
    """
    INSERT INTO neighbours
    SELECT $sae, feature, rank, neighbour, cosine FROM _nb ORDER BY feature, rank
    """,
    "DROP TABLE _stats",
    "DROP TABLE _binned",
    "DROP TABLE _counts",
    "DROP TABLE _hist",
    "DROP TABLE _examples",
)
