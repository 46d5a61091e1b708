"""The Markdown documents of the site: home, paginated feature listings and one page per feature.

Each document is a short head that Markdown and the search plugin read (title, top tokens, a
compact text of the top examples), then the hook's marker, then pre-rendered HTML that neither
of them sees (see hooks.py). Links are relative, so the site works from file:// and under any
sub-path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from saedex.data import Example, FeatureData, SaeInfo
from saedex.site import render, svg
from saedex.site.render import esc, inline, num, plain_token

MARKER = "<!-- saedex:html -->"  # the same string as hooks.MARKER
DENSE = 0.1  # a feature firing on at least this fraction of tokens counts as dense
SEARCH_EXAMPLES, SEARCH_WINDOW = 3, 4  # compact search text: a few tokens around 3 maxima
TOP_TOKENS = 6


@dataclass(frozen=True)
class Order:
    """One ordering of the feature listing."""

    slug: str
    title: str
    descending: bool


ORDERS = (
    Order("index", "by index", False),
    Order("density", "by density", True),
    Order("max-activation", "by max activation", True),
)


@dataclass(frozen=True)
class FeatureRow:
    """What the listings and the home page need of one feature (returned by the workers)."""

    index: int
    n_active: int
    density: float
    max_activation: float
    top_tokens: tuple[str, ...]
    top_logits: tuple[str, ...]

    def key(self, order: Order) -> float:
        return {"index": self.index, "density": self.density}.get(order.slug, self.max_activation)


@dataclass(frozen=True)
class PageContext:
    """Per-SAE settings every feature page shares (built once per worker)."""

    vocab_html: Sequence[str]
    first_token: int  # 1 skips a prepended BOS in examples
    n_tokens: int
    d_sae: int
    per_page: int
    examples_shown: int
    window: int


def feature_doc(index: int) -> str:
    return f"features/{index}.md"


def listing_doc(order: Order, page: int) -> str:
    return f"list/{order.slug}-{page}.md"


def _front(title: str, extra: str = "") -> str:
    return f"---\ntitle: {title}\n{extra}---\n\n"


def _document(front: str, head: str, html: str) -> str:
    return f"{front}{head}\n\n{MARKER}\n{html}\n"


# -- feature pages -----------------------------------------------------------------------------


def feature_row(data: FeatureData) -> FeatureRow:
    s = data.summary
    return FeatureRow(
        s.index,
        s.n_active,
        s.density,
        s.max_activation,
        top_tokens(data.top_examples),
        tuple(e.token for e in s.top_logits[:TOP_TOKENS]),
    )


def top_tokens(examples: Sequence[Example], limit: int = TOP_TOKENS) -> tuple[str, ...]:
    """The distinct tokens the top examples peak on, strongest first."""
    seen: dict[str, None] = {}
    for ex in examples:
        seen.setdefault(ex.tokens[ex.max_token_index], None)
    return tuple(seen)[:limit]


def _token_list(tokens: Sequence[str]) -> str:
    return " · ".join(f"<code>{plain_token(t)}</code>" for t in tokens) or "–"


def _snippet(ex: Example, first: int) -> str:
    lo = max(first, ex.max_token_index - SEARCH_WINDOW)
    return inline("".join(ex.tokens[lo : ex.max_token_index + SEARCH_WINDOW + 1]))


def feature_head(data: FeatureData, ctx: PageContext) -> str:
    """The searchable head: index (title), top tokens, top logits, compact example text."""
    s = data.summary
    snippets = " … ".join(
        _snippet(ex, ctx.first_token) for ex in data.top_examples[:SEARCH_EXAMPLES]
    )
    return (
        f"# Feature {s.index}\n\n"
        f'<div class="sx-lead"><p><strong>Fires most on</strong> '
        f"{_token_list(top_tokens(data.top_examples))}</p>"
        f"<p><strong>Promotes</strong> {_token_list([e.token for e in s.top_logits[:TOP_TOKENS]])}</p>"
        f'<p class="sx-hide">{snippets}</p></div>'
    )


def feature_html(data: FeatureData, ctx: PageContext) -> str:
    """The dashboard body: stats, histograms, logits, neighbours, top and interval examples."""
    s = data.summary
    scale = s.max_activation
    shown = data.top_examples[: ctx.examples_shown]
    examples = render.examples_html(shown, ctx.vocab_html, scale, ctx.window, ctx.first_token)
    intervals = "".join(
        render.interval_html(i, ctx.vocab_html, scale, ctx.window, ctx.first_token)
        for i in data.interval_samples
    )
    return (
        _feature_nav(s.index, ctx)
        + '<div class="sx-row">'
        + _stats_table(data, ctx)
        + svg.activation_svg(data.histogram)
        + svg.logit_svg(data.logit_histogram)
        + '</div><div class="sx-row">'
        + render.logit_table("Promoted tokens", s.top_logits)
        + render.logit_table("Suppressed tokens", data.bottom_logits)
        + render.neighbours_table(data.neighbours, "{}.html")
        + "</div>"
        + f'<h2 id="top">Top activations</h2><p class="sx-note">The {len(shown)} contexts where '
        f"the feature peaks highest. Each shows {ctx.window} tokens either side of its max "
        "token; click one to see its whole context. Shading is relative to the feature's max "
        f"activation ({num(scale)}); hover a token for its value.</p>{examples}"
        + '<h2 id="intervals">Activation intervals</h2><p class="sx-note">Random samples from '
        "equal-width intervals of [0, max activation], highest first (as SAEDashboard); "
        "CONTAINS is the share of the feature's non-zero activations in the interval.</p>"
        + (intervals or '<p class="sx-none">No intervals.</p>')
    )


def _feature_nav(index: int, ctx: PageContext) -> str:
    page = index // ctx.per_page + 1
    links = [f'<a href="../{_html(listing_doc(ORDERS[0], page))}#f{index}">↑ All features</a>']
    if index > 0:
        links.append(f'<a href="{index - 1}.html">‹ #{index - 1}</a>')
    if index + 1 < ctx.d_sae:
        links.append(f'<a href="{index + 1}.html">#{index + 1} ›</a>')
    return f'<p class="sx-nav">{" · ".join(links)}</p>'


def _stats_table(data: FeatureData, ctx: PageContext) -> str:
    s = data.summary
    rows = [
        ("Density", f"{100 * s.density:.3g}%"),
        ("Active tokens", f"{s.n_active:,} of {ctx.n_tokens:,}"),
        ("Max activation", num(s.max_activation)),
        ("Mean (when active)", num(s.mean_activation)),
        ("Skew", num(s.skew)),
        ("Kurtosis", num(s.kurtosis)),
    ]
    return render.table(("Statistic", "Value"), rows, "sx-stats")


def feature_page(data: FeatureData, ctx: PageContext) -> str:
    return _document(
        _front(f"Feature {data.summary.index}", "hide:\n  - navigation\n  - toc\n"),
        feature_head(data, ctx),
        feature_html(data, ctx),
    )


# -- listings ----------------------------------------------------------------------------------


def _html(doc: str) -> str:
    return doc.removesuffix(".md") + ".html"


def listing_pages(rows: Sequence[FeatureRow], per_page: int) -> Iterator[tuple[str, str]]:
    """(document path, Markdown) of every page of every ordering."""
    n_pages = max(1, math.ceil(len(rows) / per_page))
    for order in ORDERS:
        ordered = sorted(
            rows, key=lambda r: (-r.key(order) if order.descending else r.key(order), r.index)
        )
        for page in range(1, n_pages + 1):
            chunk = ordered[(page - 1) * per_page : page * per_page]
            yield listing_doc(order, page), _listing(order, page, n_pages, chunk)


def _listing(order: Order, page: int, n_pages: int, rows: Sequence[FeatureRow]) -> str:
    title = f"Features {order.title}" + (f" ({page} of {n_pages})" if n_pages > 1 else "")
    body = render.table(
        ("Feature", "Density", "Max act.", "Fires most on", "Promotes"),
        [
            (
                f'<a id="f{r.index}" href="../{_html(feature_doc(r.index))}">#{r.index}</a>',
                f"{100 * r.density:.3g}%" if r.n_active else "dead",
                num(r.max_activation),
                _token_list(r.top_tokens),
                _token_list(r.top_logits),
            )
            for r in rows
        ],
        "sx-list",
    )
    nav = _listing_nav(order, page, n_pages)
    return _document(
        _front(title, "hide:\n  - navigation\n  - toc\nsearch:\n  exclude: true\n"),
        f"# {title}",
        nav + body + nav,
    )


def _listing_nav(order: Order, page: int, n_pages: int) -> str:
    orders = " · ".join(
        f"<strong>{o.title}</strong>" if o == order else f'<a href="{o.slug}-1.html">{o.title}</a>'
        for o in ORDERS
    )
    pages = " ".join(
        f"<strong>{p}</strong>" if p == page else f'<a href="{order.slug}-{p}.html">{p}</a>'
        for p in range(1, n_pages + 1)
    )
    return f'<p class="sx-pages">Sort {orders}<br>Page {pages}</p>'


# -- home --------------------------------------------------------------------------------------


def home_page(info: SaeInfo, rows: Sequence[FeatureRow], guide: str) -> str:
    """The SAE and model, corpus and token counts, the density plot and `guide` (HTML: how to
    read a feature page)."""
    dead = sum(1 for r in rows if r.n_active == 0)
    dense = sum(1 for r in rows if r.density >= DENSE)
    facts = [
        ("SAE", esc(info.id)),
        ("Architecture", f"{esc(info.architecture)}, d_in {info.d_in:,}, d_sae {info.d_sae:,}"),
        ("Model", esc(info.model_name)),
        ("Hook", f"<code>{esc(info.hook_name)}</code>"),
        ("Corpus", esc(info.corpus)),
        (
            "Tokens",
            f"{info.n_tokens:,} in {info.n_contexts:,} contexts of up to {info.context_size} "
            f"from {info.n_documents:,} documents ({info.n_excluded_tokens:,} excluded)",
        ),
        ("Dead features", f"{dead:,} ({100 * dead / max(1, len(rows)):.3g}%): never fired"),
        ("Dense features", f"{dense:,}: fire on ≥ {100 * DENSE:g}% of tokens"),
    ]
    links = " · ".join(f'<a href="{_html(listing_doc(o, 1))}">{o.title}</a>' for o in ORDERS)
    html = (
        render.table(("", ""), facts, "sx-facts")
        + f'<p class="sx-pages">Browse the features {links}.</p>'
        + f'<div class="sx-row">{svg.density_svg([r.density for r in rows])}</div>'
        + guide
    )
    head = f"# {inline(info.id)}\n\nFeatures of an SAE on {inline(info.model_name)}."
    return _document(_front("Home"), head, html)
