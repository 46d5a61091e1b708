"""A feature's decoder and encoder vectors, read from the SAE weights file an index run recorded.

The index stores where the SAE came from (`saes.sae_path`), not its weights: the SAELens
`sae_weights.safetensors` there is the one source of truth, and only the rows asked for are read
(safetensors slices the file, so one feature costs a few KB, not the whole matrix). numpy reads
float32/float16 files without torch; only a bfloat16 file (numpy has no such dtype) imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from saedex.errors import SaedexError

WEIGHTS_FILE = "sae_weights.safetensors"  # the SAELens file name (as indexer/sae.py)
# kind -> (tensor name, axis of the feature index): W_dec is [d_sae, d_in], W_enc [d_in, d_sae]
KINDS = {"decoder": ("W_dec", 0), "encoder": ("W_enc", 1)}


def weights_file(sae_path: str | None, sae_id: str) -> Path:
    """The weights file of an indexed SAE, or a clear error if it has moved since the run."""
    if not sae_path:
        raise SaedexError(f"SAE {sae_id!r} has no recorded weights path")
    path = Path(sae_path) / WEIGHTS_FILE
    if not path.is_file():
        raise SaedexError(
            f"SAE weights of {sae_id!r} not found at {path} (the path the index run recorded; "
            "the SAE directory was moved or deleted)"
        )
    return path


def indexed_weights(info) -> Path:
    """The weights file of an indexed SAE (a saedex.data.SaeInfo), refused if it changed since
    the run (the fingerprints the run stored): its rows would not be the indexed features'."""
    from saedex.provenance import sae_changed

    path = weights_file(info.sae_path, info.id)
    changed = sae_changed(path.parent, info.sae_weights_sha256, info.sae_cfg_sha256)
    if changed:
        raise SaedexError(f"SAE {info.id!r}: {changed}; its vectors are not the indexed SAE's")
    return path


def feature_vectors(path: Path, kind: str, indices: Sequence[int]) -> dict[int, list[float]]:
    """{feature: its decoder row or encoder column} for the features asked for."""
    tensor, axis = _kind(kind)
    with _open(path) as (handle, framework):
        sliced = _slice(handle, tensor, path)
        d_sae = sliced.get_shape()[axis]
        out = {}
        for i in dict.fromkeys(indices):
            if not 0 <= i < d_sae:
                raise SaedexError(f"no feature {i} in {path} (indices 0..{d_sae - 1})")
            part = sliced[i : i + 1] if axis == 0 else sliced[:, i : i + 1]
            out[i] = _floats(part, framework).reshape(-1).tolist()
    return out


def all_vectors(path: Path, kind: str) -> np.ndarray:
    """Every feature's vector as float32 rows [d_sae, d_in] (exports read the whole matrix)."""
    tensor, axis = _kind(kind)
    with _open(path) as (handle, framework):
        matrix = _floats(_slice(handle, tensor, path)[:], framework)
    return matrix if axis == 0 else matrix.T


def _kind(kind: str) -> tuple[str, int]:
    if kind not in KINDS:
        raise SaedexError(f"vector kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return KINDS[kind]


def _slice(handle, tensor: str, path: Path):
    try:
        return handle.get_slice(tensor)
    except Exception as exc:
        raise SaedexError(f"SAE weights lack tensor {tensor!r}: {path}") from exc


class _open:
    """safe_open with numpy, or with torch for a bfloat16 file; errors as SaedexError."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        from safetensors import safe_open

        try:
            self.handle = safe_open(str(self.path), framework="numpy")
            framework = "numpy"
            names = self.handle.keys()  # a safe_open handle is not a mapping
            if any(self.handle.get_slice(k).get_dtype() == "BF16" for k in names):
                self.handle = safe_open(str(self.path), framework="pt")
                framework = "pt"
        except Exception as exc:  # safetensors raises several types for a bad file
            raise SaedexError(f"SAE weights are unreadable: {self.path} ({exc})") from exc
        return self.handle, framework

    def __exit__(self, *exc) -> None:
        self.handle = None


def _floats(array, framework: str) -> np.ndarray:
    if framework == "pt":
        return array.float().numpy()
    return np.asarray(array, dtype=np.float32)
