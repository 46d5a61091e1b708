"""Every tunable default in one place, as plain dataclasses a user can read and override."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from saedex.errors import SaedexError

# Token positions are stored as SMALLINT: no context may be longer.
MAX_CONTEXT_SIZE = 32767


def cache_dir() -> Path:
    """Where saedex keeps derived artefacts (safetensors copy of the default model, corpus)."""
    root = os.environ.get("SAEDEX_CACHE") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    return base if os.environ.get("SAEDEX_CACHE") else base / "saedex"


class ConfigError(SaedexError):
    """A setting out of its bounds; names the setting (the CLI names its option instead)."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


def setting(
    default: Any = None,
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    default_text: str | None = None,
    factory: Any = None,
    stored: bool = True,
) -> Any:
    """A config field with everything said about it in one place: its help text, its bounds
    (checked by `validate` and by the CLI), and the CLI option name where it differs from the
    field's (`flag`, e.g. "bos" for prepend_bos); `stored=False` for a setting that bounds how
    a run computes, not what, left out of what is stored with it (`IndexConfig.to_dict`)."""
    metadata = {"help": help, "min": min, "max": max, "choices": choices}
    metadata |= {"flag": flag, "default_text": default_text}
    metadata = {k: v for k, v in metadata.items() if v is not None}
    if not stored:
        metadata["stored"] = False
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def validate(config: Any) -> None:
    """Every field of a config dataclass within its declared bounds, else a ConfigError naming
    it: the one check, run by each config's __post_init__, whoever builds it."""
    for f in fields(config):
        value = getattr(config, f.name)
        low, high, choices = (f.metadata.get(k) for k in ("min", "max", "choices"))
        if value is None or isinstance(value, bool):
            continue
        if choices is not None and value not in choices:
            raise ConfigError(f.name, f"must be one of {', '.join(choices)}, got {value!r}")
        if low is not None and value < low:
            raise ConfigError(f.name, f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise ConfigError(f.name, f"must be at most {high}, got {value}")


# What steering generation runs on (saedex.indexer.steering: BridgeForward, QuantizedModel).
STEER_WEIGHTS = ("float32", "float16", "int8")

# A DuckDB memory size (IndexConfig.memory_limit): digits and a unit DuckDB reads.
_MEMORY = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)

