"""Opening DuckDB files, hardened: every way a file can be wrong is one SaedexError line that
names the file and says what to do, and a refused open writes nothing.

DuckDB reports a damaged file in several shapes, some only at the first query that reads a
missing block (a truncated copy opens fine, then fails mid-request). The cheap checks here
(header, size against the block count, lock, storage version, whose tables) catch those before
any query runs, so `info`, `serve` and `index` fail at the door instead of with a traceback.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import duckdb

from saedex.errors import SaedexError

# DuckDB's file starts with three 4 KiB headers (main + two database headers); the main one
# holds an 8-byte checksum, then the magic bytes.
_HEADERS = 3 * 4096
_MAGIC = b"DUCK"
_MAGIC_AT = 8
# Tables any saedex index has, whatever its layout (the store keeps these names readable).
_INDEX_TABLES = {"meta", "saes"}
_LOCK = re.compile(r"Conflicting lock is held in (.*?) \(PID (\d+)\)")
_VERSION = re.compile(r"storage version number (\d+), but we can only read (.*?)\.")
_REINDEX = "restore it from a backup, or index again into a new file"


def open_db(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to the index at `path`; read-write creates it when missing."""
    path = Path(path)
    problem = _file_problem(path, read_only)
    if problem is None:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as exc:
            problem = _explain(str(exc))
        else:
            try:
                problem = _opened_problem(con, path)
            except duckdb.Error as exc:
                problem = _explain(str(exc))
            if problem is None:
                return con
            con.close()
    raise SaedexError(f"{path} {problem}")


def limit_memory(con: duckdb.DuckDBPyConnection, memory_limit: str | None) -> None:
    """DuckDB's memory limit on `con` (IndexConfig.memory_limit: "4GB"); None keeps DuckDB's
    own (80% of RAM). Past it DuckDB spills to its temporary folder."""
    if memory_limit is not None:
        con.execute(f"SET memory_limit = '{memory_limit.replace(chr(39), '')}'")


def failure(path: str | Path | None, error: Exception) -> str:
    """A DuckDB error raised after the open (a damaged block met by a query) as one line
    naming the file, for commands that report it and exit."""
    return f"{path or 'the index'} {_explain(str(error))}"


def is_duckdb_error(error: BaseException) -> bool:
    """Without importing duckdb (the CLI stays quick to start for commands that never use it)."""
    duckdb_module = sys.modules.get("duckdb")
    return duckdb_module is not None and isinstance(error, duckdb_module.Error)


def _file_problem(path: Path, read_only: bool) -> str | None:
    """What is wrong with the file before DuckDB sees it (DuckDB's own messages for these are
    either misleading or multi-line)."""
    if not path.exists():
        if read_only:
            return "not found: check the path (`saedex index` creates an index)"
        if not path.parent.is_dir():
            return f"cannot be created: folder {path.parent} does not exist (create it first)"
        return None
    if path.is_dir():
        return "is a directory, not an index file"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes), not an index: delete it, or pass another file"
    with path.open("rb") as fh:
        head = fh.read(_MAGIC_AT + len(_MAGIC))
    if head[_MAGIC_AT:] != _MAGIC:
        return "is not a DuckDB file (no DuckDB header): pass an index written by `saedex index`"
    if size < _HEADERS:
        return f"is truncated ({size:,} bytes, shorter than DuckDB's headers): {_REINDEX}"
    return None


def _opened_problem(con: duckdb.DuckDBPyConnection, path: Path) -> str | None:
    """What is wrong with a file DuckDB accepted: cut short, or not a saedex index."""
    # used blocks, not total: free blocks at the end are cut off the file at a checkpoint
    # (an index overwritten twice is shorter than its total_blocks), used ones never are
    block_size, used_blocks = con.execute(
        "SELECT block_size, used_blocks FROM pragma_database_size() LIMIT 1"
    ).fetchone()
    expected = _HEADERS + block_size * used_blocks
    size = path.stat().st_size
    if size < expected:
        return f"is truncated ({size:,} of {expected:,} bytes): {_REINDEX}"
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if tables and not tables & _INDEX_TABLES:
        return (
            "is a DuckDB database but not a saedex index (no saes or meta table): pass an index "
            "written by `saedex index`, or a new file"
        )
    return None


def _explain(message: str) -> str:
    """DuckDB's error as one line that says what to do."""
    if held := _LOCK.search(message):
        pid = int(held.group(2))
        return (
            f"is in use by another process (PID {pid}: {_command(pid, held.group(1))}): wait "
            "for it to finish or stop it, then try again (or use another file)"
        )
    if version := _VERSION.search(message):
        return (
            f"was written by a DuckDB this saedex cannot read (storage version {version[1]}; "
            f"it reads {version[2].removeprefix('storage versions ')}): open it with the "
            "saedex that wrote it, or index again into a new file"
        )
    if "checksum" in message or "Corrupt database" in message:
        return f"is damaged (DuckDB found a checksum mismatch): {_REINDEX}"
    if "not a valid DuckDB database" in message:
        return "is not a DuckDB file: pass an index written by `saedex index`"
    if "Could not read enough bytes" in message:
        return f"is truncated (DuckDB read past its end): {_REINDEX}"
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    if "Out of Memory Error" in message:
        return (
            f"ran out of DuckDB memory ({first.removeprefix('Out of Memory Error: ')}): raise "
            "--memory-limit or free memory, then run the same command again (a run resumes)"
        )
    return f"cannot be opened ({first}): is it an index written by `saedex index`?"


def _command(pid: int, program: str) -> str:
    """The holder's command line (e.g. `saedex serve --db ...`), or its program if unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return program
    words = " ".join(w.decode(errors="replace") for w in raw.split(b"\0")).split()
    return " ".join(words)[:200] or program  # one line, however the command was written
