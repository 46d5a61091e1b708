"""What additive steering and ablation do to the shipped SAE's features, measured (issue 16.5).

    python bench/steer_study.py --db INDEX [--sae ID] [--features 20] [--tokens 16]
        [--strengths 0,2,4,8] [--examples 10] [--threads 1] [--out docs/steering-study.svg]
        [--json results.json] [--part K/N] [--only INDEX,...]
    python bench/steer_study.py --merge part1.json part2.json [--out ...]

INDEX is an index of the shipped SAE (`saedex index --db INDEX`, default model and corpus).

Features (a rule, so that anyone gets the same ones; nothing is picked by hand): among features
of density in [1e-4, 2e-2] (not dead, not dense), those whose logit lens names one word: the
top-1 promoted token is a word of 2+ letters and at least two of the top 5 are forms of it
(case, leading space: " than", "than", " Than"); the `--features` with the largest top-1
logit-lens value, one per word. (Ranked by the raw value alone, the lens of this SAE is a
scatter of rare word fragments, " strugg", " affili", shared by hundreds of features.)

Steering, per feature and neutral prompt: greedy completions of `--tokens` tokens, all in one
batch with one KV cache: the unsteered model (row 0), the feature added at each strength
(strength x max activation x W_dec[i], the API's convention: `decoderNorm` is 1 for the shipped
SAE), and a random direction of the same norm at each non-zero strength (the control: how much
of a gain any push of that size gives). BOS and attention sinks are left alone, as in the API.
Reported per strength, averaged over the prompts:
- `gain`: the mean log-probability of the feature's top-5 promoted tokens (as one set) over the
  steps of the steered completion, minus the same over the unsteered completion of the same
  prompt (each under the model that generated it): how much more the text "wants" them;
- `direct`: the same steered steps scored by the unsteered model on the same steered prefix,
  subtracted from the steered model's (the edit's own effect, free of where the text went);
- `hits`: the share of generated tokens that are among the feature's top-10 promoted tokens;
- `distinct`: distinct tokens / tokens in the completion (low: the text degenerated into
  repetition).
Strength 0 is run like the others and must equal the unsteered row exactly (checked).

Ablation, per feature: its `--examples` top examples from the index, the feature ablated at every
position (saedex's `ablation_effect`), the change in log p of the token after the
max-activation position: the share of examples where it falls, and the median change. (Only
the context up to that token is run: the model is causal, so what follows cannot change it;
the one thing that can differ is which tokens count as attention sinks, a norm rule over the
context, so a sink-like token would be treated as in the API only approximately.)

Prints one line per feature and a summary table (markdown), writes an SVG plot; torch threads
default to 1 (a shared machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

PROMPTS = (
    "I think that",
    "Here is what happened next:",
    "My favourite thing to do on a weekend is",
)


@dataclass(frozen=True)
class Pick:
    index: int
    max_activation: float
    density: float
    top_ids: list[int]  # top-10 logit-lens token ids
    top_tokens: list[str]
    top1_value: float


@dataclass
class FeatureResult:
    pick: Pick
    # per strength (as a string key, JSON-friendly): metric -> mean over prompts
    steer: dict[str, dict[str, float]] = field(default_factory=dict)
    control: dict[str, dict[str, float]] = field(default_factory=dict)
    default: dict[str, float] = field(default_factory=dict)
    ablation_changes: list[float] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)  # one prompt's completions
    seconds: dict[str, float] = field(default_factory=dict)  # steering, ablation

    @property
    def lowered(self) -> float:
        changes = self.ablation_changes
        return sum(c < 0 for c in changes) / len(changes) if changes else math.nan

    @property
    def median_change(self) -> float:
        return statistics.median(self.ablation_changes) if self.ablation_changes else math.nan


# -- which features -------------------------------------------------------------------------


def pick_features(reader, sae_id: str, n: int, lo: float = 1e-4, hi: float = 2e-2) -> list[Pick]:
    """The rule (see the module docstring): density in [lo, hi]; the top-1 logit-lens token is
    a word (letters, 2+ characters) that appears in at least two surface forms among the top 5
    (" than", "than", " Than": the lens names one word, not a scatter of rare fragments, which
    is what the raw lens of this SAE mostly shows); ranked by the top-1 value, one per word."""
    from saedex.steering import promoted_word

    info = reader.sae(sae_id)
    page = reader.list_features(sae_id, min_density=lo, max_density=hi, limit=info.d_sae)
    ranked = sorted(
        (f for f in page.items if promoted_word(f.top_logits)),
        key=lambda f: (-f.top_logits[0].value, f.index),
    )
    picks, seen = [], set()
    for f in ranked:
        word = promoted_word(f.top_logits)
        if word in seen:
            continue
        seen.add(word)
        top = f.top_logits[:10]
        picks.append(
            Pick(f.index, f.max_activation, f.density, [e.token_id for e in top],
                 [e.token for e in top], top[0].value)
        )  # fmt: skip
        if len(picks) == n:
            break
    return picks


# -- steering: one batch of rows, one KV cache -----------------------------------------------


def row_intervention(sae, directions: torch.Tensor, skip_first: bool, sink_norm_multiple: float):
    """saedex's Intervention (same BOS and sink handling) adding its own vector to each row;
    row 0 is left untouched; a zero vector elsewhere adds an exact zero."""
    from saedex.indexer.steering import Intervention
    from saedex.steering import FeatureEdit

    class RowAdd(Intervention):
        def delta(self, act: torch.Tensor) -> torch.Tensor:
            return directions[:, None, :].to(act.dtype)

    rows = [i > 0 for i in range(len(directions))]  # row 0: the unsteered model
    return RowAdd(sae, (FeatureEdit(0, 0.0),), "add", rows, skip_first, sink_norm_multiple)


@torch.inference_mode()
def generate_rows(model, sae, ids: list[int], hook, n_rows: int, n_tokens: int):
    """Greedy completions of every row; per row the generated ids and the full log-probs
    of each step under the (steered) model that chose them."""
    bridge = model.bridge
    inputs = torch.tensor([ids] * n_rows)
    cache, tokens, logps = None, [], []
    for _ in range(n_tokens):
        with bridge.hooks(fwd_hooks=[(sae.cfg.hook_name, hook)]):
            logits, cache = bridge(inputs, return_type="logits_and_cache", past_key_values=cache)
        logp = logits[:, -1].float().log_softmax(-1)
        chosen = logp.argmax(-1)
        tokens.append(chosen)
        logps.append(logp)
        inputs = chosen[:, None]
    return torch.stack(tokens, 1), torch.stack(logps, 1)  # [R, T], [R, T, V]


@torch.inference_mode()
def unsteered_logps(model, ids: list[int], tokens: torch.Tensor) -> torch.Tensor:
    """The unsteered model's next-token log-probs at each generated step of each row."""
    prefix = torch.tensor([ids] * tokens.shape[0])
    seq = torch.cat([prefix, tokens[:, :-1]], 1)
    logits = model.bridge(seq, return_type="logits")[:, len(ids) - 1 :]
    return logits.float().log_softmax(-1)


