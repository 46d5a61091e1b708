"""Feature splitting across widths: the features of two SAEs on one hook, matched (issue 17).

For two runs of the same model, hook and corpus (so the same counted tokens), every feature
gets its best matches in the other SAE by two measures, and the narrower SAE's features become
parents of the wider one's (docs/splitting.md has the rules and the measured distributions):

- decoder cosine: the cosine of the two decoder rows (the weights, no data);
- activation correlation: Pearson's r of the two features' activations over every counted
  token of the corpus (a feature is 0 where it does not fire). Exact: it needs, per pair, the
  sum of products, which is the cross-SAE sparse product A^T B of the token x feature matrices
  (saedex.store.coactivation, the same product co-activation uses within one SAE), and per
  feature its count, sum and sum of squares. Pairs that never co-fire have r <= 0, so the best
  correlated matches are always among the product's non-zeros.

Parents: a wide feature w's parent is the narrow feature p with the highest r, when r reaches
`parent_min_correlation` and `containment` (the share of w's tokens where p fires too) reaches
`parent_min_containment`. p's children are the wide features whose parent it is. A pair's
`cover` is the share of the narrow feature's activation mass (the sum of its values) on tokens
where the wide one fires: for a parent and child, how much of the parent the child covers; the
family's cover is that share over the union of all the children's tokens. A parent is *clear*
when it reaches the stricter `clear_min_*` thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saedex.config import MatchConfig
from saedex.errors import SaedexError
from saedex.store.coactivation import SparseActivations, shared_rows

PARENT = "parent"  # the other feature is this one's parent (seen from the wide feature)
CHILD = "child"  # the other feature is one of this one's children (seen from the narrow one)


@dataclass(frozen=True)
class SaeSide:
    """What matching reads of one indexed SAE: its activations and its decoder rows."""

    sae_id: str
    acts: SparseActivations
    decoder: np.ndarray  # [d_sae, d_in] float32


@dataclass(frozen=True)
class MatchRow:
    """One feature's match in the other SAE (a stored `feature_matches` row)."""

    sae_id: str
    feature: int
    other_sae_id: str
    other_feature: int
    cosine: float  # of the decoder rows
    correlation: float  # Pearson r of the activations over every counted token
    cofiring: int  # tokens where both fire
    containment: float  # share of the wide feature's tokens where the narrow one fires too
    cover: float  # share of the narrow feature's activation mass on tokens where the wide fires
    relation: str | None  # PARENT, CHILD or None
    clear: bool  # the relation is a clear parent / child


@dataclass
class Matching:
    """The outcome for one pair (narrow, wide): rows both ways, and the parent of every wide
    feature (-1: none) with its r, containment and clearness; every narrow feature's family
    cover (NaN without children)."""

    narrow: str
    wide: str
    rows: list[MatchRow]
    parent: np.ndarray
    parent_correlation: np.ndarray
    parent_containment: np.ndarray
    clear: np.ndarray
    best_correlation: np.ndarray  # every wide feature's best r, parent or not
    family_cover: np.ndarray


@dataclass(frozen=True)
class _Moments:
    """Per feature: tokens fired on, sum and sum of squares of its values, and the standard
    deviation over all N counted tokens."""

    n: np.ndarray
    total: np.ndarray
    std: np.ndarray


def _moments(acts: SparseActivations) -> _Moments:
    n = np.bincount(acts.feature, minlength=acts.d_sae).astype(np.float64)
    total = np.bincount(acts.feature, acts.value, minlength=acts.d_sae)
    squares = np.bincount(acts.feature, acts.value**2, minlength=acts.d_sae)
    var = np.maximum(squares / acts.n_counted - (total / acts.n_counted) ** 2, 0.0)
    return _Moments(n, total, np.sqrt(var))


@dataclass(frozen=True)
class _Products:
    """Sparse [d_a, d_b] products over shared tokens, all on one sparsity pattern (activations
    are positive, so no sum cancels): co-firing counts, sums of a_i b_j, sums of a_i where b_j
    fires."""

    counts: object
    products: object
    mass: object


