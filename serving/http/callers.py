"""Who is calling: the seam between the guard and the ways a caller proves who it is.

The guard (``serving.http.guard``) does not know how a caller authenticates. For each
protected request it picks the ``Route`` whose path prefix matches (the longest; the
default route covers everything else), asks that route's ``Authenticator``, and either
refuses (``Refusal``: 401/403, audited) or hands the request on with the ``Caller`` in
``scope["state"]["caller"]`` and the request id (the one the audit line and the
``X-Request-Id`` header carry) in ``scope["state"]["request_id"]``. What comes after the
guard (the endpoints, the prediction log) reads both from there and never re-checks a key.

A route may also render the guard's own refusals (401, 413) in its protocol's error
format (a FHIR ``OperationOutcome`` under ``/fhir``, say) through ``render_error``.

The default route's authenticator is ``serving.http.identity.ClientAuthenticator``: named
clients' API keys (the one ``REFRACTURE_API_KEY`` is the client ``default`` with every
scope) and the identity provider's bearer tokens. ``ApiKeyAuthenticator`` (the single key
alone) stays for routes that want only that. The guard checks each path's scope
(``required_scope``) and the caller's rate limit whatever the route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from serving.auth.clients import ALL_SCOPES
from serving.config import ServingSettings

Scope = dict[str, Any]

#: What a caller may be allowed to do. An endpoint names the scope it needs
#: (``required_scope``); a client holds a set of them (``serving.auth.clients``).
SCOPES = ALL_SCOPES


@dataclass(frozen=True)
class Caller:
    """An authenticated caller.

    ``client``: the client's name (audit line, metrics, prediction log); never a secret.
    ``scopes``: what it may do. ``method``: how it proved it (``api-key``, ``insecure-dev``,
    ...). ``subject_hash``: a salted hash of a signed-in person's subject, when there is one
    (staff identities are personal data: never logged raw).
    """

    client: str
    scopes: frozenset[str]
    method: str
    subject_hash: str | None = None

    def may(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused before it reaches an endpoint.

    ``status``: 401 (who are you?), 403 (known, but not allowed) or 429 (over its rate
    limit; ``retry_after``). ``reason``: a short
    token for the audit line (``missing``, ``wrong``, ``scope``, ...). ``message``: said to
    the client, naming what to fix and never echoing the credential.
    """

    status: int
    reason: str
    message: str
    www_authenticate: str = 'Bearer realm="refracture-risk"'
    #: Seconds, for a 429 (``Retry-After``); None otherwise.
    retry_after: str | None = None


class Authenticator(Protocol):
    """Decides who a request comes from. Called once per protected request, before its
    body is read; must not block the event loop for long (cache what it can). When it
    must wait (keys to fetch again), it may return an awaitable instead, which the guard
    awaits (``serving.http.identity`` does so for a token signed with a new key)."""

    def authenticate(self, scope: Scope) -> "Caller | Refusal | Awaitable[Caller | Refusal]": ...


#: (status, message, field errors) -> (body bytes, media type): a route's own error format.
ErrorRenderer = Callable[[int, str, list[dict[str, Any]]], tuple[bytes, str]]


@dataclass(frozen=True)
class Route:
    """A path prefix with, optionally, its own authenticator and its own error format.

    ``authenticator`` None: the default route's (whoever may call ``/predict`` may call this
    path, by the same means); a route that only speaks another protocol's errors (``/fhir``)
    sets ``render_error`` alone and so follows every change to how callers authenticate."""

    prefix: str
    authenticator: Authenticator | None = None
    render_error: ErrorRenderer | None = None

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix.rstrip("/") + "/")


def route_for(routes: tuple[Route, ...], default: Route, path: str) -> Route:
    """The route with the longest prefix matching ``path``, else ``default``."""
    matching = [r for r in routes if r.matches(path)]
    return max(matching, key=lambda r: len(r.prefix)) if matching else default


def header(scope: Scope, name: bytes) -> str | None:
    """The first header ``name`` (lower case) of an ASGI scope, as text."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    value = header(scope, b"authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


#: Exact paths and the scope each needs (besides any path ending in /predict or /explain).
#: The FHIR operation and the CDS Hooks call answer with the top factors, as /explain does.
PATH_SCOPES = {"/model": "model:read", "/metrics": "metrics:read",
               "/fhir/$refracture-risk": "explain", "/cds-services/refracture-risk": "explain"}


def required_scope(path: str) -> str | None:
    """The scope an endpoint needs (None: any authenticated caller). The guard checks it
    for every route (403 without it)."""
    path = path.rstrip("/") or "/"
    if path.endswith("/explain"):
        return "explain"
    if path.endswith("/predict"):
        return "predict"
    return PATH_SCOPES.get(path)


class ApiKeyAuthenticator:
    """The embedded default: one shared key (``REFRACTURE_API_KEY``), compared in constant
    time, is the client ``default`` with every scope; ``--insecure-dev`` lets anyone in as
    ``insecure-dev``."""

    def __init__(self, settings: ServingSettings):
        self.settings = settings

    def authenticate(self, scope: Scope) -> Caller | Refusal:
        if self.settings.api_key is None:  # only possible with insecure_dev (ServingSettings.from_env)
            return Caller("insecure-dev", frozenset(SCOPES), "insecure-dev")
        token = bearer_token(scope)
        if not self.settings.key_matches(token):
            return Refusal(401, "missing" if token is None else "wrong",
                           "missing or wrong API key: send 'Authorization: Bearer <key>'")
        return Caller("default", frozenset(SCOPES), "api-key")
