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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from saedex.errors import SaedexError
from saedex.store import bulk

CATALOG_FILE = "catalog.json"
CATALOG_FORMAT = 1
# Replaced run files wait this long before they are deleted: a reader reads a compacted run's
# Parquet files by path, so a run it still reads (until its next refresh, at most
# views.POLL_S later, plus the query in flight) must still be there.
RETIRED_FILE = "retired.json"
RETIRE_S = 600.0


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

    def _raw(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"format": CATALOG_FORMAT, "runs": {}}

    def runs(self) -> dict[str, RunFiles]:
        return _runs(self._raw())

    def derived(self) -> dict[str, DerivedFile]:
        """Every derived file (saedex/store/derived.py), current or not."""
        return _derived(self._raw())

    def snapshot(self) -> tuple[dict[str, Path], dict[str, Path]]:
        """What readers see, from one read of the catalog: each SAE's complete run file, and
        the derived files whose input runs are all still those (a re-indexed input hides them)."""
        raw = self._raw()
        runs = _runs(raw)
        complete = {k: self.dir / f.complete for k, f in runs.items() if f.complete}
        derived = {
            key: self.dir / entry.file
            for key, entry in _derived(raw).items()
            if entry.inputs == input_names(runs, entry.inputs)
        }
        return complete, derived

    def publish_derived(self, key: str, name: str, inputs: dict[str, str]) -> None:
        """Make `name` the derived file of `key`, computed from the runs named in `inputs`;
        refused (SaedexError) if one of those runs was replaced meanwhile. The file it
        replaces is deleted."""
        with self._update_raw() as raw:
            current = input_names(_runs(raw), inputs)
            if current != inputs:
                changed = ", ".join(sorted(k for k in inputs if current[k] != inputs[k]))
                raise SaedexError(
                    f"SAE {changed} was indexed again meanwhile: run the command again"
                )
            derived = raw.setdefault("derived", {})
            old = derived.get(key)
            derived[key] = {"file": name, "inputs": inputs}
        if old and old["file"] != name:
            _remove(self.dir / old["file"])

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
            name = new_file_name(sae_id)
            runs[sae_id] = RunFiles(old.complete, name)
            self._retire([])  # what was retired long enough ago goes
        return self.dir / name

    def publish(self, sae_id: str) -> None:
        """Make the pending run the one readers see; the run it replaces is retired (deleted
        `RETIRE_S` later: readers that still read it, until their next refresh, keep working)."""
        with self._update() as runs:
            old = runs[sae_id]
            runs[sae_id] = RunFiles(old.pending, None)
            self._retire([old.complete] if old.complete else [])

    def _retire(self, names: list[str]) -> None:
        """Record replaced run files in `retired.json` and delete those retired `RETIRE_S`
        ago or more (called under the catalog's lock)."""
        path = self.dir / RETIRED_FILE
        try:
            retired = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            retired = []
        now = time.time()
        retired += [{"file": name, "at": now} for name in names]
        for entry in [e for e in retired if now - e["at"] >= RETIRE_S]:
            _remove(self.dir / entry["file"])
            retired.remove(entry)
        tmp = path.with_name(f".retired-{os.getpid()}.tmp")
        tmp.write_text(json.dumps(retired, indent=1))
        os.replace(tmp, path)

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
        """The runs, read-modify-written under the lock (derived entries kept as they are)."""
        with self._update_raw() as raw:
            runs = _runs(raw)
            yield runs
            raw["runs"] = {k: v.__dict__ for k, v in sorted(runs.items())}

    @contextlib.contextmanager
    def _update_raw(self) -> Iterator[dict]:
        """Read-modify-write under an exclusive lock, replaced atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            raw = self._raw()
            yield raw
            body = {"format": CATALOG_FORMAT, "runs": raw["runs"]}
            if raw.get("derived"):
                body["derived"] = dict(sorted(raw["derived"].items()))
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


@dataclass(frozen=True)
class DerivedFile:
    """Rows computed from complete runs (co-activations, matches across SAEs), in a file of
    their own; `inputs` names the run file each input SAE had then ("base": the base file)."""

    file: str
    inputs: dict[str, str]


def input_names(runs: dict[str, RunFiles], sae_ids) -> dict[str, str]:
    """The run file readers see for each SAE now ("base" when the base file holds it)."""
    return {k: (runs[k].complete if k in runs and runs[k].complete else "base") for k in sae_ids}


def new_file_name(stem: str) -> str:
    """A fresh file name in the runs folder (never reused, so readers never see a file change)."""
    return f"{_safe(stem)}-{secrets.token_hex(4)}.duckdb"


def _runs(raw: dict) -> dict[str, RunFiles]:
    return {sae_id: RunFiles(**files) for sae_id, files in raw["runs"].items()}


def _derived(raw: dict) -> dict[str, DerivedFile]:
    return {key: DerivedFile(**entry) for key, entry in raw.get("derived", {}).items()}


def _safe(sae_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", sae_id)[:64] or "run"


def _remove(path: Path) -> None:
    """A run file, its WAL and its Parquet tables (saedex.store.bulk)."""
    for p in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    bulk.remove(path)
