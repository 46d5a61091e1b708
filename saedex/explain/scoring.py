"""`saedex score`: how well an explanation predicts where its feature fires (delphi's scorers).

- detection: the scorer model reads the explanation and one text, and says whether the
  feature fires in it. Texts: the feature's held-out activating examples (positives) and
  contexts where it is zero (negatives).
- fuzzing: the scorer reads the explanation and a text with some tokens marked, and says
  whether the marks are on the tokens the feature fires on. Positives: held-out activating
  examples with their active tokens marked; negatives: non-activating contexts with the marks
  of a random activating example copied onto the same positions (delphi's default fuzzing).

Each reports balanced accuracy (the mean of the true-positive and true-negative rates, 0.5 is
chance), with precision, recall, F1 and, from the yes-probabilities, ROC AUC. delphi shows 5
examples per prompt; here each prompt holds one (a yes/no read from the next-token
probabilities), which small local models answer far more reliably than a list of verdicts.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import asdict, dataclass

from saedex.config import ScoreConfig
from saedex.data import Explanation
from saedex.errors import SaedexError
from saedex.explain import prompts
from saedex.explain.models import LanguageModel
from saedex.progress import progress_bar
from saedex.store.reader import IndexReader

SCORERS = ("detection", "fuzzing")


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def balanced_accuracy(self) -> float:
        """Mean of the true-positive and true-negative rates (of those defined)."""
        rates = [r for r in (self.recall, self.specificity) if not math.isnan(r)]
        return sum(rates) / len(rates) if rates else math.nan

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn)


def confusion(labels: list[bool], predicted: list[bool]) -> Confusion:
    pairs = list(zip(labels, predicted, strict=True))
    return Confusion(
        tp=sum(a and p for a, p in pairs),
        fp=sum(not a and p for a, p in pairs),
        tn=sum(not a and not p for a, p in pairs),
        fn=sum(a and not p for a, p in pairs),
    )


def roc_auc(labels: list[bool], scores: list[float]) -> float:
    """P(a random positive scores above a random negative), ties counting half."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return math.nan
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


# -- one feature -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    """A feature's scoring texts: held-out activating windows and non-activating ones."""

    activating: list[prompts.Window]
    inactive: list[prompts.Window]


def held_out(reader: IndexReader, sae_id: str, feature: int, cfg: ScoreConfig) -> HeldOut:
    top = reader.top_examples(sae_id, [feature])[feature]
    intervals = reader.interval_samples(sae_id, [feature])[feature]
    _, scorer = prompts.split_examples(top, [s.examples for s in intervals])
    activating = [prompts.window(e, cfg.window_before, cfg.window_after) for e in scorer]
    rng = random.Random(cfg.seed * 1_000_003 + feature)
    inactive = []
    for example in reader.inactive_examples(sae_id, feature, cfg.n_inactive, cfg.seed):
        peak = rng.randrange(len(example.tokens))
        inactive.append(prompts.window(_at(example, peak), cfg.window_before, cfg.window_after))
    return HeldOut(activating[: cfg.n_activating], inactive)


def _at(example, peak: int):
    from dataclasses import replace

    return replace(example, max_token_index=peak)


def score_texts(
    model: LanguageModel, explanation: str, data: HeldOut, cfg: ScoreConfig, seed: int
) -> dict[str, dict]:
    """Both scorers on one explanation: {scorer: {balanced_accuracy, ..., confusion}}."""
    rng = random.Random(seed)
    detection = [(prompts.detection_prompt(explanation, w), True) for w in data.activating]
    detection += [(prompts.detection_prompt(explanation, w), False) for w in data.inactive]
    active_flags = [[a > 0 for a in w.activations] for w in data.activating]
    fuzzing = [
        (prompts.fuzzing_prompt(explanation, w, flags), True)
        for w, flags in zip(data.activating, active_flags, strict=True)
    ]
    if active_flags:
        for w in data.inactive:
            flags = _fit(rng.choice(active_flags), len(w.tokens))
            fuzzing.append((prompts.fuzzing_prompt(explanation, w, flags), False))
    out = {}
    for name, items in (("detection", detection), ("fuzzing", fuzzing)):
        probs = _yes(model, [m for m, _ in items], cfg.batch_size)
        labels = [y for _, y in items]
        matrix = confusion(labels, [p > 0.5 for p in probs])
        out[name] = {
            "balanced_accuracy": matrix.balanced_accuracy,
            "precision": matrix.precision,
            "recall": matrix.recall,
            "f1": matrix.f1,
            "roc_auc": roc_auc(labels, probs),
            "confusion": asdict(matrix),
        }
    return out


def _fit(flags: list[bool], n: int) -> list[bool]:
    return (flags + [False] * n)[:n]


def _yes(model: LanguageModel, messages: list, batch_size: int) -> list[float]:
    out: list[float] = []
    for start in range(0, len(messages), batch_size):
        out += model.yes_probability(messages[start : start + batch_size])
    return out


# -- many features ---------------------------------------------------------------------------


