"""`saedex index --ray`: shards on a local Ray cluster (loopback, 2 workers) merge into the same
index as a single process, also when a worker is killed mid-shard; partial shards are never
merged; a killed driver resumes from the finished shards."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from saedex import cli
from saedex.config import IndexConfig, RayConfig
from saedex.errors import SaedexError
from saedex.indexer.indexing import IndexJob, run_index
from saedex.indexer.sharding import shard_dir, shard_ranges, start_local_cluster
from saedex.store import bulk
from saedex.store.merge import Shard, create_shard, is_complete, merge_shard
from saedex.store.schema import RUN_TABLES
from saedex.store.views import connect
from saedex.store.writer import IndexWriter
from tests.conftest import build_tiny_sae, copy_index, make_corpus_docs, run_file

TIMING = {"started_at", "finished_at", "duration_s"}
NOT_INDEXED = {"coactivations"}  # run tables that later commands fill, not `saedex index`
# Small contexts, batches of 2 and a commit per batch: many shards' worth of batches, and a
# sink rule that leaves tokens out, so every table has rows.
CONFIG = IndexConfig(context_size=24, batch_size=2, commit_interval_s=0.0, sink_norm_multiple=1.3)


# -- without a cluster ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "end", "batch", "n"), [(0, 355, 2, 3), (0, 10, 4, 8), (7, 100, 16, 2), (0, 1, 5, 4)]
)
def test_shards_are_whole_batches_of_the_single_run(first, end, batch, n):
    ranges = shard_ranges(first, end, batch, n)
    assert ranges[0][0] == first and ranges[-1][1] == end and len(ranges) <= n
    assert all(hi == lo for (_, hi), (lo, _) in zip(ranges, ranges[1:], strict=False))
    assert all((lo - first) % batch == 0 and hi > lo for lo, hi in ranges)
    assert len(ranges) == min(n, math.ceil((end - first) / batch))


def test_ray_options_reach_the_job(monkeypatch):
    seen = {}

    def fake_run(jobs, progress):
        seen["job"] = jobs[0]
        raise KeyboardInterrupt

    monkeypatch.setattr("saedex.indexer.indexing.run_indexes", fake_run)
    args = ["index", "--db", "x.duckdb", "--quiet"]
    result = CliRunner().invoke(cli.app, [*args, "--ray", "auto", "--shards", "5"])
    assert result.exit_code == 130, result.output
    assert seen["job"].ray == RayConfig(ray="auto", shards=5)
    assert CliRunner().invoke(cli.app, args).exit_code == 130
    assert seen["job"].ray is None
    result = CliRunner().invoke(cli.app, [*args, "--shards", "5"])
    assert result.exit_code == 2 and "need --ray" in result.output


def test_a_shard_without_its_completion_marker_is_never_merged(tiny_model, tmp_path):
    """Plan a run, cut a shard file, leave it unfinished: the merge refuses it, untouched."""
    sae = build_tiny_sae(tmp_path / "sae", "topk")
    corpus = _corpus(tmp_path, 4)
    db = tmp_path / "index.duckdb"
    job = IndexJob(str(tiny_model), str(sae), str(corpus), db, "s", config=CONFIG)
    run_index(job, False)
    run_file = next(Path(str(db) + ".runs").glob("s-*.duckdb"))
    shard = Shard(0, 0, 4, tmp_path / "shard-0.duckdb")
    with IndexWriter(run_file) as writer:
        create_shard(writer, "s", shard)
        before = writer.run_state("s")
        with pytest.raises(SaedexError, match="not complete: not merged"):
            merge_shard(writer, "s", shard)
        assert writer.run_state("s") == before


# -- on a local cluster ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU Ray cluster on loopback for this module; stopped at its end."""
    ray = pytest.importorskip("ray")
    start_local_cluster(ray, cpus=2)
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    sae = build_tiny_sae(tmp / "sae", "topk")
    corpus = _corpus(tmp, 40)
    ref = tmp / "reference.duckdb"
    run_index(IndexJob(str(tiny_model), str(sae), str(corpus), ref, "s", config=CONFIG), False)
    return tiny_model, sae, corpus, dump(ref), ref


