"""Who a CDS Hooks call comes from: the CDS client's signed JWT, as CDS Hooks 2.0 requires.

CDS Hooks 2.0 (HL7, STU2, section "Trusting CDS Clients"; quoted from
https://cds-hooks.hl7.org/2.0/#trusting-cds-clients):

- "Each time a CDS Client transmits a request to a CDS Service which requires authentication,
  the request MUST include an Authorization header presenting the JWT as a "Bearer" token ...
  this is for every single CDS Service call, whether that be a Discovery call, a single CDS
  Service invocation, or multiple exchanges relating to a single service."
- Header: ``alg`` REQUIRED, ``kid`` REQUIRED ("The identifier of the key-pair used to sign this
  JWT"), ``typ`` REQUIRED "Fixed value: JWT", ``jku`` OPTIONAL. Payload: ``iss``, ``aud``,
  ``exp``, ``iat``, ``jti`` REQUIRED ("A nonce string value that uniquely identifies this
  authentication JWT (used to protect against replay attacks)"), ``tenant`` OPTIONAL.
- "CDS Services SHOULD limit the CDS Clients they trust by maintaining an allowlist of iss and
  jku urls." / the ``aud`` "MUST be the URL of the CDS Service endpoint being invoked"
  (``<base>/cds-services`` for discovery, ``<base>/cds-services/<id>`` for a service).
- "JWTs SHALL NOT be signed using the none algorithm" and "SHALL NOT be signed using any
  symmetric algorithm".

So ``CdsClientAuthenticator`` (the ``/cds-services`` route's ``Authenticator``,
``serving.http.callers``) accepts a token only when: its ``alg`` is asymmetric
(``ALGORITHMS``); its unverified ``iss`` is a configured client (``serving.cds_hooks.settings``);
its ``jku``, if any, is that client's JWK Set URL (no other URL is ever fetched); its ``kid``
is a key of that set; the signature verifies (joserfc); ``aud`` is this service's URL of the
path called; ``exp`` has not passed and is at most ``MAX_LIFETIME_S`` ahead; ``iat`` is not in
the future; and its ``jti`` was not seen before from that issuer (``ReplayCache``: kept until
the token's ``exp``, per process). Clock skew of ``LEEWAY_S`` is allowed. A refusal is a 401
naming what to fix, never echoing the token. The caller is the client's configured name.

Keys: a client's JWK Set URL (https; plain http only on loopback) is read through the
service's key cache, ``serving.auth.jwks`` (one cache per URL: refreshed in the background,
fetched again for an unknown ``kid`` at most every 30 s, so invented kids cannot make the
service hammer the client, and failing closed); an inline JWK Set is used as configured.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from serving.auth.jwks import JwksCache, UnknownKeyError, cache_for
from serving.cds_hooks.settings import CdsClient, CdsSettings
from serving.http.callers import SCOPES, Caller, Refusal, Scope, bearer_token


#: Asymmetric JWS algorithms accepted (RFC 7518 RSA, RSA-PSS, ECDSA; RFC 9864 Ed25519). CDS
#: Hooks recommends ES384 and RS384; none and the HMAC family are refused.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "Ed25519")
#: Allowed clock skew between the client and this service (seconds).
LEEWAY_S = 60
#: Longest a token may still be valid (seconds): a token for next week is refused, which also
#: bounds how long a ``jti`` is remembered.
MAX_LIFETIME_S = 3600
#: Remembered ``jti``s per process; beyond this, tokens are refused until some expire.
MAX_REPLAY_ENTRIES = 1_000_000
#: What a CDS client may do (the CDS Hooks routes score, with explanations).
CDS_SCOPES = frozenset({"predict", "explain"}) & frozenset(SCOPES)
REALM = 'Bearer realm="refracture-risk cds-services"'


class ReplayCache:
    """``jti``s seen, per issuer, until their token's ``exp`` (then forgotten)."""

    def __init__(self, max_entries: int = MAX_REPLAY_ENTRIES):
        self.max_entries = max_entries
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def first_use(self, issuer: str, jti: str, exp: float, now: float) -> bool | None:
        """Record ``jti``: True the first time, False for a replay, None when full."""
        with self._lock:
            key = (issuer, jti)
            if key in self._seen and self._seen[key] + LEEWAY_S >= now:
                return False
            if len(self._seen) >= self.max_entries:
                self._seen = {k: e for k, e in self._seen.items() if e + LEEWAY_S >= now}
                if len(self._seen) >= self.max_entries:
                    return None
            self._seen[key] = exp
            return True