def until_eos(tokens: list[int], eos: int | None) -> int:
    """Steps up to and including the first EOS."""
    return tokens.index(eos) + 1 if eos in tokens else len(tokens)


def steer_prompt(model, sae, pick: Pick, prompt: str, strengths, sink: float, n_tokens: int):
    """Rows: unsteered, the feature at each strength, a random direction at each non-zero one.
    Returns {row name: metrics} and the row names' completions."""
    from saedex.indexer.steering import prompt_ids

    ids = prompt_ids(model, prompt, True, False)
    w = sae.W_dec.detach()[pick.index].float()
    gen = torch.Generator().manual_seed(pick.index)
    random_dir = torch.randn(w.shape, generator=gen)
    random_dir *= w.norm() / random_dir.norm()
    names, vectors = ["default"], [torch.zeros_like(w)]
    for s in strengths:
        names.append(f"feature@{s:g}")
        vectors.append(s * pick.max_activation * w)
    for s in strengths:
        if s:
            names.append(f"random@{s:g}")
            vectors.append(s * pick.max_activation * random_dir)
    directions = torch.stack(vectors).to(sae.W_dec.dtype)
    hook = row_intervention(sae, directions, ids[0] == model.bos_token_id, sink)
    tokens, logps = generate_rows(model, sae, ids, hook, len(names), n_tokens)
    plain = unsteered_logps(model, ids, tokens)
    top5, top10 = pick.top_ids[:5], set(pick.top_ids)
    eos = model.tokenizer.eos_token_id
    out, texts = {}, {}
    for r, name in enumerate(names):
        row = tokens[r].tolist()
        n = until_eos(row, eos)
        own = logps[r, :n][:, top5].logsumexp(-1)
        ref = plain[r, :n][:, top5].logsumexp(-1)
        out[name] = {
            "top5_logp": float(own.mean()),
            "direct": float((own - ref).mean()),
            "hits": sum(t in top10 for t in row[:n]) / n,
            "distinct": len(set(row[:n])) / n,
        }
        texts[name] = model.tokenizer.decode(row[:n])
    return out, texts, tokens


