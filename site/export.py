"""`saedex export-site`: one or several indexed SAEs as an MkDocs (Material) project.

Feature blocks are rendered in parallel: worker processes take feature ranges from a queue, each
with its own read-only reader, so memory stays at one range per worker. The main process then
writes each SAE's shared data (vocabulary, context shards, search shards), listings and home
pages. A file is only rewritten when its content changed, so re-exporting an unchanged index
touches nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from string import Template

import yaml

from saedex.config import SiteConfig
from saedex.data import SaeInfo
from saedex.errors import SaedexError
from saedex.progress import progress_bar
from saedex.site import pages, payload
from saedex.site.hooks import BLOCKS
from saedex.site.pages import DATA, FeatureRow, SaeEntry
from saedex.site.render import PageSettings, fallback_html, top_token_ids
from saedex.site.workers import Emit, run_workers, spawn_context
from saedex.store.site_queries import SiteReader

HOOK_FILE = "saedex_hooks.py"
ASSETS = ("saedex.css", "dashboard.js")
CTX_SHARD = 64  # contexts per shared context file
TERMS_PER_SHARD = 2000  # search postings per shard file, about 20 KB


@dataclass(frozen=True)
class SiteJob:
    """What to export and where; the MkDocs project goes to `out`, a build to `out/site`.
    `saes` names SAEs of `db` (one id or several); none means every finished SAE in it."""

    db: Path
    saes: Sequence[str] | str = ()
    out: Path = Path("site-project")
    config: SiteConfig = field(default_factory=SiteConfig)
    build: bool = False
    chunk_size: int = 256  # features a worker reads at once (rounded to whole blocks)

    @property
    def sae_ids(self) -> tuple[str, ...]:
        return (self.saes,) if isinstance(self.saes, str) else tuple(self.saes)


@dataclass(frozen=True)
class ExportResult:
    project: Path
    pages: int
    written: int
    removed: int
    export_s: float
    build_s: float | None = None
    site_dir: Path | None = None
    saes: tuple[str, ...] = ()


def export_site(job: SiteJob, progress: bool = True) -> ExportResult:
    """Write (only what changed of) the MkDocs project for `job`, then build it if asked."""
    started = time.perf_counter()
    entries = _entries(job)
    files = _project_files(entries, job.config)
    rows, written = _export_blocks(job, entries, progress)
    terms = {e.key: search_terms(rows[e.key]) for e in entries}
    entries = [replace(e, search_shards=_shard_count(terms[e.key])) for e in entries]
    for entry in entries:
        files.update(_sae_files(job, entry, entries, rows[entry.key], terms[entry.key]))
    dead = {e.key: sum(1 for r in rows[e.key] if r.n_active == 0) for e in entries}
    files["docs/index.md"] = pages.site_home(entries, dead, job.config.features_per_page)
    written += sum(write_if_changed(job.out / p, t) for p, t in files.items())
    expected = set(files) | {
        path
        for e in entries
        for b in range(math.ceil(e.info.d_sae / job.config.features_per_page))
        for path in _block_files(e.key, b, job.config)
    }
    removed = _prune(job.out, ("docs", BLOCKS), expected)
    n_pages = sum(p.endswith(".md") for p in files) + len(expected - set(files))
    result = ExportResult(
        job.out,
        n_pages,
        written,
        removed,
        time.perf_counter() - started,
        saes=tuple(e.info.id for e in entries),
    )
    if not job.build:
        return result
    from saedex.site.build import build_site

    started = time.perf_counter()
    site_dir = build_site(job.out, job.config.workers, progress)
    return ExportResult(
        **{**result.__dict__, "build_s": time.perf_counter() - started, "site_dir": site_dir}
    )


def _block_files(key: str, block: int, cfg: SiteConfig) -> list[str]:
    """What the workers write per block: its page fragment and, with document windows, the
    windows of its top examples (loaded only when a reader opens one)."""
    page = f"{BLOCKS}/{key}/{block}.html"
    return [page, window_file(key, block)] if cfg.document_window else [page]


def window_file(key: str, block: int) -> str:
    return f"docs/{DATA}{key}/win-{block}.js"


def _entries(job: SiteJob) -> list[SaeEntry]:
    """The SAEs to export, checked: named ones must exist and be finished."""
    with SiteReader(job.db) as reader:
        known = {s.id: s for s in reader.saes()}
        wanted = job.sae_ids or tuple(i for i, s in known.items() if s.status == "complete")
        if not wanted:
            raise SaedexError(f"no finished SAE in {job.db}: index one with `saedex index`")
        for sae_id in wanted:
            info = known.get(sae_id)
            if info is None:
                have = ", ".join(known) or "none"
                raise SaedexError(f"no SAE {sae_id!r} in {job.db} (it holds: {have})")
            if info.status != "complete":
                raise SaedexError(
                    f"index of {sae_id!r} is {info.status}: finish it with `saedex index`"
                )
        keys = pages.sae_keys(list(dict.fromkeys(wanted)))
        return [
            SaeEntry(key, known[i], reader.active_per_token(i), _quality(known[i]))
            for i, key in keys.items()
        ]


def _quality(info: SaeInfo) -> dict:
    """The SAE's training report (report.json beside its weights), where there is one."""
    try:
        report = json.loads((Path(info.sae_path) / "report.json").read_text("utf-8"))
    except (OSError, ValueError, TypeError):
        return {}
    return {k: v for k, v in report.items() if isinstance(v, int | float)}


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


