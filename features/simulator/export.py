"""Assemble the simulated cohort into the four raw tables of the contract, plus the truth.

The tables look like a hospital export (``features.schema``): IDs as text, dates as
datetime64 (written as ISO dates), binaries 0/1, values rounded as they are recorded,
columns not measured at an imaging time point left empty.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from features.ascertainment import Ascertainment, ExportMetadata, from_metadata
from features.levels import LEVELS
from features.schema import IMAGING, IMAGING_BY_TIMEPOINT, OPTIONAL_COLUMNS, TABLES, TIMEPOINTS
from features.simulator.anatomy import N_LEVELS
from features.simulator.cohort import Arrays, Sessions
from features.simulator.outcomes import DAYS_PER_MONTH, TRUTH_HORIZONS_MONTHS, Events, Observation
from features.simulator.profile import OUTCOMES, Profile

_LEVEL_NAMES = np.array(LEVELS, dtype=object)
_BINARY = {c.name for c in (*IMAGING.columns, *OPTIONAL_COLUMNS["imaging"]) if c.kind == "binary"}


def _ids(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}{i:07d}" for i in range(1, n + 1)], dtype=object)


def _dates(start: np.datetime64, offset_days: np.ndarray) -> pd.Series:
    """Dates ``offset_days`` after ``start``; NaN offsets give NaT."""
    days = np.where(np.isnan(offset_days), 0, offset_days).astype("int64")
    out = (start + days.astype("timedelta64[D]")).astype("datetime64[s]")
    return pd.Series(np.where(np.isnan(offset_days), np.datetime64("NaT", "s"), out).astype("datetime64[s]"))


def _binary_or_na(values: np.ndarray) -> pd.Series:
    """0/1 floats (NaN = missing) as a nullable Int8 column, built from data and mask
    directly (an object array of None would cost ~0.1 s per 300,000 cells)."""
    mask = np.isnan(values)
    return pd.Series(pd.arrays.IntegerArray(np.where(mask, 0, values).astype(np.int8), mask))


def export_metadata(profile: Profile, data_cut: date | None = None) -> ExportMetadata:
    """The ``export.yaml`` of the profile's exports: how far they record deaths and
    fractures (``Profile.followup.recording``) and their data cut (``data_cut``: an export
    drawn on another date, ``simulate(..., data_cut=)``)."""
    rec = profile.followup.recording
    return ExportMetadata(site=profile.name, data_cut=data_cut or profile.followup.data_cut,
                          deaths_ascertained_until="data_cut" if rec.deaths == "registry" else "last_contact",
                          fractures_ascertained_until=rec.fractures_until)


def ascertainment_of(profile: Profile, data_cut: date | None = None) -> Ascertainment:
    """What the labels of the profile's exports follow (their ``export.yaml``), for code that
    simulates in memory without writing the file."""
    return from_metadata(export_metadata(profile, data_cut))


def _days(months: np.ndarray) -> np.ndarray:
    """Whole days after surgery, at least 3 (the discharge)."""
    return np.maximum(np.round(months * DAYS_PER_MONTH), 3)


def build_tables(profile: Profile, sessions: Sessions, patients: Arrays, procedures: Arrays, imaging: Arrays,
                 followup_imaging: Arrays, seen: Observation, events: Events, truth: dict[str, np.ndarray],
                 missing: Arrays, measured: Arrays, rng: np.random.Generator) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Return (tables, truth): the raw export and each treated level's true crude risks.

    ``seen``: ``outcomes.observation_months`` (last contact, recorded death, fracture
    window); ``truth``: ``outcomes.truth_table`` arrays; ``missing``:
    ``missingness.draw_missingness``; ``measured``: ``missingness.draw_measurement``. The
    tables carry the contract's columns in order, then its optional metadata columns
    (``features.schema.OPTIONAL_COLUMNS``).
    """
    start = np.datetime64(profile.followup.enrolment_start, "D")
    n_pat, n = len(sessions.n_levels), len(sessions.level)
    pat = sessions.patient
    patient_id = _ids("P", n_pat)
    procedure_id = _ids("V", n)
    surgery = patients["surgery_day"].astype(float)
    died = np.isfinite(seen.death)
    death_days = np.where(died, _days(np.where(died, seen.death, 0.0)), np.nan)
    # Never a contact after the death (a registry death can fall within the first days).
    followup_days = np.where(died, np.minimum(_days(seen.last_contact), death_days), _days(seen.last_contact))
    window_days = np.where(died, np.minimum(_days(seen.fracture_window), death_days), _days(seen.fracture_window))
    last_contact = surgery + followup_days

    male = patients["male"]
    dxa_missing = missing["dxa"]
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
        "dxa_bmd_g_cm2": np.where(dxa_missing, np.nan, measured["dxa_bmd_g_cm2"]),
        "dxa_t_score": np.where(dxa_missing, np.nan, measured["dxa_t_score"]),
        "last_followup_date": _dates(start, last_contact),
        "death_date": _dates(start, surgery + death_days),
        "dxa_site": np.where(dxa_missing, None, measured["dxa_site"]).astype(object),
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

    imaging_df = _imaging_table(profile, procedure_id, surgery[pat], last_contact[pat], (surgery + window_days)[pat],
                                patients, sessions, imaging, followup_imaging, events, missing, measured, start, rng)

    event_level = _LEVEL_NAMES[events.level]
    event_patient, event_months = events.patient, events.months
    if profile.export_quirks.enabled and profile.export_quirks.sacral_event_share > 0:
        # Sacral insufficiency fractures appear in real event lists; S1 is outside the spine
        # levels the outcomes count (quirk: the contract must accept and ignore it).
        sacral = np.flatnonzero(rng.random(n_pat) < profile.export_quirks.sacral_event_share)
        months = rng.uniform(0, seen.fracture_window[sacral])
        event_level = np.concatenate([event_level, np.full(len(sacral), "S1", dtype=object)])
        event_patient = np.concatenate([event_patient, sacral])
        event_months = np.concatenate([event_months, months])
    events_df = pd.DataFrame({
        "event_id": _ids("E", len(event_patient)),
        "patient_id": patient_id[event_patient],
        "event_date": _dates(start, _event_day(surgery, window_days, event_patient, event_months)),
        "fracture_level": event_level,
        "fracture_criterion": np.full(len(event_patient), profile.measurement.new_fracture_criterion, dtype=object),
    })
    tables = {"patients": patients_df, "procedures": procedures_df, "imaging": imaging_df, "events": events_df}
    for name, df in tables.items():
        expected = TABLES[name].column_names + [c.name for c in OPTIONAL_COLUMNS[name]]
        assert list(df.columns) == expected, name
    truth_df = pd.DataFrame({"procedure_id": procedure_id, **truth})
    for outcome in OUTCOMES:  # deprecated alias, read by training until it moves to the horizons
        truth_df[f"p_{outcome}"] = truth_df[f"p_{outcome}_24m"]
    truth_df.attrs["horizons_months"] = list(TRUTH_HORIZONS_MONTHS)
    return tables, truth_df