def _products(a: SparseActivations, b: SparseActivations) -> _Products:
    (rows_a, rows_b), n_rows = shared_rows(a, b)
    a_vals, a_ones = a.matrix(rows_a, n_rows, True), a.matrix(rows_a, n_rows)
    b_vals, b_ones = b.matrix(rows_b, n_rows, True), b.matrix(rows_b, n_rows)
    a_ones_t, a_vals_t = a_ones.T.tocsr(), a_vals.T.tocsr()
    out = _Products(
        (a_ones_t @ b_ones).tocsr(), (a_vals_t @ b_vals).tocsr(), (a_vals_t @ b_ones).tocsr()
    )
    for m in (out.counts, out.products, out.mass):
        m.sort_indices()
        if not np.array_equal(m.indices, out.counts.indices):
            raise SaedexError("activation products disagree on their pattern (a zero activation?)")
    return out


def match(narrow: SaeSide, wide: SaeSide, cfg: MatchConfig | None = None) -> Matching:
    """Match two SAEs on the same counted tokens; `narrow` is the one parents come from."""
    cfg = cfg or MatchConfig()
    if narrow.acts.n_counted != wide.acts.n_counted:
        raise SaedexError(
            f"{narrow.sae_id!r} and {wide.sae_id!r} counted different tokens "
            f"({narrow.acts.n_counted:,} vs {wide.acts.n_counted:,}): match SAEs indexed on one "
            "hook over the same corpus with the same settings"
        )
    mn, mw = _moments(narrow.acts), _moments(wide.acts)
    prod = _products(narrow.acts, wide.acts)
    corr = _correlation(prod, mn, mw, narrow.acts.n_counted)
    parents = _parents(prod, corr, mw, cfg)
    cover = _family_cover(narrow.acts, wide.acts, parents[0])
    result = Matching(narrow.sae_id, wide.sae_id, [], *parents, cover)
    result.rows = _rows(narrow, wide, prod, corr, mn, mw, result, cfg)
    return result


def _correlation(prod: _Products, mn: _Moments, mw: _Moments, n: int):
    """Pearson r of every co-firing pair, on the products' pattern (a CSR [d_narrow, d_wide])."""
    corr = prod.products.copy().astype(np.float64)
    rows = np.repeat(np.arange(corr.shape[0]), np.diff(corr.indptr))
    cols = corr.indices
    cov = corr.data / n - (mn.total[rows] / n) * (mw.total[cols] / n)
    scale = mn.std[rows] * mw.std[cols]
    corr.data = np.divide(cov, scale, out=np.zeros_like(cov), where=scale > 0)
    return corr


def _parents(prod: _Products, corr, mw: _Moments, cfg: MatchConfig):
    """(parent, its r, its containment, clear, best r) of every wide feature."""
    by_wide = corr.T.tocsr()
    counts = prod.counts.T.tocsr()
    d_wide = by_wide.shape[0]
    best = np.full(d_wide, -1)
    best_r = np.zeros(d_wide)
    contain = np.zeros(d_wide)
    for w in range(d_wide):
        lo, hi = by_wide.indptr[w], by_wide.indptr[w + 1]
        if hi == lo:
            continue
        k = lo + int(np.argmax(by_wide.data[lo:hi]))
        best[w], best_r[w] = by_wide.indices[k], by_wide.data[k]
        contain[w] = counts.data[k] / mw.n[w]
    has = (best >= 0) & (best_r >= cfg.parent_min_correlation)
    has &= contain >= cfg.parent_min_containment
    parent = np.where(has, best, -1)
    clear = has & (best_r >= cfg.clear_min_correlation) & (contain >= cfg.clear_min_containment)
    return parent, np.where(has, best_r, 0.0), np.where(has, contain, 0.0), clear, best_r


def _family_cover(
    narrow: SparseActivations, wide: SparseActivations, parent: np.ndarray
) -> np.ndarray:
    """Per narrow feature: share of its activation mass on tokens where any child fires."""
    from scipy import sparse

    (rows_n, rows_w), n_rows = shared_rows(narrow, wide)
    d_narrow = narrow.d_sae
    children = parent >= 0
    assign = sparse.csr_matrix(
        (np.ones(int(children.sum())), (np.flatnonzero(children), parent[children])),
        shape=(wide.d_sae, d_narrow),
    )
    fired = (wide.matrix(rows_w, n_rows) @ assign).tocsr()  # token x narrow: children firing
    values = narrow.matrix(rows_n, n_rows, True).tocsr()
    covered = values.multiply(fired > 0)
    total = np.asarray(values.sum(axis=0)).ravel()
    mass = np.asarray(covered.sum(axis=0)).ravel()
    has_children = np.bincount(parent[children], minlength=d_narrow) > 0
    out = np.divide(mass, total, out=np.zeros(d_narrow), where=total > 0)
    return np.where(has_children, out, np.nan)


