"""The store's aggregation on synthetic activations, against numpy.

The finalize SQL groups only the activations that can win (a feature's top bins for top
examples, low hash keys for interval samples) and redoes in full any feature or interval where
that leaves too few contexts. These activations are shaped to hit both paths: features spread
thinly over many contexts, and features that fill a few contexts densely with their highest
values.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from saedex.config import IndexConfig
from saedex.store import IndexReader, IndexWriter
from tests.conftest import one_document_contexts

N_CTX, CTX, D_SAE = 120, 16, 10
CFG = IndexConfig(context_size=CTX, top_k=5, n_intervals=4, examples_per_interval=3)


def synthetic_activations(rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows = []
    for feature in range(D_SAE):
        dense = feature % 2 == 1  # odd features: a few contexts hold every high value
        for ctx in range(N_CTX):
            if dense and ctx < 2:
                positions = np.arange(1, CTX)
                values = rng.uniform(8.0, 10.0, len(positions))
            elif dense and ctx == 2:  # one activation: easily missed by the pruned grouping
                positions, values = np.array([5]), np.array([9.0])
            else:
                positions = np.flatnonzero(rng.random(CTX - 1) < 0.3) + 1
                values = rng.uniform(0.01, 5.0 if dense else 10.0, len(positions))
            for pos, value in zip(positions, values, strict=True):
                rows.append((ctx, pos, feature, value))
    cols = np.array(rows).T
    return {
        "context_id": cols[0].astype(np.int32),
        "position": cols[1].astype(np.int16),
        "feature": cols[2].astype(np.int32),
        "value": cols[3].astype(np.float32),
    }


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory):
    db = tmp_path_factory.mktemp("agg") / "agg.duckdb"
    acts = synthetic_activations(np.random.default_rng(0))
    run = {
        "sae_id": "s", "model_name": "m", "hook_name": "blocks.0.hook_resid_post",
        "hook_layer": 0, "architecture": "standard", "d_in": 4, "d_sae": D_SAE,
        "context_size": CTX, "prepend_bos": True, "settings": CFG.to_dict(),
    }  # fmt: skip
    contexts = one_document_contexts(N_CTX, CTX)
    documents = [{"sae_id": "s", "doc_index": 0, "doc_id": "d", "n_tokens": N_CTX * CTX}]
    features = pa.array(range(D_SAE), pa.int32())
    logit_hist = pa.table(
        {
            "feature": features,
            "edges": pa.array([[0.0, 1.0]] * D_SAE, pa.list_(pa.float64())),
            "counts": pa.array([[1]] * D_SAE, pa.list_(pa.int64())),
        }
    )
    empty_logits = pa.table(
        {"feature": pa.array([], pa.int32()), "kind": pa.array([], pa.string()),
         "rank": pa.array([], pa.int16()), "token_id": pa.array([], pa.int32()),
         "value": pa.array([], pa.float32())}
    )  # fmt: skip
    empty_nb = pa.table(
        {"feature": pa.array([], pa.int32()), "rank": pa.array([], pa.int16()),
         "neighbour": pa.array([], pa.int32()), "cosine": pa.array([], pa.float32())}
    )  # fmt: skip
    excluded = pa.table(
        {"context_id": pa.array([], pa.int32()), "position": pa.array([], pa.int16()),
         "norm_ratio": pa.array([], pa.float32())}
    )  # fmt: skip
    with IndexWriter(db) as writer:
        writer.write_vocab("m", [f"t{i}" for i in range(CTX)])
        writer.write_plan(run, documents, contexts)
        with writer.pass_writer("s") as out:
            out.append(N_CTX, pa.table(acts), excluded, N_CTX * (CTX - 1), 0.0)
        writer.finalize("s", CFG, D_SAE, empty_logits, logit_hist, empty_nb, 0.0)
        # the seeded keys, computed the way the store defines them (DuckDB's hash)
        keys = writer.con.execute(
            "SELECT hash(feature, context_id, position, ?) >> 16 << 16 | position::UBIGINT "
            "FROM (SELECT unnest(?::INTEGER[]) AS feature, unnest(?::INTEGER[]) AS context_id, "
            "             unnest(?::SMALLINT[]) AS position)",
            [CFG.seed, acts["feature"].tolist(), acts["context_id"].tolist(),
             acts["position"].tolist()],
        ).fetchnumpy()  # fmt: skip
    key = next(iter(keys.values())).astype(np.uint64)
    with IndexReader(db) as reader:
        yield reader, acts, key


def test_data_reaches_the_redo_paths(aggregated):
    """Odd features: their top bins and top interval hold more activations than the pruned
    grouping keeps, in three contexts (fewer than top_k), one of them with a single one."""
    _, acts, _ = aggregated
    for j in range(1, D_SAE, 2):
        mine = acts["feature"] == j
        top = acts["value"][mine] >= 0.75 * acts["value"][mine].max()
        assert top.sum() > 6 * CFG.examples_per_interval and top.sum() > 4 * CFG.top_k
        assert len(set(acts["context_id"][mine][top].tolist())) == 3


def test_top_examples_match_numpy(aggregated):
    reader, acts, _ = aggregated
    tops = reader.top_examples("s", list(range(D_SAE)))
    for j in range(D_SAE):
        mine = acts["feature"] == j
        best: dict[int, float] = {}
        for c, v in zip(acts["context_id"][mine], acts["value"][mine], strict=True):
            best[int(c)] = max(best.get(int(c), 0.0), float(v))
        expected = sorted(best, key=lambda c: (-best[c], c))[: CFG.top_k]
        assert [e.context_id for e in tops[j]] == expected
        for e in tops[j]:
            assert e.max_activation == np.float32(best[e.context_id])
            assert e.activations[e.max_token_index] == e.max_activation


def test_interval_samples_match_numpy(aggregated):
    reader, acts, key = aggregated
    samples = reader.interval_samples("s", list(range(D_SAE)))
    for j in range(D_SAE):
        mine = acts["feature"] == j
        values = acts["value"][mine].astype(np.float64)
        interval = np.minimum(
            np.floor(values / values.max() * CFG.n_intervals), CFG.n_intervals - 1
        )
        for sample in samples[j]:
            inside = interval == sample.index
            per_ctx: dict[int, int] = {}
            for c, k in zip(acts["context_id"][mine][inside], key[mine][inside], strict=True):
                per_ctx[int(c)] = min(per_ctx.get(int(c), 1 << 64), int(k))
            expected = sorted(per_ctx, key=lambda c: (per_ctx[c], c))
            expected = expected[: CFG.examples_per_interval]
            assert [e.context_id for e in sample.examples] == expected
            for e in sample.examples:
                assert e.max_token_index == per_ctx[e.context_id] & 0xFFFF
                assert e.activations[e.max_token_index] == e.max_activation
