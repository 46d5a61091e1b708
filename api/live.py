"""The model side of live inference: loading models and SAEs, and one forward for many texts.

This is the only API module that imports torch and the indexer; `api.inference` imports it on
the first live request, so a server without inference (and the site exporter) never loads
torch or transformers.

Texts go through the indexer's own code: `tokenize_contexts` cuts each into contexts of the
index's size (BOS prepended as the run did) and `encode_batch` runs the model to the hook and
the SAE, leaving out BOS and attention-sink tokens by the run's stored rule. So a context of
the index, given as text, gets the activations the index stored for it. Contexts are
right-padded and attention is causal, so a context batched with others gets the same values
it gets alone.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from saedex.api.errors import BadInput, Unavailable
from saedex.api.inference import Encoded, run_config
from saedex.data import SaeInfo
from saedex.errors import SaedexError
from saedex.indexer.corpus import Context, Document, tokenize_contexts
from saedex.indexer.indexing import encode_batch
from saedex.indexer.model import DEFAULT_MODEL, DEFAULT_MODEL_NAME, LoadedModel, load_model
from saedex.indexer.sae import SparseAutoencoder, load_sae
from saedex.provenance import sae_changed
from saedex.store.writer import Batch

log = logging.getLogger("saedex.api.live")


class LiveModels:
    """The models and SAEs of one server, each loaded once on first use and then shared."""

    def __init__(self, device: str | None, dtype: str | None, threads: int | None):
        """`threads` caps torch's intra-op threads (process-wide): on a busy machine more
        threads than free cores make each forward pass many times slower."""
        self.device = device
        self.dtype = dtype
        if threads:
            torch.set_num_threads(threads)
        self._models: dict[str, LoadedModel] = {}
        self._saes: dict[str, SparseAutoencoder] = {}
        self._quantized: dict[tuple, object] = {}  # (model, steer_weights) -> a quantized copy

    def load(self, info: SaeInfo) -> tuple[LoadedModel, SparseAutoencoder]:
        spec = DEFAULT_MODEL if info.model_name == DEFAULT_MODEL_NAME else info.model_name
        if spec not in self._models:
            log.info("loading model %s", spec)
            try:
                self._models[spec] = load_model(spec, self.device, self.dtype, progress=False)
            except SaedexError as exc:
                raise Unavailable(f"cannot load the model of {info.id!r}: {exc}") from exc
        model = self._models[spec]
        if info.sae_path not in self._saes:  # by path: engines may serve several indexes
            log.info("loading SAE %s from %s", info.id, info.sae_path)
            self._saes[info.sae_path] = load_live_sae(info).to(model.device)
        return model, self._saes[info.sae_path]

    def steer_forward(self, model: LoadedModel, hook_name: str, weights: str):
        """What a steering generation runs on: the bridge (float32), or the model's quantized
        copy (built on first use, a few seconds; a hook it cannot map is a BadInput)."""
        from saedex.indexer.quantized import QuantizedModel
        from saedex.indexer.steering import BridgeForward

        if weights == "float32":
            return BridgeForward(model, hook_name)
        key = (model.name, weights)
        try:
            if key not in self._quantized:
                log.info("quantizing %s to %s for steering", model.name, weights)
                self._quantized[key] = QuantizedModel(model, weights)
            return self._quantized[key].forward(hook_name)
        except SaedexError as exc:
            raise BadInput(str(exc)) from exc

    @torch.inference_mode()
    def encode_many(self, info: SaeInfo, texts: list[str]) -> list[Encoded | Exception]:
        """Each text's activations (or the error that text alone gets), from ONE forward over
        all their contexts."""
        model, sae = self.load(info)
        cfg = run_config(info)
        cut: list[list[Context] | Exception] = []
        for text in texts:
            doc = Document(doc_id="query", source="query", text=text)
            contexts = list(
                tokenize_contexts(
                    iter([doc]),
                    model.tokenizer,
                    cfg.context_size,
                    cfg.prepend_bos,
                    model.bos_token_id,
                )
            )
            cut.append(contexts or BadInput("text has no tokens"))
        flat = [c for cs in cut if isinstance(cs, list) for c in cs]
        if not flat:
            return list(cut)  # type: ignore[arg-type]
        batch = Batch(list(range(len(flat))), [c.token_ids for c in flat])
        acts, excluded, _ = encode_batch(model, sae, batch, cfg)
        out: list[Encoded | Exception] = []
        first = 0
        for contexts in cut:
            if isinstance(contexts, Exception):
                out.append(contexts)
                continue
            out.append(_encoded(contexts, first, acts, excluded, 1 if cfg.prepend_bos else 0))
            first += len(contexts)
        return out

    @torch.inference_mode()
    def encode_ids(self, info: SaeInfo, token_ids: list[int]) -> Encoded:
        """Token ids as one context (BOS prepended as the run did, its sink rule applied)."""
        model, sae = self.load(info)
        cfg = run_config(info)
        skip = 1 if cfg.prepend_bos else 0
        ids = [model.bos_token_id, *token_ids] if skip else list(token_ids)
        acts, excluded, _ = encode_batch(model, sae, Batch([0], [ids]), cfg)
        flags = np.zeros(len(token_ids), dtype=bool)
        flags[excluded.column("position").to_numpy().astype(np.int64) - skip] = True
        return Encoded(
            list(token_ids),
            flags,
            acts.column("position").to_numpy().astype(np.int64) - skip,
            acts.column("feature").to_numpy(),
            acts.column("value").to_numpy(),
        )


def load_live_sae(info: SaeInfo) -> SparseAutoencoder:
    """The one place the API loads an SAE for live use (checks belong here)."""
    path = Path(info.sae_path or "")
    if not path.is_dir():
        raise Unavailable(f"the SAE of {info.id!r} is not at {info.sae_path}; cannot run it live")
    changed = sae_changed(path, info.sae_weights_sha256, info.sae_cfg_sha256)
    if changed:  # other weights than the index's: live values would not match it
        raise Unavailable(f"the SAE of {info.id!r} cannot run live: {changed}")
    try:
        return load_sae(path)
    except SaedexError as exc:
        raise Unavailable(f"cannot load the SAE of {info.id!r}: {exc}") from exc


def _encoded(contexts: list[Context], first: int, acts, excluded, skip: int) -> Encoded:
    """One text's rows of a batch whose contexts `first`.. are this text's, in text positions."""
    starts = np.array([c.token_start - skip for c in contexts])
    token_ids = [t for c in contexts for t in c.token_ids[skip:]]
    mine = _rows(acts, first, len(contexts))
    flags = np.zeros(len(token_ids), dtype=bool)
    flags[_flat(starts, _rows(excluded, first, len(contexts)), first)] = True
    return Encoded(
        token_ids,
        flags,
        _flat(starts, mine, first),
        mine.column("feature").to_numpy(),
        mine.column("value").to_numpy(),
    )


def _rows(table, first: int, n: int):
    ctx = table.column("context_id").to_numpy()
    return table.filter(pa.array((ctx >= first) & (ctx < first + n)))


def _flat(starts: np.ndarray, table, first: int) -> np.ndarray:
    """Text-token positions of (context_id, position) rows."""
    ctx = table.column("context_id").to_numpy() - first
    return (starts[ctx] + table.column("position").to_numpy()).astype(np.int64)


# -- the calls the engine makes (by name, in this process or in the model worker) ------------

_WORKER: LiveModels | None = None
_GENERATIONS: dict[int, object] = {}
_IDS = itertools.count()


def init_worker(device: str | None, dtype: str | None, threads: int | None) -> None:
    """In the model worker process: the models it will load on first use."""
    global _WORKER
    _WORKER = LiveModels(device, dtype, threads)


def worker_models() -> LiveModels | None:
    return _WORKER


def in_worker(name: str, args: tuple):
    """Run `name(models, *args)` on the worker process's models."""
    assert _WORKER is not None, "init_worker was not called"
    return globals()[name](_WORKER, *args)


