"""`saedex demo`: the whole job on the embedded default, from nothing to a served index and site.

Each step reuses what an earlier run built: the cached default model and corpus, a complete
index (or a partial one, resumed), and a built site whose pages did not change.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from saedex.config import (
    ExplainConfig,
    IndexConfig,
    ServeConfig,
    SiteConfig,
    setting,
    validate,
)
from saedex.data import SaeInfo

DEMO_TOKENS = 150_000  # with 3 widths matched and a site of all three, keeps `make demo` < 15 min
EXPLAIN_SECONDS = 120.0  # the demo explains as many features as fit in this (2 CPU cores)


@dataclass(frozen=True)
class DemoConfig:
    """Where the demo writes, how much of the default corpus it indexes, where it serves."""

    workdir: Path = setting(Path("demo"), "Where the index and site go.")
    max_tokens: int = setting(DEMO_TOKENS, "Tokens of the default corpus to index.", min=1)
    host: str = setting("127.0.0.1", "Address to serve on.")
    port: int = setting(8000, "Port to serve on.", min=1, max=65535)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def db(self) -> Path:
        return self.workdir / "index.duckdb"

    @property
    def site_project(self) -> Path:
        return self.workdir / "site-project"


def prepare(cfg: DemoConfig, console: Console, progress: bool = True) -> tuple[SaeInfo, Path]:
    """Corpus, index and built site; returns the index's run and the built site's folder."""
    from saedex.indexer.default_corpus import default_corpus_path
    from saedex.site.build import build_site
    from saedex.site.export import SiteJob, export_site

    cfg.workdir.mkdir(parents=True, exist_ok=True)
    with step(console, "1/4 default corpus"):
        console.print(f"corpus: {default_corpus_path()}")
    with step(console, "2/4 index: default model x every shipped width, one pass; then matched"):
        info, widths = index_widths(cfg, console, progress)
    with step(console, "3/4 explanations: the embedded model, about two minutes"):
        explain_some(cfg, info, console, progress)
    with step(console, "4/4 static site"):
        result = export_site(SiteJob(cfg.db, widths, cfg.site_project), progress=progress)
        site_dir = cfg.site_project / "site"
        if result.written or not (site_dir / "index.html").is_file():
            site_dir = build_site(cfg.site_project, SiteConfig().workers, progress)
        else:
            console.print("site unchanged: reusing the last build")
    return info, site_dir


@contextmanager
def step(console: Console, title: str):
    """A titled step that says how long it took: the demo's time budget is read off these."""
    console.rule(title)
    started = time.perf_counter()
    yield
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    console.print(f"[dim]{title.split(':')[0]}: {minutes} min {seconds:02d} s[/]", highlight=False)


# -- widths (issue 17): every shipped width of the default SAE, indexed in one pass, matched --


def index_widths(cfg: DemoConfig, console: Console, progress: bool) -> tuple[SaeInfo, list[str]]:
    """Index every shipped width in one pass of the model and match every pair of them
    (`saedex match`); returns the default SAE's run and every width's id, narrowest first."""
    from itertools import combinations

    from saedex.indexer.indexing import IndexJob, run_indexes
    from saedex.indexer.sae import DEFAULT_SAE, SHIPPED_SAES
    from saedex.matching import match_and_store
    from saedex.store.matches import is_matched

    config = IndexConfig(max_tokens=cfg.max_tokens)
    jobs = [IndexJob("default", name, "default", cfg.db, config=config) for name in SHIPPED_SAES]
    indexed = run_indexes(jobs, progress=progress)
    default = indexed[list(SHIPPED_SAES).index(DEFAULT_SAE)]
    infos = sorted(indexed, key=lambda i: i.d_sae)
    for i in infos:
        console.print(f"index: {i.id}, {i.n_tokens:,} tokens, {i.d_sae:,} features")
    for a, b in combinations(infos, 2):
        if is_matched(cfg.db, a.id, b.id):
            console.print(f"matches of {a.id} x {b.id}: already made")
            continue
        done = match_and_store(cfg.db, a.id, b.id)
        console.print(
            f"matched {done.narrow} x {done.wide} in {done.seconds:.1f}s: {done.clear:.1%} of "
            "the wide features have a clear parent"
        )
    return default, [i.id for i in infos]


