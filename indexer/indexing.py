"""One pass of a model and an SAE over a corpus, into the index.

The run has three resumable steps: plan (tokenise the corpus into stored contexts), pass (the
model up to the hook and the SAE on every context, committing sparse activations per batch),
finalize (derive every per-feature table in SQL, plus the weight-only logit lens and
neighbours). Killing it at any point and running the same command again finishes the same index.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch

from saedex import provenance
from saedex.config import IndexConfig, RayConfig
from saedex.data import SaeInfo
from saedex.errors import SaedexError
from saedex.indexer.corpus import CorpusStats, resolve_corpus
from saedex.indexer.lens import folded_unembed, is_layernorm, logit_lens, neighbours
from saedex.indexer.model import (
    DEFAULT_MODEL,
    LoadedModel,
    check_context_size,
    default_gguf,
    forward_to_hook,
    load_model,
    model_config,
    resolve_device,
    validate_hook,
)
from saedex.indexer.pretokenized import corpus_contexts
from saedex.indexer.sae import SparseAutoencoder, check_indexable, load_sae, resolve_sae
from saedex.progress import progress_bar
from saedex.store import IndexReader, IndexWriter
from saedex.store.catalog import Catalog
from saedex.store.layout import compact, locate_run, prepare_base, read_run_state
from saedex.store.writer import STATUS_COMPLETE, STATUS_RUNNING, Batch

log = logging.getLogger("saedex.index")


@dataclass(frozen=True)
class IndexJob:
    """What to index and where; `config` holds the knobs stored with the run."""

    model: str
    sae: str
    corpus: str
    db: Path
    sae_id: str | None = None
    device: str | None = None
    dtype: str | None = None
    overwrite: bool = False
    config: IndexConfig = field(default_factory=IndexConfig)
    ray: RayConfig | None = None  # the pass's shards on Ray (saedex.indexer.sharding)


def default_sae_id(sae_dir: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", sae_dir.resolve().name).strip("-") or "sae"


def run_index(job: IndexJob, progress: bool = True, model: LoadedModel | None = None) -> SaeInfo:
    """Index `job`, resuming a partial run of the same settings; returns the finished run.

    `model` may be passed already loaded (a notebook indexing several SAEs of one model).
    """
    sae_dir = resolve_sae(job.sae)
    sae = load_sae(sae_dir)
    corpus_path = resolve_corpus(job.corpus)
    _check_model_fits(job.model, sae, job.config.context_size)
    sae_id = job.sae_id or default_sae_id(sae_dir)
    made_of = run_provenance(job, sae_dir, corpus_path)
    prepare_base(job.db)
    where, state = locate_run(job.db, sae_id)
    if state is not None and job.overwrite:
        where, state = None, None
    if state is not None:
        _check_same_run(job, sae_id, state, made_of)
    catalog = Catalog(job.db)
    if state is None or state.status != STATUS_COMPLETE:
        where = where if state is not None else catalog.begin(sae_id)
        model = model or load_model(job.model, job.device, job.dtype, progress)
        run = _run_row(job, model, sae, sae_dir, sae_id, corpus_path) | made_of
        try:
            with IndexWriter(where) as writer:
                _run(job, writer, model, sae, run, corpus_path, state, progress)
        except SaedexError:
            if where != job.db and read_run_state(where, sae_id) is None:
                catalog.abandon(sae_id)  # nothing worth resuming
            raise
    if where is not None and where == catalog.pending(sae_id):
        compact(where)  # complete: compacted once, then immutable
        catalog.publish(sae_id)
    with IndexReader(job.db) as reader:
        return reader.sae(sae_id)


def _check_model_fits(model_spec: str, sae: SparseAutoencoder, context_size: int) -> None:
    """A hook off the residual stream, wrong d_in, a layer past the model's end or a context
    longer than its positions: fail before loading any weights."""
    check_indexable(sae.cfg)
    config = model_config(model_spec)
    check_context_size(model_spec, config, context_size)
    d_model = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    if d_model is not None and d_model != sae.cfg.d_in:
        raise SaedexError(
            f"SAE d_in is {sae.cfg.d_in} but model {model_spec!r} has d_model {d_model}"
        )
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if n_layers is not None and sae.cfg.hook_layer >= n_layers:
        raise SaedexError(
            f"unknown hook {sae.cfg.hook_name!r}: model {model_spec!r} has {n_layers} layers"
        )


def run_provenance(job: IndexJob, sae_dir: Path, corpus_path: Path) -> dict:
    """The run's provenance columns (see saedex.provenance for what is hashed and how)."""
    sae_print = provenance.sae_fingerprint(sae_dir)
    return {
        "model_fingerprint": provenance.model_fingerprint(_model_source(job.model), job.model),
        "sae_weights_sha256": sae_print.weights_sha256,
        "sae_cfg_sha256": sae_print.cfg_sha256,
        "corpus_fingerprint": provenance.corpus_fingerprint(corpus_path),
        "saedex_version": provenance.saedex_version(),
        "dtype": job.dtype or "float32",
        "device": resolve_device(job.device),
    }


