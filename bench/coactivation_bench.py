"""Co-activation's cost against the index pass it follows (issue 18.1; target: under 10% at 300k
tokens on the shipped SAE).

    python bench/coactivation_bench.py [--tokens 300000] [--first 10] [--repeats 3]
    python bench/coactivation_bench.py --db index.duckdb --sae ID   # an index already built

Side by side in one run: `saedex index` of the default model and SAE over the first `tokens`
tokens of the default corpus into a fresh index with co-activation off (wall and CPU time of
the whole run: tokenising, pass, aggregation), then the best of `repeats` co-activation
computations over that index (saedex/store/coactivation.py: the exact co-firing product and
the top-`first` table), and their ratio. With `--db` the run's recorded `duration_s` stands in
for the index time. Load averages are printed: on a shared machine wall times move with the
load, CPU times much less.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from saedex.config import IndexConfig
from saedex.store.coactivation import coactivation_table, cofiring, counted_tokens, firings
from saedex.store.views import connect


def cpu_seconds() -> float:
    """CPU time of this process and its threads (the model and scipy), user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def index_default(db: Path, tokens: int) -> tuple[str, float, float]:
    """Index the default model and SAE; (sae id, wall s, CPU s) of the whole run."""
    from saedex.indexer.indexing import IndexJob, run_index
    from saedex.memory import keep_freed_memory

    keep_freed_memory()
    config = IndexConfig(max_tokens=tokens, coactivations=0)
    job = IndexJob("default", "default", "default", db, config=config)
    cpu, started = cpu_seconds(), time.perf_counter()
    info = run_index(job, progress=False)
    return info.id, time.perf_counter() - started, cpu_seconds() - cpu


def measure(db: Path, sae_id: str, first: int, repeats: int) -> dict:
    """Best-of-`repeats` wall and CPU seconds of the product and of the ranking."""
    con = connect(db)
    best = {"read": float("inf"), "product": float("inf"), "rank": float("inf"), "cpu": 1e9}
    try:
        for _ in range(repeats):
            cpu, t0 = cpu_seconds(), time.perf_counter()
            fired = firings(con, sae_id)
            t1 = time.perf_counter()
            products = cofiring(fired)
            t2 = time.perf_counter()
            table = coactivation_table(products, counted_tokens(con, sae_id), first)
            t3 = time.perf_counter()
            for key, value in (("read", t1 - t0), ("product", t2 - t1), ("rank", t3 - t2)):
                best[key] = min(best[key], value)
            best["cpu"] = min(best["cpu"], cpu_seconds() - cpu)
        best |= {"entries": len(fired.feature), "pairs": products.nnz, "rows": table.num_rows}
        best |= {"d_sae": fired.n_features, "tokens": counted_tokens(con, sae_id)}
        best["run_s"] = con.execute(
            "SELECT duration_s FROM saes WHERE sae_id = ?", [sae_id]
        ).fetchone()[0]
    finally:
        con.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=300_000)
    parser.add_argument("--db", type=Path, default=None, help="an existing index (no indexing)")
    parser.add_argument("--sae", default=None, help="its SAE id (default: the first)")
    parser.add_argument("--first", type=int, default=IndexConfig.coactivations)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load averages before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.db is None:
            db = Path(tmp) / "index.duckdb"
            sae_id, index_wall, index_cpu = index_default(db, args.tokens)
        else:
            db, index_cpu = args.db, None
            con = connect(db)
            sae_id = args.sae or con.execute("SELECT min(sae_id) FROM saes").fetchone()[0]
            con.close()
        m = measure(db, sae_id, args.first, args.repeats)
    if args.db is not None:
        index_wall = m["run_s"]
    total = m["read"] + m["product"] + m["rank"]
    print(f"SAE {sae_id}: d_sae {m['d_sae']:,}, {m['tokens']:,} counted tokens")
    print(f"{m['entries']:,} activations, {m['pairs']:,} co-firing pairs, {m['rows']:,} rows kept")
    print(
        f"co-activation (best of {args.repeats}): read {m['read']:.2f} s + product "
        f"{m['product']:.2f} s + top-{args.first} {m['rank']:.2f} s = {total:.2f} s wall, "
        f"{m['cpu']:.2f} s CPU"
    )
    cpu_part = f", CPU {index_cpu:.1f} s" if index_cpu is not None else ""
    print(f"index run: wall {index_wall:.1f} s{cpu_part}")
    ratio = f"co-activation is {100 * total / index_wall:.1f}% of the index run's wall time"
    if index_cpu:
        ratio += f", {100 * m['cpu'] / index_cpu:.1f}% of its CPU time"
    print(ratio)
    print(f"load averages after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
