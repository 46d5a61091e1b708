"""Matching across widths (issue 17.3): planted splitting is recovered, measures are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saedex.config import IndexConfig, MatchConfig
from saedex.errors import SaedexError
from saedex.indexer.indexing import IndexJob, run_indexes
from saedex.indexer.sae import SaeConfig, save_sae
from saedex.matching import CHILD, PARENT, match, read_sides
from saedex.store.views import connect
from tests.conftest import D_MODEL, HOOK

CFG = IndexConfig(context_size=32, batch_size=8)
N_NARROW = 16
SPLIT = {2: 2, 5: 3, 9: 2, 13: 3}  # narrow feature -> how many children it splits into


def narrow_weights(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A ReLU SAE with sparse-ish features (negative biases)."""
    enc = torch.randn(D_MODEL, N_NARROW, generator=gen) / D_MODEL**0.5
    dec = torch.nn.functional.normalize(torch.randn(N_NARROW, D_MODEL, generator=gen), dim=1)
    return {
        "W_enc": enc,
        "b_enc": -0.4 - torch.rand(N_NARROW, generator=gen) * 0.4,
        "W_dec": dec,
        "b_dec": torch.zeros(D_MODEL),
    }


def split(narrow: dict, gen: torch.Generator) -> tuple[dict, list[int]]:
    """The wide SAE: each unsplit feature copied, each SPLIT feature f replaced by children
    whose encoders are f's plus directions summing to zero (so wherever f fires, at least one
    child fires: they partition f's tokens) and whose decoders are f's, perturbed. Shuffled.
    Returns the weights and every wide feature's planted parent."""
    enc, bias, dec, parents = [], [], [], []
    for f in range(N_NARROW):
        n = SPLIT.get(f, 1)
        dirs = torch.randn(D_MODEL, n, generator=gen) / D_MODEL**0.5
        dirs = (dirs - dirs.mean(dim=1, keepdim=True)) * 0.6  # sum to zero over the children
        for m in range(n):
            enc.append(narrow["W_enc"][:, f] + dirs[:, m])
            bias.append(narrow["b_enc"][f])
            noise = 0.3 * torch.randn(D_MODEL, generator=gen) / D_MODEL**0.5 if n > 1 else 0
            dec.append(torch.nn.functional.normalize(narrow["W_dec"][f] + noise, dim=0))
            parents.append(f)
    order = torch.randperm(len(parents), generator=gen)
    weights = {
        "W_enc": torch.stack(enc, dim=1)[:, order],
        "b_enc": torch.stack(bias)[order],
        "W_dec": torch.stack(dec)[order],
        "b_dec": narrow["b_dec"],
    }
    return weights, [parents[i] for i in order.tolist()]


def save(path, weights):
    d_sae = weights["b_enc"].shape[0]
    cfg = SaeConfig("standard", D_MODEL, d_sae, HOOK, "tiny-llama", apply_b_dec_to_input=True)
    return save_sae(path, weights, cfg)


@pytest.fixture(scope="module")
def planted(tiny_model, tiny_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    gen = torch.Generator().manual_seed(7)
    narrow = narrow_weights(gen)
    wide, parents = split(narrow, gen)
    dirs = save(tmp / "narrow", narrow), save(tmp / "wide", wide)
    db = tmp / "index.duckdb"
    jobs = [IndexJob(str(tiny_model), str(d), str(tiny_corpus), db, d.name, config=CFG)
            for d in dirs]  # fmt: skip
    run_indexes(jobs, False)
    return db, np.array(parents)


def test_matching_recovers_every_planted_parent(planted):
    db, parents = planted
    result = match(*read_sides(db, "wide", "narrow"))  # order given does not matter
    assert (result.narrow, result.wide) == ("narrow", "wide")
    assert result.parent.tolist() == parents.tolist()
    for f in SPLIT:
        children = {r.other_feature for r in result.rows
                    if (r.sae_id, r.feature, r.relation) == ("narrow", f, CHILD)}  # fmt: skip
        assert children == set(np.flatnonzero(parents == f).tolist())
        assert result.family_cover[f] == pytest.approx(1.0)  # the children partition f's tokens
    copies = [w for w, p in enumerate(parents) if p not in SPLIT]
    assert result.clear[copies].all() and (result.parent_correlation[copies] > 0.999).all()
    for r in result.rows:
        if r.relation == PARENT:
            assert (r.sae_id, r.other_feature) == ("wide", parents[r.feature])


def dense(db, sae_id: str, d_sae: int, n_counted: int) -> np.ndarray:
    """The [N, d_sae] activation matrix, every counted token a row (brute force)."""
    con = connect(db)
    rows = con.execute(
        "SELECT context_id, position, feature, value FROM activations WHERE sae_id = ?",
        [sae_id],
    ).fetchall()
    con.close()
    keys = sorted({(c, p) for c, p, _, _ in rows})
    at = {k: i for i, k in enumerate(keys)}
    out = np.zeros((n_counted, d_sae))
    for c, p, f, v in rows:
        out[at[(c, p)], f] = v
    return out


def test_correlation_cosine_and_cover_equal_brute_force(planted):
    db, parents = planted
    narrow, wide = read_sides(db, "narrow", "wide")
    result = match(narrow, wide, MatchConfig(first=3))
    n = narrow.acts.n_counted
    a, b = dense(db, "narrow", N_NARROW, n), dense(db, "wide", len(parents), n)
    dec_a, dec_b = narrow.decoder, wide.decoder
    for r in result.rows:
        mine, theirs = (a, b) if r.sae_id == "narrow" else (b, a)
        x, y = mine[:, r.feature], theirs[:, r.other_feature]
        assert r.correlation == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-6)
        assert r.cofiring == int(((x > 0) & (y > 0)).sum())
        narrow_x, wide_y = (x, y) if r.sae_id == "narrow" else (y, x)
        assert r.cover == pytest.approx(narrow_x[wide_y > 0].sum() / narrow_x.sum(), abs=1e-9)
        va, vb = (dec_a, dec_b) if r.sae_id == "narrow" else (dec_b, dec_a)
        u, v = va[r.feature], vb[r.other_feature]
        assert r.cosine == pytest.approx(u @ v / np.linalg.norm(u) / np.linalg.norm(v), abs=1e-5)
    # each feature's best match by r is listed (first), for both SAEs
    full = np.corrcoef(a.T, b.T)[:N_NARROW, N_NARROW:]
    for i in range(N_NARROW):
        listed = {r.other_feature for r in result.rows if (r.sae_id, r.feature) == ("narrow", i)}
        assert int(np.nanargmax(full[i])) in listed


