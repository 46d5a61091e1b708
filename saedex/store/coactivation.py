"""Co-activation over the whole corpus: for each feature, the features that fire on the same
tokens, exactly (issue 18.1).

The stored sparse activations are a binary token x feature matrix A (a token is a counted
(context, position)); A^T A holds, for every pair of features, the number of tokens where both
fire, and its diagonal each feature's own count. scipy.sparse computes the product in one
pass over the non-zeros (k^2 per token for k active features), so it is exact over the corpus,
not a batch. Per pair (i, j), with n_i, n_j the features' counts and N the counted tokens:

- count    c_ij, tokens where both fire;
- jaccard  c_ij / (n_i + n_j - c_ij), the ranking: it does not favour dense features (a
           feature firing everywhere co-fires with everything, but its union is large too);
- lift     c_ij N / (n_i n_j), how much more often they co-fire than independent features
           would (log2 of it is the PMI).

`cofiring` takes one run's SparseActivations (A^T A) or two runs' (A^T B, their tokens paired
by `shared_rows`), so the same product serves matching features across SAEs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from saedex.errors import SaedexError


@dataclass(frozen=True)
class SparseActivations:
    """One run's stored activations, one entry per (token, feature); a token is the key
    `context_id << 16 | position`, the same token in every run with the same plan."""

    tokens: np.ndarray  # int64
    feature: np.ndarray  # int64
    value: np.ndarray  # float64
    d_sae: int
    n_counted: int

    def matrix(self, rows: np.ndarray, n_rows: int, values: bool = False):
        """The token x feature CSR matrix with `rows[i]` as entry i's row: 1 where a feature
        fires (or its value, with `values`)."""
        from scipy import sparse

        data = self.value if values else np.ones(len(self.feature), dtype=np.int32)
        return sparse.csr_matrix((data, (rows, self.feature)), shape=(n_rows, self.d_sae))


def sparse_activations(
    con: duckdb.DuckDBPyConnection, sae_id: str, contexts: tuple[int, int] | None = None
) -> SparseActivations:
    """Every activation of a run, or of its contexts [start, end), as arrays (the input of
    A^T A and of cross-SAE products)."""
    row = con.execute("SELECT d_sae FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    if row is None:
        raise SaedexError(f"unknown SAE: {sae_id!r}")
    within = "" if contexts is None else " AND context_id >= ? AND context_id < ?"
    acts = con.execute(
        "SELECT context_id, position, feature, value FROM activations WHERE sae_id = ?" + within,
        [sae_id, *(contexts or ())],
    ).fetchnumpy()
    context = np.asarray(acts["context_id"], dtype=np.int64)
    position = np.asarray(acts["position"], dtype=np.int64)
    return SparseActivations(
        (context << 16) | position,
        np.asarray(acts["feature"], dtype=np.int64),
        np.asarray(acts["value"], dtype=np.float64),
        row[0],
        counted_tokens(con, sae_id),
    )


def shared_rows(*runs: SparseActivations) -> tuple[list[np.ndarray], int]:
    """Row numbers over the union of the runs' tokens (the same token, the same row in every
    run's matrix), and how many rows: the products of cross-SAE matrices pair the same tokens."""
    union, inverse = np.unique(np.concatenate([r.tokens for r in runs]), return_inverse=True)
    bounds = np.cumsum([0, *(len(r.tokens) for r in runs)])
    return [inverse[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)], len(union)


