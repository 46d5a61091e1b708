"""The pass's commits are checkpointed as it goes: its WAL and DuckDB's memory stay bounded
by the commit, not by the tokens indexed (a streamed read of the contexts once held a
transaction open for the whole pass, so DuckDB never checkpointed and the WAL grew to
hundreds of MB on a 3M-token run)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from saedex.config import IndexConfig
from saedex.store import IndexWriter
from tests.conftest import one_document_contexts

CTX, N_CTX, K = 16, 96, 8


def _activations(batch, rng) -> pa.Table:
    n = len(batch.context_ids) * CTX * K
    return pa.table(
        {
            "context_id": np.repeat(np.array(batch.context_ids, np.int32), CTX * K),
            "position": np.tile(
                np.repeat(np.arange(CTX, dtype=np.int16), K), len(batch.context_ids)
            ),
            "feature": rng.integers(0, 512, n).astype(np.int32),
            "value": rng.random(n).astype(np.float32),
        }
    )


def test_the_pass_is_checkpointed_between_commits(tmp_path):
    db = tmp_path / "run.duckdb"
    run = {
        "sae_id": "s", "model_name": "m", "hook_name": "h", "hook_layer": 0,
        "architecture": "topk", "d_in": 4, "d_sae": 512, "context_size": CTX,
        "prepend_bos": False, "settings": IndexConfig().to_dict(),
    }  # fmt: skip
    contexts = one_document_contexts(N_CTX, CTX)
    excluded = pa.table(
        {"context_id": pa.array([], pa.int32()), "position": pa.array([], pa.int16()),
         "norm_ratio": pa.array([], pa.float32())}
    )  # fmt: skip
    rng = np.random.default_rng(0)
    wal = db.with_name(db.name + ".wal")
    with IndexWriter(db) as writer:
        writer.write_plan(run, [], contexts)
        writer.con.execute("SET checkpoint_threshold = '64KB'")
        seen, largest = [], 0
        with writer.pass_writer("s") as out:
            for batch in writer.batches("s", 0, batch_size=4, per_read=2):
                seen += batch.context_ids
                out.append(batch.context_ids[-1] + 1, _activations(batch, rng), excluded, 64, 0.0)
                out.commit()
                largest = max(largest, wal.stat().st_size if wal.exists() else 0)
        assert seen == list(range(N_CTX))  # every context once, in order, across the reads
        stored = writer.con.execute("SELECT count(*) FROM activations").fetchone()[0]
    assert stored == N_CTX * CTX * K
    # each commit adds ~16 KB of rows; unchecked, the WAL ends at ~400 KB
    assert largest < 128 * 1024, largest
