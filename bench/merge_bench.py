"""The driver's steps after the workers (shard merge, aggregation) against the tokens, on
synthetic shards: time and memory, under DuckDB memory limits.

    python bench/merge_bench.py [--tokens 1000000,3000000,10000000] [--shards 4] [--k 32]
                                [--features 4608] [--memory-limits default,1GB] [--out FILE]

A sharded run's memory target is a merge whose memory grows with the SAE's features, not with
the tokens (docs/scale.md). Measuring that with the model means an hour of the machine per
million tokens; neither step looks at the model's activations again, so this bench writes what
the workers leave instead: a planned run file (contexts of 128 tokens) and `--shards` complete
shard files holding `--k` activations per token (features and values from a seeded hash),
then runs the code `saedex index --ray` runs on the driver: saedex.store.merge.merge_shard for
each shard, then the aggregation (co-activations and IndexWriter.finalize, with the logit lens
and neighbours of a small random SAE). Each token count is run once per `--memory-limits`
entry (`SET memory_limit` on the run's connection, as `saedex index --memory-limit` does;
`default` is DuckDB's own, 80% of RAM), each in a fresh process, and measured like
bench/ray_bench.py: seconds, the process's peak RSS added by a call, DuckDB's peak buffer
memory, the load. Synthetic features are uniform, not a real SAE's skewed densities, so the
aggregation's time is indicative; its memory depends on the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import Step  # bench/measure.py

from saedex.config import IndexConfig
from saedex.store import coactivation
from saedex.store.merge import Shard, create_shard, mark_complete, merge_shard
from saedex.store.writer import IndexWriter

CONTEXT = 128
SAE = "s"


def build(folder: Path, tokens: int, shards: int, k: int, features: int) -> list[Shard]:
    """A planned run file `run.duckdb` and its complete shard files, as the workers leave them."""
    contexts = -(-tokens // CONTEXT)
    with IndexWriter(folder / "run.duckdb") as writer:
        run = {
            "sae_id": SAE, "model_name": "synthetic", "hook_name": "hook", "hook_layer": 0,
            "architecture": "topk", "d_in": 1, "d_sae": features, "context_size": CONTEXT,
            "prepend_bos": False, "settings": {},
        }  # fmt: skip
        writer.write_plan(run, [], [])
        plan(writer, contexts)
        cuts = [contexts * i // shards for i in range(shards + 1)]
        planned = [
            Shard(i, cuts[i], cuts[i + 1], folder / f"shard-{i}.duckdb") for i in range(shards)
        ]
        for shard in planned:
            create_shard(writer, SAE, shard)
    for shard in planned:
        with IndexWriter(shard.path) as writer:
            fill(writer, shard, k, features)
            mark_complete(writer, SAE, shard)
    return planned


def plan(writer: IndexWriter, contexts: int, per_document: int = 8) -> None:
    """The run's contexts (token ids cycling through a 49,152-token vocabulary) and documents."""
    writer.con.execute(
        "INSERT INTO contexts SELECT ?, i, i // ?, (i % ?) * ?, "
        "list_transform(range(?), lambda j: ((i * ? + j) % 49152)::INTEGER) FROM range(?) t(i)",
        [SAE, per_document, per_document, CONTEXT, CONTEXT, CONTEXT, contexts],
    )
    writer.con.execute(
        "INSERT INTO documents SELECT ?, d, 'doc' || d, 'synthetic', NULL, ? FROM range(?) t(d)",
        [SAE, per_document * CONTEXT, -(-contexts // per_document)],
    )
    writer.con.execute("UPDATE saes SET n_contexts = ? WHERE sae_id = ?", [contexts, SAE])


def weight_tables(features: int, cfg: IndexConfig, d_in: int = 64, vocab: int = 512) -> tuple:
    """Logit lens and neighbours of a small random SAE (the aggregation stores them)."""
    import torch

    from saedex.indexer.lens import logit_lens, neighbours

    gen = torch.Generator().manual_seed(0)
    w_dec = torch.randn(features, d_in, generator=gen)
    unembed = torch.randn(d_in, vocab, generator=gen)
    logits, hist = logit_lens(w_dec, unembed, cfg.n_logits, cfg.hist_bins)
    return logits, hist, neighbours(w_dec, cfg.n_neighbours)


def aggregate(writer: IndexWriter, cfg: IndexConfig, features: int, tables: tuple) -> None:
    """The driver's final step (indexer/indexing.py `_finalize`) over the merged rows."""
    coactivation.store_in_run(writer.con, SAE, cfg.coactivations)
    writer.finalize(SAE, cfg, features, *tables, 0.0)


def fill(writer: IndexWriter, shard: Shard, k: int, features: int) -> None:
    """The shard's activations in context order, k per token, and its progress at its end."""
    per_context = CONTEXT * k
    writer.con.execute(
        "INSERT INTO activations SELECT ?, (? + i // ?)::INTEGER, ((i // ?) % ?)::SMALLINT, "
        "(hash(i, 1) % ?)::INTEGER, ((hash(i, 2) % 100000) / 1e4)::FLOAT "
        "FROM range(?::BIGINT) t(i)",
        [SAE, shard.first, per_context, k, CONTEXT, features,
         (shard.end - shard.first) * per_context],
    )  # fmt: skip
    writer.con.execute(
        "UPDATE saes SET contexts_done = ?, n_tokens = ? WHERE sae_id = ?",
        [shard.end, (shard.end - shard.first) * CONTEXT, SAE],
    )


def merge_all(folder: Path, limit: str) -> dict:
    """Merge every shard into a copy of the planned run file under `limit` (child process)."""
    run_file = folder / f"merged-{limit}.duckdb"
    shutil.copy(folder / "run.duckdb", run_file)
    shards = json.loads((folder / "shards.json").read_text())
    features = json.loads((folder / "features.json").read_text())
    cfg = IndexConfig()
    tables = weight_tables(features, cfg)
    merging, aggregating = Step("merge"), Step("aggregation")
    merge, finish = merging.wrap(merge_shard), aggregating.wrap(aggregate)
    try:
        with IndexWriter(run_file, None if limit == "default" else limit) as writer:
            for index, first, end in shards:
                merge(writer, SAE, Shard(index, first, end, folder / f"shard-{index}.duckdb"))
            rows = writer.con.execute("SELECT count(*) FROM activations").fetchone()[0]
            finish(writer, cfg, features, tables)
        return {
            "merge": merging.report(),
            "aggregation": aggregating.report(),
            "rows": rows,
            "run_file_bytes": run_file.stat().st_size,
        }
    finally:
        run_file.unlink(missing_ok=True)


def measure(tokens: int, args: argparse.Namespace, where: Path) -> dict:
    folder = where / str(tokens)
    folder.mkdir()
    started = time.perf_counter()
    shards = build(folder, tokens, args.shards, args.k, args.features)
    (folder / "features.json").write_text(json.dumps(args.features))
    (folder / "shards.json").write_text(json.dumps([[s.index, s.first, s.end] for s in shards]))
    sizes = sum(s.path.stat().st_size for s in shards)
    result = {
        "tokens": shards[-1].end * CONTEXT,
        "activations": shards[-1].end * CONTEXT * args.k,
        "shard_bytes": sizes,
        "build_s": round(time.perf_counter() - started, 1),
        "merges": {},
    }
    for limit in args.memory_limits:
        child = [sys.executable, __file__, "--merge", str(folder), "--limit", limit]
        done = subprocess.run(child, capture_output=True, text=True)
        errors = [line for line in done.stderr.splitlines() if "Error" in line] or ["no output"]
        failed = done.returncode and errors[-1]
        result["merges"][limit] = {"error": failed} if failed else json.loads(done.stdout)
        print(json.dumps({tokens: {limit: result["merges"][limit]}}), flush=True)
    shutil.rmtree(folder)
    return result


def main() -> None:
    args = parse_args()
    if args.merge:
        print(json.dumps(merge_all(args.merge, args.limit)))
        return
    results = {"shards": args.shards, "k": args.k, "features": args.features, "sizes": []}
    results["load_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.tmp) as where:
        for tokens in args.tokens:
            results["sizes"].append(measure(tokens, args, Path(where)))
    results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


def _list(cast):
    return lambda text: [cast(x) for x in text.split(",")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=_list(int), default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--k", type=int, default=32, help="activations per token")
    parser.add_argument("--features", type=int, default=4608)
    parser.add_argument(
        "--memory-limits", type=_list(str), default=["default", "1GB"],
        help="DuckDB memory_limit values for the merging connection, comma-separated",
    )  # fmt: skip
    parser.add_argument("--tmp", type=Path, help="folder for the synthetic files")
    parser.add_argument("--out", type=Path, help="JSON results")
    parser.add_argument("--merge", type=Path, help=argparse.SUPPRESS)  # the child's folder
    parser.add_argument("--limit", default="default", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
