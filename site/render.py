"""The one feature renderer's Python side, and the escaping every page goes through.

A dashboard is drawn by assets/dashboard.js from compact data (payload.py), on the site and in a
notebook alike. Python writes only what must work without scripts: a feature's statistics, its
header and its top examples' text (`fallback_html`), and the data itself (`script_json`).

Escaping lives here: every string from the index (tokens, document ids, sources, explanations)
reaching HTML goes through `esc`, which makes it inert both as HTML and as Markdown, so a fragment
is safe wherever it lands; data inside a page goes through `script_json`; and the script sets
strings as text only (DOM text nodes), never as markup.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources

from saedex.data import FeatureData
from saedex.site import payload

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


@functools.lru_cache(maxsize=1 << 17)  # a vocabulary's worth: pages repeat the same tokens
def token_html(token: str) -> str:
    """A token's escaped text with whitespace runs shown as faint ␣ / ↵ / ⇥ markers."""
    if not token:
        return "<i>\u2205</i>"
    return _WHITESPACE.sub(lambda m: f"<i>{_marker(m.group())}</i>", esc(token))


@functools.lru_cache(maxsize=1 << 17)
def plain_token(token: str) -> str:
    """A token as escaped text on one line, whitespace as plain markers (search, tables)."""
    return esc(_WHITESPACE.sub(lambda m: _marker(m.group()), token)) if token else "\u2205"


def inline(text: str) -> str:
    """Escaped text on one line: inside Markdown, a newline could start a block (a setext
    heading, an indented code block) even with every character escaped."""
    return esc(" ".join(text.split()))


def num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], css: str = "") -> str:
    """A class-less table (so the theme styles it) in a wrapper carrying `css`."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="sx-table {css}"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def script_json(data) -> str:
    """JSON for a `<script type="application/json">`: no `<` survives, so neither `</script>`
    nor `<!--` can end or bend the element, whatever the strings hold."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


@dataclass(frozen=True)
class PageSettings:
    """What the renderer needs besides a feature's data (handed to the script as JSON too)."""

    sae: str  # the SAE's key in the site (its folder), or "" in a notebook
    title: str  # the SAE as people name it
    first: int  # 1 skips the BOS every context starts with
    window: int  # tokens either side of an example's max token before it is opened
    shown: int  # top examples shown
    n_tokens: int
    d_sae: int
    per_page: int  # features per block page (the site's links are computed from it)
    list_per_page: int  # rows per listing page
    doc_window: int = 0  # document tokens either side of a top example's max token (0: none)


Context = tuple[int, str, str, Sequence[int]]  # context id, document, source, token ids


def top_token_ids(feature: dict, context: Callable[[int], Context]) -> list[int]:
    """The distinct tokens the top examples peak on, strongest first."""
    seen: dict[int, None] = {}
    for ref, max_pos, *_ in feature["ex"]:
        seen.setdefault(context(ref)[3][max_pos], None)
    return list(seen)


def _token_list(tokens: Sequence[str], limit: int = 6) -> str:
    return " · ".join(f"<code>{plain_token(t)}</code>" for t in tokens[:limit]) or "–"


def _window(ex: list, context: Callable[[int], Context], vocab, page: PageSettings) -> str:
    ref, max_pos, max_act, *_ = ex
    ids = context(ref)[3]
    lo, hi = max(page.first, max_pos - page.window), min(len(ids), max_pos + page.window + 1)
    text = "".join(
        f"<b>{token_html(vocab(t))}</b>" if p == max_pos else token_html(vocab(t))
        for p, t in enumerate(ids[lo:hi], lo)
    )
    dots = ("…" if lo > page.first else "", "…" if hi < len(ids) else "")
    return f'<li><span class="sx-v">{num(max_act)}</span> {dots[0]}{text}{dots[1]}</li>'


def fallback_html(
    feature: dict,
    context: Callable[[int], Context],
    vocab: Callable[[int], str],
    page: PageSettings,
) -> str:
    """What a feature shows without scripts: header, explanations, statistics, top examples'
    text. The script replaces it with the whole dashboard."""
    f = feature
    fires = [vocab(t) for t in top_token_ids(f, context)]
    explanations = "".join(f"<li>{inline(x[0])}</li>" for x in f["xp"])
    stats = [
        ("Density", f"{100 * f['d']:.3g}%"),
        ("Active tokens", f"{f['n']:,}" + (f" of {page.n_tokens:,}" if page.n_tokens else "")),
        ("Max activation", num(f["mx"])),
        ("Mean (when active)", num(f["mu"])),
        ("Skew", num(f["sk"])),
        ("Kurtosis", num(f["ku"])),
    ]
    examples = "".join(_window(ex, context, vocab, page) for ex in f["ex"][: page.shown])
    return (
        f"<h1>Feature {f['i']}</h1>"
        + (f'<ul class="sx-xp">{explanations}</ul>' if explanations else "")
        + f'<div class="sx-lead"><p><strong>Fires most on</strong> {_token_list(fires)}</p>'
        f"<p><strong>Promotes</strong> {_token_list([vocab(t) for t, _ in f['tl']])}</p></div>"
        + table(("Statistic", "Value"), stats, "sx-stats")
        + '<h2>Top activations</h2><p class="sx-note">Histograms, shading, logit tables, '
        "neighbours and intervals need JavaScript; this is the text around each peak.</p>"
        + (f'<ol class="sx-fb">{examples}</ol>' if examples else "<p>Never fired.</p>")
    )


# -- a notebook cell ---------------------------------------------------------------------------


def asset(name: str) -> str:
    """A vendored asset's text (the dashboard script and its stylesheet)."""
    return resources.files("saedex.site").joinpath("templates", "assets", name).read_text("utf-8")


def feature_html(
    data: FeatureData,
    n_tokens: int = 0,
    first_token: int = 1,
    window: int = 10,
    shown: int = 20,
) -> str:
    """One feature's whole dashboard as a self-contained HTML fragment (data, script and style
    inline, nothing fetched): what a notebook's `_repr_html_` returns. Without scripts it shows
    `fallback_html`."""
    feature, contexts, vocab = payload.from_feature(data)
    page = PageSettings("", data.summary.sae_id, first_token, window, shown, n_tokens, 0, 1, 1)
    body = fallback_html(feature, contexts.__getitem__, vocab.get, page)
    state = {"page": asdict(page), "features": [feature], "contexts": contexts, "vocab": vocab}
    return (
        f'<div class="sx-cell md-typeset"><style>{asset("saedex.css")}</style>'
        f'<section class="sx-f" data-i="{feature["i"]}">{body}</section>'
        f'<script type="application/json">{script_json(state)}</script>'
        f"<script>{asset('dashboard.js')}</script></div>"
    )