def _event_day(surgery: np.ndarray, window_days: np.ndarray, patient: np.ndarray, months: np.ndarray) -> np.ndarray:
    """Day of diagnosis: at least one day after surgery, never after the end of the fracture
    window (the last contact, or death or the data cut)."""
    return surgery[patient] + np.clip(np.round(months * DAYS_PER_MONTH), 1, window_days[patient])


def _same_session_neighbour_hu(sessions: Sessions, hu_post: np.ndarray, offset: int) -> np.ndarray:
    """Post-op HU of the level ``offset`` away when it was cemented in the same session, else NaN."""
    index = np.full((sessions.treated.shape[0], N_LEVELS + 2), -1)
    index[sessions.patient, sessions.level + 1] = np.arange(len(sessions.level))
    other = index[sessions.patient, sessions.level + 1 + offset]
    return np.where(other >= 0, hu_post[np.maximum(other, 0)], np.nan)


def _imaging_table(profile: Profile, procedure_id: np.ndarray, surgery: np.ndarray, last_contact: np.ndarray,
                   window_end: np.ndarray, patients: Arrays, sessions: Sessions, im: Arrays, fu: Arrays, events: Events, missing: Arrays,
                   measured: Arrays, start: np.datetime64, rng: np.random.Generator) -> pd.DataFrame:
    """One row per treated level and time point (pre-op, post-op, follow-up), in that order.

    The follow-up examination is at the last contact, or at a cemented refracture seen
    before ``window_end`` (the end of the fracture window, day after the enrolment start).

    Values read on a missing examination are empty (pre-op MRI: cleft and endplate; pre-op
    CT: HU, body volume, muscle; post-op CT: HU and larger-side volume). Recorded bone HU
    carry the CT protocol's offset (tube voltage, contrast); the true risk does not.
    """
    n = len(procedure_id)
    pat = sessions.patient
    nan = np.full(n, np.nan)
    quirks = profile.export_quirks
    mri_pre, ct_pre, ct_post = (~missing[k][pat] for k in ("preop_mri", "preop_ct", "postop_ct"))
    on = lambda ok, x: np.where(ok, x, np.nan)  # noqa: E731 - a value read on a missing exam is missing
    factor, shift = measured["hu_factor"][pat], measured["hu_shift"][pat]
    bone_hu = lambda x: np.round(x * factor + shift)  # noqa: E731 - recorded HU under this site's protocol
    hu_up_post, hu_lo_post = bone_hu(im["hu_up_post"]), bone_hu(im["hu_lo_post"])
    up_pre, lo_pre, up_post, lo_post = im["up_pre"], im["lo_pre"], im["up_post"], im["lo_post"]
    up_fu, lo_fu, h_fu = fu["up_fu"], fu["lo_fu"], fu["h_fu"]
    if quirks.enabled:
        if quirks.same_session_neighbour_hu:
            # A neighbour cemented in the same session reads ~1,000 HU on the post-op CT.
            hu_up_post = np.where(np.isnan(above := _same_session_neighbour_hu(sessions, im["hu_post"], -1)), hu_up_post, above)
            hu_lo_post = np.where(np.isnan(below := _same_session_neighbour_hu(sessions, im["hu_post"], +1)), hu_lo_post, below)
        # An old flattened neighbour (vertebra plana), 4-7.9 mm at every time point.
        plana = rng.random(n) < quirks.vertebra_plana_neighbour_share
        plana_upper = plana & (rng.random(n) < 0.5) & ~np.isnan(up_pre)
        plana_lower = plana & ~plana_upper & ~np.isnan(lo_pre)
        flat = np.round(rng.uniform(4.0, 7.9, n), 1)
        up_pre, up_post, up_fu = (np.where(plana_upper, flat, x) for x in (up_pre, up_post, up_fu))
        lo_pre, lo_post, lo_fu = (np.where(plana_lower, flat, x) for x in (lo_pre, lo_post, lo_fu))
        # Near-complete collapse of a refractured level at follow-up, 1.5-2.9 mm.
        collapse = events.cemented_observed & (rng.random(n) < quirks.near_complete_collapse_share)
        h_fu = np.where(collapse, np.round(rng.uniform(1.5, 2.9, n), 1), h_fu)
    fu_day = np.where(events.cemented_observed,
                      surgery + np.clip(np.round(events.cemented_months * DAYS_PER_MONTH), 1, window_end - surgery),
                      last_contact)
    kvp, contrast = measured["ct_kvp"][pat], measured["ct_contrast"][pat].astype(float)
    by_tp: dict[str, dict[str, np.ndarray]] = {
        "preop": {
            "exam_date": surgery - rng.integers(0, 11, n),
            "vertebral_height_mm": im["h_pre"], "upper_adjacent_height_mm": up_pre, "lower_adjacent_height_mm": lo_pre,
            "kyphotic_angle_deg": im["kyphosis_pre"], "wedge_angle_deg": im["wedge_pre"],
            "hu_index": on(ct_pre, bone_hu(im["hu_pre"])),
            "hu_upper_adjacent": on(ct_pre, bone_hu(im["hu_up_pre"])), "hu_lower_adjacent": on(ct_pre, bone_hu(im["hu_lo_pre"])),
            "vertebral_body_volume_ml": on(ct_pre, im["body_volume_ml"]),
            "psoas_area_cm2": on(ct_pre, np.round(patients["psoas_area_cm2"][pat], 1)),
            "paraspinal_fat_fraction_pct": on(ct_pre, np.round(patients["paraspinal_fat_fraction_pct"][pat], 1)),
            "ivc": on(mri_pre, im["ivc"]), "endplate_disruption": on(mri_pre, im["endplate_disruption"]),
            "ct_tube_voltage_kvp": on(ct_pre, kvp), "ct_contrast": on(ct_pre, contrast),
        },
        "postop": {
            "exam_date": surgery + rng.integers(0, 3, n),
            "vertebral_height_mm": im["h_post"], "upper_adjacent_height_mm": up_post, "lower_adjacent_height_mm": lo_post,
            "kyphotic_angle_deg": im["kyphosis_post"], "wedge_angle_deg": im["wedge_post"],
            "hu_index": on(ct_post, im["hu_post"]), "hu_upper_adjacent": on(ct_post, hu_up_post),
            "hu_lower_adjacent": on(ct_post, hu_lo_post),
            "cement_touches_upper_endplate": im["touches_upper"], "cement_touches_lower_endplate": im["touches_lower"],
            "cement_larger_side_volume_ml": on(ct_post, im["larger_side_ml"]),
            "leakage_intradiscal": im["leakage_intradiscal"],
            "leakage_paravertebral": im["leakage_paravertebral"], "leakage_venous": im["leakage_venous"],
            "leakage_epidural": im["leakage_epidural"],
            "ct_tube_voltage_kvp": on(ct_post, kvp), "ct_contrast": on(ct_post, contrast),
            "leakage_intradiscal_side": im["leakage_intradiscal_side"],
        },
        "followup": {
            "exam_date": fu_day,
            "vertebral_height_mm": h_fu, "upper_adjacent_height_mm": up_fu, "lower_adjacent_height_mm": lo_fu,
            "kyphotic_angle_deg": fu["kyphosis_fu"], "wedge_angle_deg": fu["wedge_fu"],
            "bone_marrow_edema": fu["bone_marrow_edema"],
        },
    }
    optional = [c.name for c in OPTIONAL_COLUMNS["imaging"]]
    for tp, cols in by_tp.items():
        assert set(cols) - {"exam_date"} - set(optional) == set(IMAGING_BY_TIMEPOINT[tp]), tp

    out: dict[str, pd.Series | np.ndarray] = {
        "procedure_id": np.repeat(procedure_id, 3),
        "timepoint": np.tile(np.array(TIMEPOINTS, dtype=object), n),
    }
    for col in IMAGING.column_names[2:] + optional:
        if col in ("leakage_intradiscal", "leakage_intradiscal_side"):
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