def steering(model, sae, pick: Pick, strengths, sink, n_tokens, result: FeatureResult) -> None:
    per_prompt = []
    for p, prompt in enumerate(PROMPTS):
        metrics, texts, tokens = steer_prompt(model, sae, pick, prompt, strengths, sink, n_tokens)
        zero = [i for i, s in enumerate(strengths) if s == 0]
        for i in zero:  # strength 0 must be the unsteered model, token for token
            if not torch.equal(tokens[0], tokens[1 + i]):
                raise SystemExit(f"feature {pick.index}: strength 0 changed the completion")
        per_prompt.append(metrics)
        if p == len(PROMPTS) - 1:
            result.examples = {"prompt": prompt, **texts}
    default = _mean(m["default"] for m in per_prompt)
    result.default = default
    for s in strengths:
        key = f"{s:g}"
        feat = _mean(m[f"feature@{key}"] for m in per_prompt)
        result.steer[key] = {**feat, "gain": _gain(per_prompt, f"feature@{key}")}
        if s:
            ctrl = _mean(m[f"random@{key}"] for m in per_prompt)
            result.control[key] = {**ctrl, "gain": _gain(per_prompt, f"random@{key}")}


def _gain(per_prompt, name: str) -> float:
    return statistics.fmean(m[name]["top5_logp"] - m["default"]["top5_logp"] for m in per_prompt)


def _mean(rows) -> dict[str, float]:
    rows = list(rows)
    return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}


# -- ablation on the feature's own top examples ----------------------------------------------


def ablation(model, sae, reader, sae_id: str, pick: Pick, n: int, sink: float) -> list[float]:
    """Change in log p(token after the max-activation position), feature ablated everywhere."""
    from saedex.indexer.steering import ablation_effect

    changes = []
    for ex in reader.top_examples(sae_id, [pick.index], n)[pick.index]:
        at = ex.max_token_index
        if at + 1 >= len(ex.token_ids):
            continue
        # causal: tokens past the next one cannot change its log-prob, so they are not run
        prefix = list(ex.token_ids[: at + 2])
        change, _, _ = ablation_effect(model, sae, prefix, pick.index, at, sink, 1)
        changes.append(change[at])
    return changes


# -- report -----------------------------------------------------------------------------------


def feature_line(r: FeatureResult, strengths) -> str:
    cells = " ".join(
        f"{r.steer[f'{s:g}']['gain']:+6.2f}/{r.steer[f'{s:g}']['hits']:3.0%}" for s in strengths
    )
    top = ",".join(repr(t) for t in r.pick.top_tokens[:3])
    return (
        f"feature {r.pick.index:5d} max {r.pick.max_activation:6.2f} top {top[:30]:30s} "
        f"gain/hits {cells}  ablation lowered {r.lowered:4.0%} median {r.median_change:+.3f} "
        f"({r.seconds['steering']:.0f}s + {r.seconds['ablation']:.0f}s)"
    )


