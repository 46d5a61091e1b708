"""Benchmark the query API against DuckDB itself, under load, and live inference.

    python bench/api_bench.py --db bench.duckdb [--sae DIR] [--duration 60]

Prints, from one run:
1. p50/p99 of `feature { topExamples(first: 20) { tokens activations ... } }` through the API
   (in-process, httpx's ASGI transport) and of the same data read straight from DuckDB (one
   SQL query, cursor + fetchall), interleaved feature by feature, and their ratio;
2. mixed load against a real `saedex serve` (uvicorn on 127.0.0.1, live inference on, torch
   --threads): --concurrency clients for --duration seconds, each request drawn at random:
   --live-share of them `activeFeatures` on a 64-token text (batched by the server), the rest
   index queries (half one feature's top examples, half a page of 20 features); p50/p99 per
   kind, throughput and errors;
3. p50 of `activeFeatures` on a 64-token text alone, in-process (the index's model and SAE, CPU).

If --db does not exist it is built first: `saedex index` over --corpus with --sae, or, without
--sae, a random TopK SAE of the default shape (d_in 576, d_sae 4608, k 32, layer 6).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import duckdb
import httpx
import torch

from saedex.api.schema import encode_cursor
from saedex.config import ServeConfig
from saedex.store import IndexReader
from saedex.store.views import connect

FEATURE_QUERY = """query ($sae: ID!, $index: Int!) { feature(sae: $sae, index: $index) {
  topExamples(first: 20) {
    tokens activations maxActivation maxTokenIndex documentId source } } }"""

RAW_QUERY = """
SELECT c.token_ids, e.active_positions, e.active_values, e.max_activation, e.max_position,
       d.doc_id, d.source