def explain_some(cfg: DemoConfig, info: SaeInfo, console: Console, progress: bool) -> None:
    """Explain the demo's most telling features (strong, not too dense: those the welcome
    message and the listings show first) for about two minutes; a re-run keeps what is there."""
    from saedex.explain.explainer import explain
    from saedex.explain.models import ModelSpec, load_language_model
    from saedex.store import IndexReader

    with IndexReader(cfg.db) as reader:
        store = reader.edits()
        if store is not None and store.counts(info.id).get("model"):
            console.print(f"explanations: {store.counts(info.id)['model']:,} already made")
            show_explanations(reader, info, console)
            return
        page = reader.list_features(
            info.id, order_by="max_activation", descending=True, min_density=1e-4,
            max_density=0.02, limit=500,
        )  # fmt: skip
        features = [example_feature(reader, info), *(f.index for f in page.items)]
        model = load_language_model(ModelSpec())
        budget = ExplainConfig(time_budget_s=EXPLAIN_SECONDS)
        result = explain(reader, info.id, model, list(dict.fromkeys(features)), budget, progress)
        console.print(
            f"explained {result.explained:,} features in {result.seconds:.0f}s "
            f"({result.per_minute:.1f}/min; `saedex explain` does the rest)"
        )
        show_explanations(reader, info, console)


def show_explanations(reader, info: SaeInfo, console: Console, limit: int = 40) -> None:
    """The model's explanations as a table beside what they explain: the feature's peak token
    in its strongest example and its top logit-lens tokens, so a reader can judge them."""
    from rich.table import Table
    from rich.text import Text

    store = reader.edits()
    made = [
        e for e in (store.all(info.id, reader.fingerprint(info.id)) if store else [])
        if e.source == "model" and e.current
    ][:limit]  # fmt: skip
    if not made:
        return
    indices = [e.feature for e in made]
    tops = reader.top_examples(info.id, indices, first=1)
    logits = reader.logits(info.id, indices, "top", 3)
    table = Table("feature", "peak token", "promotes", "explanation (SmolLM2-135M)")
    for e in made:
        peak = tops[e.feature][0] if tops[e.feature] else None
        token = repr(peak.tokens[peak.max_token_index]) if peak else ""
        promotes = " ".join(repr(x.token) for x in logits[e.feature])
        table.add_row(str(e.feature), Text(token), Text(promotes), Text(e.text))
    console.print(table)


STEER_PROMPT = "My favourite thing to do on a weekend is"
STEER_MULTIPLE = 2.0  # x max activation: one-word features show; 4x+ repeats (steering.md)


def steerable_features(reader, info: SaeInfo, n: int) -> list[tuple[int, float, str]]:
    """(feature, max activation, word) of the n not-too-dense features whose logit lens names
    one word (saedex.steering.promoted_word), strongest lens first: the rule
    bench/steer_study.py measures, so that the example's effect can be read off the text."""
    from saedex.steering import promoted_word

    page = reader.list_features(info.id, min_density=1e-4, max_density=0.02, limit=info.d_sae)
    named = [(f, promoted_word(f.top_logits)) for f in page.items]
    named = sorted(((f, w) for f, w in named if w), key=lambda p: -p[0].top_logits[0].value)
    out, seen = [], set()
    for f, word in named:
        if word not in seen:
            seen.add(word)
            out.append((f.index, f.max_activation, word))
    return out[:n]


