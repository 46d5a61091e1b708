"""The `saedex` command: a thin layer over the indexer, trainer, API and site exporter."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from saedex.config import (
    IndexConfig,
    MatchConfig,
    RayConfig,
    ServeConfig,
    SiteConfig,
    TrainConfig,
)
from saedex.demo import DemoConfig
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
        except Exception as exc:  # a damaged index block, met by a query after the open
            from saedex.store.connection import failure, is_duckdb_error

            if not is_duckdb_error(exc):
                raise
            message = failure(kwargs.get("db"), exc)
            console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            console.print("interrupted: run the same command again to resume")
            sys.exit(130)

    return wrapper


@app.command()
@user_errors
@config_options("ray_config", RayConfig)  # --ray, --shards, ...: the pass on Ray (owner: ray)
@config_options("config", IndexConfig)
def index(
    db: Annotated[Path, typer.Option(help="DuckDB index file (created if missing).")],
    config: IndexConfig,
    ray_config: RayConfig,
    model: Model = "default",
    sae: Annotated[
        list[str] | None,
        typer.Option(
            help='"default", a shipped width (default-1152, default-9216) or an SAE directory '
            "in SAELens format. Repeat it to index several SAEs of the model in one pass."
        ),
    ] = None,
    corpus: Corpus = "default",
    sae_id: Annotated[
        list[str] | None,
        typer.Option(
            help="Name of each index in the file, one per --sae (default: the SAE directory's "
            "name)."
        ),
    ] = None,
    device: Device = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing index of this SAE id.")
    ] = False,
    quiet: Quiet = False,
):
    """Run a model and an SAE over a corpus once and store every feature's dashboard data.

    Several --sae of one model share the pass: the model runs once, to the deepest hook.
    Resumable: if interrupted, run the same command again. With --ray, the pass runs as shards
    on a Ray cluster and is merged into the same index a single process makes.
    """
    from saedex.indexer.indexing import IndexJob, run_indexes
    from saedex.memory import keep_freed_memory

    if ray_config.ray is None and ray_config != RayConfig():
        raise SaedexError("--shards and the other shard options need --ray")
    ray = ray_config if ray_config.ray is not None else None
    saes = sae or ["default"]
    if sae_id and len(sae_id) != len(saes):
        raise SaedexError(f"{len(sae_id)} --sae-id for {len(saes)} --sae: give one per --sae")
    ids = sae_id or [None] * len(saes)
    jobs = [
        IndexJob(model, one, corpus, db, name, device, dtype, overwrite, config, ray)
        for one, name in zip(saes, ids, strict=True)
    ]
    keep_freed_memory()
    for info in run_indexes(jobs, progress=not quiet):
        console.print(
            f"indexed [bold]{info.id}[/]: {info.n_tokens:,} tokens, {info.n_contexts:,} "
            f"contexts, {info.d_sae:,} features ({info.dead_features:,} dead) in "
            f"{info.duration_s:.1f}s -> {db}"
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
                f"\tvalues={sae.settings['value_precision']}"  # store2: stored precision
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

    run_server(db, config, threads, ready=console.print)


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


# -- export (saedex.store.export, saedex.neuronpedia) --

from enum import StrEnum  # noqa: E402 (this section's own import)


class ExportFormat(StrEnum):
    parquet = "parquet"
    neuronpedia = "neuronpedia"


@app.command("export")
@user_errors
def export_command(
    db: Annotated[Path, typer.Option(help="DuckDB index file.")],
    out: Annotated[Path, typer.Option(help="Folder to write into.")],
    format: Annotated[
        ExportFormat,
        typer.Option(
            help="parquet: every table, hive-partitioned by SAE; neuronpedia: Neuronpedia's "
            "import bundle (v1/{modelId}/{sourceId}/)."
        ),
    ] = ExportFormat.parquet,
    sae: Annotated[
        list[str] | None,
        typer.Option(help="SAE id to export (repeatable; default: every SAE in the index)."),
    ] = None,
    model_id: Annotated[
        str | None,
        typer.Option(help="neuronpedia: model id (default: the model name, lower-cased)."),
    ] = None,
    source_set: Annotated[
        str | None,
        typer.Option(
            help="neuronpedia: source set name; the source id is LAYER-SET (default: res-saedex)."
        ),
    ] = None,
    creator_id: Annotated[
        str, typer.Option(help="neuronpedia: creatorId/authorId of every row.")
    ] = "clkht01d40000jv08hvalcvly",
    creator_name: Annotated[
        str, typer.Option(help="neuronpedia: creator shown on the release.")
    ] = "saedex",
    release: Annotated[
        str | None, typer.Option(help="neuronpedia: release name (default: the source set).")
    ] = None,
    vectors: Annotated[
        bool,
        typer.Option(help="neuronpedia: decoder rows into `vector` (reads the SAE weights file)."),
    ] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in OUT.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Export an index for other tools: Parquet tables or a Neuronpedia bundle (docs/interop.md)."""
    if format is ExportFormat.parquet:
        from saedex.store.export import export_parquet

        result = export_parquet(db, out, sae, overwrite)
        rows = sum(result.rows.values())
        console.print(
            f"wrote {len(result.rows)} tables ({rows:,} rows) in {result.seconds:.1f}s -> {out}"
        )
        return
    from saedex.neuronpedia import NeuronpediaJob, export_neuronpedia
    from saedex.store import IndexReader

    if not sae:
        with IndexReader(db) as reader:
            sae = [s.id for s in reader.saes()]
    for sae_id in sae:
        job = NeuronpediaJob(
            db,
            sae_id,
            out,
            model_id,
            source_set,
            creator_id,
            creator_name,
            release,
            vectors,
            overwrite,
        )
        result = export_neuronpedia(job, progress=not quiet)
        counts = ", ".join(f"{n:,} {name}" for name, n in result.counts.items())
        console.print(f"wrote {counts} -> {result.folder}")


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
@config_options("cfg", DemoConfig)
def demo(
    cfg: DemoConfig,
    serve: Annotated[bool, typer.Option(help="Serve when ready (--no-serve: build only).")] = True,
    quiet: Quiet = False,
):
    """Everything on the embedded default: corpus, index, site; then serve API + site.

    Re-running reuses whatever is already built.
    """
    from saedex import demo as demo_job

    info, site_dir = demo_job.prepare(cfg, console, progress=not quiet)
    with demo_job.step(console, "steering: one feature turned up"):
        demo_job.steering_example(cfg.db, info, console)
    if serve:
        demo_job.serve(cfg, info, site_dir, console)
    else:
        console.print(f"ready: {cfg.db} and {demo_job.site_index(cfg)}")


