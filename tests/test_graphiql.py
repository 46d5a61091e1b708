"""GraphiQL works offline: its page references only the package's own assets, and in headless
Chromium with every host but 127.0.0.1 unreachable the editor renders and runs a query."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from starlette.testclient import TestClient

from saedex.api.app import create_app
from saedex.api.graphiql import ASSETS, STATIC_DIR
from saedex.config import ServeConfig
from tests.browser import CHROMEDRIVER, CHROMIUM, OFFLINE, chromium
from tests.conftest import API_SAE as SAE


@pytest.fixture(scope="module")
def app(reader):  # noqa: F811
    return create_app(reader, ServeConfig(inference=False))


def test_page_loads_only_local_assets(app):
    with TestClient(app) as c:
        html = c.get("/graphql", headers={"accept": "text/html"}).text
        urls = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sorted(urls) == sorted(f"/-/static/{path}" for path in ASSETS.values())
        assert "http://" not in html and "https://" not in html
        for url in urls:
            response = c.get(url)
            assert response.status_code == 200 and len(response.content) > 1000
        assert f'feature(sae: \\"{SAE}\\", index: 0)' in html  # the example runs on this index


def test_vendored_packages_keep_their_licences():
    for path in ASSETS.values():
        licence = (STATIC_DIR / path).parent / "LICENSE"
        assert "MIT License" in licence.read_text()


@pytest.fixture(scope="module")
def server(app):
    """A real uvicorn on 127.0.0.1 (a free port), in a thread."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def offline_browser(tmp_path_factory):
    """Headless Chromium that can reach 127.0.0.1 only."""
    driver = chromium(
        tmp_path_factory.mktemp("chromium-profile"), *OFFLINE, "--window-size=1400,760"
    )
    yield driver
    driver.quit()


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromedriver")
def test_graphiql_runs_a_query_in_chromium_offline(server, offline_browser, tmp_path):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = offline_browser
    wait = WebDriverWait(driver, 30)
    with pytest.raises(WebDriverException, match="ERR_"):
        driver.get("https://unpkg.com/react@18.2.0/")  # the CDN strawberry's page uses

    driver.get(f"{server}/graphql")
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".graphiql-query-editor")))
    example = driver.find_element(By.CSS_SELECTOR, ".graphiql-query-editor").text
    assert f'feature(sae: "{SAE}", index: 0)' in example  # the page's example for this index
    # the schema arrived (GraphiQL's introspection query passes the server's limits)
    driver.find_element(By.CSS_SELECTOR, '[aria-label="Show Documentation Explorer"]').click()
    docs = ".graphiql-doc-explorer"
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, docs), "Query"))
    editor = driver.find_element(By.CSS_SELECTOR, ".graphiql-query-editor textarea")
    editor.send_keys(Keys.CONTROL, "a")
    editor.send_keys(Keys.DELETE)
    # typed as a person would; the editor closes each bracket it opens and skips over the
    # closing one typed after it
    query = f'{{ sae(id: "{SAE}") {{ id dSae }} feature(sae: "{SAE}", index: 3) '
    query += "{ topLogits(first: 2) { token } } }"
    editor.send_keys(query)
    typed = driver.execute_script(
        "return document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.getValue()"
    )
    assert typed == query
    driver.find_element(By.CSS_SELECTOR, ".graphiql-execute-button").click()
    response = ".graphiql-response .CodeMirror-code"
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, response), '"dSae": 64'))
    text = driver.find_element(By.CSS_SELECTOR, response).text
    assert '"topLogits"' in text and '"errors"' not in text

    folder = Path(os.environ.get("SAEDEX_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / "graphiql.png"))
    loaded = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded and all(url.startswith(server) for url in loaded), loaded
