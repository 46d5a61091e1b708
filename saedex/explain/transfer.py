"""Import and export explanations: Neuronpedia's export rows, and plain JSONL/CSV `feature, text`.

Neuronpedia's explanation rows (`explanations/batch-N.jsonl.gz` of its export bundle) carry
`modelId, layer, index, description, explanationModelName, typeName, authorId, ...`; `layer` is
its source id (e.g. `6-res-jb`). One file explains one SAE: a file mixing several
`modelId`/`layer` pairs is refused, since it cannot be imported into one `--sae`. Importing is
idempotent: an explanation is the same when feature, text, author and method are.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from saedex.data import Explanation, SaeInfo
from saedex.errors import SaedexError
from saedex.store.edits import SOURCES, NewExplanation
from saedex.store.reader import IndexReader

FORMATS = ("neuronpedia", "jsonl", "csv")
NEURONPEDIA_KEYS = {"modelId", "layer", "index", "description"}
PLAIN_FIELDS = ("feature", "text", "author", "method", "source")


@dataclass(frozen=True)
class ImportResult:
    format: str
    added: int
    skipped: int  # already there (an identical explanation)
    origin: tuple[str, str] | None  # Neuronpedia's (modelId, layer) of the rows


def import_explanations(
    reader: IndexReader, sae_id: str, path: Path, fmt: str | None = None
) -> ImportResult:
    """Read every row first (a bad row refuses the whole file), then add them in one
    transaction tied to the SAE's current weights."""
    info = _sae(reader, sae_id)
    fmt = fmt or detect_format(path)
    if fmt == "neuronpedia":
        rows, origin = read_neuronpedia(path)
    elif fmt in ("jsonl", "csv"):
        rows, origin = list(read_plain(path, fmt)), None
    else:
        raise SaedexError(f"unknown explanation format {fmt!r} (one of {', '.join(FORMATS)})")
    for row in rows:
        if row.feature >= info.d_sae:
            raise SaedexError(
                f"{path}: feature {row.feature} is out of range for {sae_id!r} "
                f"(d_sae {info.d_sae}); is this file for another SAE?"
            )
    store = reader.edits(create=True)
    added, skipped = store.add_many(sae_id, rows, reader.fingerprint(sae_id))
    return ImportResult(fmt, added, skipped, origin)


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".csv"):
        return "csv"
    if not name.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
        raise SaedexError(f"{path}: cannot tell the format from the name (.jsonl[.gz] or .csv)")
    for _, record in _json_lines(path):
        return "neuronpedia" if set(record) >= NEURONPEDIA_KEYS else "jsonl"
    return "jsonl"


def read_neuronpedia(path: Path) -> tuple[list[NewExplanation], tuple[str, str] | None]:
    rows, origins = [], {}
    for line, record in _json_lines(path):
        missing = NEURONPEDIA_KEYS - set(record)
        if missing:
            raise SaedexError(f"{path}:{line}: missing {', '.join(sorted(missing))}")
        origins.setdefault((str(record["modelId"]), str(record["layer"])), line)
        author = record.get("explanationModelName") or record.get("authorId")
        source = record.get("saedexSource") or "import"
        rows.append(
            _row(path, line, record["index"], record["description"], author,
                 record.get("typeName"), source)
        )  # fmt: skip
    if len(origins) > 1:
        pairs = ", ".join(f"{m}/{layer} (line {n})" for (m, layer), n in origins.items())
        raise SaedexError(
            f"{path} mixes {len(origins)} modelId/layer pairs: {pairs}; an import goes into "
            "one SAE (--sae), so split the file by modelId and layer"
        )
    return rows, next(iter(origins), None)


def read_plain(path: Path, fmt: str) -> Iterator[NewExplanation]:
    """`feature, text` (optionally author, method, source) per JSON line or CSV row."""
    records = _csv_rows(path) if fmt == "csv" else _json_lines(path)
    for line, record in records:
        if "feature" not in record or "text" not in record:
            raise SaedexError(f"{path}:{line}: each row needs 'feature' and 'text'")
        yield _row(
            path, line, record["feature"], record["text"], record.get("author") or None,
            record.get("method") or None, record.get("source") or "import",
        )  # fmt: skip


