"""One pass of a model and an SAE over a corpus, into the index.

The run has three resumable steps: plan (tokenise the corpus into stored contexts), pass (the
model up to the hook and the SAE on every context, committing sparse activations per batch),
finalize (derive every per-feature table in SQL, plus the weight-only logit lens and
neighbours). Killing it at any point and running the same command again finishes the same index.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Sequence
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
    forward_to_hooks,
    load_model,
    model_config,
    resolve_device,
    validate_hook,
)
from saedex.indexer.pretokenized import corpus_contexts
from saedex.indexer.sae import SparseAutoencoder, check_indexable, load_sae, resolve_sae
from saedex.progress import progress_bar
from saedex.store import IndexReader, IndexWriter, coactivation
from saedex.store.catalog import Catalog
from saedex.store.layout import compact, locate_run, prepare_base, read_run_state
from saedex.store.writer import STATUS_COMPLETE, STATUS_RUNNING, Batch, RunState

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
    return run_indexes([job], progress, model)[0]


@dataclass
class _Target:
    """One SAE of a (possibly multi-SAE) run: its inputs, run file and, while open, writer."""

    job: IndexJob
    sae_dir: Path
    sae: SparseAutoencoder
    sae_id: str
    corpus_path: Path
    made_of: dict
    where: Path | None
    state: RunState | None
    writer: IndexWriter | None = None


def run_indexes(
    jobs: Sequence[IndexJob], progress: bool = True, model: LoadedModel | None = None
) -> list[SaeInfo]:
    """Index several SAEs of one model over one corpus in ONE pass of the model.

    The model runs once per batch, up to the deepest of the SAEs' hooks, and every SAE encodes
    the same batch; each SAE still gets its own run file and catalog entry (docs/schema.md,
    "Layout"), with the rows indexing it alone would give. Complete runs are skipped, partial
    ones resume (the pass starts at the least advanced and each run takes only what it lacks).
    """
    _check_one_pass(jobs)
    targets = [_target(job) for job in jobs]
    ids = [t.sae_id for t in targets]
    if len(set(ids)) < len(ids):
        raise SaedexError(f"two SAEs share an index id ({', '.join(ids)}); pass --sae-id for each")
    job = jobs[0]
    catalog = Catalog(job.db)
    todo = [t for t in targets if t.state is None or t.state.status != STATUS_COMPLETE]
    if todo:
        for t in todo:
            t.where = t.where if t.state is not None else catalog.begin(t.sae_id)
        model = model or load_model(job.model, job.device, job.dtype, progress)
        try:
            with contextlib.ExitStack() as stack:
                for t in todo:
                    t.writer = stack.enter_context(IndexWriter(t.where, t.job.config.memory_limit))
                _run(todo, model, progress)
        except SaedexError:
            for t in todo:
                if t.where != job.db and read_run_state(t.where, t.sae_id) is None:
                    catalog.abandon(t.sae_id)  # nothing worth resuming
            raise
    for t in targets:
        if t.where is not None and t.where == catalog.pending(t.sae_id):
            compact(t.where, t.job.config.memory_limit)  # complete: then immutable
            catalog.publish(t.sae_id)
    with IndexReader(job.db) as reader:
        return [reader.sae(sae_id) for sae_id in ids]


# What every SAE of one pass must share.
_SHARED = ("model", "corpus", "db", "device", "dtype", "overwrite", "config")


def _check_one_pass(jobs: Sequence[IndexJob]) -> None:
    if not jobs:
        raise SaedexError("nothing to index: pass at least one --sae")
    for name in _SHARED:
        if len({repr(getattr(j, name)) for j in jobs}) > 1:
            raise SaedexError(f"SAEs indexed in one pass must share their {name}")


def _target(job: IndexJob) -> _Target:
    """Load and check one SAE and find where its run stands (nothing is written yet)."""
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
    return _Target(job, sae_dir, sae, sae_id, corpus_path, made_of, where, state)


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


def _run(targets: list[_Target], model: LoadedModel, progress: bool) -> None:
    """Plan each run (a resumed one keeps its plan), one shared pass, then each aggregation."""
    cfg = targets[0].job.config
    tokens = None
    for t in targets:
        validate_hook(model, t.sae.cfg.hook_name)
        t.sae.to(model.device)
        if t.writer.vocab_size(model.name) != model.vocab_size:
            tokens = tokens or model.token_strings()  # decoding 49k tokens costs ~0.3 s
            t.writer.write_vocab(model.name, tokens)
        if t.state is None or t.state.status != STATUS_RUNNING:
            run = _run_row(t.job, model, t.sae, t.sae_dir, t.sae_id, t.corpus_path) | t.made_of
            _plan(t.job, t.writer, model, run, t.corpus_path, progress)
            t.state = t.writer.run_state(t.sae_id)
    if targets[0].job.ray is not None:  # shards on Ray workers, merged into each run file
        from saedex.indexer.sharding import sharded_pass

        for t in targets:  # one sharded pass per SAE (a shard loads one SAE)
            sharded_pass(t.job, t.writer, model, t.sae, t.sae_id, cfg, t.state, progress)
    else:
        _pass(targets, model, cfg, progress)
    for t in targets:
        _finalize(t, model, cfg, progress)


def _finalize(t: _Target, model: LoadedModel, cfg: IndexConfig, progress: bool) -> None:
    """The run's per-feature tables, and the weight-only logit lens and neighbours."""
    started = time.perf_counter()
    unembed = folded_unembed(model.bridge)
    logits, logit_hist = logit_lens(
        t.sae.W_dec.detach(), unembed, cfg.n_logits, cfg.hist_bins,
        centre=is_layernorm(model.bridge),
    )  # fmt: skip
    nbrs = neighbours(t.sae.W_dec.detach(), cfg.n_neighbours)
    with progress_bar("step", progress) as bar:
        bar.add_task(f"co-activations of {t.sae_id}", total=None)
        coactivation.store_in_run(t.writer.con, t.sae_id, cfg.coactivations)  # issue 18.1
    with progress_bar("step", progress) as bar:
        bar.add_task(f"aggregating features of {t.sae_id}", total=None)
        t.writer.finalize(
            t.sae_id, cfg, t.sae.cfg.d_sae, logits, logit_hist, nbrs,
            time.perf_counter() - started,
        )  # fmt: skip


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


