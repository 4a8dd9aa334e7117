"""The clinician form: which record fields appear in which group, with clinical labels.

The form is built from ``features.records.RECORD_FIELDS`` (types, units, ranges, allowed
values, definitions), so it cannot drift from the contract the service validates against.
This module only decides grouping, order and short labels.
"""

from __future__ import annotations

from typing import Any

from features.records import RECORD_FIELDS_BY_FLAT

#: Short labels a clinician recognises; the contract's one-line definition becomes the help text.
LABELS: dict[str, str] = {
    "procedure_id": "Procedure key",
    "surgery_date": "Date of surgery",
    "age_years": "Age",
    "sex": "Sex",
    "height_cm": "Height",
    "weight_kg": "Weight",
    "type2_diabetes": "Type 2 diabetes",
    "chronic_kidney_disease": "Chronic kidney disease",
    "glucocorticoids_long_term": "Long-term glucocorticoids",
    "prior_vertebral_fractures_n": "Prior vertebral fractures",
    "anti_osteoporosis_therapy": "Anti-osteoporosis therapy",
    "pain_onset_date": "Pain onset",
    "n_levels_treated": "Levels treated this session",
    "level": "Treated level",
    "technique": "Technique",
    "brace_prescribed": "Brace after surgery",
    "dxa_bmd_g_cm2": "DXA BMD",
    "dxa_t_score": "DXA T-score",
    "hu_index_preop": "Treated vertebra HU (pre-op CT)",
    "hu_upper_adjacent_preop": "Vertebra above HU (pre-op CT)",
    "hu_lower_adjacent_preop": "Vertebra below HU (pre-op CT)",
    "hu_index_postop": "Cemented vertebra HU (post-op CT)",
    "hu_upper_adjacent_postop": "Vertebra above HU (post-op CT)",
    "hu_lower_adjacent_postop": "Vertebra below HU (post-op CT)",
    "psoas_area_cm2_preop": "Psoas area at L3",
    "paraspinal_fat_fraction_pct_preop": "Paraspinal fat fraction",
    "approach": "Approach",
    "cement_volume_ml": "Cement volume",
    "vertebral_body_volume_ml_preop": "Vertebral body volume (CT)",
    "cement_larger_side_volume_ml_postop": "Cement in fuller hemivertebra",
    "cement_touches_upper_endplate_postop": "Cement touches upper endplate",
    "cement_touches_lower_endplate_postop": "Cement touches lower endplate",
    "leakage_intradiscal_postop": "Intradiscal leakage",
    "leakage_paravertebral_postop": "Paravertebral leakage",
    "leakage_venous_postop": "Venous leakage",
    "leakage_epidural_postop": "Epidural leakage",
    "vertebral_height_mm_preop": "Fractured vertebra height, pre-op",
    "upper_adjacent_height_mm_preop": "Vertebra above height, pre-op",
    "lower_adjacent_height_mm_preop": "Vertebra below height, pre-op",
    "kyphotic_angle_deg_preop": "Kyphotic angle, pre-op",
    "wedge_angle_deg_preop": "Wedge angle, pre-op",
    "vertebral_height_mm_postop": "Fractured vertebra height, post-op",
    "upper_adjacent_height_mm_postop": "Vertebra above height, post-op",
    "lower_adjacent_height_mm_postop": "Vertebra below height, post-op",
    "kyphotic_angle_deg_postop": "Kyphotic angle, post-op",
    "wedge_angle_deg_postop": "Wedge angle, post-op",
    "ivc_preop": "Intravertebral cleft (MRI)",
    "endplate_disruption_preop": "Endplate cortical disruption (MRI)",
}

#: (group id, title, flat field names). Every record field appears exactly once.
GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("clinical", "Clinical", (
        "procedure_id", "surgery_date", "age_years", "sex", "height_cm", "weight_kg", "type2_diabetes",
        "chronic_kidney_disease", "glucocorticoids_long_term", "prior_vertebral_fractures_n",
        "anti_osteoporosis_therapy", "pain_onset_date", "level", "technique", "n_levels_treated", "brace_prescribed",
    )),
    ("bone_density", "Bone density", (
        "dxa_bmd_g_cm2", "dxa_t_score", "hu_index_preop", "hu_upper_adjacent_preop", "hu_lower_adjacent_preop",
        "hu_index_postop", "hu_upper_adjacent_postop", "hu_lower_adjacent_postop",
    )),
    ("sarcopenia", "Sarcopenia", ("psoas_area_cm2_preop", "paraspinal_fat_fraction_pct_preop")),
    ("cement", "Cement", (
        "approach", "cement_volume_ml", "vertebral_body_volume_ml_preop", "cement_larger_side_volume_ml_postop",
        "cement_touches_upper_endplate_postop", "cement_touches_lower_endplate_postop", "leakage_intradiscal_postop",
        "leakage_paravertebral_postop", "leakage_venous_postop", "leakage_epidural_postop",
    )),
    ("imaging", "Imaging", (
        "vertebral_height_mm_preop", "upper_adjacent_height_mm_preop", "lower_adjacent_height_mm_preop",
        "kyphotic_angle_deg_preop", "wedge_angle_deg_preop", "ivc_preop", "endplate_disruption_preop",
        "vertebral_height_mm_postop", "upper_adjacent_height_mm_postop", "lower_adjacent_height_mm_postop",
        "kyphotic_angle_deg_postop", "wedge_angle_deg_postop",
    )),
)

#: Modifiable factors offered in the what-if panel (nested paths).
WHAT_IF = (
    {"id": "endplate_contact", "label": "Cement contacts both endplates",
     "paths": ["imaging.postop.cement_touches_upper_endplate", "imaging.postop.cement_touches_lower_endplate"], "kind": "binary"},
    {"id": "cement_volume", "label": "Cement volume", "paths": ["procedure.cement_volume_ml"], "kind": "float", "unit": "mL"},
    {"id": "brace", "label": "Brace after surgery", "paths": ["procedure.brace_prescribed"], "kind": "binary"},
    {"id": "therapy", "label": "Anti-osteoporosis therapy", "paths": ["patient.anti_osteoporosis_therapy"], "kind": "category"},
)


def _field(flat_name: str) -> dict[str, Any]:
    f = RECORD_FIELDS_BY_FLAT[flat_name]
    spec = f.spec
    return {
        "name": flat_name,
        "path": f.path,
        "label": LABELS.get(flat_name, flat_name.replace("_", " ")),
        "help": spec.definition,
        "kind": spec.kind,
        "unit": spec.unit if spec.kind in ("int", "float") else "",
        "min": spec.min,
        "max": spec.max,
        "allowed": list(spec.allowed) if spec.allowed else (["0", "1"] if spec.kind == "binary" else []),
        "required": f.required,
    }


def form_schema() -> dict[str, Any]:
    """The form as JSON: groups of fields with labels, units, ranges and help text."""
    groups = [{"id": gid, "title": title, "fields": [_field(n) for n in names]} for gid, title, names in GROUPS]
    what_if = []
    for item in WHAT_IF:
        entry = dict(item)
        if item["id"] == "therapy":
            entry["allowed"] = list(RECORD_FIELDS_BY_FLAT["anti_osteoporosis_therapy"].spec.allowed)
        if item["id"] == "cement_volume":
            spec = RECORD_FIELDS_BY_FLAT["cement_volume_ml"].spec
            entry["min"], entry["max"] = spec.min, spec.max
        what_if.append(entry)
    return {"groups": groups, "what_if": what_if}
