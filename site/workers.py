"""Spawned worker processes reporting through one queue (the exporter and the build share it).

Spawned, never forked: the parent may hold a DuckDB connection and a progress bar's thread.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Callable, Sequence

from saedex.errors import SaedexError

Emit = Callable[..., None]


def spawn_context():
    return mp.get_context("spawn")


def run_workers(
    target: Callable[..., None],
    args_per_worker: Sequence[tuple],
    on_result: Emit,
    what: str,
) -> None:
    """Run `target(*args, emit)` in one process per args tuple; each `emit(*payload)` in a
    worker calls `on_result(*payload)` here. A worker's exception is raised as one line."""
    results = spawn_context().Queue()
    procs = [
        spawn_context().Process(target=_main, args=(target, args, results), daemon=True)
        for args in args_per_worker
    ]
    for proc in procs:
        proc.start()
    try:
        _follow(procs, results, on_result, what)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


def _main(target: Callable[..., None], args: tuple, results) -> None:
    try:
        target(*args, lambda *payload: results.put(("result", payload)))
    except Exception as exc:  # the parent raises it
        results.put(("error", (f"{exc.__class__.__name__}: {exc}",)))
        return
    results.put(("done", ()))


def _follow(procs: list, results, on_result: Emit, what: str) -> None:
    done = 0
    while done < len(procs):
        try:
            kind, payload = results.get(timeout=1.0)
        except queue.Empty:
            codes = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if codes:
                raise SaedexError(f"a {what} worker died (exit code {codes[0]})") from None
            continue
        if kind == "result":
            on_result(*payload)
        elif kind == "done":
            done += 1
        else:
            raise SaedexError(f"{what} failed: {payload[0]}")
