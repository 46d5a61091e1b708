"""Kill -9 the indexer at several points; rerunning the command gives the identical index."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saedex.store.catalog import runs_dir
from saedex.store.schema import RUN_TABLES
from saedex.store.views import connect
from tests.conftest import build_tiny_sae, make_corpus_docs

TIMING = {"started_at", "finished_at", "duration_s"}


def index_cmd(model: Path, sae: Path, corpus: Path, db: Path) -> list[str]:
    return [
        sys.executable, "-m", "saedex.cli", "index", "--model", str(model), "--sae", str(sae),
        "--corpus", str(corpus), "--db", str(db), "--context-size", "24", "--batch-size", "2",
        "--commit-interval", "0", "--quiet",
    ]  # fmt: skip


def dump(db: Path) -> dict[str, list]:
    """Every run table's rows as readers see them, in a canonical order, without timing."""
    con = connect(db)
    out = {}
    for table in RUN_TABLES:
        cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] not in TIMING]
        col_list = ", ".join(cols)
        out[table] = con.execute(f"SELECT {col_list} FROM {table} ORDER BY ALL").fetchall()
    con.close()
    return out


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    sae = build_tiny_sae(tmp / "sae", "topk")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in make_corpus_docs(30, seed=3)))
    ref_db = tmp / "reference.duckdb"
    subprocess.run(index_cmd(tiny_model, sae, corpus, ref_db), check=True)
    return tiny_model, sae, corpus, ref_db, dump(ref_db)


def wal_size(db: Path) -> int:
    """Bytes in the WALs of the run files being written (-1 if there is none yet)."""
    sizes = [-1]
    for wal in runs_dir(db).glob("*.wal"):
        with contextlib.suppress(FileNotFoundError):
            sizes.append(wal.stat().st_size)
    return max(sizes)


def kill_when(cmd: list[str], db: Path, wal_bytes: int, timeout: float = 900) -> bool:
    """Start the command and SIGKILL it once its run file's WAL has grown past `wal_bytes`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if wal_size(db) > wal_bytes:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.wait()
    return False


@pytest.mark.parametrize("wal_bytes", [0, 30_000, 150_000])
def test_kill_and_resume_is_identical(setup, tmp_path, wal_bytes):
    model, sae, corpus, _, expected = setup
    db = tmp_path / "killed.duckdb"
    cmd = index_cmd(model, sae, corpus, db)
    killed = kill_when(cmd, db, wal_bytes)
    assert killed, "the run finished before it could be killed; raise the corpus size"
    assert connect(db).execute("SELECT * FROM saes").fetchall() == []  # nothing half-done shown
    subprocess.run(cmd, check=True)
    assert dump(db) == expected


def test_rerun_of_complete_index_changes_nothing(setup, tmp_path):
    model, sae, corpus, ref_db, expected = setup
    subprocess.run(index_cmd(model, sae, corpus, ref_db), check=True)
    assert dump(ref_db) == expected


def test_a_memory_limit_reaches_duckdb_and_changes_nothing_stored(setup, tmp_path):
    """--memory-limit bounds DuckDB while indexing: too small a limit stops the run with one
    line saying so, the run left to resume; a workable one gives the reference index, stored
    settings included (the limit is not stored: it bounds how, not what)."""
    model, sae, corpus, _, expected = setup
    db = tmp_path / "capped.duckdb"
    cmd = index_cmd(model, sae, corpus, db)
    starved = subprocess.run([*cmd, "--memory-limit", "1MB"], capture_output=True, text=True)
    lines = (starved.stdout + starved.stderr).strip().splitlines()
    assert starved.returncode == 2 and len(lines) == 1, lines
    assert "ran out of DuckDB memory" in lines[0] and "--memory-limit" in lines[0]
    subprocess.run([*cmd, "--memory-limit", "256MB"], check=True)
    assert dump(db) == expected
