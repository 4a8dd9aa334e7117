"""The FHIR endpoints and the CDS Hooks service in-process (``Service.to_asgi()``), on the
shared trained store: the same numbers as /predict (1,000 simulated procedures per profile),
every resource valid FHIR R4, every card a valid CDS Hooks 2.0 card, and every kind of bad
input answered with a clear OperationOutcome or CDS error and nothing else broken."""

from __future__ import annotations

import datetime as dt
import json
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from cds_support import ISSUER, PUBLIC_URL, SERVICE_PATH, CdsClientKeys, MiniFhirServer, clients_file, hook_call, resources_of
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.operationoutcome import OperationOutcome
import fhir_server_support as fhir_server
from fhir_support import entry, example
from prediction_log_support import migrated_store
from serving_support import API_KEY, asgi_client, ensure_trained_store, to_json_records

from features.fhir import codes as c
from features.fhir.export import export_resources, fhir_id, procedure_bundles
from features.fhir.parse import parse_bundle
from features.records import tables_to_records
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from serving.cds_hooks.cards import EXTENSION, card_problems
from serving.fhir.risk_assessment import validate as validate_risk_assessment

AUTH = {"Authorization": f"Bearer {API_KEY}"}
FHIR = {**AUTH, "Content-Type": "application/fhir+json"}
ORIGIN = "https://sandbox.cds-hooks.example"
PROFILES = ("xiong2021-pvp", "yassavoly2025-pkp", "site-c-older-frail-pkp")
N_PROCEDURES = 1000
TOL = 1e-12
#: The answers checked against the FHIR R4 models in the 1,000-procedure runs: one in ten (a
#: Bundle's validation takes ~20-90 ms; every answer has the same structure, and the other
#: tests validate each kind of answer the FHIR routes give).
VALIDATE_EVERY = 10


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    return ensure_trained_store(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def keys():
    return CdsClientKeys()


@pytest.fixture(scope="module")
def service_env(store, keys, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fhir-service")
    migrated_store(folder)  # the prediction log's store, at its newest migration
    env = {
        "REFRACTURE_MLFLOW_DIR": str(store / "mlflow"), "REFRACTURE_API_KEY": API_KEY, "REFRACTURE_AUDIT_SALT": "salt",
        "REFRACTURE_AUDIT_LOG": str(folder / "audit.jsonl"), "REFRACTURE_MAX_BODY_BYTES": str(400_000),
        "REFRACTURE_PUBLIC_URL": PUBLIC_URL, "REFRACTURE_CDS_CORS_ORIGINS": ORIGIN,
        "REFRACTURE_CDS_CLIENTS": str(clients_file(folder, {"name": "ehr-test", "issuer": ISSUER, "jwks": keys.jwks()})),
        "REFRACTURE_PREDICTION_LOG": "1", "REFRACTURE_PREDICTION_DB": f"sqlite:///{folder / 'predictions.db'}",
        "REFRACTURE_PREDICTION_SECRET": "s" * 40, "REFRACTURE_PREDICTION_FLUSH_SECONDS": "0.2",
    }
    names = [*env, "MLFLOW_TRACKING_URI", "REFRACTURE_INSECURE_DEV", "REFRACTURE_MODEL_VERSIONS", "REFRACTURE_MAX_RECORDS"]
    saved = {k: os.environ.get(k) for k in names}
    for k in ("MLFLOW_TRACKING_URI", "REFRACTURE_INSECURE_DEV", "REFRACTURE_MODEL_VERSIONS", "REFRACTURE_MAX_RECORDS"):
        os.environ.pop(k, None)
    os.environ.update(env)
    from serving.cds_hooks.settings import reset_cds_settings
    from serving.config import reset_settings

    reset_settings()
    reset_cds_settings()
    yield {**env, "audit_log": folder / "audit.jsonl", "prediction_db": folder / "predictions.db"}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_settings()
    reset_cds_settings()


@pytest.fixture(scope="module")
def client(service_env):
    with asgi_client() as c:
        yield c


def post_fhir(client, resource, headers=FHIR):
    body = resource if isinstance(resource, (bytes, str)) else json.dumps(resource)
    return client.post("/fhir/$refracture-risk", content=body, headers=headers)


def post_hook(client, keys, call, **claims):
    return client.post(SERVICE_PATH, content=json.dumps(call), headers={**keys.auth(**claims),
                                                                        "Content-Type": "application/json"})


def outcome_of(r, status: int) -> list[dict]:
    """The issues of an OperationOutcome answer, checked to be one, with ``status``."""
    assert r.status_code == status, r.text[:2000]
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    OperationOutcome.model_validate(body)
    return body["issue"]


def curves(prediction: dict) -> dict[str, list[float]]:
    """Every probability of one /predict answer: each outcome's curve and the death context."""
    out = {o: list(item["curve"].values()) for o, item in prediction["outcomes"].items()}
    if prediction.get("context"):
        out["death"] = [prediction["context"]["death"]["probability"]]
    return out


def ra_curves(bundle: dict, procedure_ref: str) -> dict[str, list[float]]:
    """The same numbers read back from the RiskAssessments about ``procedure_ref``."""
    out = {}
    for e in bundle["entry"]:
        r = e["resource"]
        if r["resourceType"] == "RiskAssessment" and r["parent"]["reference"] == procedure_ref:
            outcome = r["code"]["coding"][0]["code"].removeprefix("risk_assessment.")
            out[outcome] = [p["probabilityDecimal"] for p in r["prediction"]]
    return out


def card_curves(card: dict) -> dict[str, list[float]]:
    numbers = card["extension"][EXTENSION]
    out = {o: list(item["curve"].values()) for o, item in numbers["outcomes"].items()}
    if "death" in numbers:
        out["death"] = [numbers["death"]["probability"]]
    return out


def assert_close(a: dict[str, list[float]], b: dict[str, list[float]], what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert len(a[k]) == len(b[k]) and all(abs(x - y) <= TOL for x, y in zip(a[k], b[k])), (what, k, a[k], b[k])


# ------------------------------------------------------------------------------- FHIR


def test_metadata_codesystem_and_operation_definition_are_public_and_valid(client):
    r = client.get("/fhir/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    cap = r.json()
    assert cap["resourceType"] == "CapabilityStatement" and cap["implementation"]["url"] == f"{PUBLIC_URL}/fhir"
    r = client.get("/fhir/CodeSystem/refracture-contract")
    CodeSystem.model_validate(r.json())
    assert r.json()["url"] == c.PROJECT_SYSTEM
    assert client.get("/fhir/OperationDefinition/refracture-risk").json()["code"] == "refracture-risk"
    assert outcome_of(client.get("/fhir/CodeSystem/other"), 404)[0]["code"] == "not-found"
    assert outcome_of(client.get("/fhir/Patient/1", headers=AUTH), 404)[0]["code"] == "not-supported"


def test_the_example_bundle_gives_valid_risk_assessments_with_predicts_numbers(client):
    bundle = example()
    r = post_fhir(client, bundle)
    assert r.status_code == 200, r.text[:2000]
    answer = r.json()
    Bundle.model_validate(answer)
    assert answer["type"] == "collection"
    risks = [e["resource"] for e in answer["entry"]]
    for ra in risks:
        validate_risk_assessment(ra)
    assert len(risks) == 4 and {ra["subject"]["reference"] for ra in risks} == {"Patient/example-patient"}
    outcomes = [ra for ra in risks if ra["code"]["coding"][0]["code"] != "risk_assessment.death"]
    assert all(ra.get("extension") and ra.get("note") for ra in outcomes)  # top factors, association note
    record = parse_bundle(bundle).records[0]
    predicted = client.post("/predict", json=record, headers=AUTH).json()["predictions"][0]
    assert_close(ra_curves(answer, "Procedure/example-0001"), curves(predicted), "example")
    # The same Bundle inside a Parameters resource, as FHIR operations may be called.
    wrapped = {"resourceType": "Parameters", "parameter": [{"name": "bundle", "resource": bundle}]}
    r2 = post_fhir(client, wrapped)
    assert r2.status_code == 200 and ra_curves(r2.json(), "Procedure/example-0001") == ra_curves(answer, "Procedure/example-0001")


def _two_patients(b):
    other = {**entry(b, lambda r: r["resourceType"] == "Patient"), "id": "someone-else"}
    b["entry"].append({"resource": other})


def _unknown_code(b):
    panel = entry(b, lambda r: r.get("id", "").endswith("-preop"))
    panel["component"][0]["code"]["coding"][0]["code"] = "hu_made_up"


def _units(b):
    entry(b, lambda r: r.get("id", "").endswith("-height"))["valueQuantity"] = {"value": 62, "unit": "kg",
                                                                                "system": c.UCUM, "code": "kg"}


def _future(b):
    entry(b, lambda r: r.get("id", "").endswith("-postop"))["effectiveDateTime"] = \
        (dt.date.today() + dt.timedelta(days=40)).isoformat()


def _duplicates(b):
    weight = entry(b, lambda r: r.get("id", "").endswith("-weight"))
    b["entry"].append({"resource": {**weight, "id": "weight-twin", "valueQuantity": {**weight["valueQuantity"], "value": 61}}})


def _out_of_range(b):
    entry(b, lambda r: r.get("id", "").endswith("-height"))["valueQuantity"]["value"] = 400


def _no_procedure(b):
    b["entry"] = [e for e in b["entry"] if e["resource"]["resourceType"] != "Procedure"]


@pytest.mark.parametrize("change,status,where,words", [
    (_two_patients, 422, "Bundle.entry[", "second Patient"),
    (_unknown_code, 422, ".component[0].code", "hu_made_up"),
    (_units, 422, ".valueQuantity", "cannot be converted"),
    (_future, 422, ".effectiveDateTime", "after the request time"),
    (_duplicates, 422, ".valueQuantity", "conflicting values"),
    (_out_of_range, 422, ".valueQuantity", "height_cm"),
    (_no_procedure, 422, "Bundle.entry[", "no completed vertebral augmentation"),
])
def test_bad_fhir_input_is_an_operation_outcome_naming_the_element(client, change, status, where, words):
    bundle = example()
    change(bundle)
    issues = outcome_of(post_fhir(client, bundle), status)
    assert any(where in (i.get("expression") or [""])[0] and words in i["diagnostics"] for i in issues), issues


@pytest.mark.parametrize("body,headers,status,code,where", [
    (b"{\"resourceType\": \"Bundle\",", FHIR, 400, "structure", None),
    (b"{\"resourceType\": \"Bundle\", \"type\": \"collection\", \"type\": \"batch\"}", FHIR, 400, "structure", "Bundle.type"),
    (json.dumps({"resourceType": "Patient", "id": "x"}), FHIR, 400, "invalid", "Bundle.resourceType"),
    (json.dumps({"resourceType": "Bundle", "type": "searchset"}), FHIR, 400, "value", "Bundle.type"),
    (b"[1, 2]", FHIR, 400, "structure", None),
    (b"", FHIR, 400, "required", None),
    (b"<Bundle/>", {**AUTH, "Content-Type": "application/fhir+xml"}, 415, "not-supported", None),
    (json.dumps({"resourceType": "Parameters", "parameter": []}), FHIR, 400, "required", "Parameters.parameter"),
    (json.dumps(example()), {"Content-Type": "application/fhir+json"}, 401, "login", None),
    (b"x" * 500_000, FHIR, 413, "too-costly", None),
])
def test_unreadable_requests_are_operation_outcomes_too(client, body, headers, status, code, where):
    issues = outcome_of(post_fhir(client, body, headers), status)
    assert issues[0]["code"] == code
    if where:
        assert issues[0]["expression"] == [where]


def test_an_implausible_but_possible_value_is_scored_with_a_warning_naming_its_element(client):
    bundle = example()
    panel = entry(bundle, lambda r: r.get("id", "").endswith("-postop"))
    index = next(i for i, comp in enumerate(panel["component"])
                 if comp["code"]["coding"][0]["code"] == "upper_adjacent_height_mm")
    panel["component"][index]["valueQuantity"]["value"] = 33  # 24 mm before surgery: 9 mm apart
    r = post_fhir(client, bundle)
    assert r.status_code == 200, r.text[:2000]
    resources = [e["resource"] for e in r.json()["entry"]]
    assert sum(x["resourceType"] == "RiskAssessment" for x in resources) == 4  # scored as sent
    (outcome,) = [x for x in resources if x["resourceType"] == "OperationOutcome"]
    OperationOutcome.model_validate(outcome)
    (issue,) = [i for i in outcome["issue"] if "upper_adjacent_height_mm" in i["diagnostics"]]
    assert issue["severity"] == "warning" and "9.0 mm apart" in issue["diagnostics"]
    assert issue["expression"][0].endswith(f".component[{index}].valueQuantity"), issue


def test_an_unknown_parameter_is_refused_and_a_good_request_still_works_after_the_bad_ones(client):
    assert outcome_of(client.post("/fhir/$refracture-risk?explain=false", content=json.dumps(example()), headers=FHIR),
                      400)[0]["code"] == "not-supported"
    assert post_fhir(client, example()).status_code == 200


def test_fhir_requests_are_audited_like_predict_without_identifiers(client, service_env):
    post_fhir(client, example())
    lines = [json.loads(x) for x in service_env["audit_log"].read_text().splitlines()]
    line = [x for x in lines if x["endpoint"] == "/fhir/$refracture-risk" and x["status"] == 200][-1]
    assert line["n_records"] == 1 and line["auth"] == "ok" and len(line["procedure_key_hashes"]) == 1
    assert "example-0001" not in service_env["audit_log"].read_text()


def test_fhir_and_cds_predictions_are_in_the_prediction_log_by_source(client, keys, service_env):
    import sqlite3
    import time

    fhir = post_fhir(client, example())
    cds = post_hook(client, keys, hook_call(resources_of(example())))
    assert fhir.status_code == cds.status_code == 200
    wanted = {fhir.headers["x-request-id"]: "fhir", cds.headers["x-request-id"]: "cds"}
    logged: dict = {}
    deadline = time.time() + 20
    while time.time() < deadline and len(logged) < 2:
        with sqlite3.connect(service_env["prediction_db"]) as db:
            logged = dict(db.execute(f"SELECT request_id, source FROM predictions WHERE request_id IN "
                                     f"({', '.join('?' * len(wanted))})", list(wanted)).fetchall())
        time.sleep(0.2)
    assert logged == wanted  # one record each, with the request id of the audit line and its source


# ------------------------------------------------------------------------------- CDS Hooks


def test_discovery_needs_the_clients_jwt_and_lists_the_service_on_both_hooks(client, keys):
    assert client.get("/cds-services").status_code == 401
    r = client.get("/cds-services", headers=keys.auth("/cds-services"))
    assert r.status_code == 200, r.text
    services = r.json()["services"]
    assert [s["hook"] for s in services] == ["patient-view", "encounter-discharge"]
    assert {s["id"] for s in services} == {"refracture-risk"}
    assert all(s["description"] and s["prefetch"]["patient"] == "Patient/{{context.patientId}}" for s in services)


def test_a_hook_call_with_prefetch_gives_one_valid_card_with_predicts_numbers(client, keys):
    bundle = example()
    r = post_hook(client, keys, hook_call(resources_of(bundle)))
    assert r.status_code == 200, r.text[:2000]
    (card,) = r.json()["cards"]
    assert card_problems(card) == []
    assert card["links"][0]["url"].startswith(f"{PUBLIC_URL}/ui/#record=")
    record = parse_bundle(bundle).records[0]
    predicted = client.post("/predict", json=record, headers=AUTH).json()["predictions"][0]
    assert_close(card_curves(card), curves(predicted), "card")
    # encounter-discharge answers the same way (its context adds the encounter).
    r = post_hook(client, keys, hook_call(resources_of(bundle), hook="encounter-discharge"))
    assert r.status_code == 200 and len(r.json()["cards"]) == 1


def test_no_augmentation_no_cards(client, keys):
    resources = [r for r in resources_of(example()) if r["resourceType"] != "Procedure"]
    r = post_hook(client, keys, hook_call(resources))
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_missing_prefetch_is_fetched_from_the_fhir_server_and_412_without_one(client, keys):
    resources = resources_of(example())
    call = hook_call(resources)
    del call["prefetch"]["observations"]
    r = post_hook(client, keys, call)
    assert r.status_code == 412 and "observations" in r.json()["error"]
    with MiniFhirServer(resources, "fhir-token-abc", page_size=3) as fhir:
        fetched = hook_call(resources, prefetch=False, fhirServer=fhir.url,
                            fhirAuthorization={"access_token": "fhir-token-abc", "token_type": "Bearer",
                                               "expires_in": 300, "scope": "user/*.read", "subject": "refracture-risk"})
        r = post_hook(client, keys, fetched)
        assert r.status_code == 200, r.text[:2000]
        assert fhir.requests and all(auth == "Bearer fhir-token-abc" for _, _, auth in fhir.requests)
    with_prefetch = post_hook(client, keys, hook_call(resources)).json()["cards"][0]
    assert_close(card_curves(r.json()["cards"][0]), card_curves(with_prefetch), "fetched vs prefetched")


def test_the_fetch_path_against_a_real_fhir_server_gives_the_prefetch_numbers(client, keys):
    """No prefetch: the service fetches the patient's data from a FHIR server (Medplum's FHIR
    engine, started here; tests/support/fhir_server_support.py) with the client's token, and
    scores the latest augmentation (two levels) of a patient who had two. (That engine answers a
    search in one page; following ``next`` pages is tested against the loopback server of
    tests/support/cds_support.py, above and in tests/serving/cds_hooks/test_prefetch.py.)"""
    if not fhir_server.node_available():
        pytest.skip("node and npm are needed to run the test FHIR server")
    tables = validate_raw(simulate(load_profile("yassavoly2025-pkp"), 400, 41)[0])
    procedures = tables["procedures"]
    levels = procedures.groupby("patient_id").size()
    patient_id = levels[levels >= 2].index[0]  # two levels treated in one session: two cards
    resources = [r for r in export_resources(tables)
                 if (r["resourceType"] == "Patient" and r["identifier"][0]["value"] == patient_id)
                 or r.get("subject", {}).get("reference") == f"Patient/{fhir_id(str(patient_id))}"]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    # An earlier augmentation (the simulator has none): its record is read, not scored.
    first = next(r for r in resources if r["resourceType"] == "Procedure")
    earlier = {k: v for k, v in first.items() if k != "reasonReference"}
    earlier.update(id="earlier-augmentation", identifier=[{**first["identifier"][0], "value": "earlier-augmentation"}],
                   performedDateTime=str(int(first["performedDateTime"][:4]) - 3) + first["performedDateTime"][4:])
    weight = next(r for r in resources if r.get("code", {}).get("coding", [{}])[0].get("code") == c.BODY_WEIGHT.code)
    # Older weights (more than a year before surgery): fetched, and not used.
    resources += [earlier] + [{**weight, "id": f"old-weight-{i}", "effectiveDateTime": f"{2000 + i % 10}-0{1 + i % 9}-15"}
                              for i in range(30)]
    with fhir_server.FhirServer("fhir-token-xyz") as fhir:
        fhir.load(resources)
        seen = httpx.get(f"{fhir.url}/Observation?patient=Patient/{patient['id']}",
                         headers={"Authorization": "Bearer fhir-token-xyz"}).json()
        assert len(seen["entry"]) > 30  # the server holds and searches what was loaded
        call = hook_call(resources, prefetch=False, fhirServer=fhir.url,
                         fhirAuthorization={"access_token": "fhir-token-xyz", "token_type": "Bearer", "expires_in": 300,
                                            "scope": "user/*.read", "subject": "refracture-risk",
                                            "patient": patient["id"]})
        fetched = post_hook(client, keys, call)
        assert fetched.status_code == 200, fetched.text[:2000]
    prefetched = post_hook(client, keys, hook_call(resources))
    assert prefetched.status_code == 200, prefetched.text[:2000]
    cards, expected = fetched.json()["cards"], prefetched.json()["cards"]
    assert cards and len(cards) == len(expected) and all(card_problems(x) == [] for x in cards)
    latest = procedures[procedures["patient_id"] == patient_id]["surgery_date"].max().strftime("%Y-%m-%d")
    assert {x["extension"][EXTENSION]["surgery_date"] for x in cards} == {latest}
    assert len(cards) == int(levels[patient_id])
    for got, want in zip(cards, expected):
        assert_close(card_curves(got), card_curves(want), "fetched from the FHIR server vs prefetched")


def test_bad_hook_calls_are_cds_errors_naming_the_field(client, keys):
    resources = resources_of(example())
    cases = [
        (b"{", 400, ""),
        (json.dumps({"hook": "patient-view"}), 400, "hookInstance"),
        (json.dumps(hook_call(resources, hook="order-sign")), 400, "hook"),
        (json.dumps({**hook_call(resources), "context": {"userId": "Practitioner/1"}}), 400, "context.patientId"),
        (json.dumps({**hook_call(resources), "fhirAuthorization": {"access_token": "t", "token_type": "Bearer",
                                                                   "expires_in": 1, "scope": "s", "subject": "x"}}),
         400, "fhirServer"),
        (json.dumps({**hook_call(resources), "context": {"userId": "Practitioner/1", "patientId": "not-this-one"}}),
         422, "prefetch.patient.id"),
    ]
    for body, status, field in cases:
        r = client.post(SERVICE_PATH, content=body, headers={**keys.auth(), "Content-Type": "application/json"})
        assert r.status_code == status, (body[:80], r.text)
        assert any(field in e["field"] for e in r.json()["errors"]), r.json()
    bad = example()
    _units(bad)
    r = post_hook(client, keys, hook_call(resources_of(bad)))
    assert r.status_code == 422
    assert any(e["field"].startswith("prefetch.observations.entry[") and "cannot be converted" in e["error"]
               for e in r.json()["errors"])


def test_tokens_are_refused_through_the_guard_and_cors_is_answered_for_browsers(client, keys):
    call = json.dumps(hook_call(resources_of(example())))
    now = int(dt.datetime.now(dt.timezone.utc).timestamp())
    refused = {
        "unknown key": CdsClientKeys(kid="not-registered").auth(),
        "alg none": {"Authorization": "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpc3MiOiJ4In0."},
        "expired": keys.auth(exp=now - 3600, iat=now - 3900),
        "wrong audience": keys.auth(aud="https://other.example/cds-services/refracture-risk"),
    }
    for what, headers in refused.items():
        r = client.post(SERVICE_PATH, content=call, headers={**headers, "Content-Type": "application/json", "Origin": ORIGIN})
        assert r.status_code == 401, what
        assert r.headers["www-authenticate"].startswith("Bearer") and r.json()["error"]
        assert r.headers["access-control-allow-origin"] == ORIGIN  # a browser client can read why
    token = keys.auth()
    assert client.post(SERVICE_PATH, content=call, headers={**token, "Content-Type": "application/json"}).status_code == 200
    replay = client.post(SERVICE_PATH, content=call, headers={**token, "Content-Type": "application/json"})
    assert replay.status_code == 401 and "jti" in replay.json()["error"]
    pre = client.options(SERVICE_PATH, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    other = client.options(SERVICE_PATH, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers


# ---------------------------------------------------------------- the same numbers everywhere


def _simulated(profile: str, seed: int):
    """/predict's JSON records and one FHIR Bundle per procedure, of ``N_PROCEDURES`` procedures."""
    tables = validate_raw(simulate(load_profile(profile), N_PROCEDURES, seed)[0])
    records = {r["procedure"]["procedure_id"]: r for r in to_json_records(tables_to_records(tables))}
    by_patient: dict[str, list[dict]] = {}
    for r in export_resources(tables):
        key = r["id"] if r["resourceType"] == "Patient" else r["subject"]["reference"].split("/", 1)[1]
        by_patient.setdefault(key, []).append(r)
    bundles = [b for resources in by_patient.values() for b in procedure_bundles(resources)]
    return records, bundles


@pytest.mark.parametrize("profile,seed", zip(PROFILES, (31, 32, 33)))
def test_predict_fhir_and_cds_give_the_same_probabilities(client, keys, profile, seed):
    records, bundles = _simulated(profile, seed)
    assert len(bundles) == len(records) == N_PROCEDURES
    ids = list(records)
    predicted = {}
    for start in range(0, len(ids), 100):  # within the body limit of this module's service
        r = client.post("/predict", json=[records[i] for i in ids[start:start + 100]], headers=AUTH)
        assert r.status_code == 200, r.text[:1000]
        predicted.update({p["procedure_id"]: curves(p) for p in r.json()["predictions"]})

    def fhir_and_cds(item):
        procedure_id, bundle = item
        proc = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Procedure"
                    and e["resource"]["identifier"][0]["value"] == procedure_id)
        a = post_fhir(client, bundle)
        b = post_hook(client, keys, hook_call(resources_of(bundle)))
        return procedure_id, proc, a, b

    with ThreadPoolExecutor(8) as pool:  # concurrent requests, batched together as in service
        results = list(pool.map(fhir_and_cds, bundles))
    for k, (procedure_id, proc, a, b) in enumerate(results):
        assert a.status_code == 200, a.text[:1000]
        answer = a.json()
        if k % VALIDATE_EVERY == 0:  # the R4 models validate the Bundle and every resource in it
            Bundle.model_validate(answer)
        assert_close(ra_curves(answer, f"Procedure/{proc['id']}"), predicted[procedure_id], f"fhir {procedure_id}")
        assert b.status_code == 200, b.text[:1000]
        cards = b.json()["cards"]
        assert all(card_problems(card) == [] for card in cards)
        (mine,) = [card for card in cards if card["extension"][EXTENSION]["procedure_id"] == procedure_id]
        assert_close(card_curves(mine), predicted[procedure_id], f"cds {procedure_id}")
