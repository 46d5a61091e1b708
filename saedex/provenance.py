"""Fingerprints of what made an index: the model's weights, the SAE's files and the corpus.

A run stores them (docs/schema.md, `saes`); a rerun or resume with other inputs is refused, and
live inference checks that the SAE on disk is still the one indexed. Hashing only, no torch:
the API imports this without the model stack.

Cost: files are hashed with sha256 in full (~1 GB/s), except weight files over
`SAMPLE_ABOVE` bytes (a big HF checkpoint), which are fingerprinted by their size and
`SAMPLES` evenly spaced 1 MiB chunks: any retrained or fine-tuned checkpoint differs there, and a
7B model is fingerprinted in well under a second instead of ~15 s.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

SAE_WEIGHTS_FILE = "sae_weights.safetensors"
SAE_CFG_FILE = "cfg.json"
SAMPLE_ABOVE = 256 << 20
SAMPLES = 64
CHUNK = 1 << 20
# Files of a Hugging Face model directory that decide its outputs.
MODEL_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model", ".txt", ".tiktoken")

_cache: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class SaeFingerprint:
    """The sha256 of an SAE's weights file and of its cfg.json."""

    weights_sha256: str
    cfg_sha256: str


def saedex_version() -> str:
    try:
        return importlib.metadata.version("saedex")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def file_sha256(path: Path) -> str:
    """The file's sha256 (hex), cached for this process by (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        with path.open("rb") as fh:
            _cache[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _cache[key]


def sae_fingerprint(sae_dir: Path) -> SaeFingerprint:
    return SaeFingerprint(
        file_sha256(sae_dir / SAE_WEIGHTS_FILE), file_sha256(sae_dir / SAE_CFG_FILE)
    )


def sae_changed(sae_dir: Path, weights_sha256: str | None, cfg_sha256: str | None) -> str | None:
    """Why the SAE files no longer match the stored fingerprints, or None if they do (or if
    the index predates fingerprints and stores none)."""
    if weights_sha256 is None and cfg_sha256 is None:
        return None
    try:
        now = sae_fingerprint(sae_dir)
    except OSError as exc:
        return f"its files cannot be read ({exc.strerror}: {exc.filename})"
    if weights_sha256 is not None and now.weights_sha256 != weights_sha256:
        return f"{sae_dir / SAE_WEIGHTS_FILE} changed since it was indexed"
    if cfg_sha256 is not None and now.cfg_sha256 != cfg_sha256:
        return f"{sae_dir / SAE_CFG_FILE} changed since it was indexed"
    return None


def weights_fingerprint(path: Path) -> str:
    """sha256 of the file, or of its size and sampled chunks when it is over SAMPLE_ABOVE."""
    size = path.stat().st_size
    if size <= SAMPLE_ABOVE:
        return file_sha256(path)
    digest = hashlib.sha256(f"sampled:{size}:".encode())
    with path.open("rb") as fh:
        for i in range(SAMPLES):
            fh.seek((size - CHUNK) * i // (SAMPLES - 1))
            digest.update(fh.read(CHUNK))
    return digest.hexdigest()


def tree_fingerprint(root: Path, files: list[Path], weights: bool = False) -> str:
    """One sha256 over the files' paths (relative to `root`) and contents, in the order given."""
    digest = hashlib.sha256()
    for file in files:
        part = weights_fingerprint(file) if weights else file_sha256(file)
        digest.update(f"{file.relative_to(root).as_posix()}\0{part}\n".encode())
    return digest.hexdigest()


def corpus_fingerprint(path: Path) -> str:
    """A file's sha256; a directory's over its files in the order the indexer reads them."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return "sha256-tree:" + tree_fingerprint(path, files)
    return "sha256:" + file_sha256(path)


def model_fingerprint(path: Path | None, name: str) -> str:
    """A local checkpoint's fingerprint: a file (the default model's GGUF) hashed whole, a
    directory over its config, tokenizer and weight files; a model known only by a hub name
    that is not on disk is recorded by that name."""
    if path is None or not path.exists():
        return f"name:{name}"
    if path.is_file():
        return "sha256:" + weights_fingerprint(path)
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix in MODEL_SUFFIXES and not p.name.startswith(".")
    )
    return "sha256-tree:" + tree_fingerprint(path, files, weights=True)


def short(fingerprint: str | None) -> str:
    """The first 12 hex digits, for messages."""
    if not fingerprint:
        return "none"
    return fingerprint.split(":")[-1][:12]
