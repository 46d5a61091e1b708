"""Live inference: the features an SAE finds on a text, and the scheduler that shares the model.

This module is torch-free: its records and the request path import nothing heavy, and the model
side (`api.live`) is imported on the first live request. So `serve --no-inference` and the site
exporter never load torch or transformers. A server runs the model side in a worker process
(`ServeConfig.inference_process`): a forward pass through TransformerLens is thousands of small
Python-level ops, and in the server's process each one waits for the GIL that the event loop
holds while it serves index queries, which made live requests many times slower under load.

Concurrent `activeFeatures` requests are batched dynamically: a request joins a queue; one
drainer takes what has queued (waiting `batch_window_ms` when it finds the queue had only one,
so that near-simultaneous requests meet), up to `batch_max_contexts` contexts of one SAE, and
runs ONE forward for all of them in a worker thread. While that forward runs, the next batch
queues. Every model call (a batch, or one step of a steering generation) holds `model_lock`,
which is FIFO-fair, so a long generation cannot starve activeFeatures: a waiting batch runs
between two of its steps. Index queries never take the lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
import numpy as np

from saedex.api.errors import Unavailable
from saedex.config import IndexConfig, ServeConfig
from saedex.data import ActiveFeature, ActiveFeatures, FeatureValue, SaeInfo, TokenFeatures

if TYPE_CHECKING:
    from saedex.api.live import LiveModels

log = logging.getLogger("saedex.api.inference")
T = TypeVar("T")


@dataclass(frozen=True)
class Encoded:
    """A text's tokens and its sparse activations, positions counted in text tokens."""

    token_ids: list[int]
    excluded: np.ndarray
    position: np.ndarray
    feature: np.ndarray
    value: np.ndarray


@dataclass
class _Job:
    info: SaeInfo
    text: str
    n_contexts: int
    future: asyncio.Future


