"""Train a sparse autoencoder on one hook of a model: TopK (+ AuxK) or ReLU + L1.

Activations come from the indexer's own pass (`hook_activations`), so BOS, padding and
attention sinks are left out exactly as when indexing: the SAE trains on the tokens it will be
indexed on. Only the corpus's training split is read. Activations fill a buffer of
`buffer_tokens` rows (the memory bound), which is shuffled with a generator seeded by
(seed, chunk number) and consumed in minibatches; then the next chunk is read. When the corpus
(or its first `corpus_tokens`) ends, the next epoch cuts it into the same chunks again, which an
optional activation cache then serves from disk instead of running the model. A checkpoint
stores the step, the current chunk's corpus position and how many of its minibatches were used,
so a resumed run recomputes that one chunk and continues with the same weights an uninterrupted
run would have.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from saedex.config import TrainConfig
from saedex.errors import SaedexError
from saedex.indexer.corpus import (
    Context,
    CorpusStats,
    read_documents,
    resolve_corpus,
    tokenize_contexts,
)
from saedex.indexer.indexing import hook_activations
from saedex.indexer.model import (
    LoadedModel,
    load_model,
    model_config,
    resolve_dtype,
    validate_hook,
)
from saedex.indexer.sae import (
    CFG_FILE,
    SaeConfig,
    SparseAutoencoder,
    hook_layer,
    load_sae,
    save_sae,
)
from saedex.progress import progress_bar
from saedex.store.writer import Batch

log = logging.getLogger("saedex.train")

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "checkpoint.pt"
REPORT_FILE = "report.json"
TRAIN, HELDOUT = "train", "heldout"
HELDOUT_EVERY = 10  # a corpus without a split column holds out every 10th context
DENSE_THRESHOLD = 0.1  # a latent firing on more than 10% of held-out tokens is "dense"
LR_DECAY_FRACTION = 0.2  # the learning rate falls linearly to 0 over the last 20% of steps
L1_WARMUP_FRACTION = 0.05  # the L1 coefficient ramps up over the first 5% of steps
MEDIAN_SAMPLE = 16_384  # activations used to initialise b_dec
# Settings a resumed run may change: they do not alter the trained weights.
RESUME_SAFE = {"checkpoint_every", "eval_tokens", "ce_eval_tokens"}


@dataclass(frozen=True)
class TrainJob:
    """What to train on and where to write it; `config` holds the hyper-parameters."""

    model: str
    hook: str
    corpus: str
    out: Path
    device: str | None = None
    save_dtype: str = "float32"
    activation_cache: Path | None = None  # keep chunks on disk: later epochs skip the model
    config: TrainConfig = field(default_factory=TrainConfig)

    def settings(self) -> dict:
        """Everything a checkpoint must agree with to be resumed."""
        cfg = {k: v for k, v in self.config.to_dict().items() if k not in RESUME_SAFE}
        return {"model": self.model, "hook": self.hook, "corpus": self.corpus, **cfg}


@dataclass(frozen=True)
class TrainReport:
    """Held-out quality of the saved SAE, and how it was trained."""

    fve: float  # fraction of variance explained, over all held-out counted tokens
    mean_l0: float
    dead_fraction: float  # never fired on the held-out tokens
    dense_fraction: float  # fired on more than `dense_threshold` of them
    dense_threshold: float
    ce_clean: float
    ce_with_sae: float
    ce_zero_ablated: float
    ce_loss_recovered: float
    eval_tokens: int
    ce_eval_tokens: int
    heldout: str  # how the held-out tokens were chosen
    train_tokens: int = 0
    train_steps: int = 0
    train_seconds: float = 0.0
    train_dead_fraction: float = 0.0  # silent for `dead_tokens` training tokens at the end
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"held-out ({self.eval_tokens:,} tokens): FVE {self.fve:.3f}, "
            f"L0 {self.mean_l0:.1f}, dead {self.dead_fraction:.2%}, "
            f"dense (>{self.dense_threshold:.0%}) {self.dense_fraction:.2%}; "
            f"CE loss recovered {self.ce_loss_recovered:.3f} ({self.ce_eval_tokens:,} tokens: "
            f"clean {self.ce_clean:.3f}, with SAE {self.ce_with_sae:.3f}, "
            f"zero-ablated {self.ce_zero_ablated:.3f})"
        )


@dataclass
class _State:
    """Everything a checkpoint restores."""

    sae: SparseAutoencoder
    optimizer: torch.optim.Optimizer
    since_fired: torch.Tensor  # training tokens since each latent last fired
    step: int = 0
    chunk: int = 0  # chunks begun, over all epochs: seeds each one's shuffle
    position: tuple[int, int, int] = (0, 0, 0)  # current chunk: (epoch, index in epoch, start)
    batches_done: int = 0  # minibatches of the current chunk already trained on
    earlier_seconds: float = 0.0  # wall time spent training in earlier sessions
    metrics: dict = field(default_factory=dict)
    session_start: float = field(default_factory=time.perf_counter)

    def train_seconds(self) -> float:
        """Wall time spent training (model passes included), over all sessions."""
        return self.earlier_seconds + time.perf_counter() - self.session_start


# ------------------------------------------------------------------------------- entry point


def train_sae(job: TrainJob, progress: bool = True, resume: bool = True) -> TrainReport:
    """Train (or resume, or just re-report) the SAE of `job`; writes it and report.json."""
    _validate(job)
    corpus_path = resolve_corpus(job.corpus)
    _check_hook_in_model(job.model, job.hook)
    if not resume:
        shutil.rmtree(job.out / CHECKPOINT_DIR, ignore_errors=True)
        (job.out / REPORT_FILE).unlink(missing_ok=True)
    checkpoint = _read_checkpoint(job)
    total_steps = job.config.total_tokens // job.config.batch_tokens
    report_path = job.out / REPORT_FILE
    if checkpoint and checkpoint["step"] >= total_steps and report_path.is_file():
        return TrainReport(**json.loads(report_path.read_text()))
    model = load_model(job.model, job.device, progress=progress)
    validate_hook(model, job.hook)
    state = _train(job, model, corpus_path, checkpoint, progress)
    facts = _training_facts(state, job.config)
    sae = load_sae(job.out, device=model.device)  # evaluate exactly what was written
    report = replace(evaluate(model, sae, corpus_path, job.config, progress), **facts)
    report_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _validate(job: TrainJob) -> None:
    """Cheap checks, before any corpus or model work (the settings checked themselves when
    the TrainConfig was built)."""
    resolve_dtype(job.save_dtype)
    hook_layer(job.hook)
    if (job.out / CFG_FILE).is_file() and not (job.out / CHECKPOINT_DIR).is_dir():
        raise SaedexError(f"{job.out} already holds an SAE this trainer did not make there")


def _check_hook_in_model(model_spec: str, hook: str) -> None:
    """A layer past the model's end fails before the weights load."""
    n_layers = getattr(model_config(model_spec), "num_hidden_layers", None)
    if n_layers is not None and hook_layer(hook) >= n_layers:
        raise SaedexError(f"unknown hook {hook!r}: model {model_spec!r} has {n_layers} layers")


