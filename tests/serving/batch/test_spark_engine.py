"""``refracture predict --engine spark`` against ``--engine pandas``, with real champions
(the serving tests' store) and a small local Spark (2 cores, no UI): the same numbers to
1e-9 on 10k records, the same explanations, bad records reported identically (flat files
and raw exports), empty input -> empty output, Parquet folders in."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from serving_support import OUTCOMES, ensure_trained_store

pytestmark = pytest.mark.slow
pytest.importorskip("pyspark")


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    return ensure_trained_store(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def registry_env(store):
    # The log off: only the pandas engine logs a batch run (docs/prediction-log.md), so with it
    # on the two engines' reports differ by that line, whatever the worker's environment.
    env = {"REFRACTURE_MLFLOW_DIR": str(store / "mlflow"), "REFRACTURE_PREDICTION_LOG": "0"}
    saved = {k: os.environ.get(k) for k in [*env, "MLFLOW_TRACKING_URI", "REFRACTURE_MODEL_VERSIONS"]}
    for k in ("MLFLOW_TRACKING_URI", "REFRACTURE_MODEL_VERSIONS"):
        os.environ.pop(k, None)
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def models(registry_env):
    from serving.scoring.loading import load_from_registry

    return load_from_registry()


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    from serving.batch.spark_engine import spark_session

    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = spark_session("local[2]", app_name="refracture-tests", conf={
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "2",
        "spark.sql.warehouse.dir": str(warehouse),
        "spark.driver.memory": "1g",
    })
    yield session
    session.stop()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A fresh simulated raw export of 10,000 treated levels (not the training cohort)."""
    from features.simulator import load_profile, simulate
    from features.io import write_raw

    tables, _truth = simulate(load_profile("yassavoly2025-pkp"), 10_000, 11)
    folder = tmp_path_factory.mktemp("cohort") / "raw"
    write_raw(tables, folder, fmt="parquet")
    return folder


@pytest.fixture(scope="module")
def flat(cohort):
    """Its flat records, as a hospital would write them (dates as text)."""
    from features.records import tables_to_records
    from features.validate import validate_raw
    from features.io import read_raw

    records = tables_to_records(validate_raw(read_raw(cohort))).reset_index(drop=True)
    for col in ("surgery_date", "pain_onset_date"):
        records[col] = records[col].dt.strftime("%Y-%m-%d")
    return records


def run_pandas(models, path, out, explain=False, records=None):
    from serving.batch.pandas_engine import score_file

    score_file(models, path, out, explain=explain, records=records)
    return pd.read_parquet(out)


def run_spark(spark, models, path, out, explain=False, records=None, chunk_size=50_000):
    from serving.batch.spark_engine import read_parquet_records, records_frame_on_spark, score_on_spark

    frame, n = read_parquet_records(spark, path) if records is None else records_frame_on_spark(spark, records)
    score_on_spark(spark, models, frame, n, out, explain=explain, chunk_size=chunk_size)
    assert out.is_dir() and list(out.glob("*.parquet")), "Spark writes a folder of Parquet parts"
    return pd.read_parquet(out)