# -- steer (saedex.steering; owner: inference) --


def _feature_edit(spec: str, mode: str):
    """INDEX or INDEX:AMOUNT (a strength for add, a value for clamp) into a FeatureEdit."""
    from saedex.steering import FeatureEdit

    index, _, amount = spec.partition(":")
    try:
        number = float(amount) if amount else None
        edit = FeatureEdit(int(index), number if mode == "add" else None, number)
    except ValueError as exc:
        raise SaedexError(f"--feature wants INDEX or INDEX:AMOUNT, got {spec!r}") from exc
    return edit


# steer's own setting of ServeConfig (the server's `serve --steer-weights`); its limits are
# the server's defaults
_STEER_SETTINGS = ("steer_weights",)


@app.command()
@user_errors
@config_options(
    "limits",
    ServeConfig,
    skip=tuple(f.name for f in dataclasses.fields(ServeConfig) if f.name not in _STEER_SETTINGS),
)
def steer(
    limits: ServeConfig,
    db: Annotated[Path, typer.Option(help="DuckDB index file (opened read-only).")],
    sae: Annotated[str, typer.Option(help="SAE id in the index (see `saedex info`).")],
    prompt: Annotated[str, typer.Option(help="The prompt to complete.")],
    feature: Annotated[
        list[str],
        typer.Option(help="INDEX:STRENGTH (add), INDEX:VALUE (clamp) or INDEX (ablate); repeat."),
    ],
    mode: Annotated[str, typer.Option(help="add, clamp or ablate.")] = "add",
    n_tokens: Annotated[int, typer.Option(help="Tokens to generate per side.")] = 32,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed, the same on both sides.")] = 0,
    chat_template: Annotated[
        bool, typer.Option(help="Wrap the prompt in the model's chat template.")
    ] = False,
    device: Annotated[str | None, typer.Option(help="Device (default: cuda if present).")] = None,
):
    """Complete a prompt with and without steering SAE features, side by side."""
    import asyncio

    from saedex.api.inference import InferenceEngine
    from saedex.steering import SteerLimits, SteerRequest, check_request
    from saedex.store import IndexReader

    req = SteerRequest(
        prompt,
        tuple(_feature_edit(f, mode) for f in feature),
        mode,
        n_tokens,
        temperature,
        seed,
        chat_template,
        weights=limits.steer_weights,
    )
    with IndexReader(db) as reader:
        info = reader.sae(sae)
        if info is None:
            raise SaedexError(f"unknown SAE {sae!r} in {db}")
        req = check_request(
            req,
            info.d_sae,
            SteerLimits(limits.max_steer_prompt_tokens, n_tokens, limits.max_steer_features),
        )
        indices = [e.index for e in req.features]
        maxima = {i: s.max_activation for i, s in reader.summaries(sae, indices).items()}
    engine = InferenceEngine(device)
    result = asyncio.run(engine.steer(info, req, limits.max_steer_prompt_tokens, maxima))
    print_steering(result)


