"""Example records, never real patients: the documented two and the page's simulated three.

``example_record()``: a made-up procedure record for documentation, ``GET /model`` and
tests: a **typical** patient. ``example_record("high_risk")``: the same patient with the
two strongest published risk factors, labelled as such. ``example_records()`` gives both
with their labels and why each gets the risk it does (docs/serving.md, "Example records").

No real patient: a 78-year-old woman with an L1 fracture treated by unilateral
vertebroplasty, with pre-op CT and MRI and a post-op radiograph and CT. Every field of
the contract is present, so the example shows the whole request shape; a test checks
that ``POST /predict`` accepts it as is.
"""

from __future__ import annotations

import copy
from typing import Any

from features.records import json_record, tables_to_records
from features.simulator import load_profile, simulate
from features.validate import validate_raw

_EXAMPLE: dict[str, Any] = {
    "patient": {
        "sex": "F",
        "height_cm": 158.0,
        "weight_kg": 56.0,
        "type2_diabetes": 0,
        "chronic_kidney_disease": 0,
        "glucocorticoids_long_term": 0,
        "prior_vertebral_fractures_n": 1,
        "anti_osteoporosis_therapy": "bisphosphonate",
        "dxa_bmd_g_cm2": 0.68,
        "dxa_t_score": -2.9,
    },
    "procedure": {
        "procedure_id": "example-0001",
        "surgery_date": "2024-01-15",
        "age_years": 78.0,
        "level": "L1",
        "technique": "PVP",
        "n_levels_treated": 1,
        "pain_onset_date": "2023-12-28",
        "approach": "unilateral_right",
        "cement_volume_ml": 3.5,
        "brace_prescribed": 0,
    },
    "imaging": {
        "preop": {
            "vertebral_height_mm": 18.0,
            "upper_adjacent_height_mm": 24.0,
            "lower_adjacent_height_mm": 26.0,
            "kyphotic_angle_deg": 15.0,
            "wedge_angle_deg": 12.0,
            "hu_index": 62.0,
            "hu_upper_adjacent": 70.0,
            "hu_lower_adjacent": 58.0,
            "vertebral_body_volume_ml": 30.0,
            "psoas_area_cm2": 9.6,
            "paraspinal_fat_fraction_pct": 25.0,
            "ivc": 0,
            "endplate_disruption": 0,
        },
        "postop": {
            "vertebral_height_mm": 20.0,
            "upper_adjacent_height_mm": 24.0,
            "lower_adjacent_height_mm": 26.0,
            "kyphotic_angle_deg": 11.0,
            "wedge_angle_deg": 9.0,
            "hu_index": 1100.0,
            "hu_upper_adjacent": 71.0,
            "hu_lower_adjacent": 59.0,
            "cement_touches_upper_endplate": 1,
            "cement_touches_lower_endplate": 0,
            "cement_larger_side_volume_ml": 2.4,
            "leakage_intradiscal": "none",
            "leakage_paravertebral": 0,
            "leakage_venous": 0,
            "leakage_epidural": 0,
        },
    },
}


#: The high-risk example: the typical one with an intravertebral cleft on MRI and a
#: spike-type intradiscal leak (per the simulator's truth, docs/simulator.md: about 45 %
#: cemented refracture and 53-71 % adjacent fracture by 24 months, in line with Xiong 2021's
#: ~46 % refracture with a cleft and Yassavoly 2025's 7 of 9 adjacent fractures after a spike leak).
_HIGH_RISK_CHANGES = {("procedure", "procedure_id"): "example-0002", ("imaging", "preop", "ivc"): 1,
                      ("imaging", "postop", "leakage_intradiscal"): "spike"}

EXAMPLES: dict[str, dict[str, str]] = {
    "typical": {
        "label": "Typical patient: 78-year-old woman, L1 vertebroplasty, no cleft, no disc leak",
        "why": "No intravertebral cleft and no cement in the disc: the simulator's true risk is about 2.5 % cemented "
               "refracture and 9 % adjacent fracture by 24 months, close to the published averages (3.7 %, ~9 %).",
    },
    "high_risk": {
        "label": "High-risk patient: the same, with an intravertebral cleft and a spike-type disc leak",
        "why": "An intravertebral cleft (about 46 % refractured in Xiong 2021) and a spike-type intradiscal leak (7 of 9 "
               "adjacent fractures in Yassavoly 2025): the simulator's true risk is about 45 % cemented refracture and "
               "53-71 % adjacent fracture by 24 months.",
    },
}


def example_record(name: str = "typical") -> dict[str, Any]:
    """A fresh copy of an example record (nested, as POST /predict takes it): ``"typical"``
    (the default) or ``"high_risk"`` (``EXAMPLES``)."""
    if name not in EXAMPLES:
        raise KeyError(f"no example record {name!r}: {', '.join(EXAMPLES)}")
    record = copy.deepcopy(_EXAMPLE)
    if name == "high_risk":
        for path, value in _HIGH_RISK_CHANGES.items():
            section = record
            for key in path[:-1]:
                section = section[key]
            section[path[-1]] = value
    return record


def example_records() -> list[dict[str, Any]]:
    """The documented examples in order (typical first): ``{name, label, why, record}``."""
    return [{"name": name, **EXAMPLES[name], "record": example_record(name)} for name in EXAMPLES]


EXAMPLE_SEED = 20261121


def example_patients(profile: str = "xiong2021-pvp", outcome: str = "cemented_refracture", n_cohort: int = 400) -> list[dict[str, Any]]:
    """The review page's examples (``serving.ui``), each a nested record with a label: first
    the documented typical and high-risk records (``example_records``), then three simulated
    patients: the procedures with the lowest, middle and highest true risk of ``outcome``
    among those with complete imaging, drawn with a fixed seed so the same three appear on
    every start."""
    tables, truth = simulate(load_profile(profile), n_procedures=n_cohort, seed=EXAMPLE_SEED)
    flat = tables_to_records(validate_raw(tables))
    flat = flat.merge(truth[["procedure_id", f"p_{outcome}"]], on="procedure_id")
    complete = flat.dropna(subset=["hu_index_preop", "psoas_area_cm2_preop", "ivc_preop", "cement_touches_upper_endplate_postop"])
    if len(complete) >= 3:
        flat = complete
    ranked = flat.sort_values(f"p_{outcome}", kind="stable").reset_index(drop=True)
    picks = [("Example A: lower simulated risk", 0), ("Example B: typical simulated risk", len(ranked) // 2),
             ("Example C: higher simulated risk", len(ranked) - 1)]
    out = [{"label": e["label"], "record": e["record"]} for e in example_records()]
    for label, i in picks:
        row = ranked.drop(columns=[f"p_{outcome}"]).iloc[i].to_dict()
        out.append({"label": label, "record": json_record(row)})
    return out
