"""HTML fragments of the site: escaped text, shaded tokens, examples and small tables.

Every string from the index (tokens, document ids, sources, paths) goes through `esc`, which
makes it inert both as HTML and as Markdown, so a fragment is safe wherever it lands. Token
markup is lean on purpose (a page can hold ~9,000 tokens): a token with zero activation is
bare text; an active one is a `<mark>` with a shading-level class and its value in `data-v`
(CSS shows it on hover), never an inline style; attribute values are unquoted where HTML
allows it. Whitespace markers are bare `<i>` elements.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from saedex.data import Example, IntervalSample, LogitEntry, Neighbour

LEVELS = 9  # shading classes a1..a9, relative to the feature's max activation

# HTML specials and the characters Markdown (or a template engine) could read as syntax.
_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "'": "&#39;",
        **{c: f"&#{ord(c)};" for c in "\\`*_[]{}|#~!$:"},
    }
)
_WHITESPACE = re.compile(r"\s+")
_MARKERS = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}  # else "·"


def esc(text: str) -> str:
    """Text made inert for HTML and Markdown alike (entities render as the original text)."""
    return text.translate(_ESCAPES)


def _marker(whitespace: str) -> str:
    return "".join(_MARKERS.get(c, "\u00b7") for c in whitespace)


def token_html(token: str) -> str:
    """A token's escaped text with whitespace runs shown as faint ␣ / ↵ / ⇥ markers."""
    if not token:
        return "<i>\u2205</i>"
    return _WHITESPACE.sub(lambda m: f"<i>{_marker(m.group())}</i>", esc(token))


def plain_token(token: str) -> str:
    """A token as escaped text on one line, whitespace as plain markers (search, tables)."""
    return esc(_WHITESPACE.sub(lambda m: _marker(m.group()), token)) if token else "\u2205"


def inline(text: str) -> str:
    """Escaped text on one line: inside Markdown, a newline could start a block (a setext
    heading, an indented code block) even with every character escaped."""
    return esc(" ".join(text.split()))


def level(value: float, scale: float) -> int:
    """The shading class (1..LEVELS) of a positive activation."""
    if scale <= 0:
        return LEVELS
    return min(LEVELS, max(1, math.ceil(LEVELS * value / scale)))


def _level_class(value: float, scale: float, peak: bool) -> str:
    """`a<level>`, quoted only when the max token adds a second class (values stay unquoted:
    `:.3g` never yields a space, quote or `>`)."""
    css = f"a{level(value, scale)}"
    return f'"{css} mx"' if peak else css


def num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _tokens(ex: Example, vocab: Sequence[str], scale: float, start: int, stop: int) -> str:
    parts = []
    for pos in range(start, stop):
        text, value = vocab[ex.token_ids[pos]], ex.activations[pos]
        if value > 0:
            peak = pos == ex.max_token_index
            parts.append(
                f"<mark class={_level_class(value, scale, peak)} data-v={value:.3g}>{text}</mark>"
            )
        else:
            parts.append(text)
    return "".join(parts)


def example_html(
    ex: Example, vocab: Sequence[str], scale: float, window: int, first: int = 0
) -> str:
    """One example: a window around its max token, opening in place to the whole context.

    The whole context is rendered once; tokens outside the window sit in `.o` spans that CSS
    hides until the <details> is open (no script, works offline). `first` skips a BOS.
    """
    stop = len(ex.token_ids)
    lo = max(first, ex.max_token_index - window)
    hi = min(stop, ex.max_token_index + window + 1)
    before = _outside(_tokens(ex, vocab, scale, first, lo), before=True)
    after = _outside(_tokens(ex, vocab, scale, hi, stop), before=False)
    where = f"doc {esc(ex.document_id)}"
    if ex.source and ex.source != ex.document_id:
        where += f" · source {esc(ex.source)}"
    return (
        f'<details class="sx-ex"><summary><span class="sx-v">{num(ex.max_activation)}</span>'
        f'<span class="sx-c">{before}{_tokens(ex, vocab, scale, lo, hi)}{after}</span></summary>'
        f'<div class="sx-src">{where} · context {ex.context_id} · max at token '
        f"{ex.max_token_index}</div></details>"
    )


def _outside(tokens: str, before: bool) -> str:
    if not tokens:
        return ""
    hidden, dots = f'<span class="o">{tokens}</span>', '<b class="x">…</b>'
    return hidden + dots if before else dots + hidden


def examples_html(
    examples: Sequence[Example], vocab: Sequence[str], scale: float, window: int, first: int
) -> str:
    if not examples:
        return '<p class="sx-none">No examples: the feature never fired on the corpus.</p>'
    body = "".join(example_html(ex, vocab, scale, window, first) for ex in examples)
    return f'<div class="sx-exs">{body}</div>'


def interval_html(
    sample: IntervalSample, vocab: Sequence[str], scale: float, window: int, first: int
) -> str:
    """One "INTERVAL a-b CONTAINS x%" section, as SAEDashboard titles them."""
    title = f"INTERVAL {num(sample.low)} - {num(sample.high)} CONTAINS {100 * sample.fraction:.3g}%"
    body = (
        examples_html(sample.examples, vocab, scale, window, first)
        if sample.examples
        else '<p class="sx-none">No activations in this interval.</p>'
    )
    return f'<h3 class="sx-int">{title}</h3>{body}'


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], css: str = "") -> str:
    """A class-less table (so the theme styles it) in a wrapper carrying `css`."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="sx-table {css}"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def logit_table(title: str, entries: Sequence[LogitEntry]) -> str:
    rows = [(f"<code>{token_html(e.token)}</code>", f"{e.value:+.3f}") for e in entries]
    return table((title, "Logit"), rows or [("–", "")], "sx-logits")


def neighbours_table(neighbours: Sequence[Neighbour], href: str) -> str:
    """Nearest features by decoder cosine; `href` is a format string taking the index."""
    rows = [
        (f'<a href="{href.format(n.index)}">#{n.index}</a>', f"{n.cosine:.3f}") for n in neighbours
    ]
    return table(("Neighbour", "Cosine"), rows or [("–", "")], "sx-nbrs")
