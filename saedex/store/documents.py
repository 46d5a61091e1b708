"""Document windows: a document's tokens and stored activations across context boundaries.

The index cuts each document into contexts (`contexts.token_start` is the offset of a context's
first document token; a prepended BOS is not a document token). A window is a range of those
offsets, joined back from every context that overlaps it, with the activations the pass stored
for each context. Contexts are stored in document order, so the range scans stay small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from saedex.data import DocumentWindow, WindowFeature
from saedex.errors import SaedexError

Rows = Callable[[str, list], list[tuple]]


@dataclass(frozen=True)
class DocumentRef:
    """Where a document lives in one run: its row and how much of it the run holds."""

    sae_id: str
    doc_index: int
    document_id: str
    source: str
    n_tokens: int
    indexed_tokens: int
    bos: int  # 1 when contexts start with a prepended BOS, else 0


@dataclass(frozen=True)
class StoredSpan:
    """The stored tokens of [start, end) of a document, and the features' values on them."""

    token_ids: list[int]
    excluded: list[bool]
    context_starts: list[int]
    values: dict[int, list[float]]


def document_at_context(rows: Rows, sae_id: str, context_id: int, position: int) -> tuple:
    """(DocumentRef, document offset) of a context's position (BOS positions have none)."""
    found = rows(
        "SELECT c.doc_index, c.token_start, len(c.token_ids), s.prepend_bos FROM contexts c "
        "JOIN saes s USING (sae_id) WHERE c.sae_id = ? AND c.context_id = ?",
        [sae_id, context_id],
    )
    if not found:
        raise SaedexError(f"no context {context_id} in SAE {sae_id!r}")
    doc_index, token_start, length, prepend_bos = found[0]
    bos = int(bool(prepend_bos))
    if not bos <= position < length:
        raise SaedexError(
            f"position {position} is outside context {context_id}'s document tokens "
            f"({bos}..{length - 1})"
        )
    return document_ref(rows, sae_id, doc_index=doc_index), token_start + position - bos


def document_ref(
    rows: Rows, sae_id: str, doc_index: int | None = None, document_id: str | None = None
) -> DocumentRef:
    """A document by its row index or by its id (an id shared by several rows is refused)."""
    key, value = ("d.doc_index", doc_index) if document_id is None else ("d.doc_id", document_id)
    found = rows(
        "SELECT d.doc_index, d.doc_id, coalesce(d.source, ''), d.n_tokens, s.prepend_bos, "
        "       (SELECT max(c.token_start + len(c.token_ids)) FROM contexts c "
        "        WHERE c.sae_id = d.sae_id AND c.doc_index = d.doc_index) "
        f"FROM documents d JOIN saes s USING (sae_id) WHERE d.sae_id = ? AND {key} = ? "
        "ORDER BY d.doc_index LIMIT 2",
        [sae_id, value],
    )
    if not found:
        raise SaedexError(f"no document {value!r} in SAE {sae_id!r}")
    if len(found) > 1:
        raise SaedexError(
            f"document id {value!r} names several documents in SAE {sae_id!r}; "
            "give a context id instead"
        )
    doc_index, doc_id, source, n_tokens, prepend_bos, context_end = found[0]
    bos = int(bool(prepend_bos))
    indexed = 0 if context_end is None else context_end - bos  # the last context's end
    return DocumentRef(sae_id, doc_index, doc_id, source, n_tokens, indexed, bos)


