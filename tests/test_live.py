"""Live inference: dynamic batching equals one text at a time, and serving without torch."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from saedex.api.inference import Encoded, InferenceEngine
from saedex.config import IndexConfig, ServeConfig
from saedex.indexer.indexing import IndexJob, run_index
from saedex.store import IndexReader
from tests.conftest import WORDS

SAE = "sae"


@pytest.fixture(scope="module")
def live_db(tmp_path_factory, tiny_model, tiny_sae, tiny_corpus) -> Path:
    db = tmp_path_factory.mktemp("live") / "index.duckdb"
    cfg = IndexConfig(context_size=32, batch_size=8, sink_norm_multiple=1.3, max_documents=4)
    run_index(
        IndexJob(str(tiny_model), str(tiny_sae), str(tiny_corpus), db, SAE, config=cfg), False
    )
    return db


@pytest.fixture(scope="module")
def info(live_db):
    with IndexReader(live_db) as reader:
        return reader.sae(SAE)


def texts(n: int, seed: int = 0) -> list[str]:
    """Texts of 1 to ~200 tokens: several span more than one 32-token context."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(n)]


def as_dict(enc: Encoded) -> dict:
    keys = zip(enc.position.tolist(), enc.feature.tolist(), strict=True)
    return dict(zip(keys, enc.value.tolist(), strict=True))


def test_batched_requests_equal_one_at_a_time(info):
    """Brute force: 24 concurrent texts, batched, against each text run alone."""
    engine = InferenceEngine("cpu", config=ServeConfig(batch_window_ms=50, batch_max_contexts=16))
    items = texts(24)

    async def together() -> list[Encoded]:
        return await asyncio.gather(*(engine.encode(info, t) for t in items))

    async def alone() -> list[Encoded]:
        return [await engine.encode(info, t) for t in items]

    batched = asyncio.run(together())
    sizes = list(engine.batch_sizes)
    single = asyncio.run(alone())
    assert max(sizes) > 1 and sum(sizes) == len(items)  # several texts shared a forward
    assert len(sizes) < len(items)
    assert engine.batch_sizes[len(sizes) :] == [1] * len(items)
    for b, s in zip(batched, single, strict=True):
        assert b.token_ids == s.token_ids and b.excluded.tolist() == s.excluded.tolist()
        got, want = as_dict(b), as_dict(s)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-4)


def test_batch_bound_is_kept(info):
    engine = InferenceEngine("cpu", config=ServeConfig(batch_window_ms=50, batch_max_contexts=2))
    items = ["the quick brown fox"] * 6

    async def run() -> list[Encoded]:
        return await asyncio.gather(*(engine.encode(info, t) for t in items))

    results = asyncio.run(run())
    assert engine.batch_sizes == [2, 2, 2]
    assert all(r.token_ids == results[0].token_ids for r in results)


def test_a_bad_sae_fails_its_requests_not_the_engine(info, tmp_path):
    import dataclasses

    from saedex.api.errors import Unavailable

    engine = InferenceEngine("cpu")
    missing = dataclasses.replace(info, sae_path=str(tmp_path / "gone"))

    async def run():
        return await asyncio.gather(
            engine.encode(missing, "the fox"), engine.encode(info, "the fox"),
            return_exceptions=True,
        )  # fmt: skip

    bad, good = asyncio.run(run())
    assert isinstance(bad, Unavailable) and "gone" in str(bad)
    assert isinstance(good, Encoded) and good.token_ids


# -- serving without torch -----------------------------------------------------------------

HEAVY = ("torch", "transformers", "transformer_lens")

SERVE_NO_INFERENCE = """
import json, sys
from starlette.testclient import TestClient
from saedex.api.app import create_app
from saedex.config import ServeConfig
from saedex.store import IndexReader
with IndexReader(sys.argv[1]) as reader, TestClient(create_app(reader, ServeConfig(inference=False))) as c:
    r = c.post("/graphql", json={"query": '{ feature(sae: "sae", index: 1) { index topExamples(first: 2) { tokens } } } '})
    assert r.status_code == 200 and r.json()["data"]["feature"]["index"] == 1, r.text
    assert c.get("/api/features/sae/1").status_code == 200
    r = c.post("/api/active-features", json={"sae": "sae", "text": "fox"})
    assert r.status_code == 503, r.text
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in %r)))
"""

EXPORT_SITE = """
import json, sys
from saedex.cli import app
try:
    app(["export-site", "--db", sys.argv[1], "--sae", "sae", "--out", sys.argv[2], "--quiet", "--workers", "1"])
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in %r)))
"""


def heavy_modules(script: str, *args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", script % (HEAVY,), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_serve_without_inference_never_imports_torch(live_db):
    assert heavy_modules(SERVE_NO_INFERENCE, str(live_db)) == []


def test_export_site_never_imports_torch(live_db, tmp_path):
    assert heavy_modules(EXPORT_SITE, str(live_db), str(tmp_path / "site")) == []


def test_worker_process_gives_the_same_results(info):
    """The server's path: the models in a spawned worker process, batched as in a thread."""
    items = texts(6, seed=3)
    in_thread = InferenceEngine("cpu")
    in_process = InferenceEngine("cpu", config=ServeConfig(batch_window_ms=50), process=True)

    async def run(engine) -> list[Encoded]:
        return await asyncio.gather(*(engine.encode(info, t) for t in items))

    try:
        got = asyncio.run(run(in_process))
    finally:
        in_process.close()
    want = asyncio.run(run(in_thread))
    assert max(in_process.batch_sizes) > 1
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids and as_dict(g).keys() == as_dict(w).keys()
        assert list(as_dict(g).values()) == pytest.approx(list(as_dict(w).values()), abs=1e-4)
