"""The documents of the site: its home, each SAE's home and listings, and feature block pages.

Layout (every link relative, so file://, any sub-path and any static host work):
    index.html                          the site: every SAE, search across them
    <sae>/index.html                    one SAE: facts, quality, density plot, search
    <sae>/list/<order>-<n>.html         listings by index, density, max activation
    <sae>/features/<block>.html#f<i>    features i of a block of `per_page`, one shown at a time
    data/vocab-<model>.js, data/<sae>/ctx-<k>.js, data/<sae>/terms-<k>.js   shared data
Markdown documents are a short head, then the hook's marker, then pre-rendered HTML that
Python-Markdown never parses (see hooks.py). Feature blocks are not MkDocs pages: the hook
stamps each block's HTML into the theme's page shell (`_shell.md`) after the build.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

from saedex.data import SaeInfo
from saedex.site import svg
from saedex.site.render import PageSettings, esc, inline, num, plain_token, script_json, table

MARKER = "<!-- saedex:html -->"  # the same string as hooks.MARKER
TITLE = "SAEDEX_TITLE_SLOT"  # the same string as hooks.TITLE
SHELL = "_shell"
DENSE = 0.1  # a feature firing on at least this fraction of tokens counts as dense
TOP_TOKENS = 6
DATA = "data/"


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
    """What the listings, the home page and search need of one feature (from the workers)."""

    index: int
    n_active: int
    density: float
    max_activation: float
    top_tokens: tuple[str, ...]
    top_logits: tuple[str, ...]
    explanations: tuple[str, ...] = ()

    def key(self, order: Order) -> float:
        return {"index": self.index, "density": self.density}.get(order.slug, self.max_activation)


@dataclass(frozen=True)
class SaeEntry:
    """One SAE of the site: its folder key, its record and what the home page lists."""

    key: str
    info: SaeInfo
    l0: float | None  # mean active features per token over the indexed corpus
    quality: dict  # the SAE's own report (fve, ce_loss_recovered, ...) where one was found
    search_shards: int = 1

    @property
    def title(self) -> str:
        return f"{self.info.id}"


def sae_keys(ids: Sequence[str]) -> dict[str, str]:
    """A folder name per SAE id: readable, safe in a URL, distinct."""
    keys: dict[str, str] = {}
    for sae_id in ids:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", sae_id).strip(".-") or "sae"
        key, n = base, 1
        while key in keys.values() or key in {"data", "assets", "search"}:
            n += 1
            key = f"{base}-{n}"
        keys[sae_id] = key
    return keys


def public_name(path: str) -> str:
    """A path as a published page may show it: no absolute local path, only its last parts."""
    p = PurePosixPath(path.replace("\\", "/"))
    if p.is_absolute() or path.startswith(("~", "./", "../")) or re.match(r"^[A-Za-z]:/", str(p)):
        return p.name
    return path


def block_of(index: int, per_page: int) -> int:
    return index // per_page


def block_doc(key: str, block: int) -> str:
    return f"{key}/features/{block}.html"


def listing_doc(key: str, order: Order, page: int) -> str:
    return f"{key}/list/{order.slug}-{page}.md"


def _front(title: str, extra: str = "") -> str:
    return f"---\ntitle: {title}\n{extra}---\n\n"


def _document(front: str, head: str, html: str) -> str:
    return f"{front}{head}\n\n{MARKER}\n{html}\n"


_HIDE = "hide:\n  - navigation\n  - toc\n"


def _html(doc: str) -> str:
    return doc.removesuffix(".md") + ".html"


def _token_list(tokens: Sequence[str]) -> str:
    return " · ".join(f"<code>{plain_token(t)}</code>" for t in tokens[:TOP_TOKENS]) or "–"


# -- search ------------------------------------------------------------------------------------


def search_form(entries: Sequence[SaeEntry], root: str, per_page: int) -> str:
    """The find-a-feature box: index, whole tokens, explanation words (assets/dashboard.js)."""
    cfg = {
        "root": root,
        "data": DATA,
        "per_page": per_page,
        "saes": [
            {"key": e.key, "title": e.title, "d_sae": e.info.d_sae, "shards": e.search_shards}
            for e in entries
        ],
    }
    return (
        f"<form class=\"sx-search\" data-search='{esc(script_json(cfg))}'>"
        '<input type="search" placeholder="Find a feature: 42, a token it fires on or promotes'
        ', a word" aria-label="Find a feature"><ol class="sx-results"></ol>'
        "<noscript><p>Search needs JavaScript; the listings work without it.</p></noscript>"
        "</form>"
    )


# -- feature blocks ----------------------------------------------------------------------------


def block_fragment(
    settings: PageSettings, features: Sequence[dict], sections: Sequence[str], state: dict
) -> str:
    """A block page's title line and body: each feature's fallback in a `section` (CSS shows
    the one the URL names), then the block's data for the script."""
    lo, hi = features[0]["i"], features[-1]["i"]
    title = esc(f"Features {lo}–{hi} · {settings.title}")
    body = "".join(
        f'<section class="sx-f" id="f{f["i"]}">{html}</section>'
        for f, html in zip(features, sections, strict=True)
    )
    data = {**state, "page": asdict(settings), "features": list(features)}
    return (
        f'{title}\n<div class="sx-block">{body}</div>'
        f'<script type="application/json" id="sx-data">{script_json(data)}</script>\n'
    )


