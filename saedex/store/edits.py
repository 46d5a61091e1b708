"""The user-edit store: what people write while the index is served (explanations, for now).

The bulk index is DuckDB, which allows one read-write process per file, and is rebuilt by
`saedex index --overwrite`. What users write by hand must survive both, and must be writable by
the server (mutations) and the CLI (imports) at the same time. So it lives beside the index in
its own SQLite file (`index.duckdb` -> `index.edits.sqlite`, see `edits_path`), in WAL mode:
readers never wait for writers, writers queue on a busy timeout, every write is one
transaction (a kill leaves the last committed state), and `synchronous=FULL` makes a commit
durable. The file has its own schema version (`PRAGMA user_version`) and migrations, applied in
one transaction after a backup copy of the older file is taken.

Explanations are tied to the SAE they explain by its weights fingerprint: the caller passes the
SAE's current fingerprint, and an explanation made for other weights reads back with
`current=False` (kept, never deleted by a re-index).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from saedex.data import Explanation
from saedex.errors import SaedexError

BUSY_TIMEOUT_S = 30.0
SOURCES = ("human", "import", "model")
MAX_TEXT_CHARS = 2000

# Each entry moves the file from version i to i + 1; applied in order, in one transaction.
MIGRATIONS: list[list[str]] = [
    # 0 -> 1: explanations, one row per (SAE, feature, text, author, method).
    [
        """CREATE TABLE explanations (
            id INTEGER PRIMARY KEY,
            sae_id TEXT NOT NULL,
            feature INTEGER NOT NULL,
            text TEXT NOT NULL,
            source TEXT NOT NULL,
            author TEXT,
            method TEXT,
            scores TEXT NOT NULL DEFAULT '{}',
            sae_fingerprint TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        """CREATE UNIQUE INDEX explanations_identity ON explanations
           (sae_id, feature, text, ifnull(author, ''), ifnull(method, ''))""",
        "CREATE INDEX explanations_feature ON explanations (sae_id, feature)",
    ],
    # 1 -> 2: full-text search over the text, by word (unicode61) and by substring (trigram),
    # kept in step with the table by triggers.
    [
        "CREATE VIRTUAL TABLE explanation_words USING fts5("
        "text, content='explanations', content_rowid='id')",
        "CREATE VIRTUAL TABLE explanation_trigrams USING fts5("
        "text, content='explanations', content_rowid='id', tokenize='trigram')",
        *[
            f"""CREATE TRIGGER explanations_{name}_{event} AFTER {event.upper()} ON explanations
                BEGIN {body} END"""
            for name in ("words", "trigrams")
            for event, body in (
                (
                    "insert",
                    f"INSERT INTO explanation_{name}(rowid, text) VALUES (new.id, new.text);",
                ),
                (
                    "delete",
                    f"INSERT INTO explanation_{name}(explanation_{name}, rowid, text) "
                    "VALUES ('delete', old.id, old.text);",
                ),
                (
                    "update",
                    f"INSERT INTO explanation_{name}(explanation_{name}, rowid, text) "
                    f"VALUES ('delete', old.id, old.text); "
                    f"INSERT INTO explanation_{name}(rowid, text) VALUES (new.id, new.text);",
                ),
            )
        ],
        "INSERT INTO explanation_words(explanation_words) VALUES ('rebuild')",
        "INSERT INTO explanation_trigrams(explanation_trigrams) VALUES ('rebuild')",
    ],
]
EDITS_SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    "id, sae_id, feature, text, source, author, method, scores, sae_fingerprint, "
    "created_at, updated_at"
)


def edits_path(index_path: str | Path) -> Path:
    """Where an index's user edits live: beside it, `<stem>.edits.sqlite`."""
    index_path = Path(index_path)
    return index_path.with_name(f"{index_path.stem}.edits.sqlite")


@dataclass(frozen=True)
class NewExplanation:
    """An explanation to add (the store fills in id and times)."""

    feature: int
    text: str
    source: str = "human"
    author: str | None = None
    method: str | None = None
    scores: dict | None = None


