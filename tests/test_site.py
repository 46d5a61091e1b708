"""The static site exporter on real indexes of the tiny fixtures: several SAEs in one site, the
compact feature data against the index, escaping, search, re-export, and pages in Chromium."""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import replace
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saedex.cli import app
from saedex.config import IndexConfig, SiteConfig
from saedex.data import (
    Example,
    Explanation,
    FeatureData,
    FeatureSummary,
    Histogram,
    LogitEntry,
)
from saedex.indexer.indexing import IndexJob, run_index
from saedex.site import payload
from saedex.site.export import SiteJob, export_site, search_terms, shard_of, term
from saedex.site.pages import FeatureRow, public_name
from saedex.site.render import esc, feature_html, script_json, token_html
from saedex.store import IndexReader
from tests.browser import CHROMEDRIVER, CHROMIUM, chromium
from tests.conftest import copy_index

SAE = "sae"
WIDE = "second/sae"  # a slash: its folder is "second-sae"
WIDE_KEY = "second-sae"
HOSTILE_SAE = "hostile"
HOSTILE = [
    '<script>alert("pwned")</script>',
    "<img src=x onerror=alert(1)>",
    "{{ config.site_name }} {% raw %}",
    "| a | b |\n|---|---|",
    "`code` *bold* _em_ **strong**",
    "[x](http://evil.example) ![i](http://evil.example/i.png)",
    "&amp; &lt;b&gt; &#60;i&#62;",
    "<!-- saedex:html --> </details></summary> SAEDEX_TITLE_SLOT",
    "text\n---\n\n    indented code\n\n1. item\n> quote",
]
HOSTILE_SOURCE = "<b>src</b>|*x*"
PER = 8  # features per block page: the tiny SAE spans several blocks
SITE = SiteConfig(workers=1, features_per_page=PER)


def _index(db: Path, sae_id: str, model, sae, corpus) -> Path:
    cfg = IndexConfig(context_size=48, batch_size=8)
    run_index(IndexJob(str(model), str(sae), str(corpus), db, sae_id, config=cfg), False)
    return db


@pytest.fixture(scope="session")
def site_db(tmp_path_factory, tiny_model, tiny_sae, tiny_corpus) -> Path:
    """Two SAEs in one index file."""
    db = tmp_path_factory.mktemp("site") / "index.duckdb"
    _index(db, SAE, tiny_model, tiny_sae, tiny_corpus)
    return _index(db, WIDE, tiny_model, tiny_sae, tiny_corpus)


@pytest.fixture(scope="session")
def hostile_db(tmp_path_factory, tiny_model, tiny_sae) -> Path:
    """A corpus of markup, template syntax and entities, ids and sources included."""
    folder = tmp_path_factory.mktemp("hostile")
    corpus = folder / "hostile.jsonl"
    with corpus.open("w") as fh:
        for i, text in enumerate(HOSTILE):
            doc = {"id": f"<script>id{i}</script>", "source": HOSTILE_SOURCE, "text": text * 3}
            fh.write(json.dumps(doc) + "\n")
    return _index(folder / "index.duckdb", HOSTILE_SAE, tiny_model, tiny_sae, corpus)


@pytest.fixture(scope="session")
def built(tmp_path_factory, site_db) -> Path:
    """Every SAE of the tiny index exported and built; returns the project folder."""
    out = tmp_path_factory.mktemp("built") / "project"
    result = export_site(SiteJob(site_db, (), out, SITE, build=True), progress=False)
    assert result.site_dir == out / "site" and result.saes == (SAE, WIDE)
    return out


@pytest.fixture(scope="session")
def hostile_built(tmp_path_factory, hostile_db) -> Path:
    out = tmp_path_factory.mktemp("hostile-built") / "project"
    export_site(SiteJob(hostile_db, HOSTILE_SAE, out, SITE, build=True), progress=False)
    return out / "site"


def _busiest_feature(db: Path, sae_id: str) -> int:
    with IndexReader(db) as reader:
        return reader.list_features(sae_id, "density", descending=True, limit=1).items[0].index


def _block_data(site: Path, key: str, index: int, per: int = PER) -> dict:
    html = (site / key / "features" / f"{index // per}.html").read_text()
    raw = re.search(r'<script type="application/json" id="sx-data">(.*?)</script>', html, re.S)
    return json.loads(raw.group(1))


