"""``features.raw_records.scorable_records`` on the hand-written export (tests/support/fixtures.py):
which records a broken row leaves out, what is only reported, what refuses the export."""

from __future__ import annotations

import pytest

from features.raw_records import scorable_records
from features.validate import RawDataError


def named(result):
    return {(v.table, v.row, v.column) for v in result.violations}


def test_a_clean_export_gives_every_record_and_no_violation(raw):
    result = scorable_records(raw)
    assert result.violations == [] and result.excluded == []
    assert result.records["procedure_id"].tolist() == ["A1-1", "B2-1", "C3-1", "C3-2"]
    assert result.n_procedures == 4


def test_a_patient_row_excludes_every_level_of_that_patient(raw):
    raw["patients"].loc[2, "weight_kg"] = "900"  # C3: two levels
    result = scorable_records(raw)
    assert ("patients", "C3", "weight_kg") in named(result)
    assert result.excluded == ["C3-1", "C3-2"]
    assert result.records["procedure_id"].tolist() == ["A1-1", "B2-1"]
    assert result.report_lines()[-1].startswith("2 of 4 procedure records not scored")


def test_procedure_and_imaging_rows_exclude_their_own_level_only(raw):
    raw["procedures"].loc[3, "cement_volume_ml"] = "99"      # C3-2
    raw["imaging"].loc[0, "hu_index"] = "abc"                 # A1-1 pre-op
    result = scorable_records(raw)
    assert {("procedures", "C3-2", "cement_volume_ml"), ("imaging", "A1-1/preop", "hu_index")} <= named(result)
    # C3-1 is kept: its session lost a level to the exclusion, which is not its fault.
    assert result.records["procedure_id"].tolist() == ["B2-1", "C3-1"]
    assert not any(v.column == "n_levels_treated" for v in result.violations)


def test_what_a_record_does_not_use_is_reported_but_excludes_nothing(raw):
    raw["events"].loc[0, "fracture_level"] = "X9"
    follow = raw["imaging"].index[raw["imaging"]["timepoint"] == "followup"][0]
    raw["imaging"].loc[follow, "kyphotic_angle_deg"] = "400"
    result = scorable_records(raw)
    assert ("events", "E1", "fracture_level") in named(result)
    assert ("imaging", "A1-1/followup", "kyphotic_angle_deg") in named(result)
    assert result.excluded == [] and len(result.records) == 4


def test_a_rule_between_tables_is_checked_on_what_is_kept(raw):
    """validate_raw checks the rules between tables only when every table passes its own
    checks: with a field error elsewhere, a miscounted session is still found."""
    raw["patients"].loc[1, "weight_kg"] = "900"               # B2
    raw["procedures"].loc[0, "n_levels_treated"] = "2"        # A1-1 says 2 levels, has 1
    raw["events"].loc[0, "fracture_level"] = "X9"             # reported, excludes nothing
    raw["patients"].loc[2, "last_followup_date"] = "someday"  # C3: not a record input
    result = scorable_records(raw)
    assert ("procedures", "A1-1", "n_levels_treated") in named(result)
    assert {("events", "E1", "fracture_level"), ("patients", "C3", "last_followup_date")} <= named(result)
    assert result.records["procedure_id"].tolist() == ["C3-1", "C3-2"]


def test_a_missing_column_refuses_the_whole_export(raw):
    raw["procedures"] = raw["procedures"].drop(columns=["technique"])
    with pytest.raises(RawDataError) as exc:
        scorable_records(raw)
    assert any(v.table == "procedures" and v.column == "technique" for v in exc.value.violations)


def test_more_broken_rows_than_validation_lists_are_all_left_out(raw):
    """Validation names at most MAX_REPORTED_PER_CHECK rows per rule for a person fixing a
    file; leaving records out needs every one of them."""
    import pandas as pd

    from features.validate import MAX_REPORTED_PER_CHECK

    n = MAX_REPORTED_PER_CHECK + 5
    base = raw["procedures"].iloc[[1]]  # B2-1, a one-level session
    extra_patients, extra_procedures, extra_imaging = [], [], []
    for i in range(n):
        pid, prid = f"X{i}", f"X{i}-1"
        extra_patients.append(raw["patients"].iloc[[1]].assign(patient_id=pid, weight_kg="900"))
        extra_procedures.append(base.assign(patient_id=pid, procedure_id=prid))
        extra_imaging.append(raw["imaging"][raw["imaging"]["procedure_id"] == "B2-1"].assign(procedure_id=prid))
    raw["patients"] = pd.concat([raw["patients"], *extra_patients], ignore_index=True)
    raw["procedures"] = pd.concat([raw["procedures"], *extra_procedures], ignore_index=True)
    raw["imaging"] = pd.concat([raw["imaging"], *extra_imaging], ignore_index=True)
    result = scorable_records(raw)
    assert len(result.excluded) == n
    assert result.records["procedure_id"].tolist() == ["A1-1", "B2-1", "C3-1", "C3-2"]
