"""Matching two indexed widths: its time beside the indexing's, and the distributions behind the
parent rules of docs/splitting.md.

    python bench/match_bench.py --db index.duckdb --sae A --sae B [--repeats 1]

Times reading the two runs' activations and decoders, and `saedex.matching.match` (the sparse
products, correlations, parents, family cover and every feature's top matches), beside the two
runs' own recorded indexing durations (`saes.duration_s`). Then prints, over the wide SAE's
features, the distribution of the best correlation with any narrow feature, of that feature's
containment, and of the narrow features' family cover: what the thresholds are set from.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from saedex.matching import match, read_sides
from saedex.store import IndexReader

EDGES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001]


def histogram(name: str, values: np.ndarray) -> None:
    counts, _ = np.histogram(values, bins=EDGES)
    share = counts / max(len(values), 1)
    cells = " ".join(f"{lo:.1f}+:{s:6.1%}" for lo, s in zip(EDGES[:-1], share, strict=True))
    print(f"{name:<34} n={len(values):>6,}  median {np.median(values):.3f}\n    {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--sae", action="append", required=True)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    a, b = args.sae
    reads, matches = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        narrow, wide = read_sides(args.db, a, b)
        reads.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = match(narrow, wide)
        matches.append(time.perf_counter() - started)
    with IndexReader(args.db) as reader:
        infos = [reader.sae(narrow.sae_id), reader.sae(wide.sae_id)]
    load = os.getloadavg()
    print(f"{narrow.sae_id} ({narrow.acts.d_sae:,}) x {wide.sae_id} ({wide.acts.d_sae:,}), "
          f"{narrow.acts.n_counted:,} tokens; load average {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"read activations + decoders  {min(reads):8.1f} s")
    print(f"match                        {min(matches):8.1f} s  ({len(result.rows):,} rows)")
    for info in infos:
        print(f"indexing {info.id:<20}{info.duration_s:8.1f} s (recorded by its run)")
    live = np.bincount(wide.acts.feature, minlength=wide.acts.d_sae) > 0
    best = result.best_correlation[live]
    histogram("wide features: best r", best)
    has = result.parent >= 0
    histogram("wide features with a parent: r", result.parent_correlation[has])
    histogram("... and their containment", result.parent_containment[has])
    cover = result.family_cover[~np.isnan(result.family_cover)]
    histogram("narrow features with children: cover", cover)
    kids = np.bincount(result.parent[has], minlength=narrow.acts.d_sae)
    print(f"live wide features {live.sum():,}: with a parent {has.sum() / live.sum():.1%}, "
          f"with a clear parent {result.clear.sum() / live.sum():.1%}")  # fmt: skip
    print("narrow features by number of children: "
          + ", ".join(f"{k}: {int((kids == k).sum()):,}" for k in range(6))
          + f", 6+: {int((kids >= 6).sum()):,}")  # fmt: skip


if __name__ == "__main__":
    main()
