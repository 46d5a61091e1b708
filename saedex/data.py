"""Plain, typed records that pass between the store, the API and the site exporter."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePath
from typing import Any


def doc(text: str, **kwargs: Any) -> Any:
    """A field with its description: the one place the API, its OpenAPI and docs read it from."""
    return field(metadata={"doc": text}, **kwargs)


def public_name(value: str) -> str:
    """What a published page or the API shows for a path the publisher ran with: an absolute
    local path becomes its last part (no home directories in public); anything else (a hub
    model name, "default") is kept."""
    path = PurePath(value)
    return path.name if path.is_absolute() else value


@dataclass(frozen=True)
class SaeInfo:
    """One indexed SAE: what was run, on what, and how it went."""

    id: str = doc("The SAE's id in this index.")
    model_name: str = doc("The model the SAE reads.")
    hook_name: str = doc("The model hook the SAE reads (e.g. blocks.6.hook_resid_post).")
    hook_layer: int = doc("The block of the hook.")
    architecture: str = doc("standard, topk or jumprelu.")
    d_in: int = doc("Width of the hook's activations.")
    d_sae: int = doc("Number of features.")
    sae_path: str = doc("The SAE directory (the API shows its name, not the publisher's path).")
    corpus: str = doc("The corpus (the API shows its name, not the publisher's path).")
    context_size: int = doc("Tokens per context, BOS included.")
    prepend_bos: bool = doc("Whether every context starts with BOS.")
    n_documents: int = doc("Documents indexed.")
    n_skipped_documents: int = doc("Documents skipped (empty, undecodable, not text).")
    n_contexts: int = doc("Contexts indexed.")
    n_tokens: int = doc("Tokens counted (BOS, padding and attention sinks left out).")
    n_excluded_tokens: int = doc("Attention-sink tokens left out of the statistics.")
    dead_features: int = doc("Features never active on the corpus.")
    status: str = doc("running or complete.")
    settings: dict = doc("The run's IndexConfig, as stored.")
    started_at: datetime | None = doc("When the run started.")
    finished_at: datetime | None = doc("When the run finished.")
    duration_s: float | None = doc("Seconds the run took.")
    # Provenance (None for runs indexed before saedex recorded it; see docs/schema.md).
    model_fingerprint: str | None = doc(
        "sha256 of the model's checkpoint (the default model's GGUF).", default=None
    )
    sae_weights_sha256: str | None = doc("sha256 of sae_weights.safetensors.", default=None)
    sae_cfg_sha256: str | None = doc("sha256 of the SAE's cfg.json.", default=None)
    corpus_fingerprint: str | None = doc(
        "sha256 of the corpus file, or over a directory's files.", default=None
    )
    saedex_version: str | None = doc("The saedex version that indexed it.", default=None)
    dtype: str | None = doc("The model's dtype in the run.", default=None)
    device: str | None = doc("The device the run used.", default=None)


@dataclass(frozen=True)
class Histogram:
    """Counts per bin; bin_edges has one more entry than counts."""

    bin_edges: list[float] = doc("Bin boundaries, ascending.")
    counts: list[int] = doc("Values per bin.")


@dataclass(frozen=True)
class LogitEntry:
    """A logit-lens token: the decoder direction through the unembedding."""

    token: str = doc("The decoded token.")
    token_id: int = doc("Its id in the model's vocabulary.")
    value: float = doc("The decoder direction's logit for it.")


@dataclass(frozen=True)
class Neighbour:
    """A feature whose decoder direction is close to this one's."""

    sae_id: str = doc("The SAE both features belong to.")
    index: int = doc("The neighbouring feature's index.")
    cosine: float = doc("Cosine similarity of the two decoder directions.")


@dataclass(frozen=True)
class Example:
    """One context and this feature's activation on each of its tokens."""

    context_id: int = doc("The context's id in the index.")
    document_id: str = doc("The document the context comes from.")
    source: str = doc("Where the document comes from.")
    token_ids: list[int] = doc("The context's token ids.")
    tokens: list[str] = doc("Each token decoded alone.")
    activations: list[float] = doc("The feature's activation on each token.")
    max_activation: float = doc("The largest of them.")
    max_token_index: int = doc("The token where it is.")

    def _repr_html_(self) -> str:
        """Jupyter shows the example as the site does (saedex.notebook)."""
        from saedex.notebook import example_html

        return example_html(self)


@dataclass(frozen=True)
class IntervalSample:
    """Random examples whose highlighted token falls in [low, high)."""

    index: int = doc("The interval's number, 0 the lowest.")
    low: float = doc("Its lower bound (inclusive).")
    high: float = doc("Its upper bound (exclusive).")
    fraction: float = doc("Fraction of the feature's non-zero activations that fall in it.")
    examples: list[Example] = doc("Random examples from it.", default_factory=list)


