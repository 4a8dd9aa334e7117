"""Token checks (serving.auth.tokens) in the fast tier, against keys served by a real HTTP
server on 127.0.0.1 (the full attack list against a real OpenID Provider is
tests/system/test_identity_provider.py): what is accepted, what each refusal is called,
the verified-token cache, the scope mapping."""

from __future__ import annotations

import time

import pytest
from joserfc import jwt
from jwks_server import JwksServer, rsa_key

from serving.auth.jwks import JwksCache
from serving.auth.tokens import IssuerConfig, KeyNotCached, TokenRefused, TokenVerifier

AUD = "https://refracture.test"


@pytest.fixture
def setup():
    with JwksServer() as server:
        key = rsa_key("k1")
        server.keys = [key]
        cache = JwksCache(server.jwks_uri)
        cache.refresh()
        issuer = IssuerConfig(issuer=server.issuer, audience=AUD, cache=cache,
                              scope_map={"refracture/predict": "predict", "refracture/explain": "explain"})
        yield server, key, TokenVerifier([issuer])


def _claims(server, **kw):
    now = int(time.time())
    base = {"iss": server.issuer, "aud": AUD, "sub": "nurse-7", "client_id": "refracture-ui", "iat": now,
            "exp": now + 300, "scope": "openid refracture/predict refracture/explain admin"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def _sign(key, claims, **header):
    return jwt.encode({"alg": "RS256", "kid": key.kid, **header}, claims, key)


def test_a_valid_user_token_maps_scopes_and_names_the_person(setup):
    server, key, verifier = setup
    v = verifier.verify(_sign(key, _claims(server)))
    assert v.client_id == "refracture-ui" and v.user_subject == "nurse-7"
    assert v.scopes == {"predict", "explain"}  # openid and admin are not the service's scopes
    system = verifier.verify(_sign(key, _claims(server, sub="ehr", client_id="ehr")))
    assert system.user_subject is None


def test_verified_tokens_are_cached_until_they_expire(setup, monkeypatch):
    server, key, verifier = setup
    token = _sign(key, _claims(server, exp=int(time.time()) + 2))
    first = verifier.verify(token)
    calls = []
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1))
    assert verifier.verify(token) is first and calls == []  # no second signature check
    monkeypatch.undo()
    verifier._clock = lambda: time.time() + 40  # past exp + leeway
    with pytest.raises(TokenRefused) as refused:
        verifier.verify(token)
    assert refused.value.reason == "expired"


# Times are taken when the test runs, not when it is collected (minutes apart on a busy machine).
@pytest.mark.parametrize("change, reason", [
    (lambda: dict(exp=int(time.time()) - 120), "expired"),
    (lambda: dict(nbf=int(time.time()) + 120), "not-yet-valid"),
    (lambda: dict(aud="https://other.test"), "audience"),
    (lambda: dict(iss="https://elsewhere.test"), "issuer"),
    (lambda: dict(exp=None), "claims"),
    (lambda: dict(client_id=None, sub=None, azp=None), "claims"),
], ids=["expired", "not-yet-valid", "audience", "issuer", "no-exp", "no-subject"])
def test_claims_refusals(setup, change, reason):
    server, key, verifier = setup
    with pytest.raises(TokenRefused) as refused:
        verifier.verify(_sign(key, _claims(server, **change())))
    assert refused.value.reason == reason


def test_structure_refusals(setup):
    server, key, verifier = setup
    with pytest.raises(TokenRefused, match="longer than 8192"):
        verifier.verify("x" * 9000)
    with pytest.raises(TokenRefused) as refused:
        verifier.verify("eyJhbGciOiJub25lIn0.e30.")  # {"alg":"none"}.{}
    assert refused.value.reason == "algorithm"
    with pytest.raises(TokenRefused) as refused:
        verifier.verify("not-a.jwt.at-all!")
    assert refused.value.reason == "malformed"
    with pytest.raises(TokenRefused) as refused:
        verifier.verify(_sign(key, _claims(server), typ="JWE"))
    assert refused.value.reason == "malformed"


def test_an_unknown_key_asks_for_a_refresh_first_then_fails_closed(setup):
    server, key, verifier = setup
    other = rsa_key("k2")
    token = _sign(other, _claims(server))
    with pytest.raises(KeyNotCached):
        verifier.verify(token)
    with pytest.raises(TokenRefused) as refused:
        verifier.verify(token, refreshed=True)  # the provider does not publish k2
    assert refused.value.reason == "unknown-key" and not isinstance(refused.value, KeyNotCached)
    server.keys.append(other)  # now it does (rotation); the refresh allowed 30 s later finds it
    verifier.issuers[server.issuer].cache._last_attempt -= 31
    assert verifier.verify(token, refreshed=True).client_id == "refracture-ui"