def _prune(out: Path, folders: Iterable[str], keep: set[str]) -> int:
    """Remove files a previous export left in the folders it owns that this one did not write
    (the theme's assets are MkDocs's; our own are in `keep`)."""
    stale = [
        p
        for folder in folders
        for p in (out / folder).rglob("*")
        if p.is_file() and p.relative_to(out).as_posix() not in keep
    ]
    for path in stale:
        path.unlink()
    return len(stale)


# -- the MkDocs project ------------------------------------------------------------------------


def _template(name: str) -> str:
    return resources.files("saedex.site").joinpath("templates", name).read_text("utf-8")


def _project_files(entries: Sequence[SaeEntry], cfg: SiteConfig) -> dict[str, str]:
    files = {"mkdocs.yml": mkdocs_yml(entries, cfg)}
    files[HOOK_FILE] = resources.files("saedex.site").joinpath("hooks.py").read_text("utf-8")
    for name in ASSETS:
        files[f"docs/assets/{name}"] = _template(f"assets/{name}")
    return files


def _site_name(entries: Sequence[SaeEntry]) -> str:
    # MkDocs puts site_name into HTML unescaped: keep only harmless characters.
    name = entries[0].info.id if len(entries) == 1 else f"{len(entries)} SAEs"
    return "saedex: " + re.sub(r"[^\w .:+-]", "-", name)


def mkdocs_yml(entries: Sequence[SaeEntry], cfg: SiteConfig) -> str:
    """Material theme, no web fonts, no search plugin (the site has its own, sharded), relative
    .html URLs (file:// and any sub-path work)."""
    nav: list = [{"Home": "index.md"}]
    for e in entries:
        listings = [{f"Features {o.title}": pages.listing_doc(e.key, o, 1)} for o in pages.ORDERS]
        nav.append({re.sub(r"[^\w .:+-]", "-", e.info.id): [f"{e.key}/index.md", *listings]})
    config = {
        "site_name": _site_name(entries),
        "docs_dir": "docs",
        "site_dir": "site",
        "use_directory_urls": False,
        "theme": {"name": "material", "font": False, "palette": _PALETTES},
        "plugins": [],
        "hooks": [HOOK_FILE],
        "extra_css": ["assets/saedex.css"],
        "extra_javascript": ["assets/dashboard.js"],
        "nav": nav,
        "not_in_nav": "/*/features/\n/*/list/\n",
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
        document_window=(
            f", then {cfg.document_window} tokens either side in the document, across the "
            "contexts the index cut it into (a bar marks where a context, and so the stored "
            "activations, restarts)"
            if cfg.document_window
            else ""
        ),
    )


