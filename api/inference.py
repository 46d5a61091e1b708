"""Live inference: the features an SAE finds on a text, computed the way the index computed them.

The text goes through the indexer's own code: `tokenize_contexts` cuts it into contexts of the
index's size (BOS prepended as the run did) and `encode_batch` runs the model to the hook and the
SAE, leaving out BOS and attention-sink tokens by the run's stored rule. So a context of the
index, given as text, gets the activations the index stored for it.

Models and SAEs load lazily, once, and are shared; requests run one at a time in a worker
thread (an asyncio lock orders them), so the event loop keeps serving index queries meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import numpy as np
import torch

from saedex.api.errors import BadInput, Unavailable
from saedex.config import IndexConfig
from saedex.data import SaeInfo
from saedex.errors import SaedexError
from saedex.indexer.corpus import Document, tokenize_contexts
from saedex.indexer.indexing import encode_batch
from saedex.indexer.model import DEFAULT_MODEL, DEFAULT_MODEL_NAME, LoadedModel, load_model
from saedex.indexer.sae import SparseAutoencoder, load_sae
from saedex.provenance import sae_changed
from saedex.store.writer import Batch

log = logging.getLogger("saedex.api.inference")


@dataclass(frozen=True)
class FeatureValue:
    index: int
    value: float


@dataclass(frozen=True)
class TokenFeatures:
    """One token of the text and its strongest features (none on an excluded token)."""

    position: int
    token: str
    token_id: int
    excluded: bool
    features: list[FeatureValue]


@dataclass(frozen=True)
class ActiveFeature:
    """A feature active somewhere on the text, with its value on every token."""

    index: int
    max_value: float
    max_token_index: int
    values: list[float]


@dataclass(frozen=True)
class ActiveFeatures:
    sae_id: str
    tokens: list[str]
    token_ids: list[int]
    excluded: list[bool]
    positions: list[TokenFeatures]
    features: list[ActiveFeature]


@dataclass(frozen=True)
class _Encoded:
    """The text's tokens and its sparse activations, positions counted in text tokens."""

    token_ids: list[int]
    excluded: np.ndarray
    position: np.ndarray
    feature: np.ndarray
    value: np.ndarray


class InferenceEngine:
    """The models and SAEs of one server, loaded on first use."""

    def __init__(
        self, device: str | None = None, dtype: str | None = None, threads: int | None = None
    ):
        """`threads` caps torch's intra-op threads (process-wide): on a busy machine more
        threads than free cores make each forward pass many times slower."""
        self.device = device
        self.dtype = dtype
        self.threads = threads
        self._models: dict[str, LoadedModel] = {}
        self._saes: dict[str, SparseAutoencoder] = {}
        self._lock = asyncio.Lock()

    async def active_features(
        self, info: SaeInfo, vocab: list[str], text: str, top_k: int
    ) -> ActiveFeatures:
        async with self._lock:
            encoded = await anyio.to_thread.run_sync(self.encode, info, text)
        return summarise(info.id, encoded, vocab, top_k)

    def encode(self, info: SaeInfo, text: str) -> _Encoded:
        """Run the model and the SAE over `text` exactly as the indexer would."""
        model, sae = self._load(info)
        cfg = run_config(info)
        doc = Document(doc_id="query", source="query", text=text)
        contexts = list(
            tokenize_contexts(
                iter([doc]), model.tokenizer, cfg.context_size, cfg.prepend_bos, model.bos_token_id
            )
        )
        if not contexts:
            raise BadInput("text has no tokens")
        skip = 1 if cfg.prepend_bos else 0
        batch = Batch([c.context_id for c in contexts], [c.token_ids for c in contexts])
        acts, excluded, _ = encode_batch(model, sae, batch, cfg)
        starts = np.array([c.token_start - skip for c in contexts])
        token_ids = [t for c in contexts for t in c.token_ids[skip:]]
        flags = np.zeros(len(token_ids), dtype=bool)
        flags[_flat(starts, excluded)] = True
        return _Encoded(
            token_ids,
            flags,
            _flat(starts, acts),
            acts.column("feature").to_numpy(),
            acts.column("value").to_numpy(),
        )

    async def window(self, info: SaeInfo, token_ids: list[int]) -> _Encoded:
        """The SAE on one run of the model over `token_ids` (a joined document window)."""
        async with self._lock:
            return await anyio.to_thread.run_sync(self.encode_ids, info, token_ids)

    def encode_ids(self, info: SaeInfo, token_ids: list[int]) -> _Encoded:
        """Token ids as one context (BOS prepended as the run did, its sink rule applied)."""
        model, sae = self._load(info)
        cfg = run_config(info)
        skip = 1 if cfg.prepend_bos else 0
        ids = [model.bos_token_id, *token_ids] if skip else list(token_ids)
        acts, excluded, _ = encode_batch(model, sae, Batch([0], [ids]), cfg)
        flags = np.zeros(len(token_ids), dtype=bool)
        flags[excluded.column("position").to_numpy().astype(np.int64) - skip] = True
        return _Encoded(
            list(token_ids),
            flags,
            acts.column("position").to_numpy().astype(np.int64) - skip,
            acts.column("feature").to_numpy(),
            acts.column("value").to_numpy(),
        )

    def _load(self, info: SaeInfo) -> tuple[LoadedModel, SparseAutoencoder]:
        spec = DEFAULT_MODEL if info.model_name == DEFAULT_MODEL_NAME else info.model_name
        if spec not in self._models:
            if self.threads:
                torch.set_num_threads(self.threads)
            log.info("loading model %s", spec)
            try:
                self._models[spec] = load_model(spec, self.device, self.dtype)
            except SaedexError as exc:
                raise Unavailable(f"cannot load the model of {info.id!r}: {exc}") from exc
        model = self._models[spec]
        if info.sae_path not in self._saes:  # by path: engines may serve several indexes
            log.info("loading SAE %s from %s", info.id, info.sae_path)
            self._saes[info.sae_path] = _load_sae(info).to(model.device)
        return model, self._saes[info.sae_path]


