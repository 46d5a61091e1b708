"""Steering speed: side-by-side generation on the default model and the shipped SAE (issue 16.4).

    python bench/steer_bench.py [--runs 10] [--threads 2] [--tokens 32] [--dtype float32]
        [--weights float32 float16 int8] [--no-reference]

Times what `steer` does for one request: 32 new tokens for both sides (default and steered) with
the per-step token shifts, as saedex's `PairGeneration` runs it (one batch of two rows, one KV
cache; then, for the shifts, the steered tokens in one pass over the unsteered row's cached
prompt), p50 and max over --runs after a warm-up. Beside it, in the same run, the references
that say where the time goes:
- `two rows, shifts re-run`: the former design, the same two rows and then one forward over
  the prompt and the steered text, no cache;
- `bridge, no hook`: the TransformerLens bridge with the same KV cache and two rows, no edit
  and no shifts (the cost of the hook and the shifts is the gap to saedex's figure);
- `HF model, no bridge`: the same decode loop on the plain transformers model the bridge wraps
  (a second copy; the cost of TransformerLens's wrapping is the gap to the bridge's figure);
- `no cache`: the whole sequence recomputed at every step (skip with --no-reference).
For each quantized mode in `--weights` (`serve --steer-weights float16|int8`):
- `KV cache (saedex, W weights)`: the same full request (two rows, then the shifts) on the
  plain transformers model with float16 or int8 dynamically quantized linear weights, the
  edit by a torch hook (saedex's `QuantizedModel`);
- `HF model W, no hook`: the same quantized model in the plain decode loop (the cost of
  saedex's hook and shifts there is the gap).
The float32 lines (and their references) run when `--weights` names float32 (the default
names all three).
The target is p50 <= 2.5 s on 2 idle cores.

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

from saedex.config import STEER_WEIGHTS
from saedex.steering import FeatureEdit, SteerRequest

PROMPT = "Once upon a time,"


def load_default(dtype: str):
    from saedex.indexer.model import load_model
    from saedex.indexer.sae import load_sae, resolve_sae

    model = load_model("default", "cpu", dtype, progress=False)
    return model, load_sae(resolve_sae("default")).to(model.device)


def cached_run(model, sae, ids, req, forward=None) -> None:
    """One request as the API runs it: two rows with a KV cache, then the shifts."""
    from saedex.indexer.steering import PairGeneration

    gen = PairGeneration(model, sae, ids, req, 4.0, forward)
    while gen.step():
        pass
    gen.shifts(req.n_shifts)


def quantized_runs(model, sae, weights: str) -> dict:
    """A quantized mode's full request, and its plain decode loop without hook or shifts."""
    from saedex.indexer.quantized import QuantizedModel

    forward = QuantizedModel(model, weights).forward(sae.cfg.hook_name)

    def full(model, sae, ids, req) -> None:
        cached_run(model, sae, ids, req, forward)

    def plain(model, sae, ids, req) -> None:
        decode_loop(forward, ids, req.n_tokens)

    return {f"KV cache (saedex, {weights} weights)": full, f"HF model {weights}, no hook": plain}


def rerun_shifts_run(model, sae, ids, req) -> None:
    """The former design: two rows, then the unsteered model over the whole steered text."""
    from saedex.indexer.steering import PairGeneration

    gen = PairGeneration(model, sae, ids, SteerRequest(**{**req.__dict__, "n_shifts": 0}), 4.0)
    while gen.step():
        pass
    steered, _ = gen.completion(1)
    with torch.inference_mode():
        seq = torch.tensor([ids + steered[:-1]])
        model.bridge(seq, return_type="logits").float().log_softmax(-1)


@torch.inference_mode()
def decode_loop(forward, ids, n_tokens: int) -> None:
    """Greedy decoding of two rows with a KV cache; `forward(inputs, cache)` -> logits, cache."""
    logits, cache = forward(torch.tensor([ids] * 2), None)
    for _ in range(n_tokens - 1):
        logits, cache = forward(logits[:, -1].argmax(-1, keepdim=True), cache)


def bridge_run(model, sae, ids, req) -> None:
    """The bridge alone: no hook, no third row."""

    def forward(inputs, cache):
        return model.bridge(inputs, return_type="logits_and_cache", past_key_values=cache)

    decode_loop(forward, ids, req.n_tokens)


def hf_runner(dtype: str):
    """The plain transformers model (its own copy, not wrapped by a bridge)."""
    from transformers import AutoModelForCausalLM

    from saedex.indexer.model import default_model_dir, resolve_dtype

    hf = AutoModelForCausalLM.from_pretrained(str(default_model_dir()), dtype=resolve_dtype(dtype))
    hf.eval()

    def forward(inputs, cache):
        out = hf(inputs, past_key_values=cache, use_cache=True)
        return out.logits, out.past_key_values

    def run(model, sae, ids, req) -> None:
        decode_loop(forward, ids, req.n_tokens)

    return run


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

    torch.set_num_threads(args.threads)
    model, sae = load_default(args.dtype)
    req = SteerRequest(PROMPT, (FeatureEdit(100, 8.0),), "add", args.tokens)
    ids = prompt_ids(model, req.prompt, True, False)
    runs = {}
    if "float32" in args.weights:
        runs = {
            "KV cache (saedex)": cached_run,
            "two rows, shifts re-run (former)": rerun_shifts_run,
            "bridge, no hook": bridge_run,
            "HF model, no bridge": hf_runner(args.dtype),
        }
        if args.reference:
            runs["no cache (reference)"] = uncached_run
    for weights in args.weights:
        if weights != "float32":
            runs |= quantized_runs(model, sae, weights)
    for fn in runs.values():
        fn(model, sae, ids, req)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    before = load_note()
    for _ in range(args.runs):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn(model, sae, ids, req)
            times[name].append(time.perf_counter() - started)
    after = load_note()
    for name, t in times.items():
        weights = next((f"{w} linear weights" for w in args.weights if w in name), args.dtype)
        what = f"{args.tokens} new tokens x 2 sides, default model + shipped SAE, {weights}, CPU"
        print(
            f"steer_bench {name}: p50 {statistics.median(t):.2f} s, max {max(t):.2f} s over "
            f"{len(t)} runs, {statistics.median(t) / args.tokens * 1000:.0f} ms/token ({what}, "
            f"torch {args.threads} threads; {before} before, {after} after)"
        )
    p50 = {name: statistics.median(t) for name, t in times.items()}
    if "no cache (reference)" in p50:
        ratio = p50["no cache (reference)"] / p50["KV cache (saedex)"]
        print(f"steer_bench speed-up of the KV cache: {ratio:.2f}x at p50 (same run)")
    for weights in args.weights:
        name = f"KV cache (saedex, {weights} weights)"
        if "KV cache (saedex)" in p50 and name in p50:
            ratio = p50["KV cache (saedex)"] / p50[name]
            print(f"steer_bench speed-up of {weights} weights: {ratio:.2f}x at p50 (same run)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32, help="new tokens per side")
    p.add_argument("--dtype", default="float32", help="float32 (the index's), bfloat16, float16")
    p.add_argument(
        "--weights", nargs="+", default=list(STEER_WEIGHTS), choices=STEER_WEIGHTS,
        help="steer weights to time (float32 brings the references along)",
    )  # fmt: skip
    p.add_argument(
        "--no-reference", dest="reference", action="store_false",
        help="skip the uncached reference (faster)",
    )  # fmt: skip
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
