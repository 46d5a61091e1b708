"""`saedex export --format neuronpedia`: an index as Neuronpedia's import bundle.

Neuronpedia imports `v1/{modelId}/{sourceId}/` (apps/webapp/app/api/admin/import/route.ts):
`release.jsonl`, `model.jsonl`, `sourceset.jsonl`, `source.jsonl`, then `features/`,
`activations/` and `explanations/` as `batch-N.jsonl.gz`. Rows carry exactly the fields of
Neuronpedia's own exporter dataclasses (utils/neuronpedia-utils/neuronpedia_utils/db_models), in
their order; what saedex does not compute is written as Neuronpedia's SAEDashboard converter
writes absent data (an empty list, or null). Conventions copied from that converter: top
examples have `binMin = -1`, `binMax` = the feature's max activation, `binContains = -1`; an
interval sample carries its interval's bounds and the share of activations in it; values are
rounded to 5 decimals; `vectorDefaultSteerStrength` is the max activation.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from saedex.data import Example, Explanation, FeatureData, Histogram, SaeInfo
from saedex.errors import SaedexError
from saedex.store import IndexReader
from saedex.weights import all_vectors, indexed_weights

DATASET_VERSION = "v1"  # Neuronpedia's DATASET_VERSION (apps/webapp/lib/utils/s3.ts)
BATCH_FEATURES = 1024  # features (and their activations) per batch file, as export-data.py
DIGITS = 5
# The user Neuronpedia's webapp creates by default and attributes imports to (lib/env.ts).
DEFAULT_CREATOR_ID = "clkht01d40000jv08hvalcvly"

# The row fields, in the order of Neuronpedia's db_models dataclasses.
FEATURE_FIELDS = (
    "modelId", "layer", "index", "creatorId", "createdAt", "maxActApprox", "hasVector", "vector",
    "vectorLabel", "vectorDefaultSteerStrength", "hookName", "topkCosSimIndices",
    "topkCosSimValues", "neuron_alignment_indices", "neuron_alignment_values",
    "neuron_alignment_l1", "correlated_neurons_indices", "correlated_neurons_pearson",
    "correlated_neurons_l1", "correlated_features_indices", "correlated_features_pearson",
    "correlated_features_l1", "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
    "freq_hist_data_bar_heights", "freq_hist_data_bar_values", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "decoder_weights_dist", "sourceSetName",
)  # fmt: skip
ACTIVATION_FIELDS = (
    "id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue",
    "values", "creatorId", "dataSource", "dataIndex", "dfaValues", "dfaTargetIndex",
    "dfaMaxValue", "createdAt", "lossValues", "logitContributions", "binMin", "binMax",
    "binContains", "qualifyingTokenIndex", "zIndices", "zValues",
)  # fmt: skip
EXPLANATION_FIELDS = (
    "id", "modelId", "layer", "index", "authorId", "description", "embedding", "typeName",
    "explanationModelName", "umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity",
)  # fmt: skip
HOOK_SETS = {"resid": "res", "mlp": "mlp", "attn": "att", "z": "att"}  # hook -> set-name stem


@dataclass(frozen=True)
class NeuronpediaJob:
    """One SAE of an index to export, and how Neuronpedia should name it."""

    db: Path
    sae_id: str
    out: Path
    model_id: str | None = None  # default: the model name's last part, lower-cased
    source_set: str | None = None  # default: "<res|mlp|att>-saedex"
    creator_id: str = DEFAULT_CREATOR_ID
    creator_name: str = "saedex"
    release: str | None = None  # default: the source set's name
    vectors: bool = True  # decoder rows into `vector` (reads the SAE weights file)
    overwrite: bool = False


@dataclass
class NeuronpediaExport:
    folder: Path
    model_id: str
    source_id: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Names:
    model_id: str
    source_set: str
    source_id: str
    creator_id: str
    created_at: str


def model_id_of(model_name: str) -> str:
    """Neuronpedia's model ids are short lower-case names (gpt2-small, gemma-2-2b)."""
    name = model_name.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "model"


def source_set_of(hook_name: str) -> str:
    """`res-saedex` for a residual hook, as Neuronpedia names sets (res-jb, gemmascope-res-16k)."""
    hook = hook_name.rsplit(".", 1)[-1].removeprefix("hook_")
    stem = HOOK_SETS.get(hook.split("_", 1)[0], re.sub(r"[^a-z0-9]+", "", hook) or "hook")
    return f"{stem}-saedex"