def summary(results: list[FeatureResult], strengths) -> list[str]:
    """The markdown table: medians over features, per strength."""
    lines = [
        "| strength (x max act.) | gain, feature (nats) | gain, random dir. (nats) | direct "
        "effect (nats) | features gaining > 1 nat | top-10 share of tokens | distinct tokens |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    med = statistics.median
    default_hits = med(r.default["hits"] for r in results)
    default_distinct = med(r.default["distinct"] for r in results)
    lines.append(f"| unsteered | 0 | | | | {default_hits:.0%} | {default_distinct:.2f} |")
    for s in strengths:
        key = f"{s:g}"
        gains = [r.steer[key]["gain"] for r in results]
        ctrl = med(r.control[key]["gain"] for r in results) if s else 0.0
        lines.append(
            f"| {key} | {med(gains):+.2f} | {ctrl:+.2f} | "
            f"{med(r.steer[key]['direct'] for r in results):+.2f} | "
            f"{sum(g > 1 for g in gains)}/{len(gains)} | "
            f"{med(r.steer[key]['hits'] for r in results):.0%} | "
            f"{med(r.steer[key]['distinct'] for r in results):.2f} |"
        )
    lowered = [r.lowered for r in results if not math.isnan(r.lowered)]
    changes = [c for r in results for c in r.ablation_changes]
    if changes:
        lines += [
            "",
            f"ablation: the next token's log-prob fell on {sum(c < 0 for c in changes)}/"
            f"{len(changes)} top examples ({sum(c < 0 for c in changes) / len(changes):.0%}); "
            f"median feature {med(lowered):.0%}; median change {med(changes):+.3f} nats; "
            f"features where it fell on at least 80% of examples: "
            f"{sum(x >= 0.8 for x in lowered)}/{len(lowered)}",
        ]
    return lines


def write_svg(results: list[FeatureResult], strengths, out: Path) -> None:
    """Two panels: top-5 log-prob gain against strength (each feature a thin line, the median
    bold, the random-direction control's median dashed); ablation's change per feature."""
    width, height = 920, 400
    panel = [(60, 60, 420, 270), (560, 60, 330, 270)]  # x, y, w, h
    xs = list(range(len(strengths)))
    all_gains = [r.steer[f"{s:g}"]["gain"] for r in results for s in strengths]
    all_gains += [r.control[f"{s:g}"]["gain"] for r in results for s in strengths if s]
    lo, hi = min(0.0, *all_gains), max(1.0, *all_gains)
    x0, y0, w, h = panel[0]

    def px(i: float) -> float:
        return x0 + w * i / max(1, len(xs) - 1)

    def py(v: float) -> float:
        return y0 + h * (1 - (v - lo) / (hi - lo))

    def path(values, **style) -> str:
        pts = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in zip(xs, values, strict=True))
        attrs = " ".join(f'{k.replace("_", "-")}="{v}"' for k, v in style.items())
        return f'<polyline points="{pts}" fill="none" {attrs}/>'

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{x0}" y="18" font-size="13">Additive steering: gain in log p(top-5 promoted '
        "tokens)</text>",
        f'<text x="{x0}" y="34" fill="#555">in the generated text, steered - unsteered, mean over '
        "steps and prompts</text>",
        f'<line x1="{x0}" y1="{py(0):.1f}" x2="{x0 + w}" y2="{py(0):.1f}" stroke="#888"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + h}" stroke="#888"/>',
    ]
    for i, s in enumerate(strengths):
        parts.append(f'<text x="{px(i):.1f}" y="{y0 + h + 16}" text-anchor="middle">{s:g}</text>')
    parts.append(
        f'<text x="{x0 + w / 2}" y="{y0 + h + 32}" text-anchor="middle">strength '
        "(x the feature's max activation; decoder rows have norm 1)</text>"
    )
    for tick in _ticks(lo, hi):
        parts.append(f'<text x="{x0 - 6}" y="{py(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    parts.append(
        f'<text x="16" y="{y0 + h / 2}" transform="rotate(-90 16 {y0 + h / 2})" '
        'text-anchor="middle">nats</text>'
    )
    for r in results:
        parts.append(
            path([r.steer[f"{s:g}"]["gain"] for s in strengths], stroke="#9ecae1",
                 stroke_width="1")
        )  # fmt: skip
    med = statistics.median
    feat = [med(r.steer[f"{s:g}"]["gain"] for r in results) for s in strengths]
    ctrl = [med(r.control[f"{s:g}"]["gain"] for r in results) if s else 0.0 for s in strengths]
    parts.append(path(feat, stroke="#08519c", stroke_width="3"))
    parts.append(path(ctrl, stroke="#e6550d", stroke_width="2.5", stroke_dasharray="6 4"))
    legend = [("#9ecae1", "one feature", ""), ("#08519c", "median of features", ""),
              ("#e6550d", "median, random direction of the same norm", "6 4")]  # fmt: skip
    for j, (colour, label, dash) in enumerate(legend):
        y = y0 + 10 + 16 * j
        parts.append(
            f'<line x1="{x0 + 10}" y1="{y}" x2="{x0 + 34}" y2="{y}" stroke="{colour}" '
            f'stroke-width="2.5" stroke-dasharray="{dash or "none"}"/>'
            f'<text x="{x0 + 40}" y="{y + 4}">{label}</text>'
        )
    parts += _ablation_panel(results, panel[1])
    parts.append("</svg>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts) + "\n")


def _ablation_panel(results: list[FeatureResult], box) -> list[str]:
    """Per feature, the share of its top examples where ablation lowered the next token."""
    x0, y0, w, h = box
    n = max(1, len(results))
    step = w / n
    parts = [
        f'<text x="{x0}" y="18" font-size="13">Ablation on the feature\'s top examples</text>',
        f'<text x="{x0}" y="34" fill="#555">share where log p(token after the peak) fell</text>',
        f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#888"/>',
        f'<line x1="{x0}" y1="{y0 + h / 2}" x2="{x0 + w}" y2="{y0 + h / 2}" stroke="#ccc" '
        'stroke-dasharray="3 3"/>',
    ]
    for frac in (0, 0.5, 1):
        parts.append(
            f'<text x="{x0 - 6}" y="{y0 + h * (1 - frac) + 4}" text-anchor="end">{frac:.0%}</text>'
        )
    for i, r in enumerate(results):
        share = 0.0 if math.isnan(r.lowered) else r.lowered
        bar = h * share
        x = x0 + i * step
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{y0 + h - bar:.1f}" width="{max(1, step - 2):.1f}" '
            f'height="{bar:.1f}" fill="#31a354"><title>feature {r.pick.index}: {share:.0%}, '
            f"median change {r.median_change:+.3f} nats</title></rect>"
            f'<text x="{x + step / 2:.1f}" y="{y0 + h + 12}" font-size="8" text-anchor="end" '
            f'transform="rotate(-60 {x + step / 2:.1f} {y0 + h + 12})">{r.pick.index}</text>'
        )
    return parts


