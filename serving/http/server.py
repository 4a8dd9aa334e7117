"""Limits of the HTTP server and bounded metric labels, which BentoML gives no option for.

BentoML builds the uvicorn server and the outer middleware stack itself, in the worker,
from the service; none of the classes below can be configured from the service.
``install()`` (called once where the service is defined, before the worker builds its
server) swaps in small subclasses:

- **Request head** (``HardenedH11Protocol``): the request line plus headers may take at
  most ``MAX_HEAD_BYTES`` (an answer 400 and the connection closed beyond that) and must
  arrive within ``HEAD_TIMEOUT_S`` of the connection opening or of the previous answer,
  else the connection is closed. uvicorn has no such timeout: an unfinished head held a
  connection open for ever. Bodies are limited by ``REFRACTURE_MAX_BODY_BYTES``
  (``serving.http.guard``) and requests as a whole by ``REFRACTURE_TIMEOUT_S``.
- **Metrics** (``RouteLabelledMetrics``): BentoML labels its request counters and
  histograms with the raw path, so every path a client invents became new series on
  ``/metrics``. Labels are now the service's routes, and ``"other"`` for anything else.
- **Request timeout** (``CancellingTimeoutMiddleware``): BentoML's, without its leak of
  one live timer per request for the length of the timeout.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import h11
from bentoml._internal.server.http import instruments, traffic
from uvicorn.protocols.http import auto as uvicorn_auto
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Largest request head (request line + headers), bytes.
MAX_HEAD_BYTES = int(os.environ.get("REFRACTURE_MAX_HEAD_BYTES", "16384") or 16384)
#: Longest wait for a complete request head, seconds.
HEAD_TIMEOUT_S = float(os.environ.get("REFRACTURE_HEAD_TIMEOUT_S", "10") or 10)

#: Metric labels: the service's routes; any other path is counted as "other".
ROUTE_LABELS = frozenset({"/", "/predict", "/explain", "/model", "/healthz", "/livez", "/readyz", "/metrics",
                          "/docs", "/docs.json", "/schema.json", "/fhir/metadata", "/fhir/$refracture-risk",
                          "/cds-services", "/cds-services/refracture-risk"})
PREFIX_LABELS = ("/ui", "/docs-static", "/static_content", "/fhir", "/cds-services")
_REAL_SCOPE = "refracture.real_scope"


def route_label(path: str) -> str:
    """The metric label of a request path: a route, a mounted app's prefix, or "other"."""
    if path in ROUTE_LABELS:
        return path
    for prefix in PREFIX_LABELS:
        if path == prefix or path.startswith(prefix + "/"):
            return prefix
    return "other"


class HardenedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a size limit and a read timeout on the request head."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._head_timer = None
        self._head_bytes = 0  # bytes of the request head received so far
        self._head_tail = b""  # last bytes seen, for a blank line split across reads

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # Only a connection still waiting for its request head is closed; one whose
        # request is being read or answered is bounded by the request timeout.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        # h11 limits only a head that arrives in pieces; one that arrives whole, however
        # large, is parsed. So the head's size is counted here, up to its blank line.
        if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
            seen = self._head_tail + data
            end = seen.find(b"\r\n\r\n")
            size = self._head_bytes + (len(data) if end < 0 else end + 4 - len(self._head_tail))
            if size > MAX_HEAD_BYTES:
                self._disarm_head_timer()
                self.send_400_response(f"request head larger than {MAX_HEAD_BYTES} bytes")
                return
            self._head_bytes, self._head_tail = (size, seen[-3:]) if end < 0 else (0, b"")
        super().data_received(data)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head, on a kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)


class _RealScope:
    """Hands the app the request's real scope (see ``RouteLabelledMetrics``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.app(scope.get(_REAL_SCOPE, scope), receive, send)


class RouteLabelledMetrics(instruments.RunnerTrafficMetricsMiddleware):
    """BentoML's request metrics, labelled by ``route_label`` instead of the raw path.

    BentoML's middleware reads the label from ``scope["path"]``; it is given a copy of
    the scope with the label as path, and the app behind it the real scope."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(_RealScope(app), **kwargs)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await super().__call__(scope, receive, send)
            return
        labelled = {**scope, "path": route_label(scope.get("path", "")), _REAL_SCOPE: scope}
        await super().__call__(labelled, receive, send)


class CancellingTimeoutMiddleware(traffic.TimeoutMiddleware):
    """BentoML's request timeout (504 when no answer starts within ``timeout`` s), with its
    timer cancelled once the request is done.

    BentoML's version schedules ``loop.call_later(timeout, ...)`` per request and never
    cancels it. Each timer keeps its request's future and context (the OpenTelemetry
    span, ~20 objects) alive for the whole timeout, 120 s: at 500 requests/s some 60,000
    requests' objects, which every full garbage collection walks. That was the latency
    that grew with the requests served (bench/README.md, "Soak")."""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: dict) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            try:
                await waiter
            except asyncio.TimeoutError:
                if fut.cancel():
                    await JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                       status_code=504)(scope, receive, send)
            else:
                await fut
        finally:
            timer.cancel()


def install() -> None:
    """Use the classes above in this process's server (idempotent; no effect on import)."""
    uvicorn_auto.AutoHTTPProtocol = HardenedH11Protocol
    instruments.RunnerTrafficMetricsMiddleware = RouteLabelledMetrics
    traffic.TimeoutMiddleware = CancellingTimeoutMiddleware
