"""The one table from the data contract to FHIR R4: each record field <-> a FHIR element.

``FIELD_MAPS`` has one entry per contract column a record uses (``features.records``); the
parser (``features.fhir.parse``), the exporter (``features.fhir.export``), the project
CodeSystem (``features.fhir.codesystem``) and docs/fhir.md (``features.fhir.docs``) all
read it, so none of them can disagree with the others or with the contract: the fields,
types, units and definitions come from ``features.schema``; this module adds only where
each value lives in FHIR, its codes and the rule that picks it when FHIR holds several.

Imaging fields have no verified standard code (no LOINC or SNOMED CT concept for "HU of
the vertebra above the treated one" or "cement touches the upper endplate"): they use the
project CodeSystem, whose codes are the field names. Patient, procedure, condition and
medication fields use standard terminologies (``features.fhir.codes``).
"""

from __future__ import annotations

from dataclasses import dataclass

from features.fhir import codes as c
from features.records import RECORD_FIELDS, RECORD_TIMEPOINTS
from features.schema import IMAGING, IMAGING_BY_TIMEPOINT, ColumnSpec

# ------------------------------------------------------------------------ timing rules

#: Pre-operative imaging: the latest examination on or before the surgery date, at most this
#: many days before it (an assumption: older images do not show the index fracture as it
#: was treated; the simulated cohorts image 0-15 days before).
PREOP_IMAGING_DAYS = 180
#: Post-operative imaging: the first examination after the surgery, at most this many days
#: after it (an assumption: "immediately post-operative"; later images are follow-up, which
#: a record does not use).
POSTOP_IMAGING_DAYS = 30
#: Height and weight: the latest on or before the surgery date, within a year (assumption).
VITALS_DAYS = 365
#: DXA: the latest examination on or before the surgery date, within two years (assumption:
#: the usual interval between DXA scans).
DXA_DAYS = 730
#: Long-term glucocorticoids: at least this many days of use up to the surgery (contract:
#: >= 3 months, the FRAX definition).
GLUCOCORTICOID_DAYS = 90

RULE_DUPLICATES = ("Two values of one field at the same time that differ are refused (conflicting duplicates); "
                   "equal ones count once.")
RULE_PREOP = (f"Pre-operative: the latest value dated on or before the surgery date, at most {PREOP_IMAGING_DAYS} days "
              "before. " + RULE_DUPLICATES)
RULE_POSTOP = (f"Post-operative: the first value dated after the surgery, at most {POSTOP_IMAGING_DAYS} days after; "
               "later values are follow-up and not used. " + RULE_DUPLICATES)
RULE_SAME_DAY = ("An imaging value dated the surgery day is pre- or post-operative by its time (if both it and the "
                 "Procedure carry one) or by the imaging-timepoint extension; otherwise it is refused.")
RULE_LINK = ("An imaging Observation belongs to the Procedure it names in `partOf`; without `partOf`, to the one "
             "Procedure whose level makes its `bodySite` the vertebra the field names; with neither, to the "
             "patient's only augmentation Procedure (otherwise it is refused as ambiguous).")


@dataclass(frozen=True)
class FieldMap:
    """Where one contract field lives in FHIR R4."""

    field: str  # contract column (``features.schema``)
    section: str  # 'patient', 'procedure' or 'imaging'
    resource: str  # FHIR resource type that holds it
    element: str  # FHIRPath of the element the value is read from
    codes: tuple[c.Code, ...] = ()  # codes that identify it (the first is written on export)
    unit: str = ""  # UCUM code of the contract's unit (values in other units are converted)
    value: str = ""  # quantity | boolean | code | date | derived
    rule: str = ""  # how the value is chosen when FHIR holds several, and what absence means
    standard: bool = True  # False: no verified standard code, the project CodeSystem is used

    @property
    def spec(self) -> ColumnSpec:
        """The contract column (type, range, definition)."""
        return next(f.spec for f in RECORD_FIELDS if f.spec.name == self.field) if self.section != "imaging" \
            else IMAGING.column(self.field)


#: The contract's units as UCUM codes (``ColumnSpec.unit`` -> UCUM).
UCUM_OF_UNIT = {"cm": "cm", "kg": "kg", "g/cm²": "g/cm2", "SD": "{T-score}", "mm": "mm", "°": "deg",
                "HU": "[hnsf'U]", "mL": "mL", "cm²": "cm2", "%": "%", "years": "a"}


