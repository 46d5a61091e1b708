"""Explanations per minute with the embedded default model (SmolLM2-135M-Instruct) on CPU.

    python bench/explain_bench.py --db index.duckdb --sae ID [--features 24] [--threads 2]

Copies the index to a temporary folder (so its edits file is untouched), then explains the same
features twice, one prompt per call (batch 1) and batched (batch 8), and prints both rates and
their ratio, measured side by side in one run; then scores them (detection + fuzzing) and
prints seconds per feature. The machine's load average is printed too: these 2-core machines
are shared, so read the figures with it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from saedex.config import ExplainConfig, ScoreConfig
from saedex.explain.explainer import explain, live_features
from saedex.explain.models import ModelSpec, load_language_model
from saedex.explain.scoring import score
from saedex.store import IndexReader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--sae", required=True)
    parser.add_argument("--features", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--score-features", type=int, default=6)
    args = parser.parse_args()

    print(f"load average before: {os.getloadavg()}")
    started = time.perf_counter()
    model = load_language_model(ModelSpec(threads=args.threads))
    print(f"model {model.name} loaded in {time.perf_counter() - started:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        rates = {}
        for batch in (1, 8):
            db = Path(tmp) / f"batch{batch}" / "index.duckdb"
            db.parent.mkdir()
            shutil.copy(args.db, db)
            with IndexReader(db) as reader:
                features = live_features(reader, args.sae, None)[: args.features]
                cfg = replace(ExplainConfig(), batch_size=batch)
                result = explain(reader, args.sae, model, features, cfg, progress=False)
                rates[batch] = result.per_minute
                print(f"batch {batch}: {result.explained} explained, {result.failed} empty, "
                      f"{result.seconds:.1f}s -> {result.per_minute:.1f} features/min")  # fmt: skip
                if batch == 8:
                    scored = features[: args.score_features]
                    t0 = time.perf_counter()
                    rows = score(reader, args.sae, model, scored, ScoreConfig(), progress=False)
                    per = (time.perf_counter() - t0) / max(1, len({r["feature"] for r in rows}))
                    print(f"scoring (detection + fuzzing, 20 texts each): {per:.1f} s/feature")
        print(f"batched / one at a time: {rates[8] / rates[1]:.2f}x" if rates[1] else "")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
