"""An SAE's identity by content: the sha256 of its weights file.

User edits (explanations) are tied to the weights they explain, so a re-index of the same
weights keeps them current and other weights mark them as explaining an earlier version.
The index records it for each run (`SaeInfo.sae_weights_sha256`, schema 3); for a run without
one it is computed from the SAE directory the run names (`SaeInfo.sae_path`), once per file
state (path, size, mtime).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from saedex.data import SaeInfo

WEIGHTS_FILE = "sae_weights.safetensors"


def sae_fingerprint(info: SaeInfo) -> str | None:
    """ "sha256:<hex>" of the SAE's weights, or None when the weights are not on this machine."""
    if info.sae_weights_sha256:  # recorded by the index run (schema 3)
        return f"sha256:{info.sae_weights_sha256}"
    path = Path(info.sae_path or "") / WEIGHTS_FILE
    try:
        stat = path.stat()
    except OSError:
        return None
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"