def _pass(targets: list[_Target], model: LoadedModel, cfg: IndexConfig, progress) -> None:
    """The model once per batch to the deepest hook; every SAE encodes the batch's activations
    at its hook. A run further along than the others skips the contexts it already holds."""
    lead = min(targets, key=lambda t: t.state.contexts_done)
    _check_same_plan(targets)
    start = lead.state.contexts_done
    hooks = list(dict.fromkeys(t.sae.cfg.hook_name for t in targets))
    remaining = lead.writer.remaining_tokens(lead.sae_id, start)
    rows = cfg.batch_size * cfg.context_size
    scratch = targets[0].sae.W_enc.new_empty(rows * max(t.sae.cfg.d_sae for t in targets))
    last_commit = time.perf_counter()
    with progress_bar("tok", progress) as bar, contextlib.ExitStack() as stack:
        outs = [stack.enter_context(t.writer.pass_writer(t.sae_id)) for t in targets]
        task = bar.add_task("indexing", total=remaining)
        for batch in lead.writer.batches(lead.sae_id, start, cfg.batch_size):
            started = time.perf_counter()
            tokens, lengths = batch_tokens(model, batch)
            resids = forward_to_hooks(model, tokens.to(model.device), hooks)
            shared = time.perf_counter() - started
            done = batch.context_ids[-1] + 1
            for t, out in zip(targets, outs, strict=True):
                if done <= t.state.contexts_done:
                    continue
                started = time.perf_counter()
                workspace = scratch[: rows * t.sae.cfg.d_sae].view(rows, t.sae.cfg.d_sae)
                resid = resids[t.sae.cfg.hook_name]
                counted, ratio = counted_tokens(resid, lengths, cfg)
                encoded = encode_resid(
                    t.sae, batch, resid, counted, ratio, cfg, workspace, t.state.contexts_done
                )
                out.append(done, *encoded, shared + time.perf_counter() - started)
            if time.perf_counter() - last_commit >= cfg.commit_interval_s:
                for out in outs:
                    out.commit()
                last_commit = time.perf_counter()
            bar.advance(task, sum(len(t) for t in batch.token_ids))