def _sae_files(
    job: SiteJob,
    entry: SaeEntry,
    entries: Sequence[SaeEntry],
    rows: list[FeatureRow],
    terms: dict[str, dict[int, int]],
) -> dict[str, str]:
    """One SAE's documents and data: home, listings, page shell, contexts, vocab, search."""
    cfg, key = job.config, entry.key
    docs = {
        f"docs/{p}": t
        for p, t in pages.listing_pages(
            entry, rows, cfg.features_per_index_page, cfg.features_per_page
        )
    }
    guide = _guide(entry.info, cfg)
    docs[f"docs/{key}/index.md"] = pages.sae_home(
        entries, entry, rows, guide, cfg.features_per_page
    )
    docs[f"docs/{key}/features/{pages.SHELL}.md"] = pages.shell_page(
        entries, entry, cfg.features_per_page
    )
    docs.update(_term_files(key, terms, entry.search_shards))
    with SiteReader(job.db) as reader:
        docs.update(_context_files(reader, entry, cfg.document_window))
        model = model_key(entry.info.model_name)
        vocab = json.dumps(reader.vocab(entry.info.model_name), ensure_ascii=False)
        docs[f"docs/{DATA}vocab-{model}.js"] = f'saedex.vocab("{model}",{vocab});\n'
    return docs


def model_key(model_name: str) -> str:
    """The vocabulary file's name: the model's public name, plus a hash that keeps two models
    of the same name apart without publishing a local path."""
    digest = hashlib.sha1(model_name.encode("utf-8")).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", pages.public_name(model_name)) + "-" + digest


def _context_files(reader: SiteReader, entry: SaeEntry, side: int) -> dict[str, str]:
    """The contexts examples show (and those their document windows of `side` tokens reach),
    CTX_SHARD a file, in the order of their references."""
    ids = reader.reached_context_ids(entry.info.id, side)
    files = {}
    for first in range(0, len(ids), CTX_SHARD):
        rows = reader.context_rows(entry.info.id, ids[first : first + CTX_SHARD])
        data = [[c, doc, pages.public_name(src), list(t)] for c, doc, src, t in rows]
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        name = f"docs/{DATA}{entry.key}/ctx-{first // CTX_SHARD}.js"
        files[name] = f'saedex.ctx("{entry.key}",{first},{text});\n'
    return files


# -- search ------------------------------------------------------------------------------------

FIRES, PROMOTES, EXPLAINED, FIRST = 1, 2, 4, 8  # FIRST: the strongest token of its list


def term(text: str) -> str:
    """A token as search matches it (the script normalises a query the same way)."""
    return text.strip().lower()


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def search_terms(rows: Sequence[FeatureRow]) -> dict[str, dict[int, int]]:
    """term -> {feature: FIRES | PROMOTES | EXPLAINED | FIRST}: whole tokens a feature fires on
    or promotes (FIRST when it leads the list, so search ranks it higher), and the words of its
    explanations."""
    out: dict[str, dict[int, int]] = defaultdict(dict)

    def add(key: str, index: int, flag: int) -> None:
        if key:
            out[key][index] = out[key].get(index, 0) | flag

    for r in rows:
        for k, t in enumerate(r.top_tokens):
            add(term(t), r.index, FIRES | (FIRST if k == 0 else 0))
        for k, t in enumerate(r.top_logits):
            add(term(t), r.index, PROMOTES | (FIRST if k == 0 else 0))
        for text in r.explanations:
            for w in words(text):
                add(w, r.index, EXPLAINED)
    return out


def _shard_count(terms: dict[str, dict[int, int]]) -> int:
    postings = sum(map(len, terms.values()))
    return max(1, min(256, math.ceil(postings / TERMS_PER_SHARD)))