# ---------------------------------------------------------------------------------- corpus


def split_contexts(
    model: LoadedModel, corpus_path: Path, split: str, cfg: TrainConfig
) -> Iterator[Context]:
    """The contexts of one split: the corpus's own `split` column where every row has one,
    otherwise every HELDOUT_EVERY-th context is held out."""
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    split_rows = _has_split_column(corpus_path)
    docs = read_documents(corpus_path, CorpusStats(), split=split if split_rows else None)
    contexts = tokenize_contexts(
        docs, model.tokenizer, cfg.context_size, cfg.prepend_bos, model.bos_token_id
    )
    for ctx in contexts:
        if split_rows or _is_heldout(ctx.context_id) == (split == HELDOUT):
            yield ctx


def _has_split_column(corpus_path: Path) -> bool:
    """True when no document lacks a split (read_documents keeps split-less rows in any split)."""
    probe = read_documents(corpus_path, CorpusStats(), split="\0no split")
    return next(probe, None) is None


def _is_heldout(context_id: int) -> bool:
    return context_id % HELDOUT_EVERY == HELDOUT_EVERY - 1


def _counted_activations(model: LoadedModel, contexts: list[Context], hook: str, cfg):
    """Hook activations of the tokens the indexer counts (no BOS, padding or sinks): [N, d]."""
    batch = Batch([c.context_id for c in contexts], [c.token_ids for c in contexts])
    with torch.no_grad():
        resid, counted, _ = hook_activations(model, batch, hook, cfg)
    if resid.ndim != 3 or resid.shape[-1] != model.d_model:
        raise SaedexError(
            f"hook {hook!r} gives activations of shape {tuple(resid.shape)}; "
            f"only [batch, position, d_model={model.d_model}] hooks are supported"
        )
    return resid[counted].float()