class InferenceEngine:
    """The live models of one server, loaded on first use, and the queue in front of them."""

    def __init__(
        self,
        device: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        config: ServeConfig | None = None,
        process: bool = False,
    ):
        """`process`: run the models in a worker process (what a server does) instead of a
        worker thread of this one (notebooks, tests)."""
        config = config or ServeConfig()
        self.device = device
        self.dtype = dtype
        self.threads = threads
        self.window_s = config.batch_window_ms / 1000
        self.max_contexts = config.batch_max_contexts
        self.process = process
        self._pool: ProcessPoolExecutor | None = None
        self._models: LiveModels | None = None
        self._jobs: list[_Job] = []
        self._drainer: asyncio.Task | None = None
        self.model_lock = asyncio.Lock()
        self.batch_sizes: list[int] = []  # texts per forward, for tests and benchmarks

    @property
    def models(self) -> LiveModels:
        """The model side, imported and built on first use (this is where torch loads)."""
        if self._models is None:
            from saedex.api.live import LiveModels

            self._models = LiveModels(self.device, self.dtype, self.threads)
        return self._models

    async def active_features(
        self, info: SaeInfo, vocab: list[str], text: str, top_k: int
    ) -> ActiveFeatures:
        encoded = await self.encode(info, text)
        return summarise(info.id, encoded, vocab, top_k)

    async def encode(self, info: SaeInfo, text: str) -> Encoded:
        """The text's activations, computed in a batch with whatever else is queued."""
        future = asyncio.get_running_loop().create_future()
        n_contexts = _contexts_estimate(info, text)
        self._jobs.append(_Job(info, text, n_contexts, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def window(self, info: SaeInfo, token_ids: list[int]) -> Encoded:
        """The SAE on one run of the model over `token_ids` (a joined document window)."""
        return await self.run_model("encode_ids", info, token_ids)

    async def run_model(self, name: str, *args: Any) -> Any:
        """`api.live.<name>(models, *args)`, in turn with every other model call."""
        async with self.model_lock:
            if not self.process:
                from saedex.api import live

                return await anyio.to_thread.run_sync(getattr(live, name), self.models, *args)
            try:
                return await asyncio.wrap_future(self._worker().submit(_in_worker, name, args))
            except BrokenProcessPool as exc:
                self._pool = None
                raise Unavailable(
                    "the live model process died; the next request restarts it"
                ) from exc

    def start(self) -> None:
        """Start the model worker process now (torch loads in it on the first live request):
        a server does this before lowering its own priority (api.priority), so that the worker
        keeps the priority the server started with."""
        if self.process:
            self._worker().submit(_started).result()

    def _worker(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.device, self.dtype, self.threads),
            )
        return self._pool

    def close(self) -> None:
        """Stop the model worker process, if one was started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def steer(self, info: SaeInfo, req, max_prompt_tokens: int, max_activations: dict):
        """Default and steered completions; each generated token is its own model call, so
        activeFeatures batches queued meanwhile run between steps instead of waiting."""
        key = await self.run_model("steer_start", info, req, max_prompt_tokens)
        try:
            while await self.run_model("steer_step", key):
                pass
            return await self.run_model("steer_result", info, key, max_activations)
        finally:
            await self.run_model("steer_drop", key)

    async def ablation(self, info: SaeInfo, example, feature: int, k: int):
        """A feature ablated on one of its stored examples (see saedex.steering.Ablation)."""
        return await self.run_model("ablation", info, example, feature, k)

    async def _drain(self) -> None:
        while self._jobs:
            if len(self._jobs) == 1 and self.window_s > 0:
                await asyncio.sleep(self.window_s)
            jobs = self._take()
            texts = [j.text for j in jobs]
            try:
                results = await self.run_model("encode_many", jobs[0].info, texts)
            except Exception as exc:  # noqa: BLE001 (a load error fails every job of the batch)
                results = [exc] * len(jobs)
            self.batch_sizes.append(len(jobs))
            for job, result in zip(jobs, results, strict=True):
                if job.future.done():  # the client went away
                    continue
                if isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _take(self) -> list[_Job]:
        """The oldest job and the queued jobs of its SAE that fit the batch bound."""
        first = self._jobs[0]
        taken, budget = [], self.max_contexts
        for job in self._jobs:
            if job.info.sae_path != first.info.sae_path:
                continue
            if taken and job.n_contexts > budget:
                break
            taken.append(job)
            budget -= job.n_contexts
        self._jobs = [j for j in self._jobs if j not in taken]
        return taken


_WORKER_ARGS: tuple | None = None  # in the worker process: what its models load with


def _init_worker(device: str | None, dtype: str | None, threads: int | None) -> None:
    """Remember the settings; torch is imported on the first model call, not at start."""
    global _WORKER_ARGS
    _WORKER_ARGS = (device, dtype, threads)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()


def _exit_with(parent: int) -> None:
    """End this worker when the server that started it is gone: a server stopped by a signal
    (uvicorn re-raises SIGTERM once it has shut down) never runs its cleanup, and the worker
    would otherwise keep its model in memory."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def _started() -> int:
    return os.getpid()


def _in_worker(name: str, args: tuple) -> Any:
    from saedex.api import live

    if live.worker_models() is None:
        live.init_worker(*(_WORKER_ARGS or (None, None, None)))
    return live.in_worker(name, args)


def _contexts_estimate(info: SaeInfo, text: str) -> int:
    """The contexts a text will likely tokenise into (about four bytes a token), to bound a
    batch before tokenising it in the worker thread."""
    per = max(1, info.context_size - (1 if info.prepend_bos else 0))
    return max(1, -(-len(text.encode()) // (4 * per)))


def run_config(info: SaeInfo) -> IndexConfig:
    """The IndexConfig the run stored (settings this saedex does not know are ignored)."""
    names = {f.name for f in dataclasses.fields(IndexConfig)}
    return IndexConfig(**{k: v for k, v in info.settings.items() if k in names})


def summarise(sae_id: str, enc: Encoded, vocab: list[str], top_k: int) -> ActiveFeatures:
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
        sae_id, tokens, enc.token_ids, excluded, positions, _ranked(sae_id, enc, len(tokens), top_k)
    )


def _ranked(sae_id: str, enc: Encoded, n_tokens: int, top_k: int) -> list[ActiveFeature]:
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
            ActiveFeature(
                sae_id, feature, float(enc.value[row]), int(enc.position[row]), values.tolist()
            )
        )
    return out
