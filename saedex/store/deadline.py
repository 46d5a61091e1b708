"""Deadlines for store queries: a caller's DuckDB cursors, interrupted when its time is up.

The API opens a Deadline around each GraphQL operation. It lives in a context variable, so
the worker threads that run the reader's calls (anyio copies the context into them) see it,
and `IndexReader._rows` runs each query inside `interruptible(cursor)`. At the deadline every
cursor still running is interrupted (DuckDB stops within milliseconds and frees its thread)
and queries that start later are refused, so one slow request cannot hold the server's
threads. Without a deadline (the site exporter, scripts) nothing changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import duckdb

from saedex.errors import SaedexError

TIMEOUT = "TIMEOUT"

_current: ContextVar[Deadline | None] = ContextVar("saedex_store_deadline", default=None)


class QueryTimeout(SaedexError):
    """A query ran past its deadline and was interrupted; `extensions` carries the API code."""

    def __init__(self, seconds: float):
        super().__init__(
            f"the query ran past the server's time limit of {seconds:g} s and was stopped; "
            "ask for fewer items or narrower filters"
        )
        self.extensions = {"code": TIMEOUT}


class Deadline:
    """The cursors of one caller, and whether its time is up."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._cursors: set[duckdb.DuckDBPyConnection] = set()
        self._lock = threading.Lock()

    def expire(self) -> None:
        """Interrupt every running query; later ones refuse to start."""
        with self._lock:
            self.expired = True
            running = list(self._cursors)
        for cursor in running:
            cursor.interrupt()

    @contextmanager
    def applied(self) -> Iterator[Deadline]:
        """Make this the deadline of queries run from this context (and threads it starts)."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    @contextmanager
    def tracking(self, cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
        with self._lock:
            if self.expired:
                raise QueryTimeout(self.seconds)
            self._cursors.add(cursor)
        try:
            yield
        except duckdb.InterruptException as exc:
            if self.expired:
                raise QueryTimeout(self.seconds) from exc
            raise
        finally:
            with self._lock:
                self._cursors.discard(cursor)


@contextmanager
def interruptible(cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run a query on `cursor` under the current deadline, if there is one."""
    deadline = _current.get()
    if deadline is None:
        yield
        return
    with deadline.tracking(cursor):
        yield
