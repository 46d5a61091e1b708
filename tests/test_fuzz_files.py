"""Corrupt and hostile store files: every command that opens an index (`info`, `serve`, `index`)
answers one line naming the file and what to do, exits 2, and leaves every file as it was.

Each kind of file the store keeps is one entry of KINDS (where it lies beside the index, and
whether damage to it must be refused or is recovered from); each way of damaging a file is one
entry of DAMAGE. Every kind meets every damage.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from saedex.cli import app
from tests.conftest import API_SAE, copy_index, held_by_another_process, run_file


@dataclass(frozen=True)
class Kind:
    name: str
    locate: Callable[[Path], Path]  # the index file -> this kind's file
    refused: bool  # damage is refused (True) or recovered from without a word (False)
    make: Callable[[Path], None] = lambda db: None  # create it beside a fresh copy of the index


def _leave_wal(db: Path) -> None:
    """A committed write that stays in the .wal (no checkpoint), as after a killed run."""
    con = duckdb.connect(str(db))
    con.execute("PRAGMA disable_checkpoint_on_shutdown")
    con.execute("INSERT INTO meta VALUES ('fuzz', 'left in the wal')")
    con.close()


KINDS = [
    Kind("index", lambda db: db, refused=True),
    # DuckDB checksums every WAL entry and replays the entries that verify: a torn or garbled
    # WAL is the tail of a crash, and the index opens at its last good state.
    Kind("wal", lambda db: db.with_name(db.name + ".wal"), refused=False, make=_leave_wal),
    # A run's own file (docs/schema.md, "Layout"): every reader attaches it.
    Kind("run", lambda db: run_file(db, API_SAE), refused=True),
]


def _duckdb_checksum(block: bytes) -> int:
    """DuckDB's block checksum (storage/checksum.cpp) for a multiple of 8 bytes."""
    result = 5381
    for (word,) in struct.iter_unpack("<Q", block):
        result ^= (word * 0xBF58476D1CE4E5B9) & 0xFFFF_FFFF_FFFF_FFFF
    return result


def _storage_version(data: bytes, version: int) -> bytes:
    """The file as a DuckDB of another storage version would have written its header."""
    out = bytearray(data)
    out[12:20] = version.to_bytes(8, "little")
    out[0:8] = _duckdb_checksum(bytes(out[8:4096])).to_bytes(8, "little")
    return bytes(out)


def _garbled_body(data: bytes) -> bytes:
    """Headers intact, everything after them noise."""
    return data[:12288] + _noise(len(data) - 12288) if len(data) > 12288 else _noise(99)


def _noise(n: int) -> bytes:
    """Garbage, the same on every run."""
    return random.Random(n).randbytes(n)


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "zero-length": lambda data: b"",
    "truncated-to-half": lambda data: data[: len(data) // 2],
    "truncated-to-100-bytes": lambda data: data[:100],
    "garbage": lambda data: _noise(max(len(data), 64)),
    "garbled-after-the-header": _garbled_body,
    "newer-duckdb-storage": lambda data: _storage_version(data, 5000),
    "ancient-duckdb-storage": lambda data: _storage_version(data, 1),
}
# Damage that only makes sense for a DuckDB database file.
DATABASE_ONLY = {"newer-duckdb-storage", "ancient-duckdb-storage", "garbled-after-the-header"}

runner = CliRunner()


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's content hash and mtime, the runs folder's included."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def fresh(api_db, tmp_path) -> Path:
    """A private copy of the API test index, alone in its folder."""
    db = tmp_path / "store" / "index.duckdb"
    db.parent.mkdir()
    return copy_index(api_db, db)


@pytest.fixture
def commands(tiny_model, tiny_sae, tiny_corpus, monkeypatch):
    """Each command that opens an index, as CLI arguments for a given file. `serve` never
    serves: uvicorn.run is replaced by a recorder."""
    served = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: served.append(app))
    index = [
        "--model", str(tiny_model), "--sae", str(tiny_sae), "--corpus", str(tiny_corpus),
        "--sae-id", "another", "--context-size", "24", "--quiet",
    ]  # fmt: skip
    return {
        "info": lambda db: ["info", "--db", str(db)],
        "serve": lambda db: ["serve", "--db", str(db), "--no-inference", "--port", "0"],
        "index": lambda db: ["index", "--db", str(db), *index],
    }, served


