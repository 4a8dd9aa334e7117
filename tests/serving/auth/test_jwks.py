"""The JWKS cache (serving.auth.jwks) against a real HTTP server on 127.0.0.1: discovery,
caching, refresh on an unknown key id (rate-limited), keys kept while the provider is down
until their lifetime ends, fail-closed lookups, and only public asymmetric signing keys."""

from __future__ import annotations

import time

import pytest
from jwks_server import JwksServer, ec_key, rsa_key

from serving.auth.jwks import (JwksCache, JwksError, UnknownKeyError, cache_for, discover, forget_caches, http_fetch,
                               parse_jwks)


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def server():
    with JwksServer() as s:
        s.keys = [rsa_key("k1")]
        yield s


def _cache(server, clock=None, **kw):
    return JwksCache(server.jwks_uri, clock=clock or Clock(), **kw)


def test_discovery_finds_the_jwks_uri_and_checks_the_issuer(server):
    meta = discover(server.issuer)
    assert meta.jwks_uri == server.jwks_uri
    assert meta.token_endpoint == server.issuer + "/token"
    server.issuer_override = "https://someone-else.example"
    with pytest.raises(JwksError, match="names issuer 'https://someone-else.example'"):
        discover(server.issuer)


def test_keys_are_fetched_once_and_cached(server):
    cache = _cache(server)
    key = cache.key_for("k1")
    assert key.kid == "k1"
    assert cache.key_for("k1") is key
    assert server.hits == 1
    assert cache.status().state == "ok" and cache.status().n_keys == 1


def test_an_unknown_key_id_refetches_the_set_once(server):
    clock = Clock()
    cache = _cache(server, clock)
    cache.key_for("k1")
    server.keys.append(rsa_key("k2"))  # the provider rotates: publishes k2, then signs with it
    clock.t += 31  # past the minimum refetch interval (30 s)
    assert cache.key_for("k2").kid == "k2"
    assert server.hits == 2


def test_invented_key_ids_cannot_make_the_service_hammer_the_provider(server):
    clock = Clock()
    cache = _cache(server, clock, min_refetch_interval_s=30)
    cache.key_for("k1")
    for i in range(20):
        with pytest.raises(UnknownKeyError, match="unknown signing key id"):
            cache.key_for(f"invented-{i}")
        clock.t += 1  # 20 tries over 20 s: at most one refetch
    assert server.hits == 1
    clock.t += 15
    with pytest.raises(UnknownKeyError):
        cache.key_for("invented-again")
    assert server.hits == 2


def test_cached_keys_outlive_an_unreachable_provider_until_their_lifetime_ends(server):
    clock = Clock()
    cache = _cache(server, clock, refresh_interval_s=300, key_lifetime_s=3600)
    cache.key_for("k1")
    server.up = False
    clock.t += 301
    assert cache.refresh() is False
    status = cache.status()
    assert status.state == "degraded" and "HTTP 503" in status.last_error
    assert cache.key_for("k1").kid == "k1"  # still trusted
    assert status.keys_usable_until == pytest.approx(1_000_000.0 + 3600)
    clock.t = 1_000_000.0 + 3600  # the lifetime is over
    with pytest.raises(UnknownKeyError, match="no signing key of the identity provider is available"):
        cache.key_for("k1")
    assert cache.status().state == "unavailable"
    server.up = True
    clock.t += 31
    assert cache.key_for("k1").kid == "k1"  # back once the provider answers
    assert cache.status().state == "ok"


def test_a_key_the_provider_stops_listing_is_dropped_at_the_next_fetch(server):
    cache = _cache(server)
    cache.key_for("k1")
    server.keys = [rsa_key("k2")]
    assert cache.refresh()
    assert cache.get_key("k1") is None
    with pytest.raises(UnknownKeyError):
        cache.key_for("k1")


def test_the_set_is_refreshed_in_the_background_without_making_the_request_wait(server):
    clock = Clock()
    cache = _cache(server, clock, refresh_interval_s=300)
    cache.key_for("k1")
    server.keys.append(ec_key("k2"))
    clock.t += 301
    assert cache.get_key("k1") is not None  # answered from the cache at once
    deadline = time.monotonic() + 10
    while cache.get_key("k2") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cache.get_key("k2").kid == "k2"
    assert server.hits == 2


def test_only_public_asymmetric_signing_keys_are_kept(server):
    private = rsa_key("private").as_dict(private=True)
    server.extra = [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},  # a symmetric key: never
        {**rsa_key("enc").as_dict(private=False), "use": "enc"},
        private,  # a private key published by mistake: not used
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
    ]
    cache = _cache(server)
    assert cache.key_for("k1").kid == "k1"
    for kid in ("hmac", "enc", "private", "broken"):
        assert cache.get_key(kid) is None
    assert cache.status().n_keys == 1


def test_a_token_without_a_key_id_matches_only_a_single_key(server):
    cache = _cache(server)
    assert cache.key_for(None).kid == "k1"
    server.keys.append(rsa_key("k2"))
    cache.refresh()
    with pytest.raises(UnknownKeyError, match="names no key id"):
        cache.key_for(None)


def test_documents_that_are_not_a_key_set_are_refused():
    with pytest.raises(JwksError, match="no 'keys' list"):
        parse_jwks(b'{"issuer": "x"}')
    with pytest.raises(JwksError, match="not JSON"):
        parse_jwks(b"<html>")
    with pytest.raises(JwksError, match="larger than"):
        parse_jwks(b'{"keys": []' + b" " * 300_000 + b"}")


def test_an_unreachable_provider_is_a_clear_error():
    with pytest.raises(JwksError, match="127.0.0.1:9"):
        http_fetch("http://127.0.0.1:9/jwks", 2.0)
    cache = JwksCache("http://127.0.0.1:9/jwks", timeout_s=2.0)
    with pytest.raises(UnknownKeyError, match="no signing key of the identity provider is available"):
        cache.key_for("k1")
    assert cache.status().state == "unavailable"


def test_one_cache_per_url_is_shared(server):
    forget_caches()
    try:
        a = cache_for(server.jwks_uri)
        assert cache_for(server.jwks_uri) is a
        assert cache_for(server.issuer + "/other") is not a
    finally:
        forget_caches()
