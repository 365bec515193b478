"""Every HTTP request measured once, at the edge of the app: metrics and the access log.

An ASGI middleware times each request from when the app gets it to when it returns, takes the
status from the response it sends (500 when the app raised), counts it in ``ServiceMetrics``
and queues its access-log line. An endpoint adds what only it knows to the request's scope:
``/invocations`` the rows it scored (``ROWS``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .access_log import AccessLog
from .metrics import UNMATCHED, ServiceMetrics

ROWS = "mlops.rows"
"""Scope key: the rows a request scored."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


class Instrumented:
    """ASGI middleware: each request's duration, status and rows into the metrics and the
    access log (None: off). ``paths`` are the endpoints' paths: any other is counted as
    ``(unmatched)``, so a scanner cannot make the metrics grow without bound."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        access_log: AccessLog | None,
        paths: frozenset[str],
    ) -> None:
        self.app, self.metrics, self.access_log, self.paths = app, metrics, access_log, paths

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        response: list = [500, ()]  # status and headers, until the app sends its own

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                response[0], response[1] = message["status"], message.get("headers", ())
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            path, rows = scope["path"], scope.get(ROWS, 0)
            status = response[0]
            self.metrics.observe(path if path in self.paths else UNMATCHED, status, seconds, rows)
            if self.access_log is not None:
                self.access_log.record(
                    scope["method"], path, status, seconds, response[1], rows, scope.get("client")
                )
