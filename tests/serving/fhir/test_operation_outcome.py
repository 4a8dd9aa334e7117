"""OperationOutcomes (serving.fhir.operation_outcome) and the service's own definitions
(serving.fhir.capability) are valid FHIR R4 resources (fhir.resources R4B models)."""

from __future__ import annotations

import json

from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationdefinition import OperationDefinition
from fhir.resources.R4B.operationoutcome import OperationOutcome

from features.fhir.parse import FhirProblem
from serving.fhir.capability import CODE_SYSTEM_ID, OPERATION_URL, capability_statement, operation_definition
from serving.fhir.operation_outcome import (FHIR_JSON, MAX_ISSUES, Issue, issues_of, operation_outcome,
                                            render_guard_error)


def test_problems_become_issues_with_their_fhirpath():
    problems = [FhirProblem("Bundle.entry[3].resource.valueQuantity", "height_cm: unit 'kg' is not a length",
                            code="value"),
                FhirProblem("Bundle.entry[1].resource.status", "not used", severity="warning", code="informational")]
    outcome = operation_outcome(issues_of(problems))
    OperationOutcome.model_validate(outcome)
    first, second = outcome["issue"]
    assert first == {"severity": "error", "code": "value", "diagnostics": "height_cm: unit 'kg' is not a length",
                     "expression": ["Bundle.entry[3].resource.valueQuantity"]}
    assert second["severity"] == "warning"


def test_long_lists_are_cut_with_the_count_said_and_an_empty_one_is_still_valid():
    outcome = operation_outcome([Issue("error", "value", f"problem {i}", f"Bundle.entry[{i}]") for i in range(250)])
    OperationOutcome.model_validate(outcome)
    assert len(outcome["issue"]) == MAX_ISSUES + 1 and "150 more" in outcome["issue"][-1]["diagnostics"]
    OperationOutcome.model_validate(operation_outcome([]))


def test_the_guards_refusals_render_as_operation_outcomes():
    body, media = render_guard_error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", [])
    assert media == FHIR_JSON
    outcome = json.loads(body)
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"][0]["code"] == "login"
    body, _ = render_guard_error(413, "request body larger than 10 bytes", [
        {"record": None, "field": "", "error": "body too large", "allowed": "at most 10 bytes"}])
    outcome = json.loads(body)
    assert [i["code"] for i in outcome["issue"]] == ["too-costly", "too-costly"]
    assert "at most 10 bytes" in outcome["issue"][1]["diagnostics"]


def test_capability_statement_and_operation_definition_are_valid_and_agree():
    cap = capability_statement("1.2.3", "2026-01-01T00:00:00+00:00", "https://risk.example",
                               ["cemented_refracture", "adjacent_fracture", "remote_fracture"])
    CapabilityStatement.model_validate(cap)
    (rest,) = cap["rest"]
    assert cap["fhirVersion"] == "4.0.1" and cap["implementation"]["url"] == "https://risk.example/fhir"
    assert rest["operation"] == [{"name": "refracture-risk", "definition": OPERATION_URL,
                                  "documentation": rest["operation"][0]["documentation"]}]
    assert CODE_SYSTEM_ID in rest["resource"][0]["documentation"]
    op = operation_definition("1.2.3")
    OperationDefinition.model_validate(op)
    assert op["url"] == OPERATION_URL and op["system"] and not op["instance"] and not op["affectsState"]
    assert "implementation" in capability_statement("1", "2026-01-01", None, [])
