"""Several SAEs in one pass (issue 17.2): the same rows as indexing each SAE alone."""

from __future__ import annotations

import json

import pytest

import saedex.indexer.indexing as indexing
from saedex.config import IndexConfig
from saedex.errors import SaedexError
from saedex.indexer.indexing import IndexJob, run_index, run_indexes
from saedex.store.catalog import Catalog
from tests.conftest import build_tiny_sae
from tests.test_resume import dump

CFG = IndexConfig(context_size=32, batch_size=4, commit_interval_s=0, sink_norm_multiple=1.3)


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    """A TopK SAE on block 0 and a ReLU one, wider, on block 1 (the deeper hook)."""
    tmp = tmp_path_factory.mktemp("multi")
    first = build_tiny_sae(tmp / "a", "topk", d_sae=48, seed=1)
    second = build_tiny_sae(tmp / "b", "standard", d_sae=96, seed=2)
    cfg = json.loads((second / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.1.hook_resid_post"
    (second / "cfg.json").write_text(json.dumps(cfg))
    return {"a": first, "b": second}


def jobs(tiny_model, saes, corpus, db, names=("a", "b")):
    return [IndexJob(str(tiny_model), str(saes[n]), str(corpus), db, n, config=CFG) for n in names]


@pytest.fixture(scope="module")
def separate(tiny_model, saes, tiny_corpus, tmp_path_factory):
    db = tmp_path_factory.mktemp("separate") / "index.duckdb"
    for job in jobs(tiny_model, saes, tiny_corpus, db):
        run_index(job, False)
    return dump(db)


def test_one_pass_equals_separate_runs_table_by_table(tiny_model, saes, tiny_corpus, tmp_path,
                                                      separate):  # fmt: skip
    db = tmp_path / "index.duckdb"
    infos = run_indexes(jobs(tiny_model, saes, tiny_corpus, db), False)
    assert [i.id for i in infos] == ["a", "b"]
    assert [i.hook_name for i in infos] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    together = dump(db)
    for table, rows in separate.items():
        assert together[table] == rows, table
    assert len(together["activations"]) > 0 and len(together["excluded_tokens"]) > 0
    assert set(Catalog(db).complete()) == {"a", "b"}


def test_one_pass_runs_the_model_once_per_batch(tiny_model, saes, tiny_corpus, tmp_path,
                                                monkeypatch):  # fmt: skip
    calls = []
    real = indexing.forward_to_hooks
    monkeypatch.setattr(
        indexing, "forward_to_hooks", lambda m, t, h: calls.append(sorted(h)) or real(m, t, h)
    )
    infos = run_indexes(jobs(tiny_model, saes, tiny_corpus, tmp_path / "i.duckdb"), False)
    assert len(calls) == -(-infos[0].n_contexts // CFG.batch_size)
    assert all(c == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"] for c in calls)


def test_one_pass_resumes_runs_at_different_points(tiny_model, saes, tiny_corpus, tmp_path,
                                                   separate, monkeypatch):  # fmt: skip
    """`a` was killed after two batches, `b` never started, `c` is complete: one command
    finishes the first two and leaves the third as it is."""
    db = tmp_path / "index.duckdb"
    run_index(IndexJob(str(tiny_model), str(saes["b"]), str(tiny_corpus), db, "c", config=CFG),
              False)  # fmt: skip
    calls = []
    real = indexing.encode_resid

    def killed_at_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(indexing, "encode_resid", killed_at_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run_index(jobs(tiny_model, saes, tiny_corpus, db, ["a"])[0], False)
    monkeypatch.setattr(indexing, "encode_resid", real)
    assert Catalog(db).pending("a") is not None
    more = [*jobs(tiny_model, saes, tiny_corpus, db),
            IndexJob(str(tiny_model), str(saes["b"]), str(tiny_corpus), db, "c", config=CFG)]  # fmt: skip
    run_indexes(more, False)
    rows = dump(db)
    for table, expected in separate.items():
        assert [r for r in rows[table] if "c" not in r[:1]] == expected, table


def test_one_pass_refuses_mixed_inputs(tiny_model, saes, tiny_corpus, tmp_path):
    a, b = jobs(tiny_model, saes, tiny_corpus, tmp_path / "x.duckdb")
    other = IndexJob(b.model, b.sae, b.corpus, b.db, "b", config=IndexConfig(context_size=30))
    with pytest.raises(SaedexError, match="share their config"):
        run_indexes([a, other], False)
    with pytest.raises(SaedexError, match="share an index id"):
        run_indexes([a, IndexJob(b.model, b.sae, b.corpus, b.db, "a", config=CFG)], False)
