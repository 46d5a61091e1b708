"""The demo's own steps on the tiny index: the explanations it made are shown beside the
feature's peak token and promoted tokens (the model's only, current ones, markup kept as text)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from saedex.demo import show_explanations
from saedex.store import IndexReader
from saedex.store.edits import NewExplanation
from tests.conftest import copy_index
from tests.test_explanations import SAE, built_index  # noqa: F401 (fixtures)


@pytest.fixture
def db(built_index, tmp_path) -> Path:  # noqa: F811 (the fixture)
    """A fresh copy of the whole index, with no edits yet."""
    return copy_index(built_index, tmp_path / "index.duckdb")


def test_show_explanations_lists_the_models_own(db):
    with IndexReader(db) as reader:
        info = reader.sae(SAE)
        page = reader.list_features(SAE, order_by="max_activation", descending=True, limit=3)
        live = [f.index for f in page.items]
        rows = [
            NewExplanation(live[0], "[bold]brackets[/bold] in code", "model", "tiny", "m"),
            NewExplanation(live[1], "a person wrote this", "human", "me"),
        ]
        reader.edits(create=True).add_many(SAE, rows, reader.fingerprint(SAE))
        console = Console(record=True, width=200)
        show_explanations(reader, info, console)
    out = console.export_text()
    assert "[bold]brackets[/bold] in code" in out  # shown as text, not as rich markup
    assert "a person wrote this" not in out
    top = reader_top_token(db, live[0])
    assert repr(top) in out


def reader_top_token(db, feature: int) -> str:
    with IndexReader(db) as reader:
        example = reader.top_examples(SAE, [feature], first=1)[feature][0]
    return example.tokens[example.max_token_index]


def test_show_explanations_prints_nothing_without_any(db):
    with IndexReader(db) as reader:
        console = Console(record=True)
        show_explanations(reader, reader.sae(SAE), console)
    assert console.export_text() == ""


def test_promoted_word_needs_one_word_in_two_forms():
    from saedex.data import LogitEntry
    from saedex.steering import promoted_word

    def lens(*tokens):
        return [LogitEntry(t, i, 1.0 - i / 10) for i, t in enumerate(tokens)]

    assert promoted_word(lens(" than", "than", " please", "x", "y")) == "than"
    assert promoted_word(lens(" Early", "er", " early", "a", "b")) == "early"
    assert promoted_word(lens(" strugg", " affili", " enthus", "a", "b")) is None  # fragments
    assert promoted_word(lens("s", " s", "S", "a", "b")) is None  # one letter
    assert promoted_word(lens("?](", "?](", "a", "b", "c")) is None  # not letters
    assert promoted_word(lens("then", "a", "b", "c", "d", " then")) is None  # 2nd past top 5
    assert promoted_word([]) is None


def test_shows_finds_the_word_at_a_word_start():
    from saedex.demo import shows

    assert shows("than", "more Than ever")
    assert shows("workshe", "the worksheets")
    assert not shows("than", "Athanasius")
    assert not shows("a.b", "axb")  # the word is text, not a pattern
