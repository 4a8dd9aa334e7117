"""OAuth 2.0 bearer tokens: JWT access tokens from the hospital's identity provider, checked.

The service is a resource server (RFC 6750, RFC 9068). A token is accepted only when
every check passes, in this order (the first failure is the ``TokenRefused.reason`` the
audit line carries):

1. ``too-large``: longer than ``max_token_bytes`` (default 8 kB; a real access token is
   1-2 kB), refused before anything is parsed.
2. ``malformed``: not a compact JWS (a JWE, garbage, bad base64 or JSON).
3. ``algorithm``: the header's ``alg`` is not an asymmetric signature algorithm
   (``serving.auth.jwks.ASYMMETRIC_ALGORITHMS``): ``none`` and HMAC (``HS256``: a token
   "signed" with the provider's public key as an HMAC secret) never get further.
4. ``issuer``: the (not yet verified) ``iss`` names no configured issuer; only used to
   pick whose keys to check the signature with, and checked again after it.
5. ``unknown-key``: no usable key of that issuer has the header's ``kid`` (``KeyNotCached``
   is raised first, so the caller may refresh the keys off the event loop and retry).
6. ``signature``: the signature does not verify with that key (a tampered payload).
7. claims, with ``leeway_s`` (default 30 s) of clock skew either way: ``expired``
   (``exp`` required), ``not-yet-valid`` (``nbf``, ``iat`` in the future), ``issuer``
   (exact match), ``audience`` (``aud`` must hold the configured audience),
   ``claims`` (a required claim missing or of the wrong type).

What a token grants: its ``scope`` (space-separated, RFC 9068) or ``scp`` (list) values,
mapped to the service's scopes by the issuer's ``scope_map`` (provider scope -> ours;
default: the same names); anything else in the token is ignored. Its client is the
``client_id`` claim (RFC 9068), else ``azp``, else ``sub``. A ``sub`` other than the
client is a signed-in person (``VerifiedToken.user_subject``), whom the audit line names
only by a salted hash.

Verified tokens are cached (by the token's text, up to ``cache_size`` tokens) until they
expire, so a client that reuses its token costs one dictionary lookup and a clock check;
a hit is re-checked against the clock and against the key still being published.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from joserfc import jwt
from joserfc.errors import (BadSignatureError, ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError)

from serving.auth.jwks import ASYMMETRIC_ALGORITHMS, JwksCache, UnknownKeyError

#: Tokens longer than this are refused unread, bytes.
DEFAULT_MAX_TOKEN_BYTES = 8192
#: Clock skew allowed on exp, nbf and iat, seconds (RFC 7519 allows "a few minutes"; 30 s
#: is enough for servers kept in time by NTP and keeps an expired token's life short).
DEFAULT_LEEWAY_S = 30
#: ``typ`` headers accepted: a plain JWT or an RFC 9068 access token. An ID token (typ
#: ``JWT`` too) is kept out by the audience check: its ``aud`` is the client, not this service.
ACCEPTED_TYPES = (None, "JWT", "at+jwt", "application/at+jwt")


class TokenRefused(Exception):
    """The token is not accepted. ``reason``: the audit token (see the module docstring);
    ``message``: said to the client (never quotes the token)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class KeyNotCached(TokenRefused):
    """The issuer's cache has no key with this ``kid`` now: refresh ``cache`` (blocking:
    do it off the event loop) and verify again; ``verify(..., refreshed=True)`` then refuses."""

    def __init__(self, cache: JwksCache, kid: str | None):
        super().__init__("unknown-key", f"unknown signing key id {str(kid)[:64]!r}")
        self.cache = cache
        self.kid = kid


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted identity provider.

    ``issuer``: its exact ``iss``. ``audience``: the value this service's tokens carry in
    ``aud`` (the resource server's identifier at the provider). ``scope_map``: provider
    scope -> service scope (empty: the same names). ``cache``: its keys
    (``serving.auth.jwks.JwksCache``; built by the caller from discovery or a configured URL).
    """

    issuer: str
    audience: str
    cache: JwksCache
    scope_map: Mapping[str, str] = field(default_factory=dict)
    leeway_s: int = DEFAULT_LEEWAY_S


@dataclass(frozen=True)
class VerifiedToken:
    """An accepted token: who, what it grants (service scopes), until when (epoch s)."""

    issuer: str
    client_id: str
    subject: str | None
    scopes: frozenset[str]
    expires_at: float
    not_before: float | None
    kid: str | None

    @property
    def user_subject(self) -> str | None:
        """The signed-in person's subject, or None for a system's own token
        (client credentials: ``sub`` is the client)."""
        return self.subject if self.subject and self.subject != self.client_id else None


def _unverified_json(segment: bytes) -> dict[str, Any]:
    padded = segment + b"=" * (-len(segment) % 4)
    data = json.loads(base64.urlsafe_b64decode(padded))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


class TokenVerifier:
    """Checks bearer tokens against the configured issuers; thread-safe."""

    def __init__(self, issuers: list[IssuerConfig], *, max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
                 cache_size: int = 10_000, clock: Callable[[], float] = time.time):
        self.issuers = {i.issuer: i for i in issuers}
        self.max_token_bytes = max_token_bytes
        self.cache_size = cache_size
        self._clock = clock
        self._verified: OrderedDict[str, tuple[VerifiedToken, JwksCache, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str, refreshed: bool = False) -> VerifiedToken:
        """The token's identity and grants, or ``TokenRefused`` (``KeyNotCached`` when the
        key may appear after a refresh and ``refreshed`` is False)."""
        if len(token) > self.max_token_bytes:
            raise TokenRefused("too-large", f"the bearer token is longer than {self.max_token_bytes} bytes")
        now = self._clock()
        with self._lock:
            hit = self._verified.get(token)
        if hit is not None:
            verified, cache, key = hit
            if self._still_valid(verified, now) and cache.get_key(verified.kid) is key:
                return verified
            with self._lock:
                self._verified.pop(token, None)
        verified, cache, key = self._verify(token, now, refreshed)
        with self._lock:
            self._verified[token] = (verified, cache, key)
            while len(self._verified) > self.cache_size:
                self._verified.popitem(last=False)
        return verified

    def _still_valid(self, v: VerifiedToken, now: float) -> bool:
        leeway = self.issuers[v.issuer].leeway_s
        return now < v.expires_at + leeway and (v.not_before is None or v.not_before <= now + leeway)

    def _verify(self, token: str, now: float, refreshed: bool) -> tuple[VerifiedToken, JwksCache, Any]:
        parts = token.encode("ascii", "replace").split(b".")
        if len(parts) != 3:
            raise TokenRefused("malformed", "the bearer token is not a signed JWT (expected three dot-separated parts)")
        try:
            header = _unverified_json(parts[0])
            claims = _unverified_json(parts[1])
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise TokenRefused("malformed", "the bearer token's header or payload is not base64url JSON") from None
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise TokenRefused("algorithm", f"signature algorithm {str(alg)[:20]!r} is not accepted "
                                            "(asymmetric signatures only: RS256, PS256, ES256, EdDSA, ...)")
        if header.get("typ") not in ACCEPTED_TYPES:
            raise TokenRefused("malformed", f"token type {str(header.get('typ'))[:30]!r} is not an access token")
        if "crit" in header:
            raise TokenRefused("malformed", "critical header extensions are not supported")
        iss = claims.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise TokenRefused("issuer", f"issuer {str(iss)[:100]!r} is not trusted by this service")
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        key = issuer.cache.get_key(kid)
        if key is None:
            if not refreshed:
                raise KeyNotCached(issuer.cache, kid)
            try:
                key = issuer.cache.key_for(kid)
            except UnknownKeyError as exc:
                raise TokenRefused("unknown-key", str(exc)) from None
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except BadSignatureError:
            raise TokenRefused("signature", "the token's signature does not verify") from None
        except (JoseError, ValueError, UnicodeError) as exc:
            raise TokenRefused("malformed", f"the token cannot be read ({type(exc).__name__})") from None
        registry = jwt.JWTClaimsRegistry(
            now=int(now), leeway=issuer.leeway_s,
            iss={"essential": True, "value": issuer.issuer},
            aud={"essential": True, "value": issuer.audience},
            exp={"essential": True},
        )
        self._check_claims(registry, decoded.claims)
        return self._verified_token(issuer, decoded.claims, kid), issuer.cache, key

    @staticmethod
    def _check_claims(registry: jwt.JWTClaimsRegistry, claims: dict[str, Any]) -> None:
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise TokenRefused("expired", "the token has expired") from None
        except MissingClaimError as exc:
            raise TokenRefused("claims", f"the token lacks the required claim {exc.claim!r}") from None
        except InvalidClaimError as exc:
            name = exc.claim
            if name in ("nbf", "iat"):
                raise TokenRefused("not-yet-valid", "the token is not valid yet (nbf/iat in the future)") from None
            if name == "iss":
                raise TokenRefused("issuer", "the token's issuer is not the one its keys belong to") from None
            if name == "aud":
                raise TokenRefused("audience", "the token is not meant for this service (aud)") from None
            raise TokenRefused("claims", f"claim {name!r} is invalid") from None
        except JoseError as exc:
            raise TokenRefused("claims", f"the token's claims are invalid ({type(exc).__name__})") from None

    @staticmethod
    def _verified_token(issuer: IssuerConfig, claims: dict[str, Any], kid: str | None) -> VerifiedToken:
        raw = claims.get("scope", claims.get("scp", ""))
        granted = raw.split() if isinstance(raw, str) else [s for s in raw if isinstance(s, str)] \
            if isinstance(raw, list) else []
        scope_map = issuer.scope_map
        scopes = frozenset(scope_map.get(s, s) if scope_map else s for s in granted
                           if not scope_map or s in scope_map)
        client = claims.get("client_id") or claims.get("azp") or claims.get("sub")
        if not isinstance(client, str) or not client:
            raise TokenRefused("claims", "the token names no client (client_id, azp or sub)")
        sub = claims.get("sub")
        nbf = claims.get("nbf")
        return VerifiedToken(issuer=issuer.issuer, client_id=client, subject=sub if isinstance(sub, str) else None,
                             scopes=scopes, expires_at=float(claims["exp"]),
                             not_before=float(nbf) if isinstance(nbf, (int, float)) else None, kid=kid)
