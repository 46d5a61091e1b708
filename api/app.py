"""The ASGI app: GraphQL (and GraphiQL) at /graphql, the REST mirror under /api/, the
package's static files (GraphiQL's vendored assets) under /-/static/.

All state is built here and passed down explicitly: the reader, the limits, the inference
engine. Nothing is module-global, so tests can run several apps side by side.
"""

from __future__ import annotations

import base64
import os
import pickle
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from strawberry.asgi import GraphQL
from strawberry.types import ExecutionResult

from saedex.api import graphiql
from saedex.api.access_log import AccessLog
from saedex.api.access_log import configure as configure_access_log
from saedex.api.context import ApiState, Context
from saedex.api.cost import ListSizes
from saedex.api.errors import INTERNAL
from saedex.api.explanations_rest import ExplanationRoutes
from saedex.api.inference import InferenceEngine
from saedex.api.limits import BodySizeLimit
from saedex.api.priority import lower_priority
from saedex.api.rest import RestApi, error
from saedex.api.schema import Schema, build_schema
from saedex.config import ServeConfig
from saedex.store import IndexReader


class GraphQLApp(GraphQL):
    """strawberry's ASGI view with our per-request context."""

    def __init__(self, schema: Schema, state: ApiState):
        super().__init__(schema, graphql_ide="graphiql", allow_queries_via_get=True)
        self.state = state

    async def get_context(self, request: Request, response: object) -> Context:
        return Context.new(self.state, request.headers.get("authorization"))

    async def render_graphql_ide(self, request: Request) -> Response:
        """Our GraphiQL page, whose assets the package serves (strawberry's uses a CDN)."""
        return graphiql.page(request, graphiql.example_query(list(self.state.saes)))

    async def process_result(self, request: Request, result: ExecutionResult) -> dict:
        """As strawberry's, but with no `data` key when the request failed before execution
        (a syntax or validation error), as the GraphQL spec asks."""
        response = await super().process_result(request, result)
        if result.data is None and result.errors and all(e.path is None for e in result.errors):
            response.pop("data", None)
        return response


def create_app(
    reader: IndexReader, config: ServeConfig, inference: InferenceEngine | None = None
) -> Starlette:
    """The app over an open index. With `config.inference` and no engine given, one is made
    that loads each model lazily on its first live request."""
    if config.inference and inference is None:
        inference = InferenceEngine(config.device, config=config, process=config.inference_process)
    state = ApiState.load(reader, config, inference if config.inference else None)
    schema = build_schema(config, ListSizes.of(state.saes.values(), config))
    graphql = GraphQLApp(schema, state)
    rest = RestApi(schema, state)
    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        *rest.routes(),
        *ExplanationRoutes(rest).routes(),
        graphiql.static_mount(),
    ]
    middleware = [Middleware(AccessLog)]
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=["content-type", "authorization"],
            )
        )
    middleware.append(Middleware(BodySizeLimit, max_bytes=config.max_body_bytes))
    handlers = {HTTPException: http_error, Exception: internal_error}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)


async def http_error(request: Request, exc: Exception) -> Response:
    """404/405 and friends as JSON, like every other error the API returns (with their headers:
    a 405 names the allowed methods in `Allow`)."""
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), "HTTP_ERROR", headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    """The catch-all: no traceback for the client (starlette logs it)."""
    return JSONResponse({"error": "Internal server error.", "code": INTERNAL}, status_code=500)


def serve(
    db: Path,
    config: ServeConfig,
    threads: int | None = None,
    ready: Callable[[str], object] | None = None,
) -> None:
    """Open the index read-only and serve it with uvicorn until interrupted; with
    `config.workers` > 1, as that many processes (replicas), each with its own reader. `ready`
    hears where, once the index opened (a file that cannot be opened is one error, no banner)."""
    import uvicorn

    configure_access_log()
    if config.workers > 1:
        spec = (str(db), config, threads)
        os.environ[_REPLICA_ENV] = base64.b64encode(pickle.dumps(spec)).decode()
        with IndexReader(db):  # a bad index fails here, once, with its one-line error
            pass
        if ready is not None:
            ready(_banner(db, config))
        uvicorn.run(
            "saedex.api.app:replica_app",
            factory=True,
            workers=config.workers,
            host=config.host,
            port=config.port,
            access_log=False,
            log_level="info",
        )
        return
    with IndexReader(db) as reader:
        engine = server_engine(config, threads)
        app = create_app(reader, config, engine)
        if ready is not None:
            ready(_banner(db, config))
        try:
            uvicorn.run(app, host=config.host, port=config.port, access_log=False, log_level="info")
        finally:
            engine.close()


def _banner(db: Path, config: ServeConfig) -> str:
    return f"serving {db} on http://{config.host}:{config.port}/graphql (REST: /api/)"


# -- replicas (saedex serve --workers N) --

_REPLICA_ENV = "SAEDEX_REPLICA"


def replica_app() -> Starlette:
    """One replica's app: uvicorn runs this factory in each worker process, which opens the
    store read-only for itself (the spec comes from `serve` through the environment)."""
    db, config, threads = pickle.loads(base64.b64decode(os.environ[_REPLICA_ENV]))
    configure_access_log()
    reader = IndexReader(db)
    return create_app(reader, config, server_engine(config, threads))


def server_engine(config: ServeConfig, threads: int | None) -> InferenceEngine:
    """A server's live-model engine, its worker process started, and then this process's
    threads lowered by `config.index_nice` (api.priority): in that order, so that the model
    keeps the original priority and a live request gets the CPU ahead of index queries."""
    engine = InferenceEngine(
        config.device, threads=threads, config=config, process=config.inference_process
    )
    if config.inference and config.inference_process:
        engine.start()
        lower_priority(config.index_nice)
    return engine
