"""The MkDocs hook of an exported site (copied next to its mkdocs.yml; standard library only).

A page's Markdown holds a short head, then MARKER, then HTML the exporter already rendered and
escaped. Python-Markdown only ever sees the head; the HTML is read back from the source file and
put in place of the marker after the theme rendered the page (Markdown parsing thousands of
token spans would be the big cost of a build).

Feature pages are not MkDocs pages at all: each SAE has one page shell (`<sae>/features/_shell`)
that MkDocs renders with the theme, and after the build every block of features the exporter
wrote to BLOCKS/<sae>/<n>.html is stamped into a copy of it, so a build costs the same for
1,000 or 65,000 features.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority

MARKER = "<!-- saedex:html -->"
TITLE = "SAEDEX_TITLE_SLOT"
SLOT = '<div class="sx-slot"></div>'
SHELL = "_shell.html"
BLOCKS = "blocks"


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


@event_priority(-100)
def on_post_build(config) -> None:
    stamp_blocks(Path(config.config_file_path).parent / BLOCKS, Path(config.site_dir))


def stamp_blocks(blocks: Path, site: Path) -> int:
    """Write site/<sae>/features/<n>.html for every block fragment; returns how many."""
    written = 0
    for shell_path in sorted(site.glob(f"*/features/{SHELL}")):
        shell = shell_path.read_text(encoding="utf-8")
        before, found, after = shell.partition(SLOT)
        if not found:
            continue
        for fragment in sorted((blocks / shell_path.parent.parent.name).glob("*.html")):
            title, _, body = fragment.read_text(encoding="utf-8").partition("\n")
            page = before.replace(TITLE, title) + body + after.replace(TITLE, title)
            (shell_path.parent / fragment.name).write_text(page, encoding="utf-8")
            written += 1
        shell_path.unlink()
    return written