@dataclass(frozen=True)
class _Chunk:
    acts: torch.Tensor  # [N, d] counted-token activations, in corpus order
    end: int  # the training context the next chunk starts at
    last: bool  # the epoch ends with this chunk


class _ChunkSource:
    """Chunk j of every epoch: training contexts from a start offset until `buffer_tokens`
    counted tokens (or the epoch's end). Every epoch cuts the corpus the same way, so with an
    activation cache, chunks are computed once and later epochs load them from disk."""

    def __init__(self, model: LoadedModel, corpus_path: Path, job: TrainJob):
        self.model, self.corpus_path, self.hook, self.cfg = model, corpus_path, job.hook, job.config
        self.cache = job.activation_cache
        self._live: tuple[int, Iterator[Context]] | None = None  # (next offset, contexts)
        if self.cache is not None:
            _claim_cache(self.cache, job)

    def get(self, index: int, start: int) -> _Chunk:
        path = self.cache / f"chunk-{index:05d}.pt" if self.cache else None
        if path is not None and path.is_file():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            return _Chunk(stored["acts"].float(), stored["end"], stored["last"])
        chunk = self._compute(start)
        if path is None:
            return chunk
        half = chunk.acts.half()
        acts = half if torch.isfinite(half).all() else chunk.acts  # float16 unless it overflows
        _atomic_save({"acts": acts, "end": chunk.end, "last": chunk.last}, path)
        return replace(chunk, acts=acts.float())  # train on what later epochs will read

    def _compute(self, start: int) -> _Chunk:
        contexts = self._contexts_from(start)
        parts, n, end = [], 0, start
        while n < self.cfg.buffer_tokens:
            batch = list(itertools.islice(contexts, self.cfg.model_batch_size))
            if not batch:
                break
            end += len(batch)
            parts.append(_counted_activations(self.model, batch, self.hook, self.cfg))
            n += len(parts[-1])
        self._live = (end, contexts)
        acts = torch.cat(parts) if parts else torch.empty(0, self.model.d_model)
        return _Chunk(acts, end, n < self.cfg.buffer_tokens)

    def _contexts_from(self, start: int) -> Iterator[Context]:
        """Continue the running pass, or start one (re-tokenising the contexts skipped)."""
        if self._live is not None and self._live[0] == start:
            return self._live[1]
        return itertools.islice(self._epoch(), start, None)

    def _epoch(self) -> Iterator[Context]:
        """One pass over the training split, cut after `corpus_tokens` tokens when set."""
        cap, tokens = self.cfg.corpus_tokens, 0
        for ctx in split_contexts(self.model, self.corpus_path, TRAIN, self.cfg):
            if cap is not None and tokens >= cap:
                return
            tokens += len(ctx.token_ids)
            yield ctx


def _claim_cache(cache: Path, job: TrainJob) -> None:
    """An activation cache serves one (model, hook, corpus, cutting) only."""
    keys = ("context_size", "prepend_bos", "sink_norm_multiple", "model_batch_size")
    keys += ("buffer_tokens", "corpus_tokens")
    cfg = job.config.to_dict()
    signature = {"model": job.model, "hook": job.hook, "corpus": job.corpus}
    signature |= {k: cfg[k] for k in keys}
    path = cache / "signature.json"
    if path.is_file() and json.loads(path.read_text()) != signature:
        raise SaedexError(f"activation cache {cache} was made for other settings; use another")
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(signature, indent=2) + "\n")


