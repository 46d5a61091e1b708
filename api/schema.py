"""The GraphQL schema: strawberry types over the store's records, resolved through DataLoaders.

Field names are a public contract (docs/api.md); add fields, never rename them. Per-token
arrays (`tokens`, `tokenIds`, `activations`, `values`) are array scalars (api/scalars.py), so a
response of thousands of numbers costs one serialize call per array, not one per number.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

import anyio.to_thread
import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from saedex import data
from saedex.api import documents, inference
from saedex.api.context import Context
from saedex.api.errors import BadInput, MaskUnexpected, NotFound, Unavailable, is_unexpected
from saedex.api.scalars import JSON, SCALARS, FloatList, IntList, Long, TokenList
from saedex.config import ServeConfig

Info = strawberry.Info[Context, None]
T = TypeVar("T")

MAX_QUERY_CHARS = 200


def convert(cls: type[T], record: Any, **extra: Any) -> T:
    """A strawberry type from a record with the same field names (plus `extra`)."""
    names = [name for name in init_fields(cls) if name not in extra]
    return cls(**{name: getattr(record, name) for name in names}, **extra)


@functools.cache
def init_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def page_size(info: Info, first: int | None, default: int | None) -> int | None:
    """`first` checked against the page limit; None means everything (bounded by the index)."""
    if first is None:
        return default
    limit = info.context.state.config.max_page_size
    if not 0 <= first <= limit:
        raise BadInput(f"first must be between 0 and {limit}, got {first}")
    return first


# -- records ---------------------------------------------------------------------------------


@strawberry.type(description="An indexed SAE: what was run, on what, and how it went.")
class Sae:
    id: strawberry.ID
    model_name: str
    hook_name: str
    hook_layer: int
    architecture: str
    d_in: int
    d_sae: int
    sae_path: str | None
    corpus: str | None
    context_size: int
    prepend_bos: bool
    n_documents: int
    n_skipped_documents: int
    n_contexts: int
    n_tokens: Long
    n_excluded_tokens: Long
    dead_features: int
    status: str
    settings: JSON
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None


@strawberry.type(description="Counts per bin; binEdges has one more entry than counts.")
class Histogram:
    bin_edges: list[float]
    counts: list[Long]


@strawberry.type(description="A logit-lens token: the decoder direction through the unembedding.")
class LogitEntry:
    token: str
    token_id: int
    value: float


@strawberry.type(description="One context and the feature's activation on each of its tokens.")
class Example:
    context_id: int
    document_id: str
    source: str
    tokens: TokenList
    token_ids: IntList
    activations: FloatList
    max_activation: float
    max_token_index: int


def examples(records: list[data.Example]) -> list[Example]:
    return [convert(Example, r) for r in records]


@strawberry.type(description="Random examples whose highlighted token falls in [low, high).")
class IntervalSample:
    index: int
    low: float
    high: float
    fraction: float
    examples: list[Example]


@strawberry.type(description="A feature whose decoder direction is close to this one's.")
class Neighbour:
    sae_id: strawberry.Private[str]
    index: int
    cosine: float

    @strawberry.field(description="The neighbouring feature itself.")
    def feature(self, info: Info) -> Feature | None:
        return load_feature(info, self.sae_id, self.index)


@strawberry.type(
    description="One SAE latent and everything its dashboard shows. Each field is fetched "
    "only when asked for, batched across the request."
)
class Feature:
    sae_id: strawberry.Private[str]
    index: int
    known: strawberry.Private[data.FeatureSummary | None] = None

    async def summary(self, info: Info) -> data.FeatureSummary:
        """The per-feature row: given by a listing, else loaded (batched) on first use."""
        if self.known is None:
            self.known = await info.context.loaders.summary.load((self.sae_id, self.index))
        if self.known is None:  # only in an index whose run never finished
            raise NotFound(f"feature {self.index} of {self.sae_id!r} has no statistics")
        return self.known

    @strawberry.field(description="The SAE this feature belongs to.")
    def sae(self) -> strawberry.ID:
        return strawberry.ID(self.sae_id)

    @strawberry.field(description="Counted tokens where the feature is active.")
    async def n_active(self, info: Info) -> Long:
        return Long((await self.summary(info)).n_active)

    @strawberry.field(description="Fraction of counted tokens where the feature is active.")
    async def density(self, info: Info) -> float:
        return (await self.summary(info)).density

    @strawberry.field(description="Largest activation over the corpus.")
    async def max_activation(self, info: Info) -> float:
        return (await self.summary(info)).max_activation

    @strawberry.field(description="Mean of the non-zero activations.")
    async def mean_activation(self, info: Info) -> float:
        return (await self.summary(info)).mean_activation

    @strawberry.field(description="Skewness of the non-zero activations.")
    async def skew(self, info: Info) -> float | None:
        return (await self.summary(info)).skew

    @strawberry.field(description="Excess kurtosis of the non-zero activations.")
    async def kurtosis(self, info: Info) -> float | None:
        return (await self.summary(info)).kurtosis

    @strawberry.field(description="Tokens this feature's decoder direction promotes most.")
    async def top_logits(self, info: Info, first: int | None = None) -> list[LogitEntry]:
        n = page_size(info, first, None)
        return [convert(LogitEntry, e) for e in (await self.summary(info)).top_logits[:n]]

    @strawberry.field(description="Tokens this feature's decoder direction suppresses most.")
    async def bottom_logits(self, info: Info, first: int | None = None) -> list[LogitEntry]:
        key = (self.sae_id, self.index, "bottom", page_size(info, first, None))
        return [convert(LogitEntry, e) for e in await info.context.loaders.logits.load(key)]

    @strawberry.field(description="Histogram of the feature's non-zero activations.")
    async def histogram(self, info: Info) -> Histogram | None:
        found = await info.context.loaders.histograms.load((self.sae_id, self.index))
        return convert(Histogram, found[0]) if found else None

    @strawberry.field(description="Histogram of the logit-lens values over the vocabulary.")
    async def logit_histogram(self, info: Info) -> Histogram | None:
        found = await info.context.loaders.histograms.load((self.sae_id, self.index))
        return convert(Histogram, found[1]) if found else None

    @strawberry.field(description="Contexts where the feature fires hardest, strongest first.")
    async def top_examples(self, info: Info, first: int | None = None) -> list[Example]:
        key = (self.sae_id, self.index, page_size(info, first, None))
        return examples(await info.context.loaders.top_examples.load(key))

    @strawberry.field(description="Equal-width activation intervals, highest first.")
    async def interval_samples(self, info: Info) -> list[IntervalSample]:
        found = await info.context.loaders.intervals.load((self.sae_id, self.index))
        return [convert(IntervalSample, s, examples=examples(s.examples)) for s in found]

    @strawberry.field(description="Nearest features by decoder cosine similarity.")
    async def neighbours(self, info: Info, first: int | None = None) -> list[Neighbour]:
        key = (self.sae_id, self.index, page_size(info, first, None))
        found = await info.context.loaders.neighbours.load(key)
        return [convert(Neighbour, n, sae_id=self.sae_id) for n in found]


def feature_of(summary: data.FeatureSummary) -> Feature:
    return Feature(sae_id=summary.sae_id, index=summary.index, known=summary)


def load_feature(info: Info, sae_id: str, index: int) -> Feature:
    """The feature, or a NotFound error naming the valid range. Every index below d_sae has
    a row in the index, so no query is needed to know it exists."""
    d_sae = info.context.state.sae(sae_id).d_sae
    if not 0 <= index < d_sae:
        raise NotFound(f"no feature {index} in SAE {sae_id!r} (indices 0..{d_sae - 1})")
    return Feature(sae_id=sae_id, index=index)


# -- listing ---------------------------------------------------------------------------------


@strawberry.enum(description="Orderings of a feature listing; ties are broken by index.")
class FeatureOrder(Enum):
    INDEX_ASC = ("index", False)
    INDEX_DESC = ("index", True)
    DENSITY_ASC = ("density", False)
    DENSITY_DESC = ("density", True)
    MAX_ACTIVATION_ASC = ("max_activation", False)
    MAX_ACTIVATION_DESC = ("max_activation", True)


@strawberry.type
class FeatureEdge:
    node: Feature
    cursor: str


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type(description="A Relay-style page of features.")
class FeatureConnection:
    edges: list[FeatureEdge]
    page_info: PageInfo
    total_count: int


_CURSOR_PREFIX = "offset:"


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{offset}".encode()).decode()


def decode_cursor(cursor: str) -> int:
    """The offset a cursor stands for; anything else is a clear input error."""
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        if text.startswith(_CURSOR_PREFIX) and (offset := int(text[len(_CURSOR_PREFIX) :])) >= 0:
            return offset
    except (binascii.Error, UnicodeError, ValueError):
        pass
    raise BadInput(f"invalid cursor {cursor!r}")


def connection(page: data.FeaturePage, offset: int) -> FeatureConnection:
    edges = [
        FeatureEdge(node=feature_of(s), cursor=encode_cursor(offset + i + 1))
        for i, s in enumerate(page.items)
    ]
    info = PageInfo(
        has_next_page=offset + len(edges) < page.total,
        has_previous_page=offset > 0,
        start_cursor=edges[0].cursor if edges else None,
        end_cursor=edges[-1].cursor if edges else None,
    )
    return FeatureConnection(edges=edges, page_info=info, total_count=page.total)


# -- search and live inference ---------------------------------------------------------------


@strawberry.type(description="A feature matching a search, and where it matched.")
class FeatureMatch:
    index: int
    feature: Feature
    matched_tokens: list[str] = strawberry.field(
        description="The feature's top-logit tokens that contain the query."
    )
    example_matches: int = strawberry.field(
        description="How many of its top examples' contexts contain the query."
    )


@strawberry.type
class FeatureValue:
    index: int
    value: float


@strawberry.type(description="One token of the text and its strongest features.")
class TokenFeatures:
    position: int
    token: str
    token_id: int
    excluded: bool = strawberry.field(
        description="Left out like the index leaves out attention sinks: no features."
    )
    features: list[FeatureValue]


@strawberry.type(description="A feature active on the text, with its value on every token.")
class ActiveFeature:
    sae_id: strawberry.Private[str]
    index: int
    max_value: float
    max_token_index: int
    values: FloatList

    @strawberry.field(description="The feature's indexed data.")
    def feature(self, info: Info) -> Feature | None:
        return load_feature(info, self.sae_id, self.index)


@strawberry.type(description="What an SAE finds on a text, computed live.")
class ActiveFeatures:
    sae: strawberry.ID
    tokens: TokenList
    token_ids: IntList
    excluded: list[bool]
    positions: list[TokenFeatures]
    features: list[ActiveFeature]


def active_of(result: inference.ActiveFeatures) -> ActiveFeatures:
    positions = [
        convert(TokenFeatures, p, features=[convert(FeatureValue, f) for f in p.features])
        for p in result.positions
    ]
    features = [convert(ActiveFeature, f, sae_id=result.sae_id) for f in result.features]
    return convert(
        ActiveFeatures,
        result,
        sae=strawberry.ID(result.sae_id),
        positions=positions,
        features=features,
    )


# -- document windows (api/documents.py) ----------------------------------------------------


@strawberry.input(description="A feature of any SAE indexed over the same corpus.")
class FeatureRef:
    sae: strawberry.ID
    index: int


@strawberry.type(description="A feature's activation on every token of a document window.")
class WindowFeature:
    sae: strawberry.ID
    index: int
    activations: FloatList


@strawberry.type(
    description="A stretch of one document across the contexts the index cut it into. Offsets "
    "count the document's tokens (a prepended BOS is not one). live: false means the stored "
    "activations (attention restarted at each of contextStarts); true, one live run over the "
    "whole window."
)
class DocumentWindow:
    sae: strawberry.ID
    document_id: str
    source: str
    focus: int = strawberry.field(description="The offset asked for (e.g. an example's max token).")
    start: int
    end: int
    tokens: TokenList
    token_ids: IntList
    excluded: list[bool] = strawberry.field(description="Attention sinks the run left out.")
    context_starts: IntList = strawberry.field(
        description="Offsets inside the window where a context (or the live run) begins."
    )
    document_tokens: int = strawberry.field(description="Tokens the document has.")
    indexed_tokens: int = strawberry.field(
        description="Tokens of the document the index holds (fewer when the run stopped early)."
    )
    live: bool
    features: list[WindowFeature]


def window_of(window: data.DocumentWindow) -> DocumentWindow:
    features = [
        WindowFeature(sae=f.sae_id, index=f.index, activations=f.activations)
        for f in window.features
    ]
    return convert(
        DocumentWindow, window, sae=strawberry.ID(window.sae_id), end=window.end, features=features
    )


# -- the root --------------------------------------------------------------------------------


@strawberry.type
class Query:
    @strawberry.field(description="Every SAE in the index.")
    def saes(self, info: Info) -> list[Sae]:
        return [convert(Sae, s) for s in info.context.state.saes.values()]

    @strawberry.field(description="One SAE by id.")
    def sae(self, info: Info, id: strawberry.ID) -> Sae | None:
        return convert(Sae, info.context.state.sae(id))

    @strawberry.field(description="One feature of an SAE by index.")
    def feature(self, info: Info, sae: strawberry.ID, index: int) -> Feature | None:
        return load_feature(info, sae, index)

    @strawberry.field(description="A filtered, ordered page of an SAE's features.")
    async def features(
        self,
        info: Info,
        sae: strawberry.ID,
        first: int | None = 20,
        after: str | None = None,
        order_by: FeatureOrder = FeatureOrder.INDEX_ASC,
        min_density: float | None = None,
        max_density: float | None = None,
        top_token: str | None = None,
    ) -> FeatureConnection | None:
        state = info.context.state
        state.sae(sae)
        limit = page_size(info, first, 20)
        offset = decode_cursor(after) if after else 0
        column, descending = order_by.value
        page = await run_sync(
            state.reader.list_features,
            sae,
            column,
            descending,
            offset,
            limit,
            min_density,
            max_density,
            top_token,
        )
        info.context.loaders.prime(page.items)
        return connection(page, offset)

    @strawberry.field(description="Features whose top-logit tokens or top examples contain a text.")
    async def search_features(
        self, info: Info, sae: strawberry.ID, query: str, first: int | None = 20
    ) -> list[FeatureMatch] | None:
        state = info.context.state
        state.sae(sae)
        text = query.strip()
        if not text or len(text) > MAX_QUERY_CHARS:
            raise BadInput(f"query must have 1 to {MAX_QUERY_CHARS} characters")
        hits = await run_sync(state.reader.search_features, sae, text, page_size(info, first, 20))
        return [
            FeatureMatch(
                index=i, feature=Feature(sae_id=sae, index=i), matched_tokens=t, example_matches=n
            )
            for i, t, n in hits
        ]

    @strawberry.field(description="Live: the SAE's features on a text (runs the model).")
    async def active_features(
        self, info: Info, sae: strawberry.ID, text: str, top_k: int = 10
    ) -> ActiveFeatures | None:
        return active_of(await run_active(info.context, sae, text, top_k))

    @strawberry.field(
        description="A document's tokens around a point (a context and position, e.g. an "
        "example's contextId and maxTokenIndex; or a documentId and offset) with features' "
        "activations, across context boundaries; live re-runs the model on the joined window."
    )
    async def document_window(
        self,
        info: Info,
        sae: strawberry.ID,
        features: list[int] | None = None,
        other_features: list[FeatureRef] | None = None,
        context_id: int | None = None,
        position: int | None = None,
        document_id: str | None = None,
        offset: int = 0,
        before: int = 64,
        after: int = 64,
        live: bool = False,
    ) -> DocumentWindow | None:
        refs = [(str(sae), i) for i in features or []]
        refs += [(str(f.sae), f.index) for f in other_features or []]
        request = documents.WindowRequest(
            str(sae), refs, context_id, position, document_id, offset, before, after, live
        )
        return window_of(await documents.document_window(info.context.state, request))


async def run_active(context: Context, sae_id: str, text: str, top_k: int):
    """Check the request against the limits, then run the model (shared by REST)."""
    state = context.state
    info = state.sae(sae_id)
    limits = state.config
    if state.inference is None:
        raise Unavailable("live inference is off: the server runs with --no-inference")
    if not text.strip():
        raise BadInput("text is empty")
    if len(text) > limits.max_text_chars:
        raise BadInput(f"text has {len(text)} characters; the limit is {limits.max_text_chars}")
    if not 1 <= top_k <= limits.max_active_top_k:
        raise BadInput(f"topK must be between 1 and {limits.max_active_top_k}, got {top_k}")
    vocab = await run_sync(state.vocab, sae_id)
    return await state.inference.active_features(info, vocab, text, top_k)


async def run_sync(fn: Callable[..., T], *args: Any) -> T:
    """A blocking store call, off the event loop."""
    return await anyio.to_thread.run_sync(fn, *args)


# -- the schema ------------------------------------------------------------------------------


class Schema(strawberry.Schema):
    """Logs only unexpected errors (with their traceback); ours are the client's business."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        super().process_errors([e for e in errors if is_unexpected(e)], execution_context)


def build_schema(config: ServeConfig) -> Schema:
    """The schema with its limits; parsed and validated documents are cached across requests."""
    depth_rules = QueryDepthLimiter(max_depth=config.max_query_depth).validation_rules
    return Schema(
        query=Query,
        config=StrawberryConfig(scalar_map=SCALARS),
        extensions=[
            lambda: AddValidationRules(depth_rules),
            ParserCache,
            ValidationCache,
            MaskUnexpected,
        ],
    )