def counted_tokens(con: duckdb.DuckDBPyConnection, sae_id: str) -> int:
    """Tokens the run counted (lift's N; density's denominator), from its `saes` row: known
    during the pass too, before the per-feature tables exist."""
    row = con.execute("SELECT n_tokens FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    return int(row[0] or 0) if row else 0


def cofiring(left: SparseActivations, right: SparseActivations | None = None):
    """Co-firing counts as a scipy CSR matrix [left.d_sae, right.d_sae]: entry (i, j) is the
    number of tokens where left's feature i and right's feature j both fire (right defaults
    to left: A^T A, whose diagonal is each feature's own count)."""
    runs = (left,) if right is None else (left, right)
    rows, n_rows = shared_rows(*runs)
    a = left.matrix(rows[0], n_rows)
    b = a if right is None else right.matrix(rows[1], n_rows)
    return (a.T @ b).tocsr()


def coactivation_table(products, n_counted: int, first: int = 10) -> pa.Table:
    """The `first` partners of every feature by Jaccard (ties: more tokens, then the lower
    index), from A^T A, as rows (feature, rank from 1, other, count, jaccard, lift)."""
    products = products.tocsr()
    counts = products.diagonal().astype(np.float64)
    feature = np.repeat(np.arange(products.shape[0], dtype=np.int64), np.diff(products.indptr))
    other = products.indices.astype(np.int64)
    keep = (feature != other) & (products.data > 0)
    feature, other = feature[keep], other[keep]
    both = products.data[keep].astype(np.float64)
    jaccard = both / (counts[feature] + counts[other] - both)
    order = np.lexsort((other, -both, -jaccard, feature))
    ranked = feature[order]
    rank = np.arange(len(order)) - np.searchsorted(ranked, ranked)  # 0 for each one's best
    pick, rank = order[rank < first], rank[rank < first]
    f, o, c = feature[pick], other[pick], both[pick]
    return pa.table(
        {
            "feature": pa.array(f, pa.int32()),
            "rank": pa.array(rank + 1, pa.int16()),
            "other": pa.array(o, pa.int32()),
            "count": pa.array(c.astype(np.int64), pa.int64()),
            "jaccard": pa.array(jaccard[pick], pa.float64()),
            "lift": pa.array(c * n_counted / (counts[f] * counts[o]), pa.float64()),
        }
    )


def compute(
    con: duckdb.DuckDBPyConnection, sae_id: str, first: int = 10, contexts_per_part: int = 2048
) -> pa.Table:
    """Every feature's top `first` co-activating features, exact over the indexed corpus.

    A^T A is a sum over tokens, so it is summed over parts of `contexts_per_part` contexts
    (a token never spans two): memory holds one part's activations and the d_sae x d_sae
    product, which grows with the features, not with the tokens (all the run's activations at
    once: the aggregation of 1M synthetic tokens, k = 32, added 2.2 GB, against 1.5 GB by
    parts; bench/merge_bench.py). During indexing the run's activations are in context
    order and each part reads its own blocks; a compacted run's are feature-major
    (saedex.store.bulk), so there each part scans them all."""
    from scipy import sparse

    row = con.execute(
        "SELECT d_sae, min(context_id), max(context_id) FROM saes LEFT JOIN contexts "
        "USING (sae_id) WHERE sae_id = ? GROUP BY d_sae",
        [sae_id],
    ).fetchone()
    if row is None:
        raise SaedexError(f"unknown SAE: {sae_id!r}")
    d_sae, low, high = row
    products = sparse.csr_matrix((d_sae, d_sae), dtype=np.int64)
    for start in range(low or 0, -1 if high is None else high + 1, contexts_per_part):
        part = sparse_activations(con, sae_id, (start, start + contexts_per_part))
        if len(part.feature):
            products = products + cofiring(part)
    return coactivation_table(products, counted_tokens(con, sae_id), first)


# -- storing them: into the run's own file (`saedex index`) or a derived file (afterwards) --


def store_in_run(con: duckdb.DuckDBPyConnection, sae_id: str, first: int) -> int:
    """Compute and store a run's co-activations in its own file (the indexer's connection,
    before the run is published), replacing any from an interrupted attempt; rows written."""
    from saedex.store.writer import insert_arrow

    table = compute(con, sae_id, first) if first > 0 else None
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM coactivations WHERE sae_id = ?", [sae_id])
        if table is not None:
            insert_arrow(con, "coactivations", table, sae_id)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return 0 if table is None else table.num_rows


def derived_key(sae_id: str) -> str:
    """The catalog key of an SAE's co-activations computed after its run (one file per SAE;
    computing them again replaces it)."""
    return f"coactivations-{sae_id}"


def publish(db: str | Path, sae_id: str, first: int) -> int:
    """Compute an indexed SAE's co-activations from its complete run and publish them beside
    it (saedex/store/derived.py: hidden once the SAE is indexed again); rows written."""
    from saedex.store.catalog import runs_dir
    from saedex.store.derived import publish_derived
    from saedex.store.views import IndexView
    from saedex.store.writer import insert_arrow

    view = IndexView(Path(db))
    try:
        table = compute(view.con, sae_id, first)
    finally:
        view.close()

    def fill(con: duckdb.DuckDBPyConnection) -> None:
        insert_arrow(con, "coactivations", table, sae_id)

    runs_dir(Path(db)).mkdir(exist_ok=True)  # a single-file index of an earlier saedex has none
    publish_derived(db, derived_key(sae_id), [sae_id], fill)
    return table.num_rows
