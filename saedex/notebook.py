"""Records shown inline in Jupyter: a FeatureData renders as the site's feature dashboard, an
Example as the site's example row (`_repr_html_` in saedex.data calls these).

The HTML is the static site's own (saedex.site.pages / saedex.site.render), so every string
from the index goes through the site's one escaping path (`render.esc`); this module only
supplies what a page would get from its SAE (a vocabulary, the page settings) and the site's
stylesheet, scoped to the output cell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from importlib import resources

from saedex.config import SiteConfig
from saedex.data import Example, FeatureData

_WRAP = "saedex-nb"
_NAV = re.compile(r'<p class="sx-nav">.*?</p>')
# The Material theme variables the site's stylesheet reads, for a page without the theme.
_THEME = (
    f".{_WRAP} {{ --md-default-fg-color: rgba(0,0,0,.87); "
    "--md-default-fg-color--light: rgba(0,0,0,.54); --md-code-bg-color: #f5f5f5; "
    "font-size: 16px; line-height: 1.5; }"
)


@cache
def _stylesheet() -> str:
    """The site's CSS with every rule scoped to the notebook output."""
    css = resources.files("saedex.site").joinpath("templates/assets/saedex.css").read_text()
    css = re.sub(r":root\s*\{", f".{_WRAP} {{", css)
    return f"<style>{_THEME}\n{css}</style>"


def _vocab_html(examples: Iterable[Example]) -> dict[int, str]:
    """id -> escaped token text, for the ids these examples hold (the site escapes the whole
    vocabulary once per SAE; a notebook shows one feature)."""
    from saedex.site.render import token_html

    vocab: dict[int, str] = {}
    for ex in examples:
        for token_id, token in zip(ex.token_ids, ex.tokens, strict=True):
            if token_id not in vocab:
                vocab[token_id] = token_html(token)
    return vocab


def _wrap(body: str) -> str:
    return f'{_stylesheet()}<div class="{_WRAP} md-typeset">{body}</div>'


def feature_html(data: FeatureData, config: SiteConfig | None = None) -> str:
    """The feature's dashboard, as its page on the static site shows it."""
    from saedex.site.pages import PageContext, feature_head
    from saedex.site.pages import feature_html as page_body

    cfg = config or SiteConfig()
    s = data.summary
    examples = [*data.top_examples, *(e for i in data.interval_samples for e in i.examples)]
    n_tokens = round(s.n_active / s.density) if s.density > 0 else s.n_active
    ctx = PageContext(
        vocab_html=_vocab_html(examples),
        first_token=0,
        n_tokens=n_tokens,
        d_sae=s.index + 1,  # no "next feature" link: a notebook has no pages to link to
        per_page=cfg.features_per_index_page,
        examples_shown=cfg.examples_shown,
        window=cfg.window,
    )
    lead = feature_head(data, ctx).split("\n\n", 1)[1]  # the head without its Markdown title
    body = _NAV.sub("", page_body(data, ctx), count=1)  # links to listing pages a cell lacks
    return _wrap(f"<h1>Feature {int(s.index)}</h1>{lead}{body}")


def example_html(ex: Example, config: SiteConfig | None = None) -> str:
    """One example as a row of the site's example list (shading relative to its own max)."""
    from saedex.site.render import examples_html

    cfg = config or SiteConfig()
    body = examples_html([ex], _vocab_html([ex]), ex.max_activation, cfg.window, 0)
    return _wrap(body)