def _contexts(site: Path, key: str) -> dict[int, list]:
    """Every context shard of an SAE, read back as the script reads it."""
    out = {}
    for shard in (site / "data" / key).glob("ctx-*.js"):
        m = re.fullmatch(r'saedex\.ctx\("[^"]+",(\d+),(.*)\);\n', shard.read_text(), re.S)
        for k, row in enumerate(json.loads(m.group(2))):
            out[int(m.group(1)) + k] = row
    return out


def feature_examples(site: Path, key: str, index: int, per: int = PER) -> list[dict]:
    """A feature's top examples as its built page holds them: the text of each context (BOS
    left out) and the values of its active tokens."""
    block = _block_data(site, key, index, per)
    f = next(x for x in block["features"] if x["i"] == index)
    vocab_js = (site / "data" / f"vocab-{block['model']}.js").read_text()
    vocab = json.loads(re.fullmatch(r'saedex\.vocab\("[^"]+",(.*)\);\n', vocab_js, re.S).group(1))
    contexts = _contexts(site, key)
    first = block["page"]["first"]
    return [
        {"text": "".join(vocab[t] for t in contexts[ref][3][first:]), "values": values}
        for ref, _, _, _, values in f["ex"]
    ]


def _r3(values) -> list[float]:
    return [float(f"{v:.3g}") for v in values]


# -- data --------------------------------------------------------------------------------------


def test_feature_data_matches_index(built, site_db):
    site = built / "site"
    index = _busiest_feature(site_db, SAE)
    with IndexReader(site_db) as reader:
        data = reader.feature(SAE, index)
        vocab = reader.vocab(reader.sae(SAE).model_name)
    block = _block_data(site, SAE, index)
    f = next(x for x in block["features"] if x["i"] == index)
    contexts = _contexts(site, SAE)
    shown = block["page"]["shown"]
    assert len(f["ex"]) == min(shown, len(data.top_examples))
    for (ref, max_pos, max_act, positions, values), ex in zip(
        f["ex"], data.top_examples, strict=False
    ):
        cid, doc, source, ids = contexts[ref]
        assert (cid, doc, ids, max_pos) == (
            ex.context_id,
            ex.document_id,
            ex.token_ids,
            ex.max_token_index,
        )
        assert [vocab[t] for t in ids] == ex.tokens
        active = [(p, v) for p, v in enumerate(ex.activations) if v > 0]
        assert positions == [p for p, _ in active] and values == _r3(v for _, v in active)
        assert max_act == float(f"{ex.max_activation:.3g}")
    s = data.summary
    assert (f["n"], f["mx"]) == (s.n_active, float(f"{s.max_activation:.3g}"))
    assert [t for t, _ in f["tl"]] == [e.token_id for e in s.top_logits]
    assert [t for t, _ in f["bl"]] == [e.token_id for e in data.bottom_logits]
    assert [i for i, _ in f["nb"]] == [n.index for n in data.neighbours]
    assert f["h"][1] == data.histogram.counts and f["lh"][1] == data.logit_histogram.counts
    assert [len(iv[3]) for iv in f["iv"]] == [len(i.examples) for i in data.interval_samples]
    # the same feature from a FeatureData (the notebook path) gives the same data
    same, ctx_inline, _ = payload.from_feature(data)
    assert {k: v for k, v in same.items() if k not in ("ex", "iv")} == {
        k: v for k, v in f.items() if k not in ("ex", "iv")
    }
    assert [e[1:] for e in same["ex"][:shown]] == [e[1:] for e in f["ex"]]


def test_fallback_shows_stats_and_examples_text(built, site_db):
    index = _busiest_feature(site_db, SAE)
    html = (built / "site" / SAE / "features" / f"{index // PER}.html").read_text()
    section = html.split(f'<section class="sx-f" id="f{index}">')[1].split("</section>")[0]
    with IndexReader(site_db) as reader:
        data = reader.feature(SAE, index)
    assert f"{data.summary.n_active:,} of" in section and "Density" in section
    ex = data.top_examples[0]
    peak = f"<b>{token_html(ex.tokens[ex.max_token_index])}</b>"
    lo = max(1, ex.max_token_index - 10)
    window = "".join(token_html(t) for t in ex.tokens[lo : ex.max_token_index]) + peak
    assert window in section


