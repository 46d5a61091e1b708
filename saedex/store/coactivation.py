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

`cofiring` takes plain (context, position, feature) arrays, so the same product serves two
SAEs indexed over the same contexts (A^T B, for matching features across widths).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from saedex.errors import SaedexError

# The columns of a top-N table, as `coactivation_table` builds them (one row per pair kept).
COLUMNS = ("feature", "rank", "other", "count", "jaccard", "lift")


@dataclass(frozen=True)
class Firings:
    """Where an SAE's features fire: one entry per (token, feature), a token being a counted
    (context, position); `n_features` is the SAE's width (d_sae)."""

    context: np.ndarray
    position: np.ndarray
    feature: np.ndarray
    n_features: int

    def token_keys(self) -> np.ndarray:
        """One int64 per entry naming its token (positions fit in 16 bits: SMALLINT)."""
        return (self.context.astype(np.int64) << 16) | self.position.astype(np.int64)


def firings(con: duckdb.DuckDBPyConnection, sae_id: str) -> Firings:
    """An SAE's stored activations as Firings (from a run file or the index's views)."""
    row = con.execute("SELECT d_sae FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    if row is None:
        raise SaedexError(f"unknown SAE: {sae_id!r}")
    acts = con.execute(
        "SELECT context_id, position, feature FROM activations WHERE sae_id = ?", [sae_id]
    ).fetchnumpy()
    return Firings(
        np.asarray(acts["context_id"], dtype=np.int64),
        np.asarray(acts["position"], dtype=np.int64),
        np.asarray(acts["feature"], dtype=np.int64),
        row[0],
    )


def cofiring(left: Firings, right: Firings | None = None):
    """Co-firing counts as a scipy CSR matrix [left.n_features, right.n_features]: entry (i, j)
    is the number of tokens where left's feature i and right's feature j both fire (right
    defaults to left: A^T A, whose diagonal is each feature's own count)."""
    from scipy import sparse

    sides = [left] if right is None else [left, right]
    keys = [s.token_keys() for s in sides]
    _, token = np.unique(np.concatenate(keys), return_inverse=True)
    n_tokens = int(token.max()) + 1 if len(token) else 0
    matrices, start = [], 0
    for side, k in zip(sides, keys, strict=True):
        rows = token[start : start + len(k)]
        start += len(k)
        ones = np.ones(len(k), dtype=np.int32)
        shape = (n_tokens, side.n_features)
        matrices.append(sparse.csr_matrix((ones, (rows, side.feature)), shape=shape))
    a = matrices[0]
    return (a.T @ matrices[-1]).tocsr()


def counted_tokens(con: duckdb.DuckDBPyConnection, sae_id: str) -> int:
    """Tokens the run counted (lift's N; density's denominator)."""
    row = con.execute("SELECT n_tokens FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    return int(row[0] or 0) if row else 0


def coactivation_table(products, n_counted: int, first: int = 10) -> pa.Table:
    """The `first` partners of every feature by Jaccard (ties: more tokens, then the lower
    index), as rows (feature, rank from 1, other, count, jaccard, lift); from A^T A."""
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
    rank = np.arange(len(order)) - np.searchsorted(ranked, ranked)
    pick = order[rank < first]
    f, o, c = feature[pick], other[pick], both[pick]
    return pa.table(
        {
            "feature": pa.array(f, pa.int32()),
            "rank": pa.array(rank[rank < first] + 1, pa.int16()),
            "other": pa.array(o, pa.int32()),
            "count": pa.array(c.astype(np.int64), pa.int64()),
            "jaccard": pa.array(jaccard[pick], pa.float64()),
            "lift": pa.array(c * n_counted / (counts[f] * counts[o]), pa.float64()),
        }
    )


def compute(con: duckdb.DuckDBPyConnection, sae_id: str, first: int = 10) -> pa.Table:
    """Every feature's top `first` co-activating features, exact over the indexed corpus."""
    return coactivation_table(cofiring(firings(con, sae_id)), counted_tokens(con, sae_id), first)
