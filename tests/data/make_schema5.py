"""How tests/data/schema5.tar.gz was made: at commit fd4519d (schema version 5, the last one whose
`feature_matches` held each narrow feature's family cover as a row of its own, `relation`
'family' and `other_feature` -1, before schema 6 gave families their own table).

A narrow and a wide SAE with planted splitting (tests/test_matching.py) over the tiny model,
indexed in one pass and matched (`saedex match`), so the file has run files AND a derived
matches file. Beside it, schema5-records.json: every feature's matches and family as that
saedex's reader returned them, the oracle the upgraded file must still give.

Run from the repository root with the saedex of that commit:
`PYTHONPATH=. python tests/data/make_schema5.py /tmp/s5/schema5.duckdb`, then
`tar czf tests/data/schema5.tar.gz -C /tmp/s5 schema5.duckdb schema5.duckdb.runs` (no .lock).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from saedex.indexer.indexing import IndexJob, run_indexes
from saedex.matching import match_and_store
from saedex.store import IndexReader
from tests.conftest import build_tiny_model, make_corpus_docs
from tests.test_matching import CFG, narrow_weights, save, split

SAES = ("narrow", "wide")


def write_inputs(root: Path) -> tuple[Path, Path, Path, Path]:
    model = build_tiny_model(root / "model")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in make_corpus_docs()))
    gen = torch.Generator().manual_seed(7)
    narrow = narrow_weights(gen)
    wide, _ = split(narrow, gen)
    return model, corpus, save(root / "narrow", narrow), save(root / "wide", wide)


def family_records(db: Path) -> dict:
    """Every feature's matches and family, as plain data (SAE id -> feature -> record)."""
    out: dict = {}
    with IndexReader(db) as reader:
        for sae in SAES:
            indices = list(range(reader.sae(sae).d_sae))
            matches = reader.matches(sae, indices)
            families = reader.families(sae, indices)
            out[sae] = {
                i: {
                    "matches": [dataclasses.asdict(m) for m in matches[i]],
                    "family": dataclasses.asdict(families[i]),
                }
                for i in indices
            }
    return json.loads(json.dumps(out))  # int keys as JSON has them


def main(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    model, corpus, narrow, wide = write_inputs(out.parent / "inputs")
    jobs = [
        IndexJob(str(model), str(sae), str(corpus), out, sae.name, config=CFG)
        for sae in (narrow, wide)
    ]
    run_indexes(jobs, False)
    match_and_store(out, "narrow", "wide")
    records = family_records(out)
    Path(__file__).with_name("schema5-records.json").write_text(json.dumps(records, indent=0))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
