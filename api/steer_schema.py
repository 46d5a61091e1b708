"""GraphQL types and resolvers for steering and ablation (records in saedex.steering).

Kept apart from api/schema.py so the live-intervention surface is one module; schema.py's
Query only delegates to `steer` and `ablation` here, and REST runs the same documents.
"""

from __future__ import annotations

from enum import Enum

import anyio.to_thread
import strawberry

from saedex import steering
from saedex.api.context import Context
from saedex.api.errors import BadInput, NotFound, Unavailable
from saedex.api.scalars import FloatList, IntList, TokenList
from saedex.errors import SaedexError


@strawberry.enum(description="add: strength x W_dec[i]; clamp: set the activation; ablate: 0.")
class SteerMode(Enum):
    ADD = "add"
    CLAMP = "clamp"
    ABLATE = "ablate"


@strawberry.input(description="A feature to steer: strength (ADD) or value (CLAMP).")
class SteerFeatureInput:
    index: int
    strength: float | None = None
    value: float | None = None


@strawberry.type(description="A next-token probability the intervention moved.")
class TokenShift:
    token: str
    token_id: int
    delta: float = strawberry.field(description="Steered minus unsteered probability.")
    probability: float = strawberry.field(description="Probability under the steered model.")


@strawberry.type(description="One generated token and its log-probability.")
class SteerStep:
    token: str
    token_id: int
    logprob: float
    raised: list[TokenShift] = strawberry.field(
        description="Steered side: tokens the intervention made likelier at this step."
    )
    lowered: list[TokenShift] = strawberry.field(
        description="Steered side: tokens the intervention made less likely at this step."
    )


@strawberry.type(description="A completion of the prompt.")
class Completion:
    text: str
    steps: list[SteerStep]


@strawberry.type(description="A steered feature, with the scales to choose a strength by.")
class SteeredFeature:
    index: int
    strength: float | None
    value: float | None
    decoder_norm: float = strawberry.field(description="Norm of its decoder row W_dec[i].")
    max_activation: float | None = strawberry.field(description="Its max over the index.")


@strawberry.type(description="Default and steered completions, same sampling and seed.")
class Steering:
    sae: strawberry.ID
    mode: SteerMode
    prompt: str
    prompt_tokens: TokenList
    features: list[SteeredFeature]
    default: Completion
    steered: Completion
    temperature: float
    seed: int
    weights: str = strawberry.field(
        description="What generated both sides (ServeConfig.steer_weights): float32 (the "
        "index's model), or float16 or int8 linear weights (faster; float16 within ~0.02 nats "
        "of float32, int8 changes the text: docs/steering.md)."
    )


@strawberry.type(description="A feature ablated at every position of one of its top examples.")
class Ablation:
    sae: strawberry.ID
    index: int
    context_id: int
    tokens: TokenList
    token_ids: IntList
    activations: FloatList
    max_token_index: int
    logprob_change: FloatList = strawberry.field(
        description="Entry i: change (ablated - original) in log p(token i+1 | tokens 0..i)."
    )
    raised: list[TokenShift] = strawberry.field(
        description="At the max-activation position: next tokens ablation made likelier."
    )
    lowered: list[TokenShift] = strawberry.field(
        description="At the max-activation position: next tokens ablation made less likely "
        "(the predictions the feature supports)."
    )


def _shifts(items: list[steering.TokenShift]) -> list[TokenShift]:
    return [TokenShift(**vars(s)) for s in items]


def _completion(c: steering.Completion) -> Completion:
    steps = [
        SteerStep(
            token=s.token,
            token_id=s.token_id,
            logprob=s.logprob,
            raised=_shifts(s.raised),
            lowered=_shifts(s.lowered),
        )
        for s in c.steps
    ]
    return Completion(text=c.text, steps=steps)


def steering_of(r: steering.Steering) -> Steering:
    return Steering(
        sae=strawberry.ID(r.sae_id),
        mode=SteerMode(r.mode),
        prompt=r.prompt,
        prompt_tokens=r.prompt_tokens,
        features=[SteeredFeature(**vars(f)) for f in r.features],
        default=_completion(r.default),
        steered=_completion(r.steered),
        temperature=r.temperature,
        seed=r.seed,
        weights=r.weights,
    )


def ablation_of(r: steering.Ablation) -> Ablation:
    fields = {k: v for k, v in vars(r).items() if k not in ("sae_id", "raised", "lowered")}
    return Ablation(
        sae=strawberry.ID(r.sae_id), raised=_shifts(r.raised), lowered=_shifts(r.lowered), **fields
    )


def _live(context: Context, sae_id: str):
    state = context.state
    info = state.sae(sae_id)
    if state.inference is None:
        raise Unavailable("live inference is off: the server runs with --no-inference")
    return state, info


async def run_steer(
    context: Context,
    sae_id: str,
    prompt: str,
    features: list[SteerFeatureInput],
    mode: SteerMode,
    n_tokens: int,
    temperature: float,
    seed: int,
    chat_template: bool,
    n_shifts: int,
) -> steering.Steering:
    """Check the request against the limits, then generate both sides on the shared model."""
    state, info = _live(context, sae_id)
    cfg = state.config
    if len(prompt) > cfg.max_text_chars:
        raise BadInput(f"prompt has {len(prompt)} characters; the limit is {cfg.max_text_chars}")
    edits = tuple(steering.FeatureEdit(f.index, f.strength, f.value) for f in features)
    req = steering.SteerRequest(
        prompt,
        edits,
        mode.value,
        n_tokens,
        temperature,
        seed,
        chat_template,
        n_shifts,
        cfg.steer_weights,
    )
    limits = steering.SteerLimits(
        cfg.max_steer_prompt_tokens, cfg.max_steer_new_tokens, cfg.max_steer_features
    )
    try:
        req = steering.check_request(req, info.d_sae, limits)
    except SaedexError as exc:
        raise BadInput(str(exc)) from exc
    indices = [e.index for e in req.features]
    summaries = await anyio.to_thread.run_sync(state.reader.summaries, sae_id, indices)
    maxima = {i: s.max_activation for i, s in summaries.items()}
    return await state.inference.steer(info, req, cfg.max_steer_prompt_tokens, maxima)


async def run_ablation(
    context: Context, sae_id: str, index: int, example: int, n_shifts: int
) -> steering.Ablation:
    """Ablate a feature on its `example`-th top example (0 = the strongest)."""
    state, info = _live(context, sae_id)
    if not 0 <= index < info.d_sae:
        raise NotFound(f"unknown feature {index}: {sae_id!r} has features 0 to {info.d_sae - 1}")
    if not 0 <= n_shifts <= 50:
        raise BadInput("nShifts must be between 0 and 50")
    tops = await anyio.to_thread.run_sync(state.reader.top_examples, sae_id, [index], example + 1)
    found = tops.get(index, [])
    if example < 0 or example >= len(found):
        raise NotFound(f"feature {index} has {len(found)} top examples; example {example} is none")
    return await state.inference.ablation(info, found[example], index, n_shifts)
