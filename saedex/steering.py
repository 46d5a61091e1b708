"""Steering and ablation: the request and result records, and their checks (torch-free).

The computation is in `saedex.indexer.steering`; the API, the CLI and notebooks share these
records, so a result looks the same on every surface.

Modes (Neuronpedia's and SAELens's conventions):
- `add`: add `strength x W_dec[i]` (the decoder row as stored) at every steered position;
- `clamp`: encode with the SAE, set feature i to `value`, decode, and keep the SAE's
  reconstruction error, which is `x + (value - f_i(x)) x W_dec[i]`;
- `ablate`: clamp to 0.
BOS and the attention sinks the index leaves out are never steered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from saedex.config import STEER_WEIGHTS
from saedex.errors import SaedexError

MODES = ("add", "clamp", "ablate")


@dataclass(frozen=True)
class FeatureEdit:
    """One feature to steer: `strength` for add, `value` for clamp (ablate needs neither)."""

    index: int
    strength: float | None = None
    value: float | None = None


@dataclass(frozen=True)
class SteerRequest:
    prompt: str
    features: tuple[FeatureEdit, ...]
    mode: str = "add"
    n_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    seed: int = 0
    chat_template: bool = False
    n_shifts: int = 5  # tokens raised/lowered most, per step
    weights: str = "float32"  # what generates: one of STEER_WEIGHTS (ServeConfig.steer_weights)


@dataclass(frozen=True)
class SteerLimits:
    max_prompt_tokens: int
    max_new_tokens: int
    max_features: int


def check_request(req: SteerRequest, d_sae: int, limits: SteerLimits) -> SteerRequest:
    """The request with ablate's values filled in, or one clear SaedexError."""
    if req.mode not in MODES:
        raise SaedexError(f"mode must be one of {', '.join(MODES)}, got {req.mode!r}")
    if not req.prompt.strip():
        raise SaedexError("prompt is empty")
    if not req.features:
        raise SaedexError("give at least one feature to steer")
    if len(req.features) > limits.max_features:
        raise SaedexError(
            f"{len(req.features)} features; the limit is {limits.max_features} per request"
        )
    if not 1 <= req.n_tokens <= limits.max_new_tokens:
        raise SaedexError(f"nTokens must be between 1 and {limits.max_new_tokens}")
    if not (math.isfinite(req.temperature) and 0 <= req.temperature <= 10):
        raise SaedexError(f"temperature must be between 0 and 10, got {req.temperature}")
    if req.weights not in STEER_WEIGHTS:
        raise SaedexError(f"weights must be one of {', '.join(STEER_WEIGHTS)}, got {req.weights!r}")
    if not 0 <= req.n_shifts <= 50:
        raise SaedexError("nShifts must be between 0 and 50")
    edits = tuple(_check_edit(e, req.mode, d_sae) for e in req.features)
    seen = [e.index for e in edits]
    if len(set(seen)) != len(seen):
        raise SaedexError("each feature may appear once")
    return SteerRequest(**{**req.__dict__, "features": edits})


def _check_edit(edit: FeatureEdit, mode: str, d_sae: int) -> FeatureEdit:
    if not 0 <= edit.index < d_sae:
        raise SaedexError(f"unknown feature {edit.index}: this SAE has features 0 to {d_sae - 1}")
    if mode == "ablate":
        return FeatureEdit(edit.index, None, 0.0)
    name = "strength" if mode == "add" else "value"
    number = edit.strength if mode == "add" else edit.value
    if number is None:
        raise SaedexError(f"feature {edit.index} needs a {name} in mode {mode}")
    if not math.isfinite(number) or abs(number) > 1e4:
        raise SaedexError(f"feature {edit.index}: {name} must be finite and at most 1e4 in size")
    return edit


@dataclass(frozen=True)
class TokenShift:
    """A token whose next-token probability the intervention changed (steered - unsteered)."""

    token: str
    token_id: int
    delta: float
    probability: float  # under the steered model


@dataclass(frozen=True)
class Step:
    """One generated token, its log-probability, and (steered side) what the edit moved."""

    token: str
    token_id: int
    logprob: float
    raised: list[TokenShift] = field(default_factory=list)
    lowered: list[TokenShift] = field(default_factory=list)


@dataclass(frozen=True)
class Completion:
    text: str
    steps: list[Step]


@dataclass(frozen=True)
class SteeredFeature:
    """A steered feature and the scales a user needs to choose a strength."""

    index: int
    strength: float | None
    value: float | None
    decoder_norm: float
    max_activation: float | None  # over the index, when known


@dataclass(frozen=True)
class Steering:
    """Default and steered completions of one prompt, same sampling and seed."""

    sae_id: str
    mode: str
    prompt: str
    prompt_tokens: list[str]
    features: list[SteeredFeature]
    default: Completion
    steered: Completion
    temperature: float
    seed: int
    weights: str  # what generated both sides: float32 (or the model's dtype), float16, int8


@dataclass(frozen=True)
class Ablation:
    """A feature ablated at every position of one of its stored examples.

    `logprob_change[i]` is the change in log p(token i+1 | tokens 0..i) (ablated - original),
    so it has one entry fewer than `tokens`; `raised`/`lowered` are the next-token changes at
    the example's max-activation position: the predictions the feature supports are lowered.
    """

    sae_id: str
    index: int
    context_id: int
    tokens: list[str]
    token_ids: list[int]
    activations: list[float]
    max_token_index: int
    logprob_change: list[float]
    raised: list[TokenShift]
    lowered: list[TokenShift]


def promoted_word(top_logits: list) -> str | None:
    """The word a feature's logit lens names, if it names one: the top-1 promoted token is a
    word of 2+ letters and at least two of the top 5 are forms of it (case, leading space:
    " than", "than", " Than"). Features like these are the ones whose steering can be read off
    the text; the raw lens of an SAE is often a scatter of rare word fragments instead."""
    if not top_logits:
        return None
    word = top_logits[0].token.strip().lower()
    if len(word) < 2 or not word.isalpha():
        return None
    forms = sum(e.token.strip().lower() == word for e in top_logits[:5])
    return word if forms >= 2 else None
