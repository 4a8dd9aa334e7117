"""The one builder of FHIR R4 ``RiskAssessment`` resources, for the HTTP endpoint and the
batch writer alike.

Input: one record's prediction in the ``/predict`` (or ``/explain``) answer shape, as
``serving.scoring.served_models.ServedModels.score`` returns it, and the record's
``features.fhir.parse.RecordSource`` (patient, procedure, the resources its values came
from). Output: JSON-ready resources, one per outcome, and one for the death context when a
death model is served:

- ``status`` final; ``subject`` the patient; ``occurrenceDateTime`` when it was scored;
  ``basis`` every resource a value came from (the Procedure and Patient first); ``parent``
  the Procedure (the assessment is about that treated level).
- ``method``: the registered model, coded ``<model name>`` with ``Coding.version`` = the
  registry version (system ``MODEL_SYSTEM``), and the MLflow run in its text.
- ``prediction``: one per horizon of the risk curve (3, 6, 12, 24 months): ``outcome`` (the
  project code of the outcome), ``probabilityDecimal`` (cumulative incidence by then, death
  competing) and ``whenRange`` 0 to that many months after the surgery (UCUM ``mo``); the
  headline horizon also carries ``qualitativeRisk`` (the risk band, project code
  ``risk_band.<band>``).
- The explanation (with ``/explain`` or ``predict --explain``): extension ``EXT_FACTORS``
  with one ``factor`` sub-extension per top factor (``feature``, ``text``,
  ``contribution`` in log-odds at ``horizon``, ``direction`` raising/lowering), and a
  ``note`` that the factors are associations, not causal effects.

``validate(resource)`` checks one resource against the FHIR R4 model (fhir.resources R4B):
the endpoint validates every resource it answers with; ``tests/serving/fhir`` validates
every resource built for 1,000 procedures per profile.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.riskassessment import RiskAssessment

from features.fhir import codes as c
from features.fhir.export import fhir_id
from features.fhir.parse import RecordSource
from features.labels import DEATH_TARGET

#: Code system of the registered models (codes: MLflow registered model names).
MODEL_SYSTEM = f"{c.CANONICAL_BASE}/CodeSystem/registered-models"
#: Extension holding the explanation's top factors.
EXT_FACTORS = f"{c.CANONICAL_BASE}/StructureDefinition/risk-factors"
ASSOCIATION_NOTE = ("Factors are what the model associates with the risk (SHAP contributions, log-odds); they are "
                    "not the causal effect of changing them.")


def _months(value: float) -> dict[str, Any]:
    v = float(value)
    return {"value": int(v) if v.is_integer() else v, "unit": "months", "system": c.UCUM, "code": "mo"}


def _method(model: dict[str, Any]) -> dict[str, Any]:
    run = f"; MLflow run {model['run_id']}" if model.get("run_id") else ""
    return {"coding": [{"system": MODEL_SYSTEM, "code": model["name"], "version": str(model["version"]),
                        "display": f"{model['name']} version {model['version']}"}],
            "text": f"Registered model {model['name']}, version {model['version']}{run}"}


def _factors(explanation: dict[str, Any]) -> dict[str, Any]:
    factors = []
    for direction in ("raising", "lowering"):
        for f in explanation.get(direction) or []:
            factors.append({"url": "factor", "extension": [
                {"url": "feature", "valueString": f["feature"]},
                {"url": "text", "valueString": f.get("text") or f["feature"]},
                {"url": "contribution", "valueDecimal": float(f["contribution"])},
                {"url": "direction", "valueCode": direction},
            ]})
    return {"url": EXT_FACTORS, "extension": [
        {"url": "horizon", "valueQuantity": _months(explanation["horizon_months"])},
        {"url": "baseValue", "valueDecimal": float(explanation["base_value"])},
        *factors,
    ]}


def _resource(outcome: str, item: dict[str, Any], source: RecordSource, procedure_id: str, occurrence: str,
              curve: dict[str, float]) -> dict[str, Any]:
    outcome_code = {"coding": [c.OUTCOME[outcome].coding()], "text": c.OUTCOME[outcome].display}
    headline = float(item["horizon_months"])
    predictions = []
    for key, p in curve.items():
        months = float(key)
        entry: dict[str, Any] = {"outcome": outcome_code, "probabilityDecimal": float(p),
                                 "whenRange": {"low": _months(0), "high": _months(months)}}
        if months == headline and item.get("risk_band"):
            entry["qualitativeRisk"] = {"coding": [c.RISK_BAND[item["risk_band"]].coding()]}
        predictions.append(entry)
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": fhir_id(f"{procedure_id}-{outcome}", "risk"),
        "status": "final",
        "code": {"coding": [c.ASSESSMENT[outcome].coding()]},
        "subject": {"reference": source.patient},
        "occurrenceDateTime": occurrence,
        "parent": {"reference": source.procedure},
        "method": _method(item["model"]),
        "basis": [{"reference": ref} for ref in source.basis],
        "prediction": predictions,
    }
    explanation = item.get("explanation")
    if explanation:
        resource["extension"] = [_factors(explanation)]
        resource["note"] = [{"text": ASSOCIATION_NOTE}]
    return resource


def risk_assessments(prediction: dict[str, Any], source: RecordSource, occurrence: str) -> list[dict[str, Any]]:
    """One record's prediction -> its RiskAssessment resources (outcomes, then the death context).

    ``prediction``: ``{"procedure_id", "outcomes": {outcome: {"probability", "horizon_months",
    "risk_band", "curve": {"3": p, ...}, "model": {"name", "version", "run_id"},
    "explanation"?}}, "context"?: {"death": {"probability", "horizon_months", "model"}}}``;
    ``occurrence``: the scoring time (FHIR dateTime, e.g. ``2025-06-01T10:00:00+00:00``).
    """
    procedure_id = str(prediction["procedure_id"])
    out = [_resource(outcome, item, source, procedure_id, occurrence, item["curve"])
           for outcome, item in prediction["outcomes"].items()]
    death = (prediction.get("context") or {}).get("death")
    if death:
        out.append(_resource(DEATH_TARGET, death, source, procedure_id, occurrence,
                             {f"{float(death['horizon_months']):g}": death["probability"]}))
    return out


def validate(resource: dict[str, Any]) -> None:
    """Raise pydantic's ValidationError unless ``resource`` is a valid FHIR R4 RiskAssessment."""
    RiskAssessment.model_validate(resource)


def explanation_extension(explanation: dict[str, Any]) -> dict[str, Any]:
    """The explanation's extension (``EXT_FACTORS``) as ``risk_assessments`` writes it."""
    return _factors(explanation)
