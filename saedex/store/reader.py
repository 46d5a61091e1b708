"""Read-only queries over an index, returning the plain records of saedex.data.

Batched by feature index (the API's DataLoaders and the site exporter ask for many at once),
parameterised, and safe to share between threads: each call takes its own cursor.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from pathlib import Path

import duckdb

from saedex.data import (
    Example,
    FeatureData,
    FeaturePage,
    FeatureSummary,
    Histogram,
    IntervalSample,
    LogitEntry,
    Neighbour,
    SaeInfo,
)
from saedex.errors import SaedexError

ORDER_COLUMNS = {"index": "feature", "density": "density", "max_activation": "max_activation"}

_SAE_COLUMNS = (
    "sae_id, model_name, hook_name, hook_layer, architecture, d_in, d_sae, sae_path, corpus, "
    "context_size, prepend_bos, n_documents, n_skipped_documents, n_contexts, n_tokens, "
    "n_excluded_tokens, coalesce(dead_features, 0), status, settings, started_at, finished_at, "
    "duration_s"
)


class IndexReader:
    """A read-only view of an index file."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.exists():
            raise SaedexError(f"index file not found: {path}")
        try:
            self._con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as exc:
            raise SaedexError(f"cannot open index {path}: {exc}".splitlines()[0]) from exc
        self._vocab: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _rows(self, sql: str, params: list | dict | None = None) -> list[tuple]:
        cur = self._con.cursor()
        try:
            return cur.execute(sql, params or []).fetchall()
        finally:
            cur.close()

    # -- SAEs ----------------------------------------------------------------------------------

    def saes(self) -> list[SaeInfo]:
        return [_sae(r) for r in self._rows(f"SELECT {_SAE_COLUMNS} FROM saes ORDER BY sae_id")]

    def sae(self, sae_id: str) -> SaeInfo | None:
        rows = self._rows(f"SELECT {_SAE_COLUMNS} FROM saes WHERE sae_id = ?", [sae_id])
        return _sae(rows[0]) if rows else None

    def vocab(self, model_name: str) -> list[str]:
        """The model's token strings by id, loaded once per reader."""
        with self._lock:
            if model_name not in self._vocab:
                rows = self._rows(
                    "SELECT token FROM vocab WHERE model_name = ? ORDER BY token_id", [model_name]
                )
                self._vocab[model_name] = [r[0] for r in rows]
            return self._vocab[model_name]

    def _vocab_for(self, sae_id: str) -> list[str]:
        info = self.sae(sae_id)
        if info is None:
            raise SaedexError(f"unknown SAE: {sae_id!r}")
        return self.vocab(info.model_name)

    # -- features ------------------------------------------------------------------------------

    def summaries(self, sae_id: str, indices: list[int]) -> dict[int, FeatureSummary]:
        rows = self._rows(
            "SELECT feature, n_active, density, max_activation, mean_activation, skew, kurtosis "
            "FROM features WHERE sae_id = ? AND feature IN (SELECT unnest(?)) ",
            [sae_id, list(indices)],
        )
        top = self.logits(sae_id, [r[0] for r in rows], "top")
        return {
            r[0]: FeatureSummary(sae_id, r[0], r[1], r[2], r[3], r[4], r[5], r[6], top[r[0]])
            for r in rows
        }

    def logits(
        self, sae_id: str, indices: list[int], kind: str, first: int | None = None
    ) -> dict[int, list[LogitEntry]]:
        """Top ("top") or bottom ("bottom") logit-lens tokens per feature."""
        vocab = self._vocab_for(sae_id)
        rows = self._rows(
            "SELECT feature, token_id, value FROM feature_logits "
            "WHERE sae_id = ? AND kind = ? AND feature IN (SELECT unnest(?)) AND rank <= ? "
            "ORDER BY feature, rank",
            [sae_id, kind, list(indices), first or 1 << 15],
        )
        out: dict[int, list[LogitEntry]] = defaultdict(list)
        for feature, token_id, value in rows:
            out[feature].append(LogitEntry(vocab[token_id], token_id, value))
        return {i: out.get(i, []) for i in indices}

    def histograms(self, sae_id: str, indices: list[int]) -> dict[int, tuple[Histogram, Histogram]]:
        """(activation histogram, logit histogram) per feature."""
        rows = self._rows(
            "SELECT feature, hist_edges, hist_counts, logit_hist_edges, logit_hist_counts "
            "FROM features WHERE sae_id = ? AND feature IN (SELECT unnest(?))",
            [sae_id, list(indices)],
        )
        return {r[0]: (Histogram(r[1], r[2]), Histogram(r[3], r[4])) for r in rows}

    def neighbours(
        self, sae_id: str, indices: list[int], first: int | None = None
    ) -> dict[int, list[Neighbour]]:
        rows = self._rows(
            "SELECT feature, neighbour, cosine FROM neighbours "
            "WHERE sae_id = ? AND feature IN (SELECT unnest(?)) AND rank <= ? "
            "ORDER BY feature, rank",
            [sae_id, list(indices), first or 1 << 15],
        )
        out: dict[int, list[Neighbour]] = defaultdict(list)
        for feature, neighbour, cosine in rows:
            out[feature].append(Neighbour(neighbour, cosine))
        return {i: out.get(i, []) for i in indices}

    def top_examples(
        self, sae_id: str, indices: list[int], first: int | None = None
    ) -> dict[int, list[Example]]:
        rows = self._example_rows(
            sae_id, "e.kind = 'top' AND e.rank <= ?", [first or 1 << 15], indices
        )
        vocab = self._vocab_for(sae_id)
        out: dict[int, list[Example]] = defaultdict(list)
        for row in rows:
            out[row[0]].append(_example(row, vocab))
        return {i: out.get(i, []) for i in indices}

    def interval_samples(self, sae_id: str, indices: list[int]) -> dict[int, list[IntervalSample]]:
        """Intervals from the highest down, as the dashboards show them."""
        vocab = self._vocab_for(sae_id)
        examples: dict[tuple[int, int], list[Example]] = defaultdict(list)
        for row in self._example_rows(sae_id, "e.kind = 'interval'", [], indices):
            examples[(row[0], row[1])].append(_example(row, vocab))
        rows = self._rows(
            "SELECT feature, interval, low, high, fraction FROM intervals "
            "WHERE sae_id = ? AND feature IN (SELECT unnest(?)) "
            "ORDER BY feature, interval DESC",
            [sae_id, list(indices)],
        )
        out: dict[int, list[IntervalSample]] = defaultdict(list)
        for feature, interval, low, high, fraction in rows:
            out[feature].append(
                IntervalSample(interval, low, high, fraction, examples[(feature, interval)])
            )
        return {i: out.get(i, []) for i in indices}

    def _example_rows(
        self, sae_id: str, where: str, params: list, indices: list[int]
    ) -> list[tuple]:
        return self._rows(
            "SELECT e.feature, e.interval, e.context_id, d.doc_id, d.source, c.token_ids, "
            "       e.activations, e.max_activation, e.max_position "
            "FROM examples e "
            "JOIN contexts c ON c.sae_id = e.sae_id AND c.context_id = e.context_id "
            "JOIN documents d ON d.sae_id = c.sae_id AND d.doc_index = c.doc_index "
            f"WHERE e.sae_id = ? AND e.feature IN (SELECT unnest(?)) AND {where} "
            "ORDER BY e.feature, e.interval, e.rank",
            [sae_id, list(indices), *params],
        )

    def feature(self, sae_id: str, index: int) -> FeatureData | None:
        """Everything one dashboard shows, or None for an index out of range."""
        summary = self.summaries(sae_id, [index]).get(index)
        if summary is None:
            return None
        hist, logit_hist = self.histograms(sae_id, [index])[index]
        return FeatureData(
            summary=summary,
            bottom_logits=self.logits(sae_id, [index], "bottom")[index],
            histogram=hist,
            logit_histogram=logit_hist,
            top_examples=self.top_examples(sae_id, [index])[index],
            interval_samples=self.interval_samples(sae_id, [index])[index],
            neighbours=self.neighbours(sae_id, [index])[index],
        )

    def list_features(
        self,
        sae_id: str,
        order_by: str = "index",
        descending: bool = False,
        offset: int = 0,
        limit: int = 20,
        min_density: float | None = None,
        max_density: float | None = None,
        top_token: str | None = None,
    ) -> FeaturePage:
        """A filtered, ordered page of features (ties broken by index)."""
        if order_by not in ORDER_COLUMNS:
            raise SaedexError(f"cannot order features by {order_by!r}")
        where, params = ["f.sae_id = ?"], [sae_id]
        if min_density is not None:
            where.append("f.density >= ?")
            params.append(min_density)
        if max_density is not None:
            where.append("f.density <= ?")
            params.append(max_density)
        if top_token is not None:
            where.append(
                "f.feature IN (SELECT l.feature FROM feature_logits l JOIN saes s "
                "ON s.sae_id = l.sae_id JOIN vocab v ON v.model_name = s.model_name "
                "AND v.token_id = l.token_id WHERE l.sae_id = ? AND l.kind = 'top' "
                "AND lower(trim(v.token)) = lower(trim(?)))"
            )
            params += [sae_id, top_token]
        clause = " AND ".join(where)
        direction = "DESC" if descending else "ASC"
        column = ORDER_COLUMNS[order_by]
        rows = self._rows(
            f"SELECT f.feature, count(*) OVER () FROM features f WHERE {clause} "
            f"ORDER BY f.{column} {direction}, f.feature LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        if not rows:
            total = self._rows(f"SELECT count(*) FROM features f WHERE {clause}", params)[0][0]
            return FeaturePage([], total)
        summaries = self.summaries(sae_id, [r[0] for r in rows])
        return FeaturePage([summaries[r[0]] for r in rows], rows[0][1])


def _sae(row: tuple) -> SaeInfo:
    values = list(row)
    values[18] = json.loads(values[18])
    return SaeInfo(*values)


def _example(row: tuple, vocab: list[str]) -> Example:
    _, _, context_id, doc_id, source, token_ids, acts, max_act, max_pos = row
    return Example(
        context_id=context_id,
        document_id=doc_id,
        source=source or "",
        token_ids=token_ids,
        tokens=[vocab[t] for t in token_ids],
        activations=acts,
        max_activation=max_act,
        max_token_index=max_pos,
    )
