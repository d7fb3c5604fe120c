"""Request context for the whole app: a request id, one log line and a latency sample each."""

from __future__ import annotations

import time

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sangkien.api.context import ACTOR_SCOPE_KEY
from sangkien.api.metrics import Metrics
from sangkien.api.problems import REQUEST_ID_HEADER, request_id_of
from sangkien.logs import hot_logger

__all__ = ["RequestContextMiddleware"]

_log = hot_logger("sangkien.api")  # one line per request

_UNMATCHED = "<unmatched>"


class RequestContextMiddleware:
    """Give every request an id (the caller's ``X-Request-ID`` or a new one) and log it.

    The id is returned in the ``X-Request-ID`` response header and bound with
    ``structlog.contextvars`` so that every log line written while serving the request (the
    engine's included) carries it. One ``http.request`` line per request records the method,
    route template, status, duration and actor; the latency also goes to the histogram.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope, Headers(scope=scope))
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER.lower() not in headers:
                    headers[REQUEST_ID_HEADER] = rid
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                route = getattr(scope.get("route"), "path", None) or _UNMATCHED
                if self.metrics is not None:
                    self.metrics.http_latency.labels(
                        method=scope["method"], route=route, status=str(status)
                    ).observe(elapsed)
                _log.get().info(
                    "http.request",
                    method=scope["method"],
                    path=scope["path"],
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                    actor=scope.get(ACTOR_SCOPE_KEY),
                )
