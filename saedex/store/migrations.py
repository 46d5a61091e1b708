"""Upgrades of index files written by earlier saedex versions, in place and all-or-nothing.

`MIGRATIONS[v]` takes a file from schema version v to v + 1. Each step is frozen SQL (never the
current DDL: it must mean the same thing forever). `upgrade` runs every step a file needs and
the new `meta.schema_version` in ONE transaction, so a kill at any point leaves the file at its
old version or at the new one, never in between; DuckDB's DDL is transactional.

Every schema change adds a step here and a test that upgrades a stored file of the old version
(tests/data/schema<N>.duckdb.gz, tests/test_migrations.py).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from saedex.errors import SaedexError

# v1 -> v2: example activations sparse (non-zero positions and values) instead of dense lists.
_V1_TO_V2 = (
    """
    CREATE TABLE _examples_v2 (
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
    """
    INSERT INTO _examples_v2
    SELECT sae_id, feature, kind, interval, rank, context_id, max_activation, max_position,
           list_filter(range(len(activations)), lambda i: activations[i + 1] <> 0)::SMALLINT[],
           list_filter(activations, lambda v: v <> 0)
    FROM examples
    """,
    "DROP TABLE examples",
    "ALTER TABLE _examples_v2 RENAME TO examples",
)

# v2 -> v3: provenance of each run (NULL for runs indexed before it was recorded).
_V2_TO_V3 = tuple(
    f"ALTER TABLE saes ADD COLUMN {column} VARCHAR"
    for column in (
        "model_fingerprint",
        "sae_weights_sha256",
        "sae_cfg_sha256",
        "corpus_fingerprint",
        "saedex_version",
        "dtype",
        "device",
    )
)

# v3 -> v4: co-activations and matches across SAEs (empty until computed; derived.py).
_V3_TO_V4 = (
    """
    CREATE TABLE coactivations (
        sae_id VARCHAR NOT NULL,
        feature INTEGER NOT NULL,
        rank SMALLINT NOT NULL,
        other INTEGER NOT NULL,
        count BIGINT NOT NULL,
        jaccard FLOAT NOT NULL,
        lift FLOAT NOT NULL
    )""",
    """
    CREATE TABLE feature_matches (
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
)

# v4 -> v5: a complete run may keep its bulk tables in Parquet files beside its run file
# (`meta.bulk = 'parquet'`, saedex/store/bulk.py), its own tables then empty. A file of an
# earlier version keeps every row in its tables and is read as it is: nothing to rewrite. The
# version changes so that an earlier saedex refuses such a store instead of reading the empty
# tables of its compacted runs.
_V4_TO_V5: tuple[str, ...] = ()

# v5 -> v6: a narrow feature's family in a wider SAE (how many children, their cover) gets a
# table of its own; schema 5 kept it as a `feature_matches` row with relation 'family',
# other_feature -1 and the number of children in co_count.
_V5_TO_V6 = (
    """
    CREATE TABLE feature_families (
        sae_id VARCHAR NOT NULL,
        feature INTEGER NOT NULL,
        other_sae_id VARCHAR NOT NULL,
        n_children INTEGER NOT NULL,
        cover FLOAT NOT NULL
    )""",
    """
    INSERT INTO feature_families (sae_id, feature, other_sae_id, n_children, cover)
    SELECT sae_id, feature, other_sae_id, co_count, cover
    FROM feature_matches WHERE relation = 'family'""",
    "DELETE FROM feature_matches WHERE relation = 'family'",
)

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: _V1_TO_V2,
    2: _V2_TO_V3,
    3: _V3_TO_V4,
    4: _V4_TO_V5,
    5: _V5_TO_V6,
}


def upgrade(con: duckdb.DuckDBPyConnection, path: str | Path, version: int, target: int) -> None:
    """Take the file from `version` to `target` in one transaction (rolled back on any error)."""
    con.execute("BEGIN TRANSACTION")
    try:
        for step in range(version, target):
            for sql in MIGRATIONS[step]:
                con.execute(sql)
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(target)])
        con.execute("COMMIT")
    except duckdb.Error as exc:
        con.execute("ROLLBACK")
        raise SaedexError(
            f"{path}: cannot upgrade index schema {version} to {target} (file left as it was): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    con.execute("CHECKPOINT")  # the upgraded file no longer needs its WAL
