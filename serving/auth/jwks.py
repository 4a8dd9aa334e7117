"""The signing keys of an identity provider: fetched, cached and refreshed, one cache per JWKS URL.

A token verifier (``serving.auth.tokens``, the CDS Hooks client's JWT, ...) asks this
module for the public key that signed a token, by its key id (``kid``). The keys come from
the provider's JSON Web Key Set (RFC 7517), whose address is found by OpenID Connect
discovery (``discover``: ``<issuer>/.well-known/openid-configuration`` -> ``jwks_uri``) or
is configured directly.

Rules (each one a test in tests/serving/auth/test_jwks.py):

- **Fetch, cache, refresh.** The first use fetches the set; after ``refresh_interval_s``
  (default 300 s) the next use starts a refresh in a background thread, so the request
  that notices does not wait for the network; the keys it has keep working meanwhile.
- **Unknown key id.** A provider that rotates keys publishes the new one, then signs with
  it; a token naming a ``kid`` the cache has not seen makes ``refresh_for(kid)`` fetch the
  set again at once (blocking, at most ``timeout_s``), but not more often than every
  ``min_refetch_interval_s`` (default 30 s): tokens with invented key ids cannot make the
  service hammer the provider. Concurrent callers share one fetch.
- **Provider unreachable.** A key already cached stays usable until ``key_lifetime_s``
  (default 24 h) after the last fetch that listed it; then it is dropped. A key the
  provider stops listing is dropped at the next successful fetch (that is how a provider
  revokes one). Status ``degraded`` while fetches fail and cached keys remain,
  ``unavailable`` when no key is usable (``status()``, shown on ``/readyz``).
- **Fail closed.** A key id that is still unknown after the refresh allowed is an
  ``UnknownKeyError``: the caller refuses the token, never falls back to another key.
  A token without a ``kid`` is matched only when the set holds exactly one key.
- **Only asymmetric signing keys.** Keys of type RSA, EC and OKP with ``use`` absent or
  ``sig``; a symmetric (``oct``) key in a published set is ignored (a public set must not
  hold one), so an HMAC token can never be checked against anything from here.
- **Bounded input.** A JWKS or discovery document over ``MAX_DOCUMENT_BYTES`` is refused.

API (stable: the token verifier and the CDS Hooks endpoint use it)::

    meta = discover("https://idp.example/realms/h")        # ProviderMetadata (issuer checked)
    cache = cache_for(meta.jwks_uri)                       # shared per URL in this process
    cache = discovered_cache("https://idp.example/realms/h")  # or: discovery at every fetch
    key = cache.get_key(kid)                               # cached key or None; no waiting
    key = cache.key_for(kid)                               # cached, else refresh once: Key or UnknownKeyError
    cache.status()                                         # JwksStatus(state="ok"|"degraded"|"unavailable", ...)

``JwksCache(url, fetch=...)`` takes any ``fetch(url, timeout_s) -> bytes`` (tests, a proxy);
the default uses httpx with TLS verification. Times are ``time.time()`` seconds; the clock
is injectable (``clock=``) for tests of lifetimes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

logger = logging.getLogger(__name__)

Key = RSAKey | ECKey | OKPKey
Fetch = Callable[[str, float], bytes]

#: Signature algorithms accepted anywhere in the service: asymmetric only. "none" and the
#: HMAC family (HS256, ...) are absent on purpose (RFC 8725 section 3.1 and 2.1).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
#: Largest JWKS or discovery document read, bytes (a real set is a few kB).
MAX_DOCUMENT_BYTES = 256 * 1024
_KEY_TYPES = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}


class JwksError(Exception):
    """A key set or discovery document could not be fetched or read (the message says why)."""


class UnknownKeyError(JwksError):
    """No usable key has this key id (after the refresh allowed): refuse the token."""


@dataclass(frozen=True)
class ProviderMetadata:
    """What the service needs from an OpenID Provider's discovery document."""

    issuer: str
    jwks_uri: str
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    end_session_endpoint: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class JwksStatus:
    """The state of one cache, for ``/readyz`` and the logs.

    ``state``: ``ok`` (the last fetch worked), ``degraded`` (the last fetch failed; cached
    keys still usable), ``unavailable`` (no usable key: every token from this provider is
    refused). Times are epoch seconds.
    """

    jwks_uri: str
    state: str
    n_keys: int
    last_success: float | None
    last_attempt: float | None
    keys_usable_until: float | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"jwks_uri": self.jwks_uri, "state": self.state, "n_keys": self.n_keys,
                "last_success": self.last_success, "last_attempt": self.last_attempt,
                "keys_usable_until": self.keys_usable_until, "last_error": self.last_error}