def export_neuronpedia(job: NeuronpediaJob, progress: bool = True) -> NeuronpediaExport:
    """Write the bundle of one SAE; returns its folder and row counts."""
    from saedex.progress import progress_bar

    with IndexReader(job.db) as reader:
        info = reader.sae(job.sae_id)
        if info is None:
            known = ", ".join(s.id for s in reader.saes()) or "none"
            raise SaedexError(f"no SAE {job.sae_id!r} in {job.db} (it has: {known})")
        if info.status != "complete":
            raise SaedexError(f"SAE {job.sae_id!r} is not fully indexed (status {info.status})")
        names = _names(job, info)
        folder = _prepare(job.out / DATASET_VERSION / names.model_id / names.source_id, job)
        vectors = all_vectors(indexed_weights(info), "decoder") if job.vectors else None
        for name, row in _metadata_rows(job, info, names).items():
            _write_jsonl(folder / f"{name}.jsonl", [row])
        result = NeuronpediaExport(folder, names.model_id, names.source_id)
        counts = result.counts = {"features": 0, "activations": 0, "explanations": 0}
        with progress_bar("feat", progress) as bar:
            task = bar.add_task("neuronpedia export", total=info.d_sae)
            for batch, start in enumerate(range(0, info.d_sae, BATCH_FEATURES)):
                indices = list(range(start, min(start + BATCH_FEATURES, info.d_sae)))
                records = feature_data(reader, info.id, indices, None)
                features = [feature_row(d, names, info, vectors) for d in records]
                acts = [row for d in records for row in activation_rows(d, names)]
                _write_batch(folder / "features", batch, features)
                _write_batch(folder / "activations", batch, acts)
                counts["features"] += len(features)
                counts["activations"] += len(acts)
                bar.advance(task, len(indices))
        explained = explanation_rows(_explanations(reader, info.id), names)
        (folder / "explanations").mkdir()
        for batch, start in enumerate(range(0, len(explained), BATCH_FEATURES)):
            _write_batch(folder / "explanations", batch, explained[start : start + BATCH_FEATURES])
        counts["explanations"] = len(explained)
    return result


def feature_data(reader: IndexReader, sae_id: str, indices: list[int], top) -> list[FeatureData]:
    """Every dashboard field of `indices`, in a handful of batched reader queries."""
    summaries = reader.summaries(sae_id, indices)
    indices = [i for i in indices if i in summaries]
    bottom = reader.logits(sae_id, indices, "bottom")
    hists = reader.histograms(sae_id, indices)
    examples = reader.top_examples(sae_id, indices, first=top)
    intervals = reader.interval_samples(sae_id, indices)
    nbrs = reader.neighbours(sae_id, indices)
    return [
        FeatureData(summaries[i], bottom[i], *hists[i], examples[i], intervals[i], nbrs[i])
        for i in indices
    ]


def _names(job: NeuronpediaJob, info: SaeInfo) -> _Names:
    model_id = job.model_id or model_id_of(info.model_name)
    source_set = job.source_set or source_set_of(info.hook_name)
    for what, value in (("model id", model_id), ("source set", source_set)):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise SaedexError(f"Neuronpedia {what} must be letters, digits, . _ or -: {value!r}")
    created = datetime.now().replace(microsecond=0).isoformat()
    source_id = f"{info.hook_layer}-{source_set}"
    return _Names(model_id, source_set, source_id, job.creator_id, created)


def _prepare(folder: Path, job: NeuronpediaJob) -> Path:
    if folder.exists():
        if not job.overwrite:
            raise SaedexError(f"{folder} already exists; pass --overwrite to replace it")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


# -- rows ----------------------------------------------------------------------------------------


def _round(values: Iterable[float]) -> list[float]:
    """Rounded to DIGITS decimals, in numpy (an export rounds tens of millions of values)."""
    return np.round(np.fromiter(values, dtype=np.float64), DIGITS).tolist()