def print_steering(result) -> None:
    """Both completions, with the features' scales; plain text a script can also read."""
    out = Console()
    for f in result.features:
        amount = f.strength if result.mode == "add" else f.value
        scale = f"max activation {f.max_activation:.3g}" if f.max_activation else "unseen"
        out.print(
            f"feature {f.index}: {result.mode} {amount:g}  (|W_dec| {f.decoder_norm:.3g}, {scale})",
            highlight=False,
        )
    out.print(f"[bold]prompt:[/]  {result.prompt!r}", highlight=False)
    out.print(f"[bold]default:[/] {result.default.text!r}", highlight=False)
    out.print(f"[bold]steered:[/] {result.steered.text!r}", highlight=False)
    out.print(f"(weights: {result.weights})", highlight=False)


# -- explanations (saedex.explain) --

from saedex.config import ExplainConfig, ScoreConfig  # noqa: E402 (this section's own import)

DbOption = Annotated[Path, typer.Option(help="DuckDB index file.")]
SaeOption = Annotated[str, typer.Option(help="SAE id in the index.")]

explanations_app = typer.Typer(
    help="Explanations of features: import, export (kept in <index>.edits.sqlite).",
    no_args_is_help=True,
)
app.add_typer(explanations_app, name="explanations")


@explanations_app.command("import")
@user_errors
def explanations_import(
    file: Annotated[Path, typer.Argument(help="Neuronpedia rows (.jsonl[.gz]) or feature,text.")],
    db: DbOption,
    sae: SaeOption,
    format: Annotated[
        str | None,
        typer.Option(help="neuronpedia, jsonl or csv (default: from the file name and rows)."),
    ] = None,
):
    """Import explanations; importing the same file again adds nothing."""
    from saedex.explain.transfer import import_explanations
    from saedex.store import IndexReader

    with IndexReader(db) as reader:
        result = import_explanations(reader, sae, file, format)
        where = reader.edits_path
    origin = f" (Neuronpedia {result.origin[0]}/{result.origin[1]})" if result.origin else ""
    console.print(
        f"{result.format}{origin}: {result.added:,} added, {result.skipped:,} already there "
        f"-> {where}"
    )