def pass_one(
    writer: IndexWriter, model: LoadedModel, sae, sae_id: str, cfg, state, progress
) -> None:
    """The pass of one SAE over the contexts planned in `writer`'s file (a Ray shard's)."""
    target = _Target(None, None, sae, sae_id, None, {}, None, state, writer)  # type: ignore[arg-type]
    _pass([target], model, cfg, progress)


def _check_same_plan(targets: list[_Target]) -> None:
    """Runs sharing a pass must hold the same contexts (same corpus and settings make the same
    plan; this catches a file that somehow does not)."""
    plans = {t.sae_id: _plan_digest(t) for t in targets}
    if len(set(plans.values())) > 1:
        raise SaedexError(
            "SAEs in one pass planned different contexts "
            f"({', '.join(f'{k}: {v[0]} contexts' for k, v in plans.items())}); "
            "index them separately"
        )


def _plan_digest(t: _Target) -> tuple[int, int]:
    return t.writer.con.execute(
        "SELECT count(*), coalesce(sum(hash(context_id, token_ids)), 0) FROM contexts "
        "WHERE sae_id = ?",
        [t.sae_id],
    ).fetchone()


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
    return encode_resid(sae, batch, resid, counted, ratio, cfg, workspace)


@torch.inference_mode()
def encode_resid(
    sae: SparseAutoencoder,
    batch: Batch,
    resid: torch.Tensor,
    counted: torch.Tensor,
    ratio: torch.Tensor,
    cfg: IndexConfig,
    workspace: torch.Tensor | None = None,
    first_context: int = 0,
) -> tuple[pa.Table, pa.Table, int]:
    """`encode_batch` on activations already computed; contexts before `first_context` (held
    by a resumed run already) give nothing."""
    context_ids = torch.tensor(batch.context_ids, device=resid.device)
    wanted = (context_ids >= first_context)[:, None]
    counted = counted & wanted
    rows, features, values = sae.encode_sparse(resid[counted].to(sae.W_enc.dtype), workspace)
    ctx_rows, positions = counted.nonzero(as_tuple=True)
    acts = pa.table(
        {
            "context_id": pa.array(context_ids[ctx_rows[rows]].cpu().numpy(), pa.int32()),
            "position": pa.array(positions[rows].cpu().numpy(), pa.int16()),
            "feature": pa.array(features.cpu().numpy(), pa.int32()),
            "value": pa.array(values.float().cpu().numpy(), pa.float32()),
        }
    )
    sink_rows, sink_pos = (sinks(ratio, cfg) & wanted).nonzero(as_tuple=True)
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
    tokens, lengths = batch_tokens(model, batch)
    resid = forward_to_hook(model, tokens.to(model.device), hook_name)
    return (resid, *counted_tokens(resid, lengths, cfg))


def batch_tokens(model: LoadedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch as one padded [B, T] token tensor, and each context's length."""
    lengths = torch.tensor([len(t) for t in batch.token_ids])
    tokens = torch.full((len(lengths), int(lengths.max())), model.pad_token_id, dtype=torch.long)
    for row, ids in enumerate(batch.token_ids):
        tokens[row, : len(ids)] = torch.tensor(ids)
    return tokens, lengths


def counted_tokens(resid: torch.Tensor, lengths: torch.Tensor, cfg: IndexConfig):
    """(counted-token mask, norm ratio) of a batch's activations at one hook (see
    `hook_activations`)."""
    width = resid.shape[1]
    valid = torch.arange(width)[None, :] < lengths[:, None]
    if cfg.prepend_bos:
        valid[:, 0] = False
    valid = valid.to(resid.device)
    norms = resid.float().norm(dim=-1)
    median = norms.masked_fill(~valid, float("nan")).nanmedian(dim=1, keepdim=True).values
    ratio = (norms / median).masked_fill(~valid, 0.0).nan_to_num(0.0)
    return valid & ~sinks(ratio, cfg), ratio


def sinks(ratio: torch.Tensor, cfg: IndexConfig) -> torch.Tensor:
    """The attention sinks' mask: tokens past `sink_norm_multiple` times their context's median
    norm (`ratio` is 0 at BOS and padding); none when the multiple is 0 or less."""
    if cfg.sink_norm_multiple <= 0:
        return torch.zeros_like(ratio, dtype=torch.bool)
    return ratio > cfg.sink_norm_multiple
