"""How far quantized steering weights move the answers against float32 (issue 16;
docs/steering.md, Speed).

    python bench/steer_weights.py --db INDEX [--weights float16 int8] [--features 20]
        [--strength-x 2] [--tokens 32] [--threads 1] [--json out.json]

`serve --steer-weights float16|int8` runs both sides of a steer request on a plain
transformers copy of the model with float16 or int8 dynamically quantized linear weights.
It is faster; this script says what it changes. For the features of the steering study
(bench/steer_study.py's rule, on an index of the shipped SAE) and its three prompts, it runs
the same greedy request (additive steering at `--strength-x` x the feature's max activation,
BOS prepended, no chat template) on float32 (the TransformerLens bridge) and on each of
`--weights`, and reports per mode:
- the share of identical completions, default and steered side, and the first position where
  they part (0: the first generated token);
- on the default side, the largest |log p(float32) - log p(mode)| of a generated token over
  the tokens before the sides part (what a reader sees side by side), and of float32's whole
  default completion scored by the mode's model alone (one row, teacher-forced);
- the same on the steered side, before the sides part;
- whether the mode's default side depends on the steered row beside it (int8 picks one
  activation scale per matrix product for the whole batch): its default completion with a
  feature steered beside it against its completion beside strength 0.
Prints one line per feature and a summary per mode; the seconds each request took, and the
texts, are in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from saedex.steering import FeatureEdit, SteerRequest


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first position where two completions differ (None: identical)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def max_gap(a: list[float], b: list[float], upto: int | None) -> float:
    """max |a_i - b_i| over the positions before `upto` (all when None)."""
    n = min(len(a), len(b)) if upto is None else upto
    return max((abs(x - y) for x, y in zip(a[:n], b[:n], strict=False)), default=0.0)


def pair(model, sae, ids, req, sink, forward):
    """Both sides of one request on `forward` (None: the float32 bridge), and its seconds."""
    from saedex.indexer.steering import PairGeneration

    started = time.perf_counter()
    gen = PairGeneration(model, sae, ids, req, sink, forward)
    while gen.step():
        pass
    return gen.completion(0), gen.completion(1), time.perf_counter() - started


@torch.inference_mode()
def scored(forward, ids: list[int], tokens: list[int]) -> list[float]:
    """log p of `tokens` after `ids` under `forward`'s model, one row, no edit."""
    logits, _ = forward(torch.tensor([ids + tokens[:-1]]), None)
    logp = logits[0, len(ids) - 1 :].float().log_softmax(-1)
    return logp[torch.arange(len(tokens)), torch.tensor(tokens)].tolist()


