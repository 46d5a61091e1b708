"""Every tunable default in one place, as plain dataclasses a user can read and override."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


def cache_dir() -> Path:
    """Where saedex keeps derived artefacts (safetensors copy of the default model, corpus)."""
    root = os.environ.get("SAEDEX_CACHE") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    return base if os.environ.get("SAEDEX_CACHE") else base / "saedex"


@dataclass(frozen=True)
class IndexConfig:
    """What one indexing run computes. Stored with the index; a resume must match it."""

    context_size: int = 128
    prepend_bos: bool = True
    batch_size: int = 16
    # The pass commits its batches at most this often: a kill loses at most this much work, and
    # fewer commits (each one syncs the WAL to disk) cost less.
    commit_interval_s: float = 2.0
    top_k: int = 20
    n_intervals: int = 10
    examples_per_interval: int = 5
    hist_bins: int = 50
    n_logits: int = 10
    n_neighbours: int = 10
    # Attention sinks: a token whose hook activation norm exceeds this multiple of its context's
    # median norm is excluded (its features count as inactive there). 0 disables the rule. BOS
    # tokens are always excluded: they carry no text.
    sink_norm_multiple: float = 4.0
    seed: int = 0
    max_documents: int | None = None
    max_tokens: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def differs_from(self, stored: dict) -> list[str]:
        """Names of the settings that differ from a stored run's (ignoring ones safe to change)."""
        safe = {"batch_size", "commit_interval_s"}
        mine = self.to_dict()
        return sorted(k for k in mine if k not in safe and stored.get(k) != mine[k])


@dataclass(frozen=True)
class TrainConfig:
    """SAE training hyper-parameters; recorded in the SAE's cfg.json metadata."""

    architecture: str = "topk"  # "topk" or "standard" (ReLU + L1)
    d_sae: int = 4608
    k: int = 32
    l1_coefficient: float = 0.1  # scale-free: see docs/training.md
    lr: float = 4e-4
    batch_tokens: int = 1024
    total_tokens: int = 2_000_000
    corpus_tokens: int | None = None  # use only the first N training tokens per epoch
    context_size: int = 128
    prepend_bos: bool = True
    model_batch_size: int = 16
    buffer_tokens: int = 131_072
    aux_k: int = 256
    aux_coefficient: float = 1 / 32
    dead_tokens: int = 200_000
    sink_norm_multiple: float = 4.0
    checkpoint_every: int = 500
    eval_tokens: int = 50_000
    ce_eval_tokens: int = 16_384  # CE loss recovered needs 3 full forwards: fewer tokens
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ServeConfig:
    """Limits and switches of the query API."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_page_size: int = 100
    max_query_depth: int = 10
    max_text_chars: int = 2000
    max_active_top_k: int = 100
    # Document windows (documentWindow): tokens either side of the point, features per window,
    # and the longest window the model re-runs live (attention over the whole window).
    max_window_side: int = field(
        default=512, metadata={"help": "Most tokens a document window shows either side."}
    )
    max_window_features: int = field(
        default=16, metadata={"help": "Most features one document window shows."}
    )
    max_live_window_tokens: int = field(
        default=512, metadata={"help": "Longest document window the model re-runs live."}
    )
    inference: bool = True
    device: str | None = None
    cors_origins: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class SiteConfig:
    """What the static site shows and how it is built."""

    examples_shown: int = 20
    window: int = 10  # tokens either side of the max token shown before expanding
    features_per_index_page: int = 500
    workers: int = max(1, (os.cpu_count() or 1))
    # -- site issue 14: feature pages in blocks --
    features_per_page: int = field(
        default=32,
        metadata={
            "help": "Features per feature page file (each shown at its own #f<index> anchor): "
            "fewer files for wide SAEs, at the cost of larger pages."
        },
    )