def assert_same_output(a: pd.DataFrame, b: pd.DataFrame, n: int) -> None:
    """Same columns, same records, numbers equal to 1e-9, text equal (rows matched by id)."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b) == n
    a = a.sort_values("procedure_id").reset_index(drop=True)
    b = b.sort_values("procedure_id").reset_index(drop=True)
    assert a["procedure_id"].tolist() == b["procedure_id"].tolist()
    numeric = [c for c in a.columns if pd.api.types.is_float_dtype(a[c])]
    assert {f"{o}_probability" for o in OUTCOMES} <= set(numeric)
    np.testing.assert_allclose(b[numeric].to_numpy(float), a[numeric].to_numpy(float), rtol=0, atol=1e-9)
    for c in set(a.columns) - set(numeric):
        assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), c


def test_engines_give_the_same_probabilities_on_10k_records(spark, models, flat, tmp_path):
    flat.to_parquet(tmp_path / "in.parquet", index=False)
    # Small Arrow batches: several batches per partition, and batch edges unlike pandas' chunks.
    got = run_spark(spark, models, tmp_path / "in.parquet", tmp_path / "spark-out", chunk_size=3_000)
    want = run_pandas(models, tmp_path / "in.parquet", tmp_path / "pandas.parquet")
    assert_same_output(want, got, len(flat))
    assert want[[f"{o}_probability" for o in OUTCOMES]].std().min() > 0.005  # real, varied scores


def test_engines_give_the_same_explanations(spark, models, flat, tmp_path):
    flat.head(300).to_parquet(tmp_path / "in.parquet", index=False)
    got = run_spark(spark, models, tmp_path / "in.parquet", tmp_path / "spark-out", explain=True)
    want = run_pandas(models, tmp_path / "in.parquet", tmp_path / "pandas.parquet", explain=True)
    assert any(c.endswith("_base_value") for c in want.columns)
    assert sum("__" in c for c in want.columns) >= 10 * len(OUTCOMES)
    assert_same_output(want, got, 300)


def test_partitioned_folder_is_read_as_one_input(spark, models, flat, tmp_path):
    """A hive-partitioned folder (by a record field), as Spark writes one, read by both."""
    part = flat.head(2_000)
    spark.createDataFrame(part.astype(object).where(part.notna(), None).astype(str).replace("None", None)) \
        .write.partitionBy("sex").parquet(str(tmp_path / "in"))
    assert len(list((tmp_path / "in").glob("sex=*"))) == 2
    got = run_spark(spark, models, tmp_path / "in", tmp_path / "spark-out")
    want = run_pandas(models, tmp_path / "in", tmp_path / "pandas.parquet")
    assert_same_output(want, got, len(part))
    from serving.batch.pandas_engine import score_frame

    alone = score_frame(models, part).sort_values("procedure_id").reset_index(drop=True)
    np.testing.assert_allclose(want.sort_values("procedure_id")[f"{OUTCOMES[0]}_probability"],
                               alone[f"{OUTCOMES[0]}_probability"], rtol=0, atol=1e-12)


def test_bad_records_refuse_the_file_identically_and_nothing_is_written(spark, models, flat, tmp_path):
    from serving.batch.pandas_engine import BatchInputError

    bad = flat.head(1_000).copy()
    bad.loc[2, "weight_kg"] = 900
    bad.loc[517, "cement_volume_ml"] = -1
    bad.loc[998, "technique"] = "laser"
    folder = tmp_path / "in"
    folder.mkdir()
    bad.iloc[:500].to_parquet(folder / "part-0.parquet", index=False)  # record 517 is row 17 of the 2nd file
    bad.iloc[500:].to_parquet(folder / "part-1.parquet", index=False)
    reports = {}
    for engine, run, out in (("pandas", run_pandas, tmp_path / "p.parquet"), ("spark", run_spark, tmp_path / "s-out")):
        args = (models, folder, out) if engine == "pandas" else (spark, models, folder, out)
        with pytest.raises(BatchInputError) as exc:
            run(*args)
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if ".staging" in p.name]
        reports[engine] = exc.value
    assert reports["spark"].errors == reports["pandas"].errors
    assert reports["spark"].lines() == reports["pandas"].lines()
    assert [(e["record"], e["field"]) for e in reports["spark"].errors] == [
        (2, "patient.weight_kg"), (517, "procedure.cement_volume_ml"), (998, "procedure.technique")]


def test_empty_input_gives_an_empty_output_with_the_columns(spark, models, flat, tmp_path):
    from serving.batch.pandas_engine import output_template

    flat.head(0).to_parquet(tmp_path / "empty.parquet", index=False)
    for explain in (False, True):
        template = output_template(models, explain)
        got = run_spark(spark, models, tmp_path / "empty.parquet", tmp_path / f"spark-{explain}", explain=explain)
        want = run_pandas(models, tmp_path / "empty.parquet", tmp_path / f"pandas-{explain}.parquet", explain=explain)
        for out in (got, want):
            assert len(out) == 0
            assert list(out.columns) == list(template.columns)
        assert {f"{o}_probability" for o in OUTCOMES} <= set(got.columns)


def test_raw_export_scores_the_sound_records_and_names_the_others(spark, models, cohort, tmp_path):
    """A raw export with broken rows: the broken records are reported by table, row and
    column and left out, the rest scored, with the same numbers by both engines as when
    the export is clean."""
    from features.raw_records import scorable_records
    from features.io import read_raw

    clean = scorable_records(read_raw(cohort))
    # A simulated export carries measurement error: warnings, which exclude nothing; no error.
    assert clean.errors == [] and clean.excluded == [] and len(clean.records) == clean.n_procedures
    tables = read_raw(cohort)
    procedures, patients, imaging = tables["procedures"], tables["patients"], tables["imaging"]
    proc_bad = procedures.at[5, "procedure_id"]
    procedures.loc[5, "cement_volume_ml"] = 40.0                       # out of range
    patient_bad = patients.at[7, "patient_id"]
    patients.loc[7, "weight_kg"] = 900.0                              # excludes every level of this patient
    pre = imaging.index[imaging["timepoint"] == "preop"][3]
    imaging_bad = imaging.at[pre, "procedure_id"]
    imaging.loc[pre, "hu_index"] = 9_999.0                            # out of range
    follow = imaging.index[imaging["timepoint"] == "followup"][0]
    imaging.loc[follow, "kyphotic_angle_deg"] = 400.0                 # follow-up: not a record input
    scorable = scorable_records(tables)

    named = {(v.table, v.row, v.column) for v in scorable.violations}
    assert ("procedures", proc_bad, "cement_volume_ml") in named
    assert ("patients", patient_bad, "weight_kg") in named
    assert ("imaging", f"{imaging_bad}/preop", "hu_index") in named
    assert any(v.table == "imaging" and v.row.endswith("/followup") and v.column == "kyphotic_angle_deg"
               for v in scorable.violations)
    patient_levels = set(procedures.loc[procedures["patient_id"] == patient_bad, "procedure_id"])
    assert set(scorable.excluded) == {proc_bad, imaging_bad} | patient_levels
    assert len(scorable.records) == scorable.n_procedures - len(scorable.excluded)

    want = run_pandas(models, None, tmp_path / "pandas.parquet", records=scorable.records)
    got = run_spark(spark, models, None, tmp_path / "spark-out", records=scorable.records)
    assert_same_output(want, got, len(scorable.records))
    everyone = run_pandas(models, None, tmp_path / "all.parquet", records=clean.records).set_index("procedure_id")
    kept = want.set_index("procedure_id")
    p = f"{OUTCOMES[0]}_probability"
    np.testing.assert_allclose(kept[p], everyone.loc[kept.index, p], rtol=0, atol=1e-12)


def test_cli_raw_export_on_both_engines(spark, models, registry_env, cohort, tmp_path):
    """The real command (typer's runner, in-process) with --raw: an error stops both engines
    unless --exclude-invalid, then the same report printed by both, the sound records
    written and the exclusion report beside the output."""
    from typer.testing import CliRunner

    from refracture.cli import app
    from features.io import read_raw, write_raw

    tables = read_raw(cohort)
    tables["patients"].loc[0, "sex"] = "X"
    raw = tmp_path / "raw"
    write_raw(tables, raw, fmt="csv")
    runner = CliRunner()
    outputs, reports = {}, {}
    for engine, out in (("pandas", tmp_path / "p.parquet"), ("spark", tmp_path / "s-out")):
        args = ["predict", "--raw", str(raw), "--output", str(out), "--engine", engine, "--master", "local[2]"]
        stopped = runner.invoke(app, args)  # by default an error stops the scoring, nothing written
        assert stopped.exit_code == 1 and "--exclude-invalid" in " ".join(stopped.output.split()) and not out.exists()
        result = runner.invoke(app, [*args, "--exclude-invalid"])
        assert result.exit_code == 0, result.output
        report = pd.read_csv(tmp_path / f"{out.name.removesuffix('.parquet')}.exclusions.csv", dtype=str,
                             keep_default_na=False)
        assert report[["table", "column", "severity"]].values.tolist()[0] == ["patients", "sex", "error"]
        lines = result.output.splitlines()
        reports[engine] = lines[:next(i for i, line in enumerate(lines) if line.startswith("wrote"))]
        outputs[engine] = pd.read_parquet(out)
    assert reports["spark"] == reports["pandas"]
    text = "\n".join(reports["pandas"])
    assert f"patients [{tables['patients'].at[0, 'patient_id']}] sex" in text
    assert "not scored" in text
    n_kept = len(tables["procedures"]) - (tables["procedures"]["patient_id"] == tables["patients"].at[0, "patient_id"]).sum()
    assert_same_output(outputs["pandas"], outputs["spark"], n_kept)
    assert spark.sparkContext._jsc is not None, "the command leaves a session it did not create running"


def test_models_are_loaded_once_per_worker(spark, models, flat, tmp_path):
    """16 Arrow batches on two workers: each Python worker unpickles the models once, not
    once per batch (Spark reuses its Python workers; the probe job lands on them)."""
    flat.head(4_000).to_parquet(tmp_path / "in.parquet", index=False)
    run_spark(spark, models, tmp_path / "in.parquet", tmp_path / "out", chunk_size=250)

    def probe(_batches):
        import os as _os

        from serving.batch import spark_engine as batch_spark

        for _ in _batches:
            pass
        yield pd.DataFrame({"pid": [_os.getpid()], "loads": [batch_spark.WORKER_LOADS["count"]],
                            "jobs": [len(batch_spark._WORKER_MODELS)]})

    seen = spark.range(16, numPartitions=16).mapInPandas(probe, "pid long, loads long, jobs long").toPandas()
    per_worker = seen.groupby("pid")[["loads", "jobs"]].max()
    assert per_worker["loads"].max() >= 1, "the probe found no worker that scored"
    # Loading per batch would count 16 for this job alone; the module's earlier tests ran
    # fewer than 16 jobs on these workers, one load each at most.
    assert per_worker["loads"].max() < 16
    assert (per_worker.loc[per_worker["loads"] > 0, "jobs"] == 1).all()  # one job's models kept


def test_records_written_by_refracture_records_and_by_pandas_read_on_both_engines(spark, models, registry_env, cohort,
                                                                                  flat, tmp_path):
    """What `refracture records` writes (Parquet dates, a folder of parts) and what pandas
    writes for datetime64[ns] dates (Parquet TIMESTAMP(NANOS), which Spark has no type for)
    score the same on both engines."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from refracture.cli import app

    records = tmp_path / "records"
    result = CliRunner().invoke(app, ["records", "--raw", str(cohort), "--out", str(records)])
    assert result.exit_code == 0, result.output
    n = len(pd.read_parquet(records))
    assert_same_output(run_pandas(models, records, tmp_path / "p.parquet"), run_spark(spark, models, records, tmp_path / "s"), n)

    nanos = flat.head(2_000).copy()
    for col in ("surgery_date", "pain_onset_date"):
        nanos[col] = pd.to_datetime(nanos[col]).astype("datetime64[ns]")
    nanos.to_parquet(tmp_path / "nanos.parquet", index=False)
    assert pq.read_schema(tmp_path / "nanos.parquet").field("surgery_date").type == pa.timestamp("ns"), \
        "the file holds what made Spark fail: nanosecond timestamps"
    by_pandas = run_pandas(models, tmp_path / "nanos.parquet", tmp_path / "np.parquet")
    by_spark = run_spark(spark, models, tmp_path / "nanos.parquet", tmp_path / "ns")
    assert_same_output(by_pandas, by_spark, 2_000)
    text = flat.head(2_000).copy()
    text.to_parquet(tmp_path / "text.parquet", index=False)
    assert_same_output(by_pandas, run_pandas(models, tmp_path / "text.parquet", tmp_path / "tp.parquet"), 2_000)


def test_an_unreadable_file_is_one_line_on_spark(spark, models, registry_env, tmp_path):
    """No Java stack trace: one line naming the file and Spark's reason, exit 1, nothing written."""
    from typer.testing import CliRunner

    from refracture.cli import app

    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not a Parquet file")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", "--engine", "spark", "--master", "local[2]", "--input", str(bad),
                                      "--output", str(out)])
    assert result.exit_code == 1
    text = "".join(result.output.split())  # the console wraps long lines at the runner's width
    assert f"cannotread{bad}" in text and "Couldnotreadfooter" in text, result.output
    message = text.split("error(s):", 1)[1].replace(str(bad), "")  # what it says, less the file's own path
    assert len(message) < 400 and "atorg.apache" not in text and "Traceback" not in text, result.output
    assert not out.exists()


def test_driver_held_records_keep_missing_values_missing(spark, flat):
    """Missing cells of driver-held records (a raw export's, a FHIR export's) reach the
    executors as null, whatever pandas held them as: NaN in a float column, None or NaN in
    pandas 3's str column (the FHIR parser's frame gave "NaN" text, which the contract refused)."""
    from serving.batch.spark_engine import RECORD_COLUMN, records_frame_on_spark

    records = flat.head(6).copy()
    records["dxa_bmd_g_cm2"] = [0.43, np.nan, 0.58, np.nan, 0.61, 0.7]
    records["pain_onset_date"] = pd.Series(["2024-01-02", None, "2024-02-03", np.nan, "2024-03-04", None], dtype="str")
    frame, n = records_frame_on_spark(spark, records)
    rows = sorted(frame.select(RECORD_COLUMN, "dxa_bmd_g_cm2", "pain_onset_date").collect())  # Spark's own values
    assert n == 6
    assert [r["dxa_bmd_g_cm2"] for r in rows] == ["0.43", None, "0.58", None, "0.61", "0.7"]
    assert [r["pain_onset_date"] for r in rows] == ["2024-01-02", None, "2024-02-03", None, "2024-03-04", None]
