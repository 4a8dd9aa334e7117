"""The RiskAssessment builder: FHIR R4 resources the model validates, one per outcome with a
prediction per horizon, the death context apart, the explanation in its extension."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from features.fhir import codes as c
from features.fhir.parse import parse_bundle
from fhir_support import example
from serving.fhir.risk_assessment import ASSOCIATION_NOTE, EXT_FACTORS, MODEL_SYSTEM, risk_assessments, validate

CURVE = {"3": 0.01, "6": 0.02, "12": 0.04, "24": 0.07}


def _prediction(explain: bool = False) -> dict:
    outcomes = {}
    for o in ("cemented_refracture", "adjacent_fracture", "remote_fracture"):
        item = {"probability": 0.07, "horizon_months": 24.0, "risk_band": "intermediate", "curve": dict(CURVE),
                "model": {"name": f"refracture-{o}", "version": "3", "run_id": "abc123"}, "missing_inputs": []}
        if explain:
            item["explanation"] = {"horizon_months": 24.0, "probability": 0.07, "base_value": -2.5,
                                   "raising": [{"feature": "hu_index_preop", "text": "HU 62: raises", "contribution": 0.4}],
                                   "lowering": [{"feature": "age_years", "text": "age 60: lowers", "contribution": -0.1}]}
        outcomes[o] = item
    return {"record": 0, "procedure_id": "example-0001", "outcomes": outcomes,
            "context": {"death": {"probability": 0.12, "horizon_months": 24.0,
                                  "model": {"name": "refracture-death", "version": "1", "run_id": None}}}}


@pytest.fixture(scope="module")
def source():
    return parse_bundle(example()).sources[0]


def test_one_valid_resource_per_outcome_and_one_for_death(source):
    resources = risk_assessments(_prediction(), source, "2025-06-01T10:00:00+00:00")
    assert [r["prediction"][0]["outcome"]["coding"][0]["code"] for r in resources] == [
        "cemented_refracture", "adjacent_fracture", "remote_fracture", "death"]
    for r in resources:
        validate(r)
        assert r["status"] == "final" and r["subject"] == {"reference": "Patient/example-patient"}
        assert r["parent"] == {"reference": "Procedure/example-0001"}
        assert r["basis"][:2] == [{"reference": "Patient/example-patient"}, {"reference": "Procedure/example-0001"}]
        assert {"reference": "Observation/example-0001-preop"} in r["basis"]
        assert r["method"]["coding"][0]["system"] == MODEL_SYSTEM
    adjacent = resources[1]
    assert adjacent["method"]["coding"][0]["code"] == "refracture-adjacent_fracture"
    assert adjacent["method"]["coding"][0]["version"] == "3" and "abc123" in adjacent["method"]["text"]
    assert [(p["probabilityDecimal"], p["whenRange"]["high"]["value"]) for p in adjacent["prediction"]] == [
        (0.01, 3), (0.02, 6), (0.04, 12), (0.07, 24)]
    assert all(p["whenRange"]["low"]["value"] == 0 and p["whenRange"]["high"]["code"] == "mo" for p in adjacent["prediction"])
    assert [p.get("qualitativeRisk", {}).get("coding", [{}])[0].get("code") for p in adjacent["prediction"]] == [
        None, None, None, "risk_band.intermediate"]
    death = resources[3]
    assert len(death["prediction"]) == 1 and death["prediction"][0]["probabilityDecimal"] == 0.12
    assert death["method"]["coding"][0]["code"] == "refracture-death"
    assert len({r["id"] for r in resources}) == 4


def test_the_explanation_is_an_extension_with_the_association_note(source):
    r = risk_assessments(_prediction(explain=True), source, "2025-06-01T10:00:00+00:00")[0]
    validate(r)
    (ext,) = r["extension"]
    assert ext["url"] == EXT_FACTORS
    factors = [x for x in ext["extension"] if x["url"] == "factor"]
    assert [{y["url"]: next(v for k, v in y.items() if k.startswith("value")) for y in f["extension"]} for f in factors] == [
        {"feature": "hu_index_preop", "text": "HU 62: raises", "contribution": 0.4, "direction": "raising"},
        {"feature": "age_years", "text": "age 60: lowers", "contribution": -0.1, "direction": "lowering"}]
    assert r["note"] == [{"text": ASSOCIATION_NOTE}]


def test_validate_refuses_a_broken_resource(source):
    r = risk_assessments(_prediction(), source, "2025-06-01T10:00:00+00:00")[0]
    r["prediction"][0]["probabilityDecimal"] = "high"
    with pytest.raises(ValidationError):
        validate(r)


def test_outcome_codes_are_in_the_project_system(source):
    r = risk_assessments(_prediction(), source, "2025-06-01")[0]
    assert r["prediction"][0]["outcome"]["coding"][0]["system"] == c.PROJECT_SYSTEM
