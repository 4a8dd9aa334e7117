"""The guard's seam with the ways a caller authenticates (serving.http.callers): the route
chosen by path, its authenticator's decision, its error format, and what the guard hands on
in the ASGI scope's state."""

from __future__ import annotations

import json

from asgi_calls import Recorder as _Recorder
from asgi_calls import call as _call

from serving.config import ServingSettings
from serving.http.callers import (SCOPES, ApiKeyAuthenticator, Caller, Refusal, Route, bearer_token, required_scope,
                                  route_for)
from serving.http.guard import GuardMiddleware

API_KEY = "k" * 32


class _Fixed:
    def __init__(self, answer):
        self.answer = answer
        self.calls = 0

    def authenticate(self, scope):
        self.calls += 1
        return self.answer


def _settings(tmp_path, **kw):
    return ServingSettings(api_key=API_KEY, audit_salt=b"salt", audit_salt_is_random=False,
                           audit_log_path=tmp_path / "audit.jsonl", **kw)


def test_the_longest_matching_prefix_wins_and_prefixes_match_whole_segments():
    default = Route("/", _Fixed(None))
    fhir, fhir_op = Route("/fhir", _Fixed(None)), Route("/fhir/$refracture-risk", _Fixed(None))
    routes = (fhir, fhir_op)
    assert route_for(routes, default, "/fhir/metadata") is fhir
    assert route_for(routes, default, "/fhir/$refracture-risk") is fhir_op
    assert route_for(routes, default, "/fhir") is fhir
    assert route_for(routes, default, "/fhirish") is default  # not a segment of /fhir
    assert route_for(routes, default, "/predict") is default


def test_the_api_key_is_the_default_client_with_every_scope(tmp_path):
    auth = ApiKeyAuthenticator(_settings(tmp_path))
    ok = auth.authenticate({"headers": [(b"authorization", f"Bearer {API_KEY}".encode())]})
    assert ok == Caller("default", frozenset(SCOPES), "api-key")
    assert auth.authenticate({"headers": []}).reason == "missing"
    wrong = auth.authenticate({"headers": [(b"authorization", b"Bearer nope")]})
    assert isinstance(wrong, Refusal) and wrong.status == 401 and wrong.reason == "wrong"
    assert "nope" not in wrong.message
    dev = ApiKeyAuthenticator(ServingSettings(api_key=None, insecure_dev=True)).authenticate({"headers": []})
    assert dev.client == "insecure-dev" and dev.scopes == frozenset(SCOPES)


def test_bearer_token_and_required_scope():
    assert bearer_token({"headers": [(b"authorization", b"bearer  abc ")]}) == "abc"
    assert bearer_token({"headers": [(b"authorization", b"Basic abc")]}) is None
    assert required_scope("/explain") == "explain" and required_scope("/predict/") == "predict"
    assert required_scope("/model") == "model:read" and required_scope("/metrics") == "metrics:read"
    assert required_scope("/healthz") is None and required_scope("/fhir/metadata") is None
    # The FHIR operation and the CDS Hooks call answer with explanations, as /explain does.
    assert required_scope("/fhir/$refracture-risk") == "explain"
    assert required_scope("/cds-services/refracture-risk") == "explain"
    assert required_scope("/cds-services") is None


def test_the_guard_hands_on_the_caller_and_the_request_id_it_audits(tmp_path):
    app = _Recorder()
    caller = Caller("ehr-bridge", frozenset({"predict", "explain"}), "test", subject_hash=None)
    guard = GuardMiddleware(app, settings=_settings(tmp_path), routes=(Route("/fhir", _Fixed(caller)),))
    # Without the explain scope, the FHIR operation (its answer carries the top factors) is refused.
    predict_only = Caller("ehr-bridge", frozenset({"predict"}), "test")
    refused = GuardMiddleware(app, settings=_settings(tmp_path), routes=(Route("/fhir", _Fixed(predict_only)),))
    assert _call(refused, "/fhir/$refracture-risk")[0]["status"] == 403 and app.states == []
    start, _ = _call(guard, "/fhir/$refracture-risk")
    assert start["status"] == 200
    (state,) = app.states
    assert state["caller"] is caller
    request_id = dict(start["headers"])[b"x-request-id"].decode()
    assert state["request_id"] == request_id
    line = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert line["request_id"] == request_id and line["auth"] == "ok"


def test_a_route_refuses_in_its_own_error_format_and_the_refusal_is_audited(tmp_path):
    app = _Recorder()
    refusal = Refusal(401, "expired", "token expired", www_authenticate='Bearer error="invalid_token"')

    def outcome(status, message, errors):
        return json.dumps({"resourceType": "OperationOutcome", "issue": [{"diagnostics": message}]}).encode(), \
            "application/fhir+json"

    guard = GuardMiddleware(app, settings=_settings(tmp_path),
                            routes=(Route("/fhir", _Fixed(refusal), render_error=outcome),))
    start, body = _call(guard, "/fhir/$refracture-risk")
    headers = dict(start["headers"])
    assert start["status"] == 401 and headers[b"content-type"] == b"application/fhir+json"
    assert headers[b"www-authenticate"] == b'Bearer error="invalid_token"'
    assert json.loads(body)["issue"][0]["diagnostics"] == "token expired"
    assert app.states == []  # never reached the endpoint
    line = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert line["status"] == 401 and line["auth"] == "expired"
    # Too large a body under that route: the same format.
    big = GuardMiddleware(app, settings=_settings(tmp_path, max_body_bytes=10),
                          routes=(Route("/fhir", _Fixed(Caller("c", frozenset(), "test")), render_error=outcome),))
    start, body = _call(big, "/fhir/x", body=b"x" * 100)
    assert start["status"] == 413 and json.loads(body)["resourceType"] == "OperationOutcome"
    # Other paths keep the API key and the service's JSON errors.
    start, body = _call(guard, "/predict")
    assert start["status"] == 401 and "API key" in json.loads(body)["error"]


def test_a_route_with_only_an_error_format_authenticates_as_the_default_route(tmp_path):
    app = _Recorder()

    def outcome(status, message, errors):
        return json.dumps({"resourceType": "OperationOutcome", "issue": [{"diagnostics": message}]}).encode(), \
            "application/fhir+json"

    guard = GuardMiddleware(app, settings=_settings(tmp_path), routes=(Route("/fhir", render_error=outcome),))
    start, body = _call(guard, "/fhir/$refracture-risk", headers=[(b"authorization", b"Bearer wrong")])
    assert start["status"] == 401 and json.loads(body)["resourceType"] == "OperationOutcome"
    assert "API key" in json.loads(body)["issue"][0]["diagnostics"]  # the default route's refusal
    start, _ = _call(guard, "/fhir/$refracture-risk", headers=[(b"authorization", f"Bearer {API_KEY}".encode())])
    assert start["status"] == 200 and app.states[-1]["caller"].client == "default"
