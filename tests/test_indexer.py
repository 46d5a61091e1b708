"""The index equals a brute-force reference computed independently, feature by feature.

The reference runs the HF model directly on each context (no padding, no bridge), encodes with
the SAE's formula written out here, and derives every statistic with numpy/scipy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from safetensors.numpy import load_file
from transformers import AutoTokenizer, LlamaForCausalLM

from saedex.config import IndexConfig
from saedex.indexer.indexing import IndexJob, run_index
from saedex.indexer.lens import row_topk
from saedex.store import IndexReader
from tests.conftest import build_tiny_sae

CTX = 32
# A low sink threshold so the random model has some "sinks" and the rule is exercised.
CFG = IndexConfig(context_size=CTX, batch_size=4, sink_norm_multiple=1.6, top_k=5)


@dataclass
class Reference:
    contexts: list[list[int]]
    acts: list[np.ndarray]  # per context [T, d_sae], zero on uncounted tokens
    counted: list[np.ndarray]  # per context [T] bool


def reference(model_dir: Path, sae_dir: Path, corpus: Path, cfg: IndexConfig) -> Reference:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    w = load_file(str(sae_dir / "sae_weights.safetensors"))
    sae_cfg = json.loads((sae_dir / "cfg.json").read_text())
    contexts = []
    for line in corpus.read_text().splitlines():
        ids = tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), cfg.context_size - 1):
            contexts.append([tok.bos_token_id, *ids[start : start + cfg.context_size - 1]])
    acts, counted = [], []
    for ids in contexts:
        f, mask = encode_reference(model, w, sae_cfg, ids, cfg)
        acts.append(f)
        counted.append(mask)
    return Reference(contexts, acts, counted)


def encode_reference(model, w: dict, sae_cfg: dict, ids: list[int], cfg: IndexConfig):
    """The SAE's activations [T, d_sae] on one BOS-led context, zero on uncounted tokens, and
    the counted mask: the HF model run directly, the SAE's formula written out."""
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
    x = hidden.numpy().astype(np.float64)
    norms = np.linalg.norm(x, axis=1)
    body = np.sort(norms[1:])
    median = body[(len(body) - 1) // 2]  # torch's median: the lower middle value
    mask = np.ones(len(ids), bool)
    mask[0] = False
    mask &= norms / median <= cfg.sink_norm_multiple
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if sae_cfg["architecture"] == "topk":
        keep = np.argsort(-pre, axis=1)[:, : sae_cfg["k"]]
        f = np.zeros_like(pre)
        np.put_along_axis(f, keep, np.maximum(np.take_along_axis(pre, keep, 1), 0), 1)
    else:
        f = np.maximum(pre, 0)
    f[~mask] = 0
    return f, mask


@pytest.fixture(scope="module", params=["standard", "topk"])
def indexed(request, tiny_model, tiny_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"idx-{request.param}")
    sae_dir = build_tiny_sae(tmp / f"sae-{request.param}", request.param)
    db = tmp / "index.duckdb"
    info = run_index(
        IndexJob(str(tiny_model), str(sae_dir), str(tiny_corpus), db, config=CFG), False
    )
    ref = reference(tiny_model, sae_dir, tiny_corpus, CFG)
    reader = IndexReader(db)
    yield info, reader, ref, sae_dir
    reader.close()


def test_run_metadata(indexed):
    info, _, ref, _ = indexed
    assert info.status == "complete"
    assert info.n_contexts == len(ref.contexts)
    assert info.n_tokens == sum(int(c.sum()) for c in ref.counted)
    n_sinks = sum(int((~c[1:]).sum()) for c in ref.counted)
    assert info.n_excluded_tokens == n_sinks > 0
    assert info.dead_features == sum(
        1 for j in range(info.d_sae) if not any(a[:, j].any() for a in ref.acts)
    )


def test_feature_stats_and_histograms(indexed):
    info, reader, ref, _ = indexed
    summaries = reader.summaries(info.id, list(range(info.d_sae)))
    hists = reader.histograms(info.id, list(range(info.d_sae)))
    for j in range(info.d_sae):
        values = np.concatenate([a[:, j][a[:, j] > 0] for a in ref.acts])
        s = summaries[j]
        assert s.n_active == len(values)
        assert s.density == pytest.approx(len(values) / info.n_tokens)
        if not len(values):
            assert s.max_activation == 0 and hists[j][0].counts == []
            continue
        assert s.max_activation == pytest.approx(values.max(), rel=1e-5)
        assert s.mean_activation == pytest.approx(values.mean(), rel=1e-5)
        if len(values) > 3:
            assert s.skew == pytest.approx(scipy.stats.skew(values, bias=False), rel=1e-3, abs=1e-6)
            assert s.kurtosis == pytest.approx(
                scipy.stats.kurtosis(values, bias=False), rel=1e-3, abs=1e-6
            )
        hist = hists[j][0]
        expected, _ = np.histogram(values, bins=CFG.hist_bins, range=(0, values.max()))
        assert sum(hist.counts) == len(values)
        slack = 2 * _near_edges(values, values.max(), CFG.hist_bins)
        assert np.abs(np.array(hist.counts) - expected).sum() <= slack
        assert hist.bin_edges[-1] == pytest.approx(values.max(), rel=1e-5)


def _near_edges(values: np.ndarray, mx: float, n: int) -> int:
    """Values so close to a bin edge that float32 vs float64 rounding may move them."""
    scaled = values / mx * n
    return int((np.abs(scaled - np.round(scaled)) < 1e-4).sum())


def _context_maxima(ref: Reference, j: int) -> list[tuple[float, int]]:
    return sorted(
        ((float(a[:, j].max()), cid) for cid, a in enumerate(ref.acts) if a[:, j].max() > 0),
        key=lambda t: (-t[0], t[1]),
    )


def test_top_examples(indexed):
    info, reader, ref, _ = indexed
    tops = reader.top_examples(info.id, list(range(info.d_sae)))
    for j in range(info.d_sae):
        expected = _context_maxima(ref, j)[: CFG.top_k]
        got = tops[j]
        assert [e.context_id for e in got] == [cid for _, cid in expected]
        for example, (value, cid) in zip(got, expected, strict=True):
            assert example.max_activation == pytest.approx(value, rel=1e-5)
            assert example.token_ids == ref.contexts[cid]
            np.testing.assert_allclose(
                example.activations, ref.acts[cid][:, j], rtol=1e-4, atol=1e-5
            )
            assert example.max_token_index == int(np.argmax(ref.acts[cid][:, j]))
            assert len(example.tokens) == len(example.token_ids)


def test_interval_samples(indexed):
    info, reader, ref, _ = indexed
    samples = reader.interval_samples(info.id, list(range(info.d_sae)))
    summaries = reader.summaries(info.id, list(range(info.d_sae)))
    for j in range(info.d_sae):
        mx = summaries[j].max_activation
        if mx == 0:
            assert samples[j] == []
            continue
        values = np.concatenate([a[:, j][a[:, j] > 0] for a in ref.acts])
        bins = np.minimum(np.floor(values / mx * CFG.n_intervals), CFG.n_intervals - 1)
        assert [s.index for s in samples[j]] == list(range(CFG.n_intervals))[::-1]
        for sample in samples[j]:
            in_interval = int((bins == sample.index).sum())
            slack = _near_edges(values, mx, CFG.n_intervals)
            assert abs(sample.fraction * len(values) - in_interval) <= slack + 1e-6
            assert sample.low == pytest.approx(mx * sample.index / CFG.n_intervals)
            ctx_with = {
                cid
                for cid, a in enumerate(ref.acts)
                if (
                    (a[:, j] > 0) & (np.minimum(np.floor(a[:, j] / mx * 10), 9) == sample.index)
                ).any()
            }
            if not slack:
                assert len(sample.examples) == min(CFG.examples_per_interval, len(ctx_with))
            assert len({e.context_id for e in sample.examples}) == len(sample.examples)
            for e in sample.examples:
                assert e.context_id in ctx_with or slack
                assert sample.low - 1e-4 <= e.max_activation <= sample.high + 1e-4
                assert e.activations[e.max_token_index] == pytest.approx(e.max_activation)


def test_logit_lens_and_neighbours(indexed, tiny_model):
    info, reader, _, sae_dir = indexed
    model = LlamaForCausalLM.from_pretrained(tiny_model)
    w = load_file(str(sae_dir / "sae_weights.safetensors"))
    unembed = model.lm_head.weight.detach().numpy().T.astype(np.float64)
    norm_w = model.model.norm.weight.detach().numpy().astype(np.float64)
    logits = (w["W_dec"] * norm_w) @ unembed
    features = list(range(info.d_sae))
    top, bottom = (
        reader.logits(info.id, features, "top"),
        reader.logits(info.id, features, "bottom"),
    )
    hists = reader.histograms(info.id, features)
    unit = w["W_dec"] / np.linalg.norm(w["W_dec"], axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    nbrs = reader.neighbours(info.id, features)
    for j in features:
        order = np.argsort(-logits[j])
        assert [e.token_id for e in top[j]] == order[: CFG.n_logits].tolist()
        assert [e.token_id for e in bottom[j]] == order[::-1][: CFG.n_logits].tolist()
        np.testing.assert_allclose([e.value for e in top[j]], logits[j][order[:10]], rtol=1e-4)
        counts = hists[j][1].counts
        expected, _ = np.histogram(logits[j], bins=CFG.hist_bins)
        assert sum(counts) == logits.shape[1]
        slack = 2 * _near_edges(logits[j] - logits[j].min(), np.ptp(logits[j]), CFG.hist_bins)
        assert np.abs(np.array(counts) - expected).sum() <= slack
        expected_nb = np.argsort(-cos[j])[: CFG.n_neighbours]
        assert [n.index for n in nbrs[j]] == expected_nb.tolist()
        np.testing.assert_allclose([n.cosine for n in nbrs[j]], cos[j][expected_nb], rtol=1e-4)


@pytest.mark.parametrize("width", [5000, 64 * 40, 300])
@pytest.mark.parametrize("largest", [True, False])
def test_row_topk_equals_a_full_sort(width, largest):
    """The lens's grouped top-k (the tiny model's 320-token vocabulary never groups)."""
    rng = np.random.default_rng(width)
    values = rng.standard_normal((40, width)).astype(np.float32)
    values[0] = 1.5  # a row of ties
    values[1, 100:] = -2.0  # ties at the bottom
    values[2, -7:] = 9.0 if largest else -9.0  # the extremes in the columns past the last group
    top_values, top_indices = row_topk(torch.from_numpy(values), 10, largest)
    order = np.sort(values, axis=1)
    expected = order[:, ::-1][:, :10] if largest else order[:, :10]
    np.testing.assert_array_equal(top_values.numpy(), expected)
    np.testing.assert_array_equal(np.take_along_axis(values, top_indices.numpy(), 1), expected)
    assert all(len(set(row)) == 10 for row in top_indices.tolist())


def test_feature_bundle_and_listing(indexed):
    info, reader, _, _ = indexed
    data = reader.feature(info.id, 3)
    assert data.summary.index == 3 and len(data.summary.top_logits) == CFG.n_logits
    assert reader.feature(info.id, info.d_sae) is None
    page = reader.list_features(info.id, order_by="density", descending=True, limit=7)
    assert page.total == info.d_sae and len(page.items) == 7
    densities = [f.density for f in page.items]
    assert densities == sorted(densities, reverse=True)
    live = reader.list_features(info.id, min_density=1e-9, limit=1000)
    assert live.total == info.d_sae - info.dead_features
