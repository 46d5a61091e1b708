"""How tests/data/schema2.duckdb.gz was made (then `gzip -9`) (at commit 7404fce, schema version 2).

schema3.tar.gz (the store layout: base file, runs folder and catalog) was made by this script at
commit 7405004 (schema version 3): `python tests/data/make_schema2.py /tmp/s3/schema3.duckdb`, then
`tar czf tests/data/schema3.tar.gz -C /tmp/s3 schema3.duckdb schema3.duckdb.runs` (without .lock).
schema4.tar.gz the same way at commit 18fea46 (schema version 4; every run file's rows in DuckDB,
the last version before compacted runs kept their bulk tables in Parquet).

schema1.duckdb.gz was made by this same script run with the saedex of commit 4a1c1e9 (schema
version 1, dense example activations; its tests/conftest.py builds the same tiny model and SAE).

Run from the repository root with the saedex of that commit: `PYTHONPATH=. python tests/data/make_schema2.py`.
The same inputs (tiny model, tiny SAE, corpus, settings) rebuild a fresh index that the upgraded
file must match; tests/test_migrations.py does that.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from saedex.config import IndexConfig
from saedex.indexer.indexing import IndexJob, run_index
from tests.conftest import build_tiny_model, build_tiny_sae, make_corpus_docs

SETTINGS = IndexConfig(context_size=24, batch_size=4, top_k=5, examples_per_interval=2)


def write_inputs(root: Path) -> tuple[Path, Path, Path]:
    model = build_tiny_model(root / "model")
    sae = build_tiny_sae(root / "tiny-sae", "topk")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in make_corpus_docs(6, seed=5)))
    return model, sae, corpus


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model, sae, corpus = write_inputs(Path(tmp))
        run_index(IndexJob(str(model), str(sae), str(corpus), out, config=SETTINGS), False)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tests/data/schema2.duckdb"))
