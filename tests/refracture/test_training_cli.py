"""End to end: `refracture train / models / promote` through the real CLI against a
temporary SQLite MLflow store, on a small simulated cohort; and the refusals."""

from __future__ import annotations

import json
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from features.records import tables_to_records
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from refracture.cli import app
from features.io import write_frame_atomic, write_raw
from modelstore.artifact import load_model

runner = CliRunner()

OUTCOME = "adjacent_fracture"
FAST = ["--search-trials", "2", "--bootstrap", "100", "--cv-folds", "3"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    tables, truth = simulate(load_profile("yassavoly2025-pkp"), n_procedures=1200, seed=21)
    write_raw(tables, folder, "csv")
    write_frame_atomic(truth, folder / "truth.parquet")
    (folder / "simulation.json").write_text(json.dumps({"profile": "yassavoly2025-pkp", "seed": 21}))
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(autouse=True)
def _local_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("REFRACTURE_MLFLOW_DIR", raising=False)


def _train(cohort, store, *extra):
    return runner.invoke(app, ["train", "--raw", str(cohort), "--outcome", OUTCOME, "--feature-set", "postop",
                               "--store", str(store), *FAST, *extra])


def _client(store):
    from modelstore.tracking import configure_tracking

    configure_tracking(store)
    return MlflowClient()


@pytest.mark.slow
def test_train_logs_runs_and_registers_a_champion(cohort, store):
    result = _train(cohort, store, "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "champion" in result.output and "oracle" in result.output
    client = _client(store)
    exp = client.get_experiment_by_name(f"refracture-{OUTCOME}")
    assert exp.artifact_location.startswith((store.parent / f"{store.name}-artifacts").resolve().as_uri())
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("run_kind") == "parent"]
    children = [r for r in runs if "candidate" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["simulator_profile"] == "yassavoly2025-pkp" and tags["feature_set"] == "postop"
    assert len(tags["data_fingerprint"]) == 64 and tags["schema_version"]
    assert {"oracle_auroc", "selected_test_auroc", "selected_test_calibration_slope_ci_low", "selected_test_auroc_3m",
            "selected_test_mean_abs_diff_truth_24m", "selected_test_net_benefit_10_ci_low"} <= set(parent.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"model_card.md", "table1.md", "subgroups.csv", "candidates.csv", "horizon_metrics.csv",
            "calibration_by_decile.csv", "decision_curve.csv"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/roc_all.png", "plots/calibration_all.png", "plots/decision_curve_all.png",
            "plots/risk_over_time.png"} <= plots
    child = children[0]
    assert {"shap/beeswarm.png", "shap/mean_abs_shap.png"} <= {a.path for a in client.list_artifacts(child.info.run_id, "shap")}
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    card = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/model_card.md")
    for item in ("Outcome and horizon", "Recalibration", "Class imbalance", "Subgroups", "Heterogeneity across centres",
                 "Missing or poor-quality inputs", "How users interact", "Net benefit at 5 %", "oracle"):
        assert item in card, item

    mv = client.get_model_version_by_alias(f"refracture-{OUTCOME}", "champion")
    assert str(mv.version) == "1" and mv.tags["alias.champion.set_by"] and mv.tags["model_type"] in (
        "logistic", "elastic_net", "random_forest", "xgboost")
    model = load_model(f"models:/refracture-{OUTCOME}@champion")
    assert model.outcome == OUTCOME and model.horizon_months == 24.0 and model.feature_set == "postop"
    assert {"auroc", "auroc_ci_low", "auroc_ci_high", "brier", "calibration_slope", "log_loss"} <= set(model.metrics)
    records = tables_to_records(validate_raw(__import__("features.io", fromlist=["read_raw"]).read_raw(cohort))).head(5)
    p = model.predict_proba(records)
    assert p.shape == (5,) and np.all((p > 0) & (p < 1))
    # The store folder holds no Python file (it would shadow mlflow); the artifacts beside it
    # hold the models-from-code files, one per logged model, and no pickle.
    artifacts = store.parent / f"{store.name}-artifacts"
    assert not list(store.rglob("*.py"))
    assert {p.name for p in artifacts.rglob("*.py")} == {"pyfunc_entry.py"}
    assert not list(artifacts.rglob("*.pkl")) and not list(artifacts.rglob("python_model.*"))
    curve = model.predict_curve(records)
    assert list(curve.columns) == ["p_3m", "p_6m", "p_12m", "p_24m"] and (curve.diff(axis=1).iloc[:, 1:] >= 0).all().all()
    assert mv.tags["estimand"] == "crude cumulative incidence, death competing" and mv.tags["horizons_months"] == "3,6,12,24"


@pytest.mark.slow
def test_second_run_is_compared_with_the_champion_and_promote_records_the_move(cohort, store):
    result = _train(cohort, store, "--seed", "2", "--candidates", "logistic,xgboost")
    assert result.exit_code == 0, result.output
    client = _client(store)
    name = f"refracture-{OUTCOME}"
    v2 = client.get_model_version(name, "2")
    aliases = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    assert aliases.get("champion") in ("1", "2")
    if aliases["champion"] == "1":
        assert aliases.get("challenger") == "2"
    parent = [r for r in client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                            filter_string="tags.run_kind = 'parent'")][0]
    assert "vs" in parent.data.tags["alias_decision"]  # the current champion was re-scored

    other = "1" if aliases["champion"] == "2" else "2"
    args = ["promote", "--outcome", OUTCOME, "--version", other, "--reason", "clinical review", "--store", str(store)]
    result = runner.invoke(app, args, input="n\n")  # asked, and answered no: nothing moves
    assert result.exit_code == 1 and "not moved" in result.output, result.output
    assert str(client.get_registered_model(name).aliases["champion"]) != other
    result = runner.invoke(app, [*args, "--yes"])
    assert result.exit_code == 0, result.output
    assert "no realized comparison" in result.output  # no prediction store here
    assert json.loads(client.get_model_version(name, other).tags["promotion_evidence"])["by_horizon"] == []
    assert str(client.get_registered_model(name).aliases["champion"]) == other
    tags = client.get_model_version(name, other).tags
    assert tags["alias.champion.reason"] == "refracture promote: clinical review" and tags["alias.champion.set_at"]
    assert "champion" in client.get_registered_model(name).tags["last_alias_change"]
    assert v2.tags["feature_set"] == "postop"

    result = runner.invoke(app, ["models", "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert name in result.output and "champion" in result.output

    result = runner.invoke(app, ["promote", "--outcome", OUTCOME, "--version", "99", "--store", str(store)])
    assert result.exit_code == 1 and "no version 99" in result.output


@pytest.mark.slow
def test_a_failed_run_is_marked_failed_and_leaves_the_registry_alone(cohort, store, monkeypatch):
    import training.pipeline as pipeline

    client = _client(store)
    name = f"refracture-{OUTCOME}"
    before = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    aliases = client.get_registered_model(name).aliases

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure during selection")

    monkeypatch.setattr(pipeline, "select", boom)
    result = _train(cohort, store, "--candidates", "logistic")
    assert result.exit_code != 0
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'")) == before
    assert client.get_registered_model(name).aliases == aliases
    exp = client.get_experiment_by_name(name)
    latest = client.search_runs([exp.experiment_id], filter_string="tags.run_kind = 'parent'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert latest.info.status == "FAILED"


def test_too_few_events_is_refused_with_counts(raw_dir, tmp_path):
    result = runner.invoke(app, ["train", "--raw", str(raw_dir), "--outcome", "cemented_refracture",
                                 "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "too few events" in out and "1 events" in out and "at least 20" in out


def test_postop_feature_set_without_postop_imaging_is_refused(raw_dir, tmp_path):
    imaging = pd.read_csv(raw_dir / "imaging.csv", dtype=str)
    imaging[imaging["timepoint"] != "postop"].to_csv(raw_dir / "imaging.csv", index=False)
    result = runner.invoke(app, ["train", "--raw", str(raw_dir), "--feature-set", "postop", "--store", str(tmp_path / "s")])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "feature set 'postop' does not match this export" in out and "--feature-set preop" in out


def test_unreachable_tracking_server_fails_fast(raw_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    started = time.perf_counter()
    result = runner.invoke(app, ["train", "--raw", str(raw_dir), "--outcome", "adjacent_fracture"])
    assert result.exit_code == 1
    assert "unreachable" in " ".join(result.output.split())
    assert time.perf_counter() - started < 30
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 1 and "unreachable" in " ".join(result.output.split())


def test_bad_options_are_refused(raw_dir, tmp_path):
    result = runner.invoke(app, ["train", "--raw", str(raw_dir), "--outcome", "hip_fracture", "--store", str(tmp_path)])
    assert result.exit_code != 0
    result = runner.invoke(app, ["train", "--raw", str(raw_dir), "--test-size", "0.9", "--store", str(tmp_path)])
    assert result.exit_code != 0 and "test-size" in result.output


def test_unknown_shap_method_is_refused(raw_dir, tmp_path):
    result = runner.invoke(app, ["train", "--raw", str(raw_dir), "--shap-method", "saabas", "--store", str(tmp_path)])
    assert result.exit_code != 0 and "shap-method" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("method", ["interventional", "path_dependent"])
def test_shap_method_is_stored_in_the_model_and_named_in_its_card(cohort, tmp_path, method):
    result = runner.invoke(app, ["train", "--raw", str(cohort), "--outcome", OUTCOME, "--store", str(tmp_path / "s"),
                                 "--candidates", "xgboost", "--shap-method", method, "--search-trials", "0",
                                 "--bootstrap", "50", "--cv-folds", "2"])
    assert result.exit_code == 0, result.output
    client = _client(tmp_path / "s")
    parent = [r for r in client.search_runs([client.get_experiment_by_name(f"refracture-{OUTCOME}").experiment_id])
              if r.data.tags.get("run_kind") == "parent"][0]
    card = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/model_card.md")
    assert f"Explanation method of this version: `{method}`" in card
    assert ("conditional" in card) and ("marginal" in card)
    model = load_model(f"models:/refracture-{OUTCOME}@champion")
    assert model.explanation_method == method
    records = tables_to_records(validate_raw(__import__("features.io", fromlist=["read_raw"]).read_raw(cohort))).head(30)
    expl = model.explain(records)
    p = model.predict_proba(records)
    np.testing.assert_allclose(expl.logit(), np.log(p) - np.log1p(-p), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_train_on_a_few_broken_rows_stops_or_excludes_them_and_records_count_and_fingerprint(cohort, tmp_path):
    """Issue 22: the cohort carries realistic measurement error (fractured heights at or above
    the neighbours'); two broken rows stop training (no run, nothing registered) unless
    --exclude-invalid leaves out exactly their procedures, with the report, its count and
    SHA-256 in the MLflow run and on the registered version."""
    import hashlib
    import shutil

    imaging = pd.read_csv(cohort / "imaging.csv", dtype=str, keep_default_na=False)
    pre = imaging[imaging["timepoint"] == "preop"]
    heights = pre[["vertebral_height_mm", "upper_adjacent_height_mm", "lower_adjacent_height_mm"]].replace("", np.nan).astype(float)
    assert (heights["vertebral_height_mm"] >= heights.iloc[:, 1:].mean(axis=1)).any()  # borderline measurements

    broken = tmp_path / "broken"
    shutil.copytree(cohort, broken)
    procedures = pd.read_csv(broken / "procedures.csv", dtype=str, keep_default_na=False)
    bad = procedures["procedure_id"].iloc[[3, 7]].tolist()
    procedures.loc[procedures["procedure_id"] == bad[0], "technique"] = "glue"
    procedures.to_csv(broken / "procedures.csv", index=False)
    row = imaging.index[(imaging["procedure_id"] == bad[1]) & (imaging["timepoint"] == "preop")][0]
    imaging.loc[row, "vertebral_height_mm"] = str(round(float(imaging.loc[row, "vertebral_height_mm"]) / 10, 2))  # cm
    imaging.to_csv(broken / "imaging.csv", index=False)

    store = tmp_path / "s"
    args = ["train", "--raw", str(broken), "--outcome", OUTCOME, "--store", str(store), "--candidates", "logistic",
            "--search-trials", "0", "--bootstrap", "50", "--cv-folds", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--exclude-invalid" in " ".join(result.output.split())
    assert _client(store).get_experiment_by_name(f"refracture-{OUTCOME}") is None  # nothing logged

    result = runner.invoke(app, [*args, "--exclude-invalid"])
    assert result.exit_code == 0, result.output
    client = _client(store)
    parent = [r for r in client.search_runs([client.get_experiment_by_name(f"refracture-{OUTCOME}").experiment_id])
              if r.data.tags.get("run_kind") == "parent"][0]
    tags = parent.data.tags
    report = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/validation/exclusions.csv")
    assert tags["excluded_procedures"] == "2" and tags["export_procedures"] == str(len(procedures))
    assert tags["exclusion_report_sha256"] == hashlib.sha256(report.encode("utf-8")).hexdigest()
    assert parent.data.params["exclude_invalid"] == "True"
    rows = pd.read_csv(__import__("io").StringIO(report), dtype=str, keep_default_na=False)
    assert sorted(rows.loc[rows["severity"] == "error", "excluded_procedures"]) == sorted(bad)
    assert parent.data.metrics["n_procedures"] == len(procedures) - 2
    mv = client.get_model_version_by_alias(f"refracture-{OUTCOME}", "champion")
    assert mv.tags["exclusion_report_sha256"] == tags["exclusion_report_sha256"]
