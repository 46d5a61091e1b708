"""A file another process holds: one line naming the file and that process, no traceback."""

from __future__ import annotations

from typer.testing import CliRunner

from saedex.cli import app
from tests.conftest import build_tiny_sae, held_by_another_process


def test_index_into_a_file_held_by_another_process(tiny_model, tiny_corpus, tmp_path):
    db = tmp_path / "held.duckdb"
    with held_by_another_process(db) as pid:
        sae = build_tiny_sae(tmp_path / "sae")
        args = ["index", "--model", str(tiny_model), "--sae", str(sae), "--corpus"]
        args += [str(tiny_corpus), "--db", str(db), "--quiet"]
        result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert str(db) in lines[0] and f"PID {pid}" in lines[0], lines[0]
    assert "python" in lines[0] and "Traceback" not in result.output
