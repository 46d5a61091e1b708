"""Explanations over GraphQL: the `Explanation` type and the mutations that edit them.

Every mutation needs the server's API key (api/auth.py) and goes through the user-edit store
(saedex.store.edits), which several processes may write at once while the index is served.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import anyio.to_thread
import strawberry

from saedex import data
from saedex.api.auth import check_key
from saedex.api.context import Context
from saedex.api.errors import BadInput, NotFound
from saedex.api.scalars import JSON
from saedex.errors import SaedexError
from saedex.store.edits import NewExplanation

Info = strawberry.Info[Context, None]
T = TypeVar("T")


@strawberry.type(
    description="What a feature means, in words: written by hand, imported, or made by a model."
)
class Explanation:
    id: int
    sae: strawberry.ID
    feature: int
    text: str
    source: str = strawberry.field(description='"human", "import" or "model".')
    author: str | None = strawberry.field(description="Who wrote it, or the model that made it.")
    method: str | None = strawberry.field(
        description="How it was made: the explainer, or Neuronpedia's typeName."
    )
    scores: JSON = strawberry.field(
        description="Scorer name -> score (detection/fuzzing: balanced accuracy, 0..1)."
    )
    sae_fingerprint: str | None = strawberry.field(
        description="The weights it was written for (sha256 of the SAE weights file)."
    )
    current: bool = strawberry.field(
        description="False when it explains an earlier version of this SAE's weights."
    )
    created_at: datetime | None
    updated_at: datetime | None


def explanation_of(e: data.Explanation) -> Explanation:
    return Explanation(
        id=e.id, sae=strawberry.ID(e.sae_id), feature=e.feature, text=e.text, source=e.source,
        author=e.author, method=e.method, scores=e.scores, sae_fingerprint=e.sae_fingerprint,
        current=e.current, created_at=e.created_at, updated_at=e.updated_at,
    )  # fmt: skip


async def run_sync(fn: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(fn, *args)


def _editable(info: Info, sae_id: str | None = None):
    """The store to write, once the request's key is checked (and the SAE, if named)."""
    state = info.context.state
    check_key(state.api_key, info.context.authorization)
    if sae_id is not None:
        state.sae(sae_id)
    return state.reader.edits(create=True)


async def _write(fn: Callable[..., T], *args: Any) -> T:
    """A store write off the event loop; a refused edit is the client's error."""
    try:
        return await run_sync(fn, *args)
    except SaedexError as exc:
        raise BadInput(str(exc)) from exc


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Add an explanation to a feature (needs the API key).")
    async def add_explanation(
        self,
        info: Info,
        sae: strawberry.ID,
        feature: int,
        text: str,
        author: str | None = None,
        method: str | None = None,
    ) -> Explanation:
        store = _editable(info, sae)
        d_sae = info.context.state.sae(sae).d_sae
        if not 0 <= feature < d_sae:
            raise NotFound(f"no feature {feature} in SAE {sae!r} (indices 0..{d_sae - 1})")
        new = NewExplanation(feature, text, "human", author, method)
        fingerprint = await run_sync(info.context.state.reader.fingerprint, sae)
        return explanation_of(await _write(store.add, sae, new, fingerprint))

    @strawberry.mutation(description="Change an explanation's text (needs the API key).")
    async def edit_explanation(
        self, info: Info, id: int, text: str, author: str | None = None
    ) -> Explanation:
        store = _editable(info)
        old = await run_sync(store.get, id)
        if old is None:
            raise NotFound(f"no explanation with id {id}")
        fingerprint = await run_sync(info.context.state.reader.fingerprint, old.sae_id)
        return explanation_of(await _write(store.update, id, text, author, fingerprint))

    @strawberry.mutation(description="Delete an explanation (needs the API key).")
    async def delete_explanation(self, info: Info, id: int) -> bool:
        store = _editable(info)
        if not await run_sync(store.delete, id):
            raise NotFound(f"no explanation with id {id}")
        return True
