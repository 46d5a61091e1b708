"""Bad input: one clear line, exit code 2, before model work, and nothing indexed is harmed."""

from __future__ import annotations

import json
import shutil

import duckdb
import pytest
from typer.testing import CliRunner

from saedex.cli import app
from saedex.errors import SaedexError
from saedex.store import IndexReader
from tests.conftest import build_tiny_sae, copy_index
from tests.test_resume import dump

runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, ["index", *args, "--quiet", "--context-size", "24"])


@pytest.fixture(scope="module")
def good(tiny_model, tiny_corpus, tmp_path_factory):
    """An index already holding one SAE, which no failing run may touch."""
    tmp = tmp_path_factory.mktemp("errors")
    sae = build_tiny_sae(tmp / "good-sae")
    db = tmp / "index.duckdb"
    result = run_cli(
        "--model", str(tiny_model), "--sae", str(sae), "--corpus", str(tiny_corpus), "--db", str(db)
    )
    assert result.exit_code == 0, result.output
    return tiny_model, tiny_corpus, sae, db, tmp


def broken_sae(tmp, name: str, **cfg_changes):
    src = tmp / "good-sae"
    dst = tmp / name
    shutil.copytree(src, dst, dirs_exist_ok=True)
    cfg = json.loads((dst / "cfg.json").read_text())
    for key, value in cfg_changes.items():
        if key == "hook_name":
            cfg["metadata"]["hook_name"] = value
        else:
            cfg[key] = value
    (dst / "cfg.json").write_text(json.dumps(cfg))
    return dst


def expect_error(good, message: str, *, sae=None, corpus=None, model=None, extra=()):
    tiny_model, tiny_corpus, good_sae, db, _ = good
    before = dump(db)
    result = run_cli(
        "--model", str(model or tiny_model), "--sae", str(sae or good_sae),
        "--corpus", str(corpus or tiny_corpus), "--db", str(db), "--sae-id", "other", *extra,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert dump(db) == before


def test_wrong_d_in(good):
    tmp = good[4]
    sae = build_tiny_sae(tmp / "narrow", d_sae=16)
    cfg = json.loads((sae / "cfg.json").read_text())
    cfg["d_in"] = 16
    (sae / "cfg.json").write_text(json.dumps(cfg))
    expect_error(good, "shape", sae=sae)  # weights disagree with the cfg


def test_d_in_not_model_width(good):
    tmp = good[4]
    from safetensors.torch import save_file

    sae = broken_sae(tmp, "d16", d_in=16)
    import torch

    save_file(
        {
            "W_enc": torch.zeros(16, 64),
            "b_enc": torch.zeros(64),
            "W_dec": torch.zeros(64, 16),
            "b_dec": torch.zeros(16),
        },
        str(sae / "sae_weights.safetensors"),
    )
    expect_error(good, "d_in is 16 but model", sae=sae)


def test_hook_past_last_layer(good):
    expect_error(
        good,
        "unknown hook 'blocks.7.hook_resid_post'",
        sae=broken_sae(good[4], "deep", hook_name="blocks.7.hook_resid_post"),
    )


def test_unknown_hook_name(good):
    expect_error(
        good,
        "unknown hook 'blocks.0.hook_nonsense'",
        sae=broken_sae(good[4], "odd", hook_name="blocks.0.hook_nonsense"),
    )


def test_unsupported_architecture(good):
    expect_error(
        good,
        "unsupported SAE architecture 'gated'",
        sae=broken_sae(good[4], "gated", architecture="gated"),
    )


def test_missing_files(good):
    tmp = good[4]
    no_cfg = broken_sae(tmp, "no-cfg")
    (no_cfg / "cfg.json").unlink()
    expect_error(good, "SAE config missing", sae=no_cfg)
    no_weights = broken_sae(tmp, "no-weights")
    (no_weights / "sae_weights.safetensors").unlink()
    expect_error(good, "SAE weights missing", sae=no_weights)
    expect_error(good, "SAE directory not found", sae=tmp / "nowhere")


def test_corrupt_files(good):
    tmp = good[4]
    bad_weights = broken_sae(tmp, "bad-weights")
    (bad_weights / "sae_weights.safetensors").write_bytes(b"\x00garbage" * 10)
    expect_error(good, "SAE weights are corrupt", sae=bad_weights)
    bad_cfg = broken_sae(tmp, "bad-cfg")
    (bad_cfg / "cfg.json").write_text("{not json")
    expect_error(good, "SAE config is not valid JSON", sae=bad_cfg)


def test_corpus_problems(good):
    tmp = good[4]
    expect_error(good, "corpus not found", corpus=tmp / "missing.jsonl")
    empty = tmp / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"text": "   "}\n')
    expect_error(good, "has no usable text (2 documents skipped)", corpus=empty)
    bad_parquet = tmp / "bad.parquet"
    bad_parquet.write_bytes(b"PAR1 not really")
    expect_error(good, "not valid Parquet", corpus=bad_parquet)


