"""A tiny hand-written raw export (three patients, four treated levels) with values chosen
so that derived measures can be worked out on paper. Returned as CSV-like text tables,
the way ``features.io.read_raw`` hands a CSV export to validation."""

from __future__ import annotations

import pandas as pd


def raw_tables() -> dict[str, pd.DataFrame]:
    patients = pd.DataFrame(
        {
            "patient_id": ["A1", "B2", "C3"],
            "sex": ["F", "M", "F"],
            "height_cm": ["160", "175", "150"],
            "weight_kg": ["64", "70", "45"],
            "type2_diabetes": ["0", "1", "0"],
            "chronic_kidney_disease": ["0", "0", "1"],
            "glucocorticoids_long_term": ["0", "0", "1"],
            "prior_vertebral_fractures_n": ["1", "0", "2"],
            "anti_osteoporosis_therapy": ["bisphosphonate", "none", "denosumab_discontinued"],
            "dxa_bmd_g_cm2": ["0.68", "0.80", ""],
            "dxa_t_score": ["-2.9", "-2.1", "-3.4"],
            "last_followup_date": ["2023-03-01", "2023-06-01", "2023-06-01"],
            "death_date": ["", "", ""],
        }
    )
    procedures = pd.DataFrame(
        {
            "procedure_id": ["A1-1", "B2-1", "C3-1", "C3-2"],
            "patient_id": ["A1", "B2", "C3", "C3"],
            "surgery_date": ["2021-01-10", "2021-02-01", "2021-03-15", "2021-03-15"],
            "age_years": ["78", "71", "84", "84"],
            "level": ["L1", "T12", "L1", "L2"],
            "technique": ["PVP", "PKP", "PKP", "PKP"],
            "n_levels_treated": ["1", "1", "2", "2"],
            "pain_onset_date": ["2020-12-27", "", "2021-03-01", "2021-03-01"],
            "approach": ["unilateral_right", "bilateral", "bilateral", "bilateral"],
            "cement_volume_ml": ["3.0", "4.0", "3.5", "3.5"],
            "brace_prescribed": ["0", "1", "0", "0"],
        }
    )
    rows = []

    def img(pid, tp, date, **values):
        rows.append({"procedure_id": pid, "timepoint": tp, "exam_date": date, **values})

    # A1-1: pre-op CR = 18 / mean(24, 26) = 72 %; post-op CR = 20 / 25 = 80 %; RR = 8 points.
    img("A1-1", "preop", "2021-01-08", vertebral_height_mm="18", upper_adjacent_height_mm="24",
        lower_adjacent_height_mm="26", kyphotic_angle_deg="15", wedge_angle_deg="12", hu_index="60",
        hu_upper_adjacent="70", hu_lower_adjacent="55", vertebral_body_volume_ml="30",
        psoas_area_cm2="9.6", paraspinal_fat_fraction_pct="25", ivc="1", endplate_disruption="0")
    img("A1-1", "postop", "2021-01-11", vertebral_height_mm="20", upper_adjacent_height_mm="24",
        lower_adjacent_height_mm="26", kyphotic_angle_deg="11", wedge_angle_deg="9", hu_index="1100",
        cement_touches_upper_endplate="1", cement_touches_lower_endplate="0",
        cement_larger_side_volume_ml="2.4", leakage_intradiscal="spike", leakage_paravertebral="0",
        leakage_venous="0", leakage_epidural="0")
    # Follow-up CR = 15 / 25 = 60 %: CRI = 80 - 60 = 20 points (a refracture by Xiong's criterion).
    img("A1-1", "followup", "2021-06-01", vertebral_height_mm="15", upper_adjacent_height_mm="24",
        lower_adjacent_height_mm="26", kyphotic_angle_deg="18", wedge_angle_deg="14", bone_marrow_edema="1")
    # B2-1: no CT (HU and volumes missing), as hospitals present it.
    img("B2-1", "preop", "2021-01-30", vertebral_height_mm="21", upper_adjacent_height_mm="27",
        lower_adjacent_height_mm="29", kyphotic_angle_deg="10", wedge_angle_deg="8", ivc="0", endplate_disruption="1")
    img("B2-1", "postop", "2021-02-02", vertebral_height_mm="25", upper_adjacent_height_mm="27",
        lower_adjacent_height_mm="29", kyphotic_angle_deg="6", wedge_angle_deg="5",
        cement_touches_upper_endplate="1", cement_touches_lower_endplate="1", leakage_intradiscal="none",
        leakage_paravertebral="1", leakage_venous="0", leakage_epidural="0")
    for pid in ("C3-1", "C3-2"):
        img(pid, "preop", "2021-03-14", vertebral_height_mm="17", upper_adjacent_height_mm="23",
            lower_adjacent_height_mm="25", kyphotic_angle_deg="20", wedge_angle_deg="15", hu_index="45",
            hu_upper_adjacent="50", hu_lower_adjacent="48", vertebral_body_volume_ml="28",
            psoas_area_cm2="7.2", paraspinal_fat_fraction_pct="40", ivc="0", endplate_disruption="1")
        img(pid, "postop", "2021-03-16", vertebral_height_mm="20", upper_adjacent_height_mm="23",
            lower_adjacent_height_mm="25", kyphotic_angle_deg="14", wedge_angle_deg="10",
            cement_touches_upper_endplate="0", cement_touches_lower_endplate="0", leakage_intradiscal="none",
            leakage_paravertebral="0", leakage_venous="0", leakage_epidural="0")
    imaging = pd.DataFrame(rows).fillna("")
    events = pd.DataFrame(
        {
            "event_id": ["E1", "E2", "E3", "E4"],
            "patient_id": ["A1", "C3", "C3", "B2"],
            # A1: refracture of L1 at ~4.7 months. C3: L3 fracture (adjacent to L2, remote to L1)
            # and a T11 fracture (remote to both). B2: T11 (adjacent to T12) after 2 years.
            "event_date": ["2021-06-01", "2021-09-01", "2022-01-15", "2023-05-01"],
            "fracture_level": ["L1", "L3", "T11", "T11"],
        }
    )
    return {"patients": patients, "procedures": procedures, "imaging": imaging, "events": events}
