"""The FHIR parser on hand-made inputs: the documented example, every kind of bad input,
the rules that pick one value among several, and contract errors named by element."""

from __future__ import annotations

import datetime as dt

import pytest

from features.fhir import codes as c
from features.fhir.mapping import IMAGING_FIELDS
from features.fhir.codesystem import project_code_system
from features.fhir.docs import _EXAMPLE
from features.fhir.parse import PROJECT_CODES, parse_bundle, parse_prefetch
from fhir_support import entry, example

NOW = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)


def _panel(bundle: dict, tp: str) -> dict:
    return entry(bundle, lambda r: r["resourceType"] == "Observation" and r.get("id", "").endswith(f"-{tp}"))


def _component(obs: dict, code: str) -> dict:
    return next(x for x in obs["component"] if x["code"]["coding"][0]["code"] == code)


def _errors(parsed) -> list[tuple[str, str]]:
    return [(p.expression, p.message) for p in parsed.errors]


def test_example_bundle_gives_the_example_record():
    parsed = parse_bundle(example(), now=NOW)
    assert parsed.ok and parsed.problems == []
    rec = parsed.records[0]
    patient, procedure = _EXAMPLE["patients"][0], _EXAMPLE["procedures"][0]
    for name in ("sex", "height_cm", "weight_kg", "prior_vertebral_fractures_n", "anti_osteoporosis_therapy",
                 "dxa_bmd_g_cm2", "dxa_t_score"):
        assert rec["patient"][name] == patient[name], name
    for name in ("procedure_id", "surgery_date", "age_years", "level", "technique", "n_levels_treated",
                 "pain_onset_date", "approach", "cement_volume_ml", "brace_prescribed"):
        assert rec["procedure"][name] == procedure[name], name
    for tp, row in (("preop", _EXAMPLE["imaging"][0]), ("postop", _EXAMPLE["imaging"][1])):
        for name, value in row.items():
            if name not in ("procedure_id", "timepoint", "exam_date"):
                assert rec["imaging"][tp][name] == value, (tp, name)
    assert "Observation/example-0001-preop" in parsed.sources[0].basis


def test_wrong_resource_type_and_bundle_type_are_refused():
    assert _errors(parse_bundle({"resourceType": "Patient"}, now=NOW))[0][0] == "Bundle.resourceType"
    bundle = example()
    bundle["type"] = "document"
    parsed = parse_bundle(bundle, now=NOW)
    assert parsed.input_refused and _errors(parsed)[0][0] == "Bundle.type"


def test_a_second_patient_refuses_the_bundle():
    bundle = example()
    other = {**entry(bundle, lambda r: r["resourceType"] == "Patient"), "id": "someone-else"}
    bundle["entry"].append({"fullUrl": "urn:uuid:1", "resource": other})
    parsed = parse_bundle(bundle, now=NOW)
    assert parsed.input_refused and not parsed.accepted()[0]
    assert any("a second Patient" in m and e == f"Bundle.entry[{len(bundle['entry']) - 1}].resource" for e, m in _errors(parsed))


def test_unknown_codes_are_refused_by_element():
    bundle = example()
    _component(_panel(bundle, "preop"), "hu_index")["code"]["coding"][0]["code"] = "hu_made_up"
    parsed = parse_bundle(bundle, now=NOW)
    assert any(".component[" in e and "hu_made_up" in m for e, m in _errors(parsed))
    bundle = example()
    proc = entry(bundle, lambda r: r["resourceType"] == "Procedure")
    proc["bodySite"][0]["coding"][0]["code"] = "71341001"  # a SNOMED code that is not a vertebra
    errors = _errors(parse_bundle(bundle, now=NOW))
    assert any(e.endswith(".bodySite") and "not a vertebra" in m for e, m in errors)


def test_units_are_converted_or_refused_by_name():
    bundle = example()
    height = entry(bundle, lambda r: r.get("id", "").endswith("-height"))
    height["valueQuantity"] = {"value": 62.2, "unit": "in", "system": c.UCUM, "code": "[in_i]"}
    parsed = parse_bundle(bundle, now=NOW)
    assert parsed.ok and parsed.records[0]["patient"]["height_cm"] == pytest.approx(157.988)
    height["valueQuantity"] = {"value": 62.2, "unit": "kg", "system": c.UCUM, "code": "kg"}
    errors = _errors(parse_bundle(bundle, now=NOW))
    assert any(e.endswith(".valueQuantity") and "height_cm" in m and "'kg' cannot be converted to 'cm'" in m
               for e, m in errors)
    height["valueQuantity"] = {"value": 62.2, "unit": "cm"}  # no UCUM code
    assert any("not stated as a UCUM code" in m for _, m in _errors(parse_bundle(bundle, now=NOW)))


def test_observation_dated_after_the_request_is_refused():
    bundle = example()
    _panel(bundle, "postop")["effectiveDateTime"] = "2026-01-01"
    errors = _errors(parse_bundle(bundle, now=NOW))
    assert any(e.endswith(".effectiveDateTime") and "after the request time" in m for e, m in errors)


