"""Bad input: each problem is reported by table, row key and column, and nothing is written."""

import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.validate import RawDataError, validate_raw
from refracture.cli import app
from features.io import read_raw

runner = CliRunner()


def _violations(raw) -> list[str]:
    with pytest.raises(RawDataError) as exc:
        validate_raw(raw)
    return [str(v) for v in exc.value.violations]


def _assert_one(violations, table, row, column, pattern):
    hits = [v for v in violations if v.startswith(f"{table} [{row}] {column}:") and re.search(pattern, v)]
    assert hits, f"no {table}/{row}/{column} ~ {pattern!r} in:\n" + "\n".join(violations)


def test_valid_fixture_passes(raw):
    tables = validate_raw(raw)
    assert len(tables["procedures"]) == 4


def test_missing_column(raw):
    raw["imaging"] = raw["imaging"].drop(columns=["wedge_angle_deg"])
    _assert_one(_violations(raw), "imaging", "-", "wedge_angle_deg", "column missing")


def test_missing_table(raw):
    del raw["events"]
    _assert_one(_violations(raw), "events", "-", "-", "table missing")


HEIGHTS = ["vertebral_height_mm", "upper_adjacent_height_mm", "lower_adjacent_height_mm"]


def test_height_in_cm_is_named_as_a_unit_mixup(raw):
    """Every height of an examination in cm (a lone small height may be a vertebra plana)."""
    img = raw["imaging"]
    img.loc[(img["procedure_id"] == "A1-1") & (img["timepoint"] == "preop"), HEIGHTS] = ["1.8", "2.4", "2.6"]
    _assert_one(_violations(raw), "imaging", "A1-1/preop", "vertebral_height_mm", "look like cm")


def test_bmd_given_as_t_score(raw):
    raw["patients"].loc[raw["patients"]["patient_id"] == "B2", "dxa_bmd_g_cm2"] = "-2.1"
    _assert_one(_violations(raw), "patients", "B2", "dxa_bmd_g_cm2", "look like a T-score")


def test_impossible_level(raw):
    raw["procedures"].loc[raw["procedures"]["procedure_id"] == "B2-1", "level"] = "L7"
    _assert_one(_violations(raw), "procedures", "B2-1", "level", "must be one of: T1.*L5")


def test_followup_date_before_surgery(raw):
    raw["events"].loc[raw["events"]["event_id"] == "E1", "event_date"] = "2020-12-01"
    _assert_one(_violations(raw), "events", "E1", "event_date", "before the surgery")
    img = raw["imaging"]
    img.loc[(img["procedure_id"] == "A1-1") & (img["timepoint"] == "followup"), "exam_date"] = "2020-12-01"
    _assert_one(_violations(raw), "imaging", "A1-1/followup", "exam_date", "before the surgery")


def test_duplicate_procedure_id(raw):
    raw["procedures"].loc[raw["procedures"]["procedure_id"] == "B2-1", "procedure_id"] = "A1-1"
    _assert_one(_violations(raw), "procedures", "A1-1", "procedure_id", "duplicate key")


def test_unreadable_value_and_missing_required(raw):
    raw["patients"].loc[raw["patients"]["patient_id"] == "A1", "weight_kg"] = "sixty"
    raw["procedures"].loc[raw["procedures"]["procedure_id"] == "C3-1", "technique"] = None
    v = _violations(raw)
    _assert_one(v, "patients", "A1", "weight_kg", "cannot read 'sixty'")
    _assert_one(v, "procedures", "C3-1", "technique", "value missing")


@pytest.mark.parametrize("table, key_col, key, column, value, pattern", [
    ("procedures", "procedure_id", "B2-1", "surgery_date", "9999-12-31", r"cannot read '9999-12-31' as a date from 1900"),
    ("procedures", "procedure_id", "B2-1", "pain_onset_date", "1066-10-14", r"cannot read '1066-10-14' as a date"),
    ("procedures", "procedure_id", "B2-1", "n_levels_treated", "1e300", r"cannot read '1e300' as a whole number"),
    ("procedures", "procedure_id", "B2-1", "n_levels_treated", "inf", r"cannot read 'inf' as a whole number"),
    ("procedures", "procedure_id", "B2-1", "brace_prescribed", "300", r"cannot read '300' as 0 or 1"),
    ("patients", "patient_id", "B2", "weight_kg", "1e300", r"outside the allowed range"),
])
def test_absurd_numbers_and_dates_are_violations_not_crashes(raw, table, key_col, key, column, value, pattern):
    raw[table].loc[raw[table][key_col] == key, column] = value
    _assert_one(_violations(raw), table, key, column, pattern)