def _atomic_save(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------- model


def _sae_config(job: TrainJob, model: LoadedModel, d_in: int) -> SaeConfig:
    cfg = job.config
    return SaeConfig(
        architecture=cfg.architecture,
        d_in=d_in,
        d_sae=cfg.d_sae,
        hook_name=job.hook,
        model_name=model.name,
        k=cfg.k if cfg.architecture == "topk" else None,
        apply_b_dec_to_input=True,
        prepend_bos=cfg.prepend_bos,
        context_size=cfg.context_size,
    )


def _initial_weights(d_in: int, cfg: TrainConfig, sample: torch.Tensor) -> dict:
    """Unit-norm random decoder rows, W_enc = W_dec.T, b_dec = geometric median of a sample.

    With ReLU about half the latents fire at first and their projections add up to about
    d_sae / (2 d_in) times the input, so the standard encoder starts scaled down by that factor.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    w_dec = torch.randn(cfg.d_sae, d_in, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    scale = 1.0 if cfg.architecture == "topk" else min(1.0, 2 * d_in / cfg.d_sae)
    return {
        "W_enc": w_dec.T * scale,
        "b_enc": torch.zeros(cfg.d_sae),
        "W_dec": w_dec,
        "b_dec": geometric_median(sample),
    }


def geometric_median(points: torch.Tensor, iters: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Weiszfeld's algorithm: a centre that the few huge-norm tokens cannot drag around."""
    points = points.double()
    median = points.mean(dim=0)
    for _ in range(iters):
        weights = 1 / (points - median).norm(dim=1).clamp_min(1e-8)
        new = (weights[:, None] * points).sum(dim=0) / weights.sum()
        moved = (new - median).norm()
        median = new
        if moved <= tol * median.norm():
            break
    return median.float()


def _optimizer(sae: SparseAutoencoder, lr: float) -> torch.optim.Optimizer:
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    fused = sae.W_enc.device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=fused or None)


def _forward(sae: SparseAutoencoder, x: torch.Tensor):
    """Pre-activations, activations and reconstruction (sae.encode without recomputing pre)."""
    pre = sae.pre_acts(x)
    if sae.cfg.architecture == "topk":
        values, indices = pre.topk(sae.cfg.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    else:
        acts = pre.relu()
    return pre, acts, sae.decode(acts)


def _loss(sae, x: torch.Tensor, dead: torch.Tensor, cfg: TrainConfig, l1_scale: float):
    """Normalised MSE plus AuxK (topk) or a scale-free L1 penalty (standard).

    Dividing by the batch's variance makes the loss (and so lr and the L1 coefficient) the same
    for any activation scale; it is 1 - FVE on the batch.
    """
    pre, acts, recon = _forward(sae, x)
    variance = (x - x.mean(dim=0)).pow(2).sum()
    error = x - recon
    nmse = error.pow(2).sum() / variance
    if sae.cfg.architecture == "topk":
        extra = cfg.aux_coefficient * _auxk_loss(sae, pre, error.detach(), dead, cfg, variance)
    else:
        rms_norm = (variance / len(x)).sqrt()
        extra = cfg.l1_coefficient * l1_scale * acts.sum(dim=-1).mean() / rms_norm
    return nmse + extra, nmse, acts


def _auxk_loss(sae, pre, error, dead, cfg: TrainConfig, variance) -> torch.Tensor:
    """Gao et al. 2024: the top `aux_k` dead latents reconstruct what the live ones missed."""
    dead_ids = dead.nonzero().squeeze(1)
    if len(dead_ids) == 0:
        return pre.new_zeros(())
    pre_dead = pre[:, dead_ids]
    values, indices = pre_dead.topk(min(cfg.aux_k, len(dead_ids)), dim=-1)
    acts = torch.zeros_like(pre_dead).scatter(-1, indices, values.relu())
    return (acts @ sae.W_dec[dead_ids] - error).pow(2).sum() / variance


# -------------------------------------------------------------------------------- training


def _train(job: TrainJob, model: LoadedModel, corpus_path: Path, checkpoint, progress):
    """Run the steps left, checkpointing; writes the final SAE to job.out; returns the state."""
    cfg = job.config
    total_steps = cfg.total_tokens // cfg.batch_tokens
    state = _restore(job, model, checkpoint) if checkpoint else None
    chunks = _ChunkSource(model, corpus_path, job)
    with progress_bar("tok", progress) as bar:
        task = bar.add_task("training", total=total_steps * cfg.batch_tokens)
        bar.update(task, completed=(state.step if state else 0) * cfg.batch_tokens)
        while state is None or state.step < total_steps:
            epoch, index, start = state.position if state else (0, 0, 0)
            bar.update(task, description="reading activations")
            chunk = chunks.get(index, start)
            _check_enough(chunk, index, corpus_path, cfg)
            state = state or _fresh_state(job, model, chunk.acts)
            _train_chunk(job, state, chunk.acts, total_steps, lambda s: _tick(bar, task, s, cfg))
            if state.batches_done == len(chunk.acts) // cfg.batch_tokens:
                state.chunk, state.batches_done = state.chunk + 1, 0
                state.position = (epoch + 1, 0, 0) if chunk.last else (epoch, index + 1, chunk.end)
    _write_sae(job, state)
    return state


def _check_enough(chunk: _Chunk, index: int, corpus_path: Path, cfg: TrainConfig) -> None:
    """An epoch shorter than one batch would loop forever."""
    if index == 0 and chunk.last and len(chunk.acts) < cfg.batch_tokens:
        if len(chunk.acts) == 0:
            raise SaedexError(f"corpus {corpus_path} has no training text")
        raise SaedexError(
            f"corpus {corpus_path} has {len(chunk.acts):,} training tokens, "
            f"fewer than one batch ({cfg.batch_tokens:,})"
        )


def _tick(bar, task, state: _State, cfg: TrainConfig) -> None:
    m = state.metrics
    bar.update(
        task,
        advance=cfg.batch_tokens,
        description=f"training loss {m['loss']:.4f} L0 {m['l0']:.1f} dead {m['dead']:.1%}",
    )


def _fresh_state(job: TrainJob, model: LoadedModel, buffer: torch.Tensor) -> _State:
    cfg = job.config
    sample = buffer[_permutation(cfg.seed, 0, len(buffer))[:MEDIAN_SAMPLE]]
    weights = _initial_weights(buffer.shape[1], cfg, sample)
    sae = SparseAutoencoder(_sae_config(job, model, buffer.shape[1]), weights).to(model.device)
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=model.device)
    return _State(sae, _optimizer(sae, cfg.lr), since_fired)


