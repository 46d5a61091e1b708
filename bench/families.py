"""Print feature families of two matched widths with their top examples (docs/splitting.md).

    python bench/families.py --db index.duckdb --sae NARROW [--families 3] [--examples 3]

Families shown: narrow features with at least two children, not dense (density under
--max-density), most clear children first, then largest family cover. Each line is a top example, the token it peaks on in [brackets]
with a few tokens either side.
"""

from __future__ import annotations

import argparse

from saedex.store import IndexReader

WINDOW = 6


def snippet(example) -> str:
    at = example.max_token_index
    lo, hi = max(1, at - WINDOW), min(len(example.tokens), at + 3)
    parts = [
        f"[{t}]" if i == at else t
        for i, t in zip(range(lo, hi), example.tokens[lo:hi], strict=True)
    ]
    return "".join(parts).replace("\n", "\\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--sae", required=True, help="the narrow SAE")
    parser.add_argument("--families", type=int, default=3)
    parser.add_argument("--examples", type=int, default=3)
    parser.add_argument("--max-density", type=float, default=0.02)
    args = parser.parse_args()
    with IndexReader(args.db) as reader:
        d_sae = reader.sae(args.sae).d_sae
        summaries = reader.summaries(args.sae, list(range(d_sae)))
        families = reader.families(args.sae, list(range(d_sae)))
        chosen = sorted(
            (
                f
                for f in families.values()
                if len(f.children) >= 2 and summaries[f.index].density < args.max_density
            ),
            key=lambda f: (-sum(c.clear for c in f.children), -(f.cover[0] if f.cover else 0)),
        )[: args.families]
        for family in chosen:
            s = summaries[family.index]
            print(f"\n{args.sae} #{family.index}: density {s.density:.2%}, "
                  f"{len(family.children)} children, family cover {family.cover[0]:.2f}")  # fmt: skip
            for ex in reader.top_examples(args.sae, [family.index], args.examples)[family.index]:
                print(f"    {ex.max_activation:6.2f}  {snippet(ex)}")
            for child in family.children:
                print(f"  child {child.sae_id} #{child.index}: r {child.correlation:.2f}, "
                      f"containment {child.containment:.2f}, cover {child.cover:.2f}, "
                      f"clear {child.clear}")  # fmt: skip
                tops = reader.top_examples(child.sae_id, [child.index], args.examples)
                for ex in tops[child.index]:
                    print(f"    {ex.max_activation:6.2f}  {snippet(ex)}")


if __name__ == "__main__":
    main()
