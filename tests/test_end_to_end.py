"""What `saedex demo` does, on a slice of the default corpus: index, serve, query, publish.

The three outputs must agree: the API's top examples are the index's and the site page's, and
live inference on a top example's text reproduces the activations the index stored for it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

from saedex.config import SiteConfig
from saedex.indexer.indexing import default_sae_id
from saedex.indexer.sae import DEFAULT_SAE_DIR
from saedex.site.pages import sae_keys
from saedex.store import IndexReader
from tests.test_site import feature_examples

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not DEFAULT_SAE_DIR.is_dir(), reason="the shipped SAE is not in this tree"),
]
SAE = default_sae_id(DEFAULT_SAE_DIR)
FEATURE_QUERY = """query($sae: ID!, $index: Int!) { feature(sae: $sae, index: $index) {
  index density topExamples(first: 20) {
    tokens tokenIds activations maxActivation maxTokenIndex documentId source } } }"""
LIVE_QUERY = """query($sae: ID!, $text: String!) { activeFeatures(sae: $sae, text: $text, topK: 100) {
  tokenIds features { index values } } }"""


def saedex(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "saedex.cli", *args, "--quiet"], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    db = tmp / "index.duckdb"
    saedex("index", "--db", str(db), "--model", "default", "--sae", "default",
           "--corpus", "default", "--max-tokens", "6000")  # fmt: skip
    saedex("export-site", "--db", str(db), "--sae", SAE, "--out", str(tmp / "site"), "--build")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "saedex.cli", "serve", "--db", str(db), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    deadline = time.monotonic() + 120
    while True:
        try:
            client.get("/api/saes").raise_for_status()
            break
        except httpx.HTTPError:
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
    yield db, tmp / "site" / "site", client
    client.close()
    server.terminate()
    server.wait(30)


def graphql(client: httpx.Client, query: str, **variables) -> dict:
    response = client.post("/graphql", json={"query": query, "variables": variables})
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture(scope="module")
def busiest(demo) -> int:
    db, _, _ = demo
    with IndexReader(db) as reader:
        page = reader.list_features(SAE, order_by="density", descending=True, limit=1)
    return page.items[0].index


def test_api_top_examples_are_the_index(demo, busiest):
    db, _, client = demo
    shown = graphql(client, FEATURE_QUERY, sae=SAE, index=busiest)["feature"]["topExamples"]
    with IndexReader(db) as reader:
        stored = reader.top_examples(SAE, [busiest])[busiest]
    assert len(shown) == len(stored) == 20
    for api, ex in zip(shown, stored, strict=True):
        assert api["tokenIds"] == ex.token_ids and api["tokens"] == ex.tokens
        assert api["activations"] == pytest.approx(ex.activations, abs=1e-6)
        assert (api["maxActivation"], api["maxTokenIndex"]) == (
            pytest.approx(ex.max_activation),
            ex.max_token_index,
        )


def test_site_page_shows_the_api_examples(demo, busiest):
    _, site, client = demo
    shown = graphql(client, FEATURE_QUERY, sae=SAE, index=busiest)["feature"]["topExamples"]
    key, per = sae_keys([SAE])[SAE], SiteConfig().features_per_page
    on_page = feature_examples(site, key, busiest, per)[: len(shown)]
    assert len(on_page) == len(shown)
    for page, api in zip(on_page, shown, strict=True):
        assert page["text"] == "".join(api["tokens"][1:])  # the page leaves BOS out
        assert page["values"] == [float(f"{v:.3g}") for v in api["activations"][1:] if v > 0]


def test_live_inference_reproduces_the_index(demo, busiest):
    _, _, client = demo
    top = graphql(client, FEATURE_QUERY, sae=SAE, index=busiest)["feature"]["topExamples"][0]
    text = "".join(top["tokens"][1:])
    live = graphql(client, LIVE_QUERY, sae=SAE, text=text)["activeFeatures"]
    body = top["tokenIds"][1:]  # live results list the text's tokens; BOS is added, not shown
    assert live["tokenIds"][: len(body)] == body
    values = {f["index"]: f["values"] for f in live["features"]}
    assert busiest in values
    assert values[busiest][: len(body)] == pytest.approx(top["activations"][1:], rel=1e-3, abs=1e-3)