@dataclass(frozen=True)
class SearchHit:
    feature: int
    text: str
    whole_word: bool  # matched as whole word(s), not only inside a word


class EditStore:
    """The user-edit database of one index. Safe to share between threads (a connection per
    thread) and between processes (SQLite WAL locking)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        migrate(self.path)

    # -- connections ---------------------------------------------------------------------------

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = connect(self.path)
            self._local.con = con
            with self._lock:
                self._connections.append(con)
        return con

    def close(self) -> None:
        with self._lock:
            for con in self._connections:
                con.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> EditStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self):
        """A write transaction: BEGIN IMMEDIATE takes the write lock up front (waiting up to
        the busy timeout), so two writers never deadlock upgrading a read lock."""
        return _Transaction(self._con())

    # -- writes --------------------------------------------------------------------------------

    def add(self, sae_id: str, new: NewExplanation, fingerprint: str | None) -> Explanation:
        """Add one explanation; an identical one (feature, text, author, method) is returned
        as it is instead of being added twice."""
        _check(new)
        with self._write() as con:
            row_id = _insert(con, sae_id, new, fingerprint)
            if row_id is None:
                row_id = _identical(con, sae_id, new)
        return self.get(row_id, fingerprint)

    def add_many(
        self, sae_id: str, rows: Iterable[NewExplanation], fingerprint: str | None
    ) -> tuple[int, int]:
        """Add many in one transaction (all or nothing); returns (added, already there)."""
        added = skipped = 0
        with self._write() as con:
            for new in rows:
                _check(new)
                if _insert(con, sae_id, new, fingerprint) is None:
                    skipped += 1
                else:
                    added += 1
        return added, skipped

    def update(
        self,
        explanation_id: int,
        text: str | None = None,
        author: str | None = None,
        fingerprint: str | None = None,
    ) -> Explanation | None:
        """Edit the text (and author) of an explanation; None if there is no such id. An edit
        re-ties it to the SAE's current weights, since the person checked it against them."""
        with self._write() as con:
            old = con.execute(
                f"SELECT {_COLUMNS} FROM explanations WHERE id = ?", [explanation_id]
            ).fetchone()
            if old is None:
                return None
            new_text = old[3] if text is None else text
            _check(NewExplanation(old[2], new_text, old[4]))
            try:
                con.execute(
                    "UPDATE explanations SET text = ?, author = ?, sae_fingerprint = ?, "
                    "updated_at = ? WHERE id = ?",
                    [new_text, old[5] if author is None else author,
                     fingerprint or old[8], _now(), explanation_id],
                )  # fmt: skip
            except sqlite3.IntegrityError as exc:
                raise SaedexError(
                    f"feature {old[2]} already has this explanation by the same author"
                ) from exc
        return self.get(explanation_id, fingerprint)

    def set_scores(self, explanation_id: int, scores: dict[str, float]) -> None:
        """Merge scores into an explanation's (scorer name -> value)."""
        with self._write() as con:
            row = con.execute(
                "SELECT scores FROM explanations WHERE id = ?", [explanation_id]
            ).fetchone()
            if row is None:
                raise SaedexError(f"no explanation with id {explanation_id}")
            merged = {**json.loads(row[0]), **scores}
            con.execute(
                "UPDATE explanations SET scores = ?, updated_at = ? WHERE id = ?",
                [json.dumps(merged, sort_keys=True), _now(), explanation_id],
            )

    def delete(self, explanation_id: int) -> bool:
        with self._write() as con:
            cur = con.execute("DELETE FROM explanations WHERE id = ?", [explanation_id])
            return cur.rowcount > 0

    # -- reads ---------------------------------------------------------------------------------

    def get(self, explanation_id: int, fingerprint: str | None = None) -> Explanation | None:
        row = (
            self._con()
            .execute(f"SELECT {_COLUMNS} FROM explanations WHERE id = ?", [explanation_id])
            .fetchone()
        )
        return None if row is None else _explanation(row, fingerprint)

    def for_features(
        self, sae_id: str, features: Iterable[int], fingerprint: str | None
    ) -> dict[int, list[Explanation]]:
        """Each feature's explanations: current ones first, then best scored, then newest."""
        wanted = sorted(set(features))
        out: dict[int, list[Explanation]] = defaultdict(list)
        for chunk in _chunks(wanted, 500):
            rows = self._con().execute(
                f"SELECT {_COLUMNS} FROM explanations WHERE sae_id = ? AND feature IN "
                f"({','.join('?' * len(chunk))}) ORDER BY feature, id",
                [sae_id, *chunk],
            )
            for row in rows:
                out[row[2]].append(_explanation(row, fingerprint))
        return {f: sorted(out.get(f, []), key=_display_order) for f in wanted}

    def all(self, sae_id: str, fingerprint: str | None) -> Iterator[Explanation]:
        """Every explanation of an SAE, by feature then id (for export)."""
        rows = self._con().execute(
            f"SELECT {_COLUMNS} FROM explanations WHERE sae_id = ? ORDER BY feature, id",
            [sae_id],
        )
        for row in rows:
            yield _explanation(row, fingerprint)

    def explained_features(self, sae_id: str, fingerprint: str | None) -> list[int]:
        """Features with at least one current explanation."""
        rows = self._con().execute(
            "SELECT DISTINCT feature FROM explanations WHERE sae_id = ? "
            "AND (? IS NULL OR sae_fingerprint IS NULL OR sae_fingerprint = ?) ORDER BY feature",
            [sae_id, fingerprint, fingerprint],
        )
        return [r[0] for r in rows]

    def search(
        self, sae_id: str, query: str, fingerprint: str | None, limit: int = 20
    ) -> list[SearchHit]:
        """Features whose current explanations contain `query`: whole-word matches first (by
        BM25), then matches inside words; one hit per feature, its best explanation."""
        hits: dict[int, SearchHit] = {}
        for whole_word, sql, match in (
            (True, "explanation_words", _phrase(query)),
            (False, "explanation_trigrams", _phrase(query) if len(query) >= 3 else None),
        ):
            for feature, text in self._match(sae_id, sql, match, query, fingerprint, limit):
                hits.setdefault(feature, SearchHit(feature, text, whole_word))
                if len(hits) >= limit:
                    return list(hits.values())
        return list(hits.values())

    def _match(self, sae_id, table, match, query, fingerprint, limit) -> list[tuple[int, str]]:
        current = "(? IS NULL OR e.sae_fingerprint IS NULL OR e.sae_fingerprint = ?)"
        if match is None:  # shorter than a trigram: a scan, bounded by the SAE's rows
            sql = (
                f"SELECT e.feature, e.text FROM explanations e WHERE e.sae_id = ? AND {current} "
                "AND instr(lower(e.text), lower(?)) > 0 ORDER BY e.feature LIMIT ?"
            )
            params = [sae_id, fingerprint, fingerprint, query, limit * 4]
        else:
            sql = (
                f"SELECT e.feature, e.text FROM {table} m JOIN explanations e ON e.id = m.rowid "
                f"WHERE {table} MATCH ? AND e.sae_id = ? AND {current} "
                "ORDER BY m.rank, e.feature LIMIT ?"
            )
            params = [match, sae_id, fingerprint, fingerprint, limit * 4]
        try:
            return self._con().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:  # an FTS query it cannot parse
            raise SaedexError(f"cannot search for {query!r}: {exc}") from exc

    def counts(self, sae_id: str) -> dict[str, int]:
        rows = self._con().execute(
            "SELECT source, count(*) FROM explanations WHERE sae_id = ? GROUP BY source",
            [sae_id],
        )
        return dict(rows.fetchall())


