"""docs/fhir.md, generated from the mapping (``refracture fhir-docs``), so it cannot drift."""

from __future__ import annotations

import json

import pandas as pd

from features.fhir import codes as c
from features.fhir import mapping as m
from features.fhir.codesystem import project_code_system
from features.fhir.export import bundle_of, export_resources

#: One made-up procedure (the shape of the service's documented example record).
_EXAMPLE = {
    "patients": [{"patient_id": "example-patient", "sex": "F", "height_cm": 158.0, "weight_kg": 56.0, "type2_diabetes": 0,
                  "chronic_kidney_disease": 0, "glucocorticoids_long_term": 0, "prior_vertebral_fractures_n": 1,
                  "anti_osteoporosis_therapy": "bisphosphonate", "dxa_bmd_g_cm2": 0.68, "dxa_t_score": -2.9,
                  "dxa_site": "lumbar_spine", "last_followup_date": "2024-07-15", "death_date": None}],
    "procedures": [{"procedure_id": "example-0001", "patient_id": "example-patient", "surgery_date": "2024-01-15",
                    "age_years": 78.0, "level": "L1", "technique": "PVP", "n_levels_treated": 1,
                    "pain_onset_date": "2023-12-28", "approach": "unilateral_right", "cement_volume_ml": 3.5,
                    "brace_prescribed": 0}],
    "imaging": [
        {"procedure_id": "example-0001", "timepoint": "preop", "exam_date": "2024-01-12", "vertebral_height_mm": 18.0,
         "upper_adjacent_height_mm": 24.0, "lower_adjacent_height_mm": 26.0, "kyphotic_angle_deg": 15.0,
         "wedge_angle_deg": 12.0, "hu_index": 62.0, "hu_upper_adjacent": 70.0, "hu_lower_adjacent": 58.0,
         "vertebral_body_volume_ml": 30.0, "psoas_area_cm2": 9.6, "paraspinal_fat_fraction_pct": 25.0, "ivc": 0,
         "endplate_disruption": 0},
        {"procedure_id": "example-0001", "timepoint": "postop", "exam_date": "2024-01-16", "vertebral_height_mm": 20.0,
         "upper_adjacent_height_mm": 24.0, "lower_adjacent_height_mm": 26.0, "kyphotic_angle_deg": 11.0,
         "wedge_angle_deg": 9.0, "hu_index": 1100.0, "hu_upper_adjacent": 71.0, "hu_lower_adjacent": 59.0,
         "cement_touches_upper_endplate": 1, "cement_touches_lower_endplate": 0, "cement_larger_side_volume_ml": 2.4,
         "leakage_intradiscal": "none", "leakage_paravertebral": 0, "leakage_venous": 0, "leakage_epidural": 0},
    ],
    "events": [],
}


def example_tables() -> dict[str, pd.DataFrame]:
    """The documented example as typed raw tables (dates as timestamps)."""
    tables = {name: pd.DataFrame(rows) for name, rows in _EXAMPLE.items()}
    tables["events"] = pd.DataFrame(columns=["event_id", "patient_id", "event_date", "fracture_level"])
    for name, cols in (("procedures", ("surgery_date", "pain_onset_date")), ("imaging", ("exam_date",)),
                       ("patients", ("last_followup_date", "death_date"))):
        for col in cols:
            tables[name][col] = pd.to_datetime(tables[name][col])
    return tables


def example_bundle() -> dict:
    """The example procedure as a FHIR collection Bundle."""
    return bundle_of(list(export_resources(example_tables())))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _codes(fm: m.FieldMap) -> str:
    return "<br>".join(f"`{code.system}` `{code.code}` {_cell(code.display)}" for code in fm.codes) or "–"


def _sources(fm: m.FieldMap) -> list[str]:
    return [f"- `{code.code}` ({code.display}): {code.source}" for code in fm.codes if code.system != c.PROJECT_SYSTEM]