class CdsClientAuthenticator:
    """The ``/cds-services`` route's authenticator (module docstring)."""

    def __init__(self, settings: CdsSettings, replay: ReplayCache | None = None, clock: Callable[[], float] = time.time,
                 key_cache: Callable[[str], JwksCache] = cache_for):
        self.settings = settings
        self.replay = replay or ReplayCache()
        self.clock = clock
        self._inline = {c.name: KeySet.import_key_set(c.jwks) for c in settings.clients if c.jwks is not None}
        self._caches = {c.name: key_cache(c.jwks_url) for c in settings.clients if c.jwks_url}

    def warm(self) -> None:
        """Fetch every client's JWK Set once (call at start, from a thread)."""
        for cache in self._caches.values():
            cache.refresh()

    def authenticate(self, scope: Scope) -> Caller | Refusal:
        if not self.settings.clients:
            if self.settings.insecure_dev:
                return Caller("insecure-dev", frozenset(SCOPES), "insecure-dev")
            return _refuse("no-clients", "no CDS client is configured on this service (REFRACTURE_CDS_CLIENTS)")
        token = bearer_token(scope)
        if token is None:
            return _refuse("missing", "send the CDS client's signed JWT: 'Authorization: Bearer <JWT>' (CDS Hooks 2.0)")
        try:
            return self._verify(token, scope.get("path", ""))
        except _Refused as exc:
            return _refuse(exc.reason, exc.message)

    def _verify(self, token: str, path: str) -> Caller:
        header, claims = _unverified(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise _Refused("alg-none", "unsigned JWT (alg none) refused: sign it with the client's private key")
        if alg not in ALGORITHMS:
            raise _Refused("alg", f"JWT algorithm {alg[:20]!r} refused: use an asymmetric one ({', '.join(ALGORITHMS)}); "
                                  "symmetric (HMAC) algorithms are not allowed by CDS Hooks")
        if header.get("typ", "JWT") != "JWT":
            raise _Refused("typ", "JWT header typ must be 'JWT'")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _Refused("kid", "JWT header has no kid: name the signing key (CDS Hooks 2.0)")
        issuer = claims.get("iss")
        client = self.settings.by_issuer.get(issuer) if isinstance(issuer, str) else None
        if client is None:
            raise _Refused("issuer", "JWT issuer (iss) is not a CDS client this service trusts")
        keys = self._keys(client, header, kid)
        try:
            verified = jwt.decode(token, keys, algorithms=list(ALGORITHMS))
        except (JoseError, ValueError):
            raise _Refused("signature", "JWT signature does not verify with the issuer's key") from None
        self._check_claims(client, verified.claims, path)
        return Caller(client.name, CDS_SCOPES, "cds-jwt")

    def _keys(self, client: CdsClient, header: dict[str, Any], kid: str) -> Any:
        """The key (or inline key set) to verify with; the issuer's key named by ``kid``."""
        jku = header.get("jku")
        if jku is not None and jku != client.jwks_url:
            raise _Refused("jku", "JWT header jku is not the JWK Set URL configured for this issuer")
        if client.jwks is not None:
            keys = self._inline[client.name]
            if not any(k.kid == kid for k in keys.keys):
                raise _Refused("kid", "JWT signed with a key (kid) the issuer's JWK Set does not hold")
            return keys
        cache = self._caches[client.name]
        try:
            return cache.key_for(kid)
        except UnknownKeyError:
            if cache.status().state == "unavailable":
                raise _Refused("keys", "the issuer's JWK Set cannot be fetched; try again later") from None
            raise _Refused("kid", "JWT signed with a key (kid) the issuer's JWK Set does not hold") from None

    def _check_claims(self, client: CdsClient, claims: dict[str, Any], path: str) -> None:
        now = self.clock()
        audience = f"{self.settings.public_url}{path.rstrip('/')}"
        aud = claims.get("aud")
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise _Refused("audience", f"JWT audience (aud) must be this service's URL of the call: {audience}")
        exp, iat, jti = claims.get("exp"), claims.get("iat"), claims.get("jti")
        if not _number(exp):
            raise _Refused("exp", "JWT has no expiry (exp)")
        if exp + LEEWAY_S < now:
            raise _Refused("expired", "JWT expired (exp is past)")
        if exp > now + MAX_LIFETIME_S + LEEWAY_S:
            raise _Refused("lifetime", f"JWT valid for more than {MAX_LIFETIME_S} s: issue short-lived tokens")
        if not _number(iat):
            raise _Refused("iat", "JWT has no issue time (iat)")
        if iat > now + LEEWAY_S:
            raise _Refused("iat", "JWT issued in the future (iat): check the client's clock")
        if not isinstance(jti, str) or not jti:
            raise _Refused("jti", "JWT has no jti (a nonce that identifies the token)")
        first = self.replay.first_use(client.issuer, jti, float(exp), now)
        if first is False:
            raise _Refused("replay", "JWT already used (jti seen before): sign a new token per call")
        if first is None:
            raise _Refused("busy", "too many tokens in use; retry in a moment")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, before any check (to pick the issuer's keys)."""
    try:
        obj = jws.extract_compact(token.encode("ascii"))
        claims = json.loads(obj.payload)
    except (JoseError, ValueError, UnicodeError):
        raise _Refused("malformed", "the bearer token is not a compact JWT (header.payload.signature)") from None
    if not isinstance(claims, dict):
        raise _Refused("malformed", "the JWT's payload is not a JSON object")
    return dict(obj.headers()), claims


class _Refused(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _refuse(reason: str, message: str) -> Refusal:
    return Refusal(401, reason, message, REALM)