# -- the file --------------------------------------------------------------------------------


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, durable commits."""
    con = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    con.execute("PRAGMA synchronous = FULL")
    return con


def migrate(path: Path) -> int:
    """Create or upgrade the file to EDITS_SCHEMA_VERSION; returns the version it had.

    A newer file than this saedex knows is refused untouched. Before upgrading an existing
    file, a copy is kept as `<name>.v<old>.bak`; the upgrade itself is one transaction.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    con = connect(path)
    try:
        version = _version(con)
        if version > EDITS_SCHEMA_VERSION:
            raise SaedexError(
                f"{path}: edits schema version {version} is newer than this saedex reads "
                f"({EDITS_SCHEMA_VERSION}); upgrade saedex"
            )
        if con.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise SaedexError(f"{path}: cannot switch the edits database to WAL mode")
        if version == EDITS_SCHEMA_VERSION:
            return version
        if version > 0:  # a copy first (SQLite's backup cannot run inside the transaction)
            backup(con, path.with_name(f"{path.name}.v{version}.bak"))
        with _Transaction(con):
            version = _version(con)  # another process may have migrated meanwhile
            for step in range(version, EDITS_SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    con.execute(statement)
            con.execute(f"PRAGMA user_version = {EDITS_SCHEMA_VERSION}")
        return version
    except sqlite3.DatabaseError as exc:
        raise SaedexError(f"{path}: not a usable edits database ({exc})") from exc
    finally:
        con.close()


def backup(con: sqlite3.Connection, target: Path) -> Path:
    """A consistent copy of the database (SQLite's online backup: safe while others write).
    This is how a user backs the edits up, too (see docs/schema.md)."""
    out = sqlite3.connect(str(target))
    try:
        con.backup(out)
    finally:
        out.close()
    return target


def _version(con: sqlite3.Connection) -> int:
    return con.execute("PRAGMA user_version").fetchone()[0]


class _Transaction:
    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type, exc, tb) -> None:
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")


