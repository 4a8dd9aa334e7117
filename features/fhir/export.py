"""The mapping's inverse: a raw export (the table contract) as FHIR R4 resources.

``export_resources(tables)`` yields every resource of a validated raw export; the command
``refracture fhir-export`` writes them as a FHIR Bulk Data export (one ``<Type>.ndjson`` per
resource type) and as one Bundle per procedure, so the demo, the tests and the benchmarks
have FHIR data with known answers. Pure: typed tables in (``features.validate.validate_raw``),
JSON-ready resources out; writing files is the command's job.

What the tables hold and FHIR needs is written as follows (docs/fhir.md says it too):

- Patient.birthDate = the first surgery date minus ``age_years`` (rounded to whole days),
  so ``age_years`` comes back to within 0.01 year.
- Height, weight and DXA are dated the first surgery date (the contract's "baseline values
  at the index surgery"); DXA is coded by ``dxa_site`` when the export has it.
- Diabetes and kidney disease are undated Conditions; each prior vertebral fracture an
  undated Condition (ICD-10-CM M80.08XA); the index fracture a Condition at the treated
  level with ``pain_onset_date`` as onset, named by the Procedure's reasonReference; each
  follow-up event a Condition at its level and date.
- Long-term glucocorticoids: a MedicationStatement from 90 days before the first surgery,
  the shortest use the contract's definition accepts; the anti-osteoporosis drug: an active
  MedicationStatement (denosumab_discontinued: a stopped denosumab).
- Each imaging row: one ``imaging_examination`` Observation whose components are its values,
  dated ``exam_date``, with the imaging-timepoint extension and ``partOf`` its Procedure.
- ``last_followup_date`` has no element here (it censors labels, which FHIR input never
  carries); ``death_date`` is Patient.deceasedDateTime.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Iterator

import pandas as pd

from features.fhir import codes as c
from features.fhir.mapping import GLUCOCORTICOID_DAYS, UCUM_OF_UNIT
from features.schema import IMAGING, IMAGING_BY_TIMEPOINT

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_NAMESPACE = uuid.UUID("0b8f3c52-6a8e-4b9e-9d0e-4f3c2a1d7e55")
BUNDLE_DIR = "bundles"
RESOURCE_TYPES = ("Patient", "Procedure", "Condition", "MedicationStatement", "Observation")


def fhir_id(key: str, kind: str = "") -> str:
    """A valid FHIR id for a contract key: the key itself when it is one, else a UUID of it."""
    text = f"{kind}-{key}" if kind else str(key)
    return text if _ID.match(text) else str(uuid.uuid5(_NAMESPACE, text))


def _present(value: Any) -> bool:
    """A cell with a value (None, NaN, NaT and pandas' NA are missing)."""
    if value is None or value is pd.NaT or value is pd.NA:
        return False
    return not (isinstance(value, float) and value != value)


def _day(value: Any) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def _number(value: Any) -> float | int:
    v = float(value)
    return int(v) if v.is_integer() else v


def _quantity(value: Any, ucum: str) -> dict[str, Any]:
    return {"value": _number(value), "unit": ucum, "system": c.UCUM, "code": ucum}


def _concept(*codes: c.Code) -> dict[str, Any]:
    return {"coding": [code.coding() for code in codes]}


def _ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def export_resources(tables: dict[str, pd.DataFrame]) -> Iterator[dict[str, Any]]:
    """Every FHIR resource of a typed raw export, patient by patient (the patient first)."""
    patients = {row["patient_id"]: row for row in tables["patients"].to_dict("records")}
    procedures = tables["procedures"].sort_values(["patient_id", "surgery_date", "procedure_id"], kind="stable")
    imaging: dict[str, list[dict]] = {}
    for row in tables["imaging"].to_dict("records"):
        imaging.setdefault(row["procedure_id"], []).append(row)
    events: dict[str, list[dict]] = {}
    for row in tables["events"].to_dict("records"):
        events.setdefault(row["patient_id"], []).append(row)
    by_patient: dict[str, list[dict]] = {}
    for row in procedures.to_dict("records"):
        by_patient.setdefault(row["patient_id"], []).append(row)
    for patient_id, procs in by_patient.items():
        yield from patient_resources(patients[patient_id], procs, imaging, events.get(patient_id, []))


def patient_resources(patient: dict[str, Any], procs: list[dict[str, Any]], imaging: dict[str, list[dict]],
                      events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One patient's resources: Patient, patient-level Observations, Conditions and
    MedicationStatements, then per procedure its Procedure, index fracture and imaging."""
    pid = fhir_id(str(patient["patient_id"]))
    subject = _ref("Patient", pid)
    first = procs[0]
    first_day = pd.Timestamp(first["surgery_date"])
    born = first_day - pd.Timedelta(days=int(round(float(first["age_years"]) * 365.25)))
    resource: dict[str, Any] = {
        "resourceType": "Patient", "id": pid,
        "identifier": [{"system": c.PATIENT_ID_SYSTEM, "value": str(patient["patient_id"])}],
        "gender": {"F": "female", "M": "male"}[patient["sex"]],
        "birthDate": born.strftime("%Y-%m-%d"),
    }
    if _present(patient.get("death_date")):
        resource["deceasedDateTime"] = _day(patient["death_date"])
    yield resource
    baseline = first_day.strftime("%Y-%m-%d")
    for code, value, ucum, suffix in ((c.BODY_HEIGHT, patient["height_cm"], "cm", "height"),
                                      (c.BODY_WEIGHT, patient["weight_kg"], "kg", "weight")):
        if _present(value):
            yield _observation(f"{pid}-{suffix}", subject, code, baseline, "vital-signs", _quantity(value, ucum))
    site = patient.get("dxa_site")
    bmd_code, t_code = c.DXA_BY_SITE[site] if _present(site) and site in c.DXA_BY_SITE else c.DXA_UNSTATED
    if _present(patient.get("dxa_bmd_g_cm2")):
        yield _observation(f"{pid}-dxa-bmd", subject, bmd_code, baseline, "imaging",
                           _quantity(patient["dxa_bmd_g_cm2"], "g/cm2"))
    if _present(patient.get("dxa_t_score")):
        yield _observation(f"{pid}-dxa-t", subject, t_code, baseline, "imaging",
                           _quantity(patient["dxa_t_score"], "{T-score}"))
    if int(patient["type2_diabetes"]) == 1:
        yield _condition(f"{pid}-t2dm", subject, c.CONDITIONS["type2_diabetes"]["codes"])  # type: ignore[arg-type]
    if int(patient["chronic_kidney_disease"]) == 1:
        yield _condition(f"{pid}-ckd", subject, c.CONDITIONS["chronic_kidney_disease"]["codes"])  # type: ignore[arg-type]
    fracture = c.CONDITIONS["vertebral_fracture"]["codes"][0]  # type: ignore[index]
    prior_code = c.Code(c.ICD10CM, "M80.08XA", "Age-related osteoporosis with current pathological fracture, "
                                               "vertebra(e), initial encounter", c.CONDITIONS["vertebral_fracture"]["icd10cm_source"])  # type: ignore[arg-type]
    for k in range(int(patient["prior_vertebral_fractures_n"])):
        yield _condition(f"{pid}-prior-fracture-{k + 1}", subject, (fracture, prior_code))
    if int(patient["glucocorticoids_long_term"]) == 1:
        start = (first_day - pd.Timedelta(days=GLUCOCORTICOID_DAYS)).strftime("%Y-%m-%d")
        yield {"resourceType": "MedicationStatement", "id": f"{pid}-glucocorticoid", "status": "active",
               "medicationCodeableConcept": _concept(c.ATC_GLUCOCORTICOIDS), "subject": subject,
               "effectivePeriod": {"start": start}}
    therapy = patient["anti_osteoporosis_therapy"]
    if therapy != "none":
        yield {"resourceType": "MedicationStatement", "id": f"{pid}-therapy",
               "status": "stopped" if therapy == "denosumab_discontinued" else "active",
               "medicationCodeableConcept": _concept(c.THERAPY_CODE[therapy]), "subject": subject,
               "dateAsserted": baseline}
    for event in events:
        level = event["fracture_level"]
        extra = {"bodySite": [_concept(c.VERTEBRA[level])]} if level in c.VERTEBRA else {}
        yield {**_condition(fhir_id(str(event["event_id"]), "event"), subject, (fracture,)),
               "onsetDateTime": _day(event["event_date"]), **extra}
    for proc in procs:
        yield from procedure_resources(pid, proc, imaging.get(proc["procedure_id"]))


def procedure_resources(pid: str, proc: dict[str, Any], images: list[dict[str, Any]] | None) -> Iterator[dict[str, Any]]:
    """One treated level: its Procedure, the index fracture Condition and its imaging."""
    subject = _ref("Patient", pid)
    rid = fhir_id(str(proc["procedure_id"]))
    level, technique = proc["level"], proc["technique"]
    index_id = f"{rid}-index-fracture"
    index: dict[str, Any] = {**_condition(index_id, subject, c.CONDITIONS["vertebral_fracture"]["codes"]),  # type: ignore[arg-type]
                             "bodySite": [_concept(c.VERTEBRA[level])]}
    if _present(proc.get("pain_onset_date")):
        index["onsetDateTime"] = _day(proc["pain_onset_date"])
    extensions = []
    if _present(proc.get("approach")):
        extensions.append({"url": c.EXT_APPROACH, "valueCodeableConcept": _concept(*c.APPROACH[proc["approach"]])})
    if _present(proc.get("cement_volume_ml")):
        extensions.append({"url": c.EXT_CEMENT_VOLUME, "valueQuantity": _quantity(proc["cement_volume_ml"], "mL")})
    procedure: dict[str, Any] = {
        "resourceType": "Procedure", "id": rid,
        "identifier": [{"system": c.PROCEDURE_ID_SYSTEM, "value": str(proc["procedure_id"])}],
        "status": "completed",
        "code": _concept(c.TECHNIQUE[technique][0], c.cpt_for(technique, level)),
        "subject": subject,
        "performedDateTime": _day(proc["surgery_date"]),
        "bodySite": [_concept(c.VERTEBRA[level])],
        "reasonReference": [_ref("Condition", index_id)],
    }
    if extensions:
        procedure["extension"] = extensions
    if _present(proc.get("brace_prescribed")) and int(proc["brace_prescribed"]) == 1:
        procedure["followUp"] = [_concept(c.BRACE)]
    yield procedure
    yield index
    for row in images or []:
        yield imaging_observation(pid, rid, level, row)


def imaging_observation(pid: str, rid: str, level: str, row: dict[str, Any]) -> dict[str, Any]:
    """One imaging row as an ``imaging_examination`` Observation with one component per value."""
    tp = row["timepoint"]
    components = []
    for name in IMAGING_BY_TIMEPOINT[tp]:
        value = row.get(name)
        if not _present(value):
            continue
        column = IMAGING.column(name)
        item: dict[str, Any] = {"code": _concept(c.project(name, column.definition))}
        if column.kind == "binary":
            item["valueBoolean"] = bool(int(value))
        elif column.kind == "category":
            item["valueCodeableConcept"] = _concept(c.LEAKAGE_INTRADISCAL[value])
        else:
            item["valueQuantity"] = _quantity(value, UCUM_OF_UNIT[column.unit])
        components.append(item)
    obs = _observation(f"{rid}-{tp}", _ref("Patient", pid), c.IMAGING_PANEL, _day(row["exam_date"]), "imaging", None)
    obs["extension"] = [{"url": c.EXT_TIMEPOINT, "valueCodeableConcept": _concept(c.TIMEPOINT[tp])}]
    obs["partOf"] = [_ref("Procedure", rid)]
    obs["bodySite"] = _concept(c.VERTEBRA[level])
    if components:
        obs["component"] = components
    return obs


def _observation(rid: str, subject: dict, code: c.Code, day: str, category: str, quantity: dict | None) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": rid, "status": "final",
        "category": [{"coding": [{"system": c.OBSERVATION_CATEGORY, "code": category}]}],
        "code": _concept(code), "subject": subject, "effectiveDateTime": day,
    }
    if quantity is not None:
        obs["valueQuantity"] = quantity
    return obs


def _condition(rid: str, subject: dict, codes: tuple[c.Code, ...]) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": rid,
            "clinicalStatus": {"coding": [{"system": c.CONDITION_CLINICAL, "code": "active"}]},
            "verificationStatus": {"coding": [{"system": c.CONDITION_VERIFICATION, "code": "confirmed"}]},
            "code": _concept(*codes), "subject": subject}


def bundle_of(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``collection`` Bundle of resources (fullUrl under the project base, so relative
    references such as ``Patient/x`` resolve inside it)."""
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"{c.CANONICAL_BASE}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources]}


def procedure_bundles(resources: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """One patient's resources -> one Bundle per procedure: (procedure_id, Bundle).

    Each holds the patient-level resources, the procedure with its index fracture and
    imaging, and the other levels treated the same day (their Procedures only, so the
    session's level count is there)."""
    procedures = [r for r in resources if r["resourceType"] == "Procedure"]
    own: dict[str, list[dict]] = {p["id"]: [] for p in procedures}
    shared = []
    for r in resources:
        if r["resourceType"] == "Procedure":
            continue
        parent = next((p["reference"].split("/", 1)[1] for p in r.get("partOf", [])), None)
        if parent is None and r["resourceType"] == "Condition" and r["id"].endswith("-index-fracture"):
            parent = r["id"][: -len("-index-fracture")]
        (own[parent] if parent in own else shared).append(r)
    for proc in procedures:
        siblings = [p for p in procedures if p is not proc and p["performedDateTime"] == proc["performedDateTime"]]
        yield proc["identifier"][0]["value"], bundle_of(shared + [proc] + own[proc["id"]] + siblings)