def compare(model, sae, ids, req, sink, reference, forward, baseline) -> dict:
    """One (feature, prompt): float32's pair (`reference`) against `forward`'s."""
    (f_def, f_def_lp), (f_st, f_st_lp), f_s = reference
    (q_def, q_def_lp), (q_st, q_st_lp), q_s = pair(model, sae, ids, req, sink, forward)
    d_def, d_st = first_divergence(f_def, q_def), first_divergence(f_st, q_st)
    return {
        "default_same": d_def is None,
        "default_diverges_at": d_def,
        "steered_same": d_st is None,
        "steered_diverges_at": d_st,
        "default_max_dlogp_shared": max_gap(f_def_lp, q_def_lp, d_def),
        "default_max_dlogp_forced": max_gap(f_def_lp, scored(forward, ids, f_def), None),
        "steered_max_dlogp_shared": max_gap(f_st_lp, q_st_lp, d_st),
        "default_moved_by_steering": q_def != baseline,
        "seconds": {"float32": f_s, "mode": q_s},
        "float32": model.tokenizer.decode(f_st),
        "mode": model.tokenizer.decode(q_st),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from steer_study import PROMPTS, pick_features  # bench/, the script's folder

    from saedex.indexer.model import load_model
    from saedex.indexer.quantized import QuantizedModel
    from saedex.indexer.sae import load_sae, resolve_sae
    from saedex.indexer.steering import prompt_ids
    from saedex.store import IndexReader

    load = os.getloadavg()
    model, sae = load_model("default", "cpu", progress=False), load_sae(resolve_sae("default"))
    forwards = {w: QuantizedModel(model, w).forward(sae.cfg.hook_name) for w in args.weights}
    with IndexReader(args.db) as reader:
        info = reader.sae(args.sae) if args.sae else reader.saes()[0]
        sink = float(info.settings.get("sink_norm_multiple", 4.0))
        picks = pick_features(reader, info.id, args.features)
    run: dict = {"index": str(args.db), "sae": info.id, "tokens": args.tokens,
                 "strength_x": args.strength_x, "threads": args.threads, "load_start": load,
                 "rows": {w: [] for w in args.weights}}  # fmt: skip
    baselines = {}  # each mode's default side beside strength 0
    for prompt in PROMPTS:
        ids = prompt_ids(model, prompt, True, False)
        req = SteerRequest(prompt, (FeatureEdit(0, 0.0),), "add", args.tokens, n_shifts=0)
        for w, forward in forwards.items():
            baselines[w, prompt] = pair(model, sae, ids, req, sink, forward)[0][0]
    for pick in picks:
        edit = (FeatureEdit(pick.index, args.strength_x * pick.max_activation),)
        line = [f"feature {pick.index}:"]
        for prompt in PROMPTS:
            ids = prompt_ids(model, prompt, True, False)
            req = SteerRequest(prompt, edit, "add", args.tokens, n_shifts=0)
            reference = pair(model, sae, ids, req, sink, None)
            for w, forward in forwards.items():
                row = compare(model, sae, ids, req, sink, reference, forward, baselines[w, prompt])
                run["rows"][w].append({"feature": pick.index, "prompt": prompt, **row})
        for w in args.weights:
            rows = run["rows"][w][-len(PROMPTS) :]
            line.append(f"{w}: steered side identical on {sum(r['steered_same'] for r in rows)}"
                        f"/{len(rows)} prompts, parts at {[r['steered_diverges_at'] for r in rows]};")  # fmt: skip
        print(" ".join(line), flush=True)
        run |= {"load_end": os.getloadavg()}
        if args.json:
            args.json.write_text(json.dumps(run, indent=1))
    for w in args.weights:
        print(f"## {w} against float32")
        for line in summary(run["rows"][w]):
            print(line)
    print(f"load average {load[0]:.1f} at start, {run['load_end'][0]:.1f} at end; torch "
          f"{args.threads} thread(s)")  # fmt: skip


def summary(rows: list[dict]) -> list[str]:
    n = len(rows)
    defaults = {r["prompt"]: r for r in rows}.values()  # float32's default: one per prompt

    def parts(key: str) -> str:
        at = [r[key] for r in rows if r[key] is not None]
        return f"median {statistics.median(at)}, min {min(at)}" if at else "never"

    return [
        f"{n} requests ({len({r['feature'] for r in rows})} features x prompts)",
        f"default side identical: {sum(r['default_same'] for r in defaults)}/{len(defaults)} "
        f"prompts; parts at {[r['default_diverges_at'] for r in defaults]}",
        f"steered side identical: {sum(r['steered_same'] for r in rows)}/{n}; where it parts: "
        f"{parts('steered_diverges_at')}",
        "default side max |dlogp| before parting: "
        f"{max(r['default_max_dlogp_shared'] for r in rows):.3f}; float32's default "
        f"completion scored by this mode: max {max(r['default_max_dlogp_forced'] for r in rows):.3f}",
        "steered side max |dlogp| before parting: median "
        f"{statistics.median(r['steered_max_dlogp_shared'] for r in rows):.3f}, max "
        f"{max(r['steered_max_dlogp_shared'] for r in rows):.3f}",
        "default side moved by the steered row beside it: "
        f"{sum(r['default_moved_by_steering'] for r in rows)}/{n}",
        "seconds per request (no shifts), median: float32 "
        f"{statistics.median(r['seconds']['float32'] for r in rows):.2f}, this mode "
        f"{statistics.median(r['seconds']['mode'] for r in rows):.2f}",
    ]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", type=Path, required=True, help="an index of the shipped SAE")
    p.add_argument("--sae", help="SAE id in the index (default: the first)")
    p.add_argument("--weights", nargs="+", default=["float16", "int8"], choices=("float16", "int8"))
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--strength-x", type=float, default=2.0, help="x the max activation")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
