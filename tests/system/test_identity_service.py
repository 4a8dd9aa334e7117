"""The real service (``refracture serve``) with named clients and a real OpenID Provider
(oidc-provider on Node, 127.0.0.1), and over HTTPS:

- a hospital system's client-credentials token (``private_key_jwt``) gets a risk; a named
  client's API key too; the audit log names each client, never the credential;
- ``/metrics`` (scope metrics:read) counts requests per client, unknown ones as ``other``;
  ``/readyz`` reports the identity provider's state;
- Chromium signs in through the provider's own login and consent pages (authorization code
  with PKCE, the page a public client), is shown who is signed in, gets a risk on the
  clinician page, and signs out; the page's CSP names the provider and nothing else, and
  the audit lines of the signed-in user carry a salted hash of the subject, not the name;
- ``refracture serve --tls-cert --tls-key`` answers over HTTPS with a throwaway certificate.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest
from certificates import self_signed
from oidc_provider import SYSTEM_CLIENT, UI_CLIENT, OidcProvider, node_available
from serving_support import API_KEY, ROOT, Server, ensure_trained_store, store_env

from serving.auth.clients import add_client, write_registry
from serving.scoring.examples import example_record

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not node_available(), reason="Node.js and npm are needed for the OpenID Provider")]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
USER = "nurse.jones"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(server, provider, keys by client name, audit log path)."""
    store = ensure_trained_store(tmp_path_factory.getbasetemp())
    folder = tmp_path_factory.mktemp("identity")
    clients, keys = (), {}
    for name, scopes in (("ris", ["predict", "explain", "model:read"]), ("prometheus", ["metrics:read"])):
        clients, keys[name] = add_client(clients, name, scopes)
    clients, _ = add_client(clients, "ehr", ["predict", "explain"], oauth_client_id=SYSTEM_CLIENT)
    write_registry(folder / "clients.json", clients)
    server = Server({}, log=folder / "server.log", ready_timeout=240)
    with OidcProvider(ui_redirects=[f"{server.url}/ui/"]) as idp:
        server.env = store_env(store, REFRACTURE_CLIENTS_FILE=str(folder / "clients.json"),
                               REFRACTURE_AUDIT_SALT="identity-salt", REFRACTURE_AUDIT_LOG=str(folder / "audit.jsonl"),
                               REFRACTURE_OIDC_ISSUER=idp.issuer, REFRACTURE_OIDC_AUDIENCE=idp.audience,
                               REFRACTURE_OIDC_UI_CLIENT_ID=UI_CLIENT,
                               REFRACTURE_OIDC_UI_SCOPE="openid profile offline_access predict explain model:read")
        with server:
            yield server, idp, keys, folder / "audit.jsonl"