def test_conflicting_duplicates_are_refused_and_equal_ones_kept():
    bundle = example()
    weight = entry(bundle, lambda r: r.get("id", "").endswith("-weight"))
    twin = {**weight, "id": "weight-twin", "valueQuantity": {**weight["valueQuantity"]}}
    bundle["entry"].append({"resource": twin})
    assert parse_bundle(bundle, now=NOW).ok  # same value, same time: one value
    twin["valueQuantity"]["value"] = 61
    errors = _errors(parse_bundle(bundle, now=NOW))
    assert any("conflicting values" in m and "weight_kg" in m for _, m in errors)


def test_the_closest_value_before_surgery_and_the_first_after_are_used():
    bundle = example()
    older = {**entry(bundle, lambda r: r.get("id", "").endswith("-weight")), "id": "older", "effectiveDateTime": "2023-06-01"}
    older["valueQuantity"] = {**older["valueQuantity"], "value": 70}
    after = {**older, "id": "after", "effectiveDateTime": "2024-02-01"}
    bundle["entry"] += [{"resource": older}, {"resource": after}]
    assert parse_bundle(bundle, now=NOW).records[0]["patient"]["weight_kg"] == 56  # the latest on/before surgery
    later_post = {**_panel(bundle, "postop"), "id": "later-post", "effectiveDateTime": "2024-01-20"}
    later_post["component"] = [{**x} for x in later_post["component"]]
    _component(later_post, "hu_index")["valueQuantity"] = {**_component(later_post, "hu_index")["valueQuantity"], "value": 900}
    bundle["entry"].append({"resource": later_post})
    parsed = parse_bundle(bundle, now=NOW)
    assert parsed.ok and parsed.records[0]["imaging"]["postop"]["hu_index"] == 1100  # the first after surgery


def test_surgery_day_imaging_needs_a_time_or_the_timepoint():
    bundle = example()
    post = _panel(bundle, "postop")
    post["effectiveDateTime"] = "2024-01-15"
    assert parse_bundle(bundle, now=NOW).ok  # the extension states postop
    post.pop("extension")
    errors = _errors(parse_bundle(bundle, now=NOW))
    assert any("cannot be told pre- from post-operative" in m for _, m in errors)
    post["effectiveDateTime"] = "2024-01-15T16:00:00+01:00"
    entry(bundle, lambda r: r["resourceType"] == "Procedure")["performedDateTime"] = "2024-01-15T09:00:00+01:00"
    parsed = parse_bundle(bundle, now=NOW)
    assert parsed.ok and parsed.records[0]["imaging"]["postop"]["hu_index"] == 1100


def test_missing_surgery_and_no_augmentation():
    bundle = example()
    proc = entry(bundle, lambda r: r["resourceType"] == "Procedure")
    del proc["performedDateTime"]
    assert any(e.endswith(".performed[x]") for e, _ in _errors(parse_bundle(bundle, now=NOW)))
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Procedure"]
    parsed = parse_bundle(bundle, now=NOW)
    assert parsed.no_procedure and not parsed.records and parsed.errors[0].code == "not-found"


def test_contract_errors_are_named_by_the_element_the_value_came_from():
    bundle = example()
    _component(_panel(bundle, "preop"), "hu_index")["valueQuantity"]["value"] = 5000  # above the contract's 2500 HU
    parsed = parse_bundle(bundle, now=NOW)
    (problem,) = parsed.errors
    assert problem.record == 0 and "imaging.preop.hu_index" in problem.message
    index = next(i for i, e in enumerate(bundle["entry"]) if e["resource"].get("id") == "example-0001-preop")
    assert problem.expression.startswith(f"Bundle.entry[{index}].resource.component[")
    assert problem.expression.endswith(".valueQuantity")


def test_invalid_fhir_is_named_by_the_model():
    bundle = example()
    entry(bundle, lambda r: r["resourceType"] == "Patient")["birthDate"] = "15/01/1946"
    errors = _errors(parse_bundle(bundle, now=NOW))
    assert any(e.endswith(".birthDate") and "not valid FHIR R4" in m for e, m in errors)


def test_prefetch_reads_bundles_and_single_resources():
    bundle = example()
    resources = [e["resource"] for e in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    prefetch = {"patient": patient,
                "everything": {"resourceType": "Bundle", "type": "searchset",
                               "entry": [{"resource": r} for r in resources if r is not patient]},
                "missing": None}
    parsed = parse_prefetch(prefetch, now=NOW)
    assert parsed.ok and parsed.records == parse_bundle(example(), now=NOW).records


def test_the_code_system_defines_every_project_code():
    cs = project_code_system()
    assert {x["code"] for x in cs["concept"]} == set(PROJECT_CODES)
    assert cs["url"] == c.PROJECT_SYSTEM and cs["count"] == len(PROJECT_CODES)
    for x in cs["concept"]:
        assert x.get("display"), x["code"]
        if x["code"] in IMAGING_FIELDS:  # the contract's definition, with the unit
            assert x.get("definition"), x["code"]