def steering_example(db: Path, info: SaeInfo, console: Console, tries: int = 4) -> None:
    """Steer a feature whose logit lens names a word on a neutral prompt and print both
    completions: the first candidate whose word shows up in the steered text only, else the
    first that changed the text at all."""
    import asyncio

    from saedex.api.inference import InferenceEngine
    from saedex.cli import print_steering
    from saedex.steering import FeatureEdit, SteerRequest
    from saedex.store import IndexReader

    with IndexReader(db) as reader:
        candidates = steerable_features(reader, info, tries)
    engine = InferenceEngine()
    changed = []
    for index, max_activation, word in candidates:
        edit = FeatureEdit(index, STEER_MULTIPLE * max_activation)
        req = SteerRequest(STEER_PROMPT, (edit,), "add", 24, chat_template=False)
        result = asyncio.run(engine.steer(info, req, 256, {index: max_activation}))
        if result.default.text != result.steered.text:
            changed.append((index, word, result))
            if shows(word, result.steered.text) and not shows(word, result.default.text):
                changed = changed[-1:]
                break
    if not changed:
        console.print("no candidate feature changed the completion (see docs/steering.md)")
        return
    index, word, result = changed[0]
    console.print(
        f"feature {index}'s logit lens names {word!r}; added at {STEER_MULTIPLE:g}x its max "
        "activation:",
        highlight=False,
    )
    print_steering(result)


def shows(word: str, text: str) -> bool:
    """Whether `word` appears in `text` as (the start of) a word, any case."""
    import re

    return re.search(rf"\b{re.escape(word)}", text, re.IGNORECASE) is not None


def serve(cfg: DemoConfig, info: SaeInfo, site_dir: Path, console: Console) -> None:
    """The API at /graphql and /api/, the built site under /site/, one uvicorn process."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from saedex.api.access_log import configure as configure_access_log
    from saedex.api.app import create_app
    from saedex.store import IndexReader

    configure_access_log()
    with IndexReader(cfg.db) as reader:
        api = create_app(reader, ServeConfig(host=cfg.host, port=cfg.port))
        app = Starlette(
            routes=[
                Mount("/site", StaticFiles(directory=site_dir, html=True), name="site"),
                Mount("/", api),
            ]
        )
        console.print(welcome(cfg, info, example_feature(reader, info)), highlight=False)
        uvicorn.run(app, host=cfg.host, port=cfg.port, access_log=False, log_level="warning")


def example_feature(reader, info: SaeInfo) -> int:
    """A strong, not-too-dense feature to show first, skipping position features (ones whose
    top examples peak on a context's first token, which says little about the text)."""
    page = reader.list_features(
        info.id, order_by="max_activation", descending=True, min_density=1e-4, max_density=0.02,
        limit=50,
    )  # fmt: skip
    candidates = [f.index for f in page.items]
    tops = reader.top_examples(info.id, candidates, first=5)
    for index in candidates:
        if sum(e.max_token_index > 1 for e in tops[index]) >= 4:
            return index
    return candidates[0] if candidates else 0


def welcome(cfg: DemoConfig, info: SaeInfo, feature: int) -> str:
    base = f"http://{cfg.host}:{cfg.port}"
    query = (
        f'{{ feature(sae: "{info.id}", index: {feature}) {{ density maxActivation '
        "topLogits { token value } topExamples(first: 3) { maxActivation tokens activations } } }"
    )
    live = (
        f'{{ activeFeatures(sae: "{info.id}", text: "def main():\\n    return 42", topK: 5) '
        "{ tokens features { index maxValue values } } }"
    )
    return "\n".join(
        [
            "",
            f"[bold green]saedex is serving {info.id}[/]",
            f"  GraphQL (GraphiQL): {base}/graphql",
            f"  REST:               {base}/api/saes   {base}/api/features/{info.id}/{feature}",
            f"  OpenAPI:            {base}/api/openapi.json",
            f"  site:               {base}/site/   (also: {site_index(cfg)})",
            "",
            "Paste into GraphiQL:",
            f"  {query}",
            f"  {live}",
            "",
            "Ctrl-C to stop; `make demo` again reuses everything built.",
        ]
    )


def site_index(cfg: DemoConfig) -> Path:
    return (cfg.site_project / "site" / "index.html").resolve()
