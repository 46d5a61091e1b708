"""The demo's widths step on the real default model: every shipped width indexed in one pass,
each pair matched, the families readable (issue 17)."""

from __future__ import annotations

import pytest
from rich.console import Console

from saedex.demo import DemoConfig, index_widths
from saedex.indexer.sae import SHIPPED_SAES, load_sae, resolve_sae
from saedex.store import IndexReader
from saedex.store.matches import is_matched

pytestmark = pytest.mark.integration


def test_demo_indexes_every_shipped_width_and_matches_them(tmp_path):
    cfg = DemoConfig(workdir=tmp_path, max_tokens=3000)
    default, ids = index_widths(cfg, Console(quiet=True), progress=False)
    widths = sorted(load_sae(resolve_sae(name)).cfg.d_sae for name in SHIPPED_SAES)
    assert default.d_sae == 4608 and len(ids) == len(SHIPPED_SAES) >= 2
    with IndexReader(cfg.db) as reader:
        assert [reader.sae(i).d_sae for i in ids] == widths
        assert len({reader.sae(i).n_tokens for i in ids}) == 1  # the same tokens, one pass
        narrow, wide = ids[0], ids[-1]
        assert is_matched(cfg.db, narrow, wide)
        families = reader.families(wide, list(range(widths[-1])))
        with_parent = [f for f in families.values() if f.parents]
        narrower = {sae: i for i, sae in enumerate(ids[:-1])}  # parents: narrowest SAE first
        for f in with_parent:
            order = [narrower[p.sae_id] for p in f.parents]
            assert order == sorted(order)
        assert any(f.parents[0].sae_id == narrow for f in with_parent)
    again, _ = index_widths(cfg, Console(quiet=True), progress=False)  # reuses, re-matches nothing
    assert again.id == default.id
