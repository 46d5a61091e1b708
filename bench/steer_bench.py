"""Steering speed: side-by-side generation on the default model and the shipped SAE (issue 16.4).

    python bench/steer_bench.py [--runs 10] [--threads 2] [--tokens 32] [--no-reference]

Times what `steer` does for one request: 32 new tokens for both sides (default and steered, one
batch of two rows, one KV cache) plus the one forward over the steered text for the per-step
token shifts (saedex's `PairGeneration`), p50 and max over --runs after a warm-up; beside it, in
the same run, the same generation without the KV cache (the whole sequence recomputed at each
step), the reference the cache is measured against. The target is p50 <= 2.5 s on 2 idle cores.

Prints one line per figure, each with the load average and the core count: the machine may be
shared, and a figure taken under load says so. What is measured elsewhere (what steering does
to the text) is bench/steer_study.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

PROMPT = "Once upon a time,"


def load_default():
    from saedex.indexer.model import load_model
    from saedex.indexer.sae import load_sae, resolve_sae

    return load_model("default", "cpu", progress=False), load_sae(resolve_sae("default"))


def cached_run(model, sae, ids, req) -> None:
    """One request as the API runs it: both sides with a KV cache, then the token shifts."""
    from saedex.indexer.steering import PairGeneration

    gen = PairGeneration(model, sae, ids, req, 4.0)
    while gen.step():
        pass
    gen.shifts(req.n_shifts)


def uncached_run(model, sae, ids, req) -> None:
    """The reference: both sides, the whole sequence recomputed at every step."""
    from saedex.indexer.steering import Intervention

    seqs = [list(ids), list(ids)]
    with torch.inference_mode():
        for _ in range(req.n_tokens):
            hook = Intervention(sae, req.features, "add", [False, True], True, 4.0)
            with model.bridge.hooks(fwd_hooks=[(sae.cfg.hook_name, hook)]):
                logits = model.bridge(torch.tensor(seqs), return_type="logits")
            for row, token in enumerate(logits[:, -1].argmax(-1).tolist()):
                seqs[row].append(token)


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load avg {one:.1f} (1 min) {five:.1f} (5 min) on {os.cpu_count()} cores"


def main(argv=None) -> None:
    args = parse_args(argv)
    from saedex.indexer.steering import prompt_ids
    from saedex.steering import FeatureEdit, SteerRequest

    torch.set_num_threads(args.threads)
    model, sae = load_default()
    req = SteerRequest(PROMPT, (FeatureEdit(100, 8.0),), "add", args.tokens)
    ids = prompt_ids(model, req.prompt, True, False)
    runs = {"KV cache (saedex)": cached_run}
    if args.reference:
        runs["no cache (reference)"] = uncached_run
    cached_run(model, sae, ids, req)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    before = load_note()
    for _ in range(args.runs):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn(model, sae, ids, req)
            times[name].append(time.perf_counter() - started)
    after = load_note()
    what = f"{args.tokens} new tokens x 2 sides, default model + shipped SAE, CPU"
    for name, t in times.items():
        print(
            f"steer_bench {name}: p50 {statistics.median(t):.2f} s, max {max(t):.2f} s over "
            f"{len(t)} runs ({what}, torch {args.threads} threads; {before} before, {after} "
            "after)"
        )
    if args.reference:
        ratio = statistics.median(times["no cache (reference)"]) / statistics.median(
            times["KV cache (saedex)"]
        )
        print(f"steer_bench speed-up of the KV cache: {ratio:.2f}x at p50 (same run)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32, help="new tokens per side")
    p.add_argument(
        "--no-reference", dest="reference", action="store_false",
        help="skip the uncached reference (faster)",
    )  # fmt: skip
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