def _permutation(seed: int, chunk: int, n: int) -> torch.Tensor:
    """The shuffle of one chunk: a function of (seed, chunk) only, so a resume repeats it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + chunk)
    return torch.randperm(n, generator=gen)


def _train_chunk(job: TrainJob, state: _State, buffer, total_steps: int, on_step) -> None:
    """Train on this chunk's shuffled minibatches, from the first one not yet used."""
    cfg = job.config
    order = _permutation(cfg.seed, state.chunk, len(buffer)).to(buffer.device)
    n_batches = len(buffer) // cfg.batch_tokens
    device = state.sae.W_enc.device
    while state.batches_done < n_batches and state.step < total_steps:
        start = state.batches_done * cfg.batch_tokens
        x = buffer[order[start : start + cfg.batch_tokens]].to(device)
        _train_step(state, x, cfg, total_steps)
        state.batches_done += 1
        on_step(state)
        if state.step % cfg.checkpoint_every == 0 or state.step == total_steps:
            _save_checkpoint(job, state)
            log.info("step %d/%d %s", state.step, total_steps, _fmt(state.metrics))


def _train_step(state: _State, x: torch.Tensor, cfg: TrainConfig, total_steps: int) -> None:
    sae, opt = state.sae, state.optimizer
    dead = state.since_fired >= cfg.dead_tokens
    l1_scale = min(1.0, (state.step + 1) / max(1, L1_WARMUP_FRACTION * total_steps))
    loss, nmse, acts = _loss(sae, x, dead, cfg, l1_scale)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    _project_decoder_grad(sae.W_dec)
    for group in opt.param_groups:
        group["lr"] = cfg.lr * _lr_factor(state.step, total_steps)
    opt.step()
    with torch.no_grad():
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        fired = (acts > 0).any(dim=0)
        state.since_fired += len(x)
        state.since_fired[fired] = 0
    state.step += 1
    state.metrics = {
        "loss": float(loss.detach()),
        "fve": 1 - float(nmse.detach()),
        "l0": float((acts > 0).sum(dim=-1).float().mean()),
        "dead": float(dead.float().mean()),
    }


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def _project_decoder_grad(w_dec: torch.nn.Parameter) -> None:
    """Drop the gradient's component along each (unit) decoder row: it would only change the
    row's norm, which the renormalisation after the step undoes anyway."""
    if w_dec.grad is not None:
        w_dec.grad -= (w_dec.grad * w_dec.data).sum(dim=1, keepdim=True) * w_dec.data


def _lr_factor(step: int, total_steps: int) -> float:
    decay_steps = max(1, int(LR_DECAY_FRACTION * total_steps))
    return min(1.0, (total_steps - step) / decay_steps)


