"""What the service says about itself in FHIR: its ``CapabilityStatement`` (``GET /fhir/metadata``)
and the ``OperationDefinition`` of ``$refracture-risk`` (``GET /fhir/OperationDefinition/refracture-risk``).

Both are built once at start from what the service serves (the outcomes, the model versions,
the project CodeSystem's canonical URL), so they cannot announce something it does not do.
Canonical URLs use the mapping's base (``features.fhir.codes.CANONICAL_BASE``).
"""

from __future__ import annotations

from typing import Any

from features.fhir import codes as c

#: The FHIR release the service speaks (R4 technical correction 1; resources checked with the
#: fhir.resources R4B models, wire-compatible with R4 for every resource used here).
FHIR_VERSION = "4.0.1"
OPERATION = "refracture-risk"
OPERATION_URL = f"{c.CANONICAL_BASE}/OperationDefinition/{OPERATION}"
CAPABILITY_URL = f"{c.CANONICAL_BASE}/CapabilityStatement/refracture-risk"
#: The project CodeSystem's id (its read URL is ``/fhir/CodeSystem/<id>``).
CODE_SYSTEM_ID = "refracture-contract"

_OPERATION_TEXT = (
    "Risk of a new vertebral fracture after vertebral augmentation (PVP/PKP). Input: a Bundle (type collection or "
    "transaction) holding one patient's resources (Patient, Procedure, Observation, Condition, MedicationStatement; "
    "docs/fhir.md), posted as the body, or a Parameters resource with it as parameter 'bundle'. Output: a collection "
    "Bundle with, per completed vertebral augmentation Procedure, one RiskAssessment per outcome (the cumulative "
    "incidence at 3, 6, 12 and 24 months, death as a competing event; the top factors of the 24-month risk in an "
    "extension) and one for the probability of death by 24 months, plus an OperationOutcome of warnings when some "
    "resources were not used. Errors: an OperationOutcome whose issues name the offending element (FHIRPath); 400 when "
    "the input is not a readable Bundle, 422 when its content is refused.")


def operation_definition(version: str) -> dict[str, Any]:
    """The OperationDefinition of ``$refracture-risk`` (system level, no side effect)."""
    return {
        "resourceType": "OperationDefinition",
        "id": OPERATION,
        "url": OPERATION_URL,
        "version": version,
        "name": "RefractureRisk",
        "title": "Refracture risk after vertebral augmentation",
        "status": "active",
        "kind": "operation",
        "publisher": "refracture-risk",
        "description": _OPERATION_TEXT,
        "affectsState": False,
        "code": OPERATION,
        "system": True,
        "type": False,
        "instance": False,
        "parameter": [
            {"name": "bundle", "use": "in", "min": 1, "max": "1", "type": "Bundle",
             "documentation": "One patient's resources, as a collection or transaction Bundle (docs/fhir.md)."},
            {"name": "return", "use": "out", "min": 1, "max": "1", "type": "Bundle",
             "documentation": "A collection Bundle of RiskAssessment resources (and an OperationOutcome of warnings)."},
        ],
    }


def capability_statement(version: str, date: str, public_url: str | None, outcomes: list[str]) -> dict[str, Any]:
    """The CapabilityStatement of this instance. ``version``: the service's; ``date``: when it
    started (FHIR dateTime); ``public_url``: its external base URL, if configured; ``outcomes``:
    the served outcomes (named in the documentation)."""
    implementation: dict[str, Any] = {"description": "refracture-risk: risk of refracture after vertebral augmentation"}
    if public_url:
        implementation["url"] = f"{public_url.rstrip('/')}/fhir"
    return {
        "resourceType": "CapabilityStatement",
        "id": "refracture-risk",
        "url": CAPABILITY_URL,
        "version": version,
        "name": "RefractureRiskService",
        "title": "refracture-risk FHIR service",
        "status": "active",
        "date": date,
        "publisher": "refracture-risk",
        "kind": "instance",
        "software": {"name": "refracture-risk", "version": version},
        "implementation": implementation,
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": (f"Scores one patient's resources with the served models ({', '.join(outcomes)}; "
                              "death as context). No resource is stored."),
            "security": {"cors": False, "description": (
                "POST /fhir/$refracture-risk needs 'Authorization: Bearer <credential>', the credential /predict "
                "takes, with the explain scope (docs/serving.md, Security); a refusal is an OperationOutcome (401, "
                "403). This statement, the CodeSystem and the OperationDefinition are public.")},
            "resource": [
                {"type": "CodeSystem", "interaction": [{"code": "read"}],
                 "documentation": f"The project CodeSystem {c.PROJECT_SYSTEM} (id {CODE_SYSTEM_ID})."},
                {"type": "OperationDefinition", "interaction": [{"code": "read"}],
                 "documentation": f"The definition of ${OPERATION} (id {OPERATION})."},
            ],
            "operation": [{"name": OPERATION, "definition": OPERATION_URL, "documentation": _OPERATION_TEXT}],
        }],
    }