def test_matching_refuses_unrelated_saes(planted, tiny_model, tiny_sae, tiny_corpus):
    db, _ = planted
    with pytest.raises(SaedexError, match="unknown SAE"):
        read_sides(db, "narrow", "nope")
    with pytest.raises(SaedexError, match="two different"):
        read_sides(db, "narrow", "narrow")
    other = IndexConfig(context_size=24, batch_size=8)
    run_indexes([IndexJob(str(tiny_model), str(tiny_sae), str(tiny_corpus), db, "o",
                          config=other)], False)  # fmt: skip
    with pytest.raises(SaedexError, match="differ in|different settings"):
        read_sides(db, "narrow", "o")


def test_match_command_stores_rows_that_reader_and_graphql_read(planted, engine):
    """`saedex match` publishes the rows; IndexReader and GraphQL read what matching computed."""
    from starlette.testclient import TestClient
    from typer.testing import CliRunner

    from saedex.api.app import create_app
    from saedex.cli import app
    from saedex.config import ServeConfig
    from saedex.store import IndexReader
    from saedex.store.matches import is_matched

    db, parents = planted
    got = CliRunner().invoke(app, ["match", "--db", str(db), "--sae", "narrow", "--sae", "wide"])
    assert got.exit_code == 0, got.output
    assert "have a parent" in got.output
    assert is_matched(db, "narrow", "wide") and not is_matched(db, "wide", "narrow")
    result = match(*read_sides(db, "narrow", "wide"))
    f = next(iter(SPLIT))
    kids = sorted(np.flatnonzero(parents == f).tolist())
    with IndexReader(db) as reader:
        stored = reader.matches("narrow", [f], "wide")[f]
        expected = [r for r in result.rows if (r.sae_id, r.feature) == ("narrow", f)]
        assert {(m.index, m.relation) for m in stored} == {
            (r.other_feature, r.relation) for r in expected
        }
        assert [m.correlation for m in stored] == sorted(
            (m.correlation for m in stored), reverse=True
        )
        family = reader.families("narrow", [f])[f]
        assert sorted(m.index for m in family.children) == kids
        assert family.cover == [pytest.approx(1.0)]
        child = reader.families("wide", [kids[0]])[kids[0]]
        assert [(m.sae_id, m.index, m.relation) for m in child.parents] == [("narrow", f, PARENT)]
        query = (
            'query($i: Int!) { feature(sae: "wide", index: $i) { matches(sae: "narrow", '
            "first: 2) { index correlation cosine relation clear feature { index } } "
            "family { parents { saeId index } children { index } cover } } }"
        )
        with TestClient(create_app(reader, ServeConfig(), engine)) as client:
            body = client.post("/graphql", json={"query": query, "variables": {"i": kids[0]}})
    feature = body.json()["data"]["feature"]
    assert feature["family"]["parents"] == [{"saeId": "narrow", "index": f}]
    assert len(feature["matches"]) <= 2
    assert feature["matches"][0]["index"] == f and feature["matches"][0]["relation"] == PARENT
    again = CliRunner().invoke(app, ["match", "--db", str(db), "--sae", "narrow"])
    assert again.exit_code == 2 and "at least two" in again.output


def test_site_feature_pages_link_parents_and_children(planted, tmp_path):
    """After `saedex match`, each feature's dashboard data (`mt`) lists its family, by key."""
    import json

    from saedex.config import SiteConfig
    from saedex.matching import match_and_store
    from saedex.site.export import SiteJob, export_site

    db, parents = planted
    match_and_store(db, "narrow", "wide")
    export_site(SiteJob(db, ["narrow", "wide"], tmp_path / "site"), progress=False)
    f = next(iter(SPLIT))
    kids = np.flatnonzero(parents == f).tolist()

    def mt(sae: str, index: int) -> list:
        """The `mt` entries of a feature, from its block page's script data."""
        per = SiteConfig().features_per_page
        block = tmp_path / "site" / "blocks" / sae / f"{index // per}.html"
        text = block.read_text().split('id="sx-data">')[1].split("</script>")[0]
        features = json.loads(text)["features"]
        return next(f["mt"] for f in features if f["i"] == index)

    assert [m[:3] for m in mt("wide", kids[0])] == [["narrow", f, PARENT]]
    assert sorted(m[1] for m in mt("narrow", f) if m[2] == CHILD) == sorted(kids)
