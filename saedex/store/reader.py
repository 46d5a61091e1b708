"""Read-only queries over an index, returning the plain records of saedex.data.

Batched by feature index (the API's DataLoaders and the site exporter ask for many at once),
parameterised, and safe to share between threads: each call takes its own cursor.
"""

from __future__ import annotations

import json
import threading
from array import array
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from pathlib import Path

from saedex.data import (
    Coactivation,
    DocumentWindow,
    Example,
    Explanation,
    FeatureData,
    FeatureFamily,
    FeaturePage,
    FeatureSummary,
    Histogram,
    IntervalSample,
    LogitEntry,
    MatchedFeature,
    Neighbour,
    SaeInfo,
)
from saedex.errors import SaedexError
from saedex.fingerprint import sae_fingerprint
from saedex.store import documents, matches
from saedex.store.deadline import interruptible
from saedex.store.edits import EditStore, edits_path
from saedex.store.precision import EXACT
from saedex.store.views import IndexView
from saedex.weights import feature_vectors, indexed_weights

ORDER_COLUMNS = {"index": "feature", "density": "density", "max_activation": "max_activation"}

_SAE_COLUMNS = (
    "sae_id, model_name, hook_name, hook_layer, architecture, d_in, d_sae, sae_path, corpus, "
    "context_size, prepend_bos, n_documents, n_skipped_documents, n_contexts, n_tokens, "
    "n_excluded_tokens, coalesce(dead_features, 0), status, settings, started_at, finished_at, "
    "duration_s, model_fingerprint, sae_weights_sha256, sae_cfg_sha256, corpus_fingerprint, "
    "saedex_version, dtype, device"
)