def shard_of(key: str, shards: int) -> int:
    """FNV-1a over the UTF-8 bytes, as the script computes it."""
    h = 0x811C9DC5
    for byte in key.encode("utf-8"):
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % shards


def _term_files(key: str, terms: dict[str, dict[int, int]], shards: int) -> dict[str, str]:
    by_shard: list[dict] = [{} for _ in range(shards)]
    for t, postings in sorted(terms.items()):
        by_shard[shard_of(t, shards)][t] = sorted(postings.items())
    return {
        f"docs/{DATA}{key}/terms-{k}.js": (
            f'saedex.terms("{key}",{k},'
            f"{json.dumps(data, ensure_ascii=False, separators=(',', ':'))});\n"
        )
        for k, data in enumerate(by_shard)
    }


# -- feature blocks, in parallel ---------------------------------------------------------------


def _tasks(entries: Sequence[SaeEntry], job: SiteJob) -> list[tuple[str, str, int, int]]:
    """(SAE id, key, first, last) feature ranges of whole blocks, about chunk_size each."""
    per = job.config.features_per_page
    step = max(1, job.chunk_size // per) * per
    return [
        (e.info.id, e.key, lo, min(lo + step, e.info.d_sae) - 1)
        for e in entries
        for lo in range(0, e.info.d_sae, step)
    ]


def _export_blocks(
    job: SiteJob, entries: Sequence[SaeEntry], progress: bool
) -> tuple[dict[str, list[FeatureRow]], int]:
    """Render every block of every SAE; returns each SAE's listing rows (by index) and the
    number of block files written."""
    tasks = _tasks(entries, job)
    rows: dict[str, list[FeatureRow]] = {e.key: [] for e in entries}
    written = 0
    with progress_bar("feature", progress) as bar:
        task = bar.add_task("exporting features", total=sum(e.info.d_sae for e in entries))

        def collect(key: str, chunk_rows: list[FeatureRow], n_written: int) -> None:
            nonlocal written
            rows[key].extend(chunk_rows)
            written += n_written
            bar.advance(task, len(chunk_rows))

        workers = min(job.config.workers, len(tasks))
        keys = {e.info.id: e.key for e in entries}  # families link the site's other SAEs
        args = (job.db, job.out, job.config, keys)
        if workers <= 1:
            with _Renderer(*args) as renderer:
                for t in tasks:
                    collect(*renderer.render(*t))
        else:
            queue = spawn_context().Queue()
            for t in [*tasks, *[None] * workers]:
                queue.put(t)
            run_workers(_worker, [(*args, queue)] * workers, collect, "site export")
    return {k: sorted(v, key=lambda r: r.index) for k, v in rows.items()}, written


def _worker(db: Path, out: Path, cfg: SiteConfig, keys: dict, tasks, emit: Emit) -> None:
    """Render ranges from `tasks` until the None sentinel, with one read-only reader."""
    with _Renderer(db, out, cfg, keys) as renderer:
        for t in iter(tasks.get, None):
            emit(*renderer.render(*t))


class _Renderer:
    """Renders feature ranges of any SAE of one index into block fragments."""

    def __init__(self, db: Path, out: Path, cfg: SiteConfig, keys: dict[str, str]):
        self.reader = SiteReader(db)
        self.out, self.cfg = out, cfg
        self.keys = keys  # the site's SAE ids -> folders
        self._saes: dict[str, tuple] = {}

    def __enter__(self) -> _Renderer:
        return self

    def __exit__(self, *exc) -> None:
        self.reader.close()

    def _sae(self, sae_id: str, key: str) -> tuple:
        """(page settings, context id -> reference, vocab, page state), once per SAE."""
        if sae_id not in self._saes:
            info = self.reader.sae(sae_id)
            cfg = self.cfg
            settings = PageSettings(
                key,
                info.id,
                1 if info.prepend_bos else 0,
                cfg.window,
                cfg.examples_shown,
                info.n_tokens,
                info.d_sae,
                cfg.features_per_page,
                cfg.features_per_index_page,
                cfg.document_window,
            )
            reached = self.reader.reached_context_ids(sae_id, cfg.document_window)
            refs = {c: r for r, c in enumerate(reached)}
            state = {
                "model": model_key(info.model_name),
                "data": f"../../{DATA}",
                "ctx_shard": CTX_SHARD,
            }
            self._saes[sae_id] = (settings, refs, self.reader.vocab(info.model_name), state)
        return self._saes[sae_id]

    def render(self, sae_id: str, key: str, lo: int, hi: int) -> tuple[str, list, int]:
        """Write the blocks of features lo..hi; returns (key, their rows, files written)."""
        settings, refs, vocab, state = self._sae(sae_id, key)
        r = self.reader
        logits = r.logit_rows(sae_id, lo, hi)
        nbrs = r.neighbour_rows(sae_id, lo, hi)
        examples = r.example_rows(sae_id, lo, hi, settings.shown)
        intervals = r.interval_rows(sae_id, lo, hi)
        explained = r.explanations(sae_id, list(range(lo, hi + 1)))
        coacts = r.coactivation_rows(sae_id, lo, hi)
        features = [
            payload.from_rows(
                row,
                logits,
                nbrs.get(row[0], ()),
                examples,
                intervals.get(row[0], ()),
                refs.__getitem__,
                [x for x in explained.get(row[0], ()) if x.current],
                coactivations=coacts.get(row[0], ()),
            )
            for row in r.feature_rows(sae_id, lo, hi)
        ]
        families = r.family_rows(sae_id, lo, hi)
        for f in features:
            f["mt"] = payload.match_entries(families.get(f["i"], ()), self.keys)
        wanted = {c for (_, _, _), exs in examples.items() for c, *_ in exs}
        by_ref = _contexts_by_ref(r, sae_id, wanted, refs)
        rows, written = self._write_blocks(settings, state, features, by_ref.__getitem__, vocab)
        if settings.doc_window:
            windows = r.example_windows(sae_id, lo, hi, settings.shown, settings.doc_window)
            written += self._write_windows(settings, features, windows, refs.__getitem__)
        return key, rows, written

    def _write_windows(
        self, settings: PageSettings, features: list[dict], windows: dict, ref
    ) -> int:
        """One file per block: feature -> its top examples' document windows, in order."""
        blocks: dict[int, dict[int, list]] = defaultdict(dict)
        for f in features:
            entries = [payload.window_entry(w, ref) for w in windows.get(f["i"], ())]
            blocks[f["i"] // settings.per_page][f["i"]] = entries
        written = 0
        for block, data in blocks.items():
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            path = self.out / window_file(settings.sae, block)
            written += write_if_changed(path, f'saedex.win("{settings.sae}",{block},{text});\n')
        return written

    def _write_blocks(
        self, settings: PageSettings, state: dict, features: list[dict], context, vocab
    ) -> tuple[list[FeatureRow], int]:
        rows, written, per = [], 0, settings.per_page
        tok = vocab.__getitem__
        blocks: dict[int, list[dict]] = defaultdict(list)
        for f in features:
            blocks[f["i"] // per].append(f)
            fires = [vocab[t] for t in top_token_ids(f, context)]
            rows.append(pages.feature_row(f, fires, [vocab[t] for t, _ in f["tl"]]))
        for block, members in blocks.items():
            sections = [fallback_html(f, context, tok, settings) for f in members]
            text = pages.block_fragment(settings, members, sections, state)
            path = self.out / BLOCKS / settings.sae / f"{block}.html"
            written += write_if_changed(path, text)
        return rows, written


def _contexts_by_ref(
    reader: SiteReader, sae_id: str, wanted: set[int], refs: dict[int, int]
) -> dict[int, tuple]:
    rows = reader.context_rows(sae_id, sorted(wanted)) if wanted else []
    return {refs[c]: (c, doc, src, ids) for c, doc, src, ids in rows}
