"""`saedex explain` and `saedex score` with the embedded default model on the shipped SAE."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from saedex.cli import app
from saedex.explain.explainer import METHOD
from saedex.indexer.sae import DEFAULT_SAE_DIR
from saedex.store import IndexReader
from tests.test_integration_default import TEXT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not DEFAULT_SAE_DIR.is_dir(), reason="the shipped SAE is not in this tree"),
]


def test_default_model_explains_and_scores(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text(TEXT * 3)
    db = tmp_path / "index.duckdb"
    runner = CliRunner()
    got = runner.invoke(app, ["index", "--corpus", str(corpus), "--db", str(db), "--quiet",
                              "--context-size", "32"])  # fmt: skip
    assert got.exit_code == 0, got.output
    with IndexReader(db) as reader:
        (info,) = reader.saes()
        page = reader.list_features(info.id, order_by="max_activation", descending=True, limit=2)
        features = ",".join(str(f.index) for f in page.items)
    args = ["--db", str(db), "--sae", info.id, "--features", features, "--quiet"]
    got = runner.invoke(app, ["explain", *args, "--batch-size", "2", "--threads", "2"])
    assert got.exit_code == 0, got.output
    with IndexReader(db) as reader:
        made = [e for es in reader.explanations(info.id, [f.index for f in page.items]).values()
                for e in es]  # fmt: skip
    assert made and all(e.source == "model" and e.method == METHOD for e in made)
    assert all(0 < len(e.text) <= 200 and "\n" not in e.text for e in made)
    out = tmp_path / "scores"
    got = runner.invoke(app, ["score", *args, "--baseline", "--out", str(out),
                              "--n-activating", "2", "--n-inactive", "2"])  # fmt: skip
    assert got.exit_code == 0, got.output
    report = json.loads((out / "scores.json").read_text())
    assert {r["kind"] for r in report["rows"]} <= {"model", "baseline"}
    assert (out / "scores.svg").read_text().startswith("<svg")
