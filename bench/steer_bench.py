"""Steering: speed of side-by-side generation, and what steering and ablation do (measured).

    python bench/steer_bench.py speed   [--runs 10] [--threads 2]
    python bench/steer_bench.py measure --db INDEX [--sae-id ID] [--out docs/steering-effect.svg]

`speed`: 32 new tokens for both sides (default and steered, batched, KV cache) on the default
model and shipped SAE, p50/p99 over --runs, beside the same generation without the KV cache
(the whole sequence recomputed each step) measured in the same run.

`measure`: on an index of the shipped SAE, 20 features with clear logit-lens tokens (the
largest top-1 logit-lens value among features with density in [1e-4, 2e-2], one per top
token); for each, additive steering at a few strengths (multiples of the feature's max
activation) on a few neutral prompts, greedy: the log-probability the steered model gives the
feature's top-5 promoted tokens at each generated step, against the unsteered model on the
same steered prefix, and how many generated tokens are among its top-10 promoted tokens; then
ablation on its top examples: the change in log p(next token) at the max-activation position.
Prints a table and writes an SVG plot.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

PROMPTS = ("The", "I think that", "Here is what happened next:")
STRENGTHS = (0.5, 1.0, 2.0)


def load_default():
    from saedex.indexer.model import load_model
    from saedex.indexer.sae import load_sae, resolve_sae

    return load_model("default", "cpu", progress=False), load_sae(resolve_sae("default"))


def speed(args) -> None:
    from saedex.indexer.steering import PairGeneration, prompt_ids
    from saedex.steering import FeatureEdit, SteerRequest

    torch.set_num_threads(args.threads)
    model, sae = load_default()
    req = SteerRequest("Once upon a time,", (FeatureEdit(100, 8.0),), "add", 32)
    ids = prompt_ids(model, req.prompt, True, False)

    def cached() -> None:
        gen = PairGeneration(model, sae, ids, req, 4.0)
        while gen.step():
            pass
        gen.shifts(req.n_shifts)

    def uncached() -> None:
        from saedex.indexer.steering import Intervention

        seqs = [list(ids), list(ids)]
        with torch.inference_mode():
            for _ in range(req.n_tokens):
                hook = Intervention(sae, req.features, "add", [False, True], True, 4.0)
                with model.bridge.hooks(fwd_hooks=[(sae.cfg.hook_name, hook)]):
                    logits = model.bridge(torch.tensor(seqs), return_type="logits")
                for row, token in enumerate(logits[:, -1].argmax(-1).tolist()):
                    seqs[row].append(token)

    cached()  # warm-up
    times: dict[str, list[float]] = {"KV cache (saedex)": [], "no cache": []}
    for _ in range(args.runs):
        for name, fn in (("KV cache (saedex)", cached), ("no cache", uncached)):
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    print(f"32 new tokens x 2 sides, default model + shipped SAE, CPU, {args.threads} threads")
    for name, t in times.items():
        print(f"  {name:18s} p50 {statistics.median(t):6.2f} s   max {max(t):6.2f} s")
    base = statistics.median(times["no cache"])
    print(f"  speed-up p50 {base / statistics.median(times['KV cache (saedex)']):.2f}x")


def pick_features(db: Path, sae_id: str, n: int) -> list[tuple[int, float, list[int]]]:
    """(feature, max activation, top-10 promoted token ids) of n features, one per top token."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        """SELECT f.feature, f.max_activation, list(l.token_id ORDER BY l.rank), max(l.value)
        FROM features f JOIN feature_logits l USING (sae_id, feature)
        WHERE f.sae_id = ? AND l.kind = 'top' AND f.density BETWEEN 1e-4 AND 2e-2
        GROUP BY f.feature, f.max_activation ORDER BY max(l.value) DESC""",
        [sae_id],
    ).fetchall()
    con.close()
    out, seen = [], set()
    for feature, max_act, tokens, _ in rows:
        if tokens[0] in seen:
            continue
        seen.add(tokens[0])
        out.append((feature, max_act, tokens[:10]))
        if len(out) == n:
            break
    return out


def steering_effect(model, sae, feature, max_act, top, n_tokens, n_prompts=3):
    """Per strength: mean over prompts and steps of the log-prob gain of the top-5 promoted
    tokens (steered vs unsteered model, same steered prefix), and the share of generated
    tokens among the top 10."""
    from saedex.indexer.steering import PairGeneration, prompt_ids
    from saedex.steering import FeatureEdit, SteerRequest

    out = {}
    top5 = torch.tensor(top[:5])
    for mult in STRENGTHS:
        gains, hits, total = [], 0, 0
        for prompt in PROMPTS[:n_prompts]:
            req = SteerRequest(prompt, (FeatureEdit(feature, mult * max_act),), "add", n_tokens)
            gen = PairGeneration(model, sae, prompt_ids(model, prompt, True, False), req, 4.0)
            while gen.step():
                pass
            ids, _ = gen.completion(1)
            seq = torch.tensor([gen.prompt + ids[:-1]])
            with torch.inference_mode():
                plain = model.bridge(seq, return_type="logits")[0, len(gen.prompt) - 1 :]
            plain = plain.float().log_softmax(-1)
            steered = torch.stack(gen.steered_logp[: len(ids)])
            gain = steered[:, top5].logsumexp(-1) - plain[:, top5].logsumexp(-1)
            gains.extend(gain.tolist())
            hits += sum(t in top for t in ids)
            total += len(ids)
        out[mult] = (statistics.mean(gains), hits / max(total, 1))
    return out


def ablation_effect_on_tops(model, sae, reader, sae_id, feature, n_examples):
    """Changes in log p(next token) at the max position, over the feature's top examples."""
    from saedex.indexer.steering import ablation_effect

    changes = []
    for ex in reader.top_examples(sae_id, [feature], n_examples)[feature]:
        at = ex.max_token_index
        if at + 1 >= len(ex.token_ids):
            continue
        change, _, _ = ablation_effect(model, sae, list(ex.token_ids), feature, at, 4.0, 1)
        changes.append(change[at])
    return changes