def run_config(info: SaeInfo) -> IndexConfig:
    """The IndexConfig the run stored (settings this saedex does not know are ignored)."""
    names = {f.name for f in dataclasses.fields(IndexConfig)}
    return IndexConfig(**{k: v for k, v in info.settings.items() if k in names})


def _load_sae(info: SaeInfo) -> SparseAutoencoder:
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


def _flat(starts: np.ndarray, table) -> np.ndarray:
    """Text-token positions of (context_id, position) rows; contexts are numbered from 0."""
    ctx = table.column("context_id").to_numpy()
    return (starts[ctx] + table.column("position").to_numpy()).astype(np.int64)


def summarise(sae_id: str, enc: _Encoded, vocab: list[str], top_k: int) -> ActiveFeatures:
    """Per token its top features; overall, features ranked by their max over the text."""
    tokens = [vocab[t] for t in enc.token_ids]
    order = np.lexsort((-enc.value, enc.position))
    per_token: list[list[FeatureValue]] = [[] for _ in tokens]
    for p, f, v in zip(
        enc.position[order].tolist(),
        enc.feature[order].tolist(),
        enc.value[order].tolist(),
        strict=True,
    ):
        if len(per_token[p]) < top_k:
            per_token[p].append(FeatureValue(f, v))
    positions = [
        TokenFeatures(i, tokens[i], enc.token_ids[i], bool(enc.excluded[i]), per_token[i])
        for i in range(len(tokens))
    ]
    excluded = enc.excluded.tolist()
    return ActiveFeatures(
        sae_id, tokens, enc.token_ids, excluded, positions, _ranked(enc, len(tokens), top_k)
    )


def _ranked(enc: _Encoded, n_tokens: int, top_k: int) -> list[ActiveFeature]:
    """The top_k features by max value (ties: lower index), each with its per-token values."""
    if not len(enc.feature):
        return []
    order = np.lexsort((enc.position, -enc.value, enc.feature))
    features, first = np.unique(enc.feature[order], return_index=True)
    best = order[first]
    ranked = np.lexsort((features, -enc.value[best]))[:top_k]
    out = []
    for feature, row in zip(features[ranked].tolist(), best[ranked].tolist(), strict=True):
        mask = enc.feature == feature
        values = np.zeros(n_tokens, dtype=np.float64)
        values[enc.position[mask]] = enc.value[mask]
        out.append(
            ActiveFeature(feature, float(enc.value[row]), int(enc.position[row]), values.tolist())
        )
    return out
