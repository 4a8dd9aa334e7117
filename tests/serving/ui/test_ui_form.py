"""The clinician form is built from the record contract: every field once, with label and unit."""

from starlette.testclient import TestClient

from features.records import RECORD_FIELDS
from serving.ui.app import SECURITY_HEADERS, build_ui_app
from serving.ui.form import GROUPS, form_schema


def test_every_record_field_appears_exactly_once():
    names = [n for _, _, fields in GROUPS for n in fields]
    assert sorted(names) == sorted(f.flat_name for f in RECORD_FIELDS)


def test_groups_are_the_clinical_ones_with_units_and_help():
    schema = form_schema()
    assert [g["title"] for g in schema["groups"]] == ["Clinical", "Bone density", "Sarcopenia", "Cement", "Imaging"]
    fields = {f["name"]: f for g in schema["groups"] for f in g["fields"]}
    assert fields["cement_volume_ml"]["unit"] == "mL"
    assert fields["hu_index_preop"]["unit"] == "HU"
    assert fields["vertebral_height_mm_preop"]["unit"] == "mm"
    assert all(f["label"] and f["help"] for f in fields.values())
    assert fields["level"]["allowed"][-1] == "L5"


def test_what_if_offers_the_four_modifiable_factors():
    ids = [w["id"] for w in form_schema()["what_if"]]
    assert ids == ["endplate_contact", "cement_volume", "brace", "therapy"]


def test_page_is_self_contained_and_holds_no_key(monkeypatch):
    from serving.config import reset_settings

    monkeypatch.setenv("REFRACTURE_API_KEY", "k" * 32)  # the embedded default: no identity provider
    monkeypatch.delenv("REFRACTURE_OIDC_ISSUER", raising=False)
    reset_settings()
    client = TestClient(build_ui_app())
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    text = page.text
    assert "http://" not in text and "https://" not in text  # no CDN or external asset
    js = client.get("/static/app.js").text
    css = client.get("/static/style.css").text
    for asset in (js, css):
        assert "http://" not in asset.replace("http://www.w3.org/2000/svg", "") and "https://" not in asset
    assert "Bearer " in js and "REFRACTURE_API_KEY" not in text + js
    assert client.get("/form.json").json()["groups"]
    reset_settings()


def test_the_page_signs_in_only_where_an_identity_provider_is_configured(monkeypatch):
    """auth.json: the API-key prompt for the embedded default; with a provider, where to sign
    in (from its discovery document), and the page's CSP lets the script reach only it."""
    from jwks_server import JwksServer

    from serving.config import reset_settings

    monkeypatch.setenv("REFRACTURE_API_KEY", "k" * 32)
    reset_settings()
    try:
        client = TestClient(build_ui_app())
        assert client.get("/auth.json").json() == {"mode": "api-key"}
        assert "connect-src 'self';" in client.get("/").headers["content-security-policy"]
        with JwksServer() as idp:
            monkeypatch.setenv("REFRACTURE_OIDC_ISSUER", idp.issuer)
            monkeypatch.setenv("REFRACTURE_OIDC_AUDIENCE", "https://refracture.test")
            monkeypatch.setenv("REFRACTURE_OIDC_UI_CLIENT_ID", "refracture-ui")
            reset_settings()
            client = TestClient(build_ui_app())
            auth = client.get("/auth.json").json()
            assert auth["mode"] == "oidc" and auth["client_id"] == "refracture-ui"
            assert auth["token_endpoint"] == idp.issuer + "/token" and auth["resource"] == "https://refracture.test"
            assert set(auth["scope"].split()) == {"openid", "profile", "predict", "explain", "model:read"}
            csp = client.get("/").headers["content-security-policy"]
            assert f"connect-src 'self' {idp.issuer};" in csp and "form-action 'self'" in csp
    finally:
        reset_settings()
