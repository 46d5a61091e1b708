"""Feature matches across SAEs (issue 17, docs/splitting.md): the `feature_matches` and
`feature_families` rows that `saedex match` computes, published as a derived file
(saedex/store/derived.py), and read back.

Rows per matched pair of SAEs (narrow, wide), both ways: each feature's best matches in the
other SAE, and its relations (`parent` on a wide feature's row, `child` on a narrow one's).
A narrow feature with children also has one `feature_families` row per wide SAE: its number of
children and their cover (the share of its activation mass on tokens where any child fires).
Whether a relation is *clear* is not stored: it is read from the stored correlation and
containment (co_count / n_active of the pair's wider feature) against MatchConfig's
thresholds, so that changing them needs no recomputation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from saedex.config import MatchConfig
from saedex.data import FeatureFamily, MatchedFeature, SaeInfo

PARENT = "parent"
CHILD = "child"
Query = Callable[[str, list], list[tuple]]
_THRESHOLDS = MatchConfig()  # the documented clear-parent thresholds
MAX_CHILDREN = 100  # a family lists at most this many children (narrowest SAE, best cover first)


def derived_key(narrow: str, wide: str) -> str:
    """The catalog key of a pair's matches (one derived file per pair; matching it again
    replaces it)."""
    return f"matches-{narrow}-{wide}"


def is_matched(db: str | Path, narrow: str, wide: str) -> bool:
    """Whether the pair's matches are published and still current (neither SAE re-indexed)."""
    from saedex.store.catalog import Catalog

    return derived_key(narrow, wide) in Catalog(Path(db)).snapshot()[1]


def write_matches(
    db: str | Path, narrow: str, wide: str, matches: pa.Table, families: pa.Table
) -> Path:
    """Publish a pair's `feature_matches` and `feature_families` rows (columns by name, as
    the tables')."""
    from saedex.store.derived import publish_derived
    from saedex.store.writer import insert_arrow

    def fill(con) -> None:
        insert_arrow(con, "feature_matches", matches)
        insert_arrow(con, "feature_families", families)

    return publish_derived(db, derived_key(narrow, wide), [narrow, wide], fill)


_SELECT = """
    SELECT m.feature, m.other_sae_id, m.other_feature, m.decoder_cos, m.act_corr, m.co_count,
           m.cover, m.relation, mine.n_active, theirs.n_active
    FROM feature_matches m
    JOIN features mine ON mine.sae_id = m.sae_id AND mine.feature = m.feature
    LEFT JOIN features theirs
        ON theirs.sae_id = m.other_sae_id AND theirs.feature = m.other_feature
    WHERE m.sae_id = ? AND m.feature IN (SELECT unnest(?))
"""


def feature_matches(
    query: Query,
    saes: dict[str, SaeInfo],
    sae_id: str,
    indices: Sequence[int],
    other: str | None = None,
    first: int | None = None,
) -> dict[int, list[MatchedFeature]]:
    """Each feature's matches (in `other`, or in every matched SAE), best correlated first,
    at most `first` per other SAE."""
    rows = query(
        _SELECT + "AND (?::VARCHAR IS NULL OR m.other_sae_id = ?) "
        "QUALIFY row_number() OVER (PARTITION BY m.feature, m.other_sae_id "
        "ORDER BY m.act_corr DESC, m.decoder_cos DESC, m.other_feature) <= ? "
        "ORDER BY m.feature, m.other_sae_id, m.act_corr DESC, m.decoder_cos DESC, m.other_feature",
        [sae_id, list(indices), other, other, first or 1 << 30],
    )
    out: dict[int, list[MatchedFeature]] = defaultdict(list)
    width = saes[sae_id].d_sae if sae_id in saes else 0
    for row in rows:
        if row[1] in saes:
            out[row[0]].append(_match(row, saes, width))
    return {i: out.get(i, []) for i in indices}


def families(
    query: Query, saes: dict[str, SaeInfo], sae_id: str, indices: Sequence[int]
) -> dict[int, FeatureFamily]:
    """Each feature with its parent in every narrower matched SAE and its children in every
    wider one (narrowest SAE first; children by cover)."""
    rows = query(_SELECT + "AND m.relation IS NOT NULL", [sae_id, list(indices)])
    width = {k: v.d_sae for k, v in saes.items()}
    own = width.get(sae_id, 0)
    found: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row[1] in saes:
            found[row[0]]["parents" if row[7] == PARENT else "children"].append(row)
    cover_rows = query(
        "SELECT feature, other_sae_id, cover FROM feature_families "
        "WHERE sae_id = ? AND feature IN (SELECT unnest(?))",
        [sae_id, list(indices)],
    )
    covers_of: dict[int, dict[str, float]] = defaultdict(dict)
    for feature, other, cover in cover_rows:
        covers_of[feature][other] = cover
    out = {}
    for i in indices:
        got = found.get(i, {})
        parents = sorted(got.get("parents", []), key=lambda r: width[r[1]])
        children = sorted(got.get("children", []), key=lambda r: (width[r[1]], -r[6], r[2]))
        children = children[:MAX_CHILDREN]
        covers = covers_of.get(i, {})
        wider = list(dict.fromkeys(r[1] for r in children))
        out[i] = FeatureFamily(
            sae_id, i, own, [_match(r, saes, own) for r in parents],
            [_match(r, saes, own) for r in children],
            [covers.get(s, 0.0) for s in wider],
        )  # fmt: skip
    return out


def _match(row: tuple, saes: dict[str, SaeInfo], width: int) -> MatchedFeature:
    """A row as a record; `width` is the matched feature's own SAE's d_sae."""
    cfg = _THRESHOLDS
    _, other, index, cos, corr, both, cover, relation, mine, theirs = row
    # containment is of the pair's wider feature: a parent's child, else the wider SAE's
    other_wider = relation == CHILD or (relation != PARENT and saes[other].d_sae >= width)
    wide_tokens = theirs if other_wider else mine
    containment = both / wide_tokens if wide_tokens else 0.0
    clear = (
        relation in (PARENT, CHILD)
        and corr >= cfg.clear_min_correlation
        and containment >= cfg.clear_min_containment
    )
    return MatchedFeature(
        other, index, saes[other].d_sae, cos, corr, both, containment, cover, relation, clear
    )