class IndexReader:
    """A read-only view of an index file."""

    def __init__(self, path: str | Path):
        self._view = IndexView(Path(path))
        self._con = self._view.con
        self._generation = self._view.generation
        self._vocab: dict[str, list[str]] = {}
        self._lock = threading.RLock()  # vocab() queries (and so refreshes) while holding it
        self._model_names: dict[str, str] = {}
        self._contexts: OrderedDict[tuple[str, int], tuple[str, str, array]] = OrderedDict()
        self._saes: dict[str, SaeInfo] | None = None
        self.edits_path = edits_path(Path(path))
        self._edits: EditStore | None = None

    def close(self) -> None:
        self._con.close()
        if self._edits is not None:
            self._edits.close()

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def refresh(self) -> bool:
        """See runs completed since the last look (polled at most every 0.5 s, also before
        every query); True if there were any. A run being written is never visible."""
        if not self._view.refresh():
            return False
        with self._lock:
            self._saes = None
            for key in [k for k in self._contexts if k[0] in self._view.changed]:
                del self._contexts[key]  # a replaced run's contexts
            for sae_id in self._view.changed:
                self._model_names.pop(sae_id, None)
        return True

    def _rows(self, sql: str, params: list | dict | None = None) -> list[tuple]:
        self.refresh()
        cur = self._con.cursor()
        try:
            with interruptible(cur):  # a request's deadline (store/deadline.py) can stop it
                return cur.execute(sql, params or []).fetchall()
        finally:
            cur.close()

    # -- SAEs ----------------------------------------------------------------------------------

    def saes(self) -> list[SaeInfo]:
        return list(self.sae_map().values())

    def sae(self, sae_id: str) -> SaeInfo | None:
        return self.sae_map().get(sae_id)

    def sae_map(self) -> dict[str, SaeInfo]:
        """Every visible SAE by id, read once per change of the index (a server asks often)."""
        self.refresh()
        saes = self._saes
        if saes is None:
            rows = self._rows(f"SELECT {_SAE_COLUMNS} FROM saes ORDER BY sae_id")
            saes = self._saes = {r[0]: _sae(r) for r in rows}
        return saes

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
        model_name = self._model_names.get(sae_id)
        if model_name is None:
            info = self.sae(sae_id)
            if info is None:
                raise SaedexError(f"unknown SAE: {sae_id!r}")
            model_name = self._model_names[sae_id] = info.model_name
        return self.vocab(model_name)

    # -- SAE weights (saedex.weights) -----------------------------------------------------------

    def vectors(
        self, sae_id: str, indices: list[int], kind: str = "decoder"
    ) -> dict[int, list[float]]:
        """Each feature's decoder row ("decoder") or encoder column ("encoder"), read from the
        SAE weights file the run recorded (the index stores no weights)."""
        info = self.sae(sae_id)
        if info is None:
            raise SaedexError(f"unknown SAE: {sae_id!r}")
        return feature_vectors(indexed_weights(info), kind, indices)

    # -- feature splitting across widths (saedex.store.matches, issue 17) ----------------------

    def matches(
        self, sae_id: str, indices: list[int], other: str | None = None, first: int | None = None
    ) -> dict[int, list[MatchedFeature]]:
        """Each feature's matches in another SAE (`saedex match`), best correlated first."""
        return matches.feature_matches(self._rows, self.sae_map(), sae_id, indices, other, first)

    def families(self, sae_id: str, indices: list[int]) -> dict[int, FeatureFamily]:
        """Each feature's parents in narrower SAEs and children in wider ones."""
        return matches.families(self._rows, self.sae_map(), sae_id, indices)

    # -- features ------------------------------------------------------------------------------

    def summaries(self, sae_id: str, indices: list[int]) -> dict[int, FeatureSummary]:
        rows = self._rows(
            "SELECT feature, n_active, density, max_activation, mean_activation, skew, kurtosis "
            f"FROM features WHERE sae_id = ? AND feature IN ({_listed(indices)}) ",
            [sae_id],
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
            f"WHERE sae_id = ? AND kind = ? AND feature IN ({_listed(indices)}) AND rank <= ? "
            "ORDER BY feature, rank",
            [sae_id, kind, first or 1 << 15],
        )
        out: dict[int, list[LogitEntry]] = defaultdict(list)
        for feature, token_id, value in rows:
            out[feature].append(LogitEntry(vocab[token_id], token_id, value))
        return {i: out.get(i, []) for i in indices}

    def histograms(self, sae_id: str, indices: list[int]) -> dict[int, tuple[Histogram, Histogram]]:
        """(activation histogram, logit histogram) per feature."""
        rows = self._rows(
            "SELECT feature, hist_edges, hist_counts, logit_hist_edges, logit_hist_counts "
            f"FROM features WHERE sae_id = ? AND feature IN ({_listed(indices)})",
            [sae_id],
        )
        return {r[0]: (Histogram(r[1], r[2]), Histogram(r[3], r[4])) for r in rows}

    def neighbours(
        self, sae_id: str, indices: list[int], first: int | None = None
    ) -> dict[int, list[Neighbour]]:
        rows = self._rows(
            "SELECT feature, neighbour, cosine FROM neighbours "
            f"WHERE sae_id = ? AND feature IN ({_listed(indices)}) AND rank <= ? "
            "ORDER BY feature, rank",
            [sae_id, first or 1 << 15],
        )
        out: dict[int, list[Neighbour]] = defaultdict(list)
        for feature, neighbour, cosine in rows:
            out[feature].append(Neighbour(sae_id, neighbour, cosine))
        return {i: out.get(i, []) for i in indices}

    def coactivations(
        self, sae_id: str, indices: list[int], first: int | None = None
    ) -> dict[int, list[Coactivation]]:
        """Features firing on the same tokens, by Jaccard (saedex.store.coactivation): as
        stored by the run, or by `saedex coactivations` for runs indexed without them."""
        rows = self._rows(
            'SELECT feature, other, "count", jaccard, lift FROM coactivations '
            "WHERE sae_id = ? AND feature IN (SELECT unnest(?)) AND rank <= ? "
            "ORDER BY feature, rank",
            [sae_id, list(indices), first or 1 << 15],
        )
        out: dict[int, list[Coactivation]] = defaultdict(list)
        for feature, other, count, jaccard, lift in rows:
            out[feature].append(Coactivation(sae_id, other, count, jaccard, lift))
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
            f"WHERE sae_id = ? AND feature IN ({_listed(indices)}) "
            "ORDER BY feature, interval DESC",
            [sae_id],
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
        """Example rows with their context's document and tokens (from the context cache: a
        join with `contexts` would scan its token lists on every call)."""
        rows = self._rows(
            "SELECT e.feature, e.interval, e.context_id, e.active_positions, e.active_values, "
            "       e.max_activation, e.max_position FROM examples e "
            f"WHERE e.sae_id = ? AND e.feature IN ({_listed(indices)}) AND {where} "
            "ORDER BY e.feature, e.interval, e.rank",
            [sae_id, *params],
        )
        contexts = self.contexts(sae_id, {r[2] for r in rows})
        return [(f, i, c, *contexts[c], *rest) for f, i, c, *rest in rows]

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
            explanations=self.explanations(sae_id, [index])[index],
            coactivations=self.coactivations(sae_id, [index])[index],
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
        has_explanation: bool | None = None,
    ) -> FeaturePage:
        """A filtered, ordered page of features (ties broken by index)."""
        if order_by not in ORDER_COLUMNS:
            raise SaedexError(f"cannot order features by {order_by!r}")
        where, params = ["f.sae_id = ?"], [sae_id]
        if has_explanation is not None:  # the explained set comes from the user-edit store
            negate = "" if has_explanation else "NOT "
            where.append(f"{negate}list_contains(?, f.feature)")
            params.append(self.explained_features(sae_id))
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

    # -- explanations (the user-edit store beside the index: saedex.store.edits) ---------------

    def edits(self, create: bool = False) -> EditStore | None:
        """The index's user-edit store; None while it does not exist, unless `create`."""
        with self._lock:
            if self._edits is None and (create or self.edits_path.exists()):
                self._edits = EditStore(self.edits_path)
            return self._edits

    def fingerprint(self, sae_id: str) -> str | None:
        """The SAE's weights fingerprint, which explanations are tied to."""
        info = self.sae(sae_id)
        return None if info is None else sae_fingerprint(info)

    def explanations(self, sae_id: str, indices: list[int]) -> dict[int, list[Explanation]]:
        """Each feature's explanations, current ones first (`current` False: made for other
        weights of this SAE id)."""
        store = self.edits()
        if store is None:
            return {i: [] for i in indices}
        return store.for_features(sae_id, indices, self.fingerprint(sae_id))

    def search_explanations(self, sae_id: str, query: str, limit: int = 20) -> list:
        """Features whose current explanations contain `query` (saedex.store.edits.search)."""
        store = self.edits()
        return [] if store is None else store.search(sae_id, query, self.fingerprint(sae_id), limit)

    def explained_features(self, sae_id: str) -> list[int]:
        store = self.edits()
        return [] if store is None else store.explained_features(sae_id, self.fingerprint(sae_id))

    def inactive_examples(self, sae_id: str, feature: int, n: int, seed: int = 0) -> list[Example]:
        """Up to `n` contexts (a seeded pseudo-random choice) where the feature is zero on
        every token: the negatives that explanation scorers show beside its examples."""
        rows = self._rows(
            "SELECT c.context_id FROM contexts c WHERE c.sae_id = ? AND c.context_id NOT IN "
            "(SELECT context_id FROM activations WHERE sae_id = ? AND feature = ?) "
            "ORDER BY hash(c.context_id + ?), c.context_id LIMIT ?",
            [sae_id, sae_id, feature, seed, n],
        )
        contexts = self.contexts(sae_id, [r[0] for r in rows])
        vocab = self._vocab_for(sae_id)
        return [
            Example(c, doc, source, ids, [vocab[t] for t in ids], [0.0] * len(ids), 0.0, 0)
            for c, (doc, source, ids) in sorted(contexts.items())
        ]

    # -- document windows (saedex.store.documents) ----------------------------------------------

    def document_window(
        self,
        sae_id: str,
        features: list[int | tuple[str, int]],
        *,
        context_id: int | None = None,
        position: int | None = None,
        document_id: str | None = None,
        offset: int = 0,
        before: int = 64,
        after: int = 64,
    ) -> DocumentWindow:
        """A document's stored tokens and activations around a point, across contexts.

        The point is a context and a position in it (an example's `context_id` and
        `max_token_index`), or a document id and an offset into its tokens (BOS not counted).
        `features` are indices of this SAE, or (sae_id, index) pairs of SAEs indexed over the
        same corpus.
        """
        pairs = [f if isinstance(f, tuple) else (sae_id, f) for f in features]
        for owner, index in pairs:
            self._check_feature(owner, index)
        if context_id is not None:
            center = documents.document_at_context(self._rows, sae_id, context_id, position or 0)
        elif document_id is not None:
            center = (documents.document_ref(self._rows, sae_id, document_id=document_id), offset)
        else:
            raise SaedexError("a document window needs a context id or a document id")
        if before < 0 or after < 0:
            raise SaedexError("before and after must not be negative")
        return documents.window(self._rows, center, before, after, pairs, self._vocab_for)

    def _check_feature(self, sae_id: str, index: int) -> None:
        info = self.sae(sae_id)
        if info is None:
            raise SaedexError(f"unknown SAE: {sae_id!r}")
        if not 0 <= index < info.d_sae:
            raise SaedexError(f"no feature {index} in SAE {sae_id!r} (0..{info.d_sae - 1})")

    # -- contexts (saedex.api) -----------------------------------------------------------------

    context_cache_size = 65_536  # contexts kept in memory (token ids as int32: ~0.6 KB each)

    def contexts(
        self, sae_id: str, context_ids: Iterable[int]
    ) -> dict[int, tuple[str, str, list[int]]]:
        """(document id, source, token ids) per context, from an LRU cache filled by one query
        per call for the misses. The file is read-only, so cached contexts never go stale."""
        wanted = set(context_ids)
        found = self._cached_contexts(sae_id, wanted)
        missing = [c for c in wanted if c not in found]
        if missing:
            found.update(self._fetch_contexts(sae_id, "c.context_id = ANY(?)", [missing]))
        return {c: (doc, source, ids.tolist()) for c, (doc, source, ids) in found.items()}

    def warm_contexts(self, sae_id: str) -> int:
        """Cache the contexts that examples show (as many as the cache holds), in one query, so
        a server's first requests do not pay for misses. Returns how many were cached."""
        condition = (
            "c.context_id IN (SELECT DISTINCT context_id FROM example_keys WHERE sae_id = ?) "
            "ORDER BY c.context_id LIMIT ?"
        )
        return len(self._fetch_contexts(sae_id, condition, [sae_id, self.context_cache_size]))

    def _fetch_contexts(self, sae_id: str, condition: str, params: list) -> dict[int, tuple]:
        rows = self._rows(
            "SELECT c.context_id, d.doc_id, coalesce(d.source, ''), c.token_ids "
            "FROM contexts c JOIN documents d "
            "ON d.sae_id = c.sae_id AND d.doc_index = c.doc_index "
            f"WHERE c.sae_id = ? AND {condition}",
            [sae_id, *params],
        )
        fetched = {r[0]: (r[1], r[2], array("i", r[3])) for r in rows}
        self._cache_contexts(sae_id, fetched)
        return fetched

    def _cached_contexts(self, sae_id: str, wanted: set[int]) -> dict[int, tuple]:
        found = {}
        with self._lock:
            for context_id in wanted:
                key = (sae_id, context_id)
                if key in self._contexts:
                    self._contexts.move_to_end(key)
                    found[context_id] = self._contexts[key]
        return found

    def _cache_contexts(self, sae_id: str, fetched: dict[int, tuple]) -> None:
        with self._lock:
            for context_id, entry in fetched.items():
                self._contexts[(sae_id, context_id)] = entry
            while len(self._contexts) > self.context_cache_size:
                self._contexts.popitem(last=False)

    def set_threads(self, threads: int) -> None:
        """DuckDB threads per query. A server runs many small queries at once, and on a busy
        machine a query split over threads waits for all of them (its p99 grows 3-10x)."""
        self._con.execute(f"SET threads TO {int(threads)}")

    # -- search (saedex.api) -------------------------------------------------------------------

    def search_features(
        self, sae_id: str, query: str, limit: int = 20
    ) -> list[tuple[int, list[str], int]]:
        """Features whose top-logit tokens or top examples' text contain `query`, in any case.

        Returns (feature, its matching top-logit tokens, how many of its top examples match),
        logit matches first. Example text is the context's tokens decoded and joined.
        """
        sql = """
            WITH m AS (SELECT model_name FROM saes WHERE sae_id = $sae),
            toks AS (
                SELECT list(token ORDER BY token_id) AS t FROM vocab
                WHERE model_name = (SELECT model_name FROM m)
            ),
            logit_hits AS (
                SELECT l.feature, list(v.token ORDER BY l.rank) AS tokens
                FROM feature_logits l JOIN vocab v ON v.token_id = l.token_id
                WHERE l.sae_id = $sae AND l.kind = 'top'
                  AND v.model_name = (SELECT model_name FROM m)
                  AND contains(lower(v.token), lower($q))
                GROUP BY l.feature
            ),
            ctx_hits AS (
                SELECT c.context_id FROM contexts c, toks
                WHERE c.sae_id = $sae
                  AND c.context_id IN (
                      SELECT context_id FROM example_keys WHERE sae_id = $sae AND kind = 'top')
                  AND contains(lower(array_to_string(
                      list_transform(c.token_ids, lambda i: toks.t[i + 1]), '')), lower($q))
            ),
            example_hits AS (
                SELECT feature, count(*) AS n FROM example_keys
                WHERE sae_id = $sae AND kind = 'top'
                  AND context_id IN (SELECT context_id FROM ctx_hits)
                GROUP BY feature
            )
            SELECT coalesce(l.feature, x.feature) AS feature,
                   coalesce(l.tokens, []::VARCHAR[]) AS tokens, coalesce(x.n, 0) AS n
            FROM logit_hits l FULL OUTER JOIN example_hits x ON x.feature = l.feature
            ORDER BY len(tokens) DESC, n DESC, feature
            LIMIT $limit
        """
        return self._rows(sql, {"sae": sae_id, "q": query, "limit": limit})


def _sae(row: tuple) -> SaeInfo:
    values = list(row)
    values[18] = json.loads(values[18])
    values[18].setdefault("value_precision", EXACT)  # runs before the setting stored float32
    return SaeInfo(*values)


def _example(row: tuple, vocab: list[str]) -> Example:
    _, _, context_id, doc_id, source, token_ids, positions, values, max_act, max_pos = row
    acts = [0.0] * len(token_ids)  # stored sparse; an Example aligns them with its tokens
    for position, value in zip(positions, values, strict=True):
        acts[position] = value
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


def _listed(indices) -> str:
    """Feature indices as SQL literals (integers, checked): a constant filter reaches the scan
    of a compacted run's Parquet files, even through the `examples` view's join, and skips
    their other row groups (saedex.store.bulk); a list parameter does neither."""
    return ", ".join(str(int(i)) for i in indices) or "NULL"
