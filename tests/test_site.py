"""The static site exporter on real indexes of the tiny fixtures: data, escaping, build, re-export."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saedex.cli import app
from saedex.config import IndexConfig, SiteConfig
from saedex.data import Example, FeatureData, FeatureSummary, Histogram, LogitEntry
from saedex.indexer.indexing import IndexJob, run_index
from saedex.site.export import SiteJob, export_site
from saedex.site.pages import PageContext, feature_head
from saedex.site.render import esc, token_html
from saedex.store import IndexReader

SAE = "sae"
HOSTILE_SAE = "hostile"
HOSTILE = [
    '<script>alert("pwned")</script>',
    "<img src=x onerror=alert(1)>",
    "{{ config.site_name }} {% raw %}",
    "| a | b |\n|---|---|",
    "`code` *bold* _em_ **strong**",
    "[x](http://evil.example) ![i](http://evil.example/i.png)",
    "&amp; &lt;b&gt; &#60;i&#62;",
    "<!-- saedex:html --> </details></summary>",
    "text\n---\n\n    indented code\n\n1. item\n> quote",
]
HOSTILE_SOURCE = "<b>src</b>|*x*"
SITE = SiteConfig(workers=1)


def _index(db: Path, sae_id: str, model, sae, corpus) -> Path:
    cfg = IndexConfig(context_size=48, batch_size=8)
    run_index(IndexJob(str(model), str(sae), str(corpus), db, sae_id, config=cfg), False)
    return db


@pytest.fixture(scope="session")
def site_db(tmp_path_factory, tiny_model, tiny_sae, tiny_corpus) -> Path:
    db = tmp_path_factory.mktemp("site") / "index.duckdb"
    return _index(db, SAE, tiny_model, tiny_sae, tiny_corpus)


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
    """The tiny index exported and built; returns the project folder."""
    out = tmp_path_factory.mktemp("built") / "project"
    result = export_site(SiteJob(site_db, SAE, out, SITE, build=True), progress=False)
    assert result.site_dir == out / "site"
    return out


@pytest.fixture(scope="session")
def hostile_built(tmp_path_factory, hostile_db) -> Path:
    out = tmp_path_factory.mktemp("hostile-built") / "project"
    export_site(SiteJob(hostile_db, HOSTILE_SAE, out, SITE, build=True), progress=False)
    return out / "site"


# -- reading a page back -----------------------------------------------------------------------

_UNMARK = str.maketrans({"\u2423": " ", "\u21b5": "\n", "\u21e5": "\t", "\u240d": "\r"})


class ExampleParser(HTMLParser):
    """Each example of a page: its full text (markers undone) and its marked values."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.examples: list[dict] = []
        self._depth = 0  # >0 inside an example's .sx-c span
        self._skip = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and attrs.get("class") == "sx-c":
            self.examples.append({"text": "", "values": []})
            self._depth = 1
        elif self._depth:
            self._depth += tag == "span"
            self._skip = tag == "b" and attrs.get("class") == "x"
            if tag == "mark":
                self.examples[-1]["values"].append(float(attrs["data-v"]))

    def handle_endtag(self, tag):
        if self._depth and tag == "span":
            self._depth -= 1
        self._skip = False

    def handle_data(self, data):
        if self._depth and not self._skip:
            self.examples[-1]["text"] += data.translate(_UNMARK)


def _html_part(md: Path) -> str:
    return md.read_text().partition("<!-- saedex:html -->")[2]


def _busiest_feature(db: Path, sae_id: str) -> int:
    with IndexReader(db) as reader:
        return reader.list_features(sae_id, "density", descending=True, limit=1).items[0].index


# -- data --------------------------------------------------------------------------------------


def test_feature_page_matches_index(built, site_db):
    index = _busiest_feature(site_db, SAE)
    with IndexReader(site_db) as reader:
        data = reader.feature(SAE, index)
    html = _html_part(built / "docs" / "features" / f"{index}.md")
    parser = ExampleParser()
    parser.feed(html)
    n_intervals = sum(len(i.examples) for i in data.interval_samples)
    assert len(parser.examples) == len(data.top_examples) + n_intervals
    for shown, ex in zip(parser.examples, data.top_examples, strict=False):
        assert shown["text"] == "".join(ex.tokens[1:])  # BOS left out
        active = [v for v in ex.activations[1:] if v > 0]
        assert shown["values"] == [float(f"{v:.3g}") for v in active]
    s = data.summary
    assert f"{100 * s.density:.3g}%" in html and f"{s.n_active:,} of" in html
    assert f"{s.max_activation:.3g}" in html
    for entry in s.top_logits + data.bottom_logits:
        assert f"<code>{token_html(entry.token)}</code></td><td>{entry.value:+.3f}" in html
    links = re.findall(r'<a href="(\d+)\.html">#\d+</a></td><td>', html)
    assert links == [str(n.index) for n in data.neighbours]
    headings = re.findall(r"INTERVAL [\d.e+-]+ - [\d.e+-]+ CONTAINS [\d.e+-]+%", html)
    assert len(headings) == len(data.interval_samples)
    bars = sum(1 for c in data.histogram.counts if c > 0)
    assert html.split("Logit lens")[0].count("<rect ") == bars