def _model_source(spec: str) -> Path | None:
    """The checkpoint on disk: the default model's GGUF, a local directory, or the hub cache's
    snapshot of a hub name (None when it is not on disk)."""
    if spec == DEFAULT_MODEL:
        return Path(default_gguf())
    if Path(spec).exists():
        return Path(spec)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # not cached, or not a hub name: recorded by name
        return None


# The inputs a run is made of, as (column, what it is called in a refusal).
_INPUTS = (
    ("model_fingerprint", "model"),
    ("sae_weights_sha256", "SAE weights"),
    ("sae_cfg_sha256", "SAE cfg"),
    ("corpus_fingerprint", "corpus"),
)


def _check_same_run(job: IndexJob, sae_id: str, state, made_of: dict) -> None:
    """A rerun or resume must use the stored run's settings, model, SAE and corpus."""
    changed = job.config.differs_from(state.settings)
    if changed:
        raise SaedexError(
            f"index {sae_id!r} in {job.db} was made with other settings "
            f"({', '.join(changed)}); pass --overwrite or another --sae-id"
        )
    differs = [
        f"{label} {provenance.short(state.provenance[col])} -> {provenance.short(made_of[col])}"
        for col, label in _INPUTS
        if state.provenance.get(col) is not None and state.provenance[col] != made_of[col]
    ]
    if differs:
        raise SaedexError(
            f"index {sae_id!r} in {job.db} was made from other inputs ({'; '.join(differs)}); "
            "pass --overwrite to replace it, or another --sae-id"
        )


def _run(job, writer, model, sae, run: dict, corpus_path, state, progress) -> None:
    cfg = job.config
    sae_id = run["sae_id"]
    validate_hook(model, sae.cfg.hook_name)
    sae.to(model.device)
    if writer.vocab_size(model.name) != model.vocab_size:  # decoding 49k tokens costs ~0.3 s
        writer.write_vocab(model.name, model.token_strings())
    if state is None or state.status != STATUS_RUNNING:
        _plan(job, writer, model, run, corpus_path, progress)
        state = writer.run_state(sae_id)
    run_pass = _pass
    if job.ray is not None:  # shards on Ray workers, merged into this run file
        from saedex.indexer.sharding import sharded_pass

        run_pass = functools.partial(sharded_pass, job)
    run_pass(writer, model, sae, sae_id, cfg, state, progress)
    started = time.perf_counter()
    unembed = folded_unembed(model.bridge)
    logits, logit_hist = logit_lens(
        sae.W_dec.detach(), unembed, cfg.n_logits, cfg.hist_bins, centre=is_layernorm(model.bridge)
    )
    nbrs = neighbours(sae.W_dec.detach(), cfg.n_neighbours)
    with progress_bar("step", progress) as bar:
        bar.add_task("aggregating features", total=None)
        writer.finalize(
            sae_id, cfg, sae.cfg.d_sae, logits, logit_hist, nbrs, time.perf_counter() - started
        )


def _plan(job, writer, model, run: dict, corpus_path, progress) -> None:
    """Tokenise the corpus into stored contexts (one transaction; redone if interrupted)."""
    cfg = job.config
    sae_id = run["sae_id"]
    started = time.perf_counter()
    stats = CorpusStats()
    documents: list[dict] = []
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    # Text is tokenised; a pretokenized corpus (token-id rows) is read as given (interop).
    contexts = corpus_contexts(
        corpus_path,
        stats,
        model.tokenizer,
        model.vocab_size,
        cfg.context_size,
        cfg.prepend_bos,
        model.bos_token_id,
        doc_sink=documents,
        max_documents=cfg.max_documents,
        max_tokens=cfg.max_tokens,
    )
    rows = (
        {"sae_id": sae_id, **{k: getattr(c, k) for k in c.__dataclass_fields__}} for c in contexts
    )
    with progress_bar("ctx", progress) as bar:
        task = bar.add_task("tokenising corpus", total=None)
        counted = _counting(rows, lambda: bar.advance(task))
        docs_rows = ({"sae_id": sae_id, **d} for d in documents)
        n = writer.write_plan(run, docs_rows, counted, lambda: stats.skipped)
    if n == 0:
        writer.delete_run(sae_id)
        raise SaedexError(
            f"corpus {corpus_path} has no usable text ({stats.skipped} documents skipped)"
        )
    log.info("planned %d contexts in %.1fs", n, time.perf_counter() - started)


def _counting(rows, tick):
    for row in rows:
        tick()
        yield row