def encode_many(models: LiveModels, info: SaeInfo, texts: list[str]):
    return models.encode_many(info, texts)


def encode_ids(models: LiveModels, info: SaeInfo, token_ids: list[int]):
    return models.encode_ids(info, token_ids)


def steer_start(models: LiveModels, info: SaeInfo, req, max_prompt_tokens: int) -> int:
    """Start a PairGeneration (the prompt checked against its token limit); its id."""
    from saedex.indexer.steering import PairGeneration, prompt_ids

    model, sae = models.load(info)
    cfg = run_config(info)
    try:
        ids = prompt_ids(model, req.prompt, cfg.prepend_bos, req.chat_template)
    except SaedexError as exc:
        raise BadInput(str(exc)) from exc
    if len(ids) > max_prompt_tokens:
        raise BadInput(f"prompt has {len(ids)} tokens; the limit is {max_prompt_tokens}")
    forward = models.steer_forward(model, sae.cfg.hook_name, req.weights)
    key = next(_IDS)
    _GENERATIONS[key] = PairGeneration(model, sae, ids, req, cfg.sink_norm_multiple, forward)
    return key


def steer_step(models: LiveModels, key: int) -> bool:
    return _GENERATIONS[key].step()


def steer_drop(models: LiveModels, key: int) -> None:
    _GENERATIONS.pop(key, None)


def steer_result(models: LiveModels, info: SaeInfo, key: int, max_activations: dict):
    """The Steering record of a finished generation (the shifts came with its steps)."""
    from saedex.steering import Completion, SteeredFeature, Steering, Step

    gen = _GENERATIONS.pop(key)
    model, sae = models.load(info)
    decode = model.tokenizer.decode
    req = gen.req

    def completion(row: int, shifts) -> Completion:
        ids, logprobs = gen.completion(row)
        steps = [
            Step(decode([t]), t, lp, *(shifts[i] if shifts else ([], [])))
            for i, (t, lp) in enumerate(zip(ids, logprobs, strict=True))
        ]
        return Completion(decode(ids, skip_special_tokens=False), steps)

    norms = sae.W_dec.detach().norm(dim=-1)
    features = [
        SteeredFeature(
            e.index, e.strength, e.value, float(norms[e.index]), max_activations.get(e.index)
        )
        for e in req.features
    ]
    return Steering(
        info.id,
        req.mode,
        req.prompt,
        [decode([t]) for t in gen.prompt],
        features,
        completion(0, None),
        completion(1, gen.shifts(req.n_shifts)),
        req.temperature,
        req.seed,
        gen.forward.weights,
    )


def ablation(models: LiveModels, info: SaeInfo, example, feature: int, k: int):
    """The Ablation record of `feature` on one stored example."""
    from saedex.indexer.steering import ablation_effect
    from saedex.steering import Ablation

    model, sae = models.load(info)
    cfg = run_config(info)
    change, raised, lowered = ablation_effect(
        model,
        sae,
        list(example.token_ids),
        feature,
        example.max_token_index,
        cfg.sink_norm_multiple,
        k,
    )
    return Ablation(
        info.id,
        feature,
        example.context_id,
        list(example.tokens),
        list(example.token_ids),
        list(example.activations),
        example.max_token_index,
        change,
        raised,
        lowered,
    )
