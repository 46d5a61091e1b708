"""Single-process indexing against the same run sharded on a local Ray cluster, side by side.

    python bench/ray_bench.py [--model default] [--sae default] [--corpus default]
                              [--tokens 1000000] [--workers 2] [--shards 4] [--out FILE]
                              [--sides single,ray] [--keep DIR]

Both sides index the same corpus prefix with the same settings into fresh stores, one after
the other in this process (the single process first; then a local Ray cluster on 127.0.0.1
with `--workers` CPUs, one torch thread per shard). Printed, and written as JSON to `--out`:
wall times, the cluster's start, the merge (every shard's append into the run file) and the
final aggregation, the driver's peak RSS during each (Linux's VmHWM, reset before the step:
what the step adds over what the process already held, the driver's loaded model included),
the shard and run sizes per token (run file plus its Parquet folder), and the load average
beside every figure: on a shared machine, background load moves the times (not the sizes), so
read them with it. Both indexes are compared table by table at the end
(tests/test_ray.py's comparison, streamed: DuckDB sorts out of core, so the comparison's memory
does not grow with the tokens). `--sides` runs one side now; with `--keep DIR` and the same
`--out`, the other side can run later (its figures join the same JSON) and the comparison runs
once both indexes are there.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from measure import Step, reset_peak, rss_mb  # bench/measure.py

from saedex.config import IndexConfig, RayConfig
from saedex.indexer import sharding
from saedex.indexer.indexing import IndexJob, run_index
from saedex.indexer.model import load_model
from saedex.memory import keep_freed_memory
from saedex.store import bulk
from saedex.store.catalog import Catalog
from saedex.store.writer import IndexWriter


def run(job: IndexJob, model, label: str) -> dict:
    load = os.getloadavg()
    started = time.perf_counter()
    info = run_index(job, progress=False, model=model)
    wall = time.perf_counter() - started
    run_file = Catalog(job.db).complete()[info.id]
    stored = run_file.stat().st_size + sum(  # a compacted run keeps its bulk tables in Parquet
        f.stat().st_size for f in bulk.folder(run_file).glob("*") if f.is_file()
    )
    return {
        "side": label,
        "wall_s": round(wall, 1),
        "tokens": info.n_tokens,
        "tokens_per_s": round(info.n_tokens / wall, 1),
        "run_bytes": stored,
        "bytes_per_token": round(stored / info.n_tokens, 1),
        "load_before": load,
        "load_after": os.getloadavg(),
    }


def main() -> None:
    args = parse_args()
    keep_freed_memory()
    results = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    results |= {"tokens_asked": args.tokens, "workers": args.workers, "shards": args.shards}
    with contextlib.ExitStack() as stack:
        where = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        where.mkdir(parents=True, exist_ok=True)
        single = IndexJob(
            args.model, args.sae, args.corpus, where / "single.duckdb", "s",
            config=IndexConfig(max_tokens=args.tokens),
        )  # fmt: skip
        sharded = dataclasses.replace(
            single, db=where / "ray.duckdb", ray=RayConfig(shards=args.shards)
        )
        model = load_model(args.model, None, None, False)
        if "single" in args.sides:
            results["single"] = single_side(single, model)
            _save(results, args.out)
        if "ray" in args.sides:
            results["ray"] = ray_side(sharded, model, args.workers, results)
            _save(results, args.out)
        if "single" in results and "ray" in results:
            results["overhead"] = round(results["ray"]["wall_s"] / results["single"]["wall_s"], 3)
        if all(job.db.exists() and Catalog(job.db).complete() for job in (single, sharded)):
            results["comparison"] = compare(sharded.db, single.db)
    _save(results, args.out)


def single_side(job: IndexJob, model) -> dict:
    finalize = Step("aggregation")
    IndexWriter.finalize = finalize.wrap(_unwrapped(IndexWriter.finalize))
    return run(job, model, "single process") | {"aggregation": finalize.report()}


def ray_side(job: IndexJob, model, workers: int, results: dict) -> dict:
    """The sharded run on a fresh local cluster, with the merge of each shard timed."""
    import ray

    load = os.getloadavg()
    started = time.perf_counter()
    sharding.start_local_cluster(ray, workers)
    results["cluster_start"] = {"seconds": round(time.perf_counter() - started, 1)}
    results["cluster_start"]["load_before"] = load
    merge, finalize = Step("merge"), Step("aggregation")
    IndexWriter.finalize = finalize.wrap(_unwrapped(IndexWriter.finalize))
    sizes: list[int] = []
    merge_shard = sharding.merge_shard

    def merged(writer, sae_id, shard):
        sizes.append(shard.path.stat().st_size)
        return merge_shard(writer, sae_id, shard)

    sharding.merge_shard = merge.wrap(merged)
    try:
        side = run(job, model, f"Ray, {workers} workers")
    finally:
        ray.shutdown()
        sharding.merge_shard = merge_shard
    side |= {"merge": merge.report(), "aggregation": finalize.report()}
    return side | {
        "shard_file_bytes": sum(sizes),
        "shard_bytes_per_token": round(sum(sizes) / side["tokens"], 1),
    }


def compare(got: Path, expected: Path) -> dict:
    """Every table of both indexes, streamed in canonical order (tests/test_ray.py's check)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_ray import assert_same_files

    base = reset_peak()
    started = time.perf_counter()
    rows = assert_same_files(got, expected)
    return {
        "identical_tables": True,
        "rows_compared": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_added_mb": round(rss_mb("VmHWM") - base, 1),
    }


def _unwrapped(fn):
    return getattr(fn, "__wrapped__", fn)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--sae", default="default")
    parser.add_argument("--corpus", default="default")
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument(
        "--sides", type=lambda s: s.split(","), default=["single", "ray"],
        help="which sides to run now, comma-separated (single,ray); with --keep, a side run "
        "earlier is compared with one run now",
    )  # fmt: skip
    parser.add_argument(
        "--keep", type=Path,
        help="keep both indexes in this folder (single.duckdb, ray.duckdb) instead of a "
        "temporary one",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="JSON results (updated in place if it exists)")
    return parser.parse_args()


def _save(results: dict, out: Path | None) -> None:
    text = json.dumps(results, indent=1)
    print(text, flush=True)
    if out:
        out.write_text(text)


if __name__ == "__main__":
    main()