def _imaging(column: ColumnSpec) -> FieldMap:
    if column.kind == "binary":
        value, element, unit = "boolean", "Observation.valueBoolean", ""
    elif column.kind == "category":
        value, element, unit = "code", "Observation.valueCodeableConcept", ""
    else:
        value, element, unit = "quantity", "Observation.valueQuantity", UCUM_OF_UNIT[column.unit]
    element += " (or the component with this code of an imaging_examination Observation)"
    return FieldMap(column.name, "imaging", "Observation", element, (c.project(column.name, column.definition),),
                    unit, value, f"{RULE_PREOP} {RULE_POSTOP} {RULE_SAME_DAY} {RULE_LINK}", standard=False)


_IMAGING_COLUMNS = tuple(dict.fromkeys(n for tp in RECORD_TIMEPOINTS for n in IMAGING_BY_TIMEPOINT[tp]))
_DXA_CODES = tuple(code for pair in c.DXA_BY_SITE.values() for code in pair)

FIELD_MAPS: tuple[FieldMap, ...] = (
    # ---- Patient
    FieldMap("sex", "patient", "Patient", "Patient.gender", value="code",
             rule="female -> F, male -> M; other or unknown is refused (the contract records F or M)."),
    FieldMap("age_years", "procedure", "Patient", "Patient.birthDate", unit="a", value="derived",
             rule="Whole days from Patient.birthDate to the surgery date / 365.25, rounded to 0.01 year. A birth "
                  "date with year (and month) only is taken as 1 July (or the 15th), with a warning."),
    FieldMap("height_cm", "patient", "Observation", "Observation.valueQuantity", (c.BODY_HEIGHT,), "cm", "quantity",
             f"The latest on or before the surgery date, at most {VITALS_DAYS} days before. {RULE_DUPLICATES}"),
    FieldMap("weight_kg", "patient", "Observation", "Observation.valueQuantity", (c.BODY_WEIGHT,), "kg", "quantity",
             f"The latest on or before the surgery date, at most {VITALS_DAYS} days before. {RULE_DUPLICATES}"),
    FieldMap("dxa_bmd_g_cm2", "patient", "Observation", "Observation.valueQuantity",
             tuple(pair[0] for pair in c.DXA_BY_SITE.values()) + (c.DXA_UNSTATED[0],), "g/cm2", "quantity",
             f"The latest DXA examination on or before the surgery date (at most {DXA_DAYS} days before); of its "
             "sites (lumbar spine, total hip, femur / femoral neck), the lowest BMD. Site not stated: the project "
             f"code. {RULE_DUPLICATES}"),
    FieldMap("dxa_t_score", "patient", "Observation", "Observation.valueQuantity",
             tuple(pair[1] for pair in c.DXA_BY_SITE.values()) + (c.DXA_UNSTATED[1],), "{T-score}", "quantity",
             "The T-score of the same examination and site as dxa_bmd_g_cm2 (the lowest T-score if no BMD was "
             f"sent). {RULE_DUPLICATES}"),
    # ---- Conditions
    FieldMap("type2_diabetes", "patient", "Condition", "Condition.code",
             c.CONDITIONS["type2_diabetes"]["codes"], value="boolean",  # type: ignore[arg-type]
             rule="1 if a Condition with this code (or ICD-10-CM E11.*) began on or before the surgery date (or is "
                  "undated) and is not refuted or entered in error; else 0."),
    FieldMap("chronic_kidney_disease", "patient", "Condition", "Condition.code",
             c.CONDITIONS["chronic_kidney_disease"]["codes"], value="boolean",  # type: ignore[arg-type]
             rule="As type2_diabetes, with ICD-10-CM N18.3-N18.6 (stages 1-2 have eGFR >= 60, outside the "
                  "contract's definition)."),
    FieldMap("prior_vertebral_fractures_n", "patient", "Condition", "Condition.code + Condition.bodySite",
             c.CONDITIONS["vertebral_fracture"]["codes"], value="derived",  # type: ignore[arg-type]
             rule="Count of osteoporotic vertebral fractures (this code with a vertebra as bodySite, or ICD-10-CM "
                  "M80.08*/M48.5*) dated before the surgery (or undated), not refuted: distinct vertebrae, and each "
                  "undated-site Condition once. The index fracture (a Condition the Procedure names in "
                  "reasonReference, or one at a level treated that day) is not counted."),
    # ---- MedicationStatements
    FieldMap("glucocorticoids_long_term", "patient", "MedicationStatement", "MedicationStatement.medicationCodeableConcept",
             (c.ATC_GLUCOCORTICOIDS,), value="boolean",
             rule=f"1 if a MedicationStatement of a systemic glucocorticoid (ATC H02AB*; active or completed) covers "
                  f"at least {GLUCOCORTICOID_DAYS} days up to the surgery (effectivePeriod.start that many days "
                  "before, end absent or after); one without a start date is refused (its duration is unknown)."),
    FieldMap("anti_osteoporosis_therapy", "patient", "MedicationStatement", "MedicationStatement.medicationCodeableConcept",
             tuple(dict.fromkeys(c.THERAPY_CODE.values())) + (c.ATC_PTH, c.ATC_RALOXIFENE), value="code",
             rule="The drug taken at surgery (status active, or an effectivePeriod covering the surgery date): "
                  "ATC M05BX04 denosumab, M05BX06 romosozumab, H05AA02 teriparatide, M05BA*/M05BB* bisphosphonate, "
                  "other M05B*/H05AA*/raloxifene G03XC01 'other'; several: the first of "
                  f"{', '.join(c.THERAPY_PRIORITY)}. None taken, but denosumab stopped (status stopped or completed, "
                  "or its period ended) with no bisphosphonate after it: denosumab_discontinued. Otherwise none. "
                  "A MedicationStatement with no ATC coding is not used (warning)."),
    # ---- Procedure
    FieldMap("procedure_id", "procedure", "Procedure", "Procedure.identifier", value="code",
             rule=f"The identifier with system {c.PROCEDURE_ID_SYSTEM}, else the resource id."),
    FieldMap("surgery_date", "procedure", "Procedure", "Procedure.performedDateTime | Procedure.performedPeriod.start",
             value="date", rule="Its calendar date as written (time zone not converted)."),
    FieldMap("level", "procedure", "Procedure", "Procedure.bodySite", tuple(c.VERTEBRA.values()), value="code",
             rule="Exactly one vertebra T1-L5 (one Procedure per treated level)."),
    FieldMap("technique", "procedure", "Procedure", "Procedure.code",
             c.TECHNIQUE["PVP"] + c.TECHNIQUE["PKP"], value="code",
             rule="A Procedure with one of these codes and status completed is a vertebral augmentation; others are "
                  "not used."),
    FieldMap("n_levels_treated", "procedure", "Procedure", "Procedure.performed[x]", value="derived",
             rule="The number of completed augmentation Procedures of the patient on the same date (this one included)."),
    FieldMap("pain_onset_date", "procedure", "Condition", "Condition.onsetDateTime", value="date",
             rule="The onset of the index fracture: the Condition the Procedure names in reasonReference; none: missing."),
    FieldMap("approach", "procedure", "Procedure", f"Procedure.extension('{c.EXT_APPROACH}').valueCodeableConcept",
             tuple(code for pair in c.APPROACH.values() for code in pair), value="code",
             rule="Project code, or the SNOMED CT laterality of the access (left, right, right and left)."),
    FieldMap("cement_volume_ml", "procedure", "Procedure", f"Procedure.extension('{c.EXT_CEMENT_VOLUME}').valueQuantity",
             unit="mL", value="quantity", rule="Total PMMA injected at this level."),
    FieldMap("brace_prescribed", "procedure", "Procedure", "Procedure.followUp", (c.BRACE,), value="boolean",
             rule="1 if Procedure.followUp has this code, else 0.", standard=False),
    # ---- Imaging (one entry per column; the time point comes from the date)
    *(_imaging(IMAGING.column(name)) for name in _IMAGING_COLUMNS),
)
FIELD_MAP: dict[str, FieldMap] = {m.field: m for m in FIELD_MAPS}
IMAGING_FIELDS: frozenset[str] = frozenset(_IMAGING_COLUMNS)

# Every record field is mapped, and nothing else.
assert {f.spec.name for f in RECORD_FIELDS} == set(FIELD_MAP), set(FIELD_MAP) ^ {f.spec.name for f in RECORD_FIELDS}

#: Which vertebra an imaging field names, relative to the treated level (for bodySite).
VERTEBRA_OFFSET: dict[str, int] = {
    "vertebral_height_mm": 0, "hu_index": 0, "wedge_angle_deg": 0, "vertebral_body_volume_ml": 0, "ivc": 0,
    "endplate_disruption": 0, "upper_adjacent_height_mm": -1, "hu_upper_adjacent": -1,
    "lower_adjacent_height_mm": 1, "hu_lower_adjacent": 1,
    "cement_touches_upper_endplate": 0, "cement_touches_lower_endplate": 0, "cement_larger_side_volume_ml": 0,
    "leakage_intradiscal": 0, "leakage_paravertebral": 0, "leakage_venous": 0, "leakage_epidural": 0,
    "kyphotic_angle_deg": 0, "bone_marrow_edema": 0,
}