def http_fetch(url: str, timeout_s: float) -> bytes:
    """GET ``url`` (TLS verified, redirects not followed) and return at most
    ``MAX_DOCUMENT_BYTES`` of body; raises ``JwksError`` on any failure."""
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
            with client.stream("GET", url, headers={"Accept": "application/json"}) as resp:
                if resp.status_code != 200:
                    raise JwksError(f"{url}: HTTP {resp.status_code}")
                chunks, size = [], 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > MAX_DOCUMENT_BYTES:
                        raise JwksError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise JwksError(f"{url}: {type(exc).__name__}: {exc}") from None


def _json_object(body: bytes, url: str) -> dict[str, Any]:
    if len(body) > MAX_DOCUMENT_BYTES:
        raise JwksError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        data = json.loads(body)
    except ValueError:
        raise JwksError(f"{url}: not JSON") from None
    if not isinstance(data, dict):
        raise JwksError(f"{url}: expected a JSON object")
    return data


def discover(issuer: str, fetch: Fetch = http_fetch, timeout_s: float = 5.0) -> ProviderMetadata:
    """OpenID Connect discovery: read ``<issuer>/.well-known/openid-configuration``.

    The document's ``issuer`` must equal ``issuer`` exactly (OpenID Connect Discovery 1.0,
    section 4.3: otherwise a provider could speak for another); ``jwks_uri`` is required.
    Raises ``JwksError`` naming what is wrong.
    """
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    data = _json_object(fetch(url, timeout_s), url)
    if data.get("issuer") != issuer:
        raise JwksError(f"{url}: the document names issuer {data.get('issuer')!r}, not {issuer!r}")
    jwks_uri = data.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise JwksError(f"{url}: no jwks_uri")

    def text(name: str) -> str | None:
        value = data.get(name)
        return value if isinstance(value, str) and value else None

    return ProviderMetadata(issuer=issuer, jwks_uri=jwks_uri, authorization_endpoint=text("authorization_endpoint"),
                            token_endpoint=text("token_endpoint"), end_session_endpoint=text("end_session_endpoint"),
                            raw=data)


def parse_jwks(body: bytes, url: str = "JWKS") -> dict[str, Key]:
    """The usable signing keys of a JWKS document, by key id (``""`` for a key without one).

    Keeps RSA, EC and OKP keys whose ``use`` is absent or ``sig``; skips (and logs) the
    others, symmetric keys included. Raises ``JwksError`` when the document is not a JWKS.
    """
    data = _json_object(body, url)
    entries = data.get("keys")
    if not isinstance(entries, list):
        raise JwksError(f"{url}: no 'keys' list")
    keys: dict[str, Key] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        kind = _KEY_TYPES.get(entry.get("kty", ""))
        if kind is None or entry.get("use", "sig") != "sig" or "d" in entry:
            logger.warning("%s: key %d (kty=%r, use=%r) skipped: not a public asymmetric signing key",
                           url, i, entry.get("kty"), entry.get("use"))
            continue
        try:
            key = kind.import_key(entry)
        except (JoseError, ValueError, TypeError) as exc:
            logger.warning("%s: key %d skipped: %s", url, i, exc)
            continue
        keys[str(entry.get("kid", ""))] = key
    return keys