def test_model_problems(good):
    expect_error(good, "cannot load model", model=good[4] / "no-model-here")


def test_changed_settings_on_existing_index(good):
    tiny_model, tiny_corpus, sae, db, _ = good
    before = dump(db)
    result = run_cli(
        "--model",
        str(tiny_model),
        "--sae",
        str(sae),
        "--corpus",
        str(tiny_corpus),
        "--db",
        str(db),
        "--top-k",
        "3",
    )
    assert result.exit_code == 2 and "other settings (top_k)" in result.output
    assert dump(db) == before


def test_index_of_another_schema_version(good):
    tiny_model, tiny_corpus, sae, db, tmp = good
    old = tmp / "old-schema.duckdb"
    copy_index(db, old)
    con = duckdb.connect(str(old))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")  # a newer saedex
    con.close()
    before = old.read_bytes()
    result = run_cli(
        "--model", str(tiny_model), "--sae", str(sae), "--corpus", str(tiny_corpus),
        "--db", str(old), "--sae-id", "other",
    )  # fmt: skip
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "index schema version 99 is not supported" in lines[0]
    assert old.read_bytes() == before
    with pytest.raises(SaedexError, match="schema version 99 is not supported"):
        IndexReader(old)


def test_skipped_documents_are_counted(tiny_model, tmp_path):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox " * 20)
    (corpus / "b.txt").write_bytes(b"\xff\xfe not utf-8 \xc3\x28")
    (corpus / "c.txt").write_text("")
    sae = build_tiny_sae(tmp_path / "sae")
    db = tmp_path / "i.duckdb"
    result = run_cli(
        "--model", str(tiny_model), "--sae", str(sae), "--corpus", str(corpus), "--db", str(db)
    )
    assert result.exit_code == 0, result.output
    from saedex.store import IndexReader

    with IndexReader(db) as reader:
        info = reader.saes()[0]
    assert (info.n_documents, info.n_skipped_documents) == (1, 2)


# -- hooks, context sizes, document ids (issue 12.8) -------------------------------------------


@pytest.mark.parametrize(
    "hook", ["blocks.0.attn.hook_z", "blocks.0.hook_z", "blocks.0.mlp.hook_post"]
)
def test_non_residual_hooks_are_refused(good, hook):
    sae = broken_sae(good[4], hook.replace(".", "-"), hook_name=hook)
    expect_error(good, f"SAE hook {hook!r} is not in the residual stream", sae=sae)


def test_reshaped_activations_are_refused(good):
    sae = broken_sae(good[4], "reshape", reshape_activations="hook_z")
    expect_error(good, "unsupported reshape_activations='hook_z'", sae=sae)


@pytest.mark.parametrize(("size", "message"), [(600, "longer than model"), (40_000, "32767")])
def test_context_size_is_bounded_before_tokenising(good, size, message):
    tiny_model, tiny_corpus, sae, db, _ = good
    before = dump(db)
    result = runner.invoke(
        app,
        ["index", "--model", str(tiny_model), "--sae", str(sae), "--corpus", str(tiny_corpus),
         "--db", str(db), "--sae-id", "long", "--context-size", str(size), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and dump(db) == before


def test_jsonl_rows_keep_their_own_ids(tmp_path):
    from saedex.indexer.corpus import CorpusStats, read_documents

    rows = [{"doc_id": "abc", "text": "a"}, {"id": 0, "text": "b"}, {"text": "c"}]
    rows += [{"id": "", "doc_id": "xyz", "text": "d"}]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids = [d.doc_id for d in read_documents(path, CorpusStats())]
    assert ids == ["abc", "0", "c.jsonl:3", "xyz"]
