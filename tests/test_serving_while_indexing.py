"""A real server keeps answering while another SAE is indexed into its store, and shows the
new SAE once (and only once) it is complete, without a restart; replicas serve the same store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import build_tiny_sae, make_corpus_docs
from tests.test_resume import index_cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`saedex serve` in a session of its own, so that stop() ends its workers too."""
    port = free_port()
    cmd = [sys.executable, "-m", "saedex.cli", "serve", "--db", str(db), "--port", str(port)]
    cmd += ["--no-inference", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # workers each import the API stack: slow on a busy box
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/api/saes", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    stop(proc)
    raise AssertionError("server did not start")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server and its workers, SIGKILL if they linger."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by the supervisor


class ClientLoop(threading.Thread):
    """Lists the SAEs and reads a feature of each, over and over, counting what goes wrong."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop = url, threading.Event()
        self.requests, self.errors, self.seen = 0, [], {}

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    self.round(client)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def round(self, client: httpx.Client) -> None:
        saes = client.get("/api/saes")
        self.requests += 1
        if saes.status_code != 200:
            self.errors.append(saes.text)
            return
        for sae in saes.json():
            self.seen.setdefault(sae["id"], set()).add(sae["status"])
            got = client.get(f"/api/features/{sae['id']}/3")
            self.requests += 1
            if got.status_code != 200 or not got.json()["topExamples"]:
                self.errors.append(got.text[:200])


@pytest.fixture()
def store(tiny_model, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in make_corpus_docs(30, seed=3)))
    db = tmp_path / "store.duckdb"
    first = build_tiny_sae(tmp_path / "first", "topk")
    subprocess.run(index_cmd(tiny_model, first, corpus, db), check=True)
    return tiny_model, corpus, db, tmp_path


def test_new_sae_appears_while_serving_with_no_errors(store):
    model, corpus, db, tmp = store
    server, url = start_server(db)
    loop = ClientLoop(url)
    try:
        loop.start()
        second = build_tiny_sae(tmp / "second", "topk", seed=4)
        indexing = subprocess.run(index_cmd(model, second, corpus, db), capture_output=True)
        assert indexing.returncode == 0, indexing.stderr.decode()[-2000:]
        during = loop.requests
        deadline = time.monotonic() + 10
        while "second" not in loop.seen and time.monotonic() < deadline:
            time.sleep(0.1)
        loop.stop.set()
        loop.join()
    finally:
        stop(server)
    assert loop.errors == []
    assert during > 20  # the server was busy answering while the run went on
    assert loop.seen == {"first": {"complete"}, "second": {"complete"}}


@pytest.mark.parametrize("workers", [2])
def test_replicas_serve_the_store(store, workers):
    model, corpus, db, tmp = store
    server, url = start_server(db, "--workers", str(workers))
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(40):
                got = client.get("/api/features/first/3")
                assert got.status_code == 200 and got.json()["topExamples"]
            second = build_tiny_sae(tmp / "second", "topk", seed=4)
            subprocess.run(index_cmd(model, second, corpus, db), check=True)
            time.sleep(1.0)  # every worker polls the catalog at most every 0.5 s
            for _ in range(20):
                ids = {s["id"] for s in client.get("/api/saes").json()}
                assert ids == {"first", "second"}
    finally:
        stop(server)
