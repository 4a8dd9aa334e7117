"""The project CodeSystem as a FHIR R4 ``CodeSystem`` resource (the service publishes it).

Its concepts are built from the mapping's own lists (``features.fhir.codes``,
``features.fhir.parse.PROJECT_CODES``), so every code the parser accepts and the exporter
writes is defined here, with the contract's definition and unit.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.codesystem import CodeSystem

from features.fhir import codes as c
from features.fhir.mapping import UCUM_OF_UNIT
from features.fhir.parse import PROJECT_CODES
from features.schema import IMAGING, SCHEMA_VERSION


def _concepts() -> list[dict[str, Any]]:
    known: dict[str, c.Code] = {}
    for code in (c.IMAGING_PANEL, c.BRACE, *c.DXA_UNSTATED, *c.TIMEPOINT.values(), *c.LEAKAGE_INTRADISCAL.values(),
                 *(x for codes in (*c.TECHNIQUE.values(), *c.APPROACH.values()) for x in codes if x.system == c.PROJECT_SYSTEM),
                 *c.OUTCOME.values(), *c.ASSESSMENT.values(), *c.RISK_BAND.values()):
        known[code.code] = code
    concepts = []
    for code in sorted(PROJECT_CODES):
        if code in known:
            concepts.append({"code": code, "display": known[code].display})
            continue
        column = IMAGING.column(code)
        unit = UCUM_OF_UNIT.get(column.unit, "")
        definition = column.definition + (f" Unit: {column.unit} (UCUM {unit})." if unit else "")
        concepts.append({"code": code, "display": code.replace("_", " "), "definition": definition})
    return concepts


def project_code_system() -> dict[str, Any]:
    """The project CodeSystem resource (JSON), validated against the FHIR R4 model."""
    resource = {
        "resourceType": "CodeSystem",
        "id": "refracture-contract",
        "url": c.PROJECT_SYSTEM,
        "version": SCHEMA_VERSION,
        "name": "RefractureContract",
        "title": "refracture-risk data contract codes",
        "status": "active",
        "experimental": False,
        "publisher": "refracture-risk",
        "description": ("Codes for the data contract's fields that no standard terminology covers (imaging measures of "
                        "named vertebrae, cement distribution and leakage, the augmentation technique and access), and "
                        "for their allowed values (<field>.<value>). The codes are the contract's own field names "
                        "(docs/data-dictionary.md)."),
        "caseSensitive": True,
        "content": "complete",
        "concept": _concepts(),
    }
    resource["count"] = len(resource["concept"])
    CodeSystem.model_validate(resource)
    return resource
