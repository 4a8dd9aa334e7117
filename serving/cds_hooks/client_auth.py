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

Keys: ``JwksCache`` fetches a client's JWK Set URL (https; plain http only on loopback), keeps it
``JWKS_TTL_S``, fetches again when a token names an unknown ``kid`` (at most every
``MIN_REFRESH_S`` per URL, so random kids cannot make the service hammer the client), and fails
closed: no keys, no entry. It is this module's minimal JWKS fetch; the service's shared key
cache (``serving.auth.jwks``, issue 20) replaces it when it lands.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable

import httpx
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from serving.cds_hooks.settings import CdsClient, CdsSettings
from serving.http.callers import SCOPES, Caller, Refusal, Scope, bearer_token

logger = logging.getLogger(__name__)

#: Asymmetric JWS algorithms accepted (RFC 7518 RSA, RSA-PSS, ECDSA; RFC 9864 Ed25519). CDS
#: Hooks recommends ES384 and RS384; none and the HMAC family are refused.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "Ed25519")
#: Allowed clock skew between the client and this service (seconds).
LEEWAY_S = 60
#: Longest a token may still be valid (seconds): a token for next week is refused, which also
#: bounds how long a ``jti`` is remembered.
MAX_LIFETIME_S = 3600
#: How long a fetched JWK Set is used before it is fetched again (seconds).
JWKS_TTL_S = 3600
#: Least time between two fetches of one JWK Set URL (seconds).
MIN_REFRESH_S = 30
#: Timeout of one JWK Set fetch (seconds); the fetch blocks the request that needed it.
FETCH_TIMEOUT_S = 3.0
#: Largest JWK Set accepted (bytes).
MAX_JWKS_BYTES = 256 * 1024
#: Remembered ``jti``s per process; beyond this, tokens are refused until some expire.
MAX_REPLAY_ENTRIES = 1_000_000
#: What a CDS client may do (the CDS Hooks routes score, with explanations).
CDS_SCOPES = frozenset({"predict", "explain"}) & frozenset(SCOPES)
REALM = 'Bearer realm="refracture-risk cds-services"'


def fetch_jwks(url: str) -> dict[str, Any]:
    """GET a JWK Set (JSON) with a short timeout, no redirects and a size limit."""
    with httpx.Client(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client:
        with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise ValueError(f"status {response.status_code}")
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWK Set")
    return data


class JwksCache:
    """JWK Sets by URL: fetched on first use or at ``warm``, kept ``JWKS_TTL_S``, fetched again
    for an unknown ``kid`` (rate-limited); a failed fetch keeps what was there (or nothing)."""

    def __init__(self, fetch: Callable[[str], dict[str, Any]] = fetch_jwks, clock: Callable[[], float] = time.monotonic):
        self._fetch = fetch
        self._clock = clock
        self._sets: dict[str, tuple[KeySet, float]] = {}  # url -> (keys, fetched at)
        self._tried: dict[str, float] = {}  # url -> last fetch attempt
        self._lock = threading.Lock()

    def warm(self, urls: list[str]) -> None:
        """Fetch every URL once (called at start, in a thread: a client that is down then
        only fails its own calls)."""
        for url in urls:
            self._refresh(url)

    def key_set(self, url: str, kid: str) -> KeySet | None:
        """The JWK Set of ``url`` holding ``kid``, or None (fetch failed, or no such key)."""
        cached = self._sets.get(url)
        fresh = cached is not None and self._clock() - cached[1] < JWKS_TTL_S
        if not fresh or not _has_kid(cached[0], kid):
            self._refresh(url)
            cached = self._sets.get(url)
        if cached is None or not _has_kid(cached[0], kid):
            return None
        return cached[0]

    def has(self, url: str) -> bool:
        return url in self._sets

    def _refresh(self, url: str) -> None:
        with self._lock:
            now = self._clock()
            if now - self._tried.get(url, -1e9) < MIN_REFRESH_S:
                return
            self._tried[url] = now
            try:
                data = self._fetch(url)
                keys = KeySet.import_key_set({"keys": [k for k in data["keys"] if isinstance(k, dict) and "kid" in k]})
            except Exception as exc:  # noqa: BLE001 - network, JSON or key errors: fail closed
                logger.warning("CDS client keys: cannot fetch %s (%s)", url, type(exc).__name__)
                return
            self._sets[url] = (keys, now)


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)


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

    def __init__(self, settings: CdsSettings, jwks: JwksCache | None = None, replay: ReplayCache | None = None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.jwks = jwks or JwksCache()
        self.replay = replay or ReplayCache()
        self.clock = clock
        self._inline = {c.name: KeySet.import_key_set(c.jwks) for c in settings.clients if c.jwks is not None}

    def warm(self) -> None:
        """Fetch every client's JWK Set once (call at start, from a thread)."""
        self.jwks.warm([c.jwks_url for c in self.settings.clients if c.jwks_url])

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

    def _keys(self, client: CdsClient, header: dict[str, Any], kid: str) -> KeySet:
        jku = header.get("jku")
        if jku is not None and jku != client.jwks_url:
            raise _Refused("jku", "JWT header jku is not the JWK Set URL configured for this issuer")
        if client.jwks is not None:
            keys = self._inline[client.name]
            if not _has_kid(keys, kid):
                raise _Refused("kid", "JWT signed with a key (kid) the issuer's JWK Set does not hold")
            return keys
        assert client.jwks_url is not None
        keys = self.jwks.key_set(client.jwks_url, kid)
        if keys is None:
            if not self.jwks.has(client.jwks_url):
                raise _Refused("keys", "the issuer's JWK Set cannot be fetched; try again later")
            raise _Refused("kid", "JWT signed with a key (kid) the issuer's JWK Set does not hold")
        return keys

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