def _row(path, line, feature, text, author, method, source) -> NewExplanation:
    try:
        index = int(feature)
        if index < 0 or str(index) != str(feature).strip():
            raise ValueError
    except (TypeError, ValueError):
        raise SaedexError(
            f"{path}:{line}: feature must be an integer >= 0, got {feature!r}"
        ) from None
    if not isinstance(text, str) or not text.strip():
        raise SaedexError(f"{path}:{line}: the explanation text is empty")
    if source not in SOURCES:
        raise SaedexError(f"{path}:{line}: unknown source {source!r} (one of {SOURCES})")
    return NewExplanation(index, text.strip(), source, author, method)


def _open_text(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise SaedexError(f"file not found: {path}")
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8")
    return path.open(encoding="utf-8", newline="")


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as fh:
        try:
            for line, text in enumerate(fh, 1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise SaedexError(f"{path}:{line}: not JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise SaedexError(f"{path}:{line}: each line must be a JSON object")
                yield line, record
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise SaedexError(f"{path}: cannot read ({exc})") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as fh:
        try:
            reader = csv.DictReader(fh)
            for record in reader:
                yield reader.line_num, record
        except (csv.Error, UnicodeDecodeError) as exc:
            raise SaedexError(f"{path}: cannot read as CSV ({exc})") from None


# -- export ----------------------------------------------------------------------------------


def export_explanations(
    reader: IndexReader,
    sae_id: str,
    out: Path,
    fmt: str | None = None,
    model_id: str | None = None,
    layer: str | None = None,
    current_only: bool = False,
) -> int:
    """Write the SAE's explanations; returns how many. Re-importing the file adds nothing."""
    info = _sae(reader, sae_id)
    fmt = fmt or ("csv" if out.name.lower().endswith(".csv") else "jsonl")
    if fmt not in FORMATS:
        raise SaedexError(f"unknown explanation format {fmt!r} (one of {', '.join(FORMATS)})")
    store = reader.edits()
    rows = [] if store is None else list(store.all(sae_id, reader.fingerprint(sae_id)))
    rows = [e for e in rows if e.current or not current_only]
    out.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if out.name.lower().endswith(".gz") else open
    with opener(out, "wt", encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            writer = csv.DictWriter(fh, fieldnames=PLAIN_FIELDS)
            writer.writeheader()
            writer.writerows(_plain(e) for e in rows)
        else:
            origin = (model_id or neuronpedia_model_id(info), layer or neuronpedia_layer(info))
            for e in rows:
                record = _neuronpedia(e, *origin) if fmt == "neuronpedia" else _plain(e)
                fh.write(json.dumps(record) + "\n")
    return len(rows)


def neuronpedia_model_id(info: SaeInfo) -> str:
    """Neuronpedia names models in lower case without the organisation."""
    return info.model_name.rstrip("/").split("/")[-1].lower()


def neuronpedia_layer(info: SaeInfo) -> str:
    """Neuronpedia's source id, `{layer}-{set name}`."""
    return f"{info.hook_layer}-saedex-{info.id}"


def _plain(e: Explanation) -> dict:
    return {"feature": e.feature, "text": e.text, "author": e.author, "method": e.method,
            "source": e.source}  # fmt: skip


def _neuronpedia(e: Explanation, model_id: str, layer: str) -> dict:
    return {
        "id": f"saedex-{e.sae_id}-{e.id}",
        "modelId": model_id,
        "layer": layer,
        "index": str(e.feature),
        "description": e.text,
        "explanationModelName": e.author if e.source == "model" else None,
        "authorId": e.author,
        "typeName": e.method,
        "scores": e.scores,
        "createdAt": e.created_at.isoformat() if e.created_at else None,
        "saedexSource": e.source,
    }


def _sae(reader: IndexReader, sae_id: str) -> SaeInfo:
    info = reader.sae(sae_id)
    if info is None:
        known = ", ".join(s.id for s in reader.saes()) or "none"
        raise SaedexError(f"unknown SAE {sae_id!r} (this index has: {known})")
    return info
