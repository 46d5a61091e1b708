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
from enum import Enum
from typing import Annotated, Any, TypeVar

import anyio.to_thread
import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext, ExecutionResult

from saedex import data
from saedex.api import documents, inference, steer_schema
from saedex.api.bounds import MAX_QUERY_CHARS, bounds, check_unicode
from saedex.api.context import Context
from saedex.api.cost import ListSizes
from saedex.api.errors import (
    ApiError,
    BadInput,
    MaskUnexpected,
    NotFound,
    Unavailable,
    is_unexpected,
)
from saedex.api.explanations import Explanation, Mutation, explanation_of
from saedex.api.limits import limit_extensions
from saedex.api.records import delegating_resolvers, field_doc, record_type
from saedex.api.scalars import SCALARS, FloatList, IntList, Long, TokenList
from saedex.config import ServeConfig
from saedex.errors import SaedexError

Info = strawberry.Info[Context, None]
T = TypeVar("T")


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
    return bounds(info.context.state.config)["first"].check("first", first)


# -- records (generated from saedex.data: api/records.py) --------------------------------------


def _model_name(root: strawberry.Parent[data.SaeInfo]) -> str:
    """The model the SAE reads: a hub name, or a local model directory's name."""
    return data.public_name(root.model_name)


def _sae_path(root: strawberry.Parent[data.SaeInfo]) -> str:
    """The SAE directory's name: the publisher's local path is not shown."""
    return data.public_name(root.sae_path)


def _corpus(root: strawberry.Parent[data.SaeInfo]) -> str:
    """The corpus file's or folder's name: the publisher's local path is not shown."""
    return data.public_name(root.corpus)


Sae = record_type(
    data.SaeInfo,
    "Sae",
    types_={"id": strawberry.ID},
    resolvers={"model_name": _model_name, "sae_path": _sae_path, "corpus": _corpus},
)
Histogram = record_type(data.Histogram)
LogitEntry = record_type(data.LogitEntry)
Example = record_type(data.Example)
IntervalSample = record_type(data.IntervalSample)


def _neighbour_feature(root: strawberry.Parent[data.Neighbour], info: Info) -> Feature | None:
    """The neighbouring feature itself."""
    return load_feature(info, root.sae_id, root.index)


Neighbour = record_type(
    data.Neighbour, exclude=("sae_id",), resolvers={"feature": _neighbour_feature}
)


# -- feature splitting across widths (issue 17: saedex match, docs/splitting.md) --

MATCHES_SHOWN = 10  # Feature.matches without `first`


def _match_feature(root: strawberry.Parent[data.MatchedFeature], info: Info) -> Feature:
    """The matched feature itself."""
    return load_feature(info, root.sae_id, root.index)


MatchedFeature = record_type(
    data.MatchedFeature,
    types_={"sae_id": strawberry.ID, "cofiring": Long},
    resolvers={"feature": _match_feature},
)
FeatureFamily = record_type(data.FeatureFamily, types_={"sae_id": strawberry.ID})


async def _summary(root: Feature, info: Info) -> data.FeatureSummary:
    return await root.summary(info)