def _write_sae(job: TrainJob, state: _State) -> None:
    sae = state.sae
    weights = {name: getattr(sae, name) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    training = {**job.config.to_dict(), "corpus": job.corpus, "steps": state.step}
    save_sae(
        job.out,
        weights,
        sae.cfg,
        dtype=resolve_dtype(job.save_dtype),
        extra_metadata={"dataset_path": job.corpus, "saedex_training": training},
    )


def _training_facts(state: _State, cfg: TrainConfig) -> dict:
    return {
        "train_tokens": state.step * cfg.batch_tokens,
        "train_steps": state.step,
        "train_seconds": round(state.train_seconds(), 1),
        "train_dead_fraction": float((state.since_fired >= cfg.dead_tokens).float().mean()),
        "seed": cfg.seed,
    }


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_path(job: TrainJob) -> Path:
    return job.out / CHECKPOINT_DIR / CHECKPOINT_FILE


def _save_checkpoint(job: TrainJob, state: _State) -> None:
    """Weights, optimizer, counters, corpus position and RNG, written atomically."""
    payload = {
        "settings": job.settings(),
        "d_in": state.sae.cfg.d_in,
        "weights": {k: v.detach().cpu() for k, v in state.sae.state_dict().items()},
        "optimizer": state.optimizer.state_dict(),
        "since_fired": state.since_fired.cpu(),
        "step": state.step,
        "chunk": state.chunk,
        "position": list(state.position),
        "batches_done": state.batches_done,
        "train_seconds": state.train_seconds(),
        "metrics": state.metrics,
        "rng": torch.get_rng_state(),
    }
    _atomic_save(payload, _checkpoint_path(job))


def _read_checkpoint(job: TrainJob) -> dict | None:
    path = _checkpoint_path(job)
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise SaedexError(
            f"checkpoint is unreadable: {path} ({exc}); rerun with --no-resume"
        ) from exc
    stored, mine = checkpoint["settings"], job.settings()
    changed = sorted(k for k in mine if stored.get(k) != mine[k])
    if changed:
        raise SaedexError(
            f"{job.out} holds a run with other settings ({', '.join(changed)}); "
            "pass --no-resume to start over or choose another --out"
        )
    return checkpoint


def _restore(job: TrainJob, model: LoadedModel, checkpoint: dict) -> _State:
    if checkpoint["d_in"] != model.d_model:
        raise SaedexError(
            f"checkpoint has d_in {checkpoint['d_in']} but model {job.model!r} has d_model "
            f"{model.d_model}"
        )
    weights = checkpoint["weights"]
    sae = SparseAutoencoder(_sae_config(job, model, checkpoint["d_in"]), weights)
    sae.to(model.device)
    optimizer = _optimizer(sae, job.config.lr)
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng"])
    return _State(
        sae,
        optimizer,
        checkpoint["since_fired"].to(model.device),
        step=checkpoint["step"],
        chunk=checkpoint["chunk"],
        position=tuple(checkpoint["position"]),
        batches_done=checkpoint["batches_done"],
        earlier_seconds=checkpoint["train_seconds"],
        metrics=checkpoint["metrics"],
    )


# ------------------------------------------------------------------------------ evaluation


@dataclass
class _EvalSums:
    """Running sums over held-out tokens (float64 where cancellation would hurt)."""

    fires: torch.Tensor
    tokens: int = 0
    error_sq: float = 0.0
    sum_sq: float = 0.0
    total: torch.Tensor | None = None
    active: int = 0
    ce_tokens: int = 0
    ce: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # clean, SAE, zero

    def add(self, x: torch.Tensor, acts: torch.Tensor, recon: torch.Tensor) -> None:
        x64 = x.double()
        self.tokens += len(x)
        self.error_sq += float((x64 - recon.double()).pow(2).sum())
        self.sum_sq += float(x64.pow(2).sum())
        total = x64.sum(dim=0)
        self.total = total if self.total is None else self.total + total
        active = acts > 0
        self.active += int(active.sum())
        self.fires += active.sum(dim=0)

    def fve(self) -> float:
        variance = self.sum_sq - float(self.total.pow(2).sum()) / self.tokens
        return 1 - self.error_sq / variance


@torch.no_grad()
def evaluate(
    model: LoadedModel, sae: SparseAutoencoder, corpus_path: Path, cfg: TrainConfig, progress=True
) -> TrainReport:
    """Reconstruction, sparsity and CE loss recovered on up to `eval_tokens` held-out tokens.

    CE runs (clean, SAE spliced in, zero-ablated) cover the first `ce_eval_tokens` of them. The
    splice and the ablation touch only counted tokens: BOS and attention sinks keep their own
    activations, as the SAE is neither trained nor indexed on them; the loss is scored on the
    next-token predictions made at counted positions, in all three runs.
    """
    sums = _EvalSums(fires=torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=model.device))
    contexts = split_contexts(model, corpus_path, HELDOUT, cfg)
    with progress_bar("tok", progress) as bar:
        task = bar.add_task("evaluating on held-out", total=cfg.eval_tokens)
        for chunk in _batched(contexts, cfg.model_batch_size):
            if sums.tokens >= cfg.eval_tokens:
                break
            before = sums.tokens
            _evaluate_batch(model, sae, chunk, cfg, sums)
            bar.advance(task, sums.tokens - before)
    if sums.tokens == 0:
        raise SaedexError(f"corpus {corpus_path} has no held-out text to evaluate on")
    return _report(sums, corpus_path)


