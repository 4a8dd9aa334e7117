"""``features.exclusion``: under ``--exclude-invalid`` exactly the procedures an error touches
are left out (a patient's or an event's error: all that patient's procedures; an imaging
row's: its procedure), warnings exclude nothing, and the report says so, fingerprinted."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pytest

from features.assemble import build_training_set
from features.exclusion import REPORT_COLUMNS, checked_export, exclusion_report
from features.simulator import load_profile, simulate
from features.validate import RawDataError, check_raw, validate_raw


def _ids(tables) -> list[str]:
    return tables["procedures"]["procedure_id"].tolist()


def test_a_clean_export_excludes_nothing_under_either_policy(raw):
    for policy in (False, True):
        checked = checked_export(check_raw(raw), policy)
        assert checked.report.excluded == [] and checked.report.violations == []
        assert _ids(checked.tables) == ["A1-1", "B2-1", "C3-1", "C3-2"]
    expected = validate_raw(raw)
    for name in expected:
        pd.testing.assert_frame_equal(checked.tables[name], expected[name])


def test_by_default_an_error_stops_the_work(raw):
    raw["procedures"].loc[1, "technique"] = "glue"
    with pytest.raises(RawDataError) as exc:
        checked_export(check_raw(raw))
    assert [(v.table, v.row, v.column) for v in exc.value.violations] == [("procedures", "B2-1", "technique")]


@pytest.mark.parametrize("table, row, column, value, excluded", [
    ("patients", 2, "weight_kg", "900", ["C3-1", "C3-2"]),           # a patient's value: every level of C3
    ("procedures", 3, "cement_volume_ml", "99", ["C3-2"]),           # a procedure's value: that level only
    ("imaging", 0, "hu_index", "abc", ["A1-1"]),                     # a pre-op imaging row: its procedure
    ("imaging", 2, "kyphotic_angle_deg", "400", ["A1-1"]),           # a follow-up imaging row too
    ("events", 1, "fracture_level", "X9", ["C3-1", "C3-2"]),         # an event: every procedure of its patient
])
def test_an_error_excludes_the_procedures_it_touches_and_only_those(raw, table, row, column, value, excluded):
    raw[table].loc[row, column] = value
    checked = checked_export(check_raw(raw), exclude_invalid=True)
    assert checked.report.excluded == excluded
    kept = [p for p in ["A1-1", "B2-1", "C3-1", "C3-2"] if p not in excluded]
    assert _ids(checked.tables) == kept
    # What only the excluded procedures use goes with them; what the kept ones use stays.
    assert set(checked.tables["imaging"]["procedure_id"]) == set(kept)
    patients = set(checked.tables["procedures"]["patient_id"])
    assert set(checked.tables["patients"]["patient_id"]) == patients
    assert set(checked.tables["events"]["patient_id"]) <= patients
    # The kept tables are what validation accepts: they build a training set.
    assert len(build_training_set(checked.tables, "postop")) == len(kept)


def test_an_event_of_an_unknown_patient_excludes_no_procedure_and_is_dropped(raw):
    raw["events"].loc[0, "patient_id"] = "Z9"
    checked = checked_export(check_raw(raw), exclude_invalid=True)
    assert checked.report.excluded == [] and len(checked.report.errors) == 1
    assert "E1" not in set(checked.tables["events"]["event_id"]) and len(checked.tables["events"]) == 3
    assert checked.report.frame()["excluded_procedures"].tolist() == [""]


def test_a_level_excluded_from_a_session_leaves_its_siblings_count_alone(raw):
    raw["imaging"].loc[raw["imaging"]["procedure_id"] == "C3-1", "psoas_area_cm2"] = "600"
    checked = checked_export(check_raw(raw), exclude_invalid=True)
    assert checked.report.excluded == ["C3-1"]
    assert checked.tables["procedures"].set_index("procedure_id").loc["C3-2", "n_levels_treated"] == 2


def test_duplicate_keys_exclude_every_row_holding_them_and_the_other_rules_still_run(raw):
    raw["procedures"].loc[1, "procedure_id"] = "A1-1"          # B2's procedure takes A1-1's key
    raw["patients"].loc[0, "weight_kg"] = "-3"                 # and A1 has a bad weight
    raw["imaging"].loc[raw["imaging"]["procedure_id"] == "C3-2", "exam_date"] = "2030-01-01"
    check = check_raw(raw)
    # One pass: the duplicate does not hide the cell and cross-table rules (B2-1's images
    # now name a procedure the export does not hold).
    assert {v.rule for v in check.errors} == {"duplicate_key", "range", "future_date", "unknown_procedure"}
    checked = checked_export(check, exclude_invalid=True)
    assert checked.report.excluded == ["A1-1", "C3-2"]  # both rows keyed A1-1; C3-2's images
    assert _ids(checked.tables) == ["C3-1"] and set(checked.tables["imaging"]["procedure_id"]) == {"C3-1"}


def test_a_missing_column_stops_the_work_whatever_the_policy(raw):
    raw["imaging"] = raw["imaging"].drop(columns=["wedge_angle_deg"])
    check = check_raw(raw)
    assert check.structural
    with pytest.raises(RawDataError, match="column missing"):
        checked_export(check, exclude_invalid=True)


def test_warnings_exclude_nothing_and_are_in_the_report(raw):
    img = raw["imaging"]
    img.loc[(img["procedure_id"] == "A1-1") & (img["timepoint"] == "postop"), "upper_adjacent_height_mm"] = "33"
    checked = checked_export(check_raw(raw))  # the default policy: warnings do not stop
    assert checked.report.excluded == [] and len(_ids(checked.tables)) == 4
    frame = checked.report.frame()
    assert frame[["table", "row", "column", "rule", "severity"]].values.tolist() == [
        ["imaging", "A1-1/postop", "upper_adjacent_height_mm", "neighbour_height_over_time", "warning"]]


def test_the_report_lists_table_row_column_rule_severity_and_its_fingerprint_is_its_bytes(raw):
    raw["patients"].loc[2, "weight_kg"] = "900"
    img = raw["imaging"]
    img.loc[(img["procedure_id"] == "A1-1") & (img["timepoint"] == "preop"), "vertebral_height_mm"] = "1.8"  # cm
    report = checked_export(check_raw(raw), exclude_invalid=True).report
    frame = pd.read_csv(io.BytesIO(report.csv_bytes()), dtype=str, keep_default_na=False)
    assert tuple(frame.columns) == REPORT_COLUMNS
    rows = {(r.table, r.row, r.column, r.rule, r.severity, r.excluded_procedures) for r in frame.itertuples()}
    assert ("patients", "C3", "weight_kg", "range", "error", "C3-1;C3-2") in rows
    assert ("imaging", "A1-1/preop", "vertebral_height_mm", "treated_height_over_time", "error", "A1-1") in rows
    assert report.fingerprint == hashlib.sha256(report.csv_bytes()).hexdigest()
    summary = report.summary()
    assert summary["excluded_procedures"] == "3" and summary["exclusion_report_sha256"] == report.fingerprint


def test_on_a_simulated_export_exactly_the_broken_procedures_leave_and_the_others_are_untouched():
    """Errors put into random rows of every table of a simulated export: the excluded set is
    the procedures those rows touch, worked out independently, and every kept procedure's
    features and labels are those of the clean export."""
    tables, _ = simulate(load_profile("yassavoly2025-pkp"), 600, 5)
    clean = build_training_set(validate_raw(tables), "postop")
    rng = np.random.default_rng(0)
    broken = {k: v.copy() for k, v in tables.items()}
    procedures, patients, imaging, events = (broken[k] for k in ("procedures", "patients", "imaging", "events"))
    levels_of = procedures.groupby("patient_id")["procedure_id"].apply(list).to_dict()
    expected: set[str] = set()
    for i in rng.choice(len(procedures), 3, replace=False):
        procedures.loc[i, "age_years"] = 7.0  # outside 40-110
        expected.add(procedures.at[i, "procedure_id"])
    for i in rng.choice(len(patients), 3, replace=False):
        patients.loc[i, "weight_kg"] = 900.0
        expected.update(levels_of.get(patients.at[i, "patient_id"], []))
    pre = np.flatnonzero((imaging["timepoint"] == "preop").to_numpy())
    for i in rng.choice(pre, 3, replace=False):
        imaging.loc[i, "vertebral_height_mm"] = imaging.at[i, "vertebral_height_mm"] / 10  # a unit slip
        expected.add(imaging.at[i, "procedure_id"])
    for i in rng.choice(len(events), 2, replace=False):
        events.loc[i, "event_date"] = pd.Timestamp("1990-01-01")  # before the surgery
        expected.update(levels_of[events.at[i, "patient_id"]])
    check = check_raw(broken)
    checked = checked_export(check, exclude_invalid=True)
    assert set(checked.report.excluded) == expected
    assert exclusion_report(check).excluded == checked.report.excluded
    kept = build_training_set(checked.tables, "postop")
    assert set(kept.index) == set(clean.index) - expected
    pd.testing.assert_frame_equal(kept, clean.loc[kept.index])


@pytest.mark.parametrize("column", ["procedure_id", "patient_id"])
def test_the_report_of_an_export_without_its_keys_excludes_nothing_and_stops(raw, column):
    raw["procedures"] = raw["procedures"].drop(columns=[column])
    raw["patients"].loc[0, "weight_kg"] = "900"
    check = check_raw(raw)
    assert exclusion_report(check).excluded == [] and check.structural
    with pytest.raises(RawDataError, match="column missing"):
        checked_export(check, exclude_invalid=True)
