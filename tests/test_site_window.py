"""Top examples widened across their document (SiteConfig.document_window, issue 19.3): the
site's windows against the store's own `document_window`, the setting 0, and the view in
Chromium (max token outlined, context boundaries marked)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from saedex.config import SiteConfig
from saedex.site.export import SiteJob, export_site
from saedex.site.payload import r3
from saedex.store import IndexReader
from tests.conftest import API_SAE
from tests.test_site import _UNMARK, _screenshot, _wait, needs_browser

PER = 8
SIDE = 40  # the fixture's contexts hold 47 document tokens: windows cross their boundaries


def _export(db: Path, out: Path, side: int, build: bool = False) -> Path:
    cfg = SiteConfig(workers=1, features_per_page=PER, document_window=side)
    export_site(SiteJob(db, API_SAE, out, cfg, build=build), progress=False)
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory, api_db) -> Path:
    return _export(api_db, tmp_path_factory.mktemp("window") / "project", SIDE, build=True)


def _script_data(path: Path, call: str) -> list:
    """The arguments of a data file's one `saedex.<call>(...)`."""
    m = re.fullmatch(rf"saedex\.{call}\((.*)\);\n", path.read_text("utf-8"), re.S)
    return json.loads(f"[{m.group(1)}]")


def _site_data(docs: Path, blocks: Path) -> tuple[dict, dict, dict]:
    """(contexts by ref, windows by feature, block data by feature) as the script reads them."""
    contexts, windows, features = {}, {}, {}
    for shard in (docs / "data" / API_SAE).glob("ctx-*.js"):
        _, first, rows = _script_data(shard, "ctx")
        contexts.update({first + k: row for k, row in enumerate(rows)})
    for shard in (docs / "data" / API_SAE).glob("win-*.js"):
        windows.update({int(i): w for i, w in _script_data(shard, "win")[2].items()})
    for block in (blocks / API_SAE).glob("*.html"):
        raw = re.search(r'id="sx-data">(.*?)</script>', block.read_text("utf-8"), re.S)
        features.update({f["i"]: f for f in json.loads(raw.group(1))["features"]})
    return contexts, windows, features


def _joined(example: list, window: list, contexts: dict) -> tuple[list, list, int]:
    """(token ids, activations, offset of the outlined max token) the script draws."""
    _, max_pos, _, positions, values = example
    ids, acts, focus = [], [], None
    for ref, first, end, *own in window[3]:
        tokens = contexts[ref][3]
        values_at = (
            dict(zip(*own, strict=True)) if own else dict(zip(positions, values, strict=True))
        )
        for p in range(first, end):
            if not own and p == max_pos:
                focus = window[0] + len(ids)
            ids.append(tokens[p])
            acts.append(values_at.get(p, 0.0))
    return ids, acts, focus


def test_windows_equal_the_stores_document_window(project, api_db):
    contexts, windows, features = _site_data(project / "docs", project / "blocks")
    crossing = 0
    with IndexReader(api_db) as reader:
        for index, f in sorted(features.items())[: 2 * PER]:  # two blocks: ~300 windows
            assert len(windows[index]) == len(f["ex"][:20]), index
            for example, window in zip(f["ex"], windows[index], strict=False):
                ref, max_pos = example[:2]
                cid = contexts[ref][0]
                want = reader.document_window(
                    API_SAE, [index], context_id=cid, position=max_pos, before=SIDE, after=SIDE
                )
                ids, acts, focus = _joined(example, window, contexts)
                assert ids == want.token_ids
                assert acts == [r3(v) for v in want.features[0].activations]
                assert (window[0], focus) == (want.start, want.focus)
                assert window[1:3] == [want.indexed_tokens, want.document_tokens]
                crossing += len(window[3]) > 1
    assert crossing > 10  # windows really span several contexts


def test_zero_turns_document_windows_off(tmp_path, api_db):
    out = _export(api_db, tmp_path / "off", 0)
    assert not list(out.glob("docs/data/*/win-*.js"))
    contexts, _, features = _site_data(out / "docs", out / "blocks")
    with IndexReader(api_db) as reader:
        shown = {r[0] for r in reader._rows("SELECT DISTINCT context_id FROM example_keys")}
    assert {c[0] for c in contexts.values()} == shown  # only the contexts examples show
    block = next((out / "blocks" / API_SAE).glob("*.html")).read_text("utf-8")
    assert '"doc_window":0' in block
    guide = (out / "docs" / API_SAE / "index.md").read_text("utf-8")
    assert "tokens either side in the document" not in guide


@needs_browser
def test_browser_expands_an_example_across_contexts(project, api_db, tmp_path):
    from selenium.webdriver.common.by import By

    from tests.browser import chromium

    contexts, windows, features = _site_data(project / "docs", project / "blocks")
    index, k = next(
        (i, k) for i, ws in sorted(windows.items()) for k, w in enumerate(ws) if len(w[3]) > 2
    )
    ids, acts, focus = _joined(features[index]["ex"][k], windows[index][k], contexts)
    with IndexReader(api_db) as reader:
        vocab = reader.vocab(reader.sae(API_SAE).model_name)
    driver = chromium(tmp_path / "profile", "--window-size=1200,1400")
    try:
        page = project / "site" / API_SAE / "features" / f"{index // PER}.html"
        driver.get(page.as_uri() + f"#f{index}")
        section = _wait(driver, f"#f{index}.sx-drawn")
        example = section.find_elements(By.CSS_SELECTOR, "details.sx-ex")[k]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", example)
        example.find_element(By.TAG_NAME, "summary").click()
        example.find_element(By.CSS_SELECTOR, "button.sx-more").click()
        view = _wait(driver, f"#f{index} details.sx-ex[open] .sx-doc")
        text = view.find_element(By.CSS_SELECTOR, ".sx-c").text.translate(_UNMARK)
        assert text.strip("…") == "".join(vocab[t] for t in ids)
        outlined = view.find_elements(By.CSS_SELECTOR, "mark.mx")
        assert len(outlined) == 1
        max_token = vocab[ids[focus - windows[index][k][0]]]
        assert outlined[0].text.translate(_UNMARK) == max_token
        marks = view.find_elements(By.CSS_SELECTOR, "mark")
        assert len(marks) == sum(v > 0 for v in acts)
        assert len(view.find_elements(By.CSS_SELECTOR, ".sx-cb")) == len(windows[index][k][3]) - 1
        print("screenshot:", _screenshot(driver, tmp_path, "feature-window.png"))
    finally:
        driver.quit()
