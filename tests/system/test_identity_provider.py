"""Bearer tokens from a real OpenID Provider (oidc-provider on Node, started on 127.0.0.1 by
tests/support/oidc_provider.py) through the guard and its default authenticator
(serving.http.identity): a hospital system's client-credentials token (private_key_jwt) is
accepted with its scopes; every token attack is refused with 401 (a token for another scope
with 403) and audited with its reason; a provider gone down keeps the cached keys working
and /readyz says so."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from asgi_calls import Recorder, bearer, call
from joserfc.jwk import RSAKey
from oidc_provider import SYSTEM_CLIENT, OidcProvider, node_available

from serving.auth.clients import add_client, revoke, write_registry
from serving.auth.jwks import forget_caches
from serving.config import OidcSettings, ServingSettings
from serving.http.guard import GuardMiddleware

pytestmark = pytest.mark.skipif(not node_available(), reason="Node.js and npm are needed for the OpenID Provider")


@pytest.fixture(scope="module")
def idp():
    forget_caches()
    with OidcProvider() as provider:
        yield provider
    forget_caches()


def _settings(tmp_path, idp, **oidc):
    return ServingSettings(api_key=None, audit_salt=b"salt", audit_salt_is_random=False,
                           audit_log_path=tmp_path / "audit.jsonl", clients_file=tmp_path / "clients.json",
                           oidc=OidcSettings(issuer=idp.issuer, audience=idp.audience, **oidc))


def _guard(tmp_path, idp, **oidc):
    app = Recorder()
    return GuardMiddleware(app, settings=_settings(tmp_path, idp, **oidc)), app


def _audit(tmp_path) -> dict:
    return json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])


def _b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_system_token_from_the_provider_is_accepted_with_its_scopes(tmp_path, idp):
    guard, app = _guard(tmp_path, idp)
    token = idp.system_token()["access_token"]
    start, _ = call(guard, "/predict", bearer(token))
    assert start["status"] == 200
    caller = app.states[-1]["caller"]
    assert caller.client == SYSTEM_CLIENT and caller.method == "client-token"
    assert caller.scopes == {"predict", "explain", "model:read"} and caller.subject_hash is None
    line = _audit(tmp_path)
    assert line["client"] == SYSTEM_CLIENT and line["auth_method"] == "client-token" and line["auth"] == "ok"
    assert token not in (tmp_path / "audit.jsonl").read_text()
    # A token with only the predict scope may predict but not explain: 403, insufficient_scope.
    narrow = idp.system_token("predict")["access_token"]
    assert call(guard, "/predict", bearer(narrow))[0]["status"] == 200
    start, body = call(guard, "/explain", bearer(narrow))
    assert start["status"] == 403 and "needs the scope 'explain'" in json.loads(body)["error"]
    assert b'error="insufficient_scope", scope="explain"' in dict(start["headers"])[b"www-authenticate"]
    assert _audit(tmp_path)["auth"] == "scope" and _audit(tmp_path)["client"] == SYSTEM_CLIENT
    # /metrics needs metrics:read, which the system was not given.
    assert call(guard, "/metrics", bearer(token), method="GET")[0]["status"] == 403


def _attacks(idp) -> dict[str, tuple[str, str]]:
    """name -> (token, audited reason)."""
    now = int(time.time())
    real = idp.system_token()["access_token"]
    head, payload, signature = real.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    public_pem = idp.signing_key.as_pem(private=False)
    hs_input = f"{_b64({'alg': 'HS256', 'typ': 'at+jwt', 'kid': idp.signing_key.kid})}.{_b64(claims)}"
    hs_signature = _b64(hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest())
    stranger = RSAKey.generate_key(2048, parameters={"kid": "attacker-1"})
    return {
        "alg none": (f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{_b64(claims)}.", "algorithm"),
        "HMAC with the provider's public key": (f"{hs_input}.{hs_signature}", "algorithm"),
        "expired": (idp.sign(idp.claims(iat=now - 900, exp=now - 300)), "expired"),
        "not yet valid": (idp.sign(idp.claims(nbf=now + 300)), "not-yet-valid"),
        "wrong issuer": (idp.sign(idp.claims(iss="https://idp.elsewhere.example")), "issuer"),
        "wrong audience": (idp.sign(idp.claims(aud="https://another-service.example")), "audience"),
        "unknown key id": (idp.sign(idp.claims(), key=stranger), "unknown-key"),
        "tampered payload": (f"{head}.{_b64({**claims, 'scope': 'predict explain model:read metrics:read'})}"
                             f".{signature}", "signature"),
        "oversized": (idp.sign(idp.claims(padding="x" * 9000)), "too-large"),
        "no expiry": (idp.sign(idp.claims(exp=None)), "claims"),
        "garbage": ("a.b.c", "malformed"),
    }


def test_every_token_attack_is_refused_with_401_and_audited(tmp_path, idp):
    guard, app = _guard(tmp_path, idp)
    for name, (token, reason) in _attacks(idp).items():
        start, body = call(guard, "/predict", bearer(token))
        assert start["status"] == 401, name
        assert b'error="invalid_token"' in dict(start["headers"])[b"www-authenticate"], name
        line = _audit(tmp_path)
        assert line["auth"] == reason and line["status"] == 401, (name, line["auth"])
        assert token[:40] not in json.loads(body)["error"], name
    assert app.states == []  # none reached the endpoint


def test_the_leeway_is_30_seconds(tmp_path, idp):
    guard, _ = _guard(tmp_path, idp)
    now = int(time.time())
    assert call(guard, "/predict", bearer(idp.sign(idp.claims(exp=now - 10))))[0]["status"] == 200
    assert call(guard, "/predict", bearer(idp.sign(idp.claims(nbf=now + 10))))[0]["status"] == 200
    assert call(guard, "/predict", bearer(idp.sign(idp.claims(exp=now - 45))))[0]["status"] == 401


def test_a_registered_client_is_capped_and_can_be_revoked(tmp_path, idp):
    clients, _ = add_client((), "ehr", ["predict"], oauth_client_id=SYSTEM_CLIENT, rate_limit_per_s=1, burst=2)
    write_registry(tmp_path / "clients.json", clients)
    guard, app = _guard(tmp_path, idp)
    token = idp.system_token()["access_token"]
    assert call(guard, "/predict", bearer(token))[0]["status"] == 200
    assert app.states[-1]["caller"].client == "ehr" and app.states[-1]["caller"].scopes == {"predict"}
    assert call(guard, "/explain", bearer(token))[0]["status"] == 403  # the registry caps the token's scopes
    start, _ = call(guard, "/predict", bearer(token))  # the third within a second: over the burst of 2
    assert start["status"] == 429 and int(dict(start["headers"])[b"retry-after"]) >= 1
    write_registry(tmp_path / "clients.json", revoke(clients, "ehr"))
    time.sleep(1.1)
    assert call(guard, "/predict", bearer(token))[0]["status"] == 401
    assert _audit(tmp_path)["auth"] == "revoked"


def test_registered_only_refuses_other_clients_of_the_provider(tmp_path, idp):
    guard, _ = _guard(tmp_path, idp, registered_only=True)
    assert call(guard, "/predict", bearer(idp.system_token()["access_token"]))[0]["status"] == 401
    assert _audit(tmp_path)["auth"] == "unregistered"


def test_a_rotated_provider_key_is_fetched_and_a_provider_gone_down_is_survived(tmp_path):
    forget_caches()
    try:
        with OidcProvider() as idp:
            guard, _ = _guard(tmp_path, idp)
            token = idp.system_token()["access_token"]
            assert call(guard, "/predict", bearer(token))[0]["status"] == 200
            ready = json.loads(call(guard, "/readyz", method="GET")[1])["identity"]
            assert ready["state"] == "ok"
        # The provider is down now: the cached key keeps working, readiness says degraded.
        cache = guard.identity.verifier.issuers[idp.issuer].cache
        cache.refresh()
        assert call(guard, "/predict", bearer(token))[0]["status"] == 200
        ready = json.loads(call(guard, "/readyz", method="GET")[1])["identity"]
        assert ready["state"] == "degraded" and ready["providers"][0]["n_keys"] == 1
    finally:
        forget_caches()