class Feature:
    """One SAE latent and everything its dashboard shows. Each field is fetched only when
    asked for, batched across the request; the per-feature row's fields (FeatureSummary) are
    generated below the class."""

    sae_id: strawberry.Private[str]
    index: int = strawberry.field(description="The feature's index in its SAE.")
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

    @strawberry.field(description=field_doc(data.FeatureSummary, "top_logits"))
    async def top_logits(self, info: Info, first: int | None = None) -> list[LogitEntry]:
        n = page_size(info, first, None)
        return (await self.summary(info)).top_logits[:n]

    @strawberry.field(description="Tokens this feature's decoder direction suppresses most.")
    async def bottom_logits(self, info: Info, first: int | None = None) -> list[LogitEntry]:
        key = (self.sae_id, self.index, "bottom", page_size(info, first, None))
        return await info.context.loaders.logits.load(key)

    @strawberry.field(description="Histogram of the feature's non-zero activations.")
    async def histogram(self, info: Info) -> Histogram | None:
        found = await info.context.loaders.histograms.load((self.sae_id, self.index))
        return found[0] if found else None

    @strawberry.field(description="Histogram of the logit-lens values over the vocabulary.")
    async def logit_histogram(self, info: Info) -> Histogram | None:
        found = await info.context.loaders.histograms.load((self.sae_id, self.index))
        return found[1] if found else None

    @strawberry.field(description="Contexts where the feature fires hardest, strongest first.")
    async def top_examples(self, info: Info, first: int | None = None) -> list[Example]:
        key = (self.sae_id, self.index, page_size(info, first, None))
        return await info.context.loaders.top_examples.load(key)

    @strawberry.field(description="Equal-width activation intervals, highest first.")
    async def interval_samples(self, info: Info) -> list[IntervalSample]:
        return await info.context.loaders.intervals.load((self.sae_id, self.index))

    @strawberry.field(description="Nearest features by decoder cosine similarity.")
    async def neighbours(self, info: Info, first: int | None = None) -> list[Neighbour]:
        key = (self.sae_id, self.index, page_size(info, first, None))
        return await info.context.loaders.neighbours.load(key)

    # -- SAE weights (interop: saedex.weights) --

    @strawberry.field(
        description="The feature's decoder row: its direction in the hooked activation space "
        "(dIn numbers), read from the SAE weights file the index run recorded."
    )
    async def decoder(self, info: Info) -> FloatList:
        return await load_vector(info, self.sae_id, self.index, "decoder")

    @strawberry.field(
        description="The feature's encoder column (dIn numbers), from the same weights file."
    )
    async def encoder(self, info: Info) -> FloatList:
        return await load_vector(info, self.sae_id, self.index, "encoder")

    # -- feature splitting across widths (issue 17: saedex match) --

    @strawberry.field(
        description="This feature's best matches in another SAE on the same hook (`saedex "
        "match`), best correlated first: activation correlation over the corpus, decoder "
        "cosine, and the parent / child relation."
    )
    async def matches(
        self, info: Info, sae: strawberry.ID, first: int | None = None
    ) -> list[MatchedFeature]:
        info.context.state.sae(str(sae))  # an unknown SAE is NOT_FOUND
        key = (self.sae_id, self.index, str(sae), page_size(info, first, MATCHES_SHOWN))
        return await info.context.loaders.matches.load(key)

    @strawberry.field(
        description="The feature's family across widths: its parent in each narrower matched "
        "SAE and its children in each wider one."
    )
    async def family(self, info: Info) -> FeatureFamily:
        return await info.context.loaders.families.load((self.sae_id, self.index))

    # -- explanations (saedex.api.explanations) --

    @strawberry.field(
        description="What the feature means, in words: current ones first, then the best "
        "scored. With currentOnly, those made for earlier weights of this SAE are left out."
    )
    async def explanations(self, info: Info, current_only: bool = False) -> list[Explanation]:
        found = await info.context.loaders.explanations.load((self.sae_id, self.index))
        return [explanation_of(e) for e in found if e.current or not current_only]


for _name, _resolver in delegating_resolvers(
    data.FeatureSummary, _summary, exclude=("sae_id", "index", "top_logits")
).items():
    setattr(Feature, _name, strawberry.field(resolver=_resolver, description=_resolver.__doc__))
Feature = strawberry.type(
    Feature,
    description="One SAE latent and everything its dashboard shows. Each field is fetched "
    "only when asked for, batched across the request.",
)


async def load_vector(info: Info, sae_id: str, index: int, kind: str) -> list[float]:
    """A weights row through the request's loader; weights that cannot be read are
    UNAVAILABLE (the SAE directory moved since indexing), not a client error."""
    try:
        return await info.context.loaders.vectors.load((sae_id, index, kind))
    except ApiError:
        raise
    except SaedexError as exc:
        raise Unavailable(str(exc)) from exc


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
    matched_explanation: str | None = strawberry.field(
        default=None, description="The feature's explanation that contains the query."
    )


def ranked_matches(sae_id: str, hits: list[tuple], explained: list) -> list[FeatureMatch]:
    """One match per feature: explanations matching the query as whole words, then top-logit
    token matches, then explanations containing it inside a word, then example-only matches
    (any top example's context containing the text: the weakest evidence)."""
    by_text = {h.feature: h for h in explained}
    matches: dict[int, FeatureMatch] = {}

    def add(index: int, tokens: list[str], n: int) -> None:
        hit = by_text.get(index)
        matches.setdefault(
            index,
            FeatureMatch(
                index=index, feature=Feature(sae_id=sae_id, index=index), matched_tokens=tokens,
                example_matches=n, matched_explanation=hit.text if hit else None,
            ),
        )  # fmt: skip

    other = {i: (t, n) for i, t, n in hits}
    for hit in explained:
        if hit.whole_word:
            add(hit.feature, *other.get(hit.feature, ([], 0)))
    for i, t, n in hits:
        if t:
            add(i, t, n)
    for hit in explained:
        add(hit.feature, *other.get(hit.feature, ([], 0)))
    for i, t, n in hits:
        add(i, t, n)
    return list(matches.values())


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


def _sae_of(root: strawberry.Parent[Any]) -> strawberry.ID:
    """The SAE, by id."""
    return strawberry.ID(root.sae_id)


def _window_end(root: strawberry.Parent[data.DocumentWindow]) -> int:
    """The offset just past the window's last token."""
    return root.end


WindowFeature = record_type(data.WindowFeature, exclude=("sae_id",), resolvers={"sae": _sae_of})
DocumentWindow = record_type(
    data.DocumentWindow, exclude=("sae_id",), resolvers={"sae": _sae_of, "end": _window_end}
)


# -- the root --------------------------------------------------------------------------------


