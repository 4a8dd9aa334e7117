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
