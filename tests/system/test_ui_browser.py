"""Browser tests of the clinician page: Debian's chromium, headless, driven by Playwright,
against the real service (``refracture serve`` on 127.0.0.1 with a registered champion).

Checks: the page loads with no external requests; an example patient fills the form;
submitting shows each outcome's 24-month probability, its risk curve (a chart whose points
are ``POST /explain``'s curve, and the risk at each horizon in words) and a SHAP waterfall
whose numbers equal ``POST /explain``'s for the same record, at the default horizon and at
a horizon chosen on the page; the probability of death by 24 months is shown as context
(the store has a death model), and nothing when an answer has no context; a what-if
change moves the risk; a bad value
shows a field-level message next to the field; the page works from the keyboard alone;
the API key never appears in the page source. A screenshot is saved to
``test-artifacts/clinician-page.png``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import httpx
import pytest
from serving_support import API_KEY, ROOT, Server, ensure_trained_store, store_env

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium)")
    store = ensure_trained_store(tmp_path_factory.getbasetemp())
    env = store_env(store, REFRACTURE_API_KEY=API_KEY, REFRACTURE_AUDIT_SALT="ui-test-salt")
    with Server(env, log=tmp_path_factory.mktemp("ui") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    external: list[str] = []
    pg.on("request", lambda r: external.append(r.url) if not r.url.startswith(server.url) else None)
    pg.goto(f"{server.url}/ui/")
    pg.wait_for_selector("#f-level")
    # (Selector waits: the page's CSP forbids eval, which string wait_for_function needs.)
    pg.wait_for_selector("#example-select option:nth-child(3)", state="attached")
    yield pg
    assert external == [], f"the page requested outside assets: {external}"
    context.close()


def _explain_answer(server, record, months: int = 24) -> dict:
    r = httpx.post(f"{server.url}/explain?horizon_months={months}", json=record,
                   headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _explain(server, record, months: int = 24) -> dict:
    return _explain_answer(server, record, months)["predictions"][0]["outcomes"]


def _pct(p: float) -> str:
    """The page's percentage (app.js ``pct``): one decimal under 1 %, else whole (JS rounding)."""
    return f"{100 * p:.1f} %" if 100 * p < 1 else f"{math.floor(100 * p + 0.5)} %"


def _words(curve: dict) -> str:
    return ", ".join(f"{_pct(p)} by {m} months" for m, p in sorted(curve.items(), key=lambda kv: float(kv[0])))


def _check_waterfall(card, e: dict) -> None:
    """The card's waterfall shows /explain's explanation ``e`` (top 10 bars, the rest summed)."""
    fig = card.locator("figure.wf")
    assert float(fig.get_attribute("data-horizon-months")) == e["horizon_months"]
    assert float(fig.get_attribute("data-base-value")) == pytest.approx(e["base_value"], abs=1e-12)
    bars = card.locator("rect[data-feature]")
    shown = {bars.nth(j).get_attribute("data-feature"): float(bars.nth(j).get_attribute("data-contribution"))
             for j in range(bars.count())}
    contribs = {c["feature"]: c["contribution"] for c in e["contributions"]}
    top = sorted(contribs, key=lambda k: -abs(contribs[k]))[:10]
    for name in top:
        assert shown[name] == pytest.approx(contribs[name], abs=1e-12)
    if len(contribs) > 10:
        assert shown["_other"] == pytest.approx(sum(contribs[k] for k in contribs if k not in top), abs=1e-9)
    final = float(fig.get_attribute("data-final-logit"))
    # The waterfall ends at the explained log-odds: additive within the 1e-5 rule (issue 14).
    p = e["probability"]
    assert final == pytest.approx(math.log(p / (1 - p)), abs=1e-5)
    assert f"by {e['horizon_months']:g} months" in fig.inner_text()


def _record_in_page(page) -> dict:
    return page.evaluate("readForm()")


def test_review_an_example_patient_shows_curves_and_matches_explain(page, server):
    page.fill("#api-key", API_KEY)
    assert page.inner_text("#example-select option:first-child").startswith("Typical patient")
    page.select_option("#example-select", index=0)  # the documented typical patient
    page.click("#load-example")
    assert page.input_value("#f-level") != ""
    assert page.input_value("#explain-horizon") == "24"  # the default explained horizon
    page.click("#submit")
    page.wait_for_selector(".card .wf")
    expected = _explain(server, _record_in_page(page))
    cards = page.locator(".card")
    assert cards.count() == 3
    for i in range(3):
        card = cards.nth(i)
        outcome = card.get_attribute("data-outcome")
        exp = expected[outcome]
        assert float(card.get_attribute("data-probability")) == pytest.approx(exp["probability"], abs=1e-12)
        text = card.inner_text()
        assert f"within {exp['horizon_months']:g} months" in text
        assert f"version {exp['model']['version']}" in text
        assert "AUROC" in text and "95 % CI" in text and "calibration slope" in text
        # The curve: in words ("0.4 % by 3 months, ..., 3 % by 24 months") and as a chart
        # whose points are /explain's curve.
        assert list(exp["curve"]) == ["3", "6", "12", "24"]
        assert card.locator(".curve-words").inner_text() == f"Risk over time: {_words(exp['curve'])}."
        points = card.locator("svg.curve circle.cv-point")
        assert points.count() == 4
        for j in range(4):
            months = points.nth(j).get_attribute("data-months")
            assert float(points.nth(j).get_attribute("data-probability")) == pytest.approx(exp["curve"][months], abs=1e-12)
        assert "by 24 months" in card.locator("svg.curve").get_attribute("aria-label")
        _check_waterfall(card, exp["explanation"])
    # The death model is served (the test store has one): its context, as /explain sent it.
    death = _explain_answer(server, _record_in_page(page))["predictions"][0]["context"]["death"]
    page.wait_for_selector("#results-context:not([hidden])")
    assert float(page.get_attribute("#results-context", "data-probability")) == pytest.approx(death["probability"], abs=1e-12)
    context_text = page.inner_text("#results-context")
    assert f"probability of death (any cause) by 24 months: {_pct(death['probability'])}" in context_text
    assert "already take that into account" in context_text and f"version {death['model']['version']}" in context_text
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "clinician-page.png"), full_page=True)

    # Choosing another horizon re-explains the same record at that horizon; the curve stays.
    page.select_option("#explain-horizon", "6")
    page.wait_for_selector(".card figure.wf[data-horizon-months='6']")
    at_6 = _explain(server, _record_in_page(page), 6)
    for i in range(3):
        card = cards.nth(i)
        exp = at_6[card.get_attribute("data-outcome")]
        assert exp["explanation"]["horizon_months"] == 6.0
        assert card.locator(".curve-words").inner_text() == f"Risk over time: {_words(exp['curve'])}."
        _check_waterfall(card, exp["explanation"])


