"""docker-compose.yml is valid Compose and its commands are ones the saedex CLI accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
import pytest
import typer
import yaml

from saedex.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_shared_volume(compose):
    services = compose["services"]
    assert {"api", "site", "indexer"} <= set(services)
    for name in ("api", "indexer", "publisher"):
        assert "data:/data" in services[name]["volumes"]
    assert any(v.startswith("data:") for v in services["site"]["volumes"])
    devices = services["indexer-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["indexer-gpu"]["profiles"] == ["gpu"]  # optional: only with --profile gpu
    assert (ROOT / compose["x-saedex"]["build"] / "Dockerfile").is_file()


def test_commands_match_the_cli(compose):
    """Each `saedex ...` command parses with the real CLI (unknown options would fail)."""
    root = typer.main.get_command(app)
    commands = [s["command"] for s in compose["services"].values() if s.get("command")]
    saedex_commands = [c for c in commands if c[0] == "saedex"]
    assert len(saedex_commands) >= 4
    for argv in saedex_commands:
        name, *args = argv[1:]
        sub = root.get_command(click.Context(root), name)
        assert sub is not None, f"no such command: saedex {name}"
        sub.make_context(name, list(args))  # raises click.UsageError on a bad option


def test_publisher_exports_the_sae_the_indexer_makes(compose):
    from saedex.indexer.indexing import default_sae_id
    from saedex.indexer.sae import DEFAULT_SAE_DIR

    command = compose["services"]["publisher"]["command"]
    assert command[command.index("--sae") + 1] == default_sae_id(DEFAULT_SAE_DIR)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose absent")
def test_docker_compose_config_validates():
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
