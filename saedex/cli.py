"""The `saedex` command: a thin layer over the indexer, trainer, API and site exporter."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from saedex.config import IndexConfig, ServeConfig, SiteConfig, TrainConfig
from saedex.errors import SaedexError
from saedex.options import config_options

app = typer.Typer(
    help="saedex: index SAE features into DuckDB, serve them over GraphQL, publish a site.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
corpus_app = typer.Typer(help="The default corpus.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
console = Console(stderr=True)

# Options several commands share, declared once.
Model = Annotated[str, typer.Option(help='"default", a local HF model directory, or a model name.')]
Corpus = Annotated[
    str,
    typer.Option(help='"default", a text file, a directory, JSONL (text field) or Parquet.'),
]
Device = Annotated[str | None, typer.Option(help="cuda, cpu, ... (default: cuda if present).")]
Quiet = Annotated[bool, typer.Option(help="No progress bars.")]


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
@config_options("config", IndexConfig)
def index(
    db: Annotated[Path, typer.Option(help="DuckDB index file (created if missing).")],
    config: IndexConfig,
    model: Model = "default",
    sae: Annotated[
        str, typer.Option(help='"default" or an SAE directory in SAELens format.')
    ] = "default",
    corpus: Corpus = "default",
    sae_id: Annotated[
        str | None,
        typer.Option(help="Name of this index in the file (default: the SAE directory's name)."),
    ] = None,
    device: Device = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing index of this SAE id.")
    ] = False,
    quiet: Quiet = False,
):
    """Run a model and an SAE over a corpus once and store every feature's dashboard data.

    Resumable: if interrupted, run the same command again.
    """
    from saedex.indexer.indexing import IndexJob, run_index
    from saedex.memory import keep_freed_memory

    job = IndexJob(model, sae, corpus, db, sae_id, device, dtype, overwrite, config)
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
        Path | None, typer.Option(help="Parquet file to write (default: the user cache).")
    ] = None,
    quiet: Quiet = False,
):
    """Build the default corpus from real text that pip packages ship (deterministic)."""
    from saedex.indexer.default_corpus import build_default_corpus, corpus_stats

    path = build_default_corpus(out, progress=not quiet)
    console.print(f"wrote {path}")
    console.print(corpus_stats(path))


# -- train-sae (saedex.indexer.training) --


@app.command("train-sae")
@user_errors
@config_options("config", TrainConfig)
def train_sae(
    out: Annotated[Path, typer.Option(help="Directory for the SAE, checkpoints and report.")],
    hook: Annotated[str, typer.Option(help="Hook to train on, e.g. blocks.6.hook_resid_post.")],
    config: TrainConfig,
    model: Model = "default",
    corpus: Corpus = "default",
    activation_cache: Annotated[
        Path | None,
        typer.Option(help="Keep activations here (fp16) so later epochs skip the model."),
    ] = None,
    device: Device = None,
    save_dtype: Annotated[
        str, typer.Option(help="Weights dtype on disk: float32, bfloat16 or float16.")
    ] = "float32",
    resume: Annotated[
        bool, typer.Option(help="Continue from OUT/checkpoints if present (else start over).")
    ] = True,
    quiet: Quiet = False,
):
    """Train a TopK or ReLU SAE on a model hook; writes SAELens format and a held-out report.

    Resumable: if interrupted, run the same command again.
    """
    from saedex.indexer.training import TrainJob
    from saedex.indexer.training import train_sae as run_training

    job = TrainJob(model, hook, corpus, out, device, save_dtype, activation_cache, config)
    report = run_training(job, progress=not quiet, resume=resume)
    console.print(f"SAE in {out}; {report.summary()}", highlight=False)


# -- serve (saedex.api) --


@app.command()
@user_errors
@config_options("config", ServeConfig)
def serve(
    db: Annotated[Path, typer.Option(help="DuckDB index file (opened read-only).")],
    config: ServeConfig,
    threads: Annotated[
        int | None,
        typer.Option(help="Torch threads for live inference (1 is steadiest on a busy machine)."),
    ] = None,
):
    """Serve an index: GraphQL (GraphiQL) at /graphql, REST under /api/ (see docs/api.md)."""
    from saedex.api.app import serve as run_server

    console.print(f"serving {db} on http://{config.host}:{config.port}/graphql (REST: /api/)")
    run_server(db, config, threads)


# -- export-site (saedex.site) --


@app.command("export-site")
@user_errors
@config_options("config", SiteConfig)
def export_site_command(
    db: Annotated[Path, typer.Option(help="DuckDB index file.")],
    out: Annotated[Path, typer.Option(help="Folder for the MkDocs project.")],
    config: SiteConfig,
    sae: Annotated[
        list[str] | None,
        typer.Option(help="SAE id in the index, repeatable; without it, every finished SAE."),
    ] = None,
    build: Annotated[bool, typer.Option(help="Also run `mkdocs build` into OUT/site.")] = False,
    quiet: Quiet = False,
):
    """Export an index's SAEs as one static MkDocs Material site: a home listing them, and per
    SAE its listings, feature pages and search.

    Re-running rewrites only the files whose content changed.
    """
    from saedex.site.export import SiteJob, export_site

    result = export_site(SiteJob(db, tuple(sae or ()), out, config, build), progress=not quiet)
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
    quiet: Quiet = False,
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
