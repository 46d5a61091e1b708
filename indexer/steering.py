"""Interventions at the SAE's hook: steering completions and ablating a feature on an example.

One `Intervention` is a TransformerLens hook that edits chosen rows of a batch, so the default
and the steered sides run together in one batch (one forward per step, one KV cache). Records
and request checks are in `saedex.steering`; see its docstring for the modes.

Positions left alone, as the index leaves them out: position 0 when it is BOS, and attention
sinks (a hook norm over `sink_norm_multiple` x the median norm of the prompt's other tokens;
for generated tokens, of the prompt's median). Exactness follows from the arithmetic: an add
of strength 0, or a clamp of a feature to the value it has (0 for an inactive one when
ablating), adds an exact zero, and rows not steered are passed through untouched.

Generation runs on a forward: the TransformerLens bridge (`BridgeForward`, the model the
index was built with), or a quantized copy (`saedex.indexer.quantized`, by
`ServeConfig.steer_weights`). Both sides of a pair and the shifts run on the same forward, so
the exactness above holds within each one.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from saedex.errors import SaedexError
from saedex.indexer.model import LoadedModel
from saedex.indexer.sae import SparseAutoencoder
from saedex.steering import FeatureEdit, SteerRequest, TokenShift

if TYPE_CHECKING:
    from saedex.indexer.quantized import PlainForward


class Intervention:
    """A forward hook: edit `rows` of the batch at every position but BOS and sinks."""

    def __init__(
        self,
        sae: SparseAutoencoder,
        edits: tuple[FeatureEdit, ...],
        mode: str,
        rows: list[bool],
        skip_first: bool,
        sink_norm_multiple: float,
    ):
        self.sae = sae
        self.mode = "add" if mode == "add" else "clamp"
        self.index = torch.tensor([e.index for e in edits], device=sae.W_dec.device)
        self.w_dec = sae.W_dec.detach()[self.index]  # [k, d]
        amounts = [(e.strength if mode == "add" else e.value) or 0.0 for e in edits]
        self.amount = torch.tensor(amounts, dtype=self.w_dec.dtype, device=self.w_dec.device)
        self.rows = torch.tensor(rows)
        self.skip_first = skip_first
        self.sink_norm_multiple = sink_norm_multiple
        self.offset = 0
        self.median: torch.Tensor | None = None

    def __call__(self, act: torch.Tensor, hook=None) -> torch.Tensor:
        mask = self.steered_positions(act)
        self.offset += act.shape[1]
        return torch.where(mask[..., None], act + self.delta(act), act)

    def steered_positions(self, act: torch.Tensor) -> torch.Tensor:
        """[B, T] mask: the steered rows, minus BOS and attention sinks."""
        batch, width = act.shape[:2]
        first = torch.zeros(batch, width, dtype=torch.bool, device=act.device)
        if self.offset == 0 and self.skip_first:
            first[:, 0] = True
        norms = act.float().norm(dim=-1)
        if self.median is None:  # the prompt's pass sets the scale for the generated tokens
            masked = norms.masked_fill(first, float("nan"))
            self.median = masked.nanmedian(dim=1, keepdim=True).values
        mask = ~first & self.rows.to(act.device)[:, None]
        if self.sink_norm_multiple > 0:
            mask &= ~(norms / self.median > self.sink_norm_multiple)
        return mask

    def delta(self, act: torch.Tensor) -> torch.Tensor:
        """What is added at a steered position: sum_i amount_i W_dec[i] (add), or
        sum_i (value_i - f_i(x)) W_dec[i] (clamp, the reconstruction error kept)."""
        if self.mode == "add":
            return (self.amount[:, None] * self.w_dec).sum(0).to(act.dtype)
        acts = self.sae.encode(act.to(self.w_dec.dtype))[..., self.index]  # [B, T, k]
        return ((self.amount - acts) @ self.w_dec).to(act.dtype)


def prompt_ids(model: LoadedModel, prompt: str, prepend_bos: bool, chat_template: bool):
    """The prompt's token ids: the model's chat template (a user turn and the assistant's
    cue), or the plain text with BOS prepended as the index's run did."""
    tok = model.tokenizer
    if chat_template:
        if not getattr(tok, "chat_template", None):
            raise SaedexError(f"the tokenizer of {model.name} has no chat template")
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return list(tok(text, add_special_tokens=False)["input_ids"])
    ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
    return [model.bos_token_id, *ids] if prepend_bos else ids


