"""Explanations with the embedded default model (SmolLM2-135M-Instruct) on CPU: how fast, and
how good against a trivial baseline, scored the same way (issue 15).

    python bench/explain_bench.py --db INDEX [--sae ID] [--features 16] [--threads 2]
        [--score-minutes 20] [--n-activating 10] [--n-inactive 10] [--batch-one]
        [--json scores.json]

Works on a copy of the index (its edits file is never touched). Features: a seeded random
sample of the live features with density in [1e-4, 2e-2] (the rule; `--seed`), so the figures
describe a typical feature, not a hand-picked one.

1. Explain them (batches of 8) and print features explained per minute; with `--batch-one`,
   also one prompt per call, side by side in the same run, and the ratio.
2. Score each explained feature, as many as fit in `--score-minutes`: the model's explanation
   and the trivial baseline (the feature's most frequent peak tokens and top logit tokens
   listed), with the same scorer model (the default one), the same held-out texts and
   delphi's detection and fuzzing scorers; print one line per feature, a summary table
   (markdown) and seconds of scoring per feature.

Every figure is printed with the load average: these 2-core machines are shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from saedex.config import ExplainConfig, ScoreConfig
from saedex.explain.explainer import explain
from saedex.explain.models import ModelSpec, load_language_model
from saedex.explain.scoring import score
from saedex.store import IndexReader

SCORES = ("detection", "fuzzing", "detection_auc", "fuzzing_auc")


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load avg {one:.1f} (1 min) {five:.1f} (5 min) on {os.cpu_count()} cores"


def copy_index(db: Path, into: Path) -> Path:
    """The index file and its run files (not its edits file, nor the writer's lock)."""
    into.mkdir(parents=True)
    shutil.copy(db, into / db.name)
    runs = db.with_name(db.name + ".runs")
    if runs.is_dir():
        shutil.copytree(runs, into / runs.name, ignore=shutil.ignore_patterns(".lock"))
    return into / db.name


def sample_features(reader: IndexReader, sae_id: str, n: int, seed: int) -> list[int]:
    """A seeded random sample of live, not-dense features (density in [1e-4, 2e-2])."""
    d_sae = reader.sae(sae_id).d_sae
    page = reader.list_features(sae_id, min_density=1e-4, max_density=2e-2, limit=d_sae)
    pool = sorted(f.index for f in page.items)
    return sorted(random.Random(seed).sample(pool, min(n, len(pool))))


def explain_rate(db: Path, sae_id: str, model, features: list[int], batch: int):
    with IndexReader(db) as reader:
        cfg = replace(ExplainConfig(), batch_size=batch)
        result = explain(reader, sae_id, model, features, cfg, progress=False)
    print(
        f"explain_bench batch {batch}: {result.per_minute:.2f} features/min ({result.explained} "
        f"explained, {result.failed} empty, {result.seconds:.0f}s; {load_note()})",
        flush=True,
    )
    return result


def score_within(db: Path, sae_id: str, model, features, cfg: ScoreConfig, minutes: float):
    """Score model explanation + baseline per feature until the time budget is spent."""
    rows: list[dict] = []
    started = time.perf_counter()
    with IndexReader(db) as reader:
        explained = set(reader.explained_features(sae_id))
        for feature in (f for f in features if f in explained):
            if time.perf_counter() - started > 60 * minutes:
                break
            mine = score(reader, sae_id, model, [feature], cfg, baseline=True, progress=False)
            rows += mine
            for row in mine:
                print(
                    f"  feature {feature:5d} {row['kind']:8s} detection {row['detection']:.2f} "
                    f"fuzzing {row['fuzzing']:.2f} ({row['feature_seconds']:.0f}s) "
                    f"{row['text'][:70]!r}",
                    flush=True,
                )
    return rows, time.perf_counter() - started


def table(rows: list[dict]) -> list[str]:
    """Mean (median) of each score per kind of explanation, and the paired comparison."""
    lines = [
        "| explanation | features | detection bal. acc. | fuzzing bal. acc. | detection AUC "
        "| fuzzing AUC |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind in ("model", "baseline"):
        mine = [r for r in rows if r["kind"] == kind]
        cells = []
        for name in SCORES:
            values = [r[name] for r in mine if not math.isnan(r[name])]
            cells.append(
                f"{statistics.fmean(values):.3f} ({statistics.median(values):.3f})"
                if values
                else "n/a"
            )
        lines.append(f"| {kind} | {len(mine)} | " + " | ".join(cells) + " |")
    pairs = paired(rows)
    lines.append("")
    for name in ("detection", "fuzzing"):
        diffs = [m[name] - b[name] for m, b in pairs]
        if diffs:
            lines.append(
                f"{name}: model - baseline, mean {statistics.fmean(diffs):+.3f}; model "
                f"higher on {sum(d > 0 for d in diffs)}, equal on {sum(d == 0 for d in diffs)}, "
                f"lower on {sum(d < 0 for d in diffs)} of {len(diffs)} features"
            )
    return lines


def paired(rows: list[dict]) -> list[tuple[dict, dict]]:
    by = {(r["feature"], r["kind"]): r for r in rows}
    return [
        (by[f, "model"], by[f, "baseline"])
        for f in sorted({r["feature"] for r in rows})
        if (f, "model") in by and (f, "baseline") in by
    ]


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"explain_bench start: {load_note()}, torch {args.threads} threads", flush=True)
    started = time.perf_counter()
    model = load_language_model(ModelSpec(threads=args.threads))
    print(f"model {model.name} loaded in {time.perf_counter() - started:.1f}s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = copy_index(args.db, Path(tmp) / "batch8")
        with IndexReader(db) as reader:
            sae_id = args.sae or reader.saes()[0].id
            features = sample_features(reader, sae_id, args.features, args.seed)
        print(f"features (seed {args.seed}): {features}", flush=True)
        rates = {8: explain_rate(db, sae_id, model, features, 8).per_minute}
        if args.batch_one:
            one = copy_index(args.db, Path(tmp) / "batch1")
            rates[1] = explain_rate(one, sae_id, model, features, 1).per_minute
            if rates[1]:
                print(f"explain_bench batched / one at a time: {rates[8] / rates[1]:.2f}x")
        cfg = ScoreConfig(n_activating=args.n_activating, n_inactive=args.n_inactive)
        print(
            f"scoring with {model.name}: {args.n_activating} held-out activating + "
            f"{args.n_inactive} non-activating texts per scorer, up to {args.score_minutes} min",
            flush=True,
        )
        rows, seconds = score_within(db, sae_id, model, features, cfg, args.score_minutes)
    n = len({r["feature"] for r in rows})
    print(
        f"explain_bench scoring: {seconds / max(n, 1):.1f} s/feature (model explanation + "
        f"baseline, detection + fuzzing; {n} features; {load_note()})"
    )
    print("\n".join(table(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
        print(f"rows: {args.json}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--sae", help="the SAE's id in the index (default: the first)")
    p.add_argument("--features", type=int, default=16, help="features explained")
    p.add_argument("--seed", type=int, default=0, help="which random sample of features")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-one", action="store_true", help="also time one prompt per call")
    p.add_argument("--score-minutes", type=float, default=20.0)
    p.add_argument("--n-activating", type=int, default=10)
    p.add_argument("--n-inactive", type=int, default=10)
    p.add_argument("--json", type=Path, help="write every scored row as JSON")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