def _audit(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _bearer(credential: str) -> dict:
    return {"Authorization": f"Bearer {credential}"}


def test_a_system_token_and_a_named_key_get_a_risk_and_are_audited_by_name(stack):
    server, idp, keys, audit = stack
    token = idp.system_token()["access_token"]
    r = httpx.post(f"{server.url}/predict", json=example_record(), headers=_bearer(token), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["outcomes"]
    r = httpx.post(f"{server.url}/explain", json=example_record(), headers=_bearer(keys["ris"]), timeout=60)
    assert r.status_code == 200, r.text
    # The system was not given model:read by the registry: 403, not 401.
    assert httpx.get(f"{server.url}/model", headers=_bearer(token), timeout=30).status_code == 403
    assert httpx.get(f"{server.url}/model", headers=_bearer(keys["ris"]), timeout=30).status_code == 200
    lines = _audit(audit)
    assert {(l["client"], l["auth_method"]) for l in lines if l["status"] == 200} >= {
        ("ehr", "client-token"), ("ris", "api-key")}
    text = audit.read_text()
    assert token not in text and keys["ris"] not in text


def test_metrics_count_requests_per_client_and_readyz_reports_the_provider(stack):
    server, idp, keys, _ = stack
    httpx.post(f"{server.url}/predict", json=example_record(), headers=_bearer("rr_not-a-key-at-all-0000"), timeout=30)
    assert httpx.get(f"{server.url}/metrics", headers=_bearer(keys["ris"]), timeout=30).status_code == 403
    text = httpx.get(f"{server.url}/metrics", headers=_bearer(keys["prometheus"]), timeout=30).text
    counted = set(re.findall(r'^refracture_requests_by_client_total\{client="([^"]+)",status="(\d+)"\}', text, re.M))
    assert ("ris", "200") in counted and ("anonymous", "401") in counted, counted
    assert all(c in {"ris", "prometheus", "ehr", "other", "anonymous"} for c, _ in counted)
    ready = httpx.get(f"{server.url}/readyz", timeout=30)
    assert ready.status_code == 200
    assert ready.json()["identity"]["state"] == "ok" and ready.json()["identity"]["providers"][0]["n_keys"] == 1


def test_a_clinician_signs_in_at_the_provider_and_gets_a_risk(stack):
    from playwright.sync_api import sync_playwright

    server, idp, _, audit = stack
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium)")
    page_csp = httpx.get(f"{server.url}/ui/", timeout=30).headers["content-security-policy"]
    assert f"connect-src 'self' {idp.issuer};" in page_csp
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            elsewhere: list[str] = []
            page.on("request", lambda r: None if r.url.startswith((server.url, idp.issuer))
                    else elsewhere.append(r.url))
            page.goto(f"{server.url}/ui/")
            page.wait_for_selector("#sign-in:not([hidden])")
            assert page.locator("#api-key-box").is_hidden()  # no key prompt when the page signs in
            page.click("#sign-in")
            page.wait_for_url(f"{idp.issuer}/**")  # the provider's own login page
            page.fill("input[name=login]", USER)
            page.fill("input[name=password]", "any password")
            page.click("button[type=submit]")
            page.wait_for_selector("button:has-text('Continue')")  # its consent page
            page.click("button:has-text('Continue')")
            page.wait_for_url(f"{server.url}/ui/")
            page.wait_for_selector("#sign-out:not([hidden])")
            assert USER in page.inner_text("#signin-status")
            assert "code=" not in page.url
            page.wait_for_selector("#example-select option:nth-child(3)", state="attached")
            page.click("#load-example")
            page.click("#submit")
            page.wait_for_selector("#results:not([hidden]) .card", timeout=60_000)
            assert "%" in page.inner_text("#outcome-cards")
            # The token lives in the page's memory only.
            assert page.evaluate("JSON.stringify(sessionStorage)").find("eyJ") < 0
            page.click("#sign-out")
            page.wait_for_selector("button[value=yes]")  # the provider asks to confirm
            page.click("button[value=yes]")
            page.wait_for_url(f"{server.url}/ui/**")
            page.wait_for_selector("#sign-in:not([hidden])")
            assert "Not signed in" in page.inner_text("#signin-status")
            assert not [u for u in elsewhere if "fonts.googleapis.com" not in u], elsewhere  # the provider's page font only
        finally:
            browser.close()
    user_lines = [l for l in _audit(audit) if l["auth_method"] == "user-token"]
    assert user_lines and all(l["client"] == UI_CLIENT and re.fullmatch(r"[0-9a-f]{16}", l["subject_hash"])
                              for l in user_lines)
    assert USER not in audit.read_text()


def test_https_with_a_throwaway_certificate(tmp_path, tmp_path_factory):
    store = ensure_trained_store(tmp_path_factory.getbasetemp())
    cert, key = self_signed(tmp_path / "tls")
    env = store_env(store, REFRACTURE_API_KEY=API_KEY, REFRACTURE_AUDIT_SALT="tls-salt")
    with Server(env, log=tmp_path / "server.log", tls=(cert, key), ready_timeout=240) as server:
        assert server.url.startswith("https://")
        r = httpx.post(f"{server.url}/predict", json=example_record(), headers=_bearer(API_KEY), verify=str(cert),
                       timeout=60)
        assert r.status_code == 200, r.text
        with pytest.raises(httpx.HTTPError):  # the certificate is checked: not one a client trusts by default
            httpx.get(f"{server.url}/healthz", timeout=10)
        with pytest.raises(httpx.HTTPError):  # and plain HTTP is not served on that port
            httpx.get(server.url.replace("https://", "http://") + "/healthz", timeout=10)
