"""Plain, typed records that pass between the store, the API and the site exporter."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class SaeInfo:
    """One indexed SAE: what was run, on what, and how it went."""

    id: str
    model_name: str
    hook_name: str
    hook_layer: int
    architecture: str
    d_in: int
    d_sae: int
    sae_path: str
    corpus: str
    context_size: int
    prepend_bos: bool
    n_documents: int
    n_skipped_documents: int
    n_contexts: int
    n_tokens: int
    n_excluded_tokens: int
    dead_features: int
    status: str
    settings: dict
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    # Provenance (NULL for runs indexed before saedex recorded it; see docs/schema.md).
    model_fingerprint: str | None = None  # sha256 of the checkpoint (the default model's GGUF)
    sae_weights_sha256: str | None = None  # of sae_weights.safetensors
    sae_cfg_sha256: str | None = None  # of cfg.json
    corpus_fingerprint: str | None = None  # sha256 of the corpus file, or over a directory's
    saedex_version: str | None = None
    dtype: str | None = None  # the model's dtype in the run
    device: str | None = None


@dataclass(frozen=True)
class Histogram:
    """Counts per bin; bin_edges has one more entry than counts."""

    bin_edges: list[float]
    counts: list[int]


@dataclass(frozen=True)
class LogitEntry:
    token: str
    token_id: int
    value: float


@dataclass(frozen=True)
class Neighbour:
    index: int
    cosine: float


@dataclass(frozen=True)
class Example:
    """One context and this feature's activation on each of its tokens."""

    context_id: int
    document_id: str
    source: str
    token_ids: list[int]
    tokens: list[str]
    activations: list[float]
    max_activation: float
    max_token_index: int


@dataclass(frozen=True)
class IntervalSample:
    """Random examples whose highlighted token falls in [low, high)."""

    index: int
    low: float
    high: float
    fraction: float
    examples: list[Example] = field(default_factory=list)


@dataclass(frozen=True)
class FeatureSummary:
    """The per-feature row: enough for listings, filters and the site's index tables."""

    sae_id: str
    index: int
    n_active: int
    density: float
    max_activation: float
    mean_activation: float
    skew: float | None
    kurtosis: float | None
    top_logits: list[LogitEntry]


@dataclass(frozen=True)
class Explanation:
    """What a feature means, in words: written by hand, imported, or proposed by a model.

    Kept in the store's user-edit database (never in the bulk index), tied to the SAE's weights
    by fingerprint: `current` is False when it explains an earlier version of those weights.
    """

    id: int
    sae_id: str
    feature: int
    text: str
    source: str  # "human", "import" or "model"
    author: str | None  # who wrote it, or the model that generated it
    method: str | None  # how it was made (explainer name, Neuronpedia typeName)
    scores: dict[str, float]  # scorer name -> score (balanced accuracy, 0..1)
    sae_fingerprint: str | None
    current: bool
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class FeatureData:
    """Everything a feature dashboard shows (cf. sae_vis's FeatureData)."""

    summary: FeatureSummary
    bottom_logits: list[LogitEntry]
    histogram: Histogram
    logit_histogram: Histogram
    top_examples: list[Example]
    interval_samples: list[IntervalSample]
    neighbours: list[Neighbour]
    explanations: list[Explanation] = field(default_factory=list)


@dataclass(frozen=True)
class WindowFeature:
    """One feature's activation on every token of a document window (0 where it is silent
    or where the token was left out)."""

    sae_id: str
    index: int
    activations: list[float]


@dataclass(frozen=True)
class DocumentWindow:
    """A stretch of one document's tokens, across the contexts the index cut it into.

    Offsets count the document's own tokens (a prepended BOS is not one of them). `live`
    says where the activations come from: False, as stored (computed context by context:
    attention restarts at each `context_starts` offset); True, re-run on the joined window.
    """

    sae_id: str
    document_id: str
    source: str
    focus: int  # the offset asked for (an example's max token, or the given offset)
    start: int
    token_ids: list[int]
    tokens: list[str]
    excluded: list[bool]  # per token: an attention sink the run left out
    context_starts: list[int]  # offsets in the window where a context (or the live run) begins
    document_tokens: int  # tokens the document has
    indexed_tokens: int  # tokens of it the index holds (fewer when the run was cut short)
    live: bool
    features: list[WindowFeature]

    @property
    def end(self) -> int:
        return self.start + len(self.token_ids)


@dataclass(frozen=True)
class FeaturePage:
    """A page of feature summaries and the total matching the filters."""

    items: list[FeatureSummary]
    total: int