@contextmanager
def hooked(point, fn):
    """`fn` on a resolved HookPoint while the block runs, through the HookPoint's own
    `add_hook`. Per decode step this replaces `bridge.hooks()`, which resolves hook aliases
    over the whole model on every call (~20 ms measured here under load)."""
    handle = point.add_hook(fn)
    try:
        yield
    finally:
        handle.hook.remove()
        point.fwd_hooks.remove(handle)


class BridgeForward:
    """The TransformerLens bridge (the model the index was built with), the edit on the SAE
    hook's resolved HookPoint."""

    def __init__(self, model: LoadedModel, hook_name: str):
        self.bridge = model.bridge
        self.point = model.bridge.hook_dict[hook_name]
        self.weights = str(next(model.bridge.parameters()).dtype).removeprefix("torch.")

    def edited(self, fn):
        return hooked(self.point, fn)

    def __call__(self, inputs: torch.Tensor, cache):
        return self.bridge(inputs, return_type="logits_and_cache", past_key_values=cache)


@dataclass
class Side:
    token_ids: list[int]
    logprobs: list[float]
    done: bool = False


class PairGeneration:
    """Default (row 0) and steered (row 1) completions of one prompt, batched with a KV cache,
    one `step()` per token so that a caller can interleave other model work between steps.

    The per-step token shifts need the unsteered model's next-token distribution on each
    steered prefix. Row 0 is the unsteered model on the prompt, so its prompt keys/values are
    kept after the first step, and `shifts()` runs the steered tokens alone on top of them in
    one pass (the prompt is not run again). Measured against a third batch row fed the
    steered tokens at every step, this is cheaper on CPU: one pass over n tokens costs less
    than n single-token rows (docs/steering.md, Speed)."""

    def __init__(
        self,
        model: LoadedModel,
        sae: SparseAutoencoder,
        ids: list[int],
        req: SteerRequest,
        sink_norm_multiple: float,
        forward: BridgeForward | PlainForward | None = None,
    ):
        """`forward`: the model to run (default: the bridge at the SAE's hook)."""
        self.model, self.sae, self.req = model, sae, req
        self.forward = forward or BridgeForward(model, sae.cfg.hook_name)
        self.prompt = ids
        skip_first = bool(ids) and ids[0] == model.bos_token_id
        self.hook = Intervention(
            sae, req.features, req.mode, [False, True], skip_first, sink_norm_multiple
        )
        self.sides = [Side([], []), Side([], [])]
        self.steered_logp: list[torch.Tensor] = []
        self.generators = [torch.Generator().manual_seed(req.seed) for _ in self.sides]
        self.cache = None
        self.prompt_cache = None  # row 0's (the unsteered model's) prompt keys/values
        self.plain_first: torch.Tensor | None = None  # row 0's first next-token log-probs
        self.plain_rest: torch.Tensor | None = None  # the unsteered model on the steered text
        self.eos = model.tokenizer.eos_token_id

    @torch.inference_mode()
    def step(self) -> bool:
        """Generate one token on both sides; False when both are finished."""
        first = self.cache is None
        if first:
            inputs = torch.tensor([self.prompt] * 2)
        else:
            inputs = torch.tensor([[s.token_ids[-1]] for s in self.sides])
        with self.forward.edited(self.hook):
            logits, self.cache = self.forward(inputs.to(self.model.device), self.cache)
        logp = logits[:, -1].float().log_softmax(-1).cpu()
        if first and self.req.n_shifts:
            self.prompt_cache = copy.deepcopy(self.cache)
            self.prompt_cache.batch_select_indices(torch.tensor([0], device=self.model.device))
            self.plain_first = logp[0]
        self.steered_logp.append(logp[1])
        for row, side in enumerate(self.sides):
            token = self._choose(logp[row], self.generators[row])
            if not side.done:
                side.logprobs.append(float(logp[row, token]))
                side.done = token == self.eos
            side.token_ids.append(token)  # after EOS: keeps the cache rows in step; dropped
        n = len(self.steered_logp)
        return n < self.req.n_tokens and not all(s.done for s in self.sides)

    def _choose(self, logp: torch.Tensor, generator: torch.Generator) -> int:
        if self.req.temperature <= 0:
            return int(logp.argmax())
        probs = (logp / self.req.temperature).softmax(-1)
        return int(torch.multinomial(probs, 1, generator=generator))

    def completion(self, row: int) -> tuple[list[int], list[float]]:
        """A side's tokens up to and including its first EOS, and their log-probs."""
        side = self.sides[row]
        return side.token_ids[: len(side.logprobs)], side.logprobs

    @torch.inference_mode()
    def shifts(self, k: int) -> list[tuple[list[TokenShift], list[TokenShift]]]:
        """Per steered step, the k tokens the edit raised and lowered most (k at most the
        request's `n_shifts`): the steered model's next-token probabilities against the
        unsteered model's on the same steered prefix."""
        ids, _ = self.completion(1)
        if k == 0 or not ids or self.plain_first is None:
            return [([], []) for _ in ids]
        steered = torch.stack(self.steered_logp[: len(ids)]).exp()
        plain = self._plain(ids).exp()
        return [token_shifts(self.model, s - p, s, k) for s, p in zip(steered, plain, strict=True)]

    def _plain(self, ids: list[int]) -> torch.Tensor:
        """The unsteered model's next-token log-probs on each steered prefix: the first from
        row 0, the rest from one pass of the steered tokens over row 0's prompt cache."""
        if self.plain_rest is None:
            self.plain_rest = torch.empty(0, self.plain_first.shape[-1])
            if len(ids) > 1:
                steered = torch.tensor([ids[:-1]], device=self.model.device)
                logits, _ = self.forward(steered, self.prompt_cache)
                self.plain_rest = logits[0].float().log_softmax(-1).cpu()
            self.prompt_cache = None  # extended by that pass
        return torch.cat([self.plain_first[None], self.plain_rest])


