"""Pretokenized corpora (SAELens's convention): rows of token ids, indexed as given.

A Parquet file, an Arrow file, a folder of Parquet/Arrow shards, or a Hugging Face `datasets`
folder written by `save_to_disk`, whose rows carry token ids in an `input_ids` or `tokens`
column, is read without re-tokenising. Each row is a document, as with text corpora: it is cut
into contexts of `context_size` tokens that never cross rows. So a row of exactly the context
size (SAELens's packed rows) is one context. With BOS prepended (the default), a row that
already starts with BOS keeps that one BOS (it is not doubled): the packed row
`[BOS, t1 .. t127]` is exactly one 128-token context, and `[t1 .. t127]` becomes the same one.
BOS tokens elsewhere in a row (SAELens's document separators) stay as given. Every id is
checked against the model's vocabulary, so a corpus tokenised for another model is refused
with a clear error.

An HF `datasets` folder with a `text` column (and no token column) is read as a text corpus.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from saedex.errors import SaedexError
from saedex.indexer.corpus import (
    Context,
    CorpusStats,
    Document,
    _tokenized,
    cut_contexts,
    read_documents,
)

TOKEN_COLUMNS = ("input_ids", "tokens")  # SAELens writes `input_ids`; older sets `tokens`
HF_MARKERS = ("state.json", "dataset_info.json")  # what `Dataset.save_to_disk` writes
ARROW_SUFFIXES = {".arrow", ".feather", ".ipc"}
DATA_SUFFIXES = ARROW_SUFFIXES | {".parquet"}
BATCH_ROWS = 1024

log = logging.getLogger("saedex.index")


def corpus_contexts(
    path: Path,
    stats: CorpusStats,
    tokenizer,
    vocab_size: int,
    context_size: int,
    prepend_bos: bool,
    bos_token_id: int,
    doc_sink: list | None = None,
    max_documents: int | None = None,
    max_tokens: int | None = None,
) -> Iterator[Context]:
    """The contexts of any corpus: token-id rows as given, anything else tokenised."""
    rows = token_documents(path, stats, vocab_size)
    if rows is not None:
        pairs = (_one_bos(doc, ids, prepend_bos, bos_token_id) for doc, ids in rows)
    else:
        pairs = _tokenized(text_documents(path, stats), tokenizer)
    if max_documents is not None:
        pairs = itertools.islice(pairs, max_documents)
    return cut_contexts(pairs, context_size, prepend_bos, bos_token_id, doc_sink, max_tokens)


def _one_bos(doc: Document, ids: list[int], prepend_bos: bool, bos: int) -> tuple:
    """A row that starts with BOS keeps one: the context cutter prepends it again."""
    return doc, ids[1:] if prepend_bos and ids and ids[0] == bos else ids


# -- what kind of corpus -------------------------------------------------------------------------


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and all((path / m).is_file() for m in HF_MARKERS)


def _data_files(path: Path) -> list[Path]:
    """The Arrow/Parquet files of a corpus path (a file, a folder of shards, an HF folder)."""
    if path.is_file():
        return [path] if path.suffix.lower() in DATA_SUFFIXES else []
    if is_hf_dataset(path):
        state = json.loads((path / "state.json").read_text())
        return [path / f["filename"] for f in state.get("_data_files", [])]
    if not path.is_dir():
        return []
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    data = [p for p in files if p.suffix.lower() in DATA_SUFFIXES]
    return data if data and len(data) == len(files) else []  # a mixed folder is a text corpus


def _schema(path: Path) -> pa.Schema:
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).schema_arrow
        return _open_arrow(path)[0]
    except SaedexError:
        raise
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise SaedexError(f"corpus file is not valid Parquet/Arrow: {path} ({exc})") from exc


def token_column(path: Path) -> str | None:
    """`input_ids` or `tokens` if the corpus at `path` carries token ids, else None."""
    files = _data_files(path)
    if not files:
        return None
    names = _schema(files[0]).names
    return next((c for c in TOKEN_COLUMNS if c in names), None)


# -- reading -------------------------------------------------------------------------------------


def token_documents(
    path: Path, stats: CorpusStats, vocab_size: int
) -> Iterator[tuple[Document, list[int]]] | None:
    """(document, token ids) per row of a pretokenized corpus; None if `path` is not one."""
    column = token_column(path)
    if column is None:
        return None
    return _token_rows(path, column, stats, vocab_size)


def _token_rows(path: Path, column: str, stats: CorpusStats, vocab_size: int):
    for row, ids, doc_id, source in _rows(path, _data_files(path), column):
        if not ids:
            stats.skip("empty")
            continue
        _check_ids(ids, vocab_size, path, row)
        stats.documents += 1
        yield Document(doc_id=doc_id, source=source, text=""), ids


def _rows(path: Path, files: list[Path], column: str) -> Iterator[tuple[int, object, str, str]]:
    """(row number, the column's value, document id, source) of every row, in file order;
    ids and sources come from `id`/`doc_id` and `source` columns where the corpus has them."""
    index = 0
    for file in files:
        name = str(file.relative_to(path)) if path.is_dir() else file.name
        for batch in _batches(file, column):
            doc_ids = _optional_column(batch, ("id", "doc_id"))
            sources = _optional_column(batch, ("source",))
            for i, value in enumerate(batch.column(column).to_pylist()):
                doc_id = doc_ids[i] if doc_ids and doc_ids[i] is not None else f"{name}#{index}"
                source = sources[i] if sources and sources[i] is not None else name
                yield index, value, str(doc_id), str(source)
                index += 1


def _check_ids(ids: list, vocab_size: int, path: Path, row: int) -> None:
    low, high = min(ids), max(ids)
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise SaedexError(
            f"token id {bad} in row {row} of {path} is outside the model's vocabulary "
            f"(ids 0..{vocab_size - 1}): the corpus was tokenised for another tokenizer"
        )


def _optional_column(batch: pa.RecordBatch, names: tuple[str, ...]) -> list | None:
    for name in names:
        if name in batch.schema.names:
            return batch.column(name).to_pylist()
    return None


def _batches(file: Path, column: str) -> Iterator[pa.RecordBatch]:
    if file.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(file)
        if column not in pf.schema_arrow.names:
            raise SaedexError(f"corpus shard {file} has no {column!r} column")
        yield from pf.iter_batches(batch_size=BATCH_ROWS)
        return
    schema, batches = _open_arrow(file)
    if column not in schema.names:
        raise SaedexError(f"corpus shard {file} has no {column!r} column")
    yield from batches


def _open_arrow(path: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """An Arrow IPC file's schema and batches: HF `datasets` writes the stream format,
    Feather v2 the file one."""
    import pyarrow.ipc as ipc

    try:
        stream = ipc.open_stream(pa.memory_map(str(path)))
        return stream.schema, iter(stream)
    except pa.ArrowInvalid:
        try:
            file = ipc.open_file(pa.memory_map(str(path)))
        except pa.ArrowInvalid as exc:
            raise SaedexError(f"corpus file is not valid Arrow: {path} ({exc})") from exc
        return file.schema, (file.get_batch(i) for i in range(file.num_record_batches))


def text_documents(path: Path, stats: CorpusStats) -> Iterator[Document]:
    """Documents of a text corpus; an HF `datasets` folder is read through its `text` column."""
    if not is_hf_dataset(path):
        return read_documents(path, stats)
    files = _data_files(path)
    if not files or "text" not in _schema(files[0]).names:
        raise SaedexError(
            f"HF dataset {path} has neither a text column nor token ids "
            f"({' or '.join(TOKEN_COLUMNS)})"
        )
    return _hf_text(path, files, stats)


def _hf_text(path: Path, files: list[Path], stats: CorpusStats) -> Iterator[Document]:
    for _, text, doc_id, source in _rows(path, files, "text"):
        if not isinstance(text, str) or not text.strip():
            stats.skip("empty")
            continue
        stats.documents += 1
        yield Document(doc_id, source, text)