def _ticks(lo: float, hi: float) -> list[float]:
    span = hi - lo
    step = next(s for s in (0.5, 1, 2, 5, 10, 20, 50) if span / s <= 8)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


# -- main -------------------------------------------------------------------------------------


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.merge:
        runs = [json.loads(path.read_text()) for path in args.merge]
        for path, run in zip(args.merge, runs, strict=True):
            print(f"{path}: {len(run['results'])} features in {run['seconds']:.0f}s, load "
                  f"average {run['load_start'][0]:.1f} at start, {run['load_end'][0]:.1f} at end")  # fmt: skip
        results = [from_json(r) for run in runs for r in run["results"]]
        results.sort(key=lambda r: (-r.pick.top1_value, r.pick.index))  # the rule's order
        report(results, runs[0]["strengths"], args.out)
        return
    if args.db is None:
        raise SystemExit("give --db INDEX (or --merge the parts' JSON files)")
    run = measure(args)
    if args.part is None:
        report([from_json(r) for r in run["results"]], args.strengths, args.out)


def measure(args) -> dict:
    """Steer and ablate the picked features (those of `--part` K/N: every N-th from the K-th),
    rewriting `--json` after each one, so that a run stopped early keeps what it measured."""
    torch.set_num_threads(args.threads)
    from saedex.indexer.model import load_model
    from saedex.indexer.sae import load_sae, resolve_sae
    from saedex.store import IndexReader

    load = os.getloadavg()
    print(f"load average at start: {load} ({os.cpu_count()} cores, torch "
          f"{args.threads} thread(s))", flush=True)  # fmt: skip
    model, sae = load_model("default", "cpu", progress=False), load_sae(resolve_sae("default"))
    strengths = args.strengths
    started = time.perf_counter()
    run: dict = {"tokens": args.tokens, "strengths": strengths, "examples": args.examples,
                 "prompts": PROMPTS, "threads": args.threads, "load_start": load, "results": []}  # fmt: skip
    with IndexReader(args.db) as reader:
        info = reader.sae(args.sae) if args.sae else reader.saes()[0]
        run |= {"index": str(args.db), "sae": info.id, "n_tokens": info.n_tokens}
        sink = float(info.settings.get("sink_norm_multiple", 4.0))
        picks = pick_features(reader, info.id, args.features)
        if args.part:
            k, n = args.part
            picks = picks[k - 1 :: n]
        if args.only:
            missing = set(args.only) - {p.index for p in picks}
            if missing:
                raise SystemExit(f"--only: the rule does not pick feature(s) {sorted(missing)}")
            picks = [p for p in picks if p.index in args.only]
        print(f"index {args.db} ({info.id}, {info.n_tokens:,} tokens); {len(picks)} features; "
              f"{len(PROMPTS)} prompts x {args.tokens} tokens; strengths {strengths}", flush=True)  # fmt: skip
        for pick in picks:
            t0 = time.perf_counter()
            result = FeatureResult(pick)
            steering(model, sae, pick, strengths, sink, args.tokens, result)
            t1 = time.perf_counter()
            result.ablation_changes = ablation(
                model, sae, reader, info.id, pick, args.examples, sink
            )
            result.seconds = {"steering": t1 - t0, "ablation": time.perf_counter() - t1}
            print(feature_line(result, strengths), flush=True)
            run["results"].append(asdict(result))
            run |= {"load_end": os.getloadavg(), "seconds": time.perf_counter() - started}
            if args.json:
                args.json.write_text(json.dumps(run, indent=1))
    print(f"{len(picks)} features in {run['seconds']:.0f}s; load average at end: "
          f"{run['load_end']}")  # fmt: skip
    return run


