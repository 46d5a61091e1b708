"""`saedex explain`: ask a language model for a short explanation of each feature.

Each feature's prompt holds its explainer examples (see saedex.explain.prompts for which ones)
as windows around their peaks with delphi's marks and 0-10 values, and its top logit-lens
tokens; examples are dropped from the end until the prompt fits the model's context with room
for the answer. Features are explained in batches, each batch stored as soon as it is done, so
an interrupted run resumes where it stopped: a feature that already has an explanation by this
model and method is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from saedex.config import ExplainConfig
from saedex.errors import SaedexError
from saedex.explain import prompts
from saedex.explain.models import LanguageModel
from saedex.progress import progress_bar
from saedex.store.edits import NewExplanation
from saedex.store.reader import IndexReader

METHOD = "saedex-explainer-v1"


@dataclass(frozen=True)
class ExplainResult:
    explained: int
    skipped: int  # already explained by this model and method (resume), or dead
    failed: int  # the model gave no usable text
    seconds: float

    @property
    def per_minute(self) -> float:
        return 60 * self.explained / self.seconds if self.seconds > 0 else 0.0


def parse_features(spec: str | None, d_sae: int) -> list[int] | None:
    """ "3,10-12" -> [3, 10, 11, 12]; None means every feature."""
    if not spec:
        return None
    out: list[int] = []
    for part in spec.split(","):
        try:
            low, _, high = part.strip().partition("-")
            first, last = int(low), int(high or low)
        except ValueError:
            raise SaedexError(
                f"bad --features {spec!r}: use indices and ranges like 3,10-12"
            ) from None
        if not 0 <= first <= last < d_sae:
            raise SaedexError(f"--features {part.strip()!r} is outside 0..{d_sae - 1}")
        out.extend(range(first, last + 1))
    return list(dict.fromkeys(out))


def live_features(reader: IndexReader, sae_id: str, wanted: list[int] | None) -> list[int]:
    """The wanted features (default: all) that fired at least once, in index order."""
    info = reader.sae(sae_id)
    candidates = wanted if wanted is not None else list(range(info.d_sae))
    summaries = {}
    for start in range(0, len(candidates), 4096):
        summaries.update(reader.summaries(sae_id, candidates[start : start + 4096]))
    return [f for f in candidates if f in summaries and summaries[f].n_active > 0]


def build_prompt(reader, sae_id: str, feature: int, model: LanguageModel, cfg: ExplainConfig):
    """The feature's explainer prompt, shortened until it fits the model's context."""
    top = reader.top_examples(sae_id, [feature])[feature]
    intervals = reader.interval_samples(sae_id, [feature])[feature]
    chosen, _ = prompts.split_examples(top, [s.examples for s in intervals])
    windows = [prompts.window(e, cfg.window_before, cfg.window_after) for e in chosen]
    windows = windows[: cfg.n_examples]
    logits = reader.logits(sae_id, [feature], "top", cfg.n_logits)[feature]
    budget = model.context_length - cfg.max_new_tokens
    messages = prompts.explainer_prompt(windows, logits)
    while len(windows) > 1 and model.count_tokens(messages) > budget:
        windows = windows[:-1]
        messages = prompts.explainer_prompt(windows, logits)
    if model.count_tokens(messages) > budget:
        raise SaedexError(
            f"feature {feature}: even one example does not fit {model.name}'s context"
        )
    return messages


def explain(
    reader: IndexReader,
    sae_id: str,
    model: LanguageModel,
    features: list[int] | None = None,
    cfg: ExplainConfig | None = None,
    progress: bool = True,
    on_batch: Callable[[list[tuple[int, str]]], None] | None = None,
) -> ExplainResult:
    """Explain the features (default: every live one), storing each batch as it completes."""
    cfg = cfg or ExplainConfig()
    if reader.sae(sae_id) is None:
        raise SaedexError(f"unknown SAE {sae_id!r}")
    store = reader.edits(create=True)
    fingerprint = reader.fingerprint(sae_id)
    live = live_features(reader, sae_id, features)
    done = _already_explained(store, sae_id, live, model.name, fingerprint)
    todo = [f for f in live if f not in done]
    if cfg.limit is not None:
        todo = todo[: cfg.limit]
    skipped = (len(features) if features is not None else reader.sae(sae_id).d_sae) - len(todo)
    started, explained, failed = time.perf_counter(), 0, 0
    with progress_bar("features", progress) as bar:
        task = bar.add_task(f"explain ({model.name})", total=len(todo))
        for start in range(0, len(todo), cfg.batch_size):
            if cfg.time_budget_s and time.perf_counter() - started > cfg.time_budget_s:
                break
            batch = todo[start : start + cfg.batch_size]
            messages = [build_prompt(reader, sae_id, f, model, cfg) for f in batch]
            texts = [
                prompts.clean_explanation(t) for t in model.generate(messages, cfg.max_new_tokens)
            ]
            rows = [
                NewExplanation(f, t, "model", model.name, METHOD)
                for f, t in zip(batch, texts, strict=True)
                if t
            ]
            store.add_many(sae_id, rows, fingerprint)
            explained += len(rows)
            failed += len(batch) - len(rows)
            if on_batch:
                on_batch([(r.feature, r.text) for r in rows])
            bar.advance(task, len(batch))
    return ExplainResult(explained, skipped, failed, time.perf_counter() - started)


def _already_explained(store, sae_id, features, author, fingerprint) -> set[int]:
    found = store.for_features(sae_id, features, fingerprint)
    return {
        f for f, es in found.items()
        if any(e.author == author and e.method == METHOD and e.current for e in es)
    }  # fmt: skip
