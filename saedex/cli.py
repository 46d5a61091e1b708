"""The `saedex` command: a thin layer over the indexer, trainer, API and site exporter."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from saedex.config import IndexConfig
from saedex.errors import SaedexError

app = typer.Typer(
    help="saedex: index SAE features into DuckDB, serve them over GraphQL, publish a site.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
corpus_app = typer.Typer(help="The default corpus.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
console = Console(stderr=True)

_DEFAULTS = IndexConfig()


def user_errors(fn):
    """Print a SaedexError as one line and exit 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SaedexError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            console.print("interrupted: run the same command again to resume")
            sys.exit(130)

    return wrapper


@app.command()
@user_errors
def index(
    db: Annotated[Path, typer.Option(help="DuckDB index file (created if missing).")],
    model: Annotated[
        str, typer.Option(help='"default", a local HF model directory, or a model name.')
    ] = "default",
    sae: Annotated[
        str, typer.Option(help='"default" or an SAE directory in SAELens format.')
    ] = "default",
    corpus: Annotated[
        str,
        typer.Option(help='"default", a text file, a directory, JSONL (text field) or Parquet.'),
    ] = "default",
    sae_id: Annotated[
        str | None, typer.Option(help="Name of this index in the file [default: SAE dir name].")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda, cpu, ... [default: cuda if present].")
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")] = None,
    context_size: Annotated[int, typer.Option(help="Tokens per context.")] = _DEFAULTS.context_size,
    bos: Annotated[
        bool, typer.Option(help="Prepend BOS to every context.")
    ] = _DEFAULTS.prepend_bos,
    batch_size: Annotated[
        int, typer.Option(help="Contexts per model batch.")
    ] = _DEFAULTS.batch_size,
    commit_interval: Annotated[
        float, typer.Option(help="Seconds between commits during the pass (a kill loses less).")
    ] = _DEFAULTS.commit_interval_s,
    top_k: Annotated[int, typer.Option(help="Top examples per feature.")] = _DEFAULTS.top_k,
    n_intervals: Annotated[
        int, typer.Option(help="Equal-width activation intervals.")
    ] = _DEFAULTS.n_intervals,
    examples_per_interval: Annotated[int, typer.Option()] = _DEFAULTS.examples_per_interval,
    n_neighbours: Annotated[
        int, typer.Option(help="Nearest neighbours kept per feature.")
    ] = _DEFAULTS.n_neighbours,
    sink_norm_multiple: Annotated[
        float,
        typer.Option(help="Skip tokens whose norm exceeds this x their context median (0: off)."),
    ] = _DEFAULTS.sink_norm_multiple,
    max_documents: Annotated[
        int | None, typer.Option(help="Index only the first N documents.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Stop after about N corpus tokens.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for interval sampling.")] = _DEFAULTS.seed,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing index of this SAE id.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Run a model and an SAE over a corpus once and store every feature's dashboard data.

    Resumable: if interrupted, run the same command again.
    """
    from saedex.indexer.indexing import IndexJob, run_index
    from saedex.memory import keep_freed_memory

    cfg = IndexConfig(
        context_size=context_size,
        prepend_bos=bos,
        batch_size=batch_size,
        commit_interval_s=commit_interval,
        top_k=top_k,
        n_intervals=n_intervals,
        examples_per_interval=examples_per_interval,
        n_neighbours=n_neighbours,
        sink_norm_multiple=sink_norm_multiple,
        max_documents=max_documents,
        max_tokens=max_tokens,
        seed=seed,
    )
    job = IndexJob(model, sae, corpus, db, sae_id, device, dtype, overwrite, cfg)
    keep_freed_memory()
    info = run_index(job, progress=not quiet)
    console.print(
        f"indexed [bold]{info.id}[/]: {info.n_tokens:,} tokens, {info.n_contexts:,} contexts, "
        f"{info.d_sae:,} features ({info.dead_features:,} dead) in {info.duration_s:.1f}s -> {db}"
    )


@app.command()
@user_errors
def info(db: Annotated[Path, typer.Option(help="DuckDB index file.")]):
    """List the SAEs indexed in a file."""
    from saedex.store import IndexReader

    with IndexReader(db) as reader:
        for sae in reader.saes():
            typer.echo(
                f"{sae.id}\t{sae.status}\t{sae.model_name}\t{sae.hook_name}\t"
                f"d_sae={sae.d_sae}\ttokens={sae.n_tokens}\tdead={sae.dead_features}"
            )


@corpus_app.command("build")
@user_errors
def corpus_build(
    out: Annotated[
        Path | None, typer.Option(help="Parquet file to write [default: the user cache].")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Build the default corpus from real text that pip packages ship (deterministic)."""
    from saedex.indexer.default_corpus import build_default_corpus, corpus_stats

    path = build_default_corpus(out, progress=not quiet)
    console.print(f"wrote {path}")
    console.print(corpus_stats(path))


# -- train-sae (saedex.indexer.training) --

from saedex.config import TrainConfig  # noqa: E402 (this section's own import)

_TRAIN = TrainConfig()


@app.command("train-sae")
@user_errors
def train_sae(
    out: Annotated[Path, typer.Option(help="Directory for the SAE, checkpoints and report.")],
    hook: Annotated[str, typer.Option(help="Hook to train on, e.g. blocks.6.hook_resid_post.")],
    model: Annotated[
        str, typer.Option(help='"default", a local HF model directory, or a model name.')
    ] = "default",
    corpus: Annotated[
        str, typer.Option(help='"default", a text file, a directory, JSONL or Parquet.')
    ] = "default",
    architecture: Annotated[
        str, typer.Option(help="topk (with AuxK) or standard (ReLU + L1).")
    ] = _TRAIN.architecture,
    d_sae: Annotated[int, typer.Option(help="Number of latents.")] = _TRAIN.d_sae,
    k: Annotated[int, typer.Option(help="Active latents per token (topk).")] = _TRAIN.k,
    l1_coefficient: Annotated[
        float, typer.Option(help="L1 penalty, in units of the data's norm (standard).")
    ] = _TRAIN.l1_coefficient,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = _TRAIN.lr,
    total_tokens: Annotated[
        int, typer.Option(help="Training tokens (the corpus repeats if shorter).")
    ] = _TRAIN.total_tokens,
    corpus_tokens: Annotated[
        int | None,
        typer.Option(help="Use only the first N training tokens (epochs repeat them)."),
    ] = _TRAIN.corpus_tokens,
    activation_cache: Annotated[
        Path | None,
        typer.Option(help="Keep activations here (fp16) so later epochs skip the model."),
    ] = None,
    batch_tokens: Annotated[int, typer.Option(help="Tokens per SAE step.")] = _TRAIN.batch_tokens,
    buffer_tokens: Annotated[
        int, typer.Option(help="Shuffling buffer size in tokens (bounds memory).")
    ] = _TRAIN.buffer_tokens,
    model_batch_size: Annotated[
        int, typer.Option(help="Contexts per model batch.")
    ] = _TRAIN.model_batch_size,
    context_size: Annotated[int, typer.Option(help="Tokens per context.")] = _TRAIN.context_size,
    bos: Annotated[bool, typer.Option(help="Prepend BOS to every context.")] = _TRAIN.prepend_bos,
    sink_norm_multiple: Annotated[
        float,
        typer.Option(help="Skip tokens whose norm exceeds this x their context median (0: off)."),
    ] = _TRAIN.sink_norm_multiple,
    aux_k: Annotated[int, typer.Option(help="Dead latents used by AuxK.")] = _TRAIN.aux_k,
    aux_coefficient: Annotated[
        float, typer.Option(help="Weight of the AuxK loss.")
    ] = _TRAIN.aux_coefficient,
    dead_tokens: Annotated[
        int, typer.Option(help="A latent silent this many tokens is dead (AuxK).")
    ] = _TRAIN.dead_tokens,
    checkpoint_every: Annotated[
        int, typer.Option(help="Steps between checkpoints.")
    ] = _TRAIN.checkpoint_every,
    eval_tokens: Annotated[
        int, typer.Option(help="Held-out tokens for the report.")
    ] = _TRAIN.eval_tokens,
    ce_eval_tokens: Annotated[
        int, typer.Option(help="Held-out tokens for CE loss recovered (3 full forwards).")
    ] = _TRAIN.ce_eval_tokens,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and shuffling.")] = _TRAIN.seed,
    device: Annotated[
        str | None, typer.Option(help="cuda, cpu, ... [default: cuda if present].")
    ] = None,
    save_dtype: Annotated[
        str, typer.Option(help="Weights dtype on disk: float32, bfloat16 or float16.")
    ] = "float32",
    resume: Annotated[
        bool, typer.Option(help="Continue from OUT/checkpoints if present (else start over).")
    ] = True,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Train a TopK or ReLU SAE on a model hook; writes SAELens format and a held-out report.

    Resumable: if interrupted, run the same command again.
    """
    from saedex.indexer.training import TrainJob
    from saedex.indexer.training import train_sae as run_training

    cfg = TrainConfig(
        architecture=architecture,
        d_sae=d_sae,
        k=k,
        l1_coefficient=l1_coefficient,
        lr=lr,
        batch_tokens=batch_tokens,
        total_tokens=total_tokens,
        corpus_tokens=corpus_tokens,
        context_size=context_size,
        prepend_bos=bos,
        model_batch_size=model_batch_size,
        buffer_tokens=buffer_tokens,
        aux_k=aux_k,
        aux_coefficient=aux_coefficient,
        dead_tokens=dead_tokens,
        sink_norm_multiple=sink_norm_multiple,
        checkpoint_every=checkpoint_every,
        eval_tokens=eval_tokens,
        ce_eval_tokens=ce_eval_tokens,
        seed=seed,
    )
    job = TrainJob(model, hook, corpus, out, device, save_dtype, activation_cache, cfg)
    report = run_training(job, progress=not quiet, resume=resume)
    console.print(f"SAE in {out}; {report.summary()}", highlight=False)


# -- serve (saedex.api) --

from saedex.config import ServeConfig  # noqa: E402 (this section's own import)

_SERVE = ServeConfig()


@app.command()
@user_errors
def serve(
    db: Annotated[Path, typer.Option(help="DuckDB index file (opened read-only).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = _SERVE.host,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = _SERVE.port,
    inference: Annotated[
        bool,
        typer.Option(help="Allow live activeFeatures (loads the model on first use)."),
    ] = _SERVE.inference,
    device: Annotated[
        str | None, typer.Option(help="Device for live inference (default: cuda if present).")
    ] = None,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="An origin allowed by CORS (repeatable; * for any).")
    ] = None,
    max_text_chars: Annotated[
        int, typer.Option(help="Longest text activeFeatures accepts.")
    ] = _SERVE.max_text_chars,
    max_page_size: Annotated[
        int, typer.Option(help="Largest `first` a query may ask for.")
    ] = _SERVE.max_page_size,
    max_query_depth: Annotated[
        int, typer.Option(help="Deepest GraphQL query accepted.")
    ] = _SERVE.max_query_depth,
    threads: Annotated[
        int | None,
        typer.Option(help="Torch threads for live inference (1 is steadiest on a busy machine)."),
    ] = None,
):
    """Serve an index: GraphQL (GraphiQL) at /graphql, REST under /api/ (see docs/api.md)."""
    from saedex.api.app import serve as run_server

    config = ServeConfig(
        host=host,
        port=port,
        max_page_size=max_page_size,
        max_query_depth=max_query_depth,
        max_text_chars=max_text_chars,
        inference=inference,
        device=device,
        cors_origins=tuple(cors_origin or ()),
    )
    console.print(f"serving {db} on http://{host}:{port}/graphql (REST: /api/)")
    run_server(db, config, threads)


# -- export-site (saedex.site) --


@app.command("export-site")
@user_errors
def export_site_command(
    db: Annotated[Path, typer.Option(help="DuckDB index file.")],
    out: Annotated[Path, typer.Option(help="Folder for the MkDocs project.")],
    sae: Annotated[
        list[str] | None,
        typer.Option(help="SAE id in the index, repeatable [default: every finished SAE]."),
    ] = None,
    build: Annotated[bool, typer.Option(help="Also run `mkdocs build` into OUT/site.")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Processes rendering pages [default: CPU count].")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Export an index's SAEs as one static MkDocs Material site: a home listing them, and per
    SAE its listings, feature pages and search.

    Re-running rewrites only the files whose content changed.
    """
    from dataclasses import replace

    from saedex.config import SiteConfig
    from saedex.site.export import SiteJob, export_site

    cfg = SiteConfig() if workers is None else replace(SiteConfig(), workers=max(1, workers))
    result = export_site(SiteJob(db, tuple(sae or ()), out, cfg, build), progress=not quiet)
    console.print(
        f"exported {len(result.saes)} SAE(s), {result.pages:,} pages ({result.written:,} files "
        f"written, {result.removed:,} removed) in {result.export_s:.1f}s -> {result.project}"
    )
    if result.site_dir is not None:
        console.print(
            f"built in {result.build_s:.1f}s -> {result.site_dir / 'index.html'} "
            "(open it directly, or serve the folder from any path)"
        )


# -- show (saedex.show) --


@app.command()
@user_errors
def show(
    db: Annotated[Path, typer.Option(help="Index file.")],
    sae: Annotated[str, typer.Option(help="SAE id in the index (see `saedex info`).")],
    feature: Annotated[int, typer.Option(help="Feature index.")],
    example: Annotated[int, typer.Option(help="Which top example (1 = the strongest).")] = 1,
    window: Annotated[
        int, typer.Option(help="Document tokens shown either side of the example's max token.")
    ] = 64,
):
    """Print one of a feature's top examples inside its wider document, shaded by activation.

    Context boundaries show as ¦ (attention restarts there: activations are as stored);
    struck-through tokens are attention sinks the index left out.
    """
    from rich.console import Console as Stdout

    from saedex.show import header, window_text
    from saedex.store import IndexReader

    with IndexReader(db) as reader:
        if reader.sae(sae) is None:
            raise SaedexError(f"unknown SAE {sae!r} in {db} (see `saedex info --db {db}`)")
        examples = reader.top_examples(sae, [feature], first=max(example, 1))
        if feature not in examples or len(examples[feature]) < example or example < 1:
            raise SaedexError(f"feature {feature} of {sae!r} has no top example {example}")
        chosen = examples[feature][example - 1]
        found = reader.document_window(
            sae,
            [feature],
            context_id=chosen.context_id,
            position=chosen.max_token_index,
            before=window,
            after=window,
        )
    out = Stdout()
    out.print(header(found), highlight=False)
    out.print(window_text(found), highlight=False)


# -- demo --


@app.command()
@user_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the index and site go.")] = Path("demo"),
    max_tokens: Annotated[
        int, typer.Option(help="Tokens of the default corpus to index.")
    ] = 300_000,
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8000,
    serve: Annotated[bool, typer.Option(help="Serve when ready (--no-serve: build only).")] = True,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Everything on the embedded default: corpus, index, site; then serve API + site.

    Re-running reuses whatever is already built.
    """
    from saedex import demo as demo_job

    cfg = demo_job.DemoConfig(workdir, max_tokens, host, port)
    info, site_dir = demo_job.prepare(cfg, console, progress=not quiet)
    if serve:
        demo_job.serve(cfg, info, site_dir, console)
    else:
        console.print(f"ready: {cfg.db} and {demo_job.site_index(cfg)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