def shell_page(entries: Sequence[SaeEntry], entry: SaeEntry, per_page: int) -> str:
    """The page the hook stamps each block into (the theme around it, a search box on top)."""
    head = f'<h1 class="sx-h">{TITLE}</h1>'
    return _document(
        _front(TITLE, _HIDE + "search:\n  exclude: true\n"),
        head,
        search_form([entry], "../../", per_page) + '<div class="sx-slot"></div>',
    )


def feature_row(feature: dict, fires: Sequence[str], promotes: Sequence[str]) -> FeatureRow:
    return FeatureRow(
        feature["i"],
        feature["n"],
        feature["d"],
        feature["mx"] or 0.0,
        tuple(fires[:TOP_TOKENS]),
        tuple(promotes[:TOP_TOKENS]),
        tuple(x[0] for x in feature["xp"]),
    )


# -- listings ----------------------------------------------------------------------------------


def listing_pages(
    entry: SaeEntry, rows: Sequence[FeatureRow], per_page: int, block: int
) -> Iterator[tuple[str, str]]:
    """(document path, Markdown) of every page of every ordering of one SAE."""
    n_pages = max(1, math.ceil(len(rows) / per_page))
    for order in ORDERS:
        ordered = sorted(
            rows, key=lambda r: (-r.key(order) if order.descending else r.key(order), r.index)
        )
        for page in range(1, n_pages + 1):
            chunk = ordered[(page - 1) * per_page : page * per_page]
            yield (
                listing_doc(entry.key, order, page),
                _listing(entry, order, page, n_pages, chunk, block),
            )


def _listing(
    entry: SaeEntry, order: Order, page: int, n_pages: int, rows: Sequence[FeatureRow], block: int
) -> str:
    title = f"Features {order.title}" + (f" ({page} of {n_pages})" if n_pages > 1 else "")
    explained = any(r.explanations for r in rows)
    headers = ("Feature", "Density", "Max act.", "Fires most on", "Promotes")
    body = table(
        headers + (("Explanation",) if explained else ()),
        [
            (
                f'<a id="f{r.index}" href="../features/{block_of(r.index, block)}.html#f{r.index}">'
                f"#{r.index}</a>",
                f"{100 * r.density:.3g}%" if r.n_active else "dead",
                num(r.max_activation),
                _token_list(r.top_tokens),
                _token_list(r.top_logits),
            )
            + ((inline(r.explanations[0]) if r.explanations else "",) if explained else ())
            for r in rows
        ],
        "sx-list",
    )
    nav = _listing_nav(entry, order, page, n_pages)
    return _document(
        _front(f"{title} · {inline(entry.title)}", _HIDE + "search:\n  exclude: true\n"),
        f"# {title}",
        search_form([entry], "../../", block) + nav + body + nav,
    )


def _listing_nav(entry: SaeEntry, order: Order, page: int, n_pages: int) -> str:
    orders = " · ".join(
        f"<strong>{o.title}</strong>" if o == order else f'<a href="{o.slug}-1.html">{o.title}</a>'
        for o in ORDERS
    )
    pages = " ".join(
        f"<strong>{p}</strong>" if p == page else f'<a href="{order.slug}-{p}.html">{p}</a>'
        for p in range(1, n_pages + 1)
    )
    return (
        f'<p class="sx-pages"><a href="../index.html">{esc(entry.title)}</a> · Sort {orders}'
        f"<br>Page {pages}</p>"
    )