def test_listing_and_home_cover_every_feature(built, site_db):
    with IndexReader(site_db) as reader:
        info = reader.sae(SAE)
    listing = (built / "docs" / "list" / "index-1.md").read_text()
    assert re.findall(r'id="f(\d+)" href="../features/\1.html"', listing) == [
        str(i) for i in range(info.d_sae)
    ]
    home = (built / "docs" / "index.md").read_text()
    assert f"{info.n_tokens:,}" in home and "Feature density (log scale)" in home
    assert 'href="list/density-1.html"' in home


def test_search_text_is_compact(built, site_db):
    index = _busiest_feature(site_db, SAE)
    md = (built / "docs" / "features" / f"{index}.md").read_text()
    head = md.partition("<!-- saedex:html -->")[0]
    assert f"# Feature {index}" in head and "<mark" not in head and len(head) < 2000
    search = json.loads((built / "site" / "search" / "search_index.json").read_text())
    entry = next(d for d in search["docs"] if d["location"] == f"features/{index}.html")
    assert "Fires most on" in entry["text"] and "INTERVAL" not in entry["text"]
    assert not any(d["location"].startswith("list/") for d in search["docs"])


# -- escaping ----------------------------------------------------------------------------------


def test_escape_makes_markup_inert():
    for text in HOSTILE:
        escaped = esc(text)
        assert not set("<>`*_[]{}|&").intersection(re.sub(r"&#?\w+;", "", escaped))
    assert token_html(" a\n\tb") == "<i>\u2423</i>a<i>\u21b5\u21e5</i>b"


def _fake_feature(tokens: list[str]) -> FeatureData:
    ex = Example(
        1, "<b>d</b>", "<i>s</i>", list(range(len(tokens))), tokens, [1.0] * len(tokens), 1.0, 2
    )
    summary = FeatureSummary(
        "s", 7, 1, 0.5, 1.0, 1.0, None, None, [LogitEntry(t, 0, 1.0) for t in tokens]
    )
    return FeatureData(summary, [], Histogram([], []), Histogram([], []), [ex] * 3, [], [])


def test_searchable_head_stays_text_in_markdown():
    """The head is the only part Markdown parses: hostile tokens must not become markup."""
    import markdown

    tokens = ["<bos>", "<script>", "\n\n", "---", "\n\n    ", "&amp;", "*a*", "[x](y)", "`{{c}}|`"]
    ctx = PageContext([], 1, 10, 10, 10, 20, 10)
    html = markdown.markdown(feature_head(_fake_feature(tokens), ctx))
    collector = TagCollector()
    collector.feed(html)
    assert {t for t, _ in collector.tags} <= {"h1", "div", "p", "strong", "code"}
    assert "&lt;script&gt;" in html and "&amp;amp;" in html


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
        assert "pwned" not in collector.script_text
        assert not any(a.get("href", "").startswith("http://evil") for _, a in collector.tags)
        assert "alert(" not in collector.script_text
        assert "{{" not in html and "{%" not in html
        assert html.count("<!-- saedex:html -->") == 0
        shown += html
    assert "&lt;script&gt;id0&lt;/script&gt;" in shown  # document ids, escaped
    assert esc(HOSTILE_SOURCE) in shown
    assert "&lt;" in shown and "&#123;&#123;" in shown and "&#96;" in shown


def test_hostile_search_index_is_escaped(hostile_built):
    text = (hostile_built / "search" / "search_index.json").read_text()
    data = json.loads(text)
    snippets = " ".join(d["text"] for d in data["docs"])
    assert "<script" not in snippets and "<img" not in snippets and "&lt;" in snippets


# -- build, offline, re-export -----------------------------------------------------------------


def test_build_is_offline_and_relative(built):
    site = built / "site"
    assert (site / "index.html").is_file() and (site / "search" / "search_index.js").is_file()
    for page in [site / "index.html", site / "features" / "0.html", site / "list" / "index-1.html"]:
        collector = TagCollector()
        collector.feed(page.read_text())
        for tag, attrs in collector.tags:
            ref = attrs.get("src") or (attrs.get("href") if tag == "link" else None) or ""
            assert not ref.startswith(("http:", "https:", "//", "/")), (page, ref)
    feature = (site / "features" / "0.html").read_text()
    assert 'class="sx-ex"' in feature and "<svg" in feature
    assert "fonts.googleapis" not in feature and "unpkg" not in feature


def _mtimes(project: Path) -> dict[str, int]:
    docs = project / "docs"
    return {str(p): p.stat().st_mtime_ns for p in docs.rglob("*") if p.is_file()}


