"""The raw data contract: the tables a hospital exports, column by column.

Every column has a type, a unit, an allowed range and a one-line clinical definition.
Validation (``features.validate``, with the rules of ``features.contract``) reads these specs, and
``docs/data-dictionary.md`` is generated from them (``refracture dictionary``), so the
definitions live in exactly one place.

Tables (one file each, CSV or Parquet, named ``<table>.csv`` / ``<table>.parquet``):

- ``patients``: one row per patient, baseline values at the index surgery.
- ``procedures``: one row per treated vertebral level (a two-level PKP is two rows).
- ``imaging``: one row per procedure and time point (pre-operative, immediately
  post-operative, follow-up), raw measurements in mm, degrees, HU, cm², %.
- ``events``: one row per new vertebral fracture seen during follow-up, with its date
  and level. Outcome labels are derived from these (``features.labels``).

``timing`` says when a value becomes known, relative to surgery. The pre-operative
feature set may only use ``preop`` columns; this is what keeps post-operative
information out of pre-operative models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from features.levels import LEVELS, SACRAL_LEVELS

SCHEMA_VERSION = "1.0"

Kind = Literal["id", "str", "category", "int", "float", "binary", "date"]
Timing = Literal["key", "preop", "intraop", "postop", "followup"]

THERAPIES = (
    "none",
    "bisphosphonate",
    "denosumab",
    "denosumab_discontinued",
    "teriparatide",
    "romosozumab",
    "other",
)
TIMEPOINTS = ("preop", "postop", "followup")


@dataclass(frozen=True)
class ColumnSpec:
    """One column of the raw contract."""

    name: str
    kind: Kind
    definition: str
    unit: str = ""
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] = ()
    nullable: bool = False
    timing: Timing = "preop"
    #: Message appended when a value falls outside the range on the ``unit_hint_side``
    #: ("below" the minimum or "above" the maximum), to name a likely unit mix-up.
    unit_hint: str = ""
    unit_hint_side: Literal["below", "above"] = "below"

    def hint_for(self, value: float) -> str:
        """The unit hint if ``value`` is out of range on the hinted side, else ''."""
        if not self.unit_hint:
            return ""
        if self.unit_hint_side == "below":
            return self.unit_hint if self.min is not None and value < self.min else ""
        return self.unit_hint if self.max is not None and value > self.max else ""

    @property
    def range_text(self) -> str:
        if self.allowed:
            return ", ".join(self.allowed)
        if self.kind == "binary":
            return "0, 1"
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else f"{self.min:g}"
            hi = "" if self.max is None else f"{self.max:g}"
            return f"{lo} – {hi}"
        return ""


@dataclass(frozen=True)
class TableSpec:
    """One table of the raw contract."""

    name: str
    description: str
    key: tuple[str, ...]
    columns: tuple[ColumnSpec, ...] = field(default_factory=tuple)
    #: A table that may legitimately have no rows (a cohort with no new fractures).
    may_be_empty: bool = False

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.name} has no column {name!r}")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _binary(name: str, definition: str, timing: Timing = "preop", nullable: bool = False) -> ColumnSpec:
    return ColumnSpec(name, "binary", definition, unit="0/1", nullable=nullable, timing=timing)


HEIGHT_HINT = "vertebral heights are in mm; values this small look like cm (multiply by 10)"
#: Lowest vertebral height accepted, in mm: a vertebra plana or a near-complete collapse at
#: follow-up measures 1-3 mm. Heights written in cm are caught by the contract's rules on a
#: whole examination (``features.contract.CM_LIKE_HEIGHT_MM``) and on the same vertebra
#: before and after surgery (``features.contract.CM_SLIP_RATIO``), not by this bound.
MIN_HEIGHT_MM = 1.0

PATIENTS = TableSpec(
    name="patients",
    description="One row per patient. Baseline values at the index surgery.",
    key=("patient_id",),
    columns=(
        ColumnSpec("patient_id", "id", "Pseudonymous patient key assigned by the exporting site (never a name or record number).", timing="key"),
        ColumnSpec("sex", "category", "Sex recorded at the index surgery.", allowed=("F", "M")),
        ColumnSpec("height_cm", "float", "Standing body height.", unit="cm", min=120, max=210,
                   unit_hint="body height is in cm; values this small look like metres"),
        ColumnSpec("weight_kg", "float", "Body weight.", unit="kg", min=25, max=200),
        _binary("type2_diabetes", "Type 2 diabetes mellitus diagnosed before surgery."),
        _binary("chronic_kidney_disease", "Chronic kidney disease, eGFR < 60 mL/min/1.73 m² for ≥ 3 months."),
        _binary("glucocorticoids_long_term", "Oral glucocorticoids ≥ 5 mg/day prednisolone-equivalent for ≥ 3 months (FRAX definition)."),
        ColumnSpec("prior_vertebral_fractures_n", "int", "Osteoporotic vertebral fractures before the index fracture (not counting it).",
                   unit="count", min=0, max=15),
        ColumnSpec("anti_osteoporosis_therapy", "category",
                   "Anti-osteoporosis therapy at surgery; 'denosumab_discontinued' = denosumab stopped without a follow-on bisphosphonate.",
                   allowed=THERAPIES),
        ColumnSpec("dxa_bmd_g_cm2", "float", "Areal BMD by DXA, lowest of lumbar spine / total hip / femoral neck.",
                   unit="g/cm²", min=0.2, max=1.8, nullable=True,
                   unit_hint="BMD is areal density in g/cm²; negative values look like a T-score (use dxa_t_score)"),
        ColumnSpec("dxa_t_score", "float", "DXA T-score at the site of dxa_bmd_g_cm2 (osteoporosis: T ≤ −2.5).",
                   unit="SD", min=-7, max=4, nullable=True),
        ColumnSpec("last_followup_date", "date", "Date of the last clinical or imaging contact. Follow-up is censored here "
                   "unless export.yaml says deaths or fractures were ascertained further (until death or the data cut).",
                   timing="followup"),
        ColumnSpec("death_date", "date", "Date of death from any cause, from the hospital's records or a death registry: "
                   "on or after last_followup_date (a registry death usually comes after the last visit). Empty if not "
                   "known to have died; export.yaml says until when deaths were ascertained.", nullable=True, timing="followup"),
    ),
)

PROCEDURES = TableSpec(
    name="procedures",
    description="One row per treated vertebral level. A patient treated at two levels has two rows with the same surgery_date.",
    key=("procedure_id",),
    columns=(
        ColumnSpec("procedure_id", "id", "Key of this treated level, unique across the export.", timing="key"),
        ColumnSpec("patient_id", "id", "Patient treated (patients.patient_id).", timing="key"),
        ColumnSpec("surgery_date", "date", "Date of the augmentation.", timing="key"),
        ColumnSpec("age_years", "float", "Age at surgery.", unit="years", min=40, max=110),
        ColumnSpec("level", "category", "Treated vertebral level.", allowed=LEVELS),
        ColumnSpec("technique", "category", "PVP = percutaneous vertebroplasty; PKP = balloon kyphoplasty.", allowed=("PVP", "PKP")),
        ColumnSpec("n_levels_treated", "int", "Levels treated in the same session, this one included (must equal the session's rows).",
                   unit="count", min=1, max=8),
        ColumnSpec("pain_onset_date", "date", "Date back pain from the index fracture began; on or before surgery_date.", nullable=True),
        ColumnSpec("approach", "category", "Transpedicular access: one side (left or right) or both.",
                   allowed=("unilateral_left", "unilateral_right", "bilateral"), timing="intraop"),
        ColumnSpec("cement_volume_ml", "float", "Total PMMA cement injected at this level (operative record).",
                   unit="mL", min=0.3, max=15, timing="intraop"),
        _binary("brace_prescribed", "Thoracolumbar brace prescribed for about one month after surgery.", timing="postop"),
    ),
)

IMAGING = TableSpec(
    name="imaging",
    description=(
        "One row per procedure and time point: 'preop' (radiograph, CT, MRI before surgery), "
        "'postop' (immediately after surgery) and 'followup' (at the last follow-up or at refracture). "
        "Heights are measured on lateral radiographs at the point of maximum compression."
    ),
    key=("procedure_id", "timepoint"),
    columns=(
        ColumnSpec("procedure_id", "id", "Procedure the images belong to (procedures.procedure_id).", timing="key"),
        ColumnSpec("timepoint", "category", "When the images were taken relative to surgery.", allowed=TIMEPOINTS, timing="key"),
        ColumnSpec("exam_date", "date", "Date of the examination.", timing="key"),
        ColumnSpec("vertebral_height_mm", "float", "Height of the fractured (treated) vertebra at its point of maximum compression.",
                   unit="mm", min=MIN_HEIGHT_MM, max=60, unit_hint=HEIGHT_HINT),
        ColumnSpec("upper_adjacent_height_mm", "float", "Height of the vertebra above, at the same site.",
                   unit="mm", min=MIN_HEIGHT_MM, max=60, nullable=True, unit_hint=HEIGHT_HINT),
        ColumnSpec("lower_adjacent_height_mm", "float", "Height of the vertebra below, at the same site (empty at L5).",
                   unit="mm", min=MIN_HEIGHT_MM, max=60, nullable=True, unit_hint=HEIGHT_HINT),
        ColumnSpec("kyphotic_angle_deg", "float",
                   "Cobb angle from the upper endplate of the vertebra above to the lower endplate of the vertebra below (L5: L4 upper to S1 upper).",
                   unit="°", min=-40, max=90, nullable=True),
        ColumnSpec("wedge_angle_deg", "float", "Angle between the upper and lower endplates of the fractured vertebra.",
                   unit="°", min=-15, max=60, nullable=True),
        ColumnSpec("hu_index", "float",
                   "Mean CT attenuation of trabecular bone in the treated vertebra (pre-op: native bone; post-op: augmented, ~1,000 HU).",
                   unit="HU", min=-150, max=2500, nullable=True),
        ColumnSpec("hu_upper_adjacent", "float",
                   "Mean trabecular CT attenuation of the vertebra above (above 600 HU only if it holds cement: treated in the same session or earlier).",
                   unit="HU", min=-150, max=2500, nullable=True),
        ColumnSpec("hu_lower_adjacent", "float",
                   "Mean trabecular CT attenuation of the vertebra below (above 600 HU only if it holds cement: treated in the same session or earlier).",
                   unit="HU", min=-150, max=2500, nullable=True),
        ColumnSpec("vertebral_body_volume_ml", "float", "Volume of the treated vertebral body on CT.",
                   unit="mL", min=5, max=120, nullable=True),
        ColumnSpec("psoas_area_cm2", "float", "Cross-sectional area of both psoas muscles at L3 on CT.",
                   unit="cm²", min=1, max=60, nullable=True,
                   unit_hint="psoas area is in cm²; values this large look like mm²", unit_hint_side="above"),
        ColumnSpec("paraspinal_fat_fraction_pct", "float", "Fat fraction of the erector spinae and multifidus at L3/L4.",
                   unit="%", min=0, max=100, nullable=True),
        _binary("ivc", "Intravertebral cleft on sagittal T2 MRI (gas or fluid in the vertebral body).", nullable=True),
        _binary("endplate_disruption", "Visible discontinuity of the cortical endplate on sagittal T1/T2 MRI.", nullable=True),
        _binary("bone_marrow_edema", "Bone marrow edema of the treated vertebra on MRI (follow-up).", nullable=True, timing="followup"),
        _binary("cement_touches_upper_endplate", "Post-op radiograph: cement reaches the upper endplate.", nullable=True, timing="postop"),
        _binary("cement_touches_lower_endplate", "Post-op radiograph: cement reaches the lower endplate.", nullable=True, timing="postop"),
        ColumnSpec("cement_larger_side_volume_ml", "float", "Cement volume in the fuller hemivertebra, measured on post-op CT.",
                   unit="mL", min=0, max=15, nullable=True, timing="postop"),
        ColumnSpec("leakage_intradiscal", "category", "Cement leaked into a disc: none, spike type or round type (Yassavoly 2025).",
                   allowed=("none", "spike", "round"), nullable=True, timing="postop"),
        _binary("leakage_paravertebral", "Cement beyond the anterior or lateral cortex.", nullable=True, timing="postop"),
        _binary("leakage_venous", "Cement in a segmental or basivertebral vein.", nullable=True, timing="postop"),
        _binary("leakage_epidural", "Cement in the epidural space / spinal canal.", nullable=True, timing="postop"),
    ),
)

EVENTS = TableSpec(
    name="events",
    description=(
        "One row per new vertebral fracture found during follow-up (no rows if there were none). A fracture of a cemented level "
        "follows the site's refracture criterion (Xiong 2021: compression-rate increase ≥ 15 % and bone marrow edema)."
    ),
    key=("event_id",),
    may_be_empty=True,
    columns=(
        ColumnSpec("event_id", "id", "Key of this event.", timing="key"),
        ColumnSpec("patient_id", "id", "Patient (patients.patient_id).", timing="key"),
        ColumnSpec("event_date", "date", "Date the fracture was diagnosed.", timing="followup"),
        ColumnSpec("fracture_level", "category",
                   "Level of the new fracture. Sacral fractures (S1-S5) are accepted and set aside: the outcomes are vertebral (T1-L5).",
                   allowed=LEVELS + SACRAL_LEVELS, timing="followup"),
    ),
)

TABLES: dict[str, TableSpec] = {t.name: t for t in (PATIENTS, PROCEDURES, IMAGING, EVENTS)}

#: Columns measured at a given imaging time point. Values of other columns at that time
#: point are ignored by the feature pipelines.
IMAGING_BY_TIMEPOINT: dict[str, tuple[str, ...]] = {
    "preop": (
        "vertebral_height_mm", "upper_adjacent_height_mm", "lower_adjacent_height_mm",
        "kyphotic_angle_deg", "wedge_angle_deg", "hu_index", "hu_upper_adjacent", "hu_lower_adjacent",
        "vertebral_body_volume_ml", "psoas_area_cm2", "paraspinal_fat_fraction_pct", "ivc", "endplate_disruption",
    ),
    "postop": (
        "vertebral_height_mm", "upper_adjacent_height_mm", "lower_adjacent_height_mm",
        "kyphotic_angle_deg", "wedge_angle_deg", "hu_index", "hu_upper_adjacent", "hu_lower_adjacent",
        "cement_touches_upper_endplate", "cement_touches_lower_endplate", "cement_larger_side_volume_ml",
        "leakage_intradiscal", "leakage_paravertebral", "leakage_venous", "leakage_epidural",
    ),
    "followup": (
        "vertebral_height_mm", "upper_adjacent_height_mm", "lower_adjacent_height_mm",
        "kyphotic_angle_deg", "wedge_angle_deg", "bone_marrow_edema",
    ),
}

#: Optional columns (appended for issue 12): site and measurement metadata a data
#: scientist needs to judge transport. An export may omit them; when present they follow
#: the same type/range rules as the columns above. Not yet used by the feature pipelines.
DXA_SITES = ("lumbar_spine", "total_hip", "femoral_neck")
FRACTURE_CRITERIA = ("cri15_edema_mri", "symptomatic_imaging_confirmed", "radiographic_semiquantitative")
OPTIONAL_COLUMNS: dict[str, tuple[ColumnSpec, ...]] = {
    "patients": (
        ColumnSpec("dxa_site", "category", "DXA site of dxa_bmd_g_cm2 and dxa_t_score (the T-score uses that site's reference).",
                   allowed=DXA_SITES, nullable=True),
    ),
    "procedures": (),
    "imaging": (
        ColumnSpec("ct_tube_voltage_kvp", "float", "CT tube voltage of the examination the HU were read on (HU of bone fall as kV rises).",
                   unit="kV", min=70, max=150, nullable=True, timing="key"),
        _binary("ct_contrast", "CT with intravenous contrast (raises trabecular HU).", timing="key", nullable=True),
        ColumnSpec("leakage_intradiscal_side", "category", "Disc the intradiscal cement leaked into: above, below or both.",
                   allowed=("none", "upper", "lower", "both"), nullable=True, timing="postop"),
    ),
    "events": (
        ColumnSpec("fracture_criterion", "category",
                   "Criterion that defined this new fracture: cri15_edema_mri = compression-rate increase ≥ 15 % and bone marrow "
                   "edema on MRI (Xiong 2021); symptomatic_imaging_confirmed = new pain confirmed on radiograph/MRI; "
                   "radiographic_semiquantitative = Genant grade on scheduled radiographs.",
                   allowed=FRACTURE_CRITERIA, nullable=True, timing="followup"),
    ),
}