class JwksCache:
    """The keys of one JWKS URL; thread-safe. See the module docstring for the rules."""

    def __init__(self, jwks_uri: str, *, fetch: Fetch = http_fetch, refresh_interval_s: float = 300.0,
                 min_refetch_interval_s: float = 30.0, key_lifetime_s: float = 86400.0, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.time):
        self.jwks_uri = jwks_uri
        self._fetch = fetch
        self.refresh_interval_s = refresh_interval_s
        self.min_refetch_interval_s = min_refetch_interval_s
        self.key_lifetime_s = key_lifetime_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._fetching = threading.Lock()  # one fetch at a time; others wait for its result
        #: kid -> (key, last time a successful fetch listed it)
        self._keys: dict[str, tuple[Key, float]] = {}
        self._last_success: float | None = None
        self._last_attempt: float | None = None
        self._last_error: str | None = None
        self._background: threading.Thread | None = None

    # ---------------------------------------------------------------- lookups
    def get_key(self, kid: str | None) -> Key | None:
        """The cached, still usable key with this id, or None. Never waits for the network;
        starts a background refresh when the set is due one (or was never fetched)."""
        self._refresh_in_background_if_due()
        now = self._clock()
        keys = self._keys  # replaced whole by a fetch, never changed in place: no lock needed to read
        if kid is None or kid == "":
            usable = [key for key, seen in keys.values() if now < seen + self.key_lifetime_s]
            return usable[0] if len(usable) == 1 else None
        entry = keys.get(kid)
        return entry[0] if entry is not None and now < entry[1] + self.key_lifetime_s else None

    def key_for(self, kid: str | None) -> Key:
        """The key with this id: cached, else after one refresh (if the last attempt is older
        than ``min_refetch_interval_s``). Blocks up to ``timeout_s``; raises ``UnknownKeyError``."""
        key = self.get_key(kid)
        if key is None and self.refresh_for(kid):
            key = self.get_key(kid)
        if key is None:
            raise UnknownKeyError(self._unknown_message(kid))
        return key

    def refresh_for(self, kid: str | None) -> bool:
        """Fetch the set again because of an unknown key id, unless one was attempted less
        than ``min_refetch_interval_s`` ago. Returns True when the key is now known."""
        attempt = self._last_attempt
        if attempt is None or self._clock() - attempt >= self.min_refetch_interval_s:
            self.refresh(min_interval_s=self.min_refetch_interval_s)
        return self.get_key(kid) is not None

    def _unknown_message(self, kid: str | None) -> str:
        status = self.status()
        if status.state == "unavailable":
            return f"no signing key of the identity provider is available ({status.last_error or 'never fetched'})"
        if kid is None or kid == "":
            return "the token names no key id (kid) and the provider has several keys"
        return f"unknown signing key id {kid[:64]!r}"

    # ---------------------------------------------------------------- fetching
    def refresh(self, min_interval_s: float = 0.0) -> bool:
        """Fetch the set now (one fetch at a time: a caller arriving during a fetch waits for
        it and does not fetch again). Returns True on success; on failure the cached keys
        stay until their lifetime ends and the error is kept for ``status()``."""
        started = self._clock()
        with self._fetching:
            attempt = self._last_attempt
            if attempt is not None and attempt >= started - min_interval_s and min_interval_s > 0:
                return self._last_error is None  # someone else just fetched
            self._last_attempt = self._clock()
            try:
                keys = parse_jwks(self._fetch(self.jwks_uri, self.timeout_s), self.jwks_uri)
            except JwksError as exc:
                self._fail(str(exc))
                return False
            except Exception as exc:  # noqa: BLE001 - a custom fetch may raise anything
                self._fail(f"{self.jwks_uri}: {type(exc).__name__}: {exc}")
                return False
            now = self._clock()
            with self._lock:
                self._keys = {kid: (key, now) for kid, key in keys.items()}
                self._last_success = now
                self._last_error = None
            return True

    def _fail(self, message: str) -> None:
        with self._lock:
            self._last_error = message
        logger.warning("JWKS fetch failed, cached keys kept until their lifetime ends: %s", message)

    def _refresh_in_background_if_due(self) -> None:
        now = self._clock()
        attempt, success = self._last_attempt, self._last_success
        due = attempt is None or (
            now - (success or 0.0) >= self.refresh_interval_s and now - attempt >= self.min_refetch_interval_s)
        if not due or (self._background is not None and self._background.is_alive()):
            return
        if attempt is None and not self._keys:
            # Never fetched: the caller needs the keys now; key_for/refresh_for will fetch.
            return
        with self._lock:
            if self._background is not None and self._background.is_alive():
                return
            self._background = threading.Thread(target=self.refresh, kwargs={"min_interval_s": 0.0},
                                                name="jwks-refresh", daemon=True)
            self._background.start()

    # ---------------------------------------------------------------- status
    def status(self) -> JwksStatus:
        now = self._clock()
        with self._lock:
            usable = [seen for _, seen in self._keys.values() if now < seen + self.key_lifetime_s]
            error = self._last_error
            state = "unavailable" if not usable else ("degraded" if error else "ok")
            return JwksStatus(jwks_uri=self.jwks_uri, state=state, n_keys=len(usable),
                              last_success=self._last_success, last_attempt=self._last_attempt,
                              keys_usable_until=(max(usable) + self.key_lifetime_s) if usable else None,
                              last_error=error)


def discovered_cache(issuer: str, **options: Any) -> JwksCache:
    """The process's cache of ``issuer``'s keys found by discovery at every fetch (the
    ``jwks_uri`` may move; a provider down at start is found when it is back). Keyed, and
    shown in ``status()``, by the discovery document's URL."""
    fetch = options.pop("fetch", http_fetch)

    def fetch_discovered(url: str, timeout_s: float) -> bytes:
        return fetch(discover(issuer, fetch, timeout_s).jwks_uri, timeout_s)

    return cache_for(issuer.rstrip("/") + "/.well-known/openid-configuration", fetch=fetch_discovered, **options)


_CACHES: dict[str, JwksCache] = {}
_CACHES_LOCK = threading.Lock()


def cache_for(jwks_uri: str, **options: Any) -> JwksCache:
    """The process's cache for ``jwks_uri``, created on first use with ``options`` (the
    ``JwksCache`` keyword arguments); later calls return the same cache whatever they pass,
    so every verifier of one provider shares its keys and its refresh limits."""
    with _CACHES_LOCK:
        cache = _CACHES.get(jwks_uri)
        if cache is None:
            cache = _CACHES[jwks_uri] = JwksCache(jwks_uri, **options)
        return cache


def forget_caches() -> None:
    """Drop every shared cache (tests)."""
    with _CACHES_LOCK:
        _CACHES.clear()
