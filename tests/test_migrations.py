"""Indexes written by earlier saedex versions open, upgraded in place, never half-migrated.

tests/data holds a schema-1 and a schema-2 file made by those versions (tests/data/
make_schema2.py says how); each upgrades to the records a fresh index of the same inputs has.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import duckdb
import pytest

from saedex.config import IndexConfig
from saedex.errors import SaedexError
from saedex.indexer.indexing import IndexJob, run_index
from saedex.store import SCHEMA_VERSION, IndexReader, coactivation
from saedex.store.catalog import runs_dir
from saedex.store.schema import stored_version
from saedex.store.views import connect
from tests.data.make_schema2 import SETTINGS, write_inputs
from tests.data.make_schema5 import family_records

DATA = Path(__file__).parent / "data"
SCHEMA5_RECORDS = json.loads((DATA / "schema5-records.json").read_text())
# What differs between two runs of the same inputs, or was not recorded before schema 3.
NOT_COMPARED = {
    "sae_id", "model_name", "sae_path", "corpus", "started_at", "finished_at", "duration_s", "model_fingerprint",
    "sae_weights_sha256", "sae_cfg_sha256", "corpus_fingerprint", "saedex_version", "dtype",
    "device",
}  # fmt: skip


def unpack(version: int, into: Path) -> Path:
    """A stored index of that schema version (from 3 on, a base file and its runs folder)."""
    path = into / f"schema{version}.duckdb"
    if (DATA / f"schema{version}.tar.gz").exists():
        with tarfile.open(DATA / f"schema{version}.tar.gz") as tar:
            tar.extractall(into, filter="data")
        return path
    with gzip.open(DATA / f"schema{version}.duckdb.gz") as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def version_of(path: Path) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return stored_version(con)
    finally:
        con.close()


def rounded(value):
    """Records with floats to 5 significant digits (another CPU may differ in the last bits)."""
    if dataclasses.is_dataclass(value):
        return rounded(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items() if k not in NOT_COMPARED}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.5g}")
    return value


def records(path: Path) -> dict:
    """Every record the API and the site read from the index (of its only SAE)."""
    with IndexReader(path) as reader:
        (info,) = reader.saes()
    return records_of(path, info.id)


def records_of(path: Path, sae_id: str) -> dict:
    with IndexReader(path) as reader:
        info = reader.sae(sae_id)
        features = [reader.feature(sae_id, i) for i in range(info.d_sae)]
        # a setting newer than the stored files (co-activations: `saedex coactivations` there)
        info = dataclasses.replace(
            info, settings={k: v for k, v in info.settings.items() if k != "coactivations"}
        )
        page = reader.list_features(sae_id, "density", True, limit=64)
        return rounded({"sae": info, "features": features, "page": page})


def stored_then(recs: dict) -> dict:
    """The records an index of an earlier version holds: all but co-activations (computed by
    the run since schema 4; `saedex coactivations` adds them to an older run)."""
    features = [{k: v for k, v in f.items() if k != "coactivations"} for f in recs["features"]]
    return {**recs, "features": features}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict:
    """A fresh index of the inputs the stored files were made from."""
    tmp = tmp_path_factory.mktemp("fresh")
    model, sae, corpus = write_inputs(tmp)
    db = tmp / "fresh.duckdb"
    run_index(IndexJob(str(model), str(sae), str(corpus), db, config=SETTINGS), False)
    return records(db)


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_stored_old_index_upgrades_to_the_fresh_records(version, fresh, tmp_path):
    path = unpack(version, tmp_path)
    files = [path, *runs_dir(path).glob("*.duckdb")]
    assert {version_of(f) for f in files} == {version}
    got = records(path)  # opening it upgrades it, base file and run files
    assert {version_of(f) for f in files} == {SCHEMA_VERSION}
    assert all(f["coactivations"] == [] for f in got["features"])  # none stored then
    with IndexReader(path) as reader:
        (info,) = reader.saes()
    coactivation.publish(path, info.id, IndexConfig().coactivations)  # saedex coactivations
    assert records(path) == fresh
    assert records(path) == fresh  # and it opens again as it is


def test_schema5_matches_keep_their_families(tmp_path):
    """Schema 5 kept a family's children count and cover as a `feature_matches` row; upgraded,
    every feature's matches and family read as that saedex read them (the oracle it wrote,
    tests/data/make_schema5.py), from `feature_families`."""
    path = unpack(5, tmp_path)
    files = [path, *runs_dir(path).glob("*.duckdb")]
    assert len(files) == 4 and {version_of(f) for f in files} == {5}  # base, 2 runs, matches
    assert rounded(family_records(path)) == rounded(SCHEMA5_RECORDS)
    assert {version_of(f) for f in files} == {SCHEMA_VERSION}
    con = connect(path)
    moved = "SELECT count(*) FROM feature_matches WHERE relation = 'family' OR other_feature < 0"
    assert con.execute(moved).fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM feature_families").fetchone()[0] > 0


@pytest.mark.parametrize("n", [1, 2])
def test_kill_inside_the_families_migration(n, tmp_path):
    """Killed between copying the family rows and deleting them: nothing committed."""
    path = unpack(5, tmp_path)
    derived = next(runs_dir(path).glob("derived-*.duckdb"))
    upgrade_derived = KILL_INSIDE.replace(
        "from saedex.store import IndexReader\nIndexReader(sys.argv[1])",
        "from saedex.store.connection import open_db\n"
        "from saedex.store.schema import ensure_schema\n"
        "ensure_schema(open_db(sys.argv[1]), sys.argv[1])",
    )
    assert upgrade_derived != KILL_INSIDE
    proc = subprocess.run([sys.executable, "-c", upgrade_derived, str(derived), str(n)])
    assert proc.returncode == -signal.SIGKILL
    assert version_of(derived) == 5
    assert rounded(family_records(path)) == rounded(SCHEMA5_RECORDS)


def test_newer_index_is_refused_untouched(tmp_path):
    path = unpack(2, tmp_path)
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    before = path.read_bytes()
    with pytest.raises(SaedexError, match="schema version 99 is not supported"):
        IndexReader(path)
    assert path.read_bytes() == before


# Runs the upgrade in a child and SIGKILLs it itself after `n` statements of the last step, so
# the kill lands inside the migration's transaction at a known point.
KILL_INSIDE = """
import os, signal, sys
from saedex.store import migrations
from saedex.store.schema import SCHEMA_VERSION

