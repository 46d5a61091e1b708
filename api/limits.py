"""The server's limits, each checked before or around the work it guards (ServeConfig).

- Before execution (strawberry extensions): query depth, aliases, lexical tokens, and the node
  budget (api/cost.py). All are refused with a GraphQL error and no work done.
- During execution: a time limit per operation, at which the operation's DuckDB queries are
  interrupted (saedex/store/deadline.py) and the fields they fed answer `TIMEOUT`.
- Around the request: a body-size cap (ASGI middleware) that counts the bytes actually
  streamed, so a missing or false Content-Length does not get past it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)

from saedex.api.cost import ListSizes, NodeBudget
from saedex.config import ServeConfig
from saedex.store.deadline import Deadline

PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"


def limit_extensions(config: ServeConfig, sizes: ListSizes) -> list[Callable[[], object]]:
    """The schema extensions that enforce `config`'s query limits (factories: one per request).
    They must come before strawberry's ValidationCache, which runs the rules they add."""
    # The rule classes are made once: the ValidationCache's key holds them, so a class made
    # per request would make every request miss the cache.
    rules = [
        *QueryDepthLimiter(max_depth=config.max_query_depth).validation_rules,
        *MaxAliasesLimiter(config.max_aliases).validation_rules,
    ]
    extensions: list[Callable[[], object]] = [
        lambda: MaxTokensLimiter(config.max_tokens),
        lambda: AddValidationRules(rules),
        lambda: NodeBudget(config.max_nodes, sizes),
    ]
    if config.query_time_limit_s > 0:
        extensions.append(lambda: TimeLimit(config.query_time_limit_s))
    return extensions


class TimeLimit(SchemaExtension):
    """Runs each operation under a Deadline that interrupts its DuckDB queries when it passes.
    Work already off the index (live inference, building the response) is not interrupted;
    the node budget bounds that."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_execute(self) -> Iterator[None]:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # execute_sync: no event loop to keep time
            yield
            return
        deadline = Deadline(self.seconds)
        timer = loop.call_later(self.seconds, deadline.expire)
        try:
            with deadline.applied():
                yield
        finally:
            timer.cancel()


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Pure ASGI middleware: 413 with a JSON error once a request body passes `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.declared(scope) > self.max_bytes:
            await self.refuse(send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await self.refuse(send)

    @staticmethod
    def declared(scope: Scope) -> int:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return 0
        return 0

    async def refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": f"the request body is larger than the limit of {self.max_bytes:,} bytes",
                "code": PAYLOAD_TOO_LARGE,
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
