"""CDS Hooks settings (serving.cds_hooks.settings): read once, every mistake refused at start
with the variable and the fix named."""

from __future__ import annotations

import json

import pytest
from cds_support import ISSUER, CdsClientKeys, clients_file

from modelstore.errors import ConfigError
from serving.cds_hooks.settings import CdsSettings


def _env(tmp_path, clients, **extra):
    path = tmp_path / "clients.json"
    path.write_text(json.dumps(clients) if not isinstance(clients, str) else clients)
    return {"REFRACTURE_CDS_CLIENTS": str(path), "REFRACTURE_PUBLIC_URL": "https://risk.example", **extra}


def test_a_clients_file_with_inline_keys_or_a_jwks_url(tmp_path):
    keys = CdsClientKeys()
    path = clients_file(tmp_path, {"name": "a", "issuer": ISSUER, "jwks": keys.jwks()},
                        {"name": "b", "issuer": "https://b.example", "jwks_url": "https://b.example/jwks.json",
                         "fhir_servers": ["https://b.example/fhir"]})
    s = CdsSettings.from_env({"REFRACTURE_CDS_CLIENTS": str(path), "REFRACTURE_PUBLIC_URL": "https://risk.example/",
                              "REFRACTURE_CDS_CORS_ORIGINS": "https://sandbox.cds-hooks.org, http://localhost:3000"})
    assert s.public_url == "https://risk.example" and set(s.by_issuer) == {ISSUER, "https://b.example"}
    assert s.cors_origins == ("https://sandbox.cds-hooks.org", "http://localhost:3000")
    assert s.card_source_url == "https://risk.example/model"
    b = s.by_issuer["https://b.example"]
    assert b.may_use("https://b.example/fhir/") and not b.may_use("https://b.example/fhirx")
    assert s.by_issuer[ISSUER].may_use("https://any.example/fhir")  # no list: any https server


@pytest.mark.parametrize("clients,extra,message", [
    ({"clients": [{"name": "a", "issuer": ISSUER}]}, {}, "exactly one of jwks_url or jwks"),
    ({"clients": [{"name": "a", "issuer": ISSUER, "jwks_url": "http://ehr.example/jwks"}]}, {}, "must use https"),
    ({"clients": [{"name": "a", "issuer": ISSUER, "jwks": {"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}}]}, {},
     "private or symmetric"),
    ({"clients": [{"name": "a", "issuer": ISSUER, "jwks": {"keys": [{"kty": "EC"}]}}]}, {}, "kid"),
    ({"clients": [{"name": "a", "issuer": ISSUER, "jwks_url": "https://e/j"},
                  {"name": "b", "issuer": ISSUER, "jwks_url": "https://e/k"}]}, {}, "same issuer"),
    ({"clients": [{"name": "a", "issuer": ISSUER, "jwks_url": "https://e/j", "extra": 1}]}, {}, "extra"),
    ("{not json", {}, "not JSON"),
    ({"clients": [{"name": "a", "issuer": ISSUER, "jwks_url": "https://e/j"}]}, {"REFRACTURE_PUBLIC_URL": ""},
     "REFRACTURE_PUBLIC_URL is not"),
    ({"clients": []}, {"REFRACTURE_PUBLIC_URL": "ftp://x"}, "not an absolute http"),
    ({"clients": []}, {"REFRACTURE_CDS_CORS_ORIGINS": "https://a.example/path"}, "not an origin"),
])
def test_a_wrong_setting_stops_the_start_with_the_fix(tmp_path, clients, extra, message):
    with pytest.raises(ConfigError, match=message):
        CdsSettings.from_env(_env(tmp_path, clients, **extra))


def test_nothing_configured_is_a_service_without_cds_clients():
    s = CdsSettings.from_env({})
    assert s.clients == () and s.public_url is None and s.card_source_url is None and s.cors_origins == ()