FROM examples e
JOIN contexts c ON c.sae_id = e.sae_id AND c.context_id = e.context_id
JOIN documents d ON d.sae_id = c.sae_id AND d.doc_index = c.doc_index
WHERE e.sae_id = ? AND e.feature = ? AND e.kind = 'top' AND e.rank <= 20
ORDER BY e.rank
"""

ACTIVE_QUERY = """query ($sae: ID!, $text: String!) { activeFeatures(sae: $sae, text: $text) {
  tokens positions { features { index value } } features { index maxValue values } } }"""


# -- the index -------------------------------------------------------------------------------


def random_sae(path: Path, seed: int = 0) -> Path:
    """A TopK SAE of the default shape with unit-norm random decoder rows (encoder = W_dec^T)."""
    from saedex.indexer.sae import SaeConfig, save_sae

    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(4608, 576, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    weights = {
        "W_enc": w_dec.T.contiguous(),
        "b_enc": torch.zeros(4608),
        "W_dec": w_dec,
        "b_dec": torch.zeros(576),
    }
    cfg = SaeConfig(
        "topk", 576, 4608, "blocks.6.hook_resid_post", "HuggingFaceTB/SmolLM2-135M-Instruct", k=32
    )
    return save_sae(path, weights, cfg)


def build_index(args: argparse.Namespace) -> None:
    sae = args.sae or str(random_sae(Path(tempfile.mkdtemp()) / "random-sae"))
    cmd = [sys.executable, "-m", "saedex.cli", "index", "--db", str(args.db), "--sae", sae]
    cmd += ["--corpus", args.corpus, "--max-tokens", str(args.max_tokens), "--quiet"]
    print("building the index:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def describe(reader: IndexReader, sae_id: str) -> str:
    info = reader.sae(sae_id)
    return (
        f"index {sae_id}: {info.d_sae:,} features, {info.n_contexts:,} contexts x "
        f"{info.context_size} tokens, {info.n_tokens:,} tokens, {info.settings['top_k']} top "
        f"examples per feature ({info.model_name}, {info.hook_name})"
    )


def live_features(db: Path, sae_id: str, n: int, seed: int) -> list[int]:
    """n random features that have examples."""
    con = connect(db)  # all runs of the store, under the table names
    rows = con.execute(
        "SELECT feature FROM features WHERE sae_id = ? AND n_active > 0 ORDER BY feature",
        [sae_id],
    ).fetchall()
    con.close()
    return random.Random(seed).choices([r[0] for r in rows], k=n)


# -- measuring -------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return statistics.median(samples), cuts[98]


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await fn()
    return (time.perf_counter() - started) * 1000


def body(sae_id: str, index: int) -> dict:
    return {"query": FEATURE_QUERY, "variables": {"sae": sae_id, "index": index}}


def raw_fetch(con: duckdb.DuckDBPyConnection, sae_id: str, index: int) -> list[tuple]:
    cur = con.cursor()
    try:
        return cur.execute(RAW_QUERY, [sae_id, index]).fetchall()
    finally:
        cur.close()


async def graphql(client: httpx.AsyncClient, query: str, variables: dict) -> dict:
    response = await client.post("/graphql", json={"query": query, "variables": variables})
    body = response.json()
    if response.status_code != 200 or body.get("errors"):
        raise RuntimeError(f"API error {response.status_code}: {body}")
    return body["data"]


async def latency(reader: IndexReader, db: Path, sae_id: str, args) -> None:
    """API vs raw DuckDB for the same features, interleaved so both see the same machine."""
    from saedex.api.app import create_app

    app = create_app(reader, ServeConfig(inference=False))
    con = connect(db)  # all runs of the store, under the table names
    features = live_features(db, sae_id, args.warmup + args.requests, args.seed)
    api_ms, raw_ms = [], []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for i, index in enumerate(features):
            variables = {"sae": sae_id, "index": index}
            api = await timed(lambda v=variables: graphql(client, FEATURE_QUERY, v))
            started = time.perf_counter()
            raw_fetch(con, sae_id, index)
            raw = (time.perf_counter() - started) * 1000
            if i >= args.warmup:
                api_ms.append(api)
                raw_ms.append(raw)
        size = statistics.median(
            [
                len((await client.post("/graphql", json=body(sae_id, i))).content)
                for i in features[:20]
            ]
        )
    con.close()
    (api50, api99), (raw50, raw99) = percentiles(api_ms), percentiles(raw_ms)
    print(f"\n1. feature.topExamples(first: 20), {args.requests} random features, {size:,.0f} B")
    print(f"   raw DuckDB query   p50 {raw50:6.2f} ms   p99 {raw99:6.2f} ms")
    print(f"   API (ASGI, httpx)  p50 {api50:6.2f} ms   p99 {api99:6.2f} ms")
    print(f"   ratio API/raw      p50 {api50 / raw50:6.2f}x  p99 {api99 / raw99:6.2f}x")


# -- load against a real server --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PAGE_QUERY = """query ($sae: ID!, $after: String) { features(sae: $sae, first: 20, after: $after) {
  edges { node { index density maxActivation topLogits(first: 5) { token value } } } } }"""


@contextlib.contextmanager
def server(db: Path, port: int, threads: int, nice: int = 10) -> Iterator[str]:
    """`saedex serve` in a subprocess (live inference on), until the block ends."""
    cmd = [sys.executable, "-m", "saedex.cli", "serve", "--db", str(db), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--threads", str(threads), "--device", "cpu", "--index-nice", str(nice)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"saedex serve exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/saes", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("saedex serve did not start")


STEER_QUERY = """query ($sae: ID!, $prompt: String!, $index: Int!) {
  steer(sae: $sae, prompt: $prompt, features: [{index: $index, strength: 40}], nTokens: 32) {
    default { text } steered { text steps { logprob } } } }"""


def requests(sae_id: str, features: list[int], texts: list[str], args, seed: int):
    """An endless random mix of (kind, query, variables)."""
    rng = random.Random(seed)
    share = args.live_share
    while True:
        draw = rng.random()
        if draw < args.steer_share:
            variables = {
                "sae": sae_id,
                "prompt": rng.choice(texts)[:80],
                "index": rng.choice(features),
            }
            yield "steer", STEER_QUERY, variables
        elif draw < args.steer_share + share:
            yield "activeFeatures", ACTIVE_QUERY, {"sae": sae_id, "text": rng.choice(texts)}
        elif rng.random() < 0.5:
            yield "feature", FEATURE_QUERY, {"sae": sae_id, "index": rng.choice(features)}
        else:
            after = encode_cursor(rng.randrange(0, 4000, 20))
            yield "features page", PAGE_QUERY, {"sae": sae_id, "after": after}


async def load(reader: IndexReader, db: Path, sae_id: str, args) -> None:
    """Mixed load, once per `--index-nice` value (side by side in one run)."""
    for nice in args.index_nice:
        await mixed_load(reader, db, sae_id, args, nice)


async def mixed_load(reader: IndexReader, db: Path, sae_id: str, args, nice: int) -> None:
    """`--concurrency` clients, back to back, until `--duration` runs out."""
    features = live_features(db, sae_id, 10_000, args.seed + 1)
    texts = [text_of(db, sae_id, reader, 64, offset) for offset in range(7, 27)]
    with server(db, free_port(), args.threads, nice) as url:
        limits = httpx.Limits(max_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            started = time.perf_counter()
            warm = {"sae": sae_id, "text": texts[0]}
            await client.post(
                "/graphql", json={"query": ACTIVE_QUERY, "variables": warm}, timeout=600
            )
            print(
                f"\n   (server up; first activeFeatures loads the model: "
                f"{time.perf_counter() - started:.1f} s)"
            )
            for index in features[:20]:
                await graphql(client, FEATURE_QUERY, {"sae": sae_id, "index": index})
            deadline = time.perf_counter() + args.duration
            results = await asyncio.gather(
                *(
                    worker(client, requests(sae_id, features, texts, args, w), deadline)
                    for w in range(args.concurrency)
                )
            )
    by_kind: dict[str, list[float]] = {}
    errors = sum(r[1] for r in results)
    for r in results:
        for kind, ms in r[0]:
            by_kind.setdefault(kind, []).append(ms)
    n = sum(len(v) for v in by_kind.values())
    print(
        f"\n2. mixed load: {args.concurrency} clients, {args.duration:g} s, real uvicorn, "
        f"live inference on ({args.threads} torch threads), {args.live_share:.0%} activeFeatures,"
        f" {args.steer_share:.0%} steer, server --index-nice {nice}"
    )
    print(f"   {n:,} requests, {n / args.duration:,.0f} req/s, {errors} errors")
    for kind, ms in sorted(by_kind.items()):
        p50, p99 = percentiles(ms)
        print(f"   {kind:15s} n={len(ms):6,d}   p50 {p50:8.2f} ms   p99 {p99:8.2f} ms")


async def worker(client: httpx.AsyncClient, mix, deadline: float):
    """Requests back to back until the deadline: ([(kind, ms)], errors)."""
    out, errors = [], 0
    while time.perf_counter() < deadline:
        kind, query, variables = next(mix)
        try:
            out.append((kind, await timed(lambda q=query, v=variables: graphql(client, q, v))))
        except (httpx.HTTPError, RuntimeError) as exc:
            errors += 1
            if errors <= 3:
                print(f"   error ({kind}): {str(exc)[:200]}")
    return out, errors


# -- live inference --------------------------------------------------------------------------


def text_of(db: Path, sae_id: str, reader: IndexReader, n_tokens: int, offset: int = 7) -> str:
    """n_tokens of real text from the index (a context's tokens after BOS), decoded."""
    con = connect(db)  # all runs of the store, under the table names
    ids = con.execute(
        "SELECT token_ids FROM contexts WHERE sae_id = ? AND len(token_ids) > ? "
        "ORDER BY context_id LIMIT 1 OFFSET ?",
        [sae_id, n_tokens + 1, offset],
    ).fetchone()[0]
    con.close()
    vocab = reader.vocab(reader.sae(sae_id).model_name)
    return "".join(vocab[t] for t in ids[1 : n_tokens + 1])


async def live(reader: IndexReader, db: Path, sae_id: str, args) -> None:
    from saedex.api.app import create_app
    from saedex.api.inference import InferenceEngine

    engine = InferenceEngine("cpu", threads=args.threads)
    app = create_app(reader, ServeConfig(device="cpu"), engine)
    text = text_of(db, sae_id, reader, 64)
    variables = {"sae": sae_id, "text": text}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as c:
        started = time.perf_counter()
        first = await graphql(c, ACTIVE_QUERY, variables)
        load_s = time.perf_counter() - started
        ms = [await timed(lambda: graphql(c, ACTIVE_QUERY, variables)) for _ in range(args.live)]
        texts = [text_of(db, sae_id, reader, 64, offset) for offset in range(7, 15)]
        burst = {}
        for name, bound in (("one at a time", 1), ("batched", ServeConfig().batch_max_contexts)):
            engine.max_contexts = bound  # 1: each forward runs one text, in arrival order
            burst[name] = []
            for _ in range(args.bursts):
                burst[name] += await asyncio.gather(
                    *(
                        timed(lambda t=t: graphql(c, ACTIVE_QUERY, {"sae": sae_id, "text": t}))
                        for t in texts
                    )
                )
    n = len(first["activeFeatures"]["tokens"])
    p50, p99 = percentiles(ms)
    print(f"\n3. activeFeatures, {n}-token text, CPU ({torch.get_num_threads()} threads)")
    print(f"   first call (loads model + SAE) {load_s:.1f} s")
    print(f"   alone: p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   ({args.live} runs)")
    print(f"   {len(texts)} at once, {args.bursts} bursts (per-request latency):")
    for name, times in burst.items():
        b50, b99 = percentiles(times)
        print(f"     {name:14s} p50 {b50:8.1f} ms   p99 {b99:8.1f} ms")


def pick_sae(reader: IndexReader, args: argparse.Namespace) -> str:
    """--sae-id, else the id `saedex index` gives --sae, else the file's first SAE."""
    if args.sae_id:
        return args.sae_id
    if args.sae:
        from saedex.indexer.indexing import default_sae_id
        from saedex.indexer.sae import resolve_sae

        return default_sae_id(resolve_sae(args.sae))
    return reader.saes()[0].id


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", type=Path, required=True, help="index file (built if missing)")
    p.add_argument("--sae", help='SAE to index and query ("default" or a directory)')
    p.add_argument("--sae-id", help="SAE id in the index to query [--sae's, else the first]")
    p.add_argument("--corpus", default="default", help="corpus to build the index from")
    p.add_argument("--max-tokens", type=int, default=250_000, help="tokens to index if building")
    p.add_argument("--requests", type=int, default=200, help="latency samples")
    p.add_argument("--warmup", type=int, default=30, help="unmeasured requests first")
    p.add_argument("--duration", type=float, default=60, help="seconds of load (0: skip)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent load clients")
    p.add_argument("--live", type=int, default=20, help="activeFeatures runs (0: skip)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for live inference")
    p.add_argument("--bursts", type=int, default=3, help="bursts of 8 concurrent live requests")
    p.add_argument("--live-share", type=float, default=0.05, help="activeFeatures share of load")
    p.add_argument("--steer-share", type=float, default=0.0, help="steer share of load")
    p.add_argument(
        "--index-nice",
        type=int,
        nargs="+",
        default=[ServeConfig().index_nice],
        help="serve --index-nice for the mixed load; several values run one after another",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(  # replicas (store): bench/replica_bench.py
        "--replicas", type=int, nargs="*", default=[], help="also: throughput with N workers"
    )
    return p.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    if not args.db.exists():
        build_index(args)
    with IndexReader(args.db) as reader:
        sae_id = pick_sae(reader, args)
        print(describe(reader, sae_id))
        await latency(reader, args.db, sae_id, args)
        if args.duration > 0:
            await load(reader, args.db, sae_id, args)
        if args.live > 0:
            await live(reader, args.db, sae_id, args)
    if args.replicas:  # replicas (store)
        from replica_bench import report

        await report(args.db, sae_id, args)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