def token_shifts(model: LoadedModel, delta: torch.Tensor, probs: torch.Tensor, k: int):
    """The k tokens with the largest rise and the k with the largest fall of `delta`."""
    up = delta.topk(k)
    down = (-delta).topk(k)
    decode = model.tokenizer.decode

    def shifts(indices) -> list[TokenShift]:
        return [
            TokenShift(decode([i]), i, float(delta[i]), float(probs[i])) for i in indices.tolist()
        ]

    return shifts(up.indices), shifts(down.indices)


@torch.inference_mode()
def ablation_effect(
    model: LoadedModel,
    sae: SparseAutoencoder,
    token_ids: list[int],
    feature: int,
    at: int,
    sink_norm_multiple: float,
    k: int,
):
    """Ablate `feature` at every position of a context: per position the change in the log-prob
    of the token that follows, and at position `at` the next tokens raised/lowered most."""
    skip_first = bool(token_ids) and token_ids[0] == model.bos_token_id
    edit = (FeatureEdit(feature, None, 0.0),)
    hook = Intervention(sae, edit, "ablate", [False, True], skip_first, sink_norm_multiple)
    tokens = torch.tensor([token_ids] * 2, device=model.device)
    with model.bridge.hooks(fwd_hooks=[(sae.cfg.hook_name, hook)]):
        logits = model.bridge(tokens, return_type="logits")
    logp = logits.float().log_softmax(-1).cpu()
    nxt = torch.tensor(token_ids[1:])
    rows = torch.arange(len(token_ids) - 1)
    change = logp[1, rows, nxt] - logp[0, rows, nxt]
    probs = logp[:, at].exp()
    raised, lowered = token_shifts(model, probs[1] - probs[0], probs[1], k)
    return change.tolist(), raised, lowered
