"""Live inference before index queries: the server lowers its own priority after starting the
model worker, which keeps the original one, loads no torch until used, and ends with the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="per-thread niceness is read from /proc (Linux)"
)

SERVER = """
import json, sys, threading, time
from saedex.api.app import server_engine
from saedex.api.priority import niceness
from saedex.config import ServeConfig
early = threading.Thread(target=time.sleep, args=(30,), daemon=True)
early.start()  # a thread that exists before: lowered too
engine = server_engine(ServeConfig(index_nice=int(sys.argv[1])), None)
late = threading.Thread(target=time.sleep, args=(30,), daemon=True)
late.start()  # a thread started after (DuckDB's, anyio's): inherits the lowered priority
(worker,) = engine._pool._processes
print(json.dumps({"server": list(niceness().values()), "worker": worker}), flush=True)
sys.stdin.readline()  # until the test has looked at the worker
"""


def start(nice: int) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(nice)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, json.loads(proc.stdout.readline())


def test_server_threads_lowered_worker_kept_and_torch_not_loaded():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    proc, seen = start(4)
    try:
        worker = seen["worker"]
        assert set(seen["server"]) == {min(19, base + 4)}
        from saedex.api.priority import niceness

        assert set(niceness(worker).values()) == {base}
        maps = Path(f"/proc/{worker}/maps").read_text()
        assert "libtorch" not in maps  # the model side loads on the first live request
    finally:
        proc.communicate("\n", timeout=30)


def test_nice_zero_changes_nothing():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    proc, seen = start(0)
    proc.communicate("\n", timeout=30)
    assert set(seen["server"]) == {base}


def test_worker_ends_when_the_server_is_killed():
    proc, seen = start(1)
    worker = seen["worker"]
    proc.send_signal(signal.SIGKILL)  # no cleanup runs: the worker must notice on its own
    proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    state = Path(f"/proc/{worker}/stat")
    assert not state.exists() or state.read_text().split()[2] == "Z", "worker outlived its server"
