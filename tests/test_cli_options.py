"""CLI options come from the config dataclasses: every field is an option, with its help and
bounds, and a bad value is one clear line."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from saedex import cli
from saedex.config import (
    ConfigError,
    ExplainConfig,
    IndexConfig,
    ScoreConfig,
    ServeConfig,
    SiteConfig,
    TrainConfig,
    setting,
    validate,
)
from saedex.demo import DemoConfig
from saedex.options import config_options, flag

runner = CliRunner()
WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env=WIDE)


@pytest.mark.parametrize(
    ("command", "config"),
    [
        ("index", IndexConfig),
        ("train-sae", TrainConfig),
        ("serve", ServeConfig),
        ("export-site", SiteConfig),
        ("demo", DemoConfig),
        ("explain", ExplainConfig),
        ("score", ScoreConfig),
    ],
)
def test_every_config_field_is_an_option_with_its_help(command, config):
    shown = invoke(command, "--help").output
    for field in dataclasses.fields(config):
        assert f"--{flag(field)}" in shown, field.name
        assert field.metadata["help"].split()[0] in shown


def test_index_options_reach_the_config(monkeypatch):
    seen = {}

    def fake_run(jobs, progress):
        seen["config"] = jobs[0].config
        raise KeyboardInterrupt

    monkeypatch.setattr("saedex.indexer.indexing.run_indexes", fake_run)
    result = invoke(
        "index", "--db", "x.duckdb", "--n-logits", "3", "--hist-bins", "7", "--no-bos",
        "--commit-interval", "5", "--max-tokens", "100", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 130, result.output
    cfg = seen["config"]
    assert (cfg.n_logits, cfg.hist_bins, cfg.prepend_bos) == (3, 7, False)
    assert (cfg.commit_interval_s, cfg.max_tokens, cfg.context_size) == (5.0, 100, 128)


def test_serve_options_reach_the_config(monkeypatch):
    seen = {}
    monkeypatch.setattr(
        "saedex.api.app.serve", lambda db, config, threads, ready=None: seen.update(c=config)
    )
    result = invoke(
        "serve", "--db", "x.duckdb", "--max-active-top-k", "7", "--cors-origin", "a",
        "--cors-origin", "b", "--no-inference", "--port", "0", "--api-key-file", "key.txt",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen["c"] == ServeConfig(
        port=0, max_active_top_k=7, inference=False, cors_origins=("a", "b"),
        api_key_file=Path("key.txt"),
    )  # fmt: skip


class _Stop(Exception):
    """Raised by a stand-in once it has seen the config (nothing is loaded)."""


@pytest.mark.parametrize(
    ("command", "target", "args", "expected"),
    [
        (
            "explain",
            "saedex.explain.explainer.explain",
            ("--batch-size", "3", "--n-examples", "4", "--window-before", "5", "--n-logits",
             "0", "--max-new-tokens", "9", "--limit", "2", "--time-budget", "1.5"),
            ExplainConfig(batch_size=3, n_examples=4, window_before=5, n_logits=0,
                          max_new_tokens=9, limit=2, time_budget_s=1.5),
        ),
        (
            "score",
            "saedex.explain.scoring.score",
            ("--n-activating", "2", "--n-inactive", "0", "--window-after", "7", "--batch-size",
             "5", "--seed", "11"),
            ScoreConfig(n_activating=2, n_inactive=0, window_after=7, batch_size=5, seed=11),
        ),
    ],
)  # fmt: skip
def test_explain_and_score_options_reach_the_config(monkeypatch, command, target, args, expected):
    seen = {}

    @contextmanager
    def explaining(db, sae, features, spec):
        yield None, [1], None

    def fake_run(*positional, **kwargs):
        seen["config"] = next(a for a in positional if isinstance(a, type(expected)))
        raise _Stop

    monkeypatch.setattr("saedex.cli._explaining", explaining)
    monkeypatch.setattr("saedex.explain.explainer.live_features", lambda r, s, w: w)
    monkeypatch.setattr(target, fake_run)
    result = invoke(command, "--db", "x.duckdb", "--sae", "s", "--no-explained-only"
                    if command == "score" else "--quiet", *args)  # fmt: skip
    assert isinstance(result.exception, _Stop), result.output
    assert seen["config"] == expected


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("index", "--db", "x", "--context-size", "40000"), "--context-size"),
        (("index", "--db", "x", "--hist-bins", "0"), "--hist-bins"),
        (("index", "--db", "x", "--memory-limit", "lots"), "--memory-limit"),
        (("train-sae", "--out", "x", "--hook", "h", "--architecture", "gated"), "--architecture"),
        (("explain", "--db", "x", "--sae", "s", "--batch-size", "0"), "--batch-size"),
        (("score", "--db", "x", "--sae", "s", "--n-activating", "0"), "--n-activating"),
    ],
)
def test_bad_values_are_one_clear_error(args, fragment):
    result = invoke(*args)
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output


def test_configs_validate_however_they_are_built():
    with pytest.raises(ConfigError, match="context_size must be at most 32767"):
        IndexConfig(context_size=40_000)
    with pytest.raises(ConfigError, match="memory_limit must be a size such as"):
        IndexConfig(memory_limit="4 gigs")
    assert IndexConfig(memory_limit="1.5GB").memory_limit == "1.5GB"
    with pytest.raises(ConfigError, match="architecture must be one of"):
        TrainConfig(architecture="gated")
    with pytest.raises(ConfigError, match="max_page_size must be at least 1"):
        ServeConfig(max_page_size=0)


@dataclass(frozen=True)
class Toy:
    """A config as another helper might grow one."""

    width: int = setting(3, "How wide.", min=1)
    shiny_new_limit: float = setting(0.5, "Added later.", max=1.0)

    def __post_init__(self):
        validate(self)


def test_a_new_field_becomes_an_option():
    """What another module adds to a config is on the CLI with nothing else to write."""

    app = typer.Typer()
    got = {}

    @app.command()
    @config_options("toy", Toy)
    def run(name: Annotated[str, typer.Option()], toy: Toy):
        got["toy"] = toy

    result = runner.invoke(app, ["--name", "n", "--shiny-new-limit", "0.25"], env=WIDE)
    assert result.exit_code == 0, result.output and got["toy"] == Toy(3, 0.25)
    assert "Added later." in runner.invoke(app, ["--help"], env=WIDE).output
    assert runner.invoke(app, ["--name", "n", "--shiny-new-limit", "2"]).exit_code == 2
