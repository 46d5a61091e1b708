"""`mkdocs build` of an exported project, in-process so a progress bar follows it.

MkDocs renders the site's own pages (homes, listings, one page shell per SAE); the hook then
stamps every block of feature pages into its SAE's shell (hooks.stamp_blocks), so the build's
cost hardly grows with the number of features.
"""

from __future__ import annotations

from pathlib import Path

from saedex.errors import SaedexError
from saedex.progress import progress_bar

TICK_EVERY = 25


def build_site(project: Path, workers: int = 1, progress: bool = True) -> Path:
    """Build `project`'s MkDocs site into project/site; returns that folder. (`workers` is
    accepted for callers of the sharded build this replaced; one process builds it.)"""
    project = project.resolve()  # MkDocs reads a relative site_dir against the config's folder
    site = project / "site"
    total = sum(1 for _ in (project / "docs").rglob("*.md"))
    with progress_bar("page", progress) as bar:
        task = bar.add_task("building site", total=total)
        _build(project, site, lambda n: bar.advance(task, n))
    return site


def _build(project: Path, site: Path, tick) -> None:
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import MkDocsException

    try:
        config = load_config(str(project / "mkdocs.yml"), site_dir=str(site))
        config.plugins["saedex-progress"] = _progress_plugin(tick)
        config.plugins.on_startup(command="build", dirty=False)
        try:
            build(config)
        finally:
            config.plugins.on_shutdown()
    except MkDocsException as exc:
        raise SaedexError(f"mkdocs build failed: {exc}") from exc


def _progress_plugin(tick):
    from mkdocs.plugins import BasePlugin

    class Progress(BasePlugin):
        """Reports progress every TICK_EVERY pages."""

        pending = 0

        def on_post_page(self, output: str, page, config) -> str:
            self.pending += 1
            if self.pending >= TICK_EVERY:
                tick(self.pending)
                self.pending = 0
            return output

        def on_post_build(self, config) -> None:
            tick(self.pending)

    return Progress()