def score(
    reader: IndexReader,
    sae_id: str,
    model: LanguageModel,
    features: list[int],
    cfg: ScoreConfig | None = None,
    which: str = "latest",
    baseline: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Score the features' current explanations ("latest": the newest of each, "all": every
    one) and, with `baseline`, the trivial top-tokens explanation; store each explanation's
    balanced accuracies under "detection" and "fuzzing". One row per (feature, explanation)."""
    cfg = cfg or ScoreConfig()
    if which not in ("latest", "all"):
        raise SaedexError(f"--which must be latest or all, got {which!r}")
    store = reader.edits(create=True)
    explanations = reader.explanations(sae_id, features)
    rows: list[dict] = []
    with progress_bar("features", progress) as bar:
        task = bar.add_task(f"score ({model.name})", total=len(features))
        for feature in features:
            started = time.perf_counter()
            data = held_out(reader, sae_id, feature, cfg)
            if not data.activating or not data.inactive:
                bar.advance(task)
                continue
            for kind, explanation in _to_score(
                reader, sae_id, feature, explanations, which, baseline
            ):
                text = explanation.text if isinstance(explanation, Explanation) else explanation
                result = score_texts(model, text, data, cfg, cfg.seed + feature)
                if isinstance(explanation, Explanation):
                    store.set_scores(
                        explanation.id, {n: result[n]["balanced_accuracy"] for n in SCORERS}
                    )
                rows.append(_row(feature, kind, explanation, text, result, data))
            seconds = time.perf_counter() - started
            for row in rows:
                if row["feature"] == feature:
                    row["feature_seconds"] = seconds
            bar.advance(task)
    return rows


def _to_score(reader, sae_id, feature, explanations, which, baseline):
    current = [e for e in explanations.get(feature, []) if e.current]
    if which == "latest":
        current = sorted(current, key=lambda e: e.updated_at or e.created_at, reverse=True)[:1]
    pairs = [(e.source, e) for e in current]
    if baseline:
        pairs.append(("baseline", baseline_for(reader, sae_id, feature)))
    return pairs


def baseline_for(reader: IndexReader, sae_id: str, feature: int) -> str:
    top = reader.top_examples(sae_id, [feature])[feature]
    peaks = [e.tokens[e.max_token_index] for e in top]
    counts = {t: peaks.count(t) for t in peaks}
    ordered = sorted(counts, key=lambda t: -counts[t])
    logits = reader.logits(sae_id, [feature], "top", 3)[feature]
    return prompts.baseline_explanation(logits, ordered)


def _row(feature, kind, explanation, text, result, data) -> dict:
    return {
        "feature": feature,
        "kind": kind,
        "explanation_id": explanation.id if isinstance(explanation, Explanation) else None,
        "text": text,
        "n_activating": len(data.activating),
        "n_inactive": len(data.inactive),
        **{f"{n}": result[n]["balanced_accuracy"] for n in SCORERS},
        **{f"{n}_auc": result[n]["roc_auc"] for n in SCORERS},
        "details": result,
    }


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per kind of explanation: how many, mean and median of each scorer, seconds a feature."""
    out = {}
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        stats = {"n": len(mine)}
        for name in (*SCORERS, *(f"{n}_auc" for n in SCORERS)):
            values = [r[name] for r in mine if not math.isnan(r[name])]
            stats[f"{name}_mean"] = statistics.fmean(values) if values else math.nan
            stats[f"{name}_median"] = statistics.median(values) if values else math.nan
        out[kind] = stats
    seconds = {r["feature"]: r.get("feature_seconds", math.nan) for r in rows}
    if seconds:
        out["seconds_per_feature"] = {"mean": statistics.fmean(seconds.values())}
    return out


def histogram_svg(rows: list[dict], bins: int = 10, width: int = 520, height: int = 220) -> str:
    """Balanced accuracy histograms, one colour per scorer, 0..1 in `bins` bins (plain SVG)."""
    colours = {"detection": "#3f51b5", "fuzzing": "#ef6c00"}
    counts = {n: [0] * bins for n in SCORERS}
    for row in rows:
        if row["kind"] == "baseline":
            continue
        for name in SCORERS:
            value = row[name]
            if not math.isnan(value):
                counts[name][min(bins - 1, int(value * bins))] += 1
    top = max((c for cs in counts.values() for c in cs), default=0) or 1
    left, bottom, plot_w, plot_h = 40, height - 30, width - 60, height - 60
    bar_w = plot_w / bins / len(SCORERS)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="16">Explanation scores (balanced accuracy; 0.5 = chance)</text>',
        f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#444"/>',
    ]
    for b in range(bins + 1):
        x = left + b * plot_w / bins
        parts.append(
            f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{b / bins:.1f}</text>'
        )
    for s, name in enumerate(SCORERS):
        for b, count in enumerate(counts[name]):
            h = plot_h * count / top
            x = left + b * plot_w / bins + s * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{bottom - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                f'fill="{colours[name]}"><title>{name} {b / bins:.1f}-{(b + 1) / bins:.1f}: '
                f"{count}</title></rect>"
            )
        parts.append(
            f'<rect x="{left + plot_w - 110}" y="{24 + 14 * s}" width="10" height="10" '
            f'fill="{colours[name]}"/><text x="{left + plot_w - 95}" y="{33 + 14 * s}">{name}</text>'
        )
    parts.append(f'<text x="{left - 6}" y="{bottom - plot_h + 4}" text-anchor="end">{top}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
