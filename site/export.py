"""`saedex export-site`: an index's features as an MkDocs (Material) project, optionally built.

Feature pages are rendered in parallel: worker processes take chunks of feature indices from a
queue, each with its own read-only IndexReader, so memory stays at one chunk per worker. A file
is only rewritten when its content changed, so re-exporting an unchanged index touches nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template

import yaml

from saedex.config import SiteConfig
from saedex.data import FeatureData, SaeInfo
from saedex.errors import SaedexError
from saedex.progress import progress_bar
from saedex.site import pages
from saedex.site.pages import FeatureRow, PageContext
from saedex.site.render import token_html
from saedex.site.workers import Emit, run_workers, spawn_context
from saedex.store import IndexReader

HOOK_FILE = "saedex_hooks.py"
ASSETS = ("saedex.css", "file-worker.js")


@dataclass(frozen=True)
class SiteJob:
    """What to export and where; the MkDocs project goes to `out`, a build to `out/site`."""

    db: Path
    sae_id: str
    out: Path
    config: SiteConfig = field(default_factory=SiteConfig)
    build: bool = False
    chunk_size: int = 64


@dataclass(frozen=True)
class ExportResult:
    project: Path
    pages: int
    written: int
    removed: int
    export_s: float
    build_s: float | None = None
    site_dir: Path | None = None


def export_site(job: SiteJob, progress: bool = True) -> ExportResult:
    """Write (only what changed of) the MkDocs project for `job`, then build it if asked."""
    started = time.perf_counter()
    info = _finished_sae(job.db, job.sae_id)
    docs = job.out / "docs"
    written = sum(write_if_changed(job.out / p, t) for p, t in _project_files(info).items())
    rows, n = _export_features(job, info, docs, progress)
    written += n
    listings = dict(pages.listing_pages(rows, job.config.features_per_index_page))
    home = pages.home_page(info, rows, _guide(info, job.config))
    written += sum(write_if_changed(docs / p, t) for p, t in listings.items())
    written += write_if_changed(docs / "index.md", home)
    expected = {pages.feature_doc(r.index) for r in rows} | set(listings)
    removed = _prune(docs, ("features", "list"), expected)
    result = ExportResult(
        job.out, len(expected) + 1, written, removed, time.perf_counter() - started
    )
    if not job.build:
        return result
    from saedex.site.build import build_site

    started = time.perf_counter()
    site_dir = build_site(job.out, job.config.workers, progress)
    return ExportResult(
        **{**result.__dict__, "build_s": time.perf_counter() - started, "site_dir": site_dir}
    )


def _finished_sae(db: Path, sae_id: str) -> SaeInfo:
    with IndexReader(db) as reader:
        info = reader.sae(sae_id)
        known = [s.id for s in reader.saes()]
    if info is None:
        raise SaedexError(f"no SAE {sae_id!r} in {db} (it holds: {', '.join(known) or 'none'})")
    if info.status != "complete":
        raise SaedexError(f"index of {sae_id!r} is {info.status}: finish it with `saedex index`")
    return info


def write_if_changed(path: Path, text: str) -> bool:
    """Write `text` unless the file already holds exactly it (keeps mtimes of unchanged pages)."""
    data = text.encode("utf-8")
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def _prune(docs: Path, folders: Iterable[str], keep: set[str]) -> int:
    """Remove pages a previous export left that this one did not produce."""
    stale = [
        p
        for folder in folders
        for p in (docs / folder).glob("*.md")
        if p.relative_to(docs).as_posix() not in keep
    ]
    for path in stale:
        path.unlink()
    return len(stale)


# -- the MkDocs project ------------------------------------------------------------------------


def _template(name: str) -> str:
    return resources.files("saedex.site").joinpath("templates", name).read_text("utf-8")


def _project_files(info: SaeInfo) -> dict[str, str]:
    files = {"mkdocs.yml": mkdocs_yml(info)}
    files[HOOK_FILE] = resources.files("saedex.site").joinpath("hooks.py").read_text("utf-8")
    for name in ASSETS:
        files[f"docs/assets/{name}"] = _template(f"assets/{name}")
    return files


def mkdocs_yml(info: SaeInfo) -> str:
    """Material theme, no web fonts, relative .html URLs (file:// and any sub-path work)."""
    nav = [{"Home": "index.md"}] + [
        {f"Features {o.title}": pages.listing_doc(o, 1)} for o in pages.ORDERS
    ]
    config = {
        # MkDocs puts site_name into HTML unescaped: keep only harmless characters.
        "site_name": "saedex: " + re.sub(r"[^\w .:+-]", "-", info.id),
        "docs_dir": "docs",
        "site_dir": "site",
        "use_directory_urls": False,
        "theme": {"name": "material", "font": False, "palette": _PALETTES},
        "plugins": ["search"],
        "hooks": [HOOK_FILE],
        "extra_css": ["assets/saedex.css"],
        "extra": {"polyfills": ["assets/file-worker.js"]},
        "nav": nav,
        "not_in_nav": "/features/\n/list/\n",
    }
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


_PALETTES = [
    {
        "scheme": "default",
        "toggle": {"icon": "material/brightness-7", "name": "Dark mode"},
    },
    {"scheme": "slate", "toggle": {"icon": "material/brightness-4", "name": "Light mode"}},
]


def _guide(info: SaeInfo, cfg: SiteConfig) -> str:
    return Template(_template("guide.html")).substitute(
        n_tokens=f"{info.n_tokens:,}",
        n_logits=info.settings.get("n_logits", "top"),
        window=cfg.window,
    )


# -- feature pages, in parallel ----------------------------------------------------------------


def _export_features(
    job: SiteJob, info: SaeInfo, docs: Path, progress: bool
) -> tuple[list[FeatureRow], int]:
    """Render every feature page; returns the listing rows (by index) and files written."""
    size = max(1, job.chunk_size)
    chunks = [list(range(i, min(i + size, info.d_sae))) for i in range(0, info.d_sae, size)]
    rows: list[FeatureRow] = []
    written = 0
    with progress_bar("page", progress) as bar:
        task = bar.add_task("exporting features", total=info.d_sae)

        def collect(chunk_rows: list[FeatureRow], n_written: int) -> None:
            nonlocal written
            rows.extend(chunk_rows)
            written += n_written
            bar.advance(task, len(chunk_rows))

        workers = min(job.config.workers, len(chunks))
        if workers <= 1:
            _render_inline(job, info, docs, chunks, collect)
        else:
            _render_parallel(job, info, docs, chunks, workers, collect)
    return sorted(rows, key=lambda r: r.index), written


def page_context(reader: IndexReader, info: SaeInfo, cfg: SiteConfig) -> PageContext:
    """What every page of this SAE shares; the vocabulary is escaped once, not per token."""
    return PageContext(
        vocab_html=[token_html(t) for t in reader.vocab(info.model_name)],
        first_token=1 if info.prepend_bos else 0,
        n_tokens=info.n_tokens,
        d_sae=info.d_sae,
        per_page=cfg.features_per_index_page,
        examples_shown=cfg.examples_shown,
        window=cfg.window,
    )


def feature_data(
    reader: IndexReader, sae_id: str, indices: list[int], top: int
) -> list[FeatureData]:
    """Everything the dashboards of `indices` show, in a handful of batched queries."""
    summaries = reader.summaries(sae_id, indices)
    indices = [i for i in indices if i in summaries]
    bottom = reader.logits(sae_id, indices, "bottom")
    hists = reader.histograms(sae_id, indices)
    examples = reader.top_examples(sae_id, indices, first=top)
    intervals = reader.interval_samples(sae_id, indices)
    nbrs = reader.neighbours(sae_id, indices)
    return [
        FeatureData(summaries[i], bottom[i], *hists[i], examples[i], intervals[i], nbrs[i])
        for i in indices
    ]


def _render_chunk(
    reader: IndexReader, info: SaeInfo, ctx: PageContext, docs: Path, chunk: list[int]
) -> tuple[list[FeatureRow], int]:
    written = 0
    rows = []
    for data in feature_data(reader, info.id, chunk, ctx.examples_shown):
        written += write_if_changed(
            docs / pages.feature_doc(data.summary.index), pages.feature_page(data, ctx)
        )
        rows.append(pages.feature_row(data))
    return rows, written


Collect = Callable[[list[FeatureRow], int], None]


def _render_inline(
    job: SiteJob, info: SaeInfo, docs: Path, chunks: Sequence[list[int]], collect: Collect
) -> None:
    with IndexReader(job.db) as reader:
        ctx = page_context(reader, info, job.config)
        for chunk in chunks:
            collect(*_render_chunk(reader, info, ctx, docs, chunk))


def _render_parallel(
    job: SiteJob,
    info: SaeInfo,
    docs: Path,
    chunks: Sequence[list[int]],
    workers: int,
    collect: Collect,
) -> None:
    """Workers pull chunks from one queue, so a slow chunk (dense features) never idles a core."""
    tasks = spawn_context().Queue()
    for chunk in [*chunks, *[None] * workers]:
        tasks.put(chunk)
    args = (job.db, info, job.config, docs, tasks)
    run_workers(_worker, [args] * workers, collect, "site export")


def _worker(db: Path, info: SaeInfo, cfg: SiteConfig, docs: Path, tasks, emit: Emit) -> None:
    """Render chunks from `tasks` until the None sentinel, with one read-only reader."""
    with IndexReader(db) as reader:
        ctx = page_context(reader, info, cfg)
        for chunk in iter(tasks.get, None):
            emit(*_render_chunk(reader, info, ctx, docs, chunk))
