"""The DuckDB schema: a public surface that researchers query with SQL (documented in docs/schema.md).

Every table is keyed by `sae_id`, so several SAEs (hooks, widths) share one database file.
Bulk tables carry no PRIMARY KEY (an ART index slows bulk inserts); uniqueness is kept by
the writer, which replaces a run's rows inside one transaction.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from saedex.errors import SaedexError
from saedex.store.migrations import MIGRATIONS, upgrade

SCHEMA_VERSION = 6
# Versions this saedex reads: its own, and every one it has a migration from.
MIGRATIONS_FROM = {SCHEMA_VERSION, *MIGRATIONS}

TABLES: dict[str, str] = {
    "meta": """
        CREATE TABLE IF NOT EXISTS meta (
            key VARCHAR PRIMARY KEY,
            value VARCHAR
        )""",
    "saes": """
        CREATE TABLE IF NOT EXISTS saes (
            sae_id VARCHAR PRIMARY KEY,
            model_name VARCHAR NOT NULL,
            hook_name VARCHAR NOT NULL,
            hook_layer INTEGER NOT NULL,
            architecture VARCHAR NOT NULL,
            d_in INTEGER NOT NULL,
            d_sae INTEGER NOT NULL,
            sae_path VARCHAR,
            corpus VARCHAR,
            context_size INTEGER NOT NULL,
            prepend_bos BOOLEAN NOT NULL,
            bos_token_id INTEGER,
            n_documents INTEGER NOT NULL DEFAULT 0,
            n_skipped_documents INTEGER NOT NULL DEFAULT 0,
            n_contexts INTEGER NOT NULL DEFAULT 0,
            contexts_done INTEGER NOT NULL DEFAULT 0,
            n_tokens BIGINT NOT NULL DEFAULT 0,
            n_excluded_tokens BIGINT NOT NULL DEFAULT 0,
            dead_features INTEGER,
            status VARCHAR NOT NULL,
            settings JSON NOT NULL,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            duration_s DOUBLE NOT NULL DEFAULT 0,
            model_fingerprint VARCHAR,
            sae_weights_sha256 VARCHAR,
            sae_cfg_sha256 VARCHAR,
            corpus_fingerprint VARCHAR,
            saedex_version VARCHAR,
            dtype VARCHAR,
            device VARCHAR
        )""",
    "vocab": """
        CREATE TABLE IF NOT EXISTS vocab (
            model_name VARCHAR NOT NULL,
            token_id INTEGER NOT NULL,
            token VARCHAR NOT NULL
        )""",
    "documents": """
        CREATE TABLE IF NOT EXISTS documents (
            sae_id VARCHAR NOT NULL,
            doc_index INTEGER NOT NULL,
            doc_id VARCHAR NOT NULL,
            source VARCHAR,
            licence VARCHAR,
            n_tokens INTEGER NOT NULL
        )""",
    "contexts": """
        CREATE TABLE IF NOT EXISTS contexts (
            sae_id VARCHAR NOT NULL,
            context_id INTEGER NOT NULL,
            doc_index INTEGER NOT NULL,
            token_start INTEGER NOT NULL,
            token_ids INTEGER[] NOT NULL
        )""",
    "excluded_tokens": """
        CREATE TABLE IF NOT EXISTS excluded_tokens (
            sae_id VARCHAR NOT NULL,
            context_id INTEGER NOT NULL,
            position SMALLINT NOT NULL,
            norm_ratio FLOAT NOT NULL
        )""",
    "activations": """
        CREATE TABLE IF NOT EXISTS activations (
            sae_id VARCHAR NOT NULL,
            context_id INTEGER NOT NULL,
            position SMALLINT NOT NULL,
            feature INTEGER NOT NULL,
            value FLOAT NOT NULL
        )""",
    "features": """
        CREATE TABLE IF NOT EXISTS features (
            sae_id VARCHAR NOT NULL,
            feature INTEGER NOT NULL,
            n_active BIGINT NOT NULL,
            density DOUBLE NOT NULL,
            max_activation DOUBLE NOT NULL,
            mean_activation DOUBLE NOT NULL,
            skew DOUBLE,
            kurtosis DOUBLE,
            hist_edges DOUBLE[] NOT NULL,
            hist_counts BIGINT[] NOT NULL,
            logit_hist_edges DOUBLE[] NOT NULL,
            logit_hist_counts BIGINT[] NOT NULL
        )""",
    "feature_logits": """
        CREATE TABLE IF NOT EXISTS feature_logits (
            sae_id VARCHAR NOT NULL,
            feature INTEGER NOT NULL,
            kind VARCHAR NOT NULL,
            rank SMALLINT NOT NULL,
            token_id INTEGER NOT NULL,
            value FLOAT NOT NULL
        )""",
    "intervals": """
        CREATE TABLE IF NOT EXISTS intervals (
            sae_id VARCHAR NOT NULL,
            feature INTEGER NOT NULL,
            interval SMALLINT NOT NULL,
            low DOUBLE NOT NULL,
            high DOUBLE NOT NULL,
            n_activations BIGINT NOT NULL,
            fraction DOUBLE NOT NULL
        )""",
    "examples": """
        CREATE TABLE IF NOT EXISTS examples (
            sae_id VARCHAR NOT NULL,
            feature INTEGER NOT NULL,
            kind VARCHAR NOT NULL,
            interval SMALLINT,
            rank SMALLINT NOT NULL,
            context_id INTEGER NOT NULL,
            max_activation FLOAT NOT NULL,
            max_position SMALLINT NOT NULL,
            active_positions SMALLINT[] NOT NULL,
            active_values FLOAT[] NOT NULL
        )""",
    "neighbours": """
        CREATE TABLE IF NOT EXISTS neighbours (
            sae_id VARCHAR NOT NULL,
            feature INTEGER NOT NULL,
            rank SMALLINT NOT NULL,
            neighbour INTEGER NOT NULL,
            cosine FLOAT NOT NULL
        )""",
    # Computed from complete runs (schema 4): by `saedex index` into the run's own file, or
    # afterwards into a derived file (saedex/store/derived.py) that readers see beside the runs.
    "coactivations": """
        CREATE TABLE IF NOT EXISTS coactivations (
            sae_id VARCHAR NOT NULL,
            feature INTEGER NOT NULL,
            rank SMALLINT NOT NULL,
            other INTEGER NOT NULL,
            count BIGINT NOT NULL,
            jaccard FLOAT NOT NULL,
            lift FLOAT NOT NULL
        )""",
    "feature_matches": """
        CREATE TABLE IF NOT EXISTS feature_matches (
            sae_id VARCHAR NOT NULL,
            feature INTEGER NOT NULL,
            other_sae_id VARCHAR NOT NULL,
            other_feature INTEGER NOT NULL,
            decoder_cos FLOAT,
            act_corr FLOAT,
            co_count BIGINT,
            cover FLOAT,
            relation VARCHAR
        )""",
    "feature_families": """
        CREATE TABLE IF NOT EXISTS feature_families (
            sae_id VARCHAR NOT NULL,
            feature INTEGER NOT NULL,
            other_sae_id VARCHAR NOT NULL,
            n_children INTEGER NOT NULL,
            cover FLOAT NOT NULL
        )""",
}

# What made a run (saedex.provenance); a rerun or resume must match the first four.
PROVENANCE_COLUMNS = (
    "model_fingerprint",
    "sae_weights_sha256",
    "sae_cfg_sha256",
    "corpus_fingerprint",
    "saedex_version",
    "dtype",
    "device",
)

# Tables a run owns rows in, in the order they are cleared when a run is replaced.
RUN_TABLES = (
    "coactivations",
    "examples",
    "intervals",
    "neighbours",
    "feature_logits",
    "features",
    "activations",
    "excluded_tokens",
    "contexts",
    "documents",
    "saes",
)

# Tables rebuilt by the final aggregation step (everything derived from `activations`).
DERIVED_TABLES = ("examples", "intervals", "neighbours", "feature_logits", "features")


def ensure_schema(con: duckdb.DuckDBPyConnection, path: str | Path) -> None:
    """Create missing tables, upgrading a file of an earlier schema version first (one
    transaction, see migrations.py); refuse (untouched) a file of a newer one."""
    version = check_version(con, path)
    if version is not None and version < SCHEMA_VERSION:
        upgrade(con, path, version, SCHEMA_VERSION)
    for ddl in TABLES.values():
        con.execute(ddl)
    if version is None:
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])


def check_version(con: duckdb.DuckDBPyConnection, path: str | Path, prefix: str = "") -> int | None:
    """The file's schema version (`prefix`: an attached file's alias and a dot); a newer one
    than this saedex knows is refused."""
    version = stored_version(con, prefix)
    if version is not None and (version > SCHEMA_VERSION or version not in MIGRATIONS_FROM):
        raise SaedexError(
            f"{path}: index schema version {version} is not supported (this saedex reads "
            f"{SCHEMA_VERSION} and upgrades 1 to {SCHEMA_VERSION - 1}); upgrade saedex"
        )
    return version


def stored_version(con: duckdb.DuckDBPyConnection, prefix: str = "") -> int | None:
    try:
        row = con.execute(f"SELECT value FROM {prefix}meta WHERE key = 'schema_version'").fetchone()
    except duckdb.CatalogException:  # a new file
        return None
    return None if row is None else int(row[0])