class KillAfter:
    def __init__(self, statements, n):
        self.statements, self.n = statements, n
    def __iter__(self):
        for i, sql in enumerate(self.statements):
            if i == self.n:
                os.kill(os.getpid(), signal.SIGKILL)
            yield sql
        os.kill(os.getpid(), signal.SIGKILL)

step = SCHEMA_VERSION - 1
migrations.MIGRATIONS[step] = KillAfter(migrations.MIGRATIONS[step], int(sys.argv[2]))
from saedex.store import IndexReader
IndexReader(sys.argv[1])
"""


@pytest.mark.parametrize("version", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 3, 99])
def test_kill_inside_the_migration_leaves_the_old_file(version, n, fresh, tmp_path):
    path = unpack(version, tmp_path)
    proc = subprocess.run([sys.executable, "-c", KILL_INSIDE, str(path), str(n)])
    assert proc.returncode == -signal.SIGKILL
    assert version_of(path) == version  # nothing of the upgrade committed
    assert stored_then(records(path)) == stored_then(fresh)  # and it upgrades on the next open


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.4, 0.8, 1.6])
def test_kill_at_any_time_leaves_old_or_new(delay, fresh, tmp_path):
    """SIGKILL from outside at several moments (importing, upgrading, checkpointing, done)."""
    path = unpack(1, tmp_path)
    code = "import sys; from saedex.store import IndexReader; IndexReader(sys.argv[1])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert version_of(path) in (1, SCHEMA_VERSION)
    assert stored_then(records(path)) == stored_then(fresh)


def test_new_runs_join_an_upgraded_single_file_index(fresh, tmp_path):
    """A schema-2 file becomes the base of the layout: its run stays readable as it was, a new
    run gets a file of its own, and --overwrite of the old run replaces it in every view."""
    path = unpack(2, tmp_path)
    model, sae, corpus = write_inputs(tmp_path / "inputs")
    job = IndexJob(str(model), str(sae), str(corpus), path, sae_id="again", config=SETTINGS)
    run_index(job, False)
    with IndexReader(path) as reader:
        assert sorted(reader.sae_map()) == ["again", "tiny-sae"]
    assert stored_then(records_of(path, "tiny-sae")) == stored_then(fresh)
    again = records_of(path, "again")
    assert (again["features"], again["page"]) == (fresh["features"], fresh["page"])
    replace = IndexJob(str(model), str(sae), str(corpus), path, overwrite=True, config=SETTINGS)
    assert run_index(replace, False).sae_weights_sha256 is not None
    with IndexReader(path) as reader:
        assert [s.id for s in reader.saes()] == ["again", "tiny-sae"]
    assert records_of(path, "tiny-sae") == fresh
