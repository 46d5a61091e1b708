"""The SAE trainer on the tiny model: it learns, writes a loadable and indexable SAE, resumes
to the same weights as an uninterrupted run, and rejects bad inputs with one-line errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from saedex.cli import app
from saedex.config import TrainConfig
from saedex.errors import SaedexError
from saedex.indexer import training
from saedex.indexer.sae import DEFAULT_SAE_DIR, WEIGHTS_FILE, load_sae
from saedex.indexer.training import TrainJob, train_sae
from tests.conftest import D_MODEL, HOOK

# 32-token steps, 256-token chunks (8+ steps each): a checkpoint every 5 steps falls mid-chunk.
# Few, large model batches keep the run to a handful of (overhead-bound) tiny-model passes.
SETTINGS = {
    "d_sae": 64,
    "k": 4,
    "lr": 1e-2,
    "batch_tokens": 32,
    "total_tokens": 32 * 20,
    "buffer_tokens": 256,
    "context_size": 32,
    "model_batch_size": 16,
    "dead_tokens": 128,
    "checkpoint_every": 5,
    "eval_tokens": 200,
    "ce_eval_tokens": 50,
}
CFG = TrainConfig(**SETTINGS)
STEPS = 20


def job(tiny_model: Path, corpus: Path, out: Path, **changes) -> TrainJob:
    cfg = TrainConfig(**{**CFG.to_dict(), **changes})
    return TrainJob(str(tiny_model), HOOK, str(corpus), out, config=cfg)


def record_steps(monkeypatch) -> list[dict]:
    """Each step's metrics, measured on its batch before the update."""
    seen: list[dict] = []
    original = training._train_step

    def wrapped(state, *args):
        original(state, *args)
        seen.append({"step": state.step, **state.metrics})

    monkeypatch.setattr(training, "_train_step", wrapped)
    return seen


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_corpus, tmp_path_factory):
    """One TopK run through the CLI, with every step's metrics recorded."""
    out = tmp_path_factory.mktemp("train") / "topk"
    with pytest.MonkeyPatch.context() as mp:
        steps = record_steps(mp)
        result = CliRunner().invoke(app, cli_args(tiny_model, tiny_corpus, out))
    assert result.exit_code == 0, result.output
    return out, steps, result.output


def cli_args(tiny_model: Path, corpus: Path, out: Path) -> list[str]:
    options = [(f"--{k.replace('_', '-')}", str(v)) for k, v in SETTINGS.items()]
    return [
        "train-sae",
        *("--model", str(tiny_model), "--hook", HOOK, "--corpus", str(corpus), "--out", str(out)),
        *(part for option in options for part in option),
        "--quiet",
    ]


def test_training_reduces_reconstruction_loss(trained):
    out, steps, output = trained
    report = json.loads((out / "report.json").read_text())
    initial_loss = 1 - steps[0]["fve"]  # normalised MSE of the first batch, before any update
    late_loss = sum(1 - s["fve"] for s in steps[-5:]) / 5
    assert len(steps) == STEPS
    assert late_loss < 0.85 * initial_loss
    assert 1 - report["fve"] < 0.8 * initial_loss
    assert report["mean_l0"] <= 4
    assert report["train_steps"] == STEPS and report["seed"] == 0
    assert "FVE" in output and "CE loss recovered" in output


def test_writes_a_loadable_and_indexable_sae(trained, tiny_model, tiny_corpus, tmp_path):
    out, _, _ = trained
    sae = load_sae(out)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 4
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.hook_name) == (D_MODEL, 64, HOOK)
    assert sae.cfg.apply_b_dec_to_input
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    meta = json.loads((out / "cfg.json").read_text())["metadata"]
    assert meta["saedex_training"]["seed"] == 0 and meta["context_size"] == 32
    db = tmp_path / "index.duckdb"
    args = ["index", "--db", str(db), "--model", str(tiny_model), "--sae", str(out)]
    args += ["--corpus", str(tiny_corpus), "--context-size", "32", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "64 features" in result.output


def test_rerun_of_a_finished_run_only_reports(trained, tiny_model, tiny_corpus, monkeypatch):
    out, _, _ = trained
    steps = record_steps(monkeypatch)
    report = train_sae(job(tiny_model, tiny_corpus, out), progress=False)
    assert steps == [] and report.train_steps == STEPS


def test_standard_architecture(tiny_model, tiny_corpus, tmp_path, monkeypatch):
    steps = record_steps(monkeypatch)
    out = tmp_path / "standard"
    report = train_sae(
        job(tiny_model, tiny_corpus, out, architecture="standard", l1_coefficient=0.05),
        progress=False,
    )
    sae = load_sae(out)
    assert sae.cfg.architecture == "standard" and sae.cfg.k is None
    assert 1 - report.fve < 0.8 * (1 - steps[0]["fve"])
    assert 0 < report.mean_l0 < 64


def test_resume_continues_and_matches_an_uninterrupted_run(
    trained, tiny_model, tiny_corpus, tmp_path, monkeypatch
):
    out = tmp_path / "interrupted"
    interrupt_at(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt):
        train_sae(job(tiny_model, tiny_corpus, out), progress=False)
    assert not (out / WEIGHTS_FILE).exists()
    monkeypatch.undo()
    steps = record_steps(monkeypatch)
    train_sae(job(tiny_model, tiny_corpus, out), progress=False)
    assert [s["step"] for s in steps] == list(range(11, STEPS + 1))
    resumed, uninterrupted = load_file(out / WEIGHTS_FILE), load_file(trained[0] / WEIGHTS_FILE)
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name


def interrupt_at(monkeypatch, step: int) -> None:
    original = training._save_checkpoint

    def save_then_die(job, state):
        original(job, state)
        if state.step == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_die)


