"""`mkdocs build` of an exported project, in-process so a progress bar follows it page by page.

MkDocs renders pages in one process. With several workers the feature pages are split into
shards (index modulo the shard count), each built by its own process into its own folder;
feature pages are not in the nav, so a page renders the same whichever build makes it. The
shards' feature pages and search entries are then moved into the first shard's site.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from saedex.errors import SaedexError
from saedex.progress import progress_bar
from saedex.site.hooks import write_search_script
from saedex.site.workers import run_workers

FEATURES = "features/"
MIN_SHARD_PAGES = 1000  # below this, starting another MkDocs costs more than it saves
TICK_EVERY = 25


def build_site(
    project: Path, workers: int = 1, progress: bool = True, min_shard_pages: int = MIN_SHARD_PAGES
) -> Path:
    """Build `project`'s MkDocs site into project/site; returns that folder."""
    project = project.resolve()  # MkDocs reads a relative site_dir against the config's folder
    total = sum(1 for _ in (project / "docs").rglob("*.md"))
    shards = max(1, min(workers, total // max(1, min_shard_pages)))
    site = project / "site"
    with progress_bar("page", progress) as bar:
        task = bar.add_task("building site", total=total)
        if shards == 1:
            _build(project, site, 0, 1, lambda n: bar.advance(task, n))
        else:
            _build_sharded(project, shards, lambda n: bar.advance(task, n))
    return site


def _build(project: Path, site: Path, shard: int, shards: int, tick: Callable[[int], None]) -> None:
    """One MkDocs build of `shard`'s pages into `site`."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import MkDocsException

    try:
        config = load_config(str(project / "mkdocs.yml"), site_dir=str(site))
        config.plugins["saedex-shard"] = _shard_plugin(shard, shards, tick)
        config.plugins.on_startup(command="build", dirty=False)
        try:
            build(config)
        finally:
            config.plugins.on_shutdown()
    except MkDocsException as exc:
        raise SaedexError(f"mkdocs build failed: {exc}") from exc


def _nav_pages(nav) -> set[str]:
    """Every page the nav names (a shard must build them for its nav to resolve)."""
    if isinstance(nav, str):
        return {nav}
    items = nav.values() if isinstance(nav, dict) else nav or []
    return set().union(*map(_nav_pages, items))


def _shard_plugin(shard: int, shards: int, tick: Callable[[int], None]):
    from mkdocs.plugins import BasePlugin

    class Shard(BasePlugin):
        """Keeps this shard's feature pages (the first shard keeps everything else too) and
        reports progress every TICK_EVERY pages."""

        pending = 0

        def on_files(self, files, config):
            if shards == 1:
                return files
            nav = _nav_pages(config.nav)
            for file in list(files):
                if not _keep(file, shard, shards, nav):
                    files.remove(file)
            return files

        def on_post_page(self, output: str, page, config) -> str:
            # The nav pages other shards build too are counted once, by the first.
            self.pending += shard == 0 or page.file.src_uri.startswith(FEATURES)
            if self.pending >= TICK_EVERY:
                tick(self.pending)
                self.pending = 0
            return output

        def on_post_build(self, config) -> None:
            tick(self.pending)

    return Shard()


def _keep(file, shard: int, shards: int, nav: set[str]) -> bool:
    uri = file.src_uri
    if uri.startswith(FEATURES) and uri.endswith(".md"):
        return int(Path(uri).stem) % shards == shard
    return shard == 0 or (file.is_documentation_page() and uri in nav)


# -- shards in parallel ------------------------------------------------------------------------


def _build_sharded(project: Path, shards: int, tick: Callable[[int], None]) -> None:
    scratch = project / ".build"
    shutil.rmtree(scratch, ignore_errors=True)
    sites = [project / "site"] + [scratch / f"shard-{k}" for k in range(1, shards)]
    args = [(project, sites[k], k, shards) for k in range(shards)]
    run_workers(_build, args, tick, "site build")
    _merge(sites[0], sites[1:])
    shutil.rmtree(scratch, ignore_errors=True)


def _merge(site: Path, others: list[Path]) -> None:
    """Move the other shards' feature pages and search entries into `site`."""
    index_path = site / "search" / "search_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    for other in others:
        for page in (other / FEATURES).glob("*.html"):
            page.replace(site / FEATURES / page.name)
        theirs = json.loads((other / "search" / "search_index.json").read_text(encoding="utf-8"))
        index["docs"] += [d for d in theirs["docs"] if d["location"].startswith(FEATURES)]
    index_path.write_text(json.dumps(index, separators=(",", ":")), encoding="utf-8")
    write_search_script(site)
