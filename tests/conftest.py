"""Shared fixtures: a tiny random Llama (with its own BPE tokenizer), tiny SAEs, a small corpus."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from saedex.config import IndexConfig
from saedex.indexer.sae import SaeConfig, save_sae

D_MODEL = 32
N_LAYERS = 2
HOOK = "blocks.0.hook_resid_post"
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "brew",
    "potent",
    "elixirs",
    "under",
    "purple",
    "skies",
    "and",
    "tomorrow",
    "ninety",
    "kings",
    "shall",
    "dance",
    "near",
    "golden",
    "rivers",
    "def",
    "return",
    "import",
    "class",
    "lambda",
    "yield",
    "GATTACA",
    "ACGT",
    "protein",
    "sequence",
    "verse",
    "chapter",
]


def make_corpus_docs(n_docs: int = 24, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        n_words = rng.randint(20, 160)
        text = " ".join(rng.choice(WORDS) for _ in range(n_words))
        docs.append({"id": f"doc-{i}", "source": f"src-{i % 3}", "text": text})
    return docs


def one_document_contexts(n_contexts: int, size: int, sae_id: str = "s") -> Iterator[dict]:
    """Planned `contexts` rows of one document (for IndexWriter.write_plan in store tests)."""
    for c in range(n_contexts):
        yield {"sae_id": sae_id, "context_id": c, "doc_index": 0, "token_start": c * size,
               "token_ids": list(range(size))}  # fmt: skip


def build_tiny_model(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([d["text"] for d in make_corpus_docs(60, seed=1)], trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a non-trivial final norm, so folding it is tested
        model.model.norm.weight.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


def build_tiny_sae(path: Path, architecture: str = "standard", d_sae: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weights = {
        "W_enc": torch.randn(D_MODEL, d_sae, generator=gen) / D_MODEL**0.5,
        "b_enc": torch.randn(d_sae, generator=gen) * 0.1 - 0.2,
        "W_dec": torch.randn(d_sae, D_MODEL, generator=gen) / D_MODEL**0.5,
        "b_dec": torch.randn(D_MODEL, generator=gen) * 0.01,
    }
    if architecture == "jumprelu":
        weights["threshold"] = torch.rand(d_sae, generator=gen) * 0.3
    cfg = SaeConfig(
        architecture=architecture,
        d_in=D_MODEL,
        d_sae=d_sae,
        hook_name=HOOK,
        model_name="tiny-llama",
        k=8 if architecture == "topk" else None,
        apply_b_dec_to_input=True,
    )
    return save_sae(path, weights, cfg)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_sae(tmp_path_factory) -> Path:
    return build_tiny_sae(tmp_path_factory.mktemp("sae") / "tiny-sae")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with path.open("w") as fh:
        for doc in make_corpus_docs():
            fh.write(json.dumps(doc) + "\n")
    return path


# -- an index of the tiny fixtures, served by the API tests and fuzzed by test_fuzz_api --------

API_SAE = "sae"


@pytest.fixture(scope="session")
def api_db(tmp_path_factory, tiny_model, tiny_sae, tiny_corpus) -> Path:
    """An index whose contexts split documents and whose sink rule excludes some tokens."""
    from saedex.indexer.indexing import IndexJob, run_index

    db = tmp_path_factory.mktemp("api") / "index.duckdb"
    cfg = IndexConfig(context_size=48, batch_size=8, sink_norm_multiple=1.3)
    job = IndexJob(str(tiny_model), str(tiny_sae), str(tiny_corpus), db, API_SAE, config=cfg)
    run_index(job, False)
    return db


@pytest.fixture(scope="session")
def reader(api_db):
    from saedex.store import IndexReader

    with IndexReader(api_db) as r:
        yield r


@pytest.fixture(scope="session")
def engine():
    from saedex.api.inference import InferenceEngine

    return InferenceEngine("cpu")


# -- another process holding an index, as `saedex index` does while it writes ------------------

_HOLD = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()
"""


@contextmanager
def held_by_another_process(db: Path) -> Iterator[int]:
    """A second process holding `db` read-write until the block ends; yields its PID."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# -- the store's files (docs/schema.md, "Layout"), for tests that copy or damage an index ------


def copy_index(src: Path, dst: Path) -> Path:
    """A copy of a whole index: its base file, runs folder and user edits, as a user copies it."""
    import shutil

    from saedex.store.catalog import runs_dir
    from saedex.store.edits import edits_path

    shutil.copy(src, dst)
    if runs_dir(src).is_dir():
        shutil.copytree(runs_dir(src), runs_dir(dst), ignore=shutil.ignore_patterns(".lock"))
    if edits_path(src).exists():
        shutil.copy(edits_path(src), edits_path(dst))
    return dst


def run_file(db: Path, sae_id: str) -> Path:
    """The file holding the complete run of `sae_id` (to change its rows as a test's damage)."""
    from saedex.store.catalog import Catalog

    return Catalog(db).complete()[sae_id]
