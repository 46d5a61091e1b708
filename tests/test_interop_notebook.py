"""Records inline in Jupyter: `_repr_html_` is the site's dashboard, escaped the site's way."""

from __future__ import annotations

from saedex.site.render import esc
from saedex.store import IndexReader
from tests import test_site
from tests.test_site import HOSTILE, HOSTILE_SAE, TagCollector, _busiest_feature

hostile_db = test_site.hostile_db  # the site tests' hostile corpus, indexed (a fixture)

ALLOWED_TAGS = {
    "style", "div", "h1", "h2", "h3", "p", "strong", "code", "table", "thead", "tbody", "tr",
    "th", "td", "a", "details", "summary", "span", "mark", "b", "i", "svg", "g", "rect", "line",
    "text", "title", "path", "script", "section", "ul", "ol", "li", "em",
}  # fmt: skip


def _check_inert(html: str) -> TagCollector:
    collector = TagCollector()
    collector.feed(html)
    tags = {t for t, _ in collector.tags}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    for _, attrs in collector.tags:
        assert not any(name.startswith("on") for name in attrs), attrs
        assert not attrs.get("href", "").startswith(("http", "javascript"))
    assert "{{" not in html and "{%" not in html
    return collector


def test_feature_repr_html_is_the_escaped_dashboard(hostile_db):
    index = _busiest_feature(hostile_db, HOSTILE_SAE)
    with IndexReader(hostile_db) as reader:
        data = reader.feature(HOSTILE_SAE, index)
    html = data._repr_html_()
    _check_inert(html)
    collector = TagCollector()
    collector.feed(html)
    assert "pwned" not in collector.script_text and "<script>alert" not in html


def test_example_repr_html_is_escaped(hostile_db):
    index = _busiest_feature(hostile_db, HOSTILE_SAE)
    with IndexReader(hostile_db) as reader:
        examples = reader.top_examples(HOSTILE_SAE, [index])[index]
    assert HOSTILE  # the corpus the examples come from
    for ex in examples:
        html = ex._repr_html_()
        _check_inert(html)
        assert esc(ex.document_id) in html
