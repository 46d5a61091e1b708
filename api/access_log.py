"""Structured access logs: one JSON line per HTTP request on the `saedex.api.access` logger."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ACCESS_LOGGER = "saedex.api.access"


class AccessLog:
    """Pure ASGI middleware (no per-request task or body buffering, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, logger: logging.Logger | None = None):
        self.app = app
        self.log = logger or logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.log.info(line(scope, status, (time.perf_counter() - started) * 1000))


def line(scope: Scope, status: int, duration_ms: float) -> str:
    client = scope.get("client")
    return json.dumps(
        {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round(duration_ms, 3),
            "client": client[0] if client else None,
        }
    )


def configure(stream: TextIO | None = None) -> None:
    """Access lines as bare JSON on `stream` (stdout by default), for `saedex serve`."""
    log = logging.getLogger(ACCESS_LOGGER)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
