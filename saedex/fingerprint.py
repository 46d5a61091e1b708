"""An SAE's identity by content: the sha256 of its weights file.

User edits (explanations) are tied to the weights they explain, so a re-index of the same
weights keeps them current and other weights mark them as explaining an earlier version.
The index records it for each run (`SaeInfo.sae_weights_sha256`, schema 3); for a run without
one (upgraded from an older file) it is computed from the SAE directory the run names.
"""

from __future__ import annotations

from pathlib import Path

from saedex.data import SaeInfo
from saedex.provenance import file_sha256

WEIGHTS_FILE = "sae_weights.safetensors"


def sae_fingerprint(info: SaeInfo) -> str | None:
    """ "sha256:<hex>" of the SAE's weights, or None when they are not known here."""
    if info.sae_weights_sha256:
        return f"sha256:{info.sae_weights_sha256}"
    path = Path(info.sae_path or "") / WEIGHTS_FILE
    if not info.sae_path or not path.is_file():
        return None
    return f"sha256:{file_sha256(path)}"
