"""The user-edit store (saedex.store.edits): migrations, concurrency, kills, search ranking."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from saedex.errors import SaedexError
from saedex.store.edits import (
    EDITS_SCHEMA_VERSION,
    MIGRATIONS,
    EditStore,
    NewExplanation,
    edits_path,
)

SAE = "sae"


def test_edits_path_sits_beside_the_index(tmp_path):
    assert edits_path(tmp_path / "index.duckdb") == tmp_path / "index.edits.sqlite"
    assert edits_path("a/b.db") == Path("a/b.edits.sqlite")


def test_add_is_idempotent_and_keyed_by_feature_text_author_method(tmp_path):
    with EditStore(tmp_path / "e.sqlite") as store:
        rows = [
            NewExplanation(1, "dogs", "import", "gpt-4", "np_max-act"),
            NewExplanation(1, "dogs", "import", "gpt-4", "oai_token-act-pair"),
            NewExplanation(1, "dogs", "import", "claude", "np_max-act"),
            NewExplanation(2, "dogs", "import", "gpt-4", "np_max-act"),
        ]
        assert store.add_many(SAE, rows, "sha256:a") == (4, 0)
        assert store.add_many(SAE, rows, "sha256:a") == (0, 4)
        again = store.add(SAE, NewExplanation(2, " dogs ", "import", "gpt-4", "np_max-act"), None)
        assert again.feature == 2 and again.text == "dogs"
        assert sum(len(v) for v in store.for_features(SAE, [1, 2], None).values()) == 4


def test_bad_rows_are_refused_whole(tmp_path):
    with EditStore(tmp_path / "e.sqlite") as store:
        with pytest.raises(SaedexError, match="cannot be empty"):
            store.add_many(SAE, [NewExplanation(1, "fine"), NewExplanation(2, "  ")], None)
        assert store.for_features(SAE, [1, 2], None) == {1: [], 2: []}
        with pytest.raises(SaedexError, match="source"):
            store.add(SAE, NewExplanation(1, "x", source="oracle"), None)


def test_fingerprint_marks_explanations_of_other_weights_not_current(tmp_path):
    with EditStore(tmp_path / "e.sqlite") as store:
        old = store.add(SAE, NewExplanation(3, "old weights"), "sha256:old")
        new = store.add(SAE, NewExplanation(3, "new weights"), "sha256:new")
        shown = store.for_features(SAE, [3], "sha256:new")[3]
        assert [(e.text, e.current) for e in shown] == [
            ("new weights", True),
            ("old weights", False),
        ]
        assert store.explained_features(SAE, "sha256:other") == []
        assert store.explained_features(SAE, "sha256:old") == [3]
        edited = store.update(old.id, text="checked again", fingerprint="sha256:new")
        assert edited.current is True and edited.sae_fingerprint == "sha256:new"
        assert store.delete(new.id) and not store.delete(new.id)
        assert store.update(10_000, text="x") is None


def test_scores_merge(tmp_path):
    with EditStore(tmp_path / "e.sqlite") as store:
        e = store.add(SAE, NewExplanation(0, "x"), None)
        store.set_scores(e.id, {"detection": 0.5})
        store.set_scores(e.id, {"fuzzing": 0.75})
        assert store.get(e.id).scores == {"detection": 0.5, "fuzzing": 0.75}


def test_search_ranks_whole_words_above_substrings(tmp_path):
    with EditStore(tmp_path / "e.sqlite") as store:
        store.add_many(
            SAE,
            [
                NewExplanation(1, "dogmatic statements"),
                NewExplanation(2, "the word dog in English"),
                NewExplanation(3, "hotdogs and sausages"),
                NewExplanation(4, "cats"),
                NewExplanation(5, "Dog breeds"),
            ],
            None,
        )
        hits = store.search(SAE, "dog", None)
        assert {h.feature for h in hits[:2]} == {2, 5} and all(h.whole_word for h in hits[:2])
        assert {h.feature for h in hits[2:]} == {1, 3} and not any(h.whole_word for h in hits[2:])
        assert [h.feature for h in store.search(SAE, "do", None)] == [1, 2, 3, 5]
        assert store.search(SAE, 'a "quoted" query', None) == []
        assert store.search("other-sae", "dog", None) == []


def test_an_older_file_is_upgraded_with_its_rows_and_a_backup(tmp_path):
    path = tmp_path / "index.edits.sqlite"
    con = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        con.execute(statement)
    con.execute(
        "INSERT INTO explanations (sae_id, feature, text, source, created_at, updated_at) "
        "VALUES ('sae', 7, 'written by hand in version 1', 'human', "
        "'2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')"
    )
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    with EditStore(path) as store:
        assert [e.text for e in store.for_features(SAE, [7], None)[7]] == [
            "written by hand in version 1"
        ]
        assert [h.feature for h in store.search(SAE, "hand", None)] == [7]  # indexed by 1 -> 2
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == EDITS_SCHEMA_VERSION
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    backup = sqlite3.connect(tmp_path / "index.edits.sqlite.v1.bak")
    assert backup.execute("SELECT count(*) FROM explanations").fetchone()[0] == 1


def test_a_newer_file_is_refused_untouched(tmp_path):
    path = tmp_path / "e.sqlite"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {EDITS_SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(SaedexError, match="newer than this saedex"):
        EditStore(path)
    assert path.read_bytes() == before


WRITER = """
import sys
from saedex.store.edits import EditStore, NewExplanation
store = EditStore(sys.argv[1])
name, n = sys.argv[2], int(sys.argv[3])
for i in range(n):
    e = store.add("sae", NewExplanation(i % 50, f"{name} wrote {i}", "human", name), "fp")
    if i % 3 == 0:
        store.update(e.id, text=f"{name} wrote {i} (edited)")
    print(e.id, flush=True)
