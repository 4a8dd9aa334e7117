"""FHIR ``OperationOutcome``: how the service's FHIR endpoints say what went wrong.

Every refusal under ``/fhir`` is one: the parser's problems (``features.fhir.parse.FhirProblem``:
FHIRPath ``expression``, message, severity, issue type), the contract checker's field errors
named by the FHIR element each value came from, and the guard's own refusals (401, 413) via
``render_guard_error``, the ``render_error`` of the ``/fhir`` route (``serving.http.callers``).
Answers carry ``application/fhir+json``.

An issue's ``code`` is from the FHIR R4 value set IssueType
(https://hl7.org/fhir/R4/valueset-issue-type.html): ``structure``, ``invalid``, ``value``,
``required``, ``code-invalid``, ``business-rule``, ``duplicate``, ``not-found``, ``security``,
``login``, ``too-costly``, ``not-supported``, ``exception``, ``informational``, ``processing``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import orjson

#: The media type of every FHIR answer (FHIR R4 http.html#mime-type).
FHIR_JSON = "application/fhir+json"
#: Issues listed in one OperationOutcome; the last issue says how many were left out.
MAX_ISSUES = 100
#: IssueType of the guard's refusals by HTTP status.
_GUARD_CODES = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported", 413: "too-costly",
                415: "not-supported", 429: "throttled", 503: "transient"}


@dataclass(frozen=True)
class Issue:
    """One ``OperationOutcome.issue``: severity (fatal | error | warning | information), IssueType
    code, diagnostics (plain words), FHIRPath expression of the offending element ('' for none)."""

    severity: str
    code: str
    diagnostics: str
    expression: str = ""

    def resource(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = [self.expression]
        return out


def issues_of(problems: Iterable[Any]) -> list[Issue]:
    """Issues from the parser's ``FhirProblem``s (anything with expression, message, severity, code)."""
    return [Issue(p.severity, p.code, p.message, p.expression) for p in problems]


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """The OperationOutcome resource (JSON-ready) of ``issues`` (at most ``MAX_ISSUES``; the
    count of the rest in a last issue)."""
    shown = [i.resource() for i in issues[:MAX_ISSUES]]
    if len(issues) > MAX_ISSUES:
        shown.append(Issue("information", "informational",
                           f"{len(issues) - MAX_ISSUES} more issue(s) not listed ({len(issues)} in all)").resource())
    if not shown:
        shown = [Issue("information", "informational", "no issue").resource()]
    return {"resourceType": "OperationOutcome", "issue": shown}


def outcome_bytes(issues: list[Issue]) -> bytes:
    """``operation_outcome(issues)`` as the JSON of an answer."""
    return orjson.dumps(operation_outcome(issues))


def render_guard_error(status: int, message: str, errors: list[dict[str, Any]]) -> tuple[bytes, str]:
    """The guard's refusal (401 no or wrong key, 413 body too large, ...) as an OperationOutcome:
    the ``render_error`` of the ``/fhir`` route."""
    code = _GUARD_CODES.get(status, "processing" if status < 500 else "exception")
    issues = [Issue("error", code, message)]
    issues += [Issue("error", code, f"{e.get('error', '')}" + (f" (allowed: {e['allowed']})" if e.get("allowed") else ""))
               for e in errors if e.get("error") and e.get("error") != message]
    return outcome_bytes(issues), FHIR_JSON
