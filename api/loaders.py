"""Per-request DataLoaders over the reader's batched methods: one query per field per request.

A key is (sae_id, feature index, *extra arguments); keys that share the SAE and the extra
arguments (e.g. `first`) go to the reader in one call, run in a worker thread so DuckDB never
blocks the event loop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import anyio.to_thread
from strawberry.dataloader import DataLoader

from saedex.data import (
    Example,
    Explanation,
    FeatureFamily,
    FeatureSummary,
    Histogram,
    IntervalSample,
    LogitEntry,
    MatchedFeature,
    Neighbour,
)
from saedex.store import IndexReader

Key = tuple[Hashable, ...]
Fetch = Callable[..., dict[int, Any]]


def batch_fn(fetch: Fetch) -> Callable[[Sequence[Key]], Awaitable[list[Any]]]:
    """Turn `fetch(sae_id, indices, *extra) -> {index: value}` into a DataLoader batch function."""

    def fetch_groups(groups: dict[Key, list[int]]) -> dict[Key, dict[int, Any]]:
        return {group: fetch(group[0], indices, *group[1:]) for group, indices in groups.items()}

    async def load(keys: Sequence[Key]) -> list[Any]:
        groups: dict[Key, list[int]] = defaultdict(list)
        for sae_id, index, *extra in keys:
            groups[(sae_id, *extra)].append(index)
        found = await anyio.to_thread.run_sync(fetch_groups, groups)
        return [found[(key[0], *key[2:])].get(key[1]) for key in keys]

    return load


def loader(fetch: Fetch) -> DataLoader[Key, Any]:
    return DataLoader(batch_fn(fetch))


class Loaders:
    """The DataLoaders of one request (their caches must not outlive it)."""

    def __init__(self, reader: IndexReader):
        self.summary: DataLoader[Key, FeatureSummary | None] = loader(reader.summaries)
        self.logits: DataLoader[Key, list[LogitEntry]] = loader(_first(_by_kind(reader)))
        self.histograms: DataLoader[Key, tuple[Histogram, Histogram] | None] = loader(
            reader.histograms
        )
        self.top_examples: DataLoader[Key, list[Example]] = loader(_first(reader.top_examples))
        self.intervals: DataLoader[Key, list[IntervalSample]] = loader(reader.interval_samples)
        self.neighbours: DataLoader[Key, list[Neighbour]] = loader(_first(reader.neighbours))
        self.explanations: DataLoader[Key, list[Explanation]] = loader(reader.explanations)
        # (sae_id, index, "decoder" | "encoder"): rows of the SAE weights file (saedex.weights)
        self.vectors: DataLoader[Key, list[float]] = loader(reader.vectors)
        # feature splitting (issue 17): (sae_id, index, other_sae, first) and (sae_id, index)
        self.matches: DataLoader[Key, list[MatchedFeature]] = loader(_first(reader.matches))
        self.families: DataLoader[Key, FeatureFamily] = loader(reader.families)

    def prime(self, summaries: Sequence[FeatureSummary]) -> None:
        """Seed the caches with summaries a listing already fetched."""
        for summary in summaries:
            self.summary.prime((summary.sae_id, summary.index), summary)


def _by_kind(reader: IndexReader) -> Fetch:
    """reader.logits with the kind as an extra key part: (sae_id, index, kind, first)."""

    def fetch(sae_id: str, indices: list[int], kind: str, first: int | None) -> dict[int, Any]:
        return reader.logits(sae_id, indices, kind, first)

    return fetch


def _first(fetch: Fetch) -> Fetch:
    """A fetch whose last argument is `first`: 0 means none (the reader reads 0 as all)."""

    def fetch_first(sae_id: str, indices: list[int], *extra: Any) -> dict[int, Any]:
        if extra[-1] == 0:
            return {i: [] for i in indices}
        return fetch(sae_id, indices, *extra)

    return fetch_first
