"""Assemble the simulated cohort into the four raw tables of the contract, plus the truth.

The tables look like a hospital export (``features.schema``): IDs as text, dates as
datetime64 (written as ISO dates), binaries 0/1, values rounded as they are recorded,
columns not measured at an imaging time point left empty.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.levels import LEVELS
from features.schema import IMAGING, IMAGING_BY_TIMEPOINT, TABLES, TIMEPOINTS
from features.simulator.cohort import Arrays, Sessions
from features.simulator.outcomes import DAYS_PER_MONTH, Events, Risks
from features.simulator.profile import Profile

_LEVEL_NAMES = np.array(LEVELS, dtype=object)
_BINARY = {c.name for c in IMAGING.columns if c.kind == "binary"}


def _ids(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}{i:07d}" for i in range(1, n + 1)], dtype=object)


def _dates(start: np.datetime64, offset_days: np.ndarray) -> pd.Series:
    """Dates ``offset_days`` after ``start``; NaN offsets give NaT."""
    days = np.where(np.isnan(offset_days), 0, offset_days).astype("int64")
    out = (start + days.astype("timedelta64[D]")).astype("datetime64[s]")
    return pd.Series(np.where(np.isnan(offset_days), np.datetime64("NaT", "s"), out).astype("datetime64[s]"))


def _binary_or_na(values: np.ndarray) -> pd.Series:
    return pd.Series(pd.array(np.where(np.isnan(values), None, values), dtype="Int8"))


def build_tables(profile: Profile, sessions: Sessions, patients: Arrays, procedures: Arrays, imaging: Arrays,
                 followup_imaging: Arrays, followup_months: np.ndarray, death_months: np.ndarray,
                 events: Events, risks: Risks, rng: np.random.Generator) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Return (tables, truth): the raw export and each treated level's true 24-month probabilities."""
    start = np.datetime64(profile.followup.enrolment_start, "D")
    n_pat, n = len(sessions.n_levels), len(sessions.level)
    pat = sessions.patient
    patient_id = _ids("P", n_pat)
    procedure_id = _ids("V", n)
    surgery = patients["surgery_day"].astype(float)
    followup_days = np.maximum(np.round(followup_months * DAYS_PER_MONTH), 3)
    last_contact = surgery + followup_days

    male = patients["male"]
    bmd = np.round(np.clip(patients["bmd_true"] + patients["bmd_measurement_error"], 0.25, 1.6), 3)
    b = profile.bone
    t_ref_mean = np.where(male == 1, b.t_score_reference_mean_g_cm2.male, b.t_score_reference_mean_g_cm2.female)
    t_ref_sd = np.where(male == 1, b.t_score_reference_sd_g_cm2.male, b.t_score_reference_sd_g_cm2.female)
    t_score = np.round(np.clip((bmd - t_ref_mean) / t_ref_sd, -7, 4), 1)
    dxa_missing = patients["dxa_missing"]
    patients_df = pd.DataFrame({
        "patient_id": patient_id,
        "sex": np.where(male == 1, "M", "F").astype(object),
        "height_cm": np.round(patients["height_cm"], 1),
        "weight_kg": np.round(patients["weight_kg"], 1),
        "type2_diabetes": patients["type2_diabetes"],
        "chronic_kidney_disease": patients["chronic_kidney_disease"],
        "glucocorticoids_long_term": patients["glucocorticoids_long_term"],
        "prior_vertebral_fractures_n": patients["prior_vertebral_fractures_n"].astype(np.int64),
        "anti_osteoporosis_therapy": patients["anti_osteoporosis_therapy"],
        "dxa_bmd_g_cm2": np.where(dxa_missing, np.nan, bmd),
        "dxa_t_score": np.where(dxa_missing, np.nan, t_score),
        "last_followup_date": _dates(start, last_contact),
        "death_date": _dates(start, np.where(np.isfinite(death_months), last_contact, np.nan)),
    })

    pain_offset = np.where(procedures["pain_onset_missing"], np.nan, surgery[pat] - procedures["days_pain_to_surgery"])
    procedures_df = pd.DataFrame({
        "procedure_id": procedure_id,
        "patient_id": patient_id[pat],
        "surgery_date": _dates(start, surgery[pat]),
        "age_years": np.round(patients["age_years"][pat], 1),
        "level": _LEVEL_NAMES[sessions.level],
        "technique": np.where(procedures["pkp"] == 1, "PKP", "PVP").astype(object),
        "n_levels_treated": sessions.n_levels[pat].astype(np.int64),
        "pain_onset_date": _dates(start, pain_offset),
        "approach": procedures["approach"],
        "cement_volume_ml": procedures["cement_volume_ml"],
        "brace_prescribed": patients["brace_prescribed"][pat],
    })

    imaging_df = _imaging_table(procedure_id, surgery[pat], last_contact[pat], patients, sessions, imaging,
                                followup_imaging, events, start, rng)

    events_df = pd.DataFrame({
        "event_id": _ids("E", len(events.patient)),
        "patient_id": patient_id[events.patient],
        "event_date": _dates(start, _event_day(surgery, followup_days, events.patient, events.months)),
        "fracture_level": _LEVEL_NAMES[events.level],
    })
    tables = {"patients": patients_df, "procedures": procedures_df, "imaging": imaging_df, "events": events_df}
    for name, df in tables.items():
        assert list(df.columns) == TABLES[name].column_names, name
    truth = pd.DataFrame({
        "procedure_id": procedure_id,
        "p_cemented_refracture": risks.truth["cemented_refracture"],
        "p_adjacent_fracture": risks.truth["adjacent_fracture"],
        "p_remote_fracture": risks.truth["remote_fracture"],
    })
    truth.attrs["horizon_months"] = profile.horizon_months
    return tables, truth


