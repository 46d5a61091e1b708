"""The site's document windows: each top example widened across its document's contexts, for
whole feature ranges at once (the exporter's batched form of `documents.window`).

`IndexReader.document_window` answers one point with a few queries; the site needs a window for
every top example of tens of thousands of features, so here one query finds the contexts every
window of a feature range overlaps, and one more the features' stored values on them. A window
is returned as segments of contexts (the site stores each context's tokens once, shared) with
the feature's values in each; tests check it against `documents.window`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """Positions [first, end) of one context inside a window, and the feature's values there
    (active positions only; None for the example's own context, whose values the example has)."""

    context_id: int
    first: int
    end: int
    positions: list[int] | None
    values: list[float] | None


@dataclass(frozen=True)
class ExampleWindow:
    """A top example's window: its document offsets [start, start + width), the document's
    indexed and total token counts, and the contexts it spans in document order."""

    start: int
    indexed_tokens: int
    document_tokens: int
    segments: list[Segment]


# Every top example of a feature range with its document offset (`focus`), and the contexts of
# its document that the window [focus - side, focus + side] overlaps. A context's document
# tokens are the offsets [token_start, token_start + len(token_ids) - bos).
_SEGMENTS = """
WITH bos AS (SELECT CASE WHEN prepend_bos THEN 1 ELSE 0 END AS b FROM saes WHERE sae_id = $sae),
ex AS (
    SELECT e.feature, e.rank, e.context_id, c.doc_index,
           c.token_start + e.max_position - (SELECT b FROM bos) AS focus
    FROM examples e JOIN contexts c ON c.sae_id = e.sae_id AND c.context_id = e.context_id
    WHERE e.sae_id = $sae AND e.feature BETWEEN $lo AND $hi AND e.kind = 'top' AND e.rank <= $top
),
ends AS (
    SELECT doc_index, max(token_start + len(token_ids)) - (SELECT b FROM bos) AS indexed
    FROM contexts WHERE sae_id = $sae AND doc_index IN (SELECT doc_index FROM ex)
    GROUP BY doc_index
)
SELECT ex.feature, ex.rank, ex.context_id, ex.focus, ends.indexed, d.n_tokens,
       n.context_id, n.token_start, len(n.token_ids)
FROM ex
JOIN ends USING (doc_index)
JOIN documents d ON d.sae_id = $sae AND d.doc_index = ex.doc_index
JOIN contexts n ON n.sae_id = $sae AND n.doc_index = ex.doc_index
    AND n.token_start <= ex.focus + $side
    AND n.token_start + len(n.token_ids) - (SELECT b FROM bos) > ex.focus - $side
ORDER BY ex.feature, ex.rank, n.token_start
"""

# Each feature's stored values in the contexts next to its examples' own: a join on the exact
# (feature, context) pairs (a list of contexts alone would fetch every feature's values there).
_VALUES = """
SELECT a.feature, a.context_id, a.position, a.value FROM activations a
JOIN (SELECT DISTINCT unnest($features) AS feature, unnest($contexts) AS context_id) p
    ON a.feature = p.feature AND a.context_id = p.context_id
WHERE a.sae_id = $sae AND a.feature BETWEEN $lo AND $hi
ORDER BY a.feature, a.context_id, a.position
"""

# The contexts any window may reach: those of an example's document within `side` tokens of the
# example's context (a superset of what the windows use; with side 0, the example contexts).
_REACHED = """
WITH bos AS (SELECT CASE WHEN prepend_bos THEN 1 ELSE 0 END AS b FROM saes WHERE sae_id = $sae),
shown AS (
    SELECT c.doc_index, c.token_start AS lo,
           c.token_start + len(c.token_ids) - (SELECT b FROM bos) AS hi
    FROM contexts c
    WHERE c.sae_id = $sae
      AND c.context_id IN (SELECT context_id FROM example_keys WHERE sae_id = $sae)
)
SELECT DISTINCT n.context_id FROM shown JOIN contexts n
    ON n.sae_id = $sae AND n.doc_index = shown.doc_index
    AND n.token_start < shown.hi + $side
    AND n.token_start + len(n.token_ids) - (SELECT b FROM bos) > shown.lo - $side
ORDER BY n.context_id
"""


class WindowQueries:
    """Mixed into the site's reader (it provides `_rows`)."""

    def reached_context_ids(self, sae_id: str, side: int) -> list[int]:
        """Every context the site stores: those examples show and, for document windows of
        `side` tokens, their neighbours within reach; in id order (their references)."""
        if side <= 0:
            return self.example_context_ids(sae_id)  # type: ignore[attr-defined]
        rows = self._rows(_REACHED, {"sae": sae_id, "side": side})  # type: ignore[attr-defined]
        return [r[0] for r in rows]

    def example_windows(
        self, sae_id: str, lo: int, hi: int, top: int, side: int
    ) -> dict[int, list[ExampleWindow]]:
        """feature -> the windows of its first `top` top examples (by rank): `side` document
        tokens either side of each max token, as `documents.window` cuts them."""
        params = {"sae": sae_id, "lo": lo, "hi": hi, "top": top, "side": side}
        rows = self._rows(_SEGMENTS, params)  # type: ignore[attr-defined]
        bos = 1 if self.sae(sae_id).prepend_bos else 0  # type: ignore[attr-defined]
        others = sorted({(r[0], r[6]) for r in rows if r[6] != r[2]})
        values = self._values(sae_id, lo, hi, others)
        by_example: dict[tuple[int, int], list[tuple]] = defaultdict(list)
        for row in rows:
            by_example[(row[0], row[1])].append(row)
        out: dict[int, list[ExampleWindow]] = defaultdict(list)
        for (feature, _), spans in sorted(by_example.items()):
            out[feature].append(_window(spans, side, bos, values.get(feature, {})))
        return out

    def _values(
        self, sae_id: str, lo: int, hi: int, pairs: list[tuple[int, int]]
    ) -> dict[int, dict[int, list[tuple[int, float]]]]:
        """feature -> context -> [(position, value)] for those (feature, context) pairs."""
        out: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
        if pairs:
            features, contexts = (list(x) for x in zip(*pairs, strict=True))
            params = {"sae": sae_id, "lo": lo, "hi": hi, "features": features}
            params["contexts"] = contexts
            for feature, context, position, value in self._rows(_VALUES, params):  # type: ignore[attr-defined]
                out[feature][context].append((position, value))
        return out


def _window(spans: list[tuple], side: int, bos: int, values: dict) -> ExampleWindow:
    """One example's window from its segment rows (see _SEGMENTS) and its feature's values."""
    _, _, own, focus, indexed, n_tokens = spans[0][:6]
    start, end = max(0, focus - side), min(indexed, focus + side + 1)
    segments = []
    for *_, context_id, token_start, length in spans:
        # context position p holds document offset token_start + p - bos
        first = max(bos, start - token_start + bos)
        last = min(length, end - token_start + bos)
        if context_id == own:
            segments.append(Segment(context_id, first, last, None, None))
            continue
        kept = [(p, v) for p, v in values.get(context_id, ()) if first <= p < last]
        segments.append(
            Segment(context_id, first, last, [p for p, _ in kept], [v for _, v in kept])
        )
    return ExampleWindow(start, indexed, n_tokens, segments)