@explanations_app.command("export")
@user_errors
def explanations_export(
    out: Annotated[Path, typer.Argument(help="File to write (.jsonl, .jsonl.gz or .csv).")],
    db: DbOption,
    sae: SaeOption,
    format: Annotated[
        str | None,
        typer.Option(help="neuronpedia, jsonl or csv (default: csv for .csv, else jsonl)."),
    ] = None,
    model_id: Annotated[
        str | None, typer.Option(help="Neuronpedia modelId (default: from the model name).")
    ] = None,
    layer: Annotated[
        str | None, typer.Option(help="Neuronpedia layer, its source id (default: N-saedex-SAE).")
    ] = None,
    current_only: Annotated[
        bool, typer.Option(help="Leave out explanations made for earlier weights.")
    ] = False,
):
    """Export an SAE's explanations (Neuronpedia rows, JSONL or CSV)."""
    from saedex.explain.transfer import export_explanations
    from saedex.store import IndexReader

    with IndexReader(db) as reader:
        n = export_explanations(reader, sae, out, format, model_id, layer, current_only)
    console.print(f"exported {n:,} explanations -> {out}")


ModelOption = Annotated[
    str,
    typer.Option(
        help='"default" (embedded SmolLM2-135M-Instruct), a local HF causal LM, or an '
        "OpenAI-compatible endpoint such as http://127.0.0.1:8080/v1."
    ),
]
ModelNameOption = Annotated[
    str | None, typer.Option(help="The model an endpoint should run (its `model` field).")
]
ContextOption = Annotated[
    int | None, typer.Option(help="Model context in tokens (default: what the model reports).")
]
FeaturesOption = Annotated[
    str | None, typer.Option(help="Features, e.g. 3,10-20 (default: every live feature).")
]


ThreadsOption = Annotated[int | None, typer.Option(help="Torch threads (local models).")]


@contextlib.contextmanager
def _explaining(db: Path, sae: str, features: str | None, spec):
    """(reader, the wanted features or None, the language model), all closed on exit."""
    from saedex.explain.explainer import parse_features
    from saedex.explain.models import load_language_model
    from saedex.store import IndexReader

    with IndexReader(db) as reader:
        info = reader.sae(sae)
        if info is None:
            raise SaedexError(f"unknown SAE {sae!r} in {db}")
        wanted = parse_features(features, info.d_sae)
        model = load_language_model(spec)
        try:
            yield reader, wanted, model
        finally:
            model.close()


@app.command()
@user_errors
@config_options("cfg", ExplainConfig)  # --batch-size, --n-examples, --time-budget, ...
def explain(
    db: DbOption,
    sae: SaeOption,
    cfg: ExplainConfig,
    features: FeaturesOption = None,
    model: ModelOption = "default",
    model_name: ModelNameOption = None,
    context_length: ContextOption = None,
    threads: ThreadsOption = None,
    quiet: Quiet = False,
):
    """Ask a language model for a short explanation of each feature (stored as source "model").

    Resumable: features this model already explained are skipped.
    """
    from saedex.explain.explainer import explain as run_explain
    from saedex.explain.models import ModelSpec

    spec = ModelSpec(model, model_name, context_length=context_length, threads=threads)
    with _explaining(db, sae, features, spec) as (reader, wanted, lm):
        result = run_explain(reader, sae, lm, wanted, cfg, progress=not quiet)
    console.print(
        f"explained {result.explained:,} features in {result.seconds:.1f}s "
        f"({result.per_minute:.1f}/min); {result.skipped:,} skipped (done or dead), "
        f"{result.failed:,} without an answer"
    )


