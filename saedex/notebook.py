"""Records shown inline in Jupyter (`_repr_html_` in saedex.data calls these).

A FeatureData renders as the site's own dashboard: `saedex.site.render.feature_html`, the one
renderer the static site uses (its data, script and stylesheet inline, nothing fetched), so
every string from the index goes through the site's escaping. An Example renders as its
tokens with the active ones marked, escaped by the site's `token_html`.
"""

from __future__ import annotations

from saedex.data import Example, FeatureData


def feature_html(data: FeatureData) -> str:
    """The feature's dashboard, as its page on the static site shows it."""
    from saedex.site.render import feature_html as site_feature_html

    s = data.summary
    n_tokens = round(s.n_active / s.density) if s.density > 0 else s.n_active
    return site_feature_html(data, n_tokens=n_tokens, first_token=0)


def example_html(ex: Example) -> str:
    """One example: its tokens, the active ones marked with their value (hover)."""
    from saedex.site.render import esc, num, token_html

    parts = []
    for token, value in zip(ex.tokens, ex.activations, strict=True):
        text = token_html(token)
        parts.append(f'<mark title="{num(value)}">{text}</mark>' if value > 0 else text)
    where = f"doc {esc(ex.document_id)} · source {esc(ex.source)} · max {num(ex.max_activation)}"
    return f'<div class="sx-ex"><div>{where}</div><code>{"".join(parts)}</code></div>'
