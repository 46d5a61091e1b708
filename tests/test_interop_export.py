"""Exports for other tools (Parquet, Neuronpedia) and feature vectors, on real tiny indexes."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from saedex.cli import app
from saedex.config import IndexConfig
from saedex.errors import SaedexError
from saedex.indexer.indexing import IndexJob, run_index
from saedex.neuronpedia import NeuronpediaJob, export_neuronpedia, read_batches
from saedex.store import IndexReader
from saedex.store.derived import publish_derived
from saedex.store.export import TABLES, export_parquet, read_table
from saedex.store.views import connect
from tests.conftest import build_tiny_sae, copy_index, run_file

SAES = ("relu", "topk")

# Field lists as Neuronpedia's own dataclasses declare them (hijohnnylin/neuronpedia,
# utils/neuronpedia-utils/neuronpedia_utils/db_models/*.py), in their order.
NP_FEATURE = [
    "modelId",
    "layer",
    "index",
    "creatorId",
    "createdAt",
    "maxActApprox",
    "hasVector",
    "vector",
    "vectorLabel",
    "vectorDefaultSteerStrength",
    "hookName",
    "topkCosSimIndices",
    "topkCosSimValues",
    "neuron_alignment_indices",
    "neuron_alignment_values",
    "neuron_alignment_l1",
    "correlated_neurons_indices",
    "correlated_neurons_pearson",
    "correlated_neurons_l1",
    "correlated_features_indices",
    "correlated_features_pearson",
    "correlated_features_l1",
    "neg_str",
    "neg_values",
    "pos_str",
    "pos_values",
    "frac_nonzero",
    "freq_hist_data_bar_heights",
    "freq_hist_data_bar_values",
    "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values",
    "decoder_weights_dist",
    "sourceSetName",
]
NP_ACTIVATION = [
    "id",
    "tokens",
    "index",
    "layer",
    "modelId",
    "maxValue",
    "maxValueTokenIndex",
    "minValue",
    "values",
    "creatorId",
    "dataSource",
    "dataIndex",
    "dfaValues",
    "dfaTargetIndex",
    "dfaMaxValue",
    "createdAt",
    "lossValues",
    "logitContributions",
    "binMin",
    "binMax",
    "binContains",
    "qualifyingTokenIndex",
    "zIndices",
    "zValues",
]
NP_EXPLANATION = [
    "id",
    "modelId",
    "layer",
    "index",
    "authorId",
    "description",
    "embedding",
    "typeName",
    "explanationModelName",
    "umap_x",
    "umap_y",
    "umap_cluster",
    "umap_log_feature_sparsity",
]
NP_SOURCE = [
    "id",
    "modelId",
    "setName",
    "creatorId",
    "hasDashboards",
    "inferenceEnabled",
    "inferenceHosts",
    "saelensConfig",
    "saelensRelease",
    "saelensSaeId",
    "hfRepoId",
    "hfFolderId",
    "visibility",
    "defaultOfModelId",
    "hasUmap",
    "hasUmapLogSparsity",
    "hasUmapClusters",
    "num_prompts",
    "num_tokens_in_prompt",
    "dataset",
    "notes",
    "createdAt",
]
NP_MODEL = [
    "id",
    "instruct",
    "creatorId",
    "displayNameShort",
    "displayName",
    "tlensId",
    "dimension",
    "visibility",
    "defaultSourceSetName",
    "defaultSourceId",
    "inferenceEnabled",
    "layers",
    "neuronsPerLayer",
    "createdAt",
    "owner",
    "updatedAt",
    "website",
]
NP_SOURCESET = [
    "modelId",
    "name",
    "creatorId",
    "hasDashboards",
    "visibility",
    "description",
    "type",
    "creatorName",
    "urls",
    "creatorEmail",
    "releaseName",
    "defaultOfModelId",
    "defaultRange",
    "defaultShowBreaks",
    "showDfa",
    "showCorrelated",
    "showHeadAttribution",
    "showUmap",
    "createdAt",
]
NP_RELEASE = [
    "name",
    "description",
    "creatorName",
    "creatorId",
    "visibility",
    "isNewUi",
    "featured",
    "descriptionShort",
    "urls",
    "creatorEmail",
    "creatorNameShort",
    "defaultSourceSetName",
    "defaultSourceId",
    "defaultUmapSourceIds",
    "createdAt",
]


@pytest.fixture(scope="module")
def sae_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("interop-saes")
    return {
        "relu": build_tiny_sae(root / "relu"),
        "topk": build_tiny_sae(root / "topk", "topk", d_sae=48, seed=3),
    }


@pytest.fixture(scope="module")
def db(tmp_path_factory, tiny_model, tiny_corpus, sae_dirs) -> Path:
    """One index file holding two SAEs (so partitioning by SAE is exercised)."""
    path = tmp_path_factory.mktemp("interop") / "index.duckdb"
    cfg = IndexConfig(context_size=48, batch_size=8, n_intervals=4, examples_per_interval=2)
    for sae_id in SAES:
        job = IndexJob(str(tiny_model), str(sae_dirs[sae_id]), str(tiny_corpus), path, sae_id)
        run_index(IndexJob(**{**job.__dict__, "config": cfg}), progress=False)
    return path


# -- Parquet -------------------------------------------------------------------------------------


def _sorted(rel: duckdb.DuckDBPyRelation, columns: list[str]) -> list[tuple]:
    return rel.select(*[duckdb.ColumnExpression(c) for c in columns]).order("ALL").fetchall()


def test_parquet_round_trip_equals_every_table(db, tmp_path):
    from saedex.store.schema import TABLES as SCHEMA_TABLES

    assert set(TABLES) == set(SCHEMA_TABLES)  # a table added to the schema is exported too
    db = copy_index(db, tmp_path / "index.duckdb")
    publish_derived(db, "derived-rows", list(SAES), _derived_rows)  # rows in a derived file too
    out = tmp_path / "pq"
    result = export_parquet(db, out)
    con = connect(db)
    try:
        for table in TABLES:
            stored = con.table(table)
            columns = stored.columns
            back = read_table(out, table)
            assert sorted(back.columns) == sorted(columns), table
            assert back.types == [stored.types[columns.index(c)] for c in back.columns], table
            assert _sorted(back, columns) == _sorted(stored, columns), table
            assert result.rows[table] == len(stored), table
            assert len(stored) > 0 or table == "excluded_tokens", table
    finally:
        con.close()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["saes"] == list(SAES)
    assert {p.name for p in (out / "activations").iterdir()} == {f"sae_id={s}" for s in SAES}


def _derived_rows(con) -> None:
    """A row in each table that is filled after indexing (as `saedex match` would)."""
    a, b = SAES[0], SAES[1]
    con.execute("INSERT INTO coactivations VALUES (?, 0, 1, 2, 3, 0.25, 1.5)", [a])
    con.execute(
        "INSERT INTO feature_matches VALUES (?, 0, ?, 1, 0.9, 0.8, 7, 0.5, 'parent')", [a, b]
    )
    con.execute("INSERT INTO feature_families VALUES (?, 1, ?, 2, 0.75)", [b, a])


def test_parquet_export_of_one_sae_reads_with_pandas(db, tmp_path):
    out = tmp_path / "pq"
    export_parquet(db, out, ["topk"])
    pd = pytest.importorskip("pandas")
    frame = pd.read_parquet(out / "features")
    assert set(frame["sae_id"].astype(str)) == {"topk"}
    with IndexReader(db) as reader:
        assert len(frame) == reader.sae("topk").d_sae
    saes = pd.read_parquet(out / "saes.parquet")
    assert list(saes["sae_id"]) == ["topk"]


def test_parquet_export_refuses_to_clobber(db, tmp_path):
    out = tmp_path / "pq"
    export_parquet(db, out, ["relu"])
    with pytest.raises(SaedexError, match="--overwrite"):
        export_parquet(db, out)
    export_parquet(db, out, overwrite=True)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(SaedexError, match="not empty"):
        export_parquet(db, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(SaedexError, match="no SAE 'nope'"):
        export_parquet(db, tmp_path / "new", ["nope"])


def test_cli_export_parquet(db, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["export", "--db", str(db), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file()
    again = CliRunner().invoke(app, ["export", "--db", str(db), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output


# -- vectors -------------------------------------------------------------------------------------


def test_reader_vectors_are_the_weights_rows(db, sae_dirs):
    weights = load_file(str(sae_dirs["relu"] / "sae_weights.safetensors"))
    with IndexReader(db) as reader:
        dec = reader.vectors("relu", [0, 5, 63])
        enc = reader.vectors("relu", [5], "encoder")
        with pytest.raises(SaedexError, match="no feature 64"):
            reader.vectors("relu", [64])
        with pytest.raises(SaedexError, match="vector kind"):
            reader.vectors("relu", [1], "bias")
    for i in (0, 5, 63):
        assert torch.equal(torch.tensor(dec[i]), weights["W_dec"][i])
    assert torch.equal(torch.tensor(enc[5]), weights["W_enc"][:, 5])


def test_vectors_of_a_moved_sae_is_a_clear_error(db, sae_dirs, tmp_path):
    moved_db = copy_index(db, tmp_path / "index.duckdb")
    con = duckdb.connect(str(run_file(moved_db, "relu")))
    con.execute("UPDATE saes SET sae_path = ? WHERE sae_id = 'relu'", [str(tmp_path / "gone")])
    con.close()
    with IndexReader(moved_db) as reader, pytest.raises(SaedexError, match="moved or deleted"):
        reader.vectors("relu", [0])


def test_vectors_of_changed_weights_are_refused(db, sae_dirs, tmp_path):
    copied = shutil.copytree(sae_dirs["relu"], tmp_path / "sae")
    weights = load_file(str(copied / "sae_weights.safetensors"))
    save_file({**weights, "W_dec": weights["W_dec"] * 2}, str(copied / "sae_weights.safetensors"))
    changed_db = copy_index(db, tmp_path / "index.duckdb")
    con = duckdb.connect(str(run_file(changed_db, "relu")))
    con.execute("UPDATE saes SET sae_path = ? WHERE sae_id = 'relu'", [str(copied)])
    con.close()
    with IndexReader(changed_db) as reader, pytest.raises(SaedexError, match="changed since"):
        reader.vectors("relu", [0])


def test_bfloat16_weights_are_read(tmp_path, sae_dirs):
    from saedex.weights import feature_vectors

    weights = load_file(str(sae_dirs["topk"] / "sae_weights.safetensors"))
    path = tmp_path / "w.safetensors"
    save_file({k: v.bfloat16() for k, v in weights.items()}, str(path))
    got = feature_vectors(path, "decoder", [7])[7]
    assert torch.equal(torch.tensor(got), weights["W_dec"][7].bfloat16().float())


# -- Neuronpedia ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(db, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("np")
    job = NeuronpediaJob(db, "relu", out, model_id="tiny-llama")
    result = export_neuronpedia(job, progress=False)
    assert result.folder == out / "v1" / "tiny-llama" / "0-res-saedex"
    return result.folder


def test_neuronpedia_layout_and_metadata_rows(bundle):
    expected = {"release": NP_RELEASE, "model": NP_MODEL, "sourceset": NP_SOURCESET}
    expected["source"] = NP_SOURCE
    for name, fields in expected.items():
        (row,) = [json.loads(line) for line in (bundle / f"{name}.jsonl").read_text().splitlines()]
        assert list(row) == fields, name
    source = json.loads((bundle / "source.jsonl").read_text())
    assert (source["id"], source["modelId"], source["setName"]) == (
        "0-res-saedex",
        "tiny-llama",
        "res-saedex",
    )
    assert sorted(p.name for p in (bundle / "features").iterdir()) == ["batch-0.jsonl.gz"]
    assert (bundle / "explanations").is_dir()
    gzip.decompress((bundle / "activations" / "batch-0.jsonl.gz").read_bytes())


def test_neuronpedia_feature_rows_equal_the_index(bundle, db, sae_dirs):
    rows = list(read_batches(bundle / "features"))
    weights = load_file(str(sae_dirs["relu"] / "sae_weights.safetensors"))["W_dec"]
    with IndexReader(db) as reader:
        info = reader.sae("relu")
        assert [r["index"] for r in rows] == [str(i) for i in range(info.d_sae)]
        for row in rows:
            assert list(row) == NP_FEATURE
            i = int(row["index"])
            data = reader.feature("relu", i)
            s = data.summary
            assert (row["modelId"], row["layer"], row["sourceSetName"]) == (
                "tiny-llama",
                "0-res-saedex",
                "res-saedex",
            )
            assert row["maxActApprox"] == round(s.max_activation, 5)
            assert row["frac_nonzero"] == s.density
            assert row["hasVector"] and row["hookName"] == info.hook_name
            assert torch.equal(torch.tensor(row["vector"]), weights[i])
            assert row["vectorDefaultSteerStrength"] == row["maxActApprox"]
            assert row["pos_str"] == [e.token for e in s.top_logits]
            assert row["neg_values"] == pytest.approx(
                [e.value for e in data.bottom_logits], abs=6e-6
            )
            assert row["topkCosSimIndices"] == [n.index for n in data.neighbours]
            assert row["freq_hist_data_bar_heights"] == data.histogram.counts
            assert len(row["freq_hist_data_bar_values"]) == len(data.histogram.counts)
            for absent in ("neuron_alignment_indices", "correlated_features_l1"):
                assert row[absent] == []
            assert row["vectorLabel"] is None


def test_neuronpedia_activation_rows_equal_the_index(bundle, db):
    rows = list(read_batches(bundle / "activations"))
    assert rows and all(list(r) == NP_ACTIVATION for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    by_feature: dict[str, list[dict]] = {}
    for row in rows:
        by_feature.setdefault(row["index"], []).append(row)
    with IndexReader(db) as reader:
        for index, got in by_feature.items():
            data = reader.feature("relu", int(index))
            top = data.top_examples
            samples = [(s, ex) for s in data.interval_samples for ex in s.examples]
            assert len(got) == len(top) + len(samples)
            for row, ex in zip(got, top, strict=False):
                assert row["tokens"] == ex.tokens
                assert row["values"] == pytest.approx(ex.activations, abs=6e-6)
                assert row["maxValue"] == pytest.approx(ex.max_activation, abs=6e-6)
                assert row["maxValueTokenIndex"] == ex.max_token_index
                assert (row["binMin"], row["binContains"]) == (-1, -1)
                assert row["binMax"] == round(data.summary.max_activation, 5)
            for row, (sample, ex) in zip(got[len(top) :], samples, strict=True):
                assert row["values"] == pytest.approx(ex.activations, abs=6e-6)
                assert row["binMin"] == round(sample.low, 5)
                assert row["binContains"] == round(sample.fraction, 5)
                assert row["qualifyingTokenIndex"] == ex.max_token_index
            assert all(r["dfaValues"] == [] and r["dataIndex"] is None for r in got)


def test_neuronpedia_explanation_rows(bundle):
    from datetime import datetime

    from saedex.data import Explanation
    from saedex.neuronpedia import _Names, explanation_rows

    names = _Names("m", "res-x", "3-res-x", "creator", datetime.now().isoformat())
    e = Explanation(7, "s", 12, "dates", "model", "gpt-4o", "oai_token-act-pair", {}, None, True, None, None)  # fmt: skip
    (row,) = explanation_rows([e], names)
    assert list(row) == NP_EXPLANATION
    assert (row["index"], row["description"], row["typeName"]) == (
        "12",
        "dates",
        "oai_token-act-pair",
    )
    assert row["explanationModelName"] == "gpt-4o" and row["authorId"] == "creator"


def test_neuronpedia_refuses_to_clobber_and_names_are_checked(bundle, db):
    out = bundle.parents[2]
    with pytest.raises(SaedexError, match="--overwrite"):
        export_neuronpedia(NeuronpediaJob(db, "relu", out, "tiny-llama"), progress=False)
    with pytest.raises(SaedexError, match="source set"):
        export_neuronpedia(NeuronpediaJob(db, "relu", out, source_set="a/b"), progress=False)
    with pytest.raises(SaedexError, match="no SAE 'x'"):
        export_neuronpedia(NeuronpediaJob(db, "x", out), progress=False)


def test_cli_neuronpedia_without_vectors(db, tmp_path):
    args = ["export", "--db", str(db), "--out", str(tmp_path), "--format", "neuronpedia"]
    result = CliRunner().invoke(
        app, [*args, "--sae", "topk", "--model-id", "tiny-llama", "--no-vectors", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    (row, *_) = read_batches(tmp_path / "v1" / "tiny-llama" / "0-res-saedex" / "features")
    assert (row["hasVector"], row["vector"], row["hookName"]) == (False, [], None)
    assert row["vectorDefaultSteerStrength"] == 10


def test_export_does_not_import_torch(db, tmp_path):
    """Both exports run without torch (float32 weights are read with numpy)."""
    code = (
        "import sys; from pathlib import Path; from saedex.store.export import export_parquet; "
        "from saedex.neuronpedia import NeuronpediaJob, export_neuronpedia; "
        f"export_parquet({str(db)!r}, {str(tmp_path / 'pq')!r}); "
        f"export_neuronpedia(NeuronpediaJob(Path({str(db)!r}), 'relu', Path({str(tmp_path)!r})), False); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
