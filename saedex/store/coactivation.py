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
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np

from saedex.errors import SaedexError


@dataclass(frozen=True)
class Coactivation:
    """Another feature that fires on the same tokens as this one."""

    index: int
    count: int
    jaccard: float
    lift: float


def cofiring(con: duckdb.DuckDBPyConnection, sae_id: str):
    """(A^T A as a scipy CSR matrix [d_sae, d_sae] of co-firing counts, counted tokens N)."""
    acts = sparse_activations(con, sae_id)
    _, token = np.unique(acts.tokens, return_inverse=True)
    matrix = acts.matrix(token, int(token.max()) + 1 if len(token) else 0)
    return (matrix.T @ matrix).tocsr(), acts.n_counted


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


def sparse_activations(con: duckdb.DuckDBPyConnection, sae_id: str) -> SparseActivations:
    """Every activation of a run, as arrays (the input of A^T A and of cross-SAE products)."""
    row = con.execute("SELECT d_sae FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    if row is None:
        raise SaedexError(f"unknown SAE: {sae_id!r}")
    acts = con.execute(
        "SELECT context_id, position, feature, value FROM activations WHERE sae_id = ?", [sae_id]
    ).fetchnumpy()
    context = np.asarray(acts["context_id"], dtype=np.int64)
    position = np.asarray(acts["position"], dtype=np.int64)
    return SparseActivations(
        (context << 16) | position,
        np.asarray(acts["feature"], dtype=np.int64),
        np.asarray(acts["value"], dtype=np.float64),
        row[0],
        _counted_tokens(con, sae_id),
    )


def shared_rows(*runs: SparseActivations) -> tuple[list[np.ndarray], int]:
    """Row numbers over the union of the runs' tokens (the same token, the same row in every
    run's matrix), and how many rows: the products of cross-SAE matrices pair the same tokens."""
    union, inverse = np.unique(np.concatenate([r.tokens for r in runs]), return_inverse=True)
    bounds = np.cumsum([0, *(len(r.tokens) for r in runs)])
    return [inverse[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)], len(union)


def _counted_tokens(con: duckdb.DuckDBPyConnection, sae_id: str) -> int:
    """Tokens the pass counted (density's denominator): n_active / density of any live feature."""
    row = con.execute(
        "SELECT n_active / density FROM features WHERE sae_id = ? AND density > 0 LIMIT 1",
        [sae_id],
    ).fetchone()
    return round(row[0]) if row else 0


def top_coactivations(products, n_counted: int, first: int = 10) -> dict[int, list[Coactivation]]:
    """The `first` partners of every feature by Jaccard (ties: more tokens, lower index)."""
    counts = products.diagonal().astype(np.float64)
    out: dict[int, list[Coactivation]] = {}
    for i in range(products.shape[0]):
        start, stop = products.indptr[i], products.indptr[i + 1]
        others = products.indices[start:stop]
        both = products.data[start:stop].astype(np.float64)
        keep = others != i
        others, both = others[keep], both[keep]
        jaccard = both / (counts[i] + counts[others] - both)
        order = np.lexsort((others, -both, -jaccard))[:first]
        lift = both[order] * n_counted / (counts[i] * counts[others[order]])
        out[i] = [
            Coactivation(int(o), int(c), float(j), float(lf))
            for o, c, j, lf in zip(others[order], both[order], jaccard[order], lift, strict=True)
        ]
    return out


def coactivations(
    con: duckdb.DuckDBPyConnection, sae_id: str, first: int = 10
) -> dict[int, list[Coactivation]]:
    """Every feature's top `first` co-activating features, exact over the indexed corpus."""
    products, n_counted = cofiring(con, sae_id)
    return top_coactivations(products, n_counted, first)