def _batched(items: Iterator, n: int) -> Iterator[list]:
    while chunk := list(itertools.islice(items, n)):
        yield chunk


def _evaluate_batch(model, sae, contexts: list[Context], cfg: TrainConfig, sums: _EvalSums):
    batch = Batch([c.context_id for c in contexts], [c.token_ids for c in contexts])
    resid, counted, _ = hook_activations(model, batch, sae.cfg.hook_name, cfg)
    x = resid[counted].float()
    acts = sae.encode(x)
    sums.add(x, acts, sae.decode(acts))
    if sums.ce_tokens < cfg.ce_eval_tokens:
        tokens = _padded(batch.token_ids, model.pad_token_id).to(model.device)
        losses, n = _ce_losses(model, sae, tokens, batch.token_ids, counted)
        sums.ce = [total + loss for total, loss in zip(sums.ce, losses, strict=True)]
        sums.ce_tokens += n


def _padded(token_ids: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max(len(t) for t in token_ids)
    return torch.tensor([t + [pad_id] * (width - len(t)) for t in token_ids])


def _ce_losses(model, sae, tokens, token_ids, counted) -> tuple[list[float], int]:
    """Summed next-token CE (clean, SAE spliced in, zero-ablated) at counted positions."""
    lengths = torch.tensor([len(t) for t in token_ids], device=tokens.device)
    has_target = torch.arange(1, tokens.shape[1], device=tokens.device)[None] < lengths[:, None]
    scored = counted[:, :-1] & has_target
    targets = tokens[:, 1:][scored]
    mask = counted[..., None]

    def splice(act, hook):
        return torch.where(mask, sae(act.float()).to(act.dtype), act)

    def zero(act, hook):
        return act.masked_fill(mask, 0)

    losses = []
    for hooks in ([], [(sae.cfg.hook_name, splice)], [(sae.cfg.hook_name, zero)]):
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        losses.append(
            float(F.cross_entropy(logits[:, :-1][scored].float(), targets, reduction="sum"))
        )
    return losses, int(scored.sum())


def _report(sums: _EvalSums, corpus_path: Path) -> TrainReport:
    clean, spliced, zero = (total / max(1, sums.ce_tokens) for total in sums.ce)
    density = sums.fires.double() / sums.tokens
    return TrainReport(
        fve=sums.fve(),
        mean_l0=sums.active / sums.tokens,
        dead_fraction=float((sums.fires == 0).double().mean()),
        dense_fraction=float((density > DENSE_THRESHOLD).double().mean()),
        dense_threshold=DENSE_THRESHOLD,
        ce_clean=clean,
        ce_with_sae=spliced,
        ce_zero_ablated=zero,
        ce_loss_recovered=(zero - spliced) / (zero - clean) if zero != clean else math.nan,
        eval_tokens=sums.tokens,
        ce_eval_tokens=sums.ce_tokens,
        heldout=_heldout_rule(corpus_path),
    )


def _heldout_rule(corpus_path: Path) -> str:
    if _has_split_column(corpus_path):
        return "documents whose split column is 'heldout'"
    return f"every {HELDOUT_EVERY}th context (the corpus has no split column)"