def test_unchanged_reexport_touches_nothing(tmp_path, site_db):
    out = tmp_path / "project"
    first = export_site(SiteJob(site_db, SAE, out, SITE), progress=False)
    assert first.written == first.pages + 4  # and mkdocs.yml, the hook, two assets
    before = _mtimes(out)
    again = export_site(SiteJob(site_db, SAE, out, SITE), progress=False)
    assert again.written == 0 and again.removed == 0
    assert _mtimes(out) == before
    (out / "docs" / "features" / "9999.md").write_text("stale")
    assert export_site(SiteJob(site_db, SAE, out, SITE), progress=False).removed == 1


def test_parallel_export_matches_inline(tmp_path, site_db, built):
    out = tmp_path / "parallel"
    job = SiteJob(site_db, SAE, out, replace(SITE, workers=2), chunk_size=16)
    export_site(job, progress=False)
    for page in (built / "docs").rglob("*.md"):
        assert (out / page.relative_to(built)).read_text() == page.read_text()


def test_cli_export_site(tmp_path, site_db):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        app, ["export-site", "--db", str(site_db), "--sae", SAE, "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "mkdocs.yml").is_file() and (out / "docs" / "features" / "0.md").is_file()
    bad = runner.invoke(app, ["export-site", "--db", str(site_db), "--sae", "nope", "--out", "x"])
    assert bad.exit_code == 2 and "no SAE 'nope'" in bad.output


# -- in a real browser (headless Chromium) -----------------------------------------------------


def _browser_paths() -> tuple[str, str] | None:
    import importlib.util
    import shutil

    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    has_selenium = importlib.util.find_spec("selenium") is not None
    return (binary, driver) if binary and driver and has_selenium else None


needs_browser = pytest.mark.skipif(
    _browser_paths() is None,
    reason="browser tests need headless Chromium: apt-get install chromium chromium-driver; "
    "pip install selenium",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1600",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
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


@needs_browser
def test_browser_feature_page(browser, built, site_db, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    index = _busiest_feature(site_db, SAE)
    with IndexReader(site_db) as reader:
        top = reader.top_examples(SAE, [index])[index][0]
    browser.get((built / "site" / "features" / f"{index}.html").as_uri())
    marks = browser.find_elements(By.CSS_SELECTOR, "details.sx-ex mark")
    assert marks and marks[0].value_of_css_property("background-color") != "rgba(0, 0, 0, 0)"
    svgs = browser.find_elements(By.CSS_SELECTOR, "svg.sx-hist")
    assert len(svgs) == 2 and all(s.find_elements(By.TAG_NAME, "rect") for s in svgs)

    example = browser.find_element(By.CSS_SELECTOR, "details.sx-ex")
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


@needs_browser
def test_browser_home_and_offline_search(browser, built, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get((built / "site" / "index.html").as_uri())
    assert browser.find_elements(By.CSS_SELECTOR, "svg.sx-hist rect")
    print("screenshot:", _screenshot(browser, tmp_path, "home.png"))
    browser.find_element(By.CSS_SELECTOR, "label.md-search__icon, .md-search__input").click()
    box = _wait(browser, "input.md-search__input")
    box.send_keys("17")  # a feature index: search runs in the file:// worker stand-in
    result = _wait(browser, ".md-search-result__item a")
    assert "features/17.html" in result.get_attribute("href")


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
        browser.get(base + "features/3.html")
        assert browser.find_elements(By.CSS_SELECTOR, "svg.sx-hist")
        header = browser.find_element(By.CSS_SELECTOR, ".md-header")
        assert header.value_of_css_property("position") in ("sticky", "fixed")  # theme CSS
        browser.find_element(By.PARTIAL_LINK_TEXT, "All features").click()
        _wait(browser, ".sx-list table")
        assert browser.current_url == base + "list/index-1.html#f3"
        server.shutdown()


@needs_browser
def test_browser_hostile_page_stays_text(browser, hostile_built, hostile_db):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    index = _busiest_feature(hostile_db, HOSTILE_SAE)
    browser.get((hostile_built / "features" / f"{index}.html").as_uri())
    browser.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    assert not browser.find_elements(By.CSS_SELECTOR, "article img, article em")
    text = browser.find_element(By.TAG_NAME, "article").text
    assert "<script>id" in text and HOSTILE_SOURCE in text


def test_sharded_build_matches_single(tmp_path, built):
    from saedex.site.build import build_site

    project = tmp_path / "project"
    shutil.copytree(built, project, ignore=shutil.ignore_patterns("site"))
    site = build_site(project, workers=2, progress=False, min_shard_pages=10)
    single = sorted(p.relative_to(built / "site") for p in (built / "site").rglob("*.html"))
    assert sorted(p.relative_to(site) for p in site.rglob("*.html")) == single
    for page in single:
        assert (site / page).read_bytes() == (built / "site" / page).read_bytes(), page
    docs = [
        json.loads((s / "search" / "search_index.json").read_text())["docs"]
        for s in (site, built / "site")
    ]
    assert sorted(map(json.dumps, docs[0])) == sorted(map(json.dumps, docs[1]))
    assert not (project / ".build").exists()