# How an index may store activation values (saedex.store.precision).
VALUE_PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class IndexConfig:
    """What one indexing run computes. Stored with the index; a resume must match it."""

    context_size: int = setting(
        128, "Tokens per context, BOS included.", min=2, max=MAX_CONTEXT_SIZE
    )
    prepend_bos: bool = setting(True, "Prepend BOS to every context.", flag="bos")
    batch_size: int = setting(16, "Contexts per model batch.", min=1)
    # Fewer commits (each one syncs the WAL to disk) cost less.
    commit_interval_s: float = setting(
        2.0,
        "Seconds between commits during the pass (a kill loses at most this much work).",
        min=0,
        flag="commit-interval",
    )
    memory_limit: str | None = setting(
        None,
        "DuckDB's memory limit while indexing (pass, shard merge, aggregation, compaction), "
        "e.g. 4GB; past it DuckDB spills to disk beside the index. Default: DuckDB's own, 80% "
        "of RAM.",
        stored=False,
    )
    top_k: int = setting(20, "Top examples kept per feature.", min=1)
    n_intervals: int = setting(10, "Equal-width activation intervals per feature.", min=1)
    examples_per_interval: int = setting(5, "Random examples kept per interval.", min=0)
    hist_bins: int = setting(50, "Bins of the activation and logit histograms.", min=1)
    n_logits: int = setting(10, "Top and bottom logit-lens tokens kept per feature.", min=0)
    n_neighbours: int = setting(10, "Nearest neighbours kept per feature.", min=0)
    coactivations: int = setting(
        10,
        "Co-activating features kept per feature (exact over the corpus, ranked by Jaccard; "
        "0: none).",
        min=0,
    )
    sink_norm_multiple: float = setting(
        4.0,
        "Leave out tokens whose activation norm exceeds this x their context's median "
        "(attention sinks; 0: off). BOS is always left out.",
        min=0,
    )
    seed: int = setting(0, "Seed for interval sampling.")
    max_documents: int | None = setting(None, "Index only the first N documents.", min=1)
    max_tokens: int | None = setting(None, "Stop after about N corpus tokens.", min=1)
    # -- store2: reduced-precision storage (docs/schema.md, "Size") --
    value_precision: str = setting(
        "float32",
        "Stored activation values: float32 (exact) or bfloat16 (8 significant bits, "
        "~40% smaller; statistics and examples then use the rounded values).",
        choices=VALUE_PRECISIONS,
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.memory_limit is not None and not _MEMORY.fullmatch(self.memory_limit):
            raise ConfigError(
                "memory_limit", f"must be a size such as 512MB or 4GB, got {self.memory_limit!r}"
            )

    def to_dict(self) -> dict:
        """The settings stored with a run: all but those declared `stored=False`."""
        kept = {f.name for f in fields(self) if f.metadata.get("stored", True)}
        return {k: v for k, v in asdict(self).items() if k in kept}

    def differs_from(self, stored: dict) -> list[str]:
        """Names of the settings that differ from a stored run's (ignoring ones safe to change;
        a setting the stored run predates counts as its default)."""
        safe = {"batch_size", "commit_interval_s"}
        mine, default = self.to_dict(), IndexConfig().to_dict()
        return sorted(k for k in mine if k not in safe and stored.get(k, default[k]) != mine[k])


@dataclass(frozen=True)
class TrainConfig:
    """SAE training hyper-parameters; recorded in the SAE's cfg.json metadata."""

    architecture: str = setting(
        "topk", "topk (with AuxK) or standard (ReLU + L1).", choices=("topk", "standard")
    )
    d_sae: int = setting(4608, "Number of latents.", min=1)
    k: int = setting(32, "Active latents per token (topk; 1 to d_sae).")
    l1_coefficient: float = setting(
        0.1, "L1 penalty, in units of the data's norm (standard; see docs/training.md).", min=0
    )
    lr: float = setting(4e-4, "Adam learning rate (positive).", min=0)
    batch_tokens: int = setting(1024, "Tokens per SAE step.", min=1)
    total_tokens: int = setting(
        2_000_000, "Training tokens (the corpus repeats if shorter).", min=1
    )
    corpus_tokens: int | None = setting(
        None, "Use only the first N training tokens (epochs repeat them).", min=1
    )
    context_size: int = setting(128, "Tokens per context.", min=2, max=MAX_CONTEXT_SIZE)
    prepend_bos: bool = setting(True, "Prepend BOS to every context.", flag="bos")
    model_batch_size: int = setting(16, "Contexts per model batch.", min=1)
    buffer_tokens: int = setting(131_072, "Shuffling buffer size in tokens (bounds memory).", min=1)
    aux_k: int = setting(256, "Dead latents used by AuxK.", min=0)
    aux_coefficient: float = setting(1 / 32, "Weight of the AuxK loss.", min=0)
    dead_tokens: int = setting(200_000, "A latent silent this many tokens is dead (AuxK).", min=1)
    sink_norm_multiple: float = setting(
        4.0, "Skip tokens whose norm exceeds this x their context median (0: off).", min=0
    )
    checkpoint_every: int = setting(500, "Steps between checkpoints.", min=1)
    eval_tokens: int = setting(50_000, "Held-out tokens for the report.", min=1)
    ce_eval_tokens: int = setting(
        16_384, "Held-out tokens for CE loss recovered (3 full forwards: fewer).", min=1
    )
    seed: int = setting(0, "Seed for initialisation and shuffling.")

    def __post_init__(self) -> None:
        validate(self)
        if self.architecture == "topk" and not 0 < self.k <= self.d_sae:
            raise ConfigError("k", f"must be between 1 and d_sae ({self.d_sae}), got {self.k}")
        if self.lr == 0:
            raise ConfigError("lr", "must be positive, got 0")
        for name in ("total_tokens", "buffer_tokens"):
            if getattr(self, name) < self.batch_tokens:
                raise ConfigError(
                    name, f"must be at least one batch ({self.batch_tokens:,} batch tokens)"
                )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ServeConfig:
    """Limits and switches of the query API."""

    host: str = setting("127.0.0.1", "Address to listen on.")
    port: int = setting(8000, "Port to listen on (0: any free port).", min=0, max=65535)
    max_page_size: int = setting(100, "Largest `first` a query may ask for.", min=1)
    max_query_depth: int = setting(10, "Deepest GraphQL query accepted.", min=1)
    max_text_chars: int = setting(2000, "Longest text activeFeatures accepts.", min=1)
    max_active_top_k: int = setting(100, "Largest topK activeFeatures accepts.", min=1)
    # Document windows (documentWindow): tokens either side of the point, features per window,
    # and the longest window the model re-runs live (attention over the whole window).
    max_window_side: int = setting(512, "Most tokens a document window shows either side.", min=0)
    max_window_features: int = setting(16, "Most features one document window shows.", min=1)
    max_live_window_tokens: int = setting(
        512, "Longest document window the model re-runs live.", min=1
    )
    inference: bool = setting(True, "Allow live activeFeatures (loads the model on first use).")
    device: str | None = setting(None, "Device for live inference (default: cuda if present).")
    cors_origins: tuple[str, ...] = setting(
        help="An origin allowed by CORS (repeatable; * for any).", flag="cors-origin", factory=tuple
    )
    # -- cost, size and time limits (api/limits.py, api/cost.py; docs/api.md "Limits") --------
    max_nodes: int = setting(
        50_000,
        "Node budget of one GraphQL query, computed before it runs: each list counts its "
        "`first` (or the most it can hold) times the lists it sits in.",
        min=0,
    )
    max_aliases: int = setting(30, "Most aliased fields in one GraphQL document.", min=0)
    max_tokens: int = setting(5_000, "Most lexical tokens in one GraphQL document.", min=1)
    query_time_limit_s: float = setting(
        10.0,
        "Seconds one GraphQL operation (or REST call) may run before its index queries are "
        "interrupted (TIMEOUT; REST 504). 0 turns the limit off.",
        min=0,
    )
    max_body_bytes: int = setting(
        1_048_576, "Largest request body in bytes (GraphQL and REST); larger gets 413.", min=1
    )

    def __post_init__(self) -> None:
        validate(self)

    # -- live inference: batching and steering (owner: inference) --
    inference_process: bool = field(
        default=True,
        metadata={
            "help": "Run live models in a worker process, so the server's Python work never "
            "holds the GIL that every op of a forward pass waits for."
        },
    )
    batch_window_ms: float = field(
        default=5.0,
        metadata={
            "help": "How long a lone live request waits for others to share its forward pass "
            "(ms); requests arriving while a forward runs are batched without waiting."
        },
    )
    batch_max_contexts: int = field(
        default=32,
        metadata={"help": "Most contexts one batched activeFeatures forward pass runs."},
    )
    index_nice: int = setting(
        10,
        "Niceness the server adds to its own threads (index queries) after starting the live "
        "model's worker process, so a live forward pass gets the CPU first (0: off).",
        min=0,
        max=19,
    )
    max_steer_prompt_tokens: int = field(
        default=256, metadata={"help": "Longest prompt (in tokens) steer accepts."}
    )
    max_steer_new_tokens: int = field(
        default=64, metadata={"help": "Most tokens steer generates per side."}
    )
    max_steer_features: int = field(
        default=20, metadata={"help": "Most features one steer request may edit."}
    )
    # -- steering speed (issue 16; docs/steering.md, Speed) --
    steer_weights: str = setting(
        "float32",
        "What steer generates with: float32 (the TransformerLens model the index used), or "
        "a plain transformers copy with float16 or int8 linear weights (faster, CPU only). "
        "Both sides and the shifts run on the one chosen, so strength 0 stays exact; float16 "
        "stays within ~0.02 nats of float32, int8 changes the text (docs/steering.md): "
        "float32 for final figures.",
        choices=STEER_WEIGHTS,
    )
    # -- explanation edits (saedex.api.auth) --
    api_key_file: Path | None = setting(
        None,
        "File holding the API key that explanation edits need (Authorization: Bearer <key>); "
        "else the SAEDEX_API_KEY environment variable; neither: edits off.",
    )
    # -- replicas (store) --
    workers: int = setting(
        1, "Server processes (replicas) over the same store, each read-only.", min=1
    )


@dataclass(frozen=True)
class SiteConfig:
    """What the static site shows and how it is built."""

    examples_shown: int = setting(20, "Top examples shown on each feature page.", min=1)
    window: int = setting(10, "Tokens either side of the max token shown before expanding.", min=0)
    features_per_index_page: int = setting(500, "Features listed per index page.", min=1)
    workers: int = setting(
        max(1, (os.cpu_count() or 1)),
        "Processes rendering pages.",
        min=1,
        default_text="CPU count",
    )
    # -- issue 19.3: top examples widened across their document's contexts (docs/site.md) --
    document_window: int = setting(
        128,
        "Document tokens either side of a top example's max token that a click on the example "
        "shows, across context boundaries (loaded per page block only when asked; 0: off).",
        min=0,
        max=512,
    )
    # -- site issue 14: feature pages in blocks --
    features_per_page: int = setting(
        32,
        "Features per feature page file (each shown at its own #f<index> anchor): fewer files "
        "for wide SAEs, at the cost of larger pages.",
        min=1,
    )

    def __post_init__(self) -> None:
        validate(self)


# -- explanations (saedex.explain) --


@dataclass(frozen=True)
class ExplainConfig:
    """How `saedex explain` asks a model for explanations."""

    batch_size: int = setting(
        8, "Features per model call (prompts are padded to the longest).", min=1
    )
    n_examples: int = setting(
        10, "Activating examples shown (fewer if the context is short).", min=1
    )
    window_before: int = setting(12, "Tokens shown before an example's peak.", min=0)
    window_after: int = setting(4, "Tokens shown after an example's peak.", min=0)
    n_logits: int = setting(8, "Top logit-lens tokens shown.", min=0)
    max_new_tokens: int = setting(24, "Longest answer, in tokens.", min=1)
    limit: int | None = setting(None, "Explain at most this many features.", min=0)
    time_budget_s: float | None = setting(
        None, "Seconds after which no new batch starts.", min=0, flag="time-budget"
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ScoreConfig:
    """How `saedex score` checks explanations (delphi's detection and fuzzing)."""

    n_activating: int = setting(10, "Held-out activating examples per feature (at most).", min=1)
    n_inactive: int = setting(10, "Non-activating contexts per feature.", min=0)
    window_before: int = setting(12, "Tokens shown before an example's peak.", min=0)
    window_after: int = setting(4, "Tokens shown after an example's peak.", min=0)
    batch_size: int = setting(20, "Prompts per model call.", min=1)
    seed: int = setting(0, "Seed for the non-activating contexts and fuzzing's wrong marks.")

    def __post_init__(self) -> None:
        validate(self)


# -- sharded indexing on Ray (saedex.indexer.sharding; owner: ray) --


@dataclass(frozen=True)
class RayConfig:
    """Where and how `saedex index --ray` runs the pass: shards of the planned contexts on Ray
    workers, merged exactly into one run (docs/scale.md). Not stored with the run: the merged
    index equals a single-process one, whatever these are."""

    ray: str | None = setting(
        None,
        "Run the pass on Ray: 'local' (a cluster of this machine on 127.0.0.1, for this run), "
        "'auto' (the running cluster) or a cluster address (host:port, ray://host:port).",
    )
    shards: int | None = setting(
        None,
        "Shards of the corpus's contexts, each one Ray task writing its own file "
        "(default: twice the cluster's worker slots).",
        min=1,
    )
    cpus_per_shard: float = setting(
        1.0, "CPUs a shard's worker reserves (its torch threads).", min=0
    )
    gpus_per_shard: float | None = setting(
        None,
        "GPUs a shard's worker reserves (default: 1 when the cluster has GPUs, else 0).",
        min=0,
    )
    max_retries: int = setting(
        3,
        "Times Ray reruns a shard whose worker died (it resumes from its last commit).",
        min=0,
        flag="shard-retries",
    )
    local_cpus: int | None = setting(
        None,
        "CPUs of the cluster `--ray local` starts (default: this machine's).",
        min=1,
        flag="ray-local-cpus",
    )

    def __post_init__(self) -> None:
        validate(self)


# -- feature splitting across widths (issue 17: saedex match) --


@dataclass(frozen=True)
class MatchConfig:
    """How `saedex match` relates the features of two SAEs on one hook (docs/splitting.md)."""

    first: int = setting(
        5, "Best matches kept per feature, by decoder cosine and by activation correlation.",
        min=1, max=100,
    )  # fmt: skip
    parent_min_correlation: float = setting(
        0.3,
        "A wide feature's parent is its best-correlated narrow feature, if at least this "
        "correlated.",
        min=0.0, max=1.0,
    )  # fmt: skip
    parent_min_containment: float = setting(
        0.5,
        "... and if at least this share of the wide feature's tokens are the parent's.",
        min=0.0, max=1.0,
    )  # fmt: skip
    clear_min_correlation: float = setting(
        0.6, "A clear parent is at least this correlated ...", min=0.0, max=1.0
    )
    clear_min_containment: float = setting(
        0.8, "... and holds at least this share of the wide feature's tokens.", min=0.0, max=1.0
    )

    def __post_init__(self) -> None:
        validate(self)