def run(args: list[str]):
    return runner.invoke(app, args)


def assert_refused(result, db: Path) -> str:
    """One line, `error:` first, naming the file; exit code 2; no traceback."""
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert db.name in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_damaged_file(kind: Kind, damage: str, fresh: Path, commands):
    if damage in DATABASE_ONLY and kind.name == "wal":
        pytest.skip("damage to a DuckDB database header")
    kind.make(fresh)
    target = kind.locate(fresh)
    target.write_bytes(DAMAGE[damage](target.read_bytes()))
    before = snapshot(fresh.parent)
    argv, served = commands
    for command, args in argv.items():
        if not kind.refused and command == "index":
            continue  # a recovered WAL is an interrupted run: resuming it is test_resume's
        if kind.name == "run" and command == "index":
            continue  # indexing another SAE never opens this run's file
        result = run(args(fresh))
        if kind.refused:
            assert_refused(result, fresh)
            assert not served
        else:
            assert result.exit_code == 0, (command, result.output, result.exception)
            assert "Traceback" not in result.output
            assert served or command != "serve"
        assert snapshot(fresh.parent) == before, f"{command} changed a file ({damage} {kind.name})"


def refused_by_all(db: Path, commands, expect: str) -> None:
    """Every command refuses `db` in one line saying `expect`, and changes no file."""
    before = snapshot(db.parent)
    for args in commands[0].values():
        line = assert_refused(run(args(db)), db)
        assert expect in line, line
        assert snapshot(db.parent) == before


def test_newer_saedex_schema(fresh: Path, commands):
    con = duckdb.connect(str(fresh))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    refused_by_all(fresh, commands, "schema version 99")


def test_duckdb_file_that_is_not_an_index(tmp_path, commands):
    db = tmp_path / "store" / "notes.duckdb"
    db.parent.mkdir()
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE notes AS SELECT 'mine' AS note")
    con.close()
    refused_by_all(db, commands, "not a saedex index")


def test_missing_file_and_directory(tmp_path, commands):
    argv = commands[0]
    line = assert_refused(run(argv["info"](tmp_path / "nowhere.duckdb")), tmp_path / "nowhere")
    assert "not found" in line
    assert "not found" in assert_refused(run(argv["serve"](tmp_path / "nowhere.duckdb")), tmp_path)
    assert not (tmp_path / "nowhere.duckdb").exists()
    line = assert_refused(run(argv["index"](tmp_path / "no-folder" / "i.duckdb")), tmp_path)
    assert "no-folder does not exist" in line and not (tmp_path / "no-folder").exists()
    for args in argv.values():
        assert "is a directory" in assert_refused(run(args(tmp_path)), tmp_path)


def test_index_being_written_by_another_process(fresh: Path, commands):
    with held_by_another_process(fresh) as pid:
        refused_by_all(fresh, commands, f"in use by another process (PID {pid}")
    after = run(commands[0]["info"](fresh))  # free again once the writer is gone
    assert after.exit_code == 0 and after.output.startswith("sae\t"), after.output


def test_flipped_bytes_in_every_block(api_db, tmp_path, monkeypatch):
    """Damage DuckDB only meets at a query (a garbled data block, one block at a time): the
    read commands still answer, or give one line and exit 2; they never write."""
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: None)
    db = tmp_path / "store" / "index.duckdb"
    db.parent.mkdir()
    target = run_file(copy_index(api_db, db), API_SAE)  # the run's rows live in its own file
    clean = target.read_bytes()
    con = duckdb.connect(str(target), read_only=True)  # a compacted run file has small blocks
    block = con.execute("SELECT block_size FROM pragma_database_size()").fetchall()[0][0]
    con.close()
    refused = 0
    for start in range(12288 + block // 2, len(clean), block):
        data = bytearray(clean)
        data[start : start + 16] = bytes(b ^ 0xFF for b in data[start : start + 16])
        target.write_bytes(data)
        before = snapshot(db.parent)
        for args in (["info", "--db", str(db)], ["serve", "--db", str(db), "--no-inference"]):
            result = run(args)
            if result.exit_code != 0:
                assert "is damaged" in assert_refused(result, db)
                refused += 1
            assert snapshot(db.parent) == before
    assert refused, "no block the commands read was damaged: the test tests nothing"