def test_no_death_context_when_an_answer_has_none(page, server):
    """A service without a death model sends no ``context``; the page then shows none
    (here the real answer with its context removed in transit)."""
    import json

    def drop_context(route):
        answer = route.fetch().json()
        for item in answer["predictions"]:
            item.pop("context", None)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(answer))

    page.route("**/explain?*", drop_context)
    page.fill("#api-key", API_KEY)
    page.select_option("#example-select", index=0)
    page.click("#load-example")
    page.click("#submit")
    page.wait_for_selector(".card .wf")
    assert page.locator("#results-context").is_hidden()


def test_what_if_changes_the_risk_and_says_it_is_an_association(page, server):
    page.fill("#api-key", API_KEY)
    page.select_option("#example-select", index=1)
    page.click("#load-example")
    page.click("#submit")
    page.wait_for_selector("#what-if:not([hidden])")
    caveat = page.inner_text("#what-if-caveat").lower()
    assert "association, not causation" in caveat and "not the effect of changing them" in caveat
    current = float(page.input_value("#w-cement_volume") or 3)
    page.fill("#w-cement_volume", f"{min(current + 4, 14.5):.1f}")
    page.select_option("#w-endplate_contact", "0" if page.input_value("#w-endplate_contact") == "1" else "1")
    page.click("#what-if-run")
    page.wait_for_selector("#what-if-table:not([hidden]) tbody tr")
    rows = page.locator("#what-if-table tbody tr")
    assert rows.count() == 3
    moved = [abs(float(rows.nth(i).get_attribute("data-after")) - float(rows.nth(i).get_attribute("data-before")))
             for i in range(3)]
    assert max(moved) > 1e-4, moved
    assert "association, not a causal effect" in page.inner_text("#what-if-table caption")


def test_bad_value_shows_a_field_error_next_to_the_field(page):
    page.fill("#api-key", API_KEY)
    page.select_option("#example-select", index=0)
    page.click("#load-example")
    page.fill("#f-vertebral_height_mm_preop", "0.5")  # below the 1 mm of a vertebra plana: cm where mm is expected
    page.select_option("#f-level", "L5")
    page.fill("#f-age_years", "abc")
    page.click("#submit")
    page.wait_for_selector("#e-vertebral_height_mm_preop:not(:empty)")
    assert "mm" in page.inner_text("#e-vertebral_height_mm_preop")
    assert page.get_attribute("#f-vertebral_height_mm_preop", "aria-invalid") == "true"
    assert page.inner_text("#e-age_years") != ""
    assert page.locator(".card").count() == 0


def test_keyboard_only_and_no_key_in_source(page, server):
    source = httpx.get(f"{server.url}/ui/", timeout=10).text + httpx.get(f"{server.url}/ui/static/app.js", timeout=10).text
    assert API_KEY not in source
    # Keyboard only: type the key, choose and load an example, submit with Enter.
    page.focus("#api-key")
    page.keyboard.type(API_KEY)
    page.keyboard.press("Tab")  # example select
    page.keyboard.press("Tab")  # load button
    page.keyboard.press("Enter")
    assert page.input_value("#f-level") != ""
    page.focus("#f-age_years")
    page.keyboard.press("Enter")  # submits the form
    page.wait_for_selector(".card .wf")
    # Every form control has a label.
    unlabeled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(e => !(e.labels && e.labels.length)).map(e => e.id)""")
    assert unlabeled == []


def test_without_key_the_page_asks_for_it(page):
    page.select_option("#example-select", index=0)
    page.click("#load-example")
    page.click("#submit")
    page.wait_for_selector("#form-status:has-text('API key')")
    assert page.locator(".card").count() == 0


def test_api_docs_page_renders_and_requests_nothing_from_elsewhere(browser, server):
    """The docs page at / as a browser loads it: Swagger UI renders the service's own
    OpenAPI document, every request (scripts, styles, images, fonts, the document) goes to
    127.0.0.1, and the page's CSP refuses nothing it needs."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    requests: list[str] = []
    violations: list[str] = []
    pg.on("request", lambda r: requests.append(r.url))
    pg.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    pg.goto(f"{server.url}/")
    pg.wait_for_selector("text=/predict")
    pg.wait_for_selector("text=/explain")
    pg.wait_for_load_state("networkidle")
    context.close()
    assert requests and all(u.startswith(("http://127.0.0.1:", "data:")) for u in requests), requests
    assert any(u.endswith("/docs.json") for u in requests)
    assert violations == [], violations