def _rows(narrow, wide, prod, corr, mn, mw, result: Matching, cfg: MatchConfig):
    """Both directions: each feature's top `first` by cosine and by r, plus its relations."""
    cos = _top_cosines(narrow.decoder, wide.decoder, cfg.first)
    cos_back = _top_cosines(wide.decoder, narrow.decoder, cfg.first)
    both = _Pairs(prod, corr, narrow.decoder, wide.decoder, mn, mw, narrow.acts.n_counted)
    rows = []
    children: dict[int, list[int]] = {}
    for w, p in enumerate(result.parent):
        if p >= 0:
            children.setdefault(int(p), []).append(w)
    for i in range(narrow.acts.d_sae):
        kids = children.get(i, [])
        others = _union(cos[i], _top_row(corr, i, cfg.first), kids)
        rows += [
            both.row(narrow.sae_id, i, wide.sae_id, j, forward=True,
                     relation=CHILD if j in kids else None, clear=bool(result.clear[j]))
            for j in others
        ]  # fmt: skip
    back = corr.T.tocsr()
    for w in range(wide.acts.d_sae):
        p = int(result.parent[w])
        others = _union(cos_back[w], _top_row(back, w, cfg.first), [p] if p >= 0 else [])
        rows += [
            both.row(wide.sae_id, w, narrow.sae_id, j, forward=False,
                     relation=PARENT if j == p else None, clear=bool(result.clear[w]) and j == p)
            for j in others
        ]  # fmt: skip
    return rows


def _union(*lists) -> list[int]:
    return list(dict.fromkeys(int(x) for part in lists for x in part))


def _top_row(matrix, i: int, first: int) -> np.ndarray:
    lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
    data, idx = matrix.data[lo:hi], matrix.indices[lo:hi]
    order = np.lexsort((idx, -data))[:first]
    return idx[order[data[order] > 0]]


def _top_cosines(a: np.ndarray, b: np.ndarray, first: int, chunk: int = 1024) -> np.ndarray:
    """[d_a, first]: the rows of `b` whose decoder directions are closest to each row of `a`."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    first = min(first, b.shape[0])
    out = np.empty((a.shape[0], first), dtype=np.int64)
    for lo in range(0, a.shape[0], chunk):
        sims = a[lo : lo + chunk] @ b.T
        top = np.argpartition(-sims, first - 1, axis=1)[:, :first]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[lo : lo + chunk] = np.take_along_axis(top, order, axis=1)
    return out


class _Pairs:
    """Every measure of one (narrow, wide) pair, looked up in the sparse products."""

    def __init__(self, prod, corr, dec_n, dec_w, mn: _Moments, mw: _Moments, n_counted: int):
        self.prod, self.corr, self.mn, self.mw, self.n = prod, corr, mn, mw, n_counted
        self.dec_n = dec_n / np.maximum(np.linalg.norm(dec_n, axis=1, keepdims=True), 1e-12)
        self.dec_w = dec_w / np.maximum(np.linalg.norm(dec_w, axis=1, keepdims=True), 1e-12)

    def _find(self, p: int, w: int) -> int:
        """Where pair (p, w) sits in the products' shared pattern; -1 if they never co-fire."""
        lo, hi = self.corr.indptr[p], self.corr.indptr[p + 1]
        k = lo + int(np.searchsorted(self.corr.indices[lo:hi], w))
        return k if k < hi and self.corr.indices[k] == w else -1

    def row(self, sae_id, i, other_id, j, *, forward, relation, clear) -> MatchRow:
        p, w = (i, j) if forward else (j, i)
        k = self._find(p, w)
        if k >= 0:
            both, r = int(self.prod.counts.data[k]), float(self.corr.data[k])
            mass = self.prod.mass.data[k]
        else:  # never together: r = -mean_p mean_w / (std_p std_w)
            scale = self.mn.std[p] * self.mw.std[w]
            means = (self.mn.total[p] / self.n) * (self.mw.total[w] / self.n)
            both, mass, r = 0, 0.0, float(-means / scale) if scale else 0.0
        return MatchRow(
            sae_id, i, other_id, j,
            cosine=float(self.dec_n[p] @ self.dec_w[w]),
            correlation=r,
            cofiring=both,
            containment=both / self.mw.n[w] if self.mw.n[w] else 0.0,
            cover=float(mass / self.mn.total[p]) if self.mn.total[p] else 0.0,
            relation=relation,
            clear=clear,
        )  # fmt: skip


