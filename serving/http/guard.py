"""ASGI middleware in front of every route: API key, body-size limit, audit line.

- **Auth.** Every path is authenticated except the open ones (``OPEN_PATHS``: health,
  readiness, the API docs, the clinician page's files), so a route added later is
  protected unless someone decides otherwise. How a caller proves who it is belongs to
  the route's ``Authenticator`` (``serving.http.callers``; by default
  ``serving.http.identity.ClientAuthenticator``: named clients' API keys and the identity
  provider's tokens); a refusal is a 401 with ``WWW-Authenticate`` and is audited like any
  other request. The guard puts the ``Caller`` and the request id in ``scope["state"]``
  for what comes after it.
- **Scopes, in one place.** The scope a path needs (``required_scope``: ``/predict``
  predict, ``/explain`` explain, ``/model`` model:read, ``/metrics`` metrics:read) is
  checked here for every route; a caller without it gets 403 ``insufficient_scope``
  (RFC 6750: it is known, a new credential would not help).
- **Rate limit per client** (``serving.auth.limits``): over its limit a caller gets 429
  with ``Retry-After``; other clients are not affected.
- **Readiness.** ``/readyz`` answers as BentoML decides (models loaded) with a JSON body
  that adds the identity state (``ok``, ``degraded``: provider unreachable, cached keys in
  use; ``unavailable``: no key, its tokens refused).
- **Body size.** A body over ``max_body_bytes`` is a 413, decided on ``Content-Length``
  before reading, or while reading a chunked body; the body is then buffered and
  handed on, so the endpoint never sees a partial one.
- **Audit.** One JSON line per request to a protected path (``serving.http.audit``), naming
  the client and, for a signed-in person, a salted hash of their subject. The
  endpoint adds what only it knows (procedure ids, model versions) to
  ``scope["state"]["audit"]``; the ids are hashed here, never logged raw. The line is
  written before the answer leaves; if it cannot be, the answer is a 503 and the
  failure is logged. A client gone before the end of its body is audited as 499.
- **Headers and docs.** Every answer gets ``serving.http.headers.secure_start`` (nosniff, the
  page CSP on HTML, relative redirects); ``/`` and ``/docs`` are the service's own docs
  page (``serving.http.docs_page``), not BentoML's.
- **OpenAPI.** ``GET /docs.json`` is answered here with the service's spec plus what
  BentoML cannot know: the bearer scheme, the 401/413/415/422 answers and their body.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
import uuid
from typing import Any, Callable

from serving.auth.limits import RateLimiter
from serving.config import ServingSettings, get_settings
from serving.http import audit, docs_page
from serving.http.callers import Caller, Refusal, Route, header, required_scope, route_for
from serving.http.headers import secure_start
from serving.http.identity import ClientAuthenticator

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
#: /model (model:read) and /metrics (metrics:read) are not open: /metrics names the clients
#: and their traffic, and both are read by known callers (the page, Prometheus) that can
#: send a credential (docs/security.md). FHIR's CapabilityStatement is public, as FHIR servers' are.
OPEN_PATHS = frozenset({"/", "/healthz", "/livez", "/readyz", "/docs.json", "/schema.json", "/fhir/metadata"})
# /ui: the clinician page (holds no key); the FHIR CodeSystem and OperationDefinition: public definitions
OPEN_PREFIXES = ("/static_content/", "/assets/", "/ui", "/fhir/CodeSystem/", "/fhir/OperationDefinition/")
#: Audit status of a request whose client left before the end of its body (nginx's 499):
#: not a server error, and no answer was sent.
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    """The client closed the connection before sending its whole body."""


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


async def _send_json(send: Callable, status: int, payload: Any, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    await _send_bytes(send, status, body, "application/json", headers)


async def _send_bytes(send: Callable, status: int, body: bytes, media_type: str,
                      headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media_type.encode("latin-1")), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Callable, route: Route, status: int, payload: dict[str, Any],
                      headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A refusal of the guard's own (401, 413) in the route's error format (the service's
    JSON error body unless the route renders its own, e.g. a FHIR OperationOutcome)."""
    if route.render_error is None:
        await _send_json(send, status, payload, headers)
        return
    body, media_type = route.render_error(status, payload["error"], payload.get("errors", []))
    await _send_bytes(send, status, body, media_type, headers)


