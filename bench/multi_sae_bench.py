"""Several SAEs in one pass against one SAE alone, on the same model, corpus and tokens.

    python bench/multi_sae_bench.py [--sae default --sae default-1152 ...] [--tokens 30000]
                                    [--repeats 1] [--device cpu]

"one" is `run_index` of the first --sae alone; "all" is `run_indexes` of every --sae in one
pass (the model runs once per batch, to the deepest hook; each SAE encodes the batch and
writes its own run file, then each aggregates). "separately" is each SAE indexed alone, summed:
what the pass saves. All use one loaded model and fresh databases; repeats alternate them and
the best of each is reported. The load average is printed beside the figures: on a shared
machine other jobs skew every ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from saedex.config import IndexConfig
from saedex.indexer.indexing import IndexJob, run_indexes
from saedex.indexer.model import load_model
from saedex.indexer.sae import SHIPPED_SAES, load_sae, resolve_sae
from saedex.memory import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--sae", action="append", help="repeat; default: every shipped width")
    parser.add_argument("--corpus", default="default")
    parser.add_argument("--tokens", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    saes = args.sae or list(SHIPPED_SAES)
    keep_freed_memory()
    model = load_model(args.model, args.device, None, progress=False)
    cfg = IndexConfig(max_tokens=args.tokens)
    widths = {s: load_sae(resolve_sae(s)).cfg.d_sae for s in saes}
    times: dict[str, list[float]] = {"one": [], "all": [], "separately": []}
    with tempfile.TemporaryDirectory() as tmp:
        runs = 0

        def index(group: list[str]) -> tuple[float, int]:
            nonlocal runs
            runs += 1
            db = Path(tmp) / f"{runs}.duckdb"
            jobs = [IndexJob(args.model, s, args.corpus, db, f"s{i}", args.device, config=cfg)
                    for i, s in enumerate(group)]  # fmt: skip
            started = time.perf_counter()
            infos = run_indexes(jobs, progress=False, model=model)
            return time.perf_counter() - started, infos[0].n_tokens

        index(saes[:1])  # warm-up: tokenizer, MKL
        for _ in range(args.repeats):
            times["one"].append(index(saes[:1])[0])
            seconds, n_tokens = index(saes)
            times["all"].append(seconds)
            times["separately"].append(sum(index([s])[0] for s in saes))
    best = {k: min(v) for k, v in times.items()}
    load = os.getloadavg()
    print(f"SAEs: {', '.join(f'{s} ({widths[s]:,})' for s in saes)}; {n_tokens:,} tokens, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")  # fmt: skip
    print(f"{'run':<34}{'seconds':>10}{'x one':>8}")
    for key, label in (("one", f"one SAE ({saes[0]})"), ("all", f"{len(saes)} SAEs, one pass"),
                       ("separately", f"{len(saes)} SAEs, separately")):  # fmt: skip
        print(f"{label:<34}{best[key]:>10.1f}{best[key] / best['one']:>8.2f}")


if __name__ == "__main__":
    main()