# The run inputs two SAEs must share to be matched on the same tokens.
_SAME = ("model_name", "hook_name", "corpus_fingerprint", "n_contexts", "n_tokens")


def read_sides(db, a: str, b: str) -> tuple[SaeSide, SaeSide]:
    """The two indexed SAEs as (narrow, wide): the one with fewer features first (as given on a
    tie). Refused unless both ran on the same model, hook and corpus, over the same tokens."""
    from saedex.store import IndexReader
    from saedex.store.coactivation import sparse_activations
    from saedex.store.views import connect
    from saedex.weights import all_vectors, indexed_weights

    if a == b:
        raise SaedexError(f"match two different SAEs (both are {a!r})")
    with IndexReader(db) as reader:
        infos = [reader.sae(a), reader.sae(b)]
    for sae_id, info in zip((a, b), infos, strict=True):
        if info is None:
            raise SaedexError(f"unknown SAE {sae_id!r} in {db} (not indexed, or not complete)")
    for name in _SAME:
        x, y = (getattr(i, name) for i in infos)
        if x != y:
            raise SaedexError(
                f"{a!r} and {b!r} differ in {name} ({x} vs {y}): matching needs two SAEs "
                "indexed on one hook over the same corpus and tokens"
            )
    if {repr(i.settings) for i in infos} != {repr(infos[0].settings)}:
        raise SaedexError(f"{a!r} and {b!r} were indexed with different settings")
    con = connect(db)
    try:
        sides = [
            SaeSide(i.id, sparse_activations(con, i.id), all_vectors(indexed_weights(i), "decoder"))
            for i in infos
        ]
    finally:
        con.close()
    narrow, wide = sorted(sides, key=lambda s: s.acts.d_sae)
    return narrow, wide


@dataclass(frozen=True)
class MatchSummary:
    """What `saedex match` did for one pair."""

    narrow: str
    wide: str
    seconds: float
    with_parent: float  # share of live wide features with a parent
    clear: float  # ... with a clear parent
    rows: int


def summary(result: Matching, wide: SaeSide, seconds: float) -> MatchSummary:
    live = np.bincount(wide.acts.feature, minlength=wide.acts.d_sae) > 0
    n_live = max(int(live.sum()), 1)
    return MatchSummary(
        result.narrow, result.wide, seconds, float((result.parent[live] >= 0).sum() / n_live),
        float(result.clear[live].sum() / n_live), len(result.rows),
    )  # fmt: skip


def match_and_store(db, a: str, b: str, cfg: MatchConfig | None = None) -> MatchSummary:
    """Match two indexed SAEs and store the rows (replacing an earlier matching of the pair)."""
    import time

    started = time.perf_counter()
    narrow, wide = read_sides(db, a, b)
    result = match(narrow, wide, cfg)
    store_matching(db, result)
    return summary(result, wide, time.perf_counter() - started)


def store_matching(db, result: Matching) -> None:
    """Publish the pair's rows (saedex.store.matches): the matches both ways in
    `feature_matches`, and each parent's family (its children's count and their joint cover)
    in `feature_families`."""
    import pyarrow as pa

    from saedex.store.matches import write_matches

    rows = result.rows
    matches = pa.table(
        {
            "sae_id": [r.sae_id for r in rows],
            "feature": pa.array([r.feature for r in rows], pa.int32()),
            "other_sae_id": [r.other_sae_id for r in rows],
            "other_feature": pa.array([r.other_feature for r in rows], pa.int32()),
            "decoder_cos": pa.array([r.cosine for r in rows], pa.float32()),
            "act_corr": pa.array([r.correlation for r in rows], pa.float32()),
            "co_count": pa.array([r.cofiring for r in rows], pa.int64()),
            "cover": pa.array([r.cover for r in rows], pa.float32()),
            "relation": [r.relation for r in rows],
        }
    )
    cover = result.family_cover
    parents = np.flatnonzero(~np.isnan(cover))
    n_children = np.bincount(result.parent[result.parent >= 0], minlength=len(cover))
    families = pa.table(
        {
            "sae_id": [result.narrow] * len(parents),
            "feature": pa.array(parents, pa.int32()),
            "other_sae_id": [result.wide] * len(parents),
            "n_children": pa.array(n_children[parents], pa.int32()),
            "cover": pa.array(cover[parents], pa.float32()),
        }
    )
    write_matches(db, result.narrow, result.wide, matches, families)