def _run_row(job, model, sae, sae_dir, sae_id, corpus_path) -> dict:
    cfg = job.config
    return {
        "sae_id": sae_id,
        "model_name": model.name,
        "hook_name": sae.cfg.hook_name,
        "hook_layer": sae.cfg.hook_layer,
        "architecture": sae.cfg.architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "sae_path": str(sae_dir.resolve()),
        "corpus": str(corpus_path.resolve()),
        "context_size": cfg.context_size,
        "prepend_bos": cfg.prepend_bos,
        "bos_token_id": model.bos_token_id,
        "settings": cfg.to_dict(),
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _pass(writer, model, sae, sae_id, cfg: IndexConfig, state, progress) -> None:
    remaining = writer.remaining_tokens(sae_id, state.contexts_done)
    done = state.contexts_done
    last_commit = time.perf_counter()
    with progress_bar("tok", progress) as bar, writer.pass_writer(sae_id) as out:
        task = bar.add_task("indexing", total=remaining)
        workspace = sae.W_enc.new_empty(cfg.batch_size * cfg.context_size, sae.cfg.d_sae)
        for batch in writer.batches(sae_id, done, cfg.batch_size):
            started = time.perf_counter()
            acts, excluded, n_tokens = encode_batch(model, sae, batch, cfg, workspace)
            done = batch.context_ids[-1] + 1
            out.append(done, acts, excluded, n_tokens, time.perf_counter() - started)
            if time.perf_counter() - last_commit >= cfg.commit_interval_s:
                out.commit()
                last_commit = time.perf_counter()
            bar.advance(task, sum(len(t) for t in batch.token_ids))


@torch.inference_mode()
def encode_batch(
    model: LoadedModel,
    sae: SparseAutoencoder,
    batch: Batch,
    cfg: IndexConfig,
    workspace: torch.Tensor | None = None,
) -> tuple[pa.Table, pa.Table, int]:
    """Sparse activations of every counted token in a batch, and the sinks left out.

    `workspace`: scratch for the SAE's pre-activations, reused across batches.
    """
    resid, counted, ratio = hook_activations(model, batch, sae.cfg.hook_name, cfg)
    rows, features, values = sae.encode_sparse(resid[counted].to(sae.W_enc.dtype), workspace)
    ctx_rows, positions = counted.nonzero(as_tuple=True)
    context_ids = torch.tensor(batch.context_ids, device=ctx_rows.device)
    acts = pa.table(
        {
            "context_id": pa.array(context_ids[ctx_rows[rows]].cpu().numpy(), pa.int32()),
            "position": pa.array(positions[rows].cpu().numpy(), pa.int16()),
            "feature": pa.array(features.cpu().numpy(), pa.int32()),
            "value": pa.array(values.float().cpu().numpy(), pa.float32()),
        }
    )
    sink_rows, sink_pos = sinks(ratio, cfg).nonzero(as_tuple=True)
    excluded = pa.table(
        {
            "context_id": pa.array(context_ids[sink_rows].cpu().numpy(), pa.int32()),
            "position": pa.array(sink_pos.cpu().numpy(), pa.int16()),
            "norm_ratio": pa.array(ratio[sink_rows, sink_pos].float().cpu().numpy(), pa.float32()),
        }
    )
    return acts, excluded, int(counted.sum())


def hook_activations(model: LoadedModel, batch: Batch, hook_name: str, cfg: IndexConfig):
    """Hook activations [B, T, d], the counted-token mask, and each token's norm ratio.

    Padding and BOS are never counted; with `sink_norm_multiple` > 0, neither is a token whose
    norm exceeds that multiple of its context's median (an attention sink).
    """
    lengths = torch.tensor([len(t) for t in batch.token_ids])
    width = int(lengths.max())
    tokens = torch.full((len(lengths), width), model.pad_token_id, dtype=torch.long)
    for row, ids in enumerate(batch.token_ids):
        tokens[row, : len(ids)] = torch.tensor(ids)
    resid = forward_to_hook(model, tokens.to(model.device), hook_name)
    valid = torch.arange(width)[None, :] < lengths[:, None]
    if cfg.prepend_bos:
        valid[:, 0] = False
    valid = valid.to(resid.device)
    norms = resid.float().norm(dim=-1)
    median = norms.masked_fill(~valid, float("nan")).nanmedian(dim=1, keepdim=True).values
    ratio = (norms / median).masked_fill(~valid, 0.0).nan_to_num(0.0)
    return resid, valid & ~sinks(ratio, cfg), ratio


def sinks(ratio: torch.Tensor, cfg: IndexConfig) -> torch.Tensor:
    """The attention sinks' mask: tokens past `sink_norm_multiple` times their context's median
    norm (`ratio` is 0 at BOS and padding); none when the multiple is 0 or less."""
    if cfg.sink_norm_multiple <= 0:
        return torch.zeros_like(ratio, dtype=torch.bool)
    return ratio > cfg.sink_norm_multiple