def test_several_saes_listings_and_links(built, site_db):
    site = built / "site"
    home = (site / "index.html").read_text()
    assert 'href="sae/index.html"' in home and f'href="{WIDE_KEY}/index.html"' in home
    with IndexReader(site_db) as reader:
        infos = {i: reader.sae(i) for i in (SAE, WIDE)}
    for sae_id, key in ((SAE, SAE), (WIDE, WIDE_KEY)):
        info = infos[sae_id]
        assert f"{info.d_sae:,}" in home
        sae_home = (site / key / "index.html").read_text()
        assert 'href="list/density-1.html"' in sae_home and "Feature density" in sae_home
        other = WIDE_KEY if key == SAE else SAE
        assert f'href="../{other}/index.html"' in sae_home
        listing = (site / key / "list" / "index-1.html").read_text()
        links = re.findall(r'id="f(\d+)" href="../features/(\d+)\.html#f(\d+)"', listing)
        assert [int(i) for i, _, _ in links] == list(range(info.d_sae))
        assert all(int(b) == int(i) // PER and i == j for i, b, j in links)
        blocks = sorted(int(p.stem) for p in (site / key / "features").glob("*.html"))
        assert blocks == list(range(math.ceil(info.d_sae / PER)))
        data = _block_data(site, key, 0)
        assert data["page"]["sae"] == key and data["page"]["title"] == sae_id
        assert [f["i"] for f in data["features"]] == list(range(PER))
    assert not (site / SAE / "features" / "_shell.html").exists()


def test_no_absolute_paths_on_pages(built, site_db):
    with IndexReader(site_db) as reader:
        info = reader.sae(SAE)
    assert Path(info.corpus).is_absolute()
    for page in (built / "site").rglob("*"):
        if page.suffix in (".html", ".js") and page.is_file():
            text = page.read_text()
            assert info.corpus not in text and info.sae_path not in text, page
            assert info.model_name not in text, page
            assert str(built) not in text, page
    assert public_name("/home/me/corpus.jsonl") == "corpus.jsonl"
    assert public_name("org/dataset") == "org/dataset"


# -- search ------------------------------------------------------------------------------------


def _terms(site: Path, key: str) -> dict[str, list]:
    out = {}
    for shard in (site / "data" / key).glob("terms-*.js"):
        m = re.fullmatch(r'saedex\.terms\("[^"]+",(\d+),(.*)\);\n', shard.read_text(), re.S)
        for t, postings in json.loads(m.group(2)).items():
            assert shard_of(t, len(list((site / "data" / key).glob("terms-*.js")))) == int(
                m.group(1)
            )
            out[t] = postings
    return out


def test_search_shards_hold_tokens(built, site_db):
    index = _busiest_feature(site_db, SAE)
    with IndexReader(site_db) as reader:
        data = reader.feature(SAE, index)
    terms = _terms(built / "site", SAE)
    ex = data.top_examples[0]
    fires = term(ex.tokens[ex.max_token_index])
    promotes = term(data.summary.top_logits[0].token)
    if fires:
        assert any(i == index and flags & 1 for i, flags in terms[fires])
    if promotes:
        assert any(i == index and flags & 2 for i, flags in terms[promotes])
    total = sum(
        (built / "site" / "data" / SAE).joinpath(p.name).stat().st_size
        for p in (built / "site" / "data" / SAE).glob("terms-*.js")
    )
    assert total < 200_000


def test_search_shards_match_the_forms(tmp_path, site_db, monkeypatch):
    """Every search box names as many shards as its SAE has files (more than one here)."""
    from saedex.site import export

    monkeypatch.setattr(export, "TERMS_PER_SHARD", 10)
    out = tmp_path / "shards"
    export_site(SiteJob(site_db, (), out, SITE), progress=False)
    data = out / "docs" / "data"
    pages = [out / "docs" / "index.md", out / "docs" / SAE / "index.md"]
    pages += [out / "docs" / SAE / "list" / "index-1.md"]
    for page in pages:
        raw = re.findall(r"data-search='([^']*)'", page.read_text())
        assert raw, page
        for sae in json.loads(html.unescape(raw[0]))["saes"]:
            assert sae["shards"] == len(list((data / sae["key"]).glob("terms-*.js"))) > 1


def test_explanations_join_search_and_lead_the_page():
    rows = [FeatureRow(3, 1, 0.1, 1.0, ("cat",), ("dog",), ("Mentions of Paris, France", "Dogs"))]
    terms = search_terms(rows)
    assert terms["paris"] == {3: 4} and terms["cat"] == {3: 9} and terms["dog"] == {3: 10}
    assert terms["dogs"] == {3: 4}
    html = feature_html(_fake_feature(["a", "b", "c"], "Paris <b>bold</b>"))
    section = html.split('<section class="sx-f"')[1]
    assert section.index("Paris &lt;b&gt;bold&lt;&#47;b&gt;".replace("&#47;", "/")) < section.index(
        "Density"
    )


def test_site_shows_current_explanations(tmp_path, site_db):
    """On the feature page's data (its top), in listings and in the search shards; one made
    for other weights of the SAE is left out."""
    from saedex.store.edits import EditStore, NewExplanation, edits_path

    db = copy_index(site_db, tmp_path / site_db.name)
    with IndexReader(db) as reader:
        fingerprint = reader.fingerprint(SAE)
    with EditStore(edits_path(db)) as store:
        store.add(SAE, NewExplanation(3, "Mentions of Zanzibar <i>spice</i>", "human"), fingerprint)
        store.add(SAE, NewExplanation(4, "Obsolete wording", "human"), "other-weights")
    out = tmp_path / "project"
    export_site(SiteJob(db, SAE, out, SITE), progress=False)
    fragment = (out / "blocks" / SAE / f"{3 // PER}.html").read_text()
    raw = re.search(r'<script type="application/json" id="sx-data">(.*?)</script>', fragment, re.S)
    block = json.loads(raw.group(1))
    xp = {f["i"]: f["xp"] for f in block["features"]}
    assert xp[3] == [["Mentions of Zanzibar <i>spice</i>", "human", None, None, {}]]
    assert xp[4] == [] and xp[5] == []
    listing = (out / "docs" / SAE / "list" / "index-1.md").read_text()
    assert "Mentions of Zanzibar &lt;i&gt;spice&lt;&#47;i&gt;".replace("&#47;", "/") in listing
    assert "Obsolete" not in listing
    terms = _terms(out / "docs", SAE)
    assert terms["zanzibar"] == [[3, 4]] and "obsolete" not in terms


# -- escaping ----------------------------------------------------------------------------------


def test_escape_makes_markup_inert():
    for text in HOSTILE:
        escaped = esc(text)
        assert not set("<>`*_[]{}|&").intersection(re.sub(r"&#?\w+;", "", escaped))
    assert token_html(" a\n\tb") == "<i>\u2423</i>a<i>\u21b5\u21e5</i>b"
    for text in HOSTILE:
        assert "<" not in script_json({"t": text}) and json.loads(script_json([text])) == [text]


def _fake_feature(tokens: list[str], explanation: str = "") -> FeatureData:
    ex = Example(
        1, "<b>d</b>", "<i>s</i>", list(range(len(tokens))), tokens, [1.0] * len(tokens), 1.0, 2
    )
    summary = FeatureSummary(
        "s", 7, 1, 0.5, 1.0, 1.0, None, None, [LogitEntry(t, i, 1.0) for i, t in enumerate(tokens)]
    )
    xp = (
        [
            Explanation(
                1,
                "s",
                7,
                explanation,
                "human",
                "me",
                None,
                {"detection": 0.8},
                None,
                True,
                datetime(2026, 1, 1),
                None,
            )
        ]
        if explanation
        else []
    )
    return FeatureData(
        summary,
        [],
        Histogram([0.0, 1.0], [1]),
        Histogram([-1.0, 0.0, 1.0], [2, 3]),
        [ex] * 3,
        [],
        [],
        xp,
    )


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script_text += data


def test_hostile_corpus_renders_as_text(hostile_built):
    pages = sorted(hostile_built.rglob("*.html"))
    assert len(pages) > 10
    shown = ""
    for page in pages:
        html = page.read_text()
        collector = TagCollector()
        collector.feed(html)
        tags = {t for t, _ in collector.tags}
        assert not tags & {"img", "em"}, page  # *x* / _x_ never became emphasis
        assert "pwned" not in collector.script_text.replace('\\"pwned\\"', "")
        assert not any(a.get("href", "").startswith("http://evil") for _, a in collector.tags)
        assert "{{" not in html and "{%" not in html
        assert html.count("<!-- saedex:html -->") == 0
        assert "SAEDEX_TITLE_SLOT" not in html.split("<article")[0] and "hide:" not in html
        shown += html
    contexts = " ".join(p.read_text() for p in hostile_built.glob("data/*/ctx-*.js"))
    assert "<script>id0</script>" in contexts and HOSTILE_SOURCE in contexts
    assert "&lt;" in shown and "&#123;&#123;" in shown and "&#96;" in shown


def test_notebook_html_escapes_the_hostile_feature():
    html = feature_html(_fake_feature(["<bos>", *HOSTILE], "<script>alert(1)</script>"))
    collector = TagCollector()
    collector.feed(html)
    assert not {t for t, _ in collector.tags} & {"img", "em", "a"}
    assert "alert(1)</script>" not in html and "<script>alert" not in html


# -- re-export, CLI ----------------------------------------------------------------------------


def _mtimes(project: Path) -> dict[str, int]:
    return {
        str(p): p.stat().st_mtime_ns
        for folder in ("docs", "blocks")
        for p in (project / folder).rglob("*")
        if p.is_file()
    }


def test_unchanged_reexport_touches_nothing(tmp_path, site_db):
    out = tmp_path / "project"
    first = export_site(SiteJob(site_db, SAE, out, SITE), progress=False)
    assert first.written > first.pages
    before = _mtimes(out)
    again = export_site(SiteJob(site_db, SAE, out, SITE), progress=False)
    assert again.written == 0 and again.removed == 0
    assert _mtimes(out) == before
    (out / "blocks" / SAE / "9999.html").write_text("stale")
    assert export_site(SiteJob(site_db, SAE, out, SITE), progress=False).removed == 1


def test_parallel_export_matches_inline(tmp_path, site_db, built):
    out = tmp_path / "parallel"
    job = SiteJob(site_db, (), out, replace(SITE, workers=2), chunk_size=16)
    export_site(job, progress=False)
    for folder in ("docs", "blocks"):
        for page in (built / folder).rglob("*"):
            if page.is_file():
                assert (out / page.relative_to(built)).read_bytes() == page.read_bytes(), page


def test_cli_export_site(tmp_path, site_db):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["export-site", "--db", str(site_db), "--out", str(out), "--quiet"]
    result = runner.invoke(app, [*args, "--sae", SAE, "--sae", WIDE])
    assert result.exit_code == 0, result.output
    assert (out / "mkdocs.yml").is_file() and (out / "blocks" / WIDE_KEY / "0.html").is_file()
    one = runner.invoke(app, [*args[:-2], str(tmp_path / "one"), "--quiet", "--sae", SAE])
    assert one.exit_code == 0 and not (tmp_path / "one" / "blocks" / WIDE_KEY).exists()
    bad = runner.invoke(app, ["export-site", "--db", str(site_db), "--sae", "nope", "--out", "x"])
    assert bad.exit_code == 2 and "no SAE 'nope'" in bad.output


# -- in a real browser (headless Chromium) -----------------------------------------------------

_UNMARK = str.maketrans({"\u2423": " ", "\u21b5": "\n", "\u21e5": "\t", "\u240d": "\r"})


def _browser_paths() -> tuple[str, str] | None:
    import importlib.util

    has_selenium = importlib.util.find_spec("selenium") is not None
    return (CHROMIUM, CHROMEDRIVER) if CHROMIUM and CHROMEDRIVER and has_selenium else None


needs_browser = pytest.mark.skipif(
    _browser_paths() is None,
    reason="browser tests need headless Chromium: apt-get install chromium chromium-driver; "
    "pip install selenium",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"), "--window-size=1400,1600")
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def _wait(driver, css: str, timeout: float = 15.0):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, css))
    )


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    import os

    folder = Path(os.environ.get("SAEDEX_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    driver.save_screenshot(str(path))
    return path


def _shows_dashboard(browser, index: int) -> None:
    from selenium.webdriver.common.by import By

    section = _wait(browser, f"#f{index}.sx-drawn")
    marks = section.find_elements(By.CSS_SELECTOR, "details.sx-ex mark")
    assert marks and marks[0].value_of_css_property("background-color") != "rgba(0, 0, 0, 0)"
    svgs = section.find_elements(By.CSS_SELECTOR, "svg.sx-hist")
    assert len(svgs) == 2 and all(s.find_elements(By.TAG_NAME, "rect") for s in svgs)
    others = browser.find_elements(By.CSS_SELECTOR, ".sx-f")
    assert [s.get_attribute("id") for s in others if s.is_displayed()] == [f"f{index}"]


@needs_browser
def test_browser_feature_page(browser, built, site_db, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    index = _busiest_feature(site_db, SAE)
    with IndexReader(site_db) as reader:
        top = reader.top_examples(SAE, [index])[index][0]
    page = built / "site" / SAE / "features" / f"{index // PER}.html"
    browser.get(page.as_uri() + f"#f{index}")
    _shows_dashboard(browser, index)
    section = browser.find_element(By.ID, f"f{index}")
    example = section.find_element(By.CSS_SELECTOR, "details.sx-ex")
    context = example.find_element(By.CSS_SELECTOR, ".sx-c")
    hidden = example.find_elements(By.CSS_SELECTOR, ".o")
    assert not any(o.is_displayed() for o in hidden)
    window_text = context.text
    example.find_element(By.TAG_NAME, "summary").click()
    assert all(o.is_displayed() for o in hidden)
    full = context.text.translate(_UNMARK)
    assert full == "".join(top.tokens[1:]) and len(full) >= len(window_text)
    mark = context.find_element(By.CSS_SELECTOR, "mark.mx")
    ActionChains(browser).move_to_element(mark).perform()
    tip = browser.execute_script("return getComputedStyle(arguments[0], '::after').content", mark)
    assert tip == json.dumps(mark.get_attribute("data-v"))
    print("screenshot:", _screenshot(browser, tmp_path, "feature.png"))
    # the next feature: same page or the next block, drawn on arrival
    section.find_element(By.PARTIAL_LINK_TEXT, f"#{index + 1}").click()
    _shows_dashboard(browser, index + 1)


@needs_browser
def test_browser_links_between_saes(browser, built):
    """The place for features of other SAEs (matches) links across SAE folders."""

    browser.get((built / "site" / SAE / "features" / "0.html").as_uri() + "#f1")
    _shows_dashboard(browser, 1)
    browser.execute_script(
        "const s = JSON.parse(document.getElementById('sx-data').textContent);"
        "const f = s.features[1]; f.mt = [[arguments[0], 9, 'child', 0.5]];"
        "const sec = document.getElementById('f1'); sec.classList.remove('sx-drawn');"
        "return saedex.render(sec, f, s);",
        WIDE_KEY,
    )
    link = _wait(browser, "#f1 .sx-matches a")
    assert link.get_attribute("href").endswith(f"/{WIDE_KEY}/features/{9 // PER}.html#f9")
    link.click()
    _shows_dashboard(browser, 9)
    assert f"/{WIDE_KEY}/features/" in browser.current_url


@needs_browser
def test_browser_without_scripts_shows_stats_and_text(browser, built, site_db, tmp_path):
    from selenium.webdriver.common.by import By

    index = _busiest_feature(site_db, SAE)
    with IndexReader(site_db) as reader:
        data = reader.feature(SAE, index)
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        page = built / "site" / SAE / "features" / f"{index // PER}.html"
        browser.get(page.as_uri() + f"#f{index}")
        section = browser.find_element(By.ID, f"f{index}")
        assert section.is_displayed() and "sx-drawn" not in section.get_attribute("class")
        text = section.text
        assert f"{data.summary.n_active:,} of" in text
        ex = data.top_examples[0]
        assert ex.tokens[ex.max_token_index].strip() in text
        print("screenshot:", _screenshot(browser, tmp_path, "no-script.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})


def _search(browser, query: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = _wait(browser, "form.sx-search input")
    box.clear()
    box.send_keys(query)
    results = browser.find_element(By.CSS_SELECTOR, ".sx-results")
    WebDriverWait(browser, 15).until(lambda _: results.get_attribute("data-q") == query)
    return results.find_elements(By.CSS_SELECTOR, "a")


@needs_browser
def test_browser_search_by_index_and_token(browser, built, site_db, tmp_path):
    index = _busiest_feature(site_db, SAE)
    with IndexReader(site_db) as reader:
        ex = reader.top_examples(SAE, [index])[index][0]
    token = ex.tokens[ex.max_token_index].strip() or None
    browser.get((built / "site" / "index.html").as_uri())  # searches both SAEs
    hrefs = [a.get_attribute("href") for a in _search(browser, "17")]
    assert any(h.endswith(f"/{SAE}/features/{17 // PER}.html#f17") for h in hrefs)
    assert any(f"/{WIDE_KEY}/features/" in h for h in hrefs)
    print("screenshot:", _screenshot(browser, tmp_path, "home.png"))
    if token is None:
        pytest.skip("the busiest feature peaks on whitespace")
    links = _search(browser, token.upper())
    hrefs = [a.get_attribute("href") for a in links]
    assert any(h.endswith(f"/{SAE}/features/{index // PER}.html#f{index}") for h in hrefs)
    print("screenshot:", _screenshot(browser, tmp_path, "search.png"))
    next(a for a in links if a.get_attribute("href").endswith(f"#f{index}")).click()
    _shows_dashboard(browser, index)


@needs_browser
def test_browser_under_a_sub_path(browser, built, tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from selenium.webdriver.common.by import By

    root = tmp_path / "www"
    (root / "some" / "path").mkdir(parents=True)
    (root / "some" / "path" / "saedex").symlink_to(built / "site")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}/some/path/saedex/"
        browser.get(base + f"{WIDE_KEY}/features/0.html#f3")
        _shows_dashboard(browser, 3)
        header = browser.find_element(By.CSS_SELECTOR, ".md-header")
        assert header.value_of_css_property("position") in ("sticky", "fixed")  # theme CSS
        browser.find_element(By.PARTIAL_LINK_TEXT, "All features").click()
        _wait(browser, ".sx-list table")
        assert browser.current_url == base + f"{WIDE_KEY}/list/index-1.html#f3"
        links = _search(browser, "3")
        assert links[0].get_attribute("href") == base + f"{WIDE_KEY}/features/0.html#f3"
        server.shutdown()


@needs_browser
def test_browser_hostile_page_stays_text(browser, hostile_built, hostile_db):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    index = _busiest_feature(hostile_db, HOSTILE_SAE)
    browser.get(
        (hostile_built / HOSTILE_SAE / "features" / f"{index // PER}.html").as_uri() + f"#f{index}"
    )
    _wait(browser, f"#f{index}.sx-drawn")
    browser.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    assert not browser.find_elements(By.CSS_SELECTOR, "article img, article em")
    text = browser.find_element(By.TAG_NAME, "article").text
    assert "<script>id" in text and HOSTILE_SOURCE in text


@needs_browser
def test_browser_notebook_html(browser, tmp_path):
    """The notebook view: the same renderer, data inline, hostile strings as text."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    page = tmp_path / "cell.html"
    cell = feature_html(_fake_feature(["<bos>", *HOSTILE], "<img src=x onerror=alert(2)>"))
    page.write_text(f"<!doctype html><meta charset=utf-8><body>{cell}</body>")
    browser.get(page.as_uri())
    section = _wait(browser, ".sx-f.sx-drawn")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    assert len(section.find_elements(By.CSS_SELECTOR, "svg.sx-hist")) == 2
    assert section.find_elements(By.CSS_SELECTOR, "mark.mx")
    assert not section.find_elements(By.CSS_SELECTOR, "img")
    assert "<img src=x onerror=alert(2)>" in section.text
    print("screenshot:", _screenshot(browser, tmp_path, "notebook.png"))


def test_export_does_not_import_torch():
    """Publishing a site needs no deep-learning stack (the API and site are torch-free)."""
    import subprocess
    import sys

    code = (
        "import sys; import saedex.cli, saedex.site.export, saedex.site.build; "
        "assert 'torch' not in sys.modules and 'saedex.indexer' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