def from_json(row: dict) -> FeatureResult:
    return FeatureResult(**{**row, "pick": Pick(**row["pick"])})


def report(results: list[FeatureResult], strengths, out: Path) -> None:
    for r in results:
        print(feature_line(r, strengths))
    print()
    print("\n".join(summary(results, strengths)))
    write_svg(results, strengths, out)
    print(f"plot: {out}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", type=Path, help="an index of the shipped SAE")
    p.add_argument("--sae", help="the SAE's id in the index (default: the first)")
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--tokens", type=int, default=16, help="new tokens per completion")
    p.add_argument(
        "--strengths", default="0,2,4,8", type=lambda s: [float(x) for x in s.split(",")],
        help="multiples of each feature's max activation",
    )  # fmt: skip
    p.add_argument("--examples", type=int, default=10, help="top examples ablated per feature")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("docs/steering-study.svg"))
    p.add_argument("--json", type=Path, help="also write every figure as JSON")
    p.add_argument(
        "--part", type=lambda s: tuple(int(x) for x in s.split("/")),
        help="K/N: only every N-th feature from the K-th (run N parts side by side, each with "
        "--json, then --merge them)",
    )  # fmt: skip
    p.add_argument(
        "--only", type=lambda s: {int(x) for x in s.split(",")},
        help="INDEX,...: only these of the picked features (to finish a run stopped early)",
    )  # fmt: skip
    p.add_argument("--merge", type=Path, nargs="+", help="report the parts' JSON files")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