def _bars(hist: Histogram) -> tuple[list[float], list[float]]:
    """SAEDashboard's bar chart: (heights = counts, values = bin centres)."""
    edges = hist.bin_edges
    centres = [(lo + hi) / 2 for lo, hi in zip(edges, edges[1:], strict=False)]
    return [float(c) for c in hist.counts], _round(centres)


def feature_row(data: FeatureData, names: _Names, info: SaeInfo, vectors=None) -> dict:
    s = data.summary
    freq_heights, freq_values = _bars(data.histogram)
    logit_heights, logit_values = _bars(data.logit_histogram)
    max_act = round(float(s.max_activation), DIGITS)
    has_vector = vectors is not None
    row = {
        "modelId": names.model_id,
        "layer": names.source_id,
        "index": str(s.index),
        "creatorId": names.creator_id,
        "createdAt": names.created_at,
        "maxActApprox": max_act,
        "hasVector": has_vector,
        "vector": [float(v) for v in vectors[s.index]] if has_vector else [],
        "vectorLabel": None,
        "vectorDefaultSteerStrength": max_act if has_vector else 10,
        "hookName": info.hook_name if has_vector else None,
        "topkCosSimIndices": [n.index for n in data.neighbours],
        "topkCosSimValues": _round(n.cosine for n in data.neighbours),
        "neg_str": [e.token for e in data.bottom_logits],
        "neg_values": _round(e.value for e in data.bottom_logits),
        "pos_str": [e.token for e in s.top_logits],
        "pos_values": _round(e.value for e in s.top_logits),
        "frac_nonzero": float(s.density),
        "freq_hist_data_bar_heights": freq_heights,
        "freq_hist_data_bar_values": freq_values,
        "logits_hist_data_bar_heights": logit_heights,
        "logits_hist_data_bar_values": logit_values,
        "sourceSetName": names.source_set,
    }
    # neuron alignment, correlations and decoder_weights_dist: not computed (empty, as absent)
    return {f: row.get(f, []) for f in FEATURE_FIELDS}


def activation_rows(data: FeatureData, names: _Names) -> Iterator[dict]:
    """Top examples, then interval samples from the highest interval down."""
    index = data.summary.index
    top_bin = round(float(data.summary.max_activation), DIGITS)
    for rank, ex in enumerate(data.top_examples):
        yield _activation(ex, index, names, f"top{rank}", (-1, top_bin, -1))
    for sample in data.interval_samples:
        bins = (
            round(sample.low, DIGITS),
            round(sample.high, DIGITS),
            round(sample.fraction, DIGITS),
        )
        for rank, ex in enumerate(sample.examples):
            yield _activation(ex, index, names, f"int{sample.index}-{rank}", bins)


def _activation(ex: Example, index: int, names: _Names, key: str, bins: tuple) -> dict:
    values = _round(ex.activations)
    top = max(values)
    row = {
        "id": _cuid(names, index, key),
        "tokens": list(ex.tokens),
        "index": str(index),
        "layer": names.source_id,
        "modelId": names.model_id,
        "maxValue": top,
        "maxValueTokenIndex": values.index(top),
        "minValue": min(values),
        "values": values,
        "creatorId": names.creator_id,
        "dataSource": None,
        "dataIndex": None,
        "dfaValues": [],
        "dfaTargetIndex": None,
        "dfaMaxValue": None,
        "createdAt": names.created_at,
        "lossValues": [],
        "logitContributions": None,
        "binMin": bins[0],
        "binMax": bins[1],
        "binContains": bins[2],
        "qualifyingTokenIndex": ex.max_token_index,
        "zIndices": None,
        "zValues": None,
    }
    return {f: row[f] for f in ACTIVATION_FIELDS}


def _cuid(names: _Names, index: int, key: str) -> str:
    """A 25-character id (Neuronpedia uses cuids), stable across re-exports of the same data."""
    digest = hashlib.sha1(f"{names.model_id}/{names.source_id}/{index}/{key}".encode()).hexdigest()
    return "c" + digest[:24]


def explanation_rows(explanations: Sequence[Explanation], names: _Names) -> list[dict]:
    rows = []
    for e in explanations:
        row = {
            "id": _cuid(names, e.feature, f"explanation{e.id}"),
            "modelId": names.model_id,
            "layer": names.source_id,
            "index": str(e.feature),
            "authorId": names.creator_id,
            "description": e.text,
            "embedding": None,
            "typeName": e.method,
            "explanationModelName": e.author if e.source == "model" else None,
            "umap_x": None,
            "umap_y": None,
            "umap_cluster": None,
            "umap_log_feature_sparsity": None,
        }
        rows.append({f: row[f] for f in EXPLANATION_FIELDS})
    return rows


