"""Bytes per token of an index's bulk data, per table, and what Parquet would take instead.

    python bench/store_bench.py [--max-tokens 30000] [--sae default] [--keep DIR]

Indexes the corpus with the model and SAE into a fresh store (or reuses the one in --keep) and
prints the run file's size and each table's storage blocks, in bytes per counted token (vocab
excluded: it is stored once per model, not per token). Then writes the run's `activations` as
Parquet (zstd, format v2: dictionary/RLE ids, byte-stream-split floats) with exact fp32 values
and with values rounded to bf16 and fp16, and prints their bytes per token: the measured basis
for moving activations out of the run file (docs/schema.md, "Size").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

from saedex.store.catalog import Catalog


def index(db: Path, args: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "saedex.cli", "index", "--db", str(db), "--sae", args.sae]
    cmd += ["--corpus", args.corpus, "--max-tokens", str(args.max_tokens), "--quiet"]
    subprocess.run([*cmd, "--sae-id", "run"], check=True)


def table_bytes(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Bytes of the storage blocks each table occupies (block size x distinct blocks)."""
    block = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
    out = {}
    for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
        n = con.execute(
            f"SELECT count(DISTINCT block_id) FROM pragma_storage_info('{table}') "
            "WHERE block_id >= 0"
        ).fetchone()[0]
        out[table] = n * block
    return out


def parquet_bytes(con: duckdb.DuckDBPyConnection, out: Path) -> dict[str, int]:
    """The activations as Parquet, token-major, with exact and rounded values."""
    import numpy as np
    import pyarrow as pa
    import torch

    acts = con.sql(
        "SELECT context_id, position, feature, value FROM activations "
        "ORDER BY context_id, position, feature"
    ).to_arrow_table()
    value = torch.from_numpy(acts.column("value").to_numpy())
    sizes = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        rounded = value if dtype is None else value.to(dtype).float()
        table = acts.set_column(3, "value", pa.array(np.asarray(rounded), pa.float32()))
        con.register("_acts", table)
        path = out / f"activations-{name}.parquet"
        con.execute(
            f"COPY _acts TO '{path}' (FORMAT parquet, COMPRESSION zstd, PARQUET_VERSION v2)"
        )
        con.unregister("_acts")
        sizes[name] = path.stat().st_size
    return sizes


def report(db: Path, out: Path) -> None:
    (run_file,) = Catalog(db).complete().values()
    con = duckdb.connect(str(run_file), read_only=True)
    n_tokens = con.execute("SELECT n_tokens FROM saes").fetchone()[0]
    tables = table_bytes(con)
    size = run_file.stat().st_size
    bulk = size - tables.get("vocab", 0)
    print(f"{n_tokens:,} tokens; run file {size / 1e6:.1f} MB, bulk {bulk / n_tokens:.1f} B/token")
    for table, n in sorted(tables.items(), key=lambda kv: -kv[1]):
        if n:
            print(f"  {table:16s} {n / n_tokens:8.1f} B/token")
    n_acts = con.execute("SELECT count(*) FROM activations").fetchone()[0]
    print(f"activations: {n_acts:,} rows ({n_acts / n_tokens:.1f} per token); as Parquet:")
    for name, n in parquet_bytes(con, out).items():
        print(f"  {name}: {n / n_tokens:7.1f} B/token ({n / n_acts:.2f} B per activation)")
    con.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-tokens", type=int, default=30_000)
    p.add_argument("--sae", default="default")
    p.add_argument("--corpus", default="default")
    p.add_argument("--keep", type=Path, help="build the store here and keep it")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        db = root / "float32.duckdb"
        if not Catalog(db).complete():
            index(db, args)
        report(db, Path(tmp))


if __name__ == "__main__":
    main()