"""

READER = """
import sys, time
from saedex.store.edits import EditStore
store = EditStore(sys.argv[1])
last, reads, deadline = 0, 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    start = time.monotonic()
    n = sum(len(v) for v in store.for_features("sae", range(50), "fp").values())
    assert n >= last, (n, last)  # committed edits never disappear
    assert time.monotonic() - start < 1.0, "a reader waited on the writers"
    last, reads = n, reads + 1
print(reads, last)
"""


def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_writers_in_processes_lose_nothing_while_a_reader_reads(tmp_path):
    path = tmp_path / "index.edits.sqlite"
    EditStore(path).close()
    n = 150
    writers = [_python(WRITER, str(path), name, str(n)) for name in ("alice", "bob")]
    reader = _python(READER, str(path), "4")
    outs = [w.communicate(timeout=120) for w in writers]
    read_out = reader.communicate(timeout=120)
    for proc, (_out, err) in zip([*writers, reader], [*outs, read_out], strict=True):
        assert proc.returncode == 0, err
    assert int(read_out[0].split()[0]) > 0
    with EditStore(path) as store:
        rows = [e for v in store.for_features(SAE, range(50), "fp").values() for e in v]
    assert len(rows) == 2 * n
    for name in ("alice", "bob"):
        texts = {e.text for e in rows if e.author == name}
        expected = {f"{name} wrote {i}" + (" (edited)" if i % 3 == 0 else "") for i in range(n)}
        assert texts == expected
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_killed_writer_leaves_every_committed_edit(tmp_path):
    path = tmp_path / "index.edits.sqlite"
    EditStore(path).close()
    writer = _python(WRITER, str(path), "carol", "100000")
    ids = []
    while len(ids) < 200:
        ids.append(int(writer.stdout.readline()))
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    time.sleep(0.1)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {r[0] for r in con.execute("SELECT id FROM explanations")}
    assert set(ids) <= stored
    assert [h.feature for h in EditStore(path).search(SAE, "carol", "fp", limit=3)]
