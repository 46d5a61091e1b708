"""Co-activation over all features (issue 18.1), against a brute-force count token by token."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations

import numpy as np
import pytest

from saedex.store.coactivation import (
    SparseActivations,
    coactivation_table,
    cofiring,
    compute,
    counted_tokens,
    sparse_activations,
)
from saedex.store.views import connect
from tests.conftest import API_SAE, copy_index


def brute_force(rows) -> tuple[Counter, Counter]:
    """(tokens per feature, tokens per unordered feature pair) from (context, position,
    feature) rows, one token at a time."""
    tokens: dict[tuple, set[int]] = defaultdict(set)
    for context, position, feature in rows:
        tokens[(context, position)].add(feature)
    alone: Counter = Counter()
    pairs: Counter = Counter()
    for features in tokens.values():
        alone.update(features)
        pairs.update(combinations(sorted(features), 2))
    return alone, pairs


@pytest.fixture(scope="module")
def con(api_db):
    con = connect(api_db)
    yield con
    con.close()


def test_cofiring_equals_brute_force(con):
    rows = con.execute(
        "SELECT context_id, position, feature FROM activations WHERE sae_id = ?", [API_SAE]
    ).fetchall()
    assert len(rows) > 100
    alone, pairs = brute_force(rows)
    dense = cofiring(sparse_activations(con, API_SAE)).toarray()
    for (i, j), c in pairs.items():
        assert dense[i, j] == dense[j, i] == c
    assert dense.sum() == sum(alone.values()) + 2 * sum(pairs.values())
    n_active = dict(
        con.execute("SELECT feature, n_active FROM features WHERE sae_id = ?", [API_SAE]).fetchall()
    )
    assert all(dense[i, i] == n_active[i] for i in n_active)


@pytest.mark.parametrize("contexts_per_part", [1, 3, 2048])  # summed over parts, or one
def test_top_n_ranking_equals_brute_force(con, contexts_per_part):
    rows = con.execute(
        "SELECT context_id, position, feature FROM activations WHERE sae_id = ?", [API_SAE]
    ).fetchall()
    alone, pairs = brute_force(rows)
    n_counted = counted_tokens(con, API_SAE)
    assert (
        n_counted
        == con.execute(
            "SELECT count(DISTINCT (context_id, position)) FROM activations WHERE sae_id = ?",
            [API_SAE],
        ).fetchone()[0]
        + con.execute(  # counted tokens where no feature fired
            "SELECT n_tokens - (SELECT count(DISTINCT (context_id, position)) FROM activations "
            "WHERE sae_id = ?) FROM saes WHERE sae_id = ?",
            [API_SAE, API_SAE],
        ).fetchone()[0]
    )
    table = compute(con, API_SAE, first=5, contexts_per_part=contexts_per_part).to_pylist()
    got: dict[int, list[dict]] = defaultdict(list)
    for row in table:
        got[row["feature"]].append(row)
    assert got, "no co-activations computed"
    for i in alone:
        partners = {j if i == k else k: c for (k, j), c in pairs.items() if i in (k, j)}
        expected = sorted(
            ((c / (alone[i] + alone[j] - c), c, j) for j, c in partners.items()),
            key=lambda t: (-t[0], -t[1], t[2]),
        )[:5]
        mine = got.get(i, [])
        assert [(r["rank"], r["other"], r["count"]) for r in mine] == [
            (rank, j, c) for rank, (_, c, j) in enumerate(expected, 1)
        ]
        for r, (jac, c, j) in zip(mine, expected, strict=True):
            assert r["jaccard"] == pytest.approx(jac)
            assert r["lift"] == pytest.approx(c * n_counted / (alone[i] * alone[j]))


def test_cofiring_of_two_saes_equals_brute_force():
    """A^T B over tokens of two SAEs (features matched across widths): tokens line up by
    (context, position), whichever SAE fires on them."""
    rng = np.random.default_rng(0)

    def random_firings(d_sae: int, n: int) -> SparseActivations:
        """Distinct (context, position, feature) triples, as an index stores them."""
        c, p, f = np.unique(
            np.stack([rng.integers(0, 6, n), rng.integers(0, 40, n), rng.integers(0, d_sae, n)]),
            axis=1,
        )
        return SparseActivations((c << 16) | p, f, np.ones(len(f)), d_sae, 240)

    left, right = random_firings(7, 300), random_firings(11, 400)
    expected = np.zeros((7, 11), dtype=np.int64)
    sets = [defaultdict(set), defaultdict(set)]
    for side, f in zip(sets, (left, right), strict=True):
        for token, k in zip(f.tokens, f.feature, strict=True):
            side[token].add(k)
    for token, features in sets[0].items():
        for i in features:
            for j in sets[1].get(token, ()):
                expected[i, j] += 1
    assert (cofiring(left, right).toarray() == expected).all()


def test_ranking_ties_and_first_zero():
    """Ties in Jaccard go to more shared tokens, then the lower index; first=0 keeps none."""
    from scipy import sparse

    # feature 0 fires on 4 tokens; 1 and 2 share 2 of them each (same Jaccard), 3 shares 1.
    products = sparse.csr_matrix(
        np.array([[4, 2, 2, 1], [2, 2, 0, 0], [2, 0, 2, 0], [1, 0, 0, 1]], dtype=np.int32)
    )
    rows = coactivation_table(products, n_counted=8, first=2).to_pylist()
    zero = [(r["rank"], r["other"], r["count"]) for r in rows if r["feature"] == 0]
    assert zero == [(1, 1, 2), (2, 2, 2)]
    assert [r["lift"] for r in rows if r["feature"] == 0] == [2 * 8 / (4 * 2)] * 2
    assert coactivation_table(products, 8, first=0).num_rows == 0


# -- stored by `saedex index`, and by `saedex coactivations` afterwards; every surface ----------


def _as_rows(found: dict) -> list[tuple]:
    return [(i, c.index, c.count) for i, cs in sorted(found.items()) for c in cs]


def test_index_stores_them_and_the_reader_serves_them(con, reader):
    """The run file holds each feature's top 10 (IndexConfig.coactivations), equal to a fresh
    computation; the reader, its FeatureData and `first` agree."""
    d_sae = reader.sae(API_SAE).d_sae
    want = compute(con, API_SAE, first=10).to_pylist()
    got = reader.coactivations(API_SAE, list(range(d_sae)))
    assert _as_rows(got) == [(r["feature"], r["other"], r["count"]) for r in want]
    flat = [c for i in range(d_sae) for c in got[i]]
    assert [c.jaccard for c in flat] == pytest.approx([r["jaccard"] for r in want], rel=1e-6)
    assert [c.lift for c in flat] == pytest.approx([r["lift"] for r in want], rel=1e-6)
    busy = max(got, key=lambda i: len(got[i]))
    assert len(got[busy]) == 10 and reader.feature(API_SAE, busy).coactivations == got[busy]
    assert reader.coactivations(API_SAE, [busy], first=3)[busy] == got[busy][:3]


def test_graphql_and_rest_serve_them(api_db, reader):
    from starlette.testclient import TestClient

    from saedex.api.app import create_app
    from saedex.config import ServeConfig

    busy = max(range(64), key=lambda i: len(reader.coactivations(API_SAE, [i])[i]))
    query = (
        'query ($i: Int!) { feature(sae: "' + API_SAE + '", index: $i) { coactivations(first: 4) '
        "{ index count jaccard lift feature { index } } } }"
    )
    with TestClient(create_app(reader, ServeConfig(inference=False))) as client:
        body = client.post("/graphql", json={"query": query, "variables": {"i": busy}}).json()
        rest = client.get(f"/api/features/{API_SAE}/{busy}").json()
    want = reader.coactivations(API_SAE, [busy])[busy]
    got = body["data"]["feature"]["coactivations"]
    assert [(c["index"], c["count"], c["feature"]["index"]) for c in got] == [
        (c.index, c.count, c.index) for c in want[:4]
    ]
    assert [c["jaccard"] for c in got] == pytest.approx([c.jaccard for c in want[:4]])
    assert [(c["index"], c["lift"]) for c in rest["coactivations"]] == [
        (c.index, pytest.approx(c.lift)) for c in want
    ]


def test_command_publishes_more_beside_the_run(api_db, tmp_path):
    """`saedex coactivations --first 15` on an index whose run stored 10: 15 per feature, the
    run's 10 replaced, not doubled (derived files: tests/test_derived.py)."""
    from typer.testing import CliRunner

    from saedex.cli import app
    from saedex.store import IndexReader

    db = copy_index(api_db, tmp_path / api_db.name)
    result = CliRunner().invoke(
        app, ["coactivations", "--db", str(db), "--sae", API_SAE, "--first", "15"]
    )
    assert result.exit_code == 0, result.output
    with IndexReader(db) as reader, IndexReader(api_db) as before:
        d_sae = reader.sae(API_SAE).d_sae
        got = reader.coactivations(API_SAE, list(range(d_sae)))
        ten = before.coactivations(API_SAE, list(range(d_sae)))
    want = compute(connect(db), API_SAE, first=15).to_pylist()
    assert _as_rows(got) == [(r["feature"], r["other"], r["count"]) for r in want]
    assert max(map(len, got.values())) == 15
    assert all(got[i][:10] == ten[i] for i in range(d_sae))
    # your own SQL sees them once too: the derived rows replace the run's in the views
    stored = connect(db).execute("SELECT count(*) FROM coactivations WHERE sae_id = ?", [API_SAE])
    assert stored.fetchone()[0] == len(want)
    bad = CliRunner().invoke(app, ["coactivations", "--db", str(db), "--sae", "nope"])
    assert bad.exit_code == 2 and "unknown SAE: 'nope'" in bad.output


def test_site_shows_them_like_neighbours(api_db, reader, tmp_path):
    import json
    import re

    from saedex.config import SiteConfig
    from saedex.site.export import SiteJob, export_site
    from saedex.site.payload import r3

    out = tmp_path / "project"
    export_site(SiteJob(api_db, API_SAE, out, SiteConfig(workers=1)), progress=False)
    fragment = (out / "blocks" / API_SAE / "0.html").read_text()
    raw = re.search(r'<script type="application/json" id="sx-data">(.*?)</script>', fragment, re.S)
    features = {f["i"]: f for f in json.loads(raw.group(1))["features"]}
    found = reader.coactivations(API_SAE, list(features))
    for i, f in features.items():
        assert f["ca"] == [[c.index, r3(c.jaccard), r3(c.lift), c.count] for c in found[i]]
    assert any(f["ca"] for f in features.values())