def test_activation_cache_serves_later_epochs(tiny_model, tiny_corpus, tmp_path, monkeypatch):
    """~300 corpus tokens a epoch, 640 trained: the model runs in the first epoch only, and an
    interrupted cached run resumes to the same weights."""
    model_passes = []
    original = training._counted_activations
    monkeypatch.setattr(
        training, "_counted_activations", lambda *a: model_passes.append(1) or original(*a)
    )

    def cached(out: Path) -> TrainJob:
        plain = job(tiny_model, tiny_corpus, out, corpus_tokens=300)
        return replace(plain, activation_cache=tmp_path / "cache")

    report = train_sae(cached(tmp_path / "a"), progress=False)
    assert report.train_steps == STEPS and len(model_passes) == 1
    interrupt_at(monkeypatch, 15)
    with pytest.raises(KeyboardInterrupt):
        train_sae(cached(tmp_path / "b"), progress=False)
    monkeypatch.undo()
    train_sae(cached(tmp_path / "b"), progress=False)
    assert len(model_passes) == 1
    first, second = (
        load_file(tmp_path / "a" / WEIGHTS_FILE),
        load_file(tmp_path / "b" / WEIGHTS_FILE),
    )
    assert all(torch.equal(first[name], second[name]) for name in first)
    with pytest.raises(SaedexError, match="other settings"):
        train_sae(replace(cached(tmp_path / "c"), hook="blocks.1.hook_resid_post"), progress=False)


def test_a_changed_setting_refuses_to_resume_unless_told_to_restart(
    trained, tiny_model, tiny_corpus, tmp_path, monkeypatch
):
    out = tmp_path / "copy"
    shutil.copytree(trained[0], out)
    with pytest.raises(SaedexError, match="other settings \\(lr\\)") as err:
        train_sae(job(tiny_model, tiny_corpus, out, lr=1e-3), progress=False)
    assert "\n" not in str(err.value)
    steps = record_steps(monkeypatch)
    train_sae(job(tiny_model, tiny_corpus, out, lr=1e-3), progress=False, resume=False)
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"architecture": "jumprelu"}, "architecture must be one of topk, standard"),
        ({"k": 0}, "k must be between"),
        ({"total_tokens": 10}, "at least one batch"),
        ({"buffer_tokens": 8}, "at least one batch"),
        ({"checkpoint_every": 0}, "checkpoint_every must be at least 1"),
        ({"corpus_tokens": 0}, "corpus_tokens must be at least 1"),
    ],
)
def test_bad_settings(tiny_model, tiny_corpus, tmp_path, changes, message):
    with pytest.raises(SaedexError, match=message) as err:
        train_sae(job(tiny_model, tiny_corpus, tmp_path / "out", **changes), progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ("blocks.7.hook_resid_post", "has 2 layers"),
        ("blocks.0.hook_nonsense", "unknown hook"),
        ("embed", "expected blocks"),
    ],
)
def test_bad_hooks(tiny_model, tiny_corpus, tmp_path, hook, message):
    bad = TrainJob(str(tiny_model), hook, str(tiny_corpus), tmp_path / "out", config=CFG)
    with pytest.raises(SaedexError, match=message) as err:
        train_sae(bad, progress=False)
    assert "\n" not in str(err.value)


def test_empty_corpus_is_a_one_line_cli_error(tiny_model, tmp_path):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text(json.dumps({"text": "   "}) + "\n")
    result = CliRunner().invoke(app, cli_args(tiny_model, corpus, tmp_path / "out"))
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no training text" in errors[0]


def test_refuses_to_overwrite_a_foreign_sae(tiny_model, tiny_corpus, tiny_sae, tmp_path):
    out = tmp_path / "sae"
    shutil.copytree(tiny_sae, out)
    with pytest.raises(SaedexError, match="did not make"):
        train_sae(job(tiny_model, tiny_corpus, out), progress=False)


def test_shipped_sae_matches_the_default_model():
    if not DEFAULT_SAE_DIR.is_dir():
        pytest.skip(f"no shipped SAE at {DEFAULT_SAE_DIR}")
    sae = load_sae(DEFAULT_SAE_DIR)
    assert sae.cfg.d_in == 576
    assert sae.cfg.hook_name == "blocks.6.hook_resid_post"
    assert sae.cfg.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert sae.cfg.architecture == "topk"
    size = sum(p.stat().st_size for p in DEFAULT_SAE_DIR.iterdir())
    assert size < 15_000_000
    report = json.loads((DEFAULT_SAE_DIR / "report.json").read_text())
    assert report["fve"] >= 0.80 and report["dead_fraction"] <= 0.05
    assert report["ce_loss_recovered"] >= 0.80 and report["mean_l0"] <= 64