@pytest.mark.integration
def test_a_killed_driver_resumes_from_the_finished_shards(inputs, tmp_path):
    """SIGKILL `saedex index --ray local` once a shard is finished: its cluster goes with it,
    and the same command finishes the index without redoing that shard (made read-only, it
    could not be reopened for writing) into the single-process index."""
    model, sae, corpus, expected, _ = inputs
    db = tmp_path / "index.duckdb"
    cmd = [
        sys.executable, "-m", "saedex.cli", "index", "--model", str(model), "--sae", str(sae),
        "--corpus", str(corpus), "--db", str(db), "--sae-id", "s", "--context-size", "24",
        "--batch-size", "2", "--commit-interval", "0", "--sink-norm-multiple", "1.3",
        "--ray", "local", "--ray-local-cpus", "2", "--shards", "4", "--quiet",
    ]  # fmt: skip
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cluster = _kill_once_a_shard_is_finished(driver, Path(str(db) + ".runs"))
    _wait_gone(cluster)
    folder = next(Path(str(db) + ".runs").glob("*.shards"))
    ranges = json.loads((folder / "plan.json").read_text())["ranges"]
    shards = [
        Shard(i, lo, hi, folder / f"shard-{i:05d}.duckdb") for i, (lo, hi) in enumerate(ranges)
    ]
    merged = [s for s in shards if not s.path.exists()]  # merged shards' files are deleted
    finished = [s.path for s in shards if s.path.exists() and is_complete("s", s)]
    assert len(shards) == 4 and 1 <= len(merged) + len(finished) < 4, (merged, finished)
    for path in finished:
        path.chmod(0o444)
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_same_index(dump(db), expected)


def test_the_streaming_comparison_finds_a_changed_value(inputs, tmp_path):
    """The bench's comparison can fail: one statistic off by 1e-4 relative is caught."""
    *_, ref = inputs
    db = copy_index(ref, tmp_path / "copy.duckdb")
    assert assert_same_files(db, ref)["features"] > 0
    path = bulk.folder(run_file(db, "s")) / "features.parquet"  # a compacted run's table
    changed = "CASE WHEN feature = 0 THEN max_activation * 1.0001 ELSE max_activation END"
    duckdb.sql(f"SELECT * REPLACE ({changed} AS max_activation) FROM '{path}'").write_parquet(
        str(path.with_suffix(".new"))
    )
    path.with_suffix(".new").replace(path)
    with pytest.raises(AssertionError, match="intervals|features"):  # views derive from it
        assert_same_files(db, ref)


def _kill_once_a_shard_is_finished(driver, runs: Path, timeout: float = 900) -> set[int]:
    """SIGKILL the driver once some shard's WAL, seen while its worker wrote, is gone (the
    worker closed the finished shard); returns the processes the driver had started."""
    seen: set[Path] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        wals = set(runs.glob("*.shards/shard-*.duckdb.wal"))
        if seen - wals:
            cluster = _descendants(driver.pid)
            driver.kill()
            driver.wait()
            return cluster
        seen |= wals
        time.sleep(0.01)
    driver.kill()
    pytest.fail(f"no shard finished before the driver ended: {driver.stderr.read()[-2000:]}")


def _descendants(pid: int) -> set[int]:
    parents = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            parents[int(p)] = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _wait_gone(pids: set[int], timeout: float = 180) -> None:
    """The killed driver's Ray processes exit on their own: its workers, raylet and GCS at
    once, the node's agents once they notice their raylet is gone (a minute or so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
        if not alive:
            return
        time.sleep(0.2)
    for p in alive:  # do not leave them running, then fail
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    pytest.fail(f"Ray processes outlived their killed driver: {sorted(alive)}")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@pytest.mark.integration
def test_sharded_index_equals_the_single_process_index(cluster, inputs, tmp_path):
    model, sae, corpus, expected, ref = inputs
    db = tmp_path / "index.duckdb"
    job = IndexJob(
        str(model), str(sae), str(corpus), db, "s", config=CONFIG, ray=RayConfig(shards=3)
    )
    info = run_index(job, False)
    assert_same_index(dump(db), expected)
    counts = assert_same_files(db, ref, batch=7)  # the bench's streaming comparison agrees
    assert counts == {t: len(rows) for t, (_, rows) in expected.items()}
    assert info.n_contexts > 3 * CONFIG.batch_size  # three shards, of several batches each
    assert not shard_dir(_run_file(db)).exists()  # shard files are gone once merged


@pytest.mark.integration
def test_a_worker_killed_mid_shard_is_retried_and_the_index_is_the_same(cluster, inputs, tmp_path):
    model, sae, corpus, expected, _ = inputs
    db = tmp_path / "index.duckdb"
    killed: list[int] = []
    watcher = threading.Thread(target=_kill_a_worker, args=(Path(str(db) + ".runs"), killed))
    watcher.start()
    try:
        ray_cfg = RayConfig(shards=2, max_retries=2)
        job = IndexJob(str(model), str(sae), str(corpus), db, "s", config=CONFIG, ray=ray_cfg)
        run_index(job, False)
    finally:
        watcher.join()
    assert killed, "no worker was caught mid-shard"
    assert_same_index(dump(db), expected)


def _kill_a_worker(runs: Path, killed: list[int], timeout: float = 120) -> None:
    """SIGKILL the first Ray worker seen writing a shard file, once its WAL has grown (the
    shard is part done: a commit or more in, many batches to go)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not killed:
        for wal in runs.glob("*.shards/shard-*.duckdb.wal"):
            try:
                grown = wal.stat().st_size > 20_000
            except FileNotFoundError:
                continue
            pid = _holder(wal.with_suffix("")) if grown else None
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.005)


