"""The data commands through the real CLI (typer's runner)."""

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from refracture.cli import COMMANDS, app

runner = CliRunner()


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_every_subcommand_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "--help" in result.output


def test_validate_good_export(raw_dir):
    result = runner.invoke(app, ["validate", "--raw", str(raw_dir)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


@pytest.mark.parametrize("feature_set", ["preop", "postop"])
def test_features_writes_one_row_per_procedure(raw_dir, tmp_path, feature_set):
    out = tmp_path / f"{feature_set}.parquet"
    result = runner.invoke(app, ["features", "--raw", str(raw_dir), "--feature-set", feature_set, "--out", str(out)])
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(out)
    assert df["procedure_id"].is_unique and len(df) == 4
    assert {"cemented_refracture", "adjacent_fracture_time_days", "remote_fracture_event"} <= set(df.columns)
    assert ("cement_volume_ml" in df.columns) == (feature_set == "postop")


def test_features_refuses_unknown_set(raw_dir, tmp_path):
    result = runner.invoke(app, ["features", "--raw", str(raw_dir), "--feature-set", "intraop", "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code != 0
    assert not (tmp_path / "x.parquet").exists()


def test_data_dictionary_is_generated_and_current():
    path = Path(__file__).parents[2] / "docs" / "data-dictionary.md"
    result = runner.invoke(app, ["dictionary", "--out", str(path), "--check"])
    assert result.exit_code == 0, "docs/data-dictionary.md is stale: run `refracture dictionary`\n" + result.output


def test_validate_and_features_follow_export_yaml(raw_dir, tmp_path):
    """export.yaml is read, its follow-up printed and used by the labels; a bad field or a
    date after its data cut is an error named by file/table, row and column, and nothing
    is written."""
    patients = pd.read_csv(raw_dir / "patients.csv", dtype=str)
    patients.loc[patients["patient_id"] == "B2", "death_date"] = "2023-06-20"  # a registry death after the last visit
    patients.to_csv(raw_dir / "patients.csv", index=False)
    (raw_dir / "export.yaml").write_text("data_cut: 2023-06-30\ndeaths_ascertained_until: data_cut\n"
                                         "fractures_ascertained_until: death_or_data_cut\n")
    result = runner.invoke(app, ["validate", "--raw", str(raw_dir)])
    assert result.exit_code == 0, result.output
    assert "follow-up: deaths ascertained until the data cut 2023-06-30; fractures ascertained until death or the" \
        in " ".join(result.output.split())
    out = tmp_path / "ts.parquet"
    assert runner.invoke(app, ["features", "--raw", str(raw_dir), "--out", str(out)]).exit_code == 0
    ts = pd.read_parquet(out).set_index("procedure_id")
    assert ts.loc["B2-1", "death_status"] == 1 and ts.loc["B2-1", "remote_fracture_status"] == 2

    (raw_dir / "export.yaml").write_text("data_cut: 2023-06-10\ndeaths_ascertained_until: data_cut\n"
                                         "fractures_ascertained_until: death_or_data_cut\n")
    result = runner.invoke(app, ["features", "--raw", str(raw_dir), "--out", str(tmp_path / "late.parquet")])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "death_date" in text and "after the data cut" in text and "2023-06-10" in text
    assert not (tmp_path / "late.parquet").exists()

    (raw_dir / "export.yaml").write_text("deaths_ascertained_until: registry\nfractures_ascertained_until: last_contact\n")
    result = runner.invoke(app, ["validate", "--raw", str(raw_dir)])
    assert result.exit_code == 1 and "deaths_ascertained_until" in result.output and "export.yaml" in result.output


# ------------------------------------------------ errors, warnings and the --exclude-invalid policy (issue 22)


def _edit_csv(raw_dir: Path, table: str, where: dict, column: str, value: str) -> None:
    df = pd.read_csv(raw_dir / f"{table}.csv", dtype=str, keep_default_na=False)
    mask = pd.Series(True, index=df.index)
    for k, v in where.items():
        mask &= df[k] == v
    assert mask.any()
    df.loc[mask, column] = value
    df.to_csv(raw_dir / f"{table}.csv", index=False)


def _flat(output: str) -> str:
    return " ".join(output.split())


def test_validate_passes_an_export_with_warnings_and_lists_them_apart(raw_dir, tmp_path):
    # The upper neighbour of A1-1 reads 24 mm before and 33 mm after surgery: questioned, used.
    _edit_csv(raw_dir, "imaging", {"procedure_id": "A1-1", "timepoint": "postop"}, "upper_adjacent_height_mm", "33")
    result = runner.invoke(app, ["validate", "--raw", str(raw_dir), "--report", str(tmp_path / "report.csv")])
    assert result.exit_code == 0, result.output
    out = _flat(result.output)
    assert "1 warning(s): implausible values, used as they are" in out and "error(s)" not in out
    assert "A1-1/postop" in out and "valid:" in out
    report = pd.read_csv(tmp_path / "report.csv", dtype=str, keep_default_na=False)
    assert report["message"].str.contains("24 mm before and 33 mm after").tolist() == [True]


def test_validate_fails_only_on_errors_and_names_a_unit_slip(raw_dir, tmp_path):
    _edit_csv(raw_dir, "imaging", {"procedure_id": "A1-1", "timepoint": "postop"}, "upper_adjacent_height_mm", "33")
    _edit_csv(raw_dir, "imaging", {"procedure_id": "B2-1", "timepoint": "preop"}, "vertebral_height_mm", "2.1")
    result = runner.invoke(app, ["validate", "--raw", str(raw_dir), "--report", str(tmp_path / "report.csv")])
    assert result.exit_code == 1
    out = _flat(result.output)
    assert "1 error(s): values that cannot be used" in out and "1 warning(s)" in out
    assert "1 error(s) in 1 of 4 procedures" in out and "--exclude-invalid" in out
    report = pd.read_csv(tmp_path / "report.csv", dtype=str, keep_default_na=False)
    assert report[["row", "severity", "excluded_procedures"]].values.tolist() == [
        ["B2-1/preop", "error", "B2-1"], ["A1-1/postop", "warning", ""]]
    assert report.loc[0, "message"].startswith("pre-operative height 2.1 looks like cm: 21 mm?")


def test_features_stops_on_errors_and_writes_nothing(raw_dir, tmp_path):
    _edit_csv(raw_dir, "patients", {"patient_id": "C3"}, "weight_kg", "900")
    out = tmp_path / "ts.parquet"
    result = runner.invoke(app, ["features", "--raw", str(raw_dir), "--out", str(out)])
    assert result.exit_code == 1 and "--exclude-invalid" in _flat(result.output)
    assert list(tmp_path.iterdir()) == [raw_dir]


def test_features_with_exclude_invalid_leaves_out_exactly_the_broken_procedures_and_records_the_report(raw_dir, tmp_path):
    import hashlib

    from features.io import parquet_metadata

    _edit_csv(raw_dir, "patients", {"patient_id": "C3"}, "weight_kg", "900")  # both levels of C3
    out = tmp_path / "ts.parquet"
    result = runner.invoke(app, ["features", "--raw", str(raw_dir), "--out", str(out), "--exclude-invalid"])
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(out)["procedure_id"].tolist() == ["A1-1", "B2-1"]
    report = tmp_path / "ts.exclusions.csv"
    rows = pd.read_csv(report, dtype=str, keep_default_na=False)
    assert rows[["table", "row", "column", "rule", "severity", "excluded_procedures"]].values.tolist() == [
        ["patients", "C3", "weight_kg", "range", "error", "C3-1;C3-2"]]
    meta = parquet_metadata(out)
    sha = hashlib.sha256(report.read_bytes()).hexdigest()
    assert meta["refracture.excluded_procedures"] == "2" and meta["refracture.exclusion_report_sha256"] == sha
    assert sha in _flat(result.output) and "excluded 2 of 4 procedures" in _flat(result.output)


def test_predict_raw_stops_on_broken_records_before_anything_is_loaded_or_written(raw_dir, tmp_path):
    _edit_csv(raw_dir, "procedures", {"procedure_id": "B2-1"}, "technique", "glue")
    out = tmp_path / "scored.parquet"
    result = runner.invoke(app, ["predict", "--raw", str(raw_dir), "--output", str(out)])
    assert result.exit_code == 1
    assert "1 of 4 procedure records hold errors" in _flat(result.output) and "--exclude-invalid" in _flat(result.output)
    assert list(tmp_path.iterdir()) == [raw_dir]
    result = runner.invoke(app, ["predict", "--input", str(raw_dir / "procedures.csv"), "--output", str(out),
                                 "--exclude-invalid"])
    assert result.exit_code != 0 and "--raw" in _flat(result.output)
