"""Indexing throughput against the bare model forward to the hook, on the same batches.

    python bench/index_bench.py [--model default] [--sae default] [--corpus default]
                                [--tokens 300000] [--repeats 2] [--device cpu]

Both sides use one loaded model and the same contexts (the indexer's own tokenisation, read
back from the index it wrote). "bare" is only `forward_to_hook` per batch; "index" is the whole
`run_index` into a fresh database: tokenising, the pass (SAE encode, sparse extraction, DuckDB
commits) and the final aggregation, logit lens and neighbours. Repeats alternate the two (after a
small warm-up run) and the best of each is reported, so background load hurts both alike. The
process keeps freed memory for reuse (`saedex.memory.keep_freed_memory`) as `saedex index` does,
for both.

"index" includes ~5 s per SAE that do not grow with the corpus (the logit lens, choosing and
storing examples), so below ~300k tokens (the default: about 10 minutes on 2 CPU cores) the
ratio drops; above it, run-to-run noise on a shared machine moves it more than the corpus size.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from saedex.config import IndexConfig
from saedex.indexer.indexing import IndexJob, run_index
from saedex.indexer.model import forward_to_hook, load_model
from saedex.indexer.sae import load_sae, resolve_sae
from saedex.memory import keep_freed_memory
from saedex.store import IndexWriter

WARM_UP_TOKENS = 20_000  # loads the lazily initialised parts (MKL, tokenizer) before timing


def bare_forward(model, batches, hook: str, pad_id: int) -> float:
    """Seconds for the model forward to the hook over every batch."""
    started = time.perf_counter()
    with torch.inference_mode():
        for token_ids in batches:
            width = max(len(t) for t in token_ids)
            tokens = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
            for row, ids in enumerate(token_ids):
                tokens[row, : len(ids)] = torch.tensor(ids)
            forward_to_hook(model, tokens.to(model.device), hook)
    if model.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--sae", default="default")
    parser.add_argument("--corpus", default="default")
    parser.add_argument("--tokens", type=int, default=300_000)
    parser.add_argument("--batch-size", type=int, default=IndexConfig.batch_size)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args()
    keep_freed_memory()

    model = load_model(args.model, args.device, args.dtype, progress=False)
    sae_dir = resolve_sae(args.sae)
    hook = load_sae(sae_dir).cfg.hook_name
    cfg = IndexConfig(batch_size=args.batch_size, max_tokens=args.tokens)
    bare_s, index_s = [], []
    with tempfile.TemporaryDirectory() as tmp:

        def index_once(name: str, config: IndexConfig):
            job = IndexJob(
                args.model, args.sae, args.corpus, Path(tmp) / f"{name}.duckdb",
                device=args.device, config=config,
            )  # fmt: skip
            started = time.perf_counter()
            info = run_index(job, progress=False, model=model)
            if model.device.startswith("cuda"):
                torch.cuda.synchronize()
            return info, time.perf_counter() - started

        index_once("warm-up", IndexConfig(batch_size=args.batch_size, max_tokens=WARM_UP_TOKENS))
        # index, bare, index, bare, ...: a burst of outside load hurts both sides alike
        for repeat in range(args.repeats):
            info, seconds = index_once(f"run-{repeat}", cfg)
            index_s.append(seconds)
            if repeat == 0:  # the batches the bare side runs: the index's own contexts
                with IndexWriter(Path(tmp) / "run-0.duckdb") as writer:
                    batches = [b.token_ids for b in writer.batches(info.id, 0, args.batch_size)]
            bare_s.append(bare_forward(model, batches, hook, model.pad_token_id))
    tokens = sum(len(t) for b in batches for t in b)
    bare_tps, index_tps = tokens / min(bare_s), tokens / min(index_s)
    device = torch.cuda.get_device_name() if model.device.startswith("cuda") else "cpu"
    print(
        f"machine: {platform.node()} {platform.machine()}, {torch.get_num_threads()} threads, {device}"
    )
    print(f"model {model.name}, SAE {sae_dir.name} ({info.d_sae} features, {info.hook_name})")
    print(
        f"tokens per run: {tokens:,} in {len(batches)} batches of {args.batch_size} x {cfg.context_size}"
    )
    print(
        f"bare forward to hook : {bare_tps:10,.0f} tokens/s  (best of {len(bare_s)}: {min(bare_s):.2f} s)"
    )
    print(
        f"full indexing        : {index_tps:10,.0f} tokens/s  (best of {len(index_s)}: {min(index_s):.2f} s)"
    )
    print(f"ratio indexing/bare  : {index_tps / bare_tps:10.3f}  (target >= 0.85)")


if __name__ == "__main__":
    main()