def _holder(path: Path) -> int | None:
    """The Ray worker (not this process) with `path` open."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in fds):
                return int(pid)
        except OSError:
            continue
    return None


# -- helpers --------------------------------------------------------------------------------


def _corpus(tmp: Path, n_docs: int) -> Path:
    path = tmp / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in make_corpus_docs(n_docs, seed=5)))
    return path


def _run_file(db: Path) -> Path:
    return next(Path(str(db) + ".runs").glob("s-*.duckdb"))


def _columns(con, table: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] not in TIMING]


def _ordered(table: str, cols) -> str:
    return f"SELECT {', '.join(c for c, _ in cols)} FROM {table} ORDER BY ALL"


def dump(db: Path) -> dict[str, tuple[list[str], list]]:
    """Every run table as readers see it (columns, rows in canonical order), timing aside."""
    con = connect(db)
    out = {}
    for table in RUN_TABLES:
        cols = _columns(con, table)
        out[table] = (cols, con.execute(_ordered(table, cols)).fetchall())
    con.close()
    return out


def assert_same_index(got: dict, expected: dict) -> None:
    """Equal tables: every value identical but floats, which may differ by summation order
    (1e-6 relative)."""
    for table, (cols, rows) in expected.items():
        assert got[table][0] == cols, table
        assert len(got[table][1]) == len(rows), table
        assert rows or table in NOT_INDEXED, f"{table} is empty: the comparison proves nothing"
        _assert_same_rows(table, cols, got[table][1], rows)


def assert_same_files(got_db: Path, expected_db: Path, batch: int = 50_000) -> dict[str, int]:
    """`assert_same_index` for indexes too big to hold in memory twice (the bench's millions
    of tokens): both sides stream in canonical order, `batch` rows at a time, and DuckDB sorts
    out of core. Returns the rows compared per table."""
    got, expected, counts = connect(got_db), connect(expected_db), {}
    try:
        for table in RUN_TABLES:
            cols = _columns(expected, table)
            assert _columns(got, table) == cols, table
            a = got.execute(_ordered(table, cols))
            b = expected.execute(_ordered(table, cols))
            counts[table] = 0
            while rows := b.fetchmany(batch):
                _assert_same_rows(table, cols, a.fetchmany(batch), rows)
                counts[table] += len(rows)
            assert not a.fetchmany(1), f"{table}: more rows than expected"
            assert counts[table] or table in NOT_INDEXED, f"{table} is empty: proves nothing"
    finally:
        got.close()
        expected.close()
    return counts


def _assert_same_rows(table: str, cols, got: list, expected: list) -> None:
    assert len(got) == len(expected), table
    for g, e in zip(got, expected, strict=True):
        for (name, kind), a, b in zip(cols, g, e, strict=True):
            assert _close(a, b, kind), (table, name, a, b)


def _close(a, b, kind: str) -> bool:
    if "FLOAT" in kind or "DOUBLE" in kind:
        if isinstance(a, list):
            return len(a) == len(b) and all(
                _close(x, y, "DOUBLE") for x, y in zip(a, b, strict=True)
            )
        return a == b or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6))
    return a == b