def _event_day(surgery: np.ndarray, followup_days: np.ndarray, patient: np.ndarray, months: np.ndarray) -> np.ndarray:
    """Day of diagnosis: at least one day after surgery, never after the last contact."""
    return surgery[patient] + np.clip(np.round(months * DAYS_PER_MONTH), 1, followup_days[patient])


def _imaging_table(procedure_id: np.ndarray, surgery: np.ndarray, last_contact: np.ndarray, patients: Arrays,
                   sessions: Sessions, im: Arrays, fu: Arrays, events: Events, start: np.datetime64,
                   rng: np.random.Generator) -> pd.DataFrame:
    """One row per treated level and time point (pre-op, post-op, follow-up), in that order."""
    n = len(procedure_id)
    pat = sessions.patient
    nan = np.full(n, np.nan)
    ct = ~im["ct_missing"]
    on_ct = lambda x: np.where(ct, x, np.nan)  # noqa: E731 - values read on CT are missing without CT
    fu_day = np.where(events.cemented_observed,
                      surgery + np.clip(np.round(events.cemented_months * DAYS_PER_MONTH), 1, last_contact - surgery),
                      last_contact)
    by_tp: dict[str, dict[str, np.ndarray]] = {
        "preop": {
            "exam_date": surgery - rng.integers(0, 11, n),
            "vertebral_height_mm": im["h_pre"], "upper_adjacent_height_mm": im["up_pre"], "lower_adjacent_height_mm": im["lo_pre"],
            "kyphotic_angle_deg": im["kyphosis_pre"], "wedge_angle_deg": im["wedge_pre"],
            "hu_index": on_ct(im["hu_pre"]), "hu_upper_adjacent": on_ct(im["hu_up_pre"]), "hu_lower_adjacent": on_ct(im["hu_lo_pre"]),
            "vertebral_body_volume_ml": on_ct(im["body_volume_ml"]),
            "psoas_area_cm2": on_ct(np.round(patients["psoas_area_cm2"][pat], 1)),
            "paraspinal_fat_fraction_pct": on_ct(np.round(patients["paraspinal_fat_fraction_pct"][pat], 1)),
            "ivc": im["ivc"], "endplate_disruption": im["endplate_disruption"],
        },
        "postop": {
            "exam_date": surgery + rng.integers(0, 3, n),
            "vertebral_height_mm": im["h_post"], "upper_adjacent_height_mm": im["up_post"], "lower_adjacent_height_mm": im["lo_post"],
            "kyphotic_angle_deg": im["kyphosis_post"], "wedge_angle_deg": im["wedge_post"],
            "hu_index": on_ct(im["hu_post"]), "hu_upper_adjacent": on_ct(im["hu_up_post"]), "hu_lower_adjacent": on_ct(im["hu_lo_post"]),
            "cement_touches_upper_endplate": im["touches_upper"], "cement_touches_lower_endplate": im["touches_lower"],
            "cement_larger_side_volume_ml": on_ct(im["larger_side_ml"]),
            "leakage_intradiscal": im["leakage_intradiscal"],
            "leakage_paravertebral": im["leakage_paravertebral"], "leakage_venous": im["leakage_venous"],
            "leakage_epidural": im["leakage_epidural"],
        },
        "followup": {
            "exam_date": fu_day,
            "vertebral_height_mm": fu["h_fu"], "upper_adjacent_height_mm": fu["up_fu"], "lower_adjacent_height_mm": fu["lo_fu"],
            "kyphotic_angle_deg": fu["kyphosis_fu"], "wedge_angle_deg": fu["wedge_fu"],
            "bone_marrow_edema": fu["bone_marrow_edema"],
        },
    }
    for tp, cols in by_tp.items():
        assert set(cols) - {"exam_date"} == set(IMAGING_BY_TIMEPOINT[tp]), tp

    out: dict[str, pd.Series | np.ndarray] = {
        "procedure_id": np.repeat(procedure_id, 3),
        "timepoint": np.tile(np.array(TIMEPOINTS, dtype=object), n),
    }
    for col in IMAGING.column_names[2:]:
        if col == "leakage_intradiscal":
            blocks = [by_tp[tp].get(col, np.full(n, None, dtype=object)) for tp in TIMEPOINTS]
            out[col] = np.column_stack(blocks).ravel()
            continue
        blocks = [np.asarray(by_tp[tp].get(col, nan), dtype=float) for tp in TIMEPOINTS]
        values = np.column_stack(blocks).ravel()
        if col == "exam_date":
            out[col] = _dates(start, values)
        elif col in _BINARY:
            out[col] = _binary_or_na(values)
        else:
            out[col] = values
    return pd.DataFrame(out)
