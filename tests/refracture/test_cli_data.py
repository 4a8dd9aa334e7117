"""The data commands through the real CLI (typer's runner)."""

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from refracture.cli import COMMANDS, _register, app

runner = CliRunner()
_register()


@pytest.mark.parametrize("command", sorted({c[2] for c in COMMANDS}))
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
