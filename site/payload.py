"""A feature's dashboard as compact data: what the one renderer (assets/dashboard.js) draws.

The site writes these per block of features into each block page, and `render.feature_html`
inlines one into a notebook cell; both come from the same shape, built here either from the
store's raw rows (the exporter: sparse, by context reference) or from a `FeatureData` (anything
that already holds one). Strings stay raw in the data: the renderer only ever sets them as text.

One feature, keys kept short (65k features a site):
    i index, n active tokens, d density, mx max, mu mean, sk skew, ku kurtosis,
    h / lh  activation and logit-lens histograms as [edges, counts],
    tl / bl top and bottom logit-lens tokens as [[token id, value]],
    nb      neighbours as [[index, cosine]],
    ca      co-activating features as [[index, jaccard, lift, count]] (saedex.store.coactivation),
    ex      top examples as [[context ref, max position, max value, [positions], [values]]],
    iv      intervals as [[low, high, fraction, [examples as in ex]]],
    xp      explanations as [[text, source, author, method, {score name: value}]],
    mt      features of other SAEs in the site as [[SAE key, index, relation, score]].
Document windows (SiteConfig.document_window) live apart from the page, in one file per block
loaded when a reader opens one (`window_entry`): per top example
    [start, indexed tokens, document tokens, [[context ref, first, end, [positions], [values]]]],
the contexts it spans in document order, positions [first, end) of each; the example's own
context has no positions and values (the example's own are used).
A context ref points into the page's `contexts` ([[context id, document, source, [token ids]]])
or, on the site, into the SAE's context shards; token ids into the page's or the model's vocab.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from saedex.data import Example, Explanation, FeatureData

if TYPE_CHECKING:
    from saedex.store.site_windows import ExampleWindow


def r3(value: float | None) -> float | None:
    """Three significant digits: what the dashboard shows, and far fewer bytes."""
    return None if value is None else float(f"{value:.3g}")


def r4(values: Sequence[float]) -> list[float]:
    return [float(f"{v:.4g}") for v in values]


def _pairs(rows: Sequence[tuple], digits: int = 3) -> list[list]:
    return [[a, float(f"{b:.{digits}g}")] for a, b in rows]


def base_payload(row: tuple) -> dict:
    """The statistics and histograms of a `SiteReader.feature_rows` row."""
    index, n, density, mx, mean, skew, kurt, edges, counts, l_edges, l_counts = row
    return {
        "i": index,
        "n": n,
        "d": float(f"{density:.4g}"),
        "mx": r3(mx),
        "mu": r3(mean),
        "sk": r3(skew),
        "ku": r3(kurt),
        "h": [r4(edges), list(counts)],
        "lh": [r4(l_edges), list(l_counts)],
    }


def example_entry(ref: int, max_pos: int, max_act: float, positions, values) -> list:
    return [ref, max_pos, r3(max_act), list(positions), [r3(v) for v in values]]


def window_entry(window: ExampleWindow, ref: Callable[[int], int]) -> list:
    """One top example's document window (saedex.store.site_windows.ExampleWindow)."""
    segments = [
        [ref(s.context_id), s.first, s.end]
        + ([] if s.positions is None else [s.positions, [r3(v) for v in s.values or ()]])
        for s in window.segments
    ]
    return [window.start, window.indexed_tokens, window.document_tokens, segments]


def coactivation_entry(index: int, jaccard: float, lift: float, count: int) -> list:
    return [index, r3(jaccard), r3(lift), count]


def explanation_entry(x: Explanation) -> list:
    return [x.text, x.source, x.author, x.method, {k: r3(v) for k, v in x.scores.items()}]


def from_rows(
    row: tuple,
    logits: dict,
    neighbours: Sequence[tuple],
    examples: dict,
    intervals: Sequence[tuple],
    ref: Callable[[int], int],
    explanations: Sequence[Explanation] = (),
    coactivations: Sequence[tuple] = (),
) -> dict:
    """One feature from the site reader's rows; `ref` maps a context id to its reference."""
    index = row[0]

    def entries(key) -> list[list]:
        return [example_entry(ref(c), *rest) for c, *rest in examples.get(key, ())]

    out = base_payload(row)
    out["tl"] = _pairs(logits.get((index, "top"), ()), 4)
    out["bl"] = _pairs(logits.get((index, "bottom"), ()), 4)
    out["nb"] = _pairs(neighbours)
    out["ex"] = entries((index, "top", None))
    out["iv"] = [
        [r3(low), r3(high), float(f"{fraction:.3g}"), entries((index, "interval", k))]
        for k, low, high, fraction in intervals
    ]
    out["xp"] = [explanation_entry(x) for x in explanations]
    out["mt"] = []
    out["ca"] = [coactivation_entry(*c) for c in coactivations]
    return out


def match_entries(rows: Sequence[tuple], keys: dict[str, str]) -> list[list]:
    """`mt`: a feature's parents and children in the site's other SAEs (issue 17), from
    `SiteReader.family_rows`; `keys` maps the site's SAE ids to their folders."""
    return [[keys[sae], i, rel, r3(corr)] for sae, i, rel, corr in rows if sae in keys]


def from_feature(data: FeatureData) -> tuple[dict, list[list], dict[int, str]]:
    """(feature, contexts, vocab) for one `FeatureData`: its contexts and the token strings they
    and its logit tables use, inlined (no shards, no model vocabulary to load)."""
    contexts: list[list] = []
    refs: dict[int, int] = {}
    vocab: dict[int, str] = {}

    def entry(ex: Example) -> list:
        if ex.context_id not in refs:
            refs[ex.context_id] = len(contexts)
            contexts.append([ex.context_id, ex.document_id, ex.source, list(ex.token_ids)])
            vocab.update(zip(ex.token_ids, ex.tokens, strict=True))
        active = [(p, v) for p, v in enumerate(ex.activations) if v > 0]
        positions, values = zip(*active, strict=True) if active else ((), ())
        return example_entry(
            refs[ex.context_id], ex.max_token_index, ex.max_activation, positions, values
        )

    s = data.summary
    for entry_ in (*s.top_logits, *data.bottom_logits):
        vocab[entry_.token_id] = entry_.token
    feature = base_payload(
        (
            s.index,
            s.n_active,
            s.density,
            s.max_activation,
            s.mean_activation,
            s.skew,
            s.kurtosis,
            data.histogram.bin_edges,
            data.histogram.counts,
            data.logit_histogram.bin_edges,
            data.logit_histogram.counts,
        )
    )
    feature["tl"] = _pairs([(e.token_id, e.value) for e in s.top_logits], 4)
    feature["bl"] = _pairs([(e.token_id, e.value) for e in data.bottom_logits], 4)
    feature["nb"] = _pairs([(n.index, n.cosine) for n in data.neighbours])
    feature["ex"] = [entry(ex) for ex in data.top_examples]
    feature["iv"] = [
        [r3(i.low), r3(i.high), float(f"{i.fraction:.3g}"), [entry(ex) for ex in i.examples]]
        for i in data.interval_samples
    ]
    feature["xp"] = [explanation_entry(x) for x in data.explanations]
    feature["mt"] = []
    feature["ca"] = [
        coactivation_entry(c.index, c.jaccard, c.lift, c.count) for c in data.coactivations
    ]
    return feature, contexts, vocab
