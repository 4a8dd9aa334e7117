"""The client registry (serving.auth.clients) and rate limits (serving.auth.limits): keys
stored only as hashes, scopes and expiry, rotation and revocation, a change picked up by a
running service without a restart (and an invalid change ignored), token buckets."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from asgi_calls import Recorder, bearer, call

from serving.auth.clients import (ClientRegistry, RegistryError, add_client, default_client, key_hash, parse_registry,
                                  read_registry, revoke, rotate_key, write_registry)
from serving.auth.limits import RateLimit, RateLimiter
from serving.config import ServingSettings
from serving.http.guard import GuardMiddleware

NOW = dt.datetime.now(dt.timezone.utc)


def test_a_new_key_is_stored_only_as_its_hash(tmp_path):
    path = tmp_path / "clients.json"
    clients, key = add_client((), "ris", ["predict"])
    write_registry(path, clients)
    text = path.read_text()
    assert key.startswith("rr_") and len(key) > 40 and key not in text
    assert key_hash(key) in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    registry = ClientRegistry(path)
    match = registry.check_key(key)
    assert match.reason is None and match.client.name == "ris" and match.client.scopes == {"predict"}
    assert registry.check_key(key + "x").reason == "wrong"


def test_rotation_keeps_the_old_key_until_it_is_revoked(tmp_path):
    clients, old = add_client((), "ris", ["predict", "explain"])
    clients, new, new_id = rotate_key(clients, "ris")
    registry = ClientRegistry(None, extra_clients=clients)
    assert registry.check_key(old).reason is None and registry.check_key(new).reason is None
    old_id = next(k.id for k in clients[0].keys if k.id != new_id)
    clients = revoke(clients, "ris", old_id)
    registry = ClientRegistry(None, extra_clients=clients)
    assert registry.check_key(old).reason == "revoked" and registry.check_key(new).reason is None
    clients = revoke(clients, "ris")
    assert ClientRegistry(None, extra_clients=clients).check_key(new).reason == "revoked"


def test_an_expired_client_is_refused():
    clients, key = add_client((), "old", ["predict"], expires=NOW - dt.timedelta(seconds=1))
    assert ClientRegistry(None, extra_clients=clients).check_key(key).reason == "expired"


def test_invalid_registries_name_the_client_and_field():
    with pytest.raises(RegistryError, match="client 'ris'.scopes"):
        parse_registry(json.dumps({"version": 1, "clients": [{"name": "ris", "scopes": ["admin"]}]}))
    with pytest.raises(RegistryError, match="listed twice"):
        parse_registry(json.dumps({"version": 1, "clients": [{"name": "a", "scopes": []}, {"name": "a", "scopes": []}]}))
    with pytest.raises(RegistryError, match="exists already"):
        add_client(add_client((), "ris", ["predict"])[0], "ris", ["predict"])
    with pytest.raises(RegistryError, match="not a valid client name"):
        add_client((), "default", ["predict"])
    with pytest.raises(RegistryError, match="not an ISO 8601 time"):
        parse_registry(json.dumps({"version": 1, "clients": [{"name": "a", "scopes": [], "expires": "soon"}]}))
    with pytest.raises(RegistryError, match="no client 'nobody'"):
        revoke((), "nobody")


def _guard(tmp_path, path):
    settings = ServingSettings(api_key="k" * 32, audit_salt=b"s", audit_salt_is_random=False,
                               audit_log_path=tmp_path / "audit.jsonl", clients_file=path)
    return GuardMiddleware(Recorder(), settings=settings)


def test_the_service_picks_up_a_change_within_seconds_and_keeps_the_last_good_registry(tmp_path):
    path = tmp_path / "clients.json"
    clients, key = add_client((), "ris", ["predict"])
    write_registry(path, clients)
    guard = _guard(tmp_path, path)
    assert call(guard, "/predict", bearer(key))[0]["status"] == 200
    assert call(guard, "/explain", bearer(key))[0]["status"] == 403  # scope
    assert call(guard, "/predict", bearer("k" * 32))[0]["status"] == 200  # REFRACTURE_API_KEY: "default"
    write_registry(path, revoke(clients, "ris"))
    started = time.monotonic()
    while call(guard, "/predict", bearer(key))[0]["status"] == 200:
        assert time.monotonic() - started < 5, "a revoked key was still accepted after 5 s"
        time.sleep(0.05)
    line = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert line["status"] == 401 and line["auth"] == "revoked" and line["client"] is None
    # A broken file is not a reason to let anyone in, nor to lose the registry.
    clients2, key2 = add_client((), "lab", ["predict"])
    write_registry(path, clients2)
    time.sleep(1.1)
    assert call(guard, "/predict", bearer(key2))[0]["status"] == 200
    path.write_text("{ not json")
    time.sleep(1.1)
    assert call(guard, "/predict", bearer(key2))[0]["status"] == 200
    assert guard.identity.status()["registry_error"].startswith(str(path))
    with pytest.raises(RegistryError):
        read_registry(path)


def test_the_default_client_has_every_scope():
    client = default_client("k" * 32)
    assert client.name == "default" and client.scopes == {"predict", "explain", "model:read", "metrics:read"}


def test_token_buckets_allow_the_burst_then_the_rate():
    clock = [0.0]
    limiter = RateLimiter(clock=lambda: clock[0])
    limit = RateLimit.of(2.0, 3)
    assert [limiter.take("a", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a", limit)
    assert wait == pytest.approx(0.5)
    assert limiter.take("b", limit) == 0.0  # another client is not affected
    clock[0] += 0.5
    assert limiter.take("a", limit) == 0.0
    assert limiter.take("a", None) == 0.0  # unlimited
    assert RateLimit.of(2.5, None).burst == 3 and RateLimit.of(None, 5) is None
