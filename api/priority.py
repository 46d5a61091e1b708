"""CPU priority: live inference first, index queries after.

On a machine with few cores, index queries (DuckDB threads, the event loop's Python work) can
keep every core busy, and a live `activeFeatures` forward pass in the model worker process then
gets a small share of the CPU: measured on 2 cores with 8 clients, its p99 was seconds although
the forward alone takes tens of milliseconds. The kernel's scheduler already knows how to share
cores by weight, so the server lowers its own priority (a higher `nice`) AFTER starting the model
worker at the original priority: whenever the model runs, it gets most of the CPU; when it is
idle, index queries get all of it, so their throughput barely changes.

Only raising niceness is allowed without privileges, which is why the order matters: the worker
must be started before the server lowers itself, or it would inherit the lower priority.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TASKS = Path("/proc/self/task")


def lower_priority(increment: int) -> None:
    """Add `increment` to the niceness of every thread of this process (0: leave it).

    On Linux niceness is per thread (setpriority on a pid changes that one thread, and a new
    thread inherits its creator's), so each existing thread is changed; threads started later
    inherit it. Elsewhere setpriority applies to the whole process."""
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    tids = [int(p.name) for p in TASKS.iterdir()] if TASKS.is_dir() else [0]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            now = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, now + increment))


def niceness(pid: int = 0) -> dict[int, int]:
    """The niceness of each thread of a process (Linux; {pid: nice} elsewhere), for tests."""
    tasks = Path(f"/proc/{pid or 'self'}/task")
    if not tasks.is_dir():
        return {pid: os.getpriority(os.PRIO_PROCESS, pid)}
    return {int(p.name): os.getpriority(os.PRIO_PROCESS, int(p.name)) for p in tasks.iterdir()}
