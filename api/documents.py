"""Document windows for the API: as stored in the index, or re-run live on the joined tokens.

Stored activations were computed context by context (attention restarts where each context
begins); the live version runs the model once over the whole window, with the run's BOS and
sink rules, so every token sees the text before it. The response's `live` says which it is.
"""

from __future__ import annotations

import dataclasses

import anyio.to_thread
import numpy as np

from saedex.api.context import ApiState
from saedex.api.errors import BadInput, Unavailable
from saedex.data import DocumentWindow, WindowFeature
from saedex.errors import SaedexError


@dataclasses.dataclass(frozen=True)
class WindowRequest:
    """Where the window is, how wide, and which features it shows."""

    sae_id: str
    features: list[tuple[str, int]]
    context_id: int | None = None
    position: int | None = None
    document_id: str | None = None
    offset: int = 0
    before: int = 64
    after: int = 64
    live: bool = False


def check(state: ApiState, request: WindowRequest) -> None:
    """The request against the server's limits (BadInput naming the one that failed)."""
    limits = state.config
    for sae_id in {request.sae_id, *(s for s, _ in request.features)}:
        state.sae(sae_id)
    if not request.features:
        raise BadInput("a document window needs at least one feature")
    if len(request.features) > limits.max_window_features:
        raise BadInput(
            f"{len(request.features)} features asked for; the limit is {limits.max_window_features}"
        )
    for name in ("before", "after"):
        value = getattr(request, name)
        if not 0 <= value <= limits.max_window_side:
            raise BadInput(f"{name} must be between 0 and {limits.max_window_side}, got {value}")
    if request.live:
        if state.inference is None:
            raise Unavailable("live inference is off: the server runs with --no-inference")
        if request.before + request.after + 1 > limits.max_live_window_tokens:
            raise BadInput(
                f"a live window has at most {limits.max_live_window_tokens} tokens; "
                f"before + after + 1 is {request.before + request.after + 1}"
            )


async def document_window(state: ApiState, request: WindowRequest) -> DocumentWindow:
    check(state, request)
    try:
        window = await anyio.to_thread.run_sync(
            lambda: state.reader.document_window(
                request.sae_id,
                request.features,
                context_id=request.context_id,
                position=request.position,
                document_id=request.document_id,
                offset=request.offset,
                before=request.before,
                after=request.after,
            )
        )
    except SaedexError as exc:
        raise BadInput(str(exc)) from exc
    return await relive(state, window) if request.live else window


async def relive(state: ApiState, window: DocumentWindow) -> DocumentWindow:
    """The same window with every feature's values from one live run per SAE."""
    encoded = {}
    for sae_id in dict.fromkeys([window.sae_id, *(f.sae_id for f in window.features)]):
        encoded[sae_id] = await state.inference.window(state.sae(sae_id), window.token_ids)
    features = []
    for wf in window.features:
        enc = encoded[wf.sae_id]
        values = np.zeros(len(window.token_ids))
        mask = enc.feature == wf.index
        values[enc.position[mask]] = enc.value[mask]
        features.append(WindowFeature(wf.sae_id, wf.index, values.tolist()))
    return dataclasses.replace(
        window,
        live=True,
        excluded=encoded[window.sae_id].excluded.tolist(),
        context_starts=[window.start],
        features=features,
    )