@app.command()
@user_errors
@config_options("cfg", ScoreConfig)  # --n-activating, --n-inactive, --seed, ...
def score(
    db: DbOption,
    sae: SaeOption,
    cfg: ScoreConfig,
    features: FeaturesOption = None,
    model: ModelOption = "default",
    model_name: ModelNameOption = None,
    context_length: ContextOption = None,
    which: Annotated[
        str, typer.Option(help="latest (each feature's newest explanation) or all.")
    ] = "latest",
    baseline: Annotated[
        bool, typer.Option(help="Also score the trivial top-tokens explanation.")
    ] = False,
    explained_only: Annotated[
        bool, typer.Option(help="Only features that have an explanation.")
    ] = True,
    out: Annotated[
        Path | None, typer.Option(help="Folder for scores.json and scores.svg (a histogram).")
    ] = None,
    threads: ThreadsOption = None,
    quiet: Quiet = False,
):
    """Score explanations with delphi's detection and fuzzing (balanced accuracy, 0.5 = chance)."""
    import json

    from saedex.explain.explainer import live_features
    from saedex.explain.models import ModelSpec
    from saedex.explain.scoring import histogram_svg, summarise
    from saedex.explain.scoring import score as run_score

    spec = ModelSpec(model, model_name, context_length=context_length, threads=threads)
    with _explaining(db, sae, features, spec) as (reader, wanted, lm):
        wanted = live_features(reader, sae, wanted)
        if explained_only:
            explained = set(reader.explained_features(sae))
            wanted = [f for f in wanted if f in explained]
        rows = run_score(reader, sae, lm, wanted, cfg, which, baseline, progress=not quiet)
    summary = summarise(rows)
    for kind, stats in summary.items():
        if kind != "seconds_per_feature":
            console.print(
                f"{kind}: n={stats['n']} detection {stats['detection_mean']:.3f} "
                f"fuzzing {stats['fuzzing_mean']:.3f} (mean balanced accuracy)"
            )
    if "seconds_per_feature" in summary:
        console.print(f"{summary['seconds_per_feature']['mean']:.2f} s per feature")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scores.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
        (out / "scores.svg").write_text(histogram_svg(rows))
        console.print(f"wrote {out / 'scores.json'} and {out / 'scores.svg'}")


# -- match (issue 17: feature splitting across widths; saedex.matching, docs/splitting.md) --


@app.command()
@user_errors
@config_options("config", MatchConfig)
def match(
    db: Annotated[Path, typer.Option(help="DuckDB index file.")],
    sae: Annotated[
        list[str],
        typer.Option(help="An indexed SAE id; give two or more (every pair is matched)."),
    ],
    config: MatchConfig,
):
    """Relate SAEs of several widths on one hook: each feature's best matches in the others
    (decoder cosine, activation correlation over the whole corpus) and parents / children."""
    from itertools import combinations

    from saedex.matching import match_and_store

    saes = list(dict.fromkeys(sae))
    if len(saes) < 2:
        raise SaedexError("give at least two different --sae to match")
    for a, b in combinations(saes, 2):
        done = match_and_store(db, a, b, config)
        console.print(
            f"matched [bold]{done.narrow}[/] x [bold]{done.wide}[/] in {done.seconds:.1f}s: "
            f"{done.with_parent:.1%} of live wide features have a parent, {done.clear:.1%} a "
            f"clear one; {done.rows:,} rows -> {db}"
        )


# -- co-activation (issue 18.1: saedex.store.coactivation) --


@app.command()
@user_errors
def coactivations(
    db: Annotated[Path, typer.Option(help="DuckDB index file.")],
    sae: Annotated[list[str], typer.Option(help="An indexed SAE id (repeatable).")],
    first: Annotated[
        int,
        typer.Option(min=1, help="Co-activating features kept per feature, ranked by Jaccard."),
    ] = IndexConfig.coactivations,
):
    """Compute co-activations (exact over the indexed corpus) for SAEs indexed without them,
    or keep more per feature; stored beside their runs (replaced by a later run)."""
    import time

    from saedex.store.coactivation import publish

    for sae_id in dict.fromkeys(sae):
        started = time.perf_counter()
        rows = publish(db, sae_id, first)
        console.print(
            f"co-activations of [bold]{sae_id}[/]: {rows:,} rows (top {first} per feature) in "
            f"{time.perf_counter() - started:.1f}s -> {db}"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