# -- an SAE's home, and the site's -------------------------------------------------------------


def _quality(entry: SaeEntry, dead: int, d_sae: int) -> str:
    """What is known of how good the SAE is: the index's own L0 and dead share, and its
    training report's numbers where the SAE came with one."""
    q = entry.quality
    parts = []
    if entry.l0 is not None:
        parts.append(f"L0 {entry.l0:.3g}")
    parts.append(f"dead {100 * dead / max(1, d_sae):.3g}%")
    if "fve" in q:
        parts.append(f"FVE {q['fve']:.3g}")
    if "ce_loss_recovered" in q:
        parts.append(f"CE loss recovered {q['ce_loss_recovered']:.3g}")
    return ", ".join(parts)


def _dead(rows: Sequence[FeatureRow]) -> int:
    return sum(1 for r in rows if r.n_active == 0)


def sae_home(
    entries: Sequence[SaeEntry], entry: SaeEntry, rows: Sequence[FeatureRow], guide: str, per: int
) -> str:
    """One SAE: model, hook, corpus and token counts, quality, the density plot, search."""
    info = entry.info
    dead, dense = _dead(rows), sum(1 for r in rows if r.density >= DENSE)
    facts = [
        ("SAE", esc(info.id)),
        ("Architecture", f"{esc(info.architecture)}, d_in {info.d_in:,}, d_sae {info.d_sae:,}"),
        ("Model", esc(public_name(info.model_name))),
        ("Hook", f"<code>{esc(info.hook_name)}</code>"),
        ("Corpus", esc(public_name(info.corpus))),
        (
            "Tokens",
            f"{info.n_tokens:,} in {info.n_contexts:,} contexts of up to {info.context_size} "
            f"from {info.n_documents:,} documents ({info.n_excluded_tokens:,} excluded)",
        ),
        ("Quality", esc(_quality(entry, dead, info.d_sae))),
        ("Dead features", f"{dead:,} ({100 * dead / max(1, len(rows)):.3g}%): never fired"),
        ("Dense features", f"{dense:,}: fire on ≥ {100 * DENSE:g}% of tokens"),
    ]
    links = " · ".join(f'<a href="list/{o.slug}-1.html">{o.title}</a>' for o in ORDERS)
    others = [e for e in entries if e.key != entry.key]
    also = (
        '<p class="sx-pages">Other SAEs in this site: '
        + " · ".join(f'<a href="../{e.key}/index.html">{esc(e.title)}</a>' for e in others)
        + "</p>"
        if others
        else ""
    )
    html = (
        search_form([entry], "../", per)
        + table(("", ""), facts, "sx-facts")
        + f'<p class="sx-pages">Browse the features {links}.</p>'
        + f'<div class="sx-row">{svg.density_svg([r.density for r in rows])}</div>'
        + also
        + guide
    )
    head = f"# {inline(info.id)}\n\nFeatures of an SAE on {inline(public_name(info.model_name))}."
    return _document(_front(inline(info.id), _HIDE), head, html)


def site_home(entries: Sequence[SaeEntry], dead: dict[str, int], per_page: int) -> str:
    """Every SAE of the site with its model, hook, width and quality; search across them."""
    rows = [
        (
            f'<a href="{e.key}/index.html">{esc(e.title)}</a>',
            esc(public_name(e.info.model_name)),
            f"<code>{esc(e.info.hook_name)}</code>",
            f"{e.info.d_sae:,}",
            f"{e.info.n_tokens:,}",
            esc(_quality(e, dead[e.key], e.info.d_sae)),
        )
        for e in entries
    ]
    html = search_form(entries, "", per_page) + table(
        ("SAE", "Model", "Hook", "Width", "Tokens indexed", "Quality"), rows, "sx-saes"
    )
    n = len(entries)
    head = f"# Feature index\n\n{n} SAE{'s' * (n != 1)}: pick one, or search all of them."
    return _document(_front("Home", _HIDE), head, html)
