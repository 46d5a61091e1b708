"""The catalog of runs: which run file holds each SAE's complete index, and which is in progress.

An index is its base file (`index.duckdb`: schema metadata, and the runs of single-file indexes
written before runs had files of their own) plus a folder beside it, `index.duckdb.runs/`, with
one DuckDB file per run and `catalog.json`. A run file is written by one indexer and never
changed once the catalog calls it complete, so any number of readers attach it read-only while
other runs are being indexed. See docs/schema.md, "Layout".

The catalog is a small JSON file replaced atomically (write, fsync, rename) under an exclusive
lock on `.lock`; readers need no lock and see the old catalog or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CATALOG_FILE = "catalog.json"
CATALOG_FORMAT = 1


def runs_dir(db: Path) -> Path:
    """The folder of run files beside the base file."""
    return db.with_name(db.name + ".runs")


@dataclass(frozen=True)
class RunFiles:
    """One SAE's files: the complete run readers see, and a run being written (if any)."""

    complete: str | None = None
    pending: str | None = None


class Catalog:
    """Reads and updates `<db>.runs/catalog.json`."""

    def __init__(self, db: Path):
        self.dir = runs_dir(Path(db))
        self.path = self.dir / CATALOG_FILE

    def stamp(self) -> tuple[int, int, int] | None:
        """Changes whenever the catalog is replaced (readers poll it; a stat is cheap)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def runs(self) -> dict[str, RunFiles]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {sae_id: RunFiles(**files) for sae_id, files in raw["runs"].items()}

    def complete(self) -> dict[str, Path]:
        """The run file of every SAE whose run is complete."""
        return {k: self.dir / f.complete for k, f in self.runs().items() if f.complete}

    def pending(self, sae_id: str) -> Path | None:
        files = self.runs().get(sae_id)
        return self.dir / files.pending if files and files.pending else None

    def begin(self, sae_id: str) -> Path:
        """The file a new run of `sae_id` writes to (recorded as pending; readers ignore it)."""
        with self._update() as runs:
            old = runs.get(sae_id, RunFiles())
            if old.pending:
                _remove(self.dir / old.pending)
            name = f"{_safe(sae_id)}-{secrets.token_hex(4)}.duckdb"
            runs[sae_id] = RunFiles(old.complete, name)
        return self.dir / name

    def publish(self, sae_id: str) -> None:
        """Make the pending run the one readers see; the run it replaces is deleted (readers
        that still have it attached keep reading it until they refresh)."""
        with self._update() as runs:
            old = runs[sae_id]
            runs[sae_id] = RunFiles(old.pending, None)
        if old.complete:
            _remove(self.dir / old.complete)

    def abandon(self, sae_id: str) -> None:
        """Forget a pending run (and its file)."""
        with self._update() as runs:
            old = runs.get(sae_id, RunFiles())
            if old.complete:
                runs[sae_id] = RunFiles(old.complete, None)
            else:
                runs.pop(sae_id, None)
        if old.pending:
            _remove(self.dir / old.pending)

    @contextlib.contextmanager
    def _update(self) -> Iterator[dict[str, RunFiles]]:
        """Read-modify-write under an exclusive lock, replaced atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            runs = self.runs()
            yield runs
            body = {
                "format": CATALOG_FORMAT,
                "runs": {k: v.__dict__ for k, v in sorted(runs.items())},
            }
            tmp = self.dir / f".catalog-{os.getpid()}.tmp"
            with tmp.open("w") as fh:
                json.dump(body, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _safe(sae_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", sae_id)[:64] or "run"


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