def test_far_future_dates_in_a_parquet_export_are_violations(raw):
    """Parquet carries real datetimes, which may hold years the nanosecond type cannot."""
    procedures = raw["procedures"]
    dates = pd.to_datetime(procedures["surgery_date"]).astype("datetime64[s]").to_numpy().copy()
    dates[(procedures["procedure_id"] == "C3-1").to_numpy()] = np.datetime64("3000-01-01", "s")
    raw["procedures"] = procedures.assign(surgery_date=pd.Series(dates, index=procedures.index))
    _assert_one(_violations(raw), "procedures", "C3-1", "surgery_date", "cannot read")


@pytest.mark.parametrize("value, hinted", [("1.62", True), ("520", False)])
def test_unit_hint_only_on_its_side_of_the_range(raw, value, hinted):
    raw["patients"].loc[raw["patients"]["patient_id"] == "A1", "height_cm"] = value
    hits = [v for v in _violations(raw) if v.startswith("patients [A1] height_cm:")]
    assert hits and all("outside the allowed range" in v for v in hits)
    assert any("look like metres" in v for v in hits) is hinted


def test_level_count_must_match_session_rows(raw):
    raw["procedures"].loc[raw["procedures"]["procedure_id"] == "C3-1", "n_levels_treated"] = "1"
    _assert_one(_violations(raw), "procedures", "C3-1", "n_levels_treated", "export has 2 rows")


def test_all_violations_in_one_pass(raw):
    raw["procedures"].loc[raw["procedures"]["procedure_id"] == "B2-1", "level"] = "L7"
    raw["patients"].loc[raw["patients"]["patient_id"] == "B2", "dxa_bmd_g_cm2"] = "-2.1"
    raw["imaging"].loc[0, HEIGHTS] = ["1.8", "2.4", "2.6"]
    assert len(_violations(raw)) >= 3


def test_empty_file(raw_dir):
    (raw_dir / "events.csv").write_text("")
    with pytest.raises(RawDataError, match="events.csv is an empty file"):
        read_raw(raw_dir)


def test_header_only_file(raw_dir):
    (raw_dir / "procedures.csv").write_text((raw_dir / "procedures.csv").read_text().splitlines()[0] + "\n")
    with pytest.raises(RawDataError, match="procedures.csv has a header but no rows"):
        read_raw(raw_dir)


def test_export_without_any_new_fracture_is_valid(raw_dir):
    """A cohort with no new fractures is real: events may have a header and no rows."""
    from features.labels import build_labels

    (raw_dir / "events.csv").write_text("event_id,patient_id,event_date,fracture_level\n")
    tables = validate_raw(read_raw(raw_dir))
    labels = build_labels(tables)
    assert labels["cemented_refracture"].tolist() == [0, 0, 0, 0]
    assert labels["remote_fracture_event"].sum() == 0


@pytest.mark.parametrize("typed", [False, True])
def test_parquet_export_is_accepted(raw_dir, raw, typed):
    """Parquet with text columns, or with native types (dates, numbers), reads the same as CSV."""
    expected = validate_raw(read_raw(raw_dir))
    source = validate_raw(raw) if typed else raw
    for name, df in source.items():
        (raw_dir / f"{name}.csv").unlink()
        df.to_parquet(raw_dir / f"{name}.parquet", index=False)
    got = validate_raw(read_raw(raw_dir))
    for name in expected:
        pd.testing.assert_frame_equal(got[name], expected[name], check_dtype=False)


@pytest.mark.parametrize("breakage", ["missing_table", "unit_mixup", "impossible_level", "empty_file", "duplicate_id", "date_before_surgery"])
def test_cli_reports_and_writes_nothing(raw_dir, tmp_path, breakage):
    import pandas as pd

    if breakage == "missing_table":
        (raw_dir / "imaging.csv").unlink()
        expect = ["imaging", "table missing"]
    elif breakage == "empty_file":
        (raw_dir / "patients.csv").write_text("")
        expect = ["patients", "empty file"]
    else:
        name, key, col, value, expect = {
            "unit_mixup": ("imaging", 0, HEIGHTS, ["1.8", "2.4", "2.6"], ["imaging", "A1-1/preop", "vertebral_height_mm", "cm"]),
            "impossible_level": ("procedures", 1, "level", "L7", ["procedures", "B2-1", "level"]),
            "duplicate_id": ("procedures", 1, "procedure_id", "A1-1", ["procedures", "A1-1", "duplicate"]),
            "date_before_surgery": ("events", 0, "event_date", "2019-01-01", ["events", "E1", "event_date"]),
        }[breakage]
        df = pd.read_csv(raw_dir / f"{name}.csv", dtype=str, keep_default_na=False)
        df.loc[key, col] = value
        df.to_csv(raw_dir / f"{name}.csv", index=False)
    out = tmp_path / "features.parquet"
    result = runner.invoke(app, ["features", "--raw", str(raw_dir), "--feature-set", "postop", "--out", str(out)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    for part in expect:
        assert part in text, f"{part!r} not in output:\n{result.output}"
    assert not out.exists()
    assert list(tmp_path.glob(".features.parquet*")) == []
    assert runner.invoke(app, ["validate", "--raw", str(raw_dir)]).exit_code == 1
