"""The default authenticator: named clients' API keys and the identity provider's tokens.

Behind the guard's seam (``serving.http.callers``), this decides who a request on the
default route comes from, from its ``Authorization: Bearer`` credential:

- **A JWT** (three dot-separated parts), when an identity provider is configured
  (``REFRACTURE_OIDC_ISSUER``): checked by ``serving.auth.tokens`` (signature with the
  provider's published keys, issuer, audience, expiry, not-before, scopes). The caller is
  the registry's client bound to the token's ``client_id`` (its scopes cap the token's, its
  revocation or expiry refuses the token), else the ``client_id`` itself (unless
  ``REFRACTURE_OIDC_REGISTERED_ONLY`` is set). A signed-in person is named only by a
  salted hash of issuer and subject (``Caller.subject_hash``).
- **Anything else** is an API key: the registry's (``REFRACTURE_CLIENTS_FILE``, re-read
  when it changes) or ``REFRACTURE_API_KEY`` (the client ``default``, every scope).
- ``--insecure-dev`` (nothing configured): everyone is ``insecure-dev`` with every scope.

A refusal is a 401 whose ``reason`` is the audit token (``missing``, ``wrong``, ``revoked``,
``expired``, ``algorithm``, ``signature``, ``unknown-key``, ...) and whose
``WWW-Authenticate`` follows RFC 6750 (``error="invalid_token"`` for a bad token). The
token's own text is never echoed, logged or audited.

A token signed with a key not yet cached makes ``authenticate`` return a coroutine: the
guard awaits it while the keys are fetched again in a thread, so the event loop never
waits for the network.

Also here, for the guard: each caller's rate limit (``rate_limit``), the bounded client
label of the metrics (``metrics_label``), and the identity part of ``/readyz`` (``status``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any, Awaitable

from serving.auth.clients import Client, ClientRegistry, default_client
from serving.auth.jwks import JwksCache, cache_for, discovered_cache
from serving.auth.limits import RateLimit
from serving.auth.tokens import IssuerConfig, KeyNotCached, TokenRefused, TokenVerifier
from serving.config import OidcSettings, ServingSettings
from serving.http.audit import key_hash
from serving.http.callers import SCOPES, Caller, Refusal, Scope, bearer_token

logger = logging.getLogger(__name__)

REALM = 'Bearer realm="refracture-risk"'
#: The metrics label of a client the registry does not name.
OTHER = "other"


def _invalid_token(reason: str, message: str) -> Refusal:
    text = message.replace('"', "'")
    return Refusal(401, reason, f"invalid bearer token: {message}",
                   www_authenticate=f'{REALM}, error="invalid_token", error_description="{text}"')


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2


def jwks_cache(oidc: OidcSettings) -> JwksCache:
    """The provider's key cache: on the configured ``jwks_uri``, else found by discovery
    at each fetch (so a provider down when the service starts is found once it is back)."""
    if oidc.jwks_uri:
        return cache_for(oidc.jwks_uri, key_lifetime_s=oidc.key_lifetime_s)
    return discovered_cache(oidc.issuer, key_lifetime_s=oidc.key_lifetime_s)


class ClientAuthenticator:
    """See the module docstring. ``verifier``: the token checker (built from
    ``settings.oidc`` by ``from_settings``); ``registry``: the client registry."""

    def __init__(self, settings: ServingSettings, registry: ClientRegistry,
                 verifier: TokenVerifier | None = None, registered_only: bool = False):
        self.settings = settings
        self.registry = registry
        self.verifier = verifier
        self.registered_only = registered_only
        self.default_limit = RateLimit.of(settings.rate_limit_per_s, settings.rate_limit_burst)
        self._issuer_status: list[JwksCache] = (
            [i.cache for i in verifier.issuers.values()] if verifier is not None else [])

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> "ClientAuthenticator":
        """Built once per worker at start: reads the registry (an invalid file stops the
        start) and, with an identity provider, fetches its keys (a provider that cannot be
        reached does not stop the start: API keys keep working, its tokens are refused as
        ``unknown-key`` and ``/readyz`` says ``unavailable`` until it answers)."""
        extra = [default_client(settings.api_key)] if settings.api_key else []
        registry = ClientRegistry(settings.clients_file, extra_clients=extra)
        verifier = None
        if settings.oidc is not None:
            cache = jwks_cache(settings.oidc)
            if not cache.refresh():  # keys at start; a provider down now is retried at use
                logger.error("identity provider %s: no signing keys yet (%s); its tokens are refused until it answers",
                             settings.oidc.issuer, cache.status().last_error)
            verifier = TokenVerifier([IssuerConfig(issuer=settings.oidc.issuer, audience=settings.oidc.audience,
                                                   cache=cache, scope_map=settings.oidc.scope_map,
                                                   leeway_s=settings.oidc.leeway_s)])
        return cls(settings, registry, verifier, registered_only=settings.oidc.registered_only
                   if settings.oidc is not None else False)

    # ------------------------------------------------------------------ who
    def authenticate(self, scope: Scope) -> Caller | Refusal | Awaitable[Caller | Refusal]:
        if self.settings.insecure_dev:
            return Caller("insecure-dev", frozenset(SCOPES), "insecure-dev")
        credential = bearer_token(scope)
        if credential is None:
            what = "an access token from the identity provider or an API key" if self.verifier else "an API key"
            return Refusal(401, "missing", f"missing credentials: send 'Authorization: Bearer <{what}>'")
        if self.verifier is not None and looks_like_jwt(credential):
            try:
                return self._token_caller(self.verifier.verify(credential))
            except KeyNotCached:
                return self._after_key_refresh(credential)
            except TokenRefused as exc:
                return _invalid_token(exc.reason, exc.message)
        return self._key_caller(credential)

    async def _after_key_refresh(self, credential: str) -> Caller | Refusal:
        try:
            verified = await asyncio.to_thread(self.verifier.verify, credential, True)
        except TokenRefused as exc:
            return _invalid_token(exc.reason, exc.message)
        return self._token_caller(verified)

    def _key_caller(self, key: str) -> Caller | Refusal:
        match = self.registry.check_key(key)
        if match.reason is not None:
            messages = {"wrong": "wrong API key", "revoked": "this API key has been revoked",
                        "expired": "this client's access has expired"}
            return Refusal(401, match.reason, f"{messages[match.reason]}: send 'Authorization: Bearer <key>' "
                                              "with a current key")
        return Caller(match.client.name, match.client.scopes, "api-key")

    def _token_caller(self, verified) -> Caller | Refusal:
        client: Client | None = self.registry.oauth_client(verified.client_id)
        scopes = verified.scopes & frozenset(SCOPES)
        name = verified.client_id
        if client is not None:
            why = client.usable(datetime.now(timezone.utc))
            if why is not None:
                return _invalid_token(why, f"client {client.name!r} is {why} in this service's registry")
            scopes &= client.scopes
            name = client.name
        elif self.registered_only:
            return _invalid_token("unregistered", f"client {verified.client_id[:80]!r} is not registered with this service")
        user = verified.user_subject
        subject_hash = key_hash(self.settings.audit_salt, f"{verified.issuer}|{user}") if user else None
        return Caller(name, scopes, "user-token" if user else "client-token", subject_hash=subject_hash)

    # ------------------------------------------------------------------ for the guard
    def rate_limit(self, caller: Caller) -> RateLimit | None:
        """The caller's limit: its registry entry's, else the service's default."""
        client = self.registry.client_named(caller.client)
        if client is not None and client.rate_limit_per_s is not None:
            return RateLimit.of(client.rate_limit_per_s, client.burst)
        return self.default_limit

    def metrics_label(self, client: str) -> str:
        """``client`` when the registry (or the service itself) names it, else ``other``:
        the label set of ``refracture_requests_by_client`` stays bounded whatever the tokens say."""
        return client if client in self.registry.names or client == "insecure-dev" else OTHER

    def status(self) -> dict[str, Any]:
        """The identity part of ``/readyz``: the registry's last reload error, each
        provider's key cache (``ok``, ``degraded``: unreachable but keys cached,
        ``unavailable``: no key, every token refused)."""
        providers = [c.status().as_dict() for c in self._issuer_status]
        states = [p["state"] for p in providers]
        worst = "unavailable" if "unavailable" in states else "degraded" if "degraded" in states else "ok"
        if self.registry.last_error:
            worst = "degraded" if worst == "ok" else worst
        return {"state": worst, "providers": providers, "registry_error": self.registry.last_error}