def measure(args) -> None:
    from saedex.store import IndexReader

    torch.set_num_threads(args.threads)
    model, sae = load_default()
    with IndexReader(args.db) as reader:
        sae_id = args.sae_id or reader.saes()[0].id
        features = pick_features(args.db, sae_id, args.features)
        rows = []
        for feature, max_act, top in features:
            effect = steering_effect(model, sae, feature, max_act, top, args.tokens, args.prompts)
            changes = ablation_effect_on_tops(model, sae, reader, sae_id, feature, args.examples)
            lowered = sum(c < 0 for c in changes) / max(len(changes), 1)
            med = statistics.median(changes) if changes else float("nan")
            words = [model.tokenizer.decode([t]) for t in top[:3]]
            rows.append((feature, max_act, words, effect, lowered, med))
            cells = "  ".join(f"{effect[m][0]:+6.2f} {effect[m][1]:4.0%}" for m in STRENGTHS)
            print(
                f"{feature:5d} max {max_act:6.1f} {str(words)[:34]:34s} {cells}  "
                f"ablate: lowered {lowered:4.0%} median {med:+.3f}",
                flush=True,
            )
    summarise(rows)
    write_svg(rows, args.out)
    print(f"plot: {args.out}")


def summarise(rows) -> None:
    print("\nmedian over features:")
    for m in STRENGTHS:
        gains = [r[3][m][0] for r in rows]
        hits = [r[3][m][1] for r in rows]
        print(
            f"  add {m:g} x max activation: top-5 log-prob gain {statistics.median(gains):+.2f} "
            f"nats, generated tokens among top-10 {statistics.median(hits):.0%}, "
            f"features with gain > 1 nat: {sum(g > 1 for g in gains)}/{len(gains)}"
        )
    lowered = [r[4] for r in rows]
    print(
        f"  ablation lowers the next token's log-prob in {statistics.median(lowered):.0%} "
        f"of top examples (median feature); median change "
        f"{statistics.median(r[5] for r in rows):+.3f} nats"
    )


def write_svg(rows, out: Path) -> None:
    """Per feature, the top-5 log-prob gain at each strength (dots), a hand-written SVG."""
    width, height, left, top, bottom = 720, 360, 60, 30, 60
    gains = [r[3][m][0] for r in rows for m in STRENGTHS]
    lo, hi = min(0.0, min(gains)), max(gains) * 1.05 or 1.0
    plot_w, plot_h = width - left - 20, height - top - bottom

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - lo) / (hi - lo))

    colours = {0.5: "#9ecae1", 1.0: "#4292c6", 2.0: "#08306b"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="18" font-size="13">Additive steering: gain in log p(top-5 '
        "promoted tokens), steered vs unsteered, per feature</text>",
        f'<line x1="{left}" y1="{y(0):.1f}" x2="{width - 20}" y2="{y(0):.1f}" stroke="#999"/>',
    ]
    for tick in range(int(lo), int(hi) + 1, max(1, int((hi - lo) / 6))):
        parts.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    step = plot_w / max(len(rows), 1)
    for i, row in enumerate(rows):
        x = left + step * (i + 0.5)
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="end" '
            f'transform="rotate(-45 {x:.1f} {height - bottom + 14})">{row[0]}</text>'
        )
        for m in STRENGTHS:
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y(row[3][m][0]):.1f}" r="4" fill="{colours[m]}"/>'
            )
    for j, m in enumerate(STRENGTHS):
        lx = width - 200 + j * 60
        parts.append(f'<circle cx="{lx}" cy="40" r="4" fill="{colours[m]}"/>')
        parts.append(f'<text x="{lx + 8}" y="44">{m:g}x max</text>')
    parts.append(
        f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
        'text-anchor="middle">nats</text></svg>'
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["speed", "measure"])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--db", type=Path, help="index of the shipped SAE (measure)")
    p.add_argument("--sae-id")
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--tokens", type=int, default=16, help="tokens generated per prompt")
    p.add_argument("--prompts", type=int, default=len(PROMPTS), help="prompts used (of 3)")
    p.add_argument("--examples", type=int, default=10, help="top examples ablated per feature")
    p.add_argument("--out", type=Path, default=Path("docs/steering-effect.svg"))
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    speed(args) if args.what == "speed" else measure(args)
