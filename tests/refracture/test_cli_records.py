"""`refracture records` (flat records from a raw export) and the output rules every writing
command follows: an existing output is refused unless --overwrite, and files take the
user's umask (issue 24)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.records import RECORD_FIELDS
from refracture.cli import app

runner = CliRunner()

FLAT_NAMES = [f.flat_name for f in RECORD_FIELDS]
DATE_NAMES = [f.flat_name for f in RECORD_FIELDS if f.spec.kind == "date"]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_records_writes_one_typed_row_per_procedure_as_a_file_or_a_folder(raw_dir, tmp_path, umask_022):
    for out in (tmp_path / "records.parquet", tmp_path / "records"):
        result = runner.invoke(app, ["records", "--raw", str(raw_dir), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "4 of 4 procedure records" in _flat(result.output)
        table = pq.read_table(out)
        assert table.column_names == FLAT_NAMES
        assert sorted(table.column("procedure_id").to_pylist()) == ["A1-1", "B2-1", "C3-1", "C3-2"]
        # Calendar dates (date32), not pandas' nanosecond timestamps Spark refuses.
        assert {table.schema.field(name).type for name in DATE_NAMES} == {pa.date32()}
    parts = sorted((tmp_path / "records").iterdir())
    assert [p.name for p in parts] == ["part-00000.parquet"]
    # Written with the umask, as any file the user makes (0644 / 0755 under umask 022).
    assert _mode(tmp_path / "records.parquet") == 0o644
    assert _mode(tmp_path / "records") == 0o755 and _mode(parts[0]) == 0o644


def test_records_as_csv_reads_back_as_the_same_records(raw_dir, tmp_path):
    parquet, csv = tmp_path / "r.parquet", tmp_path / "r.csv"
    for out in (parquet, csv):
        assert runner.invoke(app, ["records", "--raw", str(raw_dir), "--out", str(out)]).exit_code == 0
    text = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert list(text.columns) == FLAT_NAMES
    typed = pd.read_parquet(parquet)
    date = DATE_NAMES[0]
    assert text[date].tolist() == [d.isoformat() if d is not None else "" for d in typed[date].tolist()]
    assert all("." not in v for v in text["prior_vertebral_fractures_n"] if v), "whole numbers without a decimal point"


def test_records_refuses_an_existing_output_unless_overwrite(raw_dir, tmp_path):
    out = tmp_path / "records.parquet"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["records", "--raw", str(raw_dir), "--out", str(out)])
    assert result.exit_code == 2 and "--overwrite" in _flat(result.output)
    assert out.read_bytes() == b"keep me"
    result = runner.invoke(app, ["records", "--raw", str(raw_dir), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(out)) == 4


def test_records_reports_broken_rows_as_predict_raw_does(raw_dir, tmp_path):
    procedures = pd.read_csv(raw_dir / "procedures.csv", dtype=str, keep_default_na=False)
    procedures.loc[procedures["procedure_id"] == "B2-1", "technique"] = "glue"
    procedures.to_csv(raw_dir / "procedures.csv", index=False)
    out = tmp_path / "records.parquet"
    stopped = runner.invoke(app, ["records", "--raw", str(raw_dir), "--out", str(out)])
    predicted = runner.invoke(app, ["predict", "--raw", str(raw_dir), "--output", str(tmp_path / "scored.parquet")])
    assert stopped.exit_code == predicted.exit_code == 1
    assert "--exclude-invalid" in _flat(stopped.output) and not out.exists()
    report = [line for line in stopped.output.splitlines() if "technique" in line]
    assert report and report == [line for line in predicted.output.splitlines() if "technique" in line]
    kept = runner.invoke(app, ["records", "--raw", str(raw_dir), "--out", str(out), "--exclude-invalid"])
    assert kept.exit_code == 0, kept.output
    assert sorted(pd.read_parquet(out)["procedure_id"]) == ["A1-1", "C3-1", "C3-2"]
    assert "3 of 4 procedure records" in _flat(kept.output)
    assert (tmp_path / "records.exclusions.csv").exists()


def test_records_refuses_an_unknown_suffix(raw_dir, tmp_path):
    result = runner.invoke(app, ["records", "--raw", str(raw_dir), "--out", str(tmp_path / "records.xlsx")])
    assert result.exit_code == 2 and not (tmp_path / "records.xlsx").exists()


def test_predict_refuses_an_existing_output_before_scoring(raw_dir, tmp_path, monkeypatch):
    """Refused before the models are looked for: the check costs nothing and loses nothing."""
    monkeypatch.setenv("REFRACTURE_MLFLOW_DIR", str(tmp_path / "no-store"))
    out = tmp_path / "scored.parquet"
    out.write_bytes(b"last month's scores")
    result = runner.invoke(app, ["predict", "--raw", str(raw_dir), "--output", str(out)])
    assert result.exit_code == 2 and "exists" in _flat(result.output) and "--overwrite" in _flat(result.output)
    assert out.read_bytes() == b"last month's scores"
    assert not (tmp_path / "no-store").exists()


def test_write_frame_atomic_follows_the_umask(tmp_path):
    from features.io import write_frame_atomic

    old = os.umask(0o027)
    try:
        write_frame_atomic(pd.DataFrame({"a": [1]}), tmp_path / "x.parquet")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "x.parquet") == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"], "no temporary file left beside it"