# -- rows ------------------------------------------------------------------------------------


def _check(new: NewExplanation) -> None:
    text = new.text.strip() if isinstance(new.text, str) else ""
    if not text:
        raise SaedexError(f"feature {new.feature}: an explanation's text cannot be empty")
    if len(text) > MAX_TEXT_CHARS:
        raise SaedexError(
            f"feature {new.feature}: explanation has {len(text)} characters "
            f"(at most {MAX_TEXT_CHARS})"
        )
    if new.source not in SOURCES:
        raise SaedexError(f"unknown explanation source {new.source!r} (one of {SOURCES})")
    if not isinstance(new.feature, int) or new.feature < 0:
        raise SaedexError(f"feature index must be a non-negative integer, got {new.feature!r}")


def _insert(con, sae_id: str, new: NewExplanation, fingerprint: str | None) -> int | None:
    """The new row's id, or None when an identical explanation is already there."""
    now = _now()
    cur = con.execute(
        "INSERT INTO explanations (sae_id, feature, text, source, author, method, scores, "
        "sae_fingerprint, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        [sae_id, new.feature, new.text.strip(), new.source, new.author, new.method,
         json.dumps(new.scores or {}, sort_keys=True), fingerprint, now, now],
    )  # fmt: skip
    return cur.lastrowid if cur.rowcount else None


def _identical(con, sae_id: str, new: NewExplanation) -> int:
    return con.execute(
        "SELECT id FROM explanations WHERE sae_id = ? AND feature = ? AND text = ? "
        "AND ifnull(author, '') = ifnull(?, '') AND ifnull(method, '') = ifnull(?, '')",
        [sae_id, new.feature, new.text.strip(), new.author, new.method],
    ).fetchone()[0]


def _explanation(row: tuple, fingerprint: str | None) -> Explanation:
    stored = row[8]
    current = fingerprint is None or stored is None or stored == fingerprint
    return Explanation(
        id=row[0],
        sae_id=row[1],
        feature=row[2],
        text=row[3],
        source=row[4],
        author=row[5],
        method=row[6],
        scores=json.loads(row[7]),
        sae_fingerprint=stored,
        current=current,
        created_at=datetime.fromisoformat(row[9]),
        updated_at=datetime.fromisoformat(row[10]),
    )


def _display_order(e: Explanation) -> tuple:
    best = max(e.scores.values(), default=-1.0)
    return (not e.current, e.source != "human", -best, -e.id)


def _phrase(query: str) -> str:
    """The query as one FTS5 phrase (its words in order), quotes escaped."""
    return '"' + query.replace('"', '""') + '"'


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