class GuardMiddleware:
    """See the module docstring. ``settings`` defaults to the process's settings
    (``ServingSettings.from_env``, read when the middleware is built, i.e. at start)."""

    def __init__(self, app, settings: ServingSettings | None = None, spec_provider: Callable[[], dict] | None = None,
                 routes: tuple[Route, ...] | Callable[[ServingSettings], tuple[Route, ...]] = (),
                 identity: ClientAuthenticator | None = None):
        self.app = app
        self.settings = settings or get_settings()
        self.spec_provider = spec_provider
        #: Paths with their own authenticator or error format (``serving.http.callers``);
        #: everything else is the default route: named clients and the identity provider. Given as
        #: a function of the settings when the routes need them (the middleware is declared at
        #: import, built at start). A route without its own authenticator uses the default's.
        self.routes = tuple(routes(self.settings) if callable(routes) else routes)
        self.identity = identity or ClientAuthenticator.from_settings(self.settings)
        self.default_route = Route("/", self.identity)
        self.limiter = RateLimiter()
        self._by_client = None  # the per-client request counter, made at the first request
        self._spec: bytes | None = None
        audit.configure_audit_log(self.settings.audit_log_path)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        path = scope.get("path", "")

        async def secured(message: dict) -> None:
            await send(secure_start(message, path) if message["type"] == "http.response.start" else message)

        if path == "/docs.json" and scope.get("method") == "GET" and self.spec_provider is not None:
            await self._send_spec(secured)
            return
        if docs_page.handles(path):
            await docs_page.docs_app()(scope, receive, secured)
            return
        if path == "/readyz":
            await self._readyz(scope, receive, secured)
            return
        if is_open(path):
            await self.app(scope, receive, secured)
            return
        await self._guarded(scope, receive, secured)

    async def _send_spec(self, send: Callable) -> None:
        if self._spec is None:
            self._spec = json.dumps(self.spec_provider()).encode("utf-8")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(self._spec)).encode())]})
        await send({"type": "http.response.body", "body": self._spec})

    async def _readyz(self, scope: Scope, receive: Callable, send: Callable) -> None:
        """BentoML's readiness (its status code kept) with the identity state as JSON."""
        answer: dict[str, Any] = {"status": 503}

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]

        await self.app(scope, receive, capture)
        status = answer["status"]
        await _send_json(send, status, {"ready": status == 200, "identity": self.identity.status()})

    def _count(self, caller: Caller | None, status: int) -> None:
        """``refracture_requests_by_client_total{client, status}``: bounded labels (the
        registry's clients, else ``other``; ``anonymous`` when no caller was established)."""
        if self._by_client is None:
            # Imported here, not at module import: BentoML points prometheus_client at its
            # multiprocess directory before the worker builds this middleware.
            import prometheus_client

            self._by_client = prometheus_client.Counter(
                "refracture_requests_by_client", "Requests to protected paths, by client and HTTP status.",
                ["client", "status"], registry=None)
        label = "anonymous" if caller is None else self.identity.metrics_label(caller.client)
        self._by_client.labels(client=label, status=str(status)).inc()

    async def _guarded(self, scope: Scope, receive: Callable, send: Callable) -> None:
        """Auth, body limit and the audit line. The audit line is written *before* the
        answer leaves (the response start is held until its last body part): if it cannot
        be written, the client gets 503 instead of an unaudited answer."""
        start = time.perf_counter()
        state = scope.setdefault("state", {})
        info: dict[str, Any] = {}
        state["audit"] = info
        request_id = uuid.uuid4().hex[:16]
        state["request_id"] = request_id
        route = route_for(self.routes, self.default_route, scope.get("path", ""))
        status_box = {"status": 500}
        held: dict | None = None
        audited = False
        auth = "ok"
        who: dict[str, Caller | None] = {"caller": None}

        def audit_now(status: int, disconnected: bool = False) -> None:
            nonlocal audited
            audited = True
            caller = who["caller"]
            self._count(caller, status)
            audit.write(audit.audit_line(
                endpoint=scope.get("path", ""),
                method=scope.get("method", ""),
                status=status,
                latency_ms=(time.perf_counter() - start) * 1000,
                salt=self.settings.audit_salt,
                procedure_ids=info.get("procedure_ids", ()),
                outcomes=info.get("outcomes", ()),
                model_versions=info.get("model_versions"),
                n_records=info.get("n_records"),
                n_errors=info.get("n_errors"),
                auth=auth,
                request_id=request_id,
                client=caller.client if caller is not None else None,
                auth_method=caller.method if caller is not None else None,
                subject_hash=caller.subject_hash if caller is not None else None,
                disconnected=disconnected,
            ))

        async def send_wrapper(message: dict) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
                held = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
                return
            if message["type"] == "http.response.body" and held is not None:
                start_message, held = held, None
                if not message.get("more_body", False):
                    try:
                        audit_now(status_box["status"])
                    except Exception as exc:
                        await self._audit_failed(send, exc, request_id)
                        return
                await send(start_message)
            await send(message)

        try:
            caller = (route.authenticator or self.default_route.authenticator).authenticate(scope)
            if inspect.isawaitable(caller):  # e.g. the identity provider's keys being fetched again
                caller = await caller
            if isinstance(caller, Caller):
                who["caller"] = caller
                caller = self._permitted(caller, scope.get("path", ""))
            if isinstance(caller, Refusal):
                auth = caller.reason
                extra = [(b"retry-after", caller.retry_after.encode())] if caller.retry_after else []
                await _send_error(send_wrapper, route, caller.status, {"error": caller.message},
                                  [(b"www-authenticate", caller.www_authenticate.encode("latin-1")), *extra]
                                  if caller.www_authenticate else extra)
                return
            auth = "insecure-dev" if caller.method == "insecure-dev" else "ok"
            state["caller"] = caller
            body = await self._read_body(scope, receive, send_wrapper, route)
            if body is None:
                return
            sent = False

            async def replay() -> dict:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # after the body: disconnects

            await self.app(scope, replay, send_wrapper)
        except ClientDisconnected:
            if not audited:
                self._audit_or_log(audit_now, CLIENT_CLOSED_REQUEST, True)
        finally:
            if not audited:  # an exception, or the app never answered
                self._audit_or_log(audit_now, status_box["status"])

    def _permitted(self, caller: Caller, path: str) -> Caller | Refusal:
        """The caller, if it is within its rate limit (every request counts, refused ones
        too) and holds the path's scope."""
        wait = self.limiter.take(caller.client, self.identity.rate_limit(caller))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            return Refusal(429, "rate-limited", f"too many requests from client {caller.client!r}: "
                                                f"over its rate limit; retry after {seconds} s",
                           www_authenticate="", retry_after=str(seconds))
        need = required_scope(path)
        if need is not None and not caller.may(need):
            return Refusal(403, "scope", f"client {caller.client!r} may not use {path}: it needs the scope {need!r}",
                           www_authenticate=f'Bearer realm="refracture-risk", error="insufficient_scope", scope="{need}"')
        return caller

    @staticmethod
    def _audit_or_log(audit_now: Callable, status: int, disconnected: bool = False) -> None:
        try:
            audit_now(status, disconnected)
        except Exception as exc:
            # Nobody is waiting for an answer any more; the operator must still know.
            logger.error("AUDIT FAILURE: a request was not audited (%s)", type(exc).__name__)

    @staticmethod
    async def _audit_failed(send: Callable, exc: Exception, request_id: str) -> None:
        # The type only, as for scoring errors: a message could quote what was being logged.
        logger.error("AUDIT FAILURE: answered 503 instead of an unaudited answer (%s)", type(exc).__name__)
        await _send_json(send, 503, {"error": "the audit log cannot be written; nothing was answered (retry later)",
                                     "errors": [], "n_errors": 0},
                         [(b"x-request-id", request_id.encode()), (b"retry-after", b"30")])

    async def _read_body(self, scope: Scope, receive: Callable, send: Callable, route: Route) -> bytes | None:
        """The whole body, or None after answering 413 (too large). Raises
        ``ClientDisconnected`` when the client goes away before the end of the body."""
        limit = self.settings.max_body_bytes
        too_large = {"error": f"request body larger than {limit} bytes; send fewer records per request",
                     "errors": [{"record": None, "field": "", "error": "body too large", "allowed": f"at most {limit} bytes"}]}
        declared = header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await _send_error(send, route, 413, too_large, [(b"connection", b"close")])
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_error(send, route, 413, too_large, [(b"connection", b"close")])
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