@strawberry.type
class Query:
    @strawberry.field(description="Every SAE in the index.")
    def saes(self, info: Info) -> list[Sae]:
        return list(info.context.state.saes.values())

    @strawberry.field(description="One SAE by id.")
    def sae(self, info: Info, id: strawberry.ID) -> Sae | None:
        return info.context.state.sae(id)

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
        has_explanation: Annotated[
            bool | None,
            strawberry.argument(
                description="Only features with (true) or without (false) a current explanation."
            ),
        ] = None,
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
            has_explanation,
        )
        info.context.loaders.prime(page.items)
        return connection(page, offset)

    @strawberry.field(
        description="Features whose explanations, top-logit tokens or top examples contain a "
        "text: explanations matching it as whole words first, then top-logit tokens, then "
        "explanations containing it inside a word, then top examples."
    )
    async def search_features(
        self, info: Info, sae: strawberry.ID, query: str, first: int | None = 20
    ) -> list[FeatureMatch] | None:
        state = info.context.state
        state.sae(sae)
        text = query.strip()
        if not text or len(text) > MAX_QUERY_CHARS:
            raise BadInput(f"query must have 1 to {MAX_QUERY_CHARS} non-blank characters")
        limit = page_size(info, first, 20)
        hits = await run_sync(state.reader.search_features, sae, text, limit)
        explained = await run_sync(state.reader.search_explanations, sae, text, limit)
        return ranked_matches(sae, hits, explained)[:limit]

    @strawberry.field(description="Live: the SAE's features on a text (runs the model).")
    async def active_features(
        self, info: Info, sae: strawberry.ID, text: str, top_k: int = 10
    ) -> ActiveFeatures | None:
        return active_of(await run_active(info.context, sae, text, top_k))

    # -- steering and ablation (api/steer_schema.py; owner: inference) --

    @strawberry.field(
        description="Live: default and steered completions of a prompt, side by side "
        "(runs the model; limits in ServeConfig)."
    )
    async def steer(
        self,
        info: Info,
        sae: strawberry.ID,
        prompt: str,
        features: list[steer_schema.SteerFeatureInput],
        mode: steer_schema.SteerMode = steer_schema.SteerMode.ADD,
        n_tokens: int = 32,
        temperature: float = 0.0,
        seed: int = 0,
        chat_template: bool = False,
        n_shifts: int = 5,
    ) -> steer_schema.Steering | None:
        result = await steer_schema.run_steer(
            info.context,
            sae,
            prompt,
            features,
            mode,
            n_tokens,
            temperature,
            seed,
            chat_template,
            n_shifts,
        )
        return steer_schema.steering_of(result)

    @strawberry.field(
        description="Live: a feature ablated at every position of one of its top examples "
        "(example 0 is the strongest): the change in each next token's log-probability."
    )
    async def ablation(
        self, info: Info, sae: strawberry.ID, index: int, example: int = 0, n_shifts: int = 10
    ) -> steer_schema.Ablation | None:
        result = await steer_schema.run_ablation(info.context, sae, index, example, n_shifts)
        return steer_schema.ablation_of(result)

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
        return await documents.document_window(info.context.state, request)


async def run_active(context: Context, sae_id: str, text: str, top_k: int):
    """Check the request against the limits, then run the model (shared by REST)."""
    state = context.state
    info = state.sae(sae_id)
    limits = bounds(state.config)
    if state.inference is None:
        raise Unavailable("live inference is off: the server runs with --no-inference")
    if not text.strip():
        raise BadInput("text is empty")
    if len(text) > (most := limits["text"].high or 0):
        raise BadInput(f"text has {len(text)} characters; the limit is {most}")
    limits["topK"].check("topK", top_k)
    vocab = await run_sync(state.vocab, sae_id)
    return await state.inference.active_features(info, vocab, text, top_k)


async def run_sync(fn: Callable[..., T], *args: Any) -> T:
    """A blocking store call, off the event loop."""
    return await anyio.to_thread.run_sync(fn, *args)


# -- the schema ------------------------------------------------------------------------------


class Schema(strawberry.Schema):
    """Logs only unexpected errors (with their traceback); ours are the client's business.
    Variables that are valid JSON but not valid Unicode (a lone surrogate) are refused before
    execution, as GraphQL refuses a variable of the wrong type."""

    async def execute(self, query: str | None, variable_values: dict | None = None, **kwargs):
        try:
            for name, value in (variable_values or {}).items():
                check_unicode(f"variable ${name}", value)
        except BadInput as exc:
            return ExecutionResult(
                data=None, errors=[GraphQLError(str(exc), extensions=exc.extensions)]
            )
        return await super().execute(query, variable_values, **kwargs)

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        super().process_errors([e for e in errors if is_unexpected(e)], execution_context)


def build_schema(config: ServeConfig, sizes: ListSizes | None = None) -> Schema:
    """The schema with its limits (api/limits.py; `sizes`: the served index's list sizes, for
    the node budget); parsed and validated documents are cached across requests."""
    return Schema(
        query=Query,
        mutation=Mutation,
        config=StrawberryConfig(scalar_map=SCALARS),
        extensions=[
            *limit_extensions(config, sizes or ListSizes.of([], config)),
            ParserCache,
            ValidationCache,
            MaskUnexpected,
        ],
    )
