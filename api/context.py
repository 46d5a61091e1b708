"""What resolvers and REST handlers see: the server's state, and per request its DataLoaders."""

from __future__ import annotations

from dataclasses import dataclass, field

from saedex.api.auth import load_api_key
from saedex.api.errors import NotFound
from saedex.api.inference import InferenceEngine
from saedex.api.loaders import Loaders
from saedex.config import ServeConfig
from saedex.data import SaeInfo
from saedex.store import IndexReader


@dataclass
class ApiState:
    """Shared by every request; built once by create_app. The contexts examples show are
    cached up front. Each query runs on one DuckDB thread: requests, not queries, are what run
    in parallel."""

    reader: IndexReader
    config: ServeConfig
    inference: InferenceEngine | None = None
    api_key: str | None = field(default=None, repr=False)  # for edits; None: editing is off

    @property
    def saes(self) -> dict[str, SaeInfo]:
        """The complete runs, as the reader sees them now (runs indexed while the server
        runs appear without a restart; the reader caches the rows until the catalog changes)."""
        return self.reader.sae_map()

    @classmethod
    def load(
        cls, reader: IndexReader, config: ServeConfig, inference: InferenceEngine | None
    ) -> ApiState:
        reader.set_threads(1)
        for sae_id in reader.sae_map():
            reader.warm_contexts(sae_id)
        return cls(reader, config, inference, load_api_key(config))

    def sae(self, sae_id: str) -> SaeInfo:
        info = self.saes.get(sae_id)
        if info is None:
            known = ", ".join(self.saes) or "none"
            raise NotFound(f"unknown SAE {sae_id!r} (this index has: {known})")
        return info

    def vocab(self, sae_id: str) -> list[str]:
        return self.reader.vocab(self.sae(sae_id).model_name)


@dataclass
class Context:
    """One request's context: its loaders' caches die with it."""

    state: ApiState
    loaders: Loaders
    authorization: str | None = field(default=None, repr=False)  # the request's header

    @classmethod
    def new(cls, state: ApiState, authorization: str | None = None) -> Context:
        return cls(state, Loaders(state.reader), authorization)
