"""Pretokenized corpora (Parquet, Arrow, HF `datasets` folders) give the index their text would."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from saedex.config import IndexConfig
from saedex.errors import SaedexError
from saedex.indexer.corpus import CorpusStats
from saedex.indexer.indexing import IndexJob, run_index
from saedex.indexer.pretokenized import token_documents
from saedex.store import IndexReader
from saedex.store.export import TABLES as EXPORTED
from saedex.store.export import UNPARTITIONED
from saedex.store.views import connect
from tests.conftest import make_corpus_docs

SAE = "sae"
CFG = IndexConfig(context_size=24, batch_size=8)
# Every table a run fills, compared row for row (sae_id aside: each file has one run).
TABLES = tuple(t for t in EXPORTED if t not in UNPARTITIONED)
RUN_COLUMNS = "n_documents, n_skipped_documents, n_contexts, n_tokens, n_excluded_tokens, dead_features, settings"


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return make_corpus_docs()


def _ids(tokenizer, docs) -> list[list[int]]:
    return tokenizer([d["text"] for d in docs], add_special_tokens=False)["input_ids"]


def _index(tmp: Path, name: str, model: Path, sae: Path, corpus: Path) -> Path:
    db = tmp / f"{name}.duckdb"
    run_index(IndexJob(str(model), str(sae), str(corpus), db, SAE, config=CFG), progress=False)
    return db


def _tables(db: Path) -> dict[str, list[tuple]]:
    con = connect(db)
    try:
        out = {
            t: con.sql(f"SELECT * EXCLUDE (sae_id) FROM {t} ORDER BY ALL").fetchall()
            for t in TABLES
        }
        out["saes"] = con.sql(f"SELECT {RUN_COLUMNS} FROM saes").fetchall()
        return out
    finally:
        con.close()


@pytest.fixture(scope="module")
def text_index(tmp_path_factory, tiny_model, tiny_sae, docs) -> dict[str, list[tuple]]:
    tmp = tmp_path_factory.mktemp("text-corpus")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return _tables(_index(tmp, "text", tiny_model, tiny_sae, corpus))


def test_parquet_input_ids_give_the_text_index(
    tmp_path, tiny_model, tiny_sae, tokenizer, docs, text_index
):
    corpus = tmp_path / "tokens.parquet"
    table = {
        "id": [d["id"] for d in docs],
        "source": [d["source"] for d in docs],
        "input_ids": _ids(tokenizer, docs),
    }
    pq.write_table(pa.table(table), corpus)
    got = _tables(_index(tmp_path, "pretok", tiny_model, tiny_sae, corpus))
    assert got["contexts"] and got == text_index


def test_hf_dataset_tokens_with_bos_give_the_text_index(
    tmp_path, tiny_model, tiny_sae, tokenizer, docs, text_index
):
    """SAELens's `tokens` column, rows starting with BOS: the BOS is not doubled."""
    datasets = pytest.importorskip("datasets")
    bos = tokenizer.bos_token_id
    rows = {
        "tokens": [[bos, *ids] for ids in _ids(tokenizer, docs)],
        "id": [d["id"] for d in docs],
        "source": [d["source"] for d in docs],
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "hf"))
    got = _tables(_index(tmp_path, "hf", tiny_model, tiny_sae, tmp_path / "hf"))
    assert got == text_index


def test_hf_dataset_text_column_gives_the_text_index(
    tmp_path, tiny_model, tiny_sae, docs, text_index
):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(docs).save_to_disk(str(tmp_path / "hf-text"))
    got = _tables(_index(tmp_path, "hf-text", tiny_model, tiny_sae, tmp_path / "hf-text"))
    assert got == text_index


def test_packed_rows_are_one_context_each(tmp_path, tiny_model, tiny_sae, tokenizer, docs):
    """SAELens's packed rows: exactly the context size, each starting with BOS."""
    bos = tokenizer.bos_token_id
    flat = [i for ids in _ids(tokenizer, docs) for i in ids]
    body = CFG.context_size - 1
    packed = [[bos, *flat[s : s + body]] for s in range(0, len(flat) - body + 1, body)]
    corpus = tmp_path / "packed.parquet"
    pq.write_table(pa.table({"input_ids": packed}), corpus)
    db = _index(tmp_path, "packed", tiny_model, tiny_sae, corpus)
    con = connect(db)
    contexts = con.sql("SELECT token_ids FROM contexts ORDER BY context_id").fetchall()
    con.close()
    assert [c[0] for c in contexts] == packed


def test_arrow_file_rows_are_read_as_given(tmp_path, tokenizer, docs):
    ids = _ids(tokenizer, docs)
    feather.write_feather(pa.table({"tokens": ids}), tmp_path / "c.arrow")
    stats = CorpusStats()
    rows = list(token_documents(tmp_path / "c.arrow", stats, len(tokenizer)))
    assert [r[1] for r in rows] == ids and stats.documents == len(ids)
    assert rows[3][0].doc_id == "c.arrow#3"


def test_ids_outside_the_vocabulary_are_refused_and_nothing_is_lost(
    tmp_path, tiny_model, tiny_sae, tokenizer, docs
):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(d) + "\n" for d in docs[:4]))
    db = tmp_path / "index.duckdb"
    run_index(IndexJob(str(tiny_model), str(tiny_sae), str(good), db, "kept", config=CFG), False)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 2, 3], [4, 50_000, 5]]}), bad)
    job = IndexJob(str(tiny_model), str(tiny_sae), str(bad), db, SAE, config=CFG)
    with pytest.raises(SaedexError, match=r"token id 50000 in row 1 .* outside the model's vocab"):
        run_index(job, progress=False)
    with IndexReader(db) as reader:
        assert [s.id for s in reader.saes()] == ["kept"]
        assert reader.sae("kept").status == "complete"
