"""What the benches measure a step by: seconds, the load beside them, the process's peak RSS
added by the step, and DuckDB's own peak buffer memory."""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> float:
    """Reset VmHWM to the current RSS (Linux: clear_refs 5); returns that RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_mb()


class DuckMemory:
    """Peak of DuckDB's own buffer memory (`duckdb_memory()`) on a connection, polled every
    20 ms from a thread (a cursor of the same database) while the block runs."""

    def __init__(self, con):
        self.cursor, self.peak, self._stop = con.cursor(), 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            used = self.cursor.execute(
                "SELECT sum(memory_usage_bytes) FROM duckdb_memory()"
            ).fetchone()[0]
            self.peak = max(self.peak, used or 0)

    def __enter__(self) -> DuckMemory:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.cursor.close()


class Step:
    """Seconds, load and peak memory over all calls of one wrapped IndexWriter method (or a
    function taking the writer first)."""

    def __init__(self, name: str):
        self.name, self.seconds, self.calls, self.peak_added_mb = name, 0.0, 0, 0.0
        self.duck_peak_mb = 0.0
        self.loads: list[float] = []

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            base = reset_peak()
            started = time.perf_counter()
            try:
                with DuckMemory(args[0].con) as duck:
                    return fn(*args, **kwargs)
            finally:
                self.duck_peak_mb = max(self.duck_peak_mb, duck.peak / 2**20)
                self.seconds += time.perf_counter() - started
                self.calls += 1
                self.peak_added_mb = max(self.peak_added_mb, rss_mb("VmHWM") - base)
                self.loads.append(os.getloadavg()[0])

        return timed

    def report(self) -> dict:
        load = max(self.loads) if self.loads else None
        return {
            "seconds": round(self.seconds, 2),
            "calls": self.calls,
            "peak_rss_added_mb": round(self.peak_added_mb, 1),
            "duckdb_peak_mb": round(self.duck_peak_mb, 1),
            "max_load_1min": load,
        }
