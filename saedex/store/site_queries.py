"""The static site's reads: whole ranges of features as raw rows, for exporting thousands at once.

`IndexReader.feature` builds one `FeatureData` with dense per-token lists, which is what the API
and a notebook want; the site exporter reads 65k features and keeps examples sparse (positions
and values as stored) and contexts by id, so it asks by feature range here instead.
"""

from __future__ import annotations

from collections import defaultdict

from saedex.store.reader import IndexReader
from saedex.store.site_windows import WindowQueries

_RANGE = "sae_id = ? AND feature BETWEEN ? AND ?"


class SiteReader(WindowQueries, IndexReader):
    """An IndexReader with range queries for the site exporter (read-only, like its parent);
    document windows of whole feature ranges come from `WindowQueries` (site_windows.py)."""

    def feature_rows(self, sae_id: str, lo: int, hi: int) -> list[tuple]:
        """(feature, n_active, density, max, mean, skew, kurtosis, hist edges, hist counts,
        logit hist edges, logit hist counts) for features lo..hi, by feature."""
        return self._rows(
            "SELECT feature, n_active, density, max_activation, mean_activation, skew, kurtosis, "
            "hist_edges, hist_counts, logit_hist_edges, logit_hist_counts FROM features "
            f"WHERE {_RANGE} ORDER BY feature",
            [sae_id, lo, hi],
        )

    def logit_rows(self, sae_id: str, lo: int, hi: int) -> dict[tuple[int, str], list[tuple]]:
        """(feature, "top"/"bottom") -> [(token_id, value)] by rank."""
        rows = self._rows(
            f"SELECT feature, kind, token_id, value FROM feature_logits WHERE {_RANGE} "
            "ORDER BY feature, kind, rank",
            [sae_id, lo, hi],
        )
        out: dict[tuple[int, str], list[tuple]] = defaultdict(list)
        for feature, kind, token_id, value in rows:
            out[(feature, kind)].append((token_id, value))
        return out

    def neighbour_rows(self, sae_id: str, lo: int, hi: int) -> dict[int, list[tuple]]:
        """feature -> [(neighbour, cosine)] by rank."""
        return self._by_feature(
            f"SELECT feature, neighbour, cosine FROM neighbours WHERE {_RANGE} "
            "ORDER BY feature, rank",
            [sae_id, lo, hi],
        )

    def family_rows(self, sae_id: str, lo: int, hi: int) -> dict[int, list[tuple]]:
        """feature -> [(other SAE, other feature, "parent" | "child", correlation)]: its parents,
        then its children by cover (`saedex match`, saedex/store/matches.py; issue 17)."""
        return self._by_feature(
            "SELECT feature, other_sae_id, other_feature, relation, act_corr FROM feature_matches "
            f"WHERE {_RANGE} AND relation IN ('parent', 'child') "
            "ORDER BY feature, relation DESC, other_sae_id, cover DESC, other_feature",
            [sae_id, lo, hi],
        )

    def coactivation_rows(self, sae_id: str, lo: int, hi: int) -> dict[int, list[tuple]]:
        """feature -> [(other, jaccard, lift, count)] by rank (saedex.store.coactivation)."""
        return self._by_feature(
            'SELECT feature, other, jaccard, lift, "count" FROM coactivations '
            f"WHERE {_RANGE} ORDER BY feature, rank",
            [sae_id, lo, hi],
        )

    def interval_rows(self, sae_id: str, lo: int, hi: int) -> dict[int, list[tuple]]:
        """feature -> [(interval, low, high, fraction)], highest interval first."""
        return self._by_feature(
            f"SELECT feature, interval, low, high, fraction FROM intervals WHERE {_RANGE} "
            "ORDER BY feature, interval DESC",
            [sae_id, lo, hi],
        )

    def _by_feature(self, sql: str, params: list) -> dict[int, list[tuple]]:
        """Rows grouped by their first column (the feature), the rest kept in order."""
        out: dict[int, list[tuple]] = defaultdict(list)
        for feature, *rest in self._rows(sql, params):
            out[feature].append(tuple(rest))
        return out

    def example_rows(self, sae_id: str, lo: int, hi: int, top: int) -> dict[tuple, list[tuple]]:
        """(feature, "top", None) or (feature, "interval", k) -> [(context_id, max_position,
        max_activation, active positions, active values)] by rank; at most `top` top examples."""
        rows = self._rows(
            "SELECT feature, kind, interval, context_id, max_position, max_activation, "
            f"active_positions, active_values FROM examples WHERE {_RANGE} "
            "AND (kind <> 'top' OR rank <= ?) ORDER BY feature, kind, interval, rank",
            [sae_id, lo, hi, top],
        )
        out: dict[tuple, list[tuple]] = defaultdict(list)
        for feature, kind, interval, *rest in rows:
            out[(feature, kind, interval if kind != "top" else None)].append(tuple(rest))
        return out

    def example_context_ids(self, sae_id: str) -> list[int]:
        """Every context some example shows, in id order (the site stores only these)."""
        rows = self._rows(
            "SELECT DISTINCT context_id FROM example_keys WHERE sae_id = ? ORDER BY context_id",
            [sae_id],
        )
        return [r[0] for r in rows]

    def context_rows(self, sae_id: str, context_ids: list[int]) -> list[tuple]:
        """(context_id, document id, source, token ids) for `context_ids`, in id order."""
        return self._rows(
            "SELECT c.context_id, d.doc_id, coalesce(d.source, ''), c.token_ids "
            "FROM contexts c JOIN documents d ON d.sae_id = c.sae_id AND d.doc_index = c.doc_index "
            "WHERE c.sae_id = ? AND c.context_id = ANY(?) ORDER BY c.context_id",
            [sae_id, list(context_ids)],
        )

    def active_per_token(self, sae_id: str) -> float | None:
        """Mean number of features active on a counted token (L0 over the indexed corpus)."""
        rows = self._rows(
            "SELECT sum(f.n_active) / nullif(max(s.n_tokens), 0) FROM features f "
            "JOIN saes s ON s.sae_id = f.sae_id WHERE f.sae_id = ?",
            [sae_id],
        )
        return rows[0][0] if rows else None
