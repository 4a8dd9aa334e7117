"""The CDS client's signed JWT (serving.cds_hooks.client_auth): every refusal CDS Hooks 2.0 asks
for, named, and the keys fetched from a real JWK Set URL (an HTTP server on loopback) through
the service's key cache (serving.auth.jwks)."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cds_support import ISSUER, PUBLIC_URL, SERVICE_PATH, CdsClientKeys
from joserfc import jwt
from joserfc.jwk import OctKey

from serving.auth.jwks import JwksCache
from serving.cds_hooks.client_auth import CdsClientAuthenticator, ReplayCache
from serving.cds_hooks.settings import CdsClient, CdsSettings
from serving.http.callers import Caller, Refusal


def _scope(token: str | None, path: str = SERVICE_PATH) -> dict:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


def _settings(*clients: CdsClient, insecure_dev: bool = False) -> CdsSettings:
    return CdsSettings(public_url=PUBLIC_URL, clients=clients, insecure_dev=insecure_dev)


@pytest.fixture(scope="module")
def keys():
    return CdsClientKeys()


@pytest.fixture
def auth(keys):
    client = CdsClient(name="ehr", issuer=ISSUER, jwks=keys.jwks())
    return CdsClientAuthenticator(_settings(client))


def _refusal(result, reason: str) -> Refusal:
    assert isinstance(result, Refusal), result
    assert (result.status, result.reason) == (401, reason), result
    assert "Bearer" in result.www_authenticate
    return result


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_a_valid_token_is_the_configured_client(auth, keys):
    caller = auth.authenticate(_scope(keys.token()))
    assert isinstance(caller, Caller) and caller.client == "ehr" and caller.method == "cds-jwt"
    # Discovery has its own audience, with or without a trailing slash on the path.
    assert isinstance(auth.authenticate(_scope(keys.token("/cds-services"), "/cds-services/")), Caller)
    # aud may be an array holding this URL (RFC 7519; CDS Hooks 2.0).
    assert isinstance(auth.authenticate(_scope(keys.token(aud=["https://other.example", PUBLIC_URL + SERVICE_PATH]))),
                      Caller)


def test_rs384_tokens_are_accepted_too():
    rsa = CdsClientKeys("RS384", kid="rsa-1")
    auth = CdsClientAuthenticator(_settings(CdsClient(name="rs", issuer=ISSUER, jwks=rsa.jwks())))
    assert isinstance(auth.authenticate(_scope(rsa.token())), Caller)


def test_a_replayed_token_is_refused(auth, keys):
    token = keys.token()
    assert isinstance(auth.authenticate(_scope(token)), Caller)
    r = _refusal(auth.authenticate(_scope(token)), "replay")
    assert "jti" in r.message and token not in r.message


def test_expired_wrong_audience_and_missing_claims_are_refused(auth, keys):
    now = int(time.time())
    _refusal(auth.authenticate(_scope(keys.token(exp=now - 120, iat=now - 420))), "expired")
    r = _refusal(auth.authenticate(_scope(keys.token(aud="https://elsewhere.example/cds-services/refracture-risk"))),
                 "audience")
    assert PUBLIC_URL + SERVICE_PATH in r.message
    # A token for discovery does not open the service, nor the reverse.
    _refusal(auth.authenticate(_scope(keys.token("/cds-services"))), "audience")
    _refusal(auth.authenticate(_scope(keys.token(exp=None))), "exp")
    _refusal(auth.authenticate(_scope(keys.token(iat=None))), "iat")
    _refusal(auth.authenticate(_scope(keys.token(jti=None))), "jti")
    _refusal(auth.authenticate(_scope(keys.token(iat=now + 600))), "iat")
    _refusal(auth.authenticate(_scope(keys.token(exp=now + 86400))), "lifetime")


def test_unknown_issuer_unknown_key_and_foreign_signature_are_refused(auth, keys):
    _refusal(auth.authenticate(_scope(keys.token(iss="https://stranger.example"))), "issuer")
    _refusal(auth.authenticate(_scope(CdsClientKeys(kid="other-key").token())), "kid")
    # Same kid, another key pair: the signature does not verify.
    _refusal(auth.authenticate(_scope(CdsClientKeys().token())), "signature")
    # A token whose payload was changed after signing.
    head, _, sig = keys.token().split(".")
    forged = _b64({"iss": ISSUER, "aud": PUBLIC_URL + SERVICE_PATH, "exp": int(time.time()) + 60,
                   "iat": int(time.time()), "jti": "forged"})
    _refusal(auth.authenticate(_scope(f"{head}.{forged}.{sig}")), "signature")


def test_alg_none_and_symmetric_algorithms_are_refused(auth, keys):
    claims = {"iss": ISSUER, "aud": PUBLIC_URL + SERVICE_PATH, "exp": int(time.time()) + 60, "iat": int(time.time()),
              "jti": "n1"}
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': keys.kid})}.{_b64(claims)}."
    assert "none" in _refusal(auth.authenticate(_scope(unsigned)), "alg-none").message
    hmac_key = OctKey.generate_key(256, parameters={"kid": keys.kid})
    hs = jwt.encode({"alg": "HS256", "typ": "JWT", "kid": keys.kid}, claims, hmac_key, algorithms=["HS256"])
    assert "symmetric" in _refusal(auth.authenticate(_scope(hs)), "alg").message


def test_malformed_missing_and_header_problems_are_refused(auth, keys):
    _refusal(auth.authenticate(_scope(None)), "missing")
    _refusal(auth.authenticate(_scope("not-a-jwt")), "malformed")
    _refusal(auth.authenticate(_scope("a.b.c")), "malformed")
    _refusal(auth.authenticate(_scope(keys.token(header={"kid": ""}))), "kid")
    _refusal(auth.authenticate(_scope(keys.token(header={"typ": "at+jwt"}))), "typ")
    # jku naming a URL that is not this issuer's JWK Set is never fetched: refused.
    _refusal(auth.authenticate(_scope(keys.token(header={"jku": "https://attacker.example/jwks"}))), "jku")


def test_no_configured_client_refuses_everyone_unless_insecure_dev(keys):
    r = _refusal(CdsClientAuthenticator(_settings()).authenticate(_scope(keys.token())), "no-clients")
    assert "REFRACTURE_CDS_CLIENTS" in r.message
    dev = CdsClientAuthenticator(_settings(insecure_dev=True)).authenticate(_scope(None))
    assert isinstance(dev, Caller) and dev.method == "insecure-dev"


def test_the_replay_cache_forgets_expired_tokens_and_refuses_when_full():
    cache = ReplayCache(max_entries=2)
    assert cache.first_use("i", "a", exp=100, now=50) is True
    assert cache.first_use("i", "a", exp=100, now=60) is False
    assert cache.first_use("other-issuer", "a", exp=100, now=60) is True  # jti is per issuer
    assert cache.first_use("i", "b", exp=100, now=60) is None  # full of live tokens
    assert cache.first_use("i", "b", exp=500, now=400) is True  # the expired ones were dropped


class _JwksServer:
    """A JWK Set served over HTTP on loopback; ``keys`` can change; ``hits`` counts fetches."""

    def __init__(self, jwks: dict):
        self.jwks, self.hits, self.status = jwks, 0, 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                outer.hits += 1
                body = json.dumps(outer.jwks).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_keys_are_fetched_from_the_jwks_url_refreshed_for_a_new_kid_and_fail_closed(keys):
    server = _JwksServer(keys.jwks())
    clock = [1000.0]
    try:
        client = CdsClient(name="ehr", issuer=ISSUER, jwks_url=server.url)
        auth = CdsClientAuthenticator(_settings(client), key_cache=lambda url: JwksCache(url, clock=lambda: clock[0]))
        auth.warm()
        assert server.hits == 1
        assert isinstance(auth.authenticate(_scope(keys.token(header={"jku": server.url}))), Caller)
        assert isinstance(auth.authenticate(_scope(keys.token())), Caller)
        assert server.hits == 1  # cached
        # The client rotates its key: a token with the new kid makes the service fetch again.
        rotated = CdsClientKeys(kid="test-key-2")
        server.jwks = {"keys": [*keys.jwks()["keys"], *rotated.jwks()["keys"]]}
        clock[0] += 31
        assert isinstance(auth.authenticate(_scope(rotated.token())), Caller)
        assert server.hits == 2
        # Random kids do not make it fetch again and again (at most every 30 s).
        for i in range(5):
            _refusal(auth.authenticate(_scope(CdsClientKeys(kid=f"random-{i}").token())), "kid")
        assert server.hits == 2
    finally:
        server.close()
    # The JWK Set URL down from the start: nothing is accepted.
    down = CdsClientAuthenticator(_settings(CdsClient(name="ehr", issuer=ISSUER, jwks_url=server.url)),
                                  key_cache=lambda url: JwksCache(url, timeout_s=1.0))
    _refusal(down.authenticate(_scope(keys.token())), "keys")