def stored_span(
    rows: Rows, doc: DocumentRef, start: int, end: int, features: list[int]
) -> StoredSpan:
    """Tokens, sinks, context starts and the features' stored values on [start, end)."""
    contexts = rows(
        "SELECT context_id, token_start, token_ids FROM contexts "
        "WHERE sae_id = ? AND doc_index = ? AND token_start < ? "
        "  AND token_start + len(token_ids) - ? > ? ORDER BY token_start",
        [doc.sae_id, doc.doc_index, end, doc.bos, start],
    )
    width = end - start
    token_ids = [0] * width
    excluded = [False] * width
    values = {f: [0.0] * width for f in features}
    offset_of: dict[int, int] = {}  # context id -> document offset of its position 0
    context_starts = []
    for context_id, token_start, ids in contexts:
        offset_of[context_id] = token_start - doc.bos
        if token_start >= start:
            context_starts.append(token_start)
        for i, token in enumerate(ids[doc.bos :]):
            if start <= token_start + i < end:
                token_ids[token_start + i - start] = token
    if not contexts:
        return StoredSpan([], [], [], {f: [] for f in features})
    lo, hi = contexts[0][0], contexts[-1][0]
    for context_id, position in rows(
        "SELECT context_id, position FROM excluded_tokens "
        "WHERE sae_id = ? AND context_id BETWEEN ? AND ?",
        [doc.sae_id, lo, hi],
    ):
        at = offset_of[context_id] + position - start
        if 0 <= at < width and position >= doc.bos:
            excluded[at] = True
    if features:
        # features as literals: the filter then reaches the scan (a compacted run's
        # activations are stored feature-major; saedex.store.bulk)
        listed = ", ".join(str(int(f)) for f in features)
        for context_id, position, feature, value in rows(
            "SELECT context_id, position, feature, value FROM activations "
            f"WHERE sae_id = ? AND context_id BETWEEN ? AND ? AND feature IN ({listed})",
            [doc.sae_id, lo, hi],
        ):
            at = offset_of[context_id] + position - start
            if 0 <= at < width:
                values[feature][at] = value
    return StoredSpan(token_ids, excluded, context_starts, values)


def window(
    rows: Rows,
    center: tuple[DocumentRef, int],
    before: int,
    after: int,
    features: list[tuple[str, int]],
    vocab: Callable[[str], list[str]],
) -> DocumentWindow:
    """The stored window of `before` and `after` tokens around a document offset, with each
    (sae_id, feature)'s values. Features of another SAE need that SAE indexed over the same
    document (same id, same tokens in the window)."""
    doc, offset = center
    if not 0 <= offset < doc.indexed_tokens:
        raise SaedexError(
            f"offset {offset} is outside document {doc.document_id!r}: the index holds its "
            f"tokens 0..{doc.indexed_tokens - 1} (the document has {doc.n_tokens})"
        )
    start, end = max(0, offset - before), min(doc.indexed_tokens, offset + after + 1)
    by_sae: dict[str, list[int]] = {doc.sae_id: []}
    for sae_id, index in features:
        by_sae.setdefault(sae_id, []).append(index)
    span = stored_span(rows, doc, start, end, by_sae[doc.sae_id])
    values = {(doc.sae_id, f): v for f, v in span.values.items()}
    for sae_id, indices in by_sae.items():
        if sae_id != doc.sae_id:
            other = stored_span(rows, _same_document(rows, sae_id, doc), start, end, indices)
            if other.token_ids != span.token_ids:
                raise SaedexError(
                    f"SAE {sae_id!r} was not indexed over the same tokens of document "
                    f"{doc.document_id!r} as {doc.sae_id!r}"
                )
            values.update({(sae_id, f): v for f, v in other.values.items()})
    strings = vocab(doc.sae_id)
    return DocumentWindow(
        sae_id=doc.sae_id,
        document_id=doc.document_id,
        source=doc.source,
        focus=offset,
        start=start,
        token_ids=span.token_ids,
        tokens=[strings[t] for t in span.token_ids],
        excluded=span.excluded,
        context_starts=span.context_starts,
        document_tokens=doc.n_tokens,
        indexed_tokens=doc.indexed_tokens,
        live=False,
        features=[WindowFeature(s, f, values[(s, f)]) for s, f in features],
    )


def _same_document(rows: Rows, sae_id: str, doc: DocumentRef) -> DocumentRef:
    try:
        return document_ref(rows, sae_id, document_id=doc.document_id)
    except SaedexError as exc:
        raise SaedexError(
            f"SAE {sae_id!r} has no document {doc.document_id!r} (features shown together on "
            "one document must come from SAEs indexed over the same corpus)"
        ) from exc
