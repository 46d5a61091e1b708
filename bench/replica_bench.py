"""Throughput of `saedex serve --workers N` (replicas over one store) for several N.

    python bench/replica_bench.py --db index.duckdb [--workers 1 2 4] [--duration 30]

Also reached as `python bench/api_bench.py --db ... --replicas 1 2 4`. For each N, a real server
with N worker processes (no live inference) takes `--concurrency` clients looping over the
feature query of bench/api_bench.py for `--duration` seconds; prints req/s, p50/p99 and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from api_bench import FEATURE_QUERY, free_port, graphql, live_features, percentiles, wait_ready
from api_bench import worker as client_loop

from saedex.store import IndexReader


@contextlib.contextmanager
def replicas(db: Path, workers: int):
    port = free_port()
    cmd = [sys.executable, "-m", "saedex.cli", "serve", "--db", str(db), "--port", str(port)]
    cmd += ["--no-inference", "--workers", str(workers)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout=600)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the supervisor and its workers
        try:
            proc.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def feature_mix(sae_id: str, features: list[int]):
    """api_bench's worker takes (kind, query, variables): the feature query, round the list."""
    return (
        ("feature", FEATURE_QUERY, {"sae": sae_id, "index": index})
        for index in itertools.cycle(features)
    )


async def throughput(db: Path, sae_id: str, workers: int, args) -> tuple[float, float, float, int]:
    """(req/s, p50 ms, p99 ms, errors) of `args.concurrency` clients for `args.duration` s."""
    features = live_features(db, sae_id, 10_000, args.seed + 1)
    with replicas(db, workers) as url:
        limits = httpx.Limits(max_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            for index in features[: 10 * workers]:  # every worker's first requests
                await graphql(client, FEATURE_QUERY, {"sae": sae_id, "index": index})
            deadline = time.perf_counter() + args.duration
            results = await asyncio.gather(
                *(
                    client_loop(
                        client, feature_mix(sae_id, features[w :: args.concurrency]), deadline
                    )
                    for w in range(args.concurrency)
                )
            )
    ms = [t for r in results for _, t in r[0]]
    p50, p99 = percentiles(ms)
    return len(ms) / args.duration, p50, p99, sum(r[1] for r in results)


async def report(db: Path, sae_id: str, args) -> None:
    print(f"\nreplicas: {args.concurrency} clients, {args.duration:g} s each, real uvicorn")
    base = None
    for workers in args.replicas:
        rate, p50, p99, errors = await throughput(db, sae_id, workers, args)
        base = base or rate
        print(
            f"   --workers {workers}: {rate:7.0f} req/s ({rate / base:4.2f}x)   "
            f"p50 {p50:6.2f} ms   p99 {p99:7.2f} ms   {errors} errors"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--sae-id", help="SAE to query [the first]")
    p.add_argument("--workers", dest="replicas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--duration", type=float, default=30)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with IndexReader(args.db) as reader:
        sae_id = args.sae_id or reader.saes()[0].id
    asyncio.run(report(args.db, sae_id, args))


if __name__ == "__main__":
    main()
