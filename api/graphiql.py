"""GraphiQL, served offline: the page and its assets (React 18, GraphiQL 3) come from the
package (api/static/vendor, licences beside them), never from a CDN, so `/graphql` in a
browser works on a machine with no network.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATIC_PATH = "/-/static"  # Datasette's prefix for the server's own files

ASSETS = {
    "react": "vendor/react-18.2.0/react.production.min.js",
    "react_dom": "vendor/react-dom-18.2.0/react-dom.production.min.js",
    "graphiql_js": "vendor/graphiql-3.8.3/graphiql.min.js",
    "graphiql_css": "vendor/graphiql-3.8.3/graphiql.min.css",
}

EXAMPLE = """\
# saedex: the schema is in the Docs pane (book icon); run a query with Ctrl-Enter.
{
  saes { id modelName hookName dSae nTokens }
  feature(sae: $sae, index: 0) {
    density maxActivation
    topLogits(first: 5) { token value }
    topExamples(first: 3) { tokens activations maxTokenIndex }
  }
}
"""


def static_mount() -> Mount:
    """The package's static files (the vendored assets) at /-/static."""
    return Mount(STATIC_PATH, app=StaticFiles(directory=STATIC_DIR), name="static")


def example_query(sae_ids: list[str]) -> str:
    """The editor's first query: one that runs as is on this index."""
    return Template(EXAMPLE).substitute(sae=json.dumps(sae_ids[0] if sae_ids else "SAE_ID"))


def script_value(value: str) -> str:
    """A JS string literal that is safe inside <script> (no `</script>` can end it early)."""
    return json.dumps(value).replace("</", "<\\/")


def page(request: Request, default_query: str) -> HTMLResponse:
    """The GraphiQL page; it POSTs queries to the URL it was served from."""
    static = request.scope.get("root_path", "") + STATIC_PATH
    html = Template((HERE / "templates" / "graphiql.html").read_text()).substitute(
        static=static,
        endpoint=script_value(request.url.path),
        default_query=script_value(default_query),
        **ASSETS,
    )
    return HTMLResponse(html)
