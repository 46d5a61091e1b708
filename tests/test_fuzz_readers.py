"""Readers under Hypothesis: corpus files (text, directory, JSONL, Parquet), an SAE's cfg.json
and its safetensors weights. Any input either loads into well-typed records or raises one
SaedexError line naming the file; never another exception, never a hang.

Seeded and bounded so CI is quick; SAEDEX_FUZZ_EXAMPLES and SAEDEX_FUZZ_SEED change both.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from saedex.errors import SaedexError
from saedex.indexer.corpus import CorpusStats, Document, read_documents
from saedex.indexer.sae import SaeConfig, load_sae, read_cfg, save_sae

EXAMPLES = int(os.environ.get("SAEDEX_FUZZ_EXAMPLES", "40"))
SEED = int(os.environ.get("SAEDEX_FUZZ_SEED", "21"))
_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def FUZZ(test):  # noqa: N802 (used as a decorator, like hypothesis's settings)
    """Bounded and seeded: the same examples on every run with the same seed."""
    return seed(SEED)(_SETTINGS(test))


SECONDS = 20  # one read of a few kB taking longer than this is a hang


@contextmanager
def no_hang(seconds: int = SECONDS):
    def stop(signum, frame):
        raise AssertionError(f"reader still busy after {seconds}s: a hang")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def one_clear_line(error: SaedexError, *names: str) -> None:
    message = str(error)
    assert message and "\n" not in message, message
    assert any(name in message for name in names), (names, message)


# -- corpora -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
ROW_KEYS = ["text", "id", "doc_id", "source", "licence", "license", "split"]
rows = st.dictionaries(st.sampled_from(ROW_KEYS) | st.text(max_size=5), json_values, max_size=6)
# A JSONL line: a row as JSON (NaN and Infinity included, as Python writes them), any JSON,
# raw bytes, a lone surrogate escape, or nesting deeper than the JSON parser recurses.
jsonl_lines = st.one_of(
    rows.map(lambda r: json.dumps(r).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
    st.just(b'{"text": "a \\ud800 b", "id": "\\udfff"}'),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.just(b'{"text": ' + b"[" * 3000 + b"}"),
)


def read_all(path: Path, split: str | None = None) -> list[Document] | None:
    """The documents, checked well-formed; None when the reader refused the input cleanly."""
    stats = CorpusStats()
    try:
        with no_hang():
            docs = list(read_documents(path, stats, split))
    except SaedexError as exc:
        one_clear_line(exc, path.name, str(path))
        return None
    for doc in docs:
        for value in (doc.doc_id, doc.source, doc.text):
            assert isinstance(value, str), doc
            value.encode("utf-8")  # storable: no lone surrogates
        assert doc.text.strip(), doc
        assert doc.licence is None or isinstance(doc.licence, str), doc
        if doc.licence is not None:
            doc.licence.encode("utf-8")
    assert stats.documents == len(docs)
    return docs


@FUZZ
@given(lines=st.lists(jsonl_lines, max_size=6), split=st.none() | st.sampled_from(["train", ""]))
def test_jsonl(tmp_path_factory, lines, split):
    path = tmp_path_factory.mktemp("jsonl") / "corpus.jsonl"
    path.write_bytes(b"\n".join(lines))
    read_all(path, split)


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".txt", ".md", "", ".py", ".bin"]))
def test_text_file(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("text") / f"doc{suffix}"
    path.write_bytes(data)
    docs = read_all(path)
    if docs:
        assert [d.text for d in docs] == [data.decode("utf-8")]


names = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True).filter(
    lambda n: n not in {".", ".."}
)
suffixes = st.sampled_from([".txt", ".jsonl", ".parquet", ".md", ""])
tree = st.dictionaries(
    st.tuples(st.lists(names, max_size=2).map(tuple), names, suffixes),
    st.binary(max_size=80) | jsonl_lines,
    max_size=5,
)


@FUZZ
@given(files=tree)
def test_directory(tmp_path_factory, files):
    root = tmp_path_factory.mktemp("dir")
    for (folders, name, suffix), data in files.items():
        path = root.joinpath(*folders, name + suffix)
        if any(p.exists() and not p.is_dir() for p in path.parents if p != root.parent):
            continue  # a file already holds a folder's name
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    read_all(root)


parquet_columns = st.one_of(
    st.lists(st.text(max_size=20) | st.none(), min_size=3, max_size=3).map(
        lambda v: pa.array(v, pa.string())
    ),
    st.lists(st.integers(-(2**63), 2**63 - 1) | st.none(), min_size=3, max_size=3).map(
        lambda v: pa.array(v, pa.int64())
    ),
    st.lists(st.binary(max_size=10), min_size=3, max_size=3).map(
        lambda v: pa.array(v, pa.binary())
    ),
    st.lists(st.lists(st.text(max_size=4), max_size=2), min_size=3, max_size=3).map(
        lambda v: pa.array(v, pa.list_(pa.string()))
    ),
    st.just(pa.nulls(3)),
)


@FUZZ
@given(
    columns=st.dictionaries(st.sampled_from(ROW_KEYS), parquet_columns, max_size=5),
    damage=st.sampled_from(["none", "truncate", "flip", "garbage"]),
    at=st.floats(0, 1),
)
def test_parquet(tmp_path_factory, columns, damage, at):
    path = tmp_path_factory.mktemp("parquet") / "corpus.parquet"
    pq.write_table(pa.table(columns) if columns else pa.table({"x": [1]}), path)
    data = bytearray(path.read_bytes())
    cut = int(at * (len(data) - 1))
    if damage == "truncate":
        data = data[:cut]
    elif damage == "flip":
        data[cut : cut + 8] = bytes(b ^ 0x5A for b in data[cut : cut + 8])
    elif damage == "garbage":
        data = bytearray(random.Random(len(data)).randbytes(len(data)))
    path.write_bytes(bytes(data))
    read_all(path)


# -- SAEs --------------------------------------------------------------------------------------

GOOD_CFG = {
    "architecture": "topk",
    "d_in": 4,
    "d_sae": 8,
    "k": 2,
    "apply_b_dec_to_input": False,
    "normalize_activations": "none",
    "metadata": {"hook_name": "blocks.0.hook_resid_post", "model_name": "m", "context_size": 16},
}
CFG_KEYS = [*GOOD_CFG, "hook_name", "hook_point", "activation_fn_kwargs", "model_name"]
META_KEYS = ["hook_name", "model_name", "prepend_bos", "context_size"]


def check_cfg(cfg: SaeConfig) -> None:
    """A parsed config holds what indexing relies on, with the types it relies on."""
    assert cfg.architecture in ("standard", "topk", "jumprelu")
    for n in (cfg.d_in, cfg.d_sae):
        assert type(n) is int and n > 0, cfg
    assert isinstance(cfg.hook_name, str) and cfg.hook_layer >= 0
    assert cfg.k is None or (type(cfg.k) is int and cfg.k > 0), cfg
    assert cfg.architecture != "topk" or cfg.k is not None
    assert cfg.model_name is None or isinstance(cfg.model_name, str), cfg
    assert cfg.prepend_bos is None or isinstance(cfg.prepend_bos, bool), cfg
    assert cfg.context_size is None or (type(cfg.context_size) is int and cfg.context_size > 0)
    assert isinstance(cfg.metadata, dict)


cfg_changes = st.dictionaries(st.sampled_from(CFG_KEYS), json_values, max_size=4)
meta_changes = st.dictionaries(st.sampled_from(META_KEYS), json_values, max_size=3)


@FUZZ
@given(changes=cfg_changes, meta=meta_changes, drop=st.sets(st.sampled_from(list(GOOD_CFG))))
def test_cfg_json(tmp_path_factory, changes, meta, drop):
    folder = tmp_path_factory.mktemp("sae")
    raw = {k: v for k, v in GOOD_CFG.items() if k not in drop}
    if isinstance(raw.get("metadata"), dict):
        raw["metadata"] = {**raw["metadata"], **meta}
    raw.update(changes)
    (folder / "cfg.json").write_text(json.dumps(raw))
    try:
        with no_hang():
            cfg = read_cfg(folder)
    except SaedexError as exc:
        one_clear_line(exc, "cfg.json")
        return
    check_cfg(cfg)


@FUZZ
@given(data=st.binary(max_size=200) | st.integers(1, 3000).map(lambda n: b"[" * n))
def test_cfg_json_bytes(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("sae")
    (folder / "cfg.json").write_bytes(data)
    try:
        with no_hang():
            check_cfg(read_cfg(folder))
    except SaedexError as exc:
        one_clear_line(exc, "cfg.json")


@pytest.fixture(scope="module")
def good_sae(tmp_path_factory) -> Path:
    cfg = SaeConfig("topk", 4, 8, "blocks.0.hook_resid_post", "m", k=2)
    weights = {
        "W_enc": torch.randn(4, 8),
        "b_enc": torch.zeros(8),
        "W_dec": torch.randn(8, 4),
        "b_dec": torch.zeros(4),
    }
    return save_sae(tmp_path_factory.mktemp("good") / "sae", weights, cfg)


DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "XX"]
shapes = st.lists(st.integers(-1, 9), max_size=3)
header_entries = st.dictionaries(
    st.sampled_from(["W_enc", "b_enc", "W_dec", "b_dec", "threshold", "__metadata__", "x"]),
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(DTYPES),
            "shape": shapes,
            "data_offsets": st.lists(st.integers(-1, 400), min_size=0, max_size=3),
        }
    )
    | json_values,
    max_size=5,
)


def _safetensors(header: object, body: bytes, declared: int | None) -> bytes:
    text = json.dumps(header).encode()
    size = len(text) if declared is None else declared
    return struct.pack("<Q", size % 2**64) + text + body


weight_files = st.one_of(
    st.binary(max_size=200),
    st.builds(
        _safetensors,
        header_entries,
        st.binary(max_size=400),
        st.none() | st.integers(0, 2**64 - 1),
    ),
)


@FUZZ
@given(
    data=weight_files | st.just("good"),
    damage=st.sampled_from(["none", "truncate", "flip"]),
    at=st.floats(0, 1),
)
def test_safetensors(good_sae, tmp_path_factory, data, damage, at):
    folder = tmp_path_factory.mktemp("sae")
    (folder / "cfg.json").write_bytes((good_sae / "cfg.json").read_bytes())
    raw = bytearray((good_sae / "sae_weights.safetensors").read_bytes() if data == "good" else data)
    cut = int(at * max(len(raw) - 1, 0))
    if damage == "truncate":
        raw = raw[:cut]
    elif damage == "flip":
        raw[cut : cut + 4] = bytes(b ^ 0xA5 for b in raw[cut : cut + 4])
    (folder / "sae_weights.safetensors").write_bytes(bytes(raw))
    try:
        with no_hang():
            sae = load_sae(folder)
    except SaedexError as exc:
        one_clear_line(exc, "sae_weights.safetensors", "cfg.json")
        return
    assert sae.W_enc.shape == (4, 8) and sae.W_enc.dtype == torch.float32


def test_safetensors_round_trip_loads(good_sae):
    """The generator's one known-good file loads (so the property test is not all refusals)."""
    assert load_sae(good_sae).W_dec.shape == (8, 4)
