"""Opening DuckDB files, with the errors a user can act on instead of DuckDB's traceback."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from saedex.errors import SaedexError

_LOCK = re.compile(r"Conflicting lock is held in (.*?) \(PID (\d+)\)")


def open_db(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to the file; a lock held by another process is one line naming it."""
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        raise lock_error(path, exc) from None
    except duckdb.Error as exc:
        raise SaedexError(f"cannot open index {path}: {str(exc).splitlines()[0]}") from exc


def lock_error(path: str | Path, exc: duckdb.Error) -> SaedexError:
    """DuckDB's error opening `path`, as one line; a lock names the process holding it."""
    held = _LOCK.search(str(exc))
    if held is None:
        return SaedexError(f"cannot open index {path}: {str(exc).splitlines()[0]}")
    pid = int(held.group(2))
    return SaedexError(
        f"{path} is in use by another process (PID {pid}: {_command(pid, held.group(1))}); "
        "stop it first, or write to another file"
    )


def _command(pid: int, program: str) -> str:
    """The holder's command line (e.g. `saedex serve --db ...`), or its program if unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return program
    words = " ".join(w.decode(errors="replace") for w in raw.split(b"\0")).split()
    return " ".join(words)[:200] or program  # one line, however the command was written
