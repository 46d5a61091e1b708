"""Bytes per token of an index's bulk data, per file and table, exact and reduced precision.

    python bench/store_bench.py [--max-tokens 300000] [--precision float32 bfloat16]
                                [--sae default] [--keep DIR]

For each value precision, indexes the corpus with the model and SAE into a fresh store (or
reuses the one in --keep/<precision>.duckdb) and prints what a complete run occupies on disk:
its run file (vocab excluded: it is stored once per model, not per token) and each table's
Parquet file (saedex/store/bulk.py), in bytes per counted token. With --duckdb RUN_FILE it also
prints, for comparison, the tables of a run file of the earlier layout (every row in DuckDB),
e.g. one indexed by an earlier saedex (docs/schema.md, "Size").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

from saedex.store import bulk
from saedex.store.catalog import Catalog


def index(db: Path, precision: str, args: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "saedex.cli", "index", "--db", str(db), "--sae", args.sae]
    cmd += ["--corpus", args.corpus, "--max-tokens", str(args.max_tokens), "--quiet"]
    subprocess.run([*cmd, "--value-precision", precision, "--sae-id", "run"], check=True)


def table_bytes(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Bytes of the storage blocks each table occupies (block size x distinct blocks)."""
    block = con.execute("SELECT block_size FROM pragma_database_size()").fetchall()[0][0]
    out = {}
    for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
        n = con.execute(
            f"SELECT count(DISTINCT block_id) FROM pragma_storage_info('{table}') "
            "WHERE block_id >= 0"
        ).fetchall()[0][0]
        out[table] = n * block
    return out


def run_sizes(run_file: Path) -> tuple[int, dict[str, int]]:
    """(counted tokens, bytes per part): the run file without its vocab, and each table
    stored in Parquet (or, for a run file of the earlier layout, in the run file)."""
    con = duckdb.connect(str(run_file), read_only=True)
    n_tokens = con.execute("SELECT n_tokens FROM saes").fetchall()[0][0]
    tables = table_bytes(con)
    parts = {"run file (vocab excluded)": run_file.stat().st_size - tables.get("vocab", 0)}
    if bulk.is_parquet(con):
        for path in sorted(bulk.folder(run_file).iterdir()):
            parts[path.name] = path.stat().st_size
    else:
        parts |= {f"  of which {t}": n for t, n in tables.items() if n and t != "vocab"}
    con.close()
    return n_tokens, parts


def report(title: str, run_file: Path) -> None:
    n_tokens, parts = run_sizes(run_file)
    total = sum(n for name, n in parts.items() if not name.startswith("  of which"))
    print(f"{title}: {n_tokens:,} tokens, {total / 1e6:.1f} MB, {total / n_tokens:.1f} B/token")
    for name, n in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {n / n_tokens:8.1f} B/token {n / 1e6:8.2f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-tokens", type=int, default=300_000)
    p.add_argument("--precision", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--sae", default="default")
    p.add_argument("--corpus", default="default")
    p.add_argument("--keep", type=Path, help="build the stores here and keep them")
    p.add_argument("--duckdb", type=Path, help="also: a run file of the earlier layout")
    args = p.parse_args()
    if args.duckdb:
        report("earlier layout (every table in DuckDB)", args.duckdb)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for precision in args.precision:
            db = root / f"{precision}.duckdb"
            if not Catalog(db).complete():
                index(db, precision, args)
            (run_file,) = Catalog(db).complete().values()
            report(f"{precision} values", run_file)


if __name__ == "__main__":
    main()
