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
    from scipy import sparse

    row = con.execute("SELECT d_sae FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    if row is None:
        raise SaedexError(f"unknown SAE: {sae_id!r}")
    d_sae = row[0]
    acts = con.execute(
        "SELECT context_id, position, feature FROM activations WHERE sae_id = ?", [sae_id]
    ).fetchnumpy()
    context = np.asarray(acts["context_id"], dtype=np.int64)
    position = np.asarray(acts["position"], dtype=np.int64)
    feature = np.asarray(acts["feature"], dtype=np.int64)
    _, token = np.unique((context << 16) | position, return_inverse=True)
    n_rows = int(token.max()) + 1 if len(token) else 0
    ones = np.ones(len(feature), dtype=np.int32)
    matrix = sparse.csr_matrix((ones, (token, feature)), shape=(n_rows, d_sae))
    n_counted = _counted_tokens(con, sae_id)
    return (matrix.T @ matrix).tocsr(), n_counted


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