def _explanations(reader: IndexReader, sae_id: str) -> list[Explanation]:
    """The SAE's explanations in the user-edit store (saedex/store/edits.py), if it has one."""
    store = reader.edits()
    return [] if store is None else list(store.all(sae_id, reader.fingerprint(sae_id)))


def _metadata_rows(job: NeuronpediaJob, info: SaeInfo, names: _Names) -> dict[str, dict]:
    """release, model, sourceset and source rows, as the SAEDashboard converter fills them."""
    release = job.release or names.source_set
    description = f"{info.hook_name} - {info.d_sae:,} features"
    return {
        "release": {
            "name": release,
            "description": f"{release} (saedex index {info.id})",
            "creatorName": job.creator_name,
            "creatorId": names.creator_id,
            "visibility": "PUBLIC",
            "isNewUi": False,
            "featured": False,
            "descriptionShort": release,
            "urls": [],
            "creatorEmail": None,
            "creatorNameShort": job.creator_name,
            "defaultSourceSetName": None,
            "defaultSourceId": None,
            "defaultUmapSourceIds": [],
            "createdAt": names.created_at,
        },
        "model": {
            "id": names.model_id,
            "instruct": bool(re.search(r"(-it|instruct)$", names.model_id)),
            "creatorId": names.creator_id,
            "displayNameShort": names.model_id,
            "displayName": info.model_name,
            "tlensId": None,
            "dimension": info.d_in,
            "visibility": "PUBLIC",
            "defaultSourceSetName": None,
            "defaultSourceId": None,
            "inferenceEnabled": True,
            "layers": 0,
            "neuronsPerLayer": 0,
            "createdAt": names.created_at,
            "owner": "",
            "updatedAt": names.created_at,
            "website": None,
        },
        "sourceset": {
            "modelId": names.model_id,
            "name": names.source_set,
            "creatorId": names.creator_id,
            "hasDashboards": True,
            "visibility": "PUBLIC",
            "description": description,
            "type": "",
            "creatorName": job.creator_name,
            "urls": [],
            "creatorEmail": None,
            "releaseName": release,
            "defaultOfModelId": None,
            "defaultRange": 1,
            "defaultShowBreaks": True,
            "showDfa": False,
            "showCorrelated": False,
            "showHeadAttribution": False,
            "showUmap": False,
            "createdAt": names.created_at,
        },
        "source": {
            "id": names.source_id,
            "modelId": names.model_id,
            "setName": names.source_set,
            "creatorId": names.creator_id,
            "hasDashboards": True,
            "inferenceEnabled": False,
            "inferenceHosts": [],
            "saelensConfig": None,
            "saelensRelease": None,
            "saelensSaeId": None,
            "hfRepoId": None,
            "hfFolderId": None,
            "visibility": "PUBLIC",
            "defaultOfModelId": None,
            "hasUmap": False,
            "hasUmapLogSparsity": False,
            "hasUmapClusters": False,
            "num_prompts": info.n_contexts,
            "num_tokens_in_prompt": info.context_size,
            "dataset": info.corpus,
            "notes": f"exported by saedex from index {info.id!r} ({info.n_tokens:,} tokens)",
            "createdAt": names.created_at,
        },
    }


# -- files ---------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _write_batch(folder: Path, batch: int, rows: list[dict]) -> None:
    folder.mkdir(exist_ok=True)
    if not rows:
        return
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (folder / f"batch-{batch}.jsonl.gz").write_bytes(gzip.compress(text.encode(), compresslevel=5))


def read_batches(folder: Path) -> Iterator[dict]:
    """Every row of a bundle folder's batch files, in batch order (for checks and tests)."""
    files = sorted(
        folder.glob("batch-*.jsonl.gz"), key=lambda p: int(p.name.split("-")[1].split(".")[0])
    )
    for path in files:
        for line in gzip.decompress(path.read_bytes()).decode().splitlines():
            yield json.loads(line)