@dataclass(frozen=True)
class FeatureSummary:
    """The per-feature row: enough for listings, filters and the site's index tables."""

    sae_id: str = doc("The SAE the feature belongs to.")
    index: int = doc("The feature's index in its SAE.")
    n_active: int = doc("Counted tokens where the feature is active.")
    density: float = doc("Fraction of counted tokens where the feature is active.")
    max_activation: float = doc("Largest activation over the corpus.")
    mean_activation: float = doc("Mean of the non-zero activations.")
    skew: float | None = doc("Skewness of the non-zero activations.")
    kurtosis: float | None = doc("Excess kurtosis of the non-zero activations.")
    top_logits: list[LogitEntry] = doc("Tokens this feature's decoder direction promotes most.")


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

    def _repr_html_(self) -> str:
        """Jupyter shows the feature's dashboard as the site does (saedex.notebook)."""
        from saedex.notebook import feature_html

        return feature_html(self)


@dataclass(frozen=True)
class WindowFeature:
    """One feature's activation on every token of a document window (0 where it is silent
    or where the token was left out)."""

    sae_id: str = doc("The feature's SAE.")
    index: int = doc("The feature's index in its SAE.")
    activations: list[float] = doc("Its activation on each token of the window.")


@dataclass(frozen=True)
class DocumentWindow:
    """A stretch of one document's tokens, across the contexts the index cut it into.

    Offsets count the document's own tokens (a prepended BOS is not one of them). `live`
    says where the activations come from: False, as stored (computed context by context:
    attention restarts at each `context_starts` offset); True, re-run on the joined window.
    """

    sae_id: str = doc("The SAE whose run cut the document into contexts.")
    document_id: str = doc("The document's id.")
    source: str = doc("Where the document comes from.")
    focus: int = doc("The offset asked for (e.g. an example's max token).")
    start: int = doc("The window's first offset in the document.")
    token_ids: list[int] = doc("The window's token ids.")
    tokens: list[str] = doc("Each token decoded alone.")
    excluded: list[bool] = doc("Per token: an attention sink the run left out.")
    context_starts: list[int] = doc(
        "Offsets inside the window where a context (or the live run) begins."
    )
    document_tokens: int = doc("Tokens the document has.")
    indexed_tokens: int = doc(
        "Tokens of the document the index holds (fewer when the run stopped early)."
    )
    live: bool = doc("False: the stored activations; true: one live run over the whole window.")
    features: list[WindowFeature] = doc("The features asked for, in the order asked.")

    @property
    def end(self) -> int:
        return self.start + len(self.token_ids)


@dataclass(frozen=True)
class FeaturePage:
    """A page of feature summaries and the total matching the filters."""

    items: list[FeatureSummary]
    total: int


# -- feature splitting across widths (issue 17: saedex match, docs/splitting.md) --


@dataclass(frozen=True)
class MatchedFeature:
    """A feature of another SAE on the same hook, matched to this one by `saedex match`."""

    sae_id: str = doc("The other feature's SAE.")
    index: int = doc("The other feature's index in its SAE.")
    d_sae: int = doc("The other SAE's number of features (its width).")
    cosine: float = doc("Cosine similarity of the two decoder directions.")
    correlation: float = doc(
        "Pearson correlation of the two features' activations over every counted token of the "
        "corpus (0 where a feature does not fire)."
    )
    cofiring: int = doc("Counted tokens where both features fire.")
    containment: float = doc("Share of this feature's tokens where the other fires too.")
    cover: float = doc(
        "Share of the narrower feature's activation mass on tokens where the wider one fires "
        "(for a parent and a child: how much of the parent the child covers)."
    )
    relation: str | None = doc(
        "parent: the other feature is this one's parent (in a narrower SAE); child: it is one "
        "of this one's children (in a wider SAE); null: neither."
    )
    clear: bool = doc("The parent relation passes the clear-parent thresholds.")


@dataclass(frozen=True)
class FeatureFamily:
    """A feature with its parents in every narrower SAE and its children in every wider one
    that `saedex match` related to its SAE (docs/splitting.md)."""

    sae_id: str = doc("The feature's SAE.")
    index: int = doc("The feature's index in its SAE.")
    d_sae: int = doc("Its SAE's width.")
    parents: list[MatchedFeature] = doc("Its parent in each narrower SAE, narrowest first.")
    children: list[MatchedFeature] = doc(
        "Its children in each wider SAE, narrowest SAE first, then by cover."
    )
    cover: list[float] = doc(
        "Per wider SAE (as ordered in children): share of this feature's activation mass on "
        "tokens where any of its children there fires."
    )