def fhir_markdown() -> str:
    """The FHIR mapping as markdown."""
    lines = [
        "# FHIR R4: how the data contract maps to FHIR",
        "",
        "Generated from `features/fhir/mapping.py` and `features/fhir/codes.py` by "
        "`refracture fhir-docs --out docs/fhir.md`. Do not edit by hand.",
        "",
        "One table maps every field of a procedure record (the fields `/predict` takes, "
        "[`docs/data-dictionary.md`](data-dictionary.md)) to a FHIR R4 element. The parser "
        "(`features.fhir.parse`) reads FHIR with it, the exporter (`features.fhir.export`, "
        "`refracture fhir-export`) writes FHIR with it, and the records then pass the same contract checks "
        "as a JSON record. Resources are checked with the FHIR R4 models of `fhir.resources` (its R4B "
        "models: identical to R4 for the resources used here).",
        "",
        "## Code systems",
        "",
        "| system | URL |",
        "|---|---|",
        f"| LOINC | `{c.LOINC}` |",
        f"| SNOMED CT | `{c.SNOMED}` |",
        f"| UCUM (units) | `{c.UCUM}` |",
        f"| ATC (WHO drug classification) | `{c.ATC}` |",
        f"| ICD-10-CM | `{c.ICD10CM}` |",
        f"| CPT | `{c.CPT}` |",
        f"| project CodeSystem | `{c.PROJECT_SYSTEM}` |",
        "",
        f"The project's canonical base `{c.CANONICAL_BASE}` uses the reserved `.example` domain until the "
        "project has its own. The project CodeSystem's codes are the contract's own field names "
        "(`hu_upper_adjacent`), and `<field>.<value>` for a field's allowed values (`leakage_intradiscal.spike`). "
        "It is used where no standard code could be verified from a public source: the imaging measures of named "
        "vertebrae, cement distribution and leakage, the brace, and the technique (PVP/PKP; CPT codes are read "
        "and written beside it).",
        "",
        "## Fields",
        "",
        "| field | resource | element | codes | UCUM unit | rule |",
        "|---|---|---|---|---|---|",
    ]
    for fm in m.FIELD_MAPS:
        lines.append(f"| `{fm.field}` | {fm.resource} | `{_cell(fm.element)}` | {_codes(fm)} | "
                     f"{('`' + fm.unit + '`') if fm.unit else '–'} | {_cell(fm.rule)} |")
    lines += [
        "",
        "## Where each standard code comes from",
        "",
        "Every code below was checked against the page named (a terminology browser, or a published value "
        "set or specification that lists it).",
        "",
    ]
    seen: set[str] = set()
    for fm in m.FIELD_MAPS:
        for line in _sources(fm):
            if line not in seen:
                seen.add(line)
                lines.append(line)
    lines += [
        f"- ICD-10-CM (read as prefixes): type 2 diabetes {', '.join(c.CONDITIONS['type2_diabetes']['icd10cm_prefixes'])}, "  # type: ignore[arg-type]
        f"chronic kidney disease {', '.join(c.CONDITIONS['chronic_kidney_disease']['icd10cm_prefixes'])}, "  # type: ignore[arg-type]
        f"vertebral fracture {', '.join(c.VERTEBRAL_ICD10CM)}: {c.CONDITIONS['type2_diabetes']['icd10cm_source']} ; "
        f"{c.CONDITIONS['chronic_kidney_disease']['icd10cm_source']} ; {c.CONDITIONS['vertebral_fracture']['icd10cm_source']}",
        "",
        "## Rules",
        "",
        f"- {m.RULE_PREOP}",
        f"- {m.RULE_POSTOP}",
        f"- {m.RULE_SAME_DAY}",
        f"- {m.RULE_LINK}",
        f"- Height and weight: within {m.VITALS_DAYS} days before surgery; DXA within {m.DXA_DAYS} days; long-term "
        f"glucocorticoids: >= {m.GLUCOCORTICOID_DAYS} days. The windows are assumptions, stated here so they can be changed.",
        "- Units: a Quantity must state a UCUM code (`system` http://unitsofmeasure.org); another unit of the same "
        "dimension is converted (ucumvert), one of another dimension is refused by name.",
        "- Refused with an error naming the element (FHIRPath `expression`): a resource that is not valid FHIR R4, a "
        "second Patient, resources of another patient, an unknown code in the project CodeSystem or a body site that "
        "is not a vertebra T1-L5, a unit that cannot be converted, anything dated after the request time, conflicting "
        "duplicates, a missing or incomplete surgery date, no completed augmentation Procedure; then every contract "
        "rule (`features/contract.py`), named by the element its value came from.",
        "- Only completed Procedures, final/amended/corrected Observations and Conditions that are not refuted or "
        "entered in error are used. Absent Conditions, MedicationStatements and brace mean 0 / none (the sending "
        "system's record is taken as complete).",
        "",
        "## Extensions",
        "",
        f"- `{c.EXT_APPROACH}` (Procedure, valueCodeableConcept): the transpedicular access.",
        f"- `{c.EXT_CEMENT_VOLUME}` (Procedure, valueQuantity mL): total cement at this level.",
        f"- `{c.EXT_TIMEPOINT}` (Observation, valueCodeableConcept `timepoint.preop|postop|followup`): states the "
        "imaging time point (needed when an examination is dated the surgery day without a time).",
        "",
        "## Project CodeSystem",
        "",
        "The service publishes it as a FHIR `CodeSystem` (`features.fhir.codesystem.project_code_system()`).",
        "",
        "| code | display | definition |",
        "|---|---|---|",
    ]
    for concept in project_code_system()["concept"]:
        lines.append(f"| `{concept['code']}` | {_cell(concept['display'])} | {_cell(concept.get('definition', ''))} |")
    lines += [
        "",
        "## Example Bundle",
        "",
        "The service's documented example procedure (a 78-year-old woman, L1 vertebroplasty) as FHIR, "
        "written by the exporter:",
        "",
        "```json",
        json.dumps(example_bundle(), indent=2, ensure_ascii=False),
        "```",
        "",
        "## How to",
        "",
        "Export the demo cohort (`data/demo`, made by `make demo`; any raw export works) to FHIR (a Bulk "
        "Data export: one `<ResourceType>.ndjson` per type, and `bundles/<procedure_id>.json`, one Bundle per "
        "procedure):",
        "",
        "```bash",
        "refracture fhir-export --raw data/demo --out data/demo-fhir",
        "```",
        "",
        "Score the NDJSON in batch, on either engine: refused resources are printed by file, line and element, "
        "the other procedures are scored, and besides the flat output (as for `--input`) one `RiskAssessment` "
        "per outcome per procedure (a prediction per horizon, the model and version in `method`, the resources "
        "used in `basis`; the death context as its own RiskAssessment) is written to `RiskAssessment.ndjson` "
        "beside `--output` (or `--risk-assessments PATH`):",
        "",
        "```bash",
        "refracture predict --fhir-ndjson data/demo-fhir --output data/demo-fhir-scored/scored.parquet",
        "refracture predict --engine spark --fhir-ndjson data/demo-fhir --output data/demo-fhir-spark/parts",
        "```",
        "",
        "Each run writes its own folder: an existing `--output` or `RiskAssessment.ndjson` is refused unless "
        "`--overwrite` is given.",
        "",
        "`refracture fhir-records --ndjson data/demo-fhir --out records.parquet` only reads the export "
        "(the same report) and writes the accepted procedures as flat records.",
        "",
        "In Python (no HTTP): `features.fhir.parse.parse_bundle(bundle)` for one patient's Bundle, "
        "`parse_prefetch(prefetch)` for CDS Hooks prefetch, `features.fhir.bulk.read_bulk_ndjson(folder)` "
        "for a Bulk export; `serving.fhir.risk_assessment.risk_assessments(prediction, source, occurrence)` "
        "builds the RiskAssessments of one `/predict` answer.",
        "",
        "Over HTTP: `POST /fhir/$refracture-risk` takes one patient's Bundle and answers RiskAssessments "
        "([`serving.md`](serving.md#fhir-r4-endpoints)); the CDS Hooks service puts the same numbers in cards in "
        "the EHR, called with the EHR's signed JWT ([`cds-hooks.md`](cds-hooks.md)).",
        "",
    ]
    return "\n".join(lines)
