"""Regression tests for the defects an outside probe found (issue 9), in-process
(``Service.to_asgi()`` + Starlette's TestClient) or on the guard alone: invalid Unicode
and duplicate keys, bounded error lists, the audit line written for every answered
request (and a failure to write it never silent), client disconnects, security headers
on every answer, relative redirects, the docs page without third-party code, and metric
labels that a client cannot multiply."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from serving_support import API_KEY
from test_serving_service import AUTH, client, flat, service_env, store  # noqa: F401 (fixtures)

JSON = {"Content-Type": "application/json"}


def _example_text(procedure_id_json: str) -> bytes:
    """The example record as JSON text with ``procedure_id`` replaced by raw JSON text."""
    from serving.examples import example_record

    text = json.dumps(example_record())
    return text.replace('"example-0001"', procedure_id_json).encode("utf-8")


def _audit_lines(service_env, before: int) -> list[dict]:
    return [json.loads(line) for line in service_env["audit_log"].read_text().splitlines()[before:]]


def _n_lines(service_env) -> int:
    log = service_env["audit_log"]
    return len(log.read_text().splitlines()) if log.exists() else 0


# ----------------------------------------------------------------- invalid Unicode


@pytest.mark.parametrize("body", [
    _example_text('"\\ud800"'),                                            # escaped lone surrogate
    _example_text('"x"').replace(b'"x"', b'"\xed\xa0\x80"'),               # the raw bytes ED A0 80
    _example_text('"x"').replace(b'"x"', b'"\xff\xfe"'),                   # bytes that are not UTF-8
], ids=["escaped-surrogate", "raw-surrogate-bytes", "invalid-utf8"])
def test_invalid_unicode_is_a_400_naming_the_field_and_is_audited(client, service_env, body):
    before = _n_lines(service_env)
    r = client.post("/predict", content=body, headers={**AUTH, **JSON})
    assert r.status_code == 400, r.text
    assert [(e["record"], e["field"]) for e in r.json()["errors"]] == [(0, "procedure.procedure_id")]
    lines = _audit_lines(service_env, before)
    assert [(e["endpoint"], e["status"]) for e in lines] == [("/predict", 400)]


def test_invalid_unicode_in_a_key_or_a_later_record_is_located(client):
    from serving.examples import example_record

    good = json.dumps(example_record())
    bad_key = good.replace('"level"', '"lev\\udc00el"')
    r = client.post("/predict", content=f"[{good},{bad_key}]".encode(), headers={**AUTH, **JSON})
    assert r.status_code == 400
    (error,) = r.json()["errors"]
    assert error["record"] == 1 and error["field"].startswith("procedure.lev") and "Unicode" in error["error"]


def test_audit_line_is_ascii_for_any_identifier():
    """The audit writer itself must survive what the parser refuses (defence in depth)."""
    from serving.audit import audit_line, key_hash

    line = audit_line(endpoint="/predict", method="POST", status=200, latency_ms=1.0, salt=b"s",
                      procedure_ids=["\ud800", "é"])
    assert line.isascii()
    assert json.loads(line)["procedure_key_hashes"][0] == key_hash(b"s", "\ud800")


# -------------------------------------------------------------------- duplicate keys


def test_duplicate_keys_are_refused_naming_the_field(client):
    from serving.examples import example_record

    text = json.dumps(example_record()).replace('"age_years": 78.0', '"age_years": 78.0, "age_years": 40.0')
    r = client.post("/predict", content=text.encode(), headers={**AUTH, **JSON})
    assert r.status_code == 400, r.text
    assert [(e["record"], e["field"]) for e in r.json()["errors"]] == [(0, "procedure.age_years")]
    assert "duplicate" in r.json()["errors"][0]["error"]


# ------------------------------------------------------------------ error amplification


def test_error_list_is_capped_and_states_the_total(client):
    from serving.examples import example_record

    record = example_record()
    record["patient"].update({f"unknown_{i}": 1 for i in range(5000)})
    body = json.dumps(record).encode()
    r = client.post("/predict", content=body, headers={**AUTH, **JSON})
    assert r.status_code == 422
    answer = r.json()
    assert len(answer["errors"]) == 100 and answer["n_errors"] == 5000
    assert len(r.content) < len(body)  # no longer an amplifier


# ------------------------------------------------------- audit never silent, disconnects


class _App:
    """A stand-in for the service behind the guard: answers 200 with a small body."""

    async def __call__(self, scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


def _guard(tmp_path, audit_path):
    from serving.config import ServingSettings
    from serving.guard import GuardMiddleware

    settings = ServingSettings(api_key=API_KEY, audit_salt=b"salt", audit_salt_is_random=False, audit_log_path=audit_path)
    return GuardMiddleware(_App(), settings=settings)


def _call(app, messages):
    sent: list[dict] = []
    queue = list(messages)

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"authorization", f"Bearer {API_KEY}".encode())]}
    asyncio.run(app(scope, receive, send))
    return sent


def test_a_failure_to_audit_answers_503_and_is_logged(tmp_path, caplog):
    """/dev/full accepts the open and fails every write: the answer must not go out unaudited."""
    guard = _guard(tmp_path, "/dev/full")
    with caplog.at_level(logging.ERROR, logger="serving.guard"):
        sent = _call(guard, [{"type": "http.request", "body": b"{}", "more_body": False}])
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [503]
    assert any("AUDIT FAILURE" in r.getMessage() for r in caplog.records)


def test_a_client_that_leaves_mid_body_is_audited_as_a_disconnect(tmp_path):
    log = tmp_path / "audit.jsonl"
    guard = _guard(tmp_path, log)
    sent = _call(guard, [{"type": "http.request", "body": b'{"patient": ', "more_body": True}])  # then: disconnect
    assert sent == []
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["status"] == 499 and line["client"] == "disconnected"


# ---------------------------------------------------------------- headers and redirects


def test_every_page_and_static_file_has_the_security_headers(client):
    for path in ("/ui/", "/ui/static/index.html", "/"):
        r = client.get(path)
        assert r.status_code == 200, path
        csp = r.headers.get("content-security-policy", "")
        assert "frame-ancestors" in csp and "default-src 'self'" in csp, path
        assert r.headers.get("x-content-type-options") == "nosniff", path
    for path in ("/ui/static/app.js", "/ui/static/style.css", "/docs-static/swagger-ui-bundle.js", "/model", "/healthz"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers.get("x-content-type-options") == "nosniff", path


def test_redirects_are_relative_whatever_the_host_header(client):
    from urllib.parse import urljoin

    for path, target in (("/ui", "/ui/"), ("/docs", "/")):
        r = client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
        assert r.status_code in (301, 302, 307, 308), path
        location = r.headers["location"]
        assert "evil" not in location and "//" not in location
        assert urljoin(f"http://service{path}", location) == f"http://service{target}"
        # Behind a proxy serving the service under /refracture, the same answer stays inside it.
        assert urljoin(f"https://hospital/refracture{path}", location) == f"https://hospital/refracture{target}"


def test_docs_page_loads_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "googletagmanager" not in page.text and "http" not in page.text.replace("http-equiv", "")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    init = client.get("/docs-static/init.js")
    assert init.status_code == 200 and "validatorUrl: null" in init.text
    assert client.get("/docs").headers["content-type"].startswith("text/html")  # followed to /


# ----------------------------------------------------------------------- metrics


def test_metric_labels_do_not_grow_with_invented_paths():
    from serving.http_server import route_label

    assert route_label("/predict") == "/predict"
    assert route_label("/ui/static/app.js") == "/ui"
    assert route_label("/../../etc/passwd") == route_label("/wp-admin") == "other"



# ------------------------------------------------------------ latency under sustained load


def test_request_timeout_keeps_no_timer_alive_after_the_answer():
    """BentoML's timeout middleware left one live 120 s timer per request, holding the
    request's future and context (its tracing span): ~20 objects per request, tens of
    thousands under load, walked by every full garbage collection (growing p99)."""
    import gc

    from bentoml._internal.server.http import traffic

    from serving.http_server import install

    install()  # what the service does where it is defined
    middleware = traffic.TimeoutMiddleware(_App(), timeout=120)

    async def serve(n):
        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            pass

        for _ in range(n):
            await middleware({"type": "http", "method": "POST", "path": "/predict", "headers": []}, receive, send)
        return [h for h in gc.get_objects() if isinstance(h, asyncio.TimerHandle) and not h.cancelled()]

    assert asyncio.run(serve(200)) == []


# ------------------------------------------------------------- documented addresses


def test_every_address_the_readme_and_demo_give_answers(client):
    """The service addresses README.md, scripts/demo.sh and the guides name (the API docs
    were once documented at /docs, which answered 401)."""
    import re

    from serving_support import ROOT

    paths = set()
    for name in ("README.md", "scripts/demo.sh", "docs/serving.md", "docs/clinician-page.md"):
        text = (ROOT / name).read_text()
        paths |= set(re.findall(r"http://127\.0\.0\.1:(?:3000|\$PORT)(/[^\s`)'\",;]*)", text))
        paths |= set(re.findall(r"(?:OpenAPI|API docs|Swagger UI)[^`\n]{0,40}?[`: ](/[\w./-]*)", text))
    paths = {p for p in paths if not p.startswith("//")}  # the host of a full URL, caught by the second pattern
    paths -= {"/predict", "/explain"}  # POST, with a key: covered by the other tests
    assert {"/", "/docs.json", "/ui/"} <= paths, paths
    for path in sorted(paths):
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code)
