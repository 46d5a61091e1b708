"""The MkDocs hook of an exported site (copied next to its mkdocs.yml; standard library only).

A page's Markdown holds a short, searchable head, then MARKER, then HTML the exporter already
rendered and escaped. Python-Markdown and the search plugin only ever see the head; the HTML is
read back from the source file and put in place of the marker after the theme rendered the page.
That keeps the build fast (Markdown parsing thousands of token spans is the big cost), the
search index compact, and memory flat (no page keeps its HTML between events).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority

MARKER = "<!-- saedex:html -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Hand Markdown only the head; the marker stays as a raw-HTML comment."""
    head, found, _ = markdown.partition(MARKER)
    return head + "\n\n" + MARKER + "\n" if found else markdown


def on_post_page(output: str, page, config) -> str:
    """Swap the marker for the page's pre-rendered HTML, read afresh from its source file."""
    if MARKER not in output:
        return output
    source = Path(page.file.abs_src_path).read_text(encoding="utf-8")
    return output.replace(MARKER, source.partition(MARKER)[2], 1)


@event_priority(-100)  # after the search plugin wrote its index
def on_post_build(config) -> None:
    write_search_script(Path(config.site_dir))


def write_search_script(site_dir: Path) -> None:
    """Inline the search index into a script, so search also works from file:// (no fetch)."""
    index = site_dir / "search" / "search_index.json"
    if index.is_file():
        data = index.read_text(encoding="utf-8")
        (index.parent / "search_index.js").write_text(f"var __index = {data}", encoding="utf-8")
