"""Provenance: a run records its model, SAE and corpus; other inputs are refused, not mixed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil

import pytest
from typer.testing import CliRunner

from saedex.api.errors import Unavailable
from saedex.api.inference import InferenceEngine
from saedex.cli import app
from saedex.provenance import corpus_fingerprint, model_fingerprint
from saedex.store import IndexReader
from tests.conftest import build_tiny_sae, copy_index, make_corpus_docs
from tests.test_resume import dump, index_cmd, kill_when

runner = CliRunner()


def index(model, sae, corpus, db, *extra, sae_id="s"):
    args = ["index", "--model", str(model), "--sae", str(sae), "--corpus", str(corpus)]
    args += ["--db", str(db), "--sae-id", sae_id, "--context-size", "24", "--quiet", *extra]
    return runner.invoke(app, args)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def made(tiny_model, tiny_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("provenance")
    sae = build_tiny_sae(tmp / "sae")
    db = tmp / "i.duckdb"
    result = index(tiny_model, sae, tiny_corpus, db)
    assert result.exit_code == 0, result.output
    return tiny_model, sae, tiny_corpus, db, tmp


def test_run_records_what_made_it(made):
    model, sae, corpus, db, _ = made
    with IndexReader(db) as reader:
        info = reader.sae("s")
    assert info.sae_weights_sha256 == sha256(sae / "sae_weights.safetensors")
    assert info.sae_cfg_sha256 == sha256(sae / "cfg.json")
    assert info.corpus_fingerprint == "sha256:" + sha256(corpus)
    assert info.model_fingerprint == model_fingerprint(model, str(model))
    assert info.model_fingerprint.startswith("sha256-tree:")
    assert info.saedex_version and info.dtype == "float32" and info.device == "cpu"


def refused(made, what: str, **inputs):
    model, sae, corpus, db, _ = made
    before = dump(db)
    args = {"model": model, "sae": sae, "corpus": corpus, **inputs}
    result = index(args["model"], args["sae"], args["corpus"], db)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "made from other inputs" in lines[0] and what in lines[0], lines[0]
    assert "--overwrite" in lines[0]
    assert dump(db) == before


def test_other_sae_weights_refused(made):
    other = build_tiny_sae(made[4] / "other-sae", seed=7)  # same shapes, other weights
    refused(made, "SAE weights", sae=other)


def test_other_sae_cfg_refused(made):
    other = made[4] / "cfg-sae"
    shutil.copytree(made[1], other)
    cfg = json.loads((other / "cfg.json").read_text())
    cfg["apply_b_dec_to_input"] = not cfg.get("apply_b_dec_to_input", True)
    (other / "cfg.json").write_text(json.dumps(cfg))
    refused(made, "SAE cfg", sae=other)


def test_other_corpus_refused(made):
    corpus = made[4] / "more.jsonl"
    corpus.write_text(made[2].read_text() + json.dumps({"id": "x", "text": "one more"}) + "\n")
    refused(made, "corpus", corpus=corpus)


def test_other_model_refused(made):
    model = made[4] / "model-copy"
    shutil.copytree(made[0], model)
    config = json.loads((model / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (model / "config.json").write_text(json.dumps(config))
    refused(made, "model", model=model)


def test_overwrite_replaces(made, tmp_path):
    model, sae, corpus, db, tmp = made
    copy = tmp_path / "i.duckdb"
    copy_index(db, copy)
    other = build_tiny_sae(tmp / "overwrite-sae", seed=8)
    result = index(model, other, corpus, copy, "--overwrite")
    assert result.exit_code == 0, result.output
    with IndexReader(copy) as reader:
        assert reader.sae("s").sae_weights_sha256 == sha256(other / "sae_weights.safetensors")


def test_resume_with_other_sae_refused(tiny_model, tmp_path):
    """A partial run is never continued with other weights (it would mix two SAEs)."""
    sae = build_tiny_sae(tmp_path / "sae", "topk")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in make_corpus_docs(30, seed=3)))
    db = tmp_path / "partial.duckdb"
    assert kill_when(index_cmd(tiny_model, sae, corpus, db), db, 30_000)
    other = build_tiny_sae(tmp_path / "other", "topk", seed=9)
    result = index(tiny_model, other, corpus, db, sae_id="sae")
    assert result.exit_code == 2 and "SAE weights" in result.output, result.output


def test_directory_corpus_fingerprint_follows_content(tmp_path):
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    first = corpus_fingerprint(tmp_path)
    (tmp_path / "a.txt").write_text("ay!")
    assert corpus_fingerprint(tmp_path) != first
    (tmp_path / "a.txt").write_text("ay")
    assert corpus_fingerprint(tmp_path) == first


def test_live_inference_refuses_a_changed_sae(made, tmp_path):
    model, sae, corpus, db, _ = made
    with IndexReader(db) as reader:
        info = reader.sae("s")
    engine = InferenceEngine()
    moved = tmp_path / "sae"
    shutil.copytree(sae, moved)
    info = type(info)(**{**info.__dict__, "sae_path": str(moved)})
    assert asyncio.run(engine.encode(info, "the quick brown fox")).token_ids
    changed = build_tiny_sae(tmp_path / "changed", seed=11)
    shutil.copy(changed / "sae_weights.safetensors", moved / "sae_weights.safetensors")
    with pytest.raises(Unavailable, match="changed since it was indexed"):
        asyncio.run(InferenceEngine().encode(info, "the quick brown fox"))
