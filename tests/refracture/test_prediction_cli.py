"""The prediction-log commands through the real CLI: migrate, outcomes, performance --json,
prune, with the store and secret from the environment as a deployment sets them."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.io import write_raw
from predictionlog.store import PredictionStore
from refracture.cli import app
from prediction_log_support import SECRET, log_at_surgery, site_exports, truth_scores

runner = CliRunner()


@pytest.fixture
def env(tmp_path):
    return {"REFRACTURE_PREDICTION_DB": f"sqlite:///{tmp_path / 'predictions.db'}",
            "REFRACTURE_PREDICTION_SECRET": SECRET.decode(), "MLFLOW_TRACKING_URI": "",
            "REFRACTURE_PREDICTION_LOG": "1"}  # stated: another module of the same worker may have turned it off


def test_outcomes_and_performance_from_the_command_line(tmp_path, env):
    (first, truth), (later, _) = site_exports(600, 4, dt.date(2015, 3, 31), dt.date(2017, 6, 30))
    result = runner.invoke(app, ["predictions", "migrate"], env=env)
    assert result.exit_code == 0, result.output
    store = PredictionStore(env["REFRACTURE_PREDICTION_DB"])
    log_at_surgery(store, first["procedures"], truth_scores(first["procedures"], truth))
    write_raw(later, tmp_path / "later", "csv")

    result = runner.invoke(app, ["outcomes", "--raw", str(tmp_path / "later"), "--data-cut", "2017-06-30"], env=env)
    assert result.exit_code == 0, result.output
    assert f"linked {len(first['procedures'])} prediction(s)" in result.output
    assert "event_free" in result.output

    out = tmp_path / "report"
    result = runner.invoke(app, ["performance", "--out", str(out), "--json", "--bootstrap", "30",
                                 "--store", str(tmp_path / "mlflow"), "--site", "Test site"], env=env)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    rows = pd.json_normalize(payload["performance"])
    assert set(rows["horizon_months"]) == {3.0, 6.0, 12.0, 24.0}
    assert (rows["matured"] > 0).all() and (rows["events"] <= rows["matured"]).all()
    assert {"observed_expected.value", "observed_expected.ci_low", "calibration_slope.ci_high", "td_auroc.value"} <= set(rows)
    assert (out / "report.html").is_file() and (out / "metrics.csv").is_file()
    gauges = store.performance()
    assert {g["metric"] for g in gauges} == {"observed_expected", "calibration_slope", "td_auroc"}
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    run = mlflow.get_run(payload["mlflow_run_id"])
    assert run.data.tags["site"] == "Test site"
    assert any(k.startswith("adjacent_fracture_v1_observed_expected_") for k in run.data.metrics)

    # What `refracture promote` shows before moving the champion: v2 scored in shadow.
    from predictionlog.rows import ShadowScores
    from refracture.commands.training import _evidence_tag, _realized_evidence
    scores = store.scores_frame()
    ids = scores[scores["outcome"] == "remote_fracture"]["prediction_id"].tolist()
    procs = first["procedures"].set_index(first["procedures"]["procedure_id"])
    store.insert(ShadowScores(ids, truth_scores(procs.reset_index(drop=True), truth, "2", "challenger", 0.5)).rows(SECRET))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        evidence, summary = _realized_evidence("remote_fracture", "1", "2")
    assert len(evidence) == 4 and "matured outcomes by 24 months" in summary
    assert (evidence["challenger_observed_expected"] > 1.5 * evidence["champion_observed_expected"]).all()
    tag = json.loads(_evidence_tag(evidence, summary))
    assert len(tag["by_horizon"]) == 4 and tag["summary"] == summary

    result = runner.invoke(app, ["predictions", "prune", "--older-than-days", "731"], env=env)
    assert result.exit_code == 0, result.output
    assert f"pruned {len(first['procedures'])} prediction(s)" in result.output  # logged in 2014-15
    assert store.count("linked_outcomes") == 0


def test_outcomes_refuses_to_run_without_the_secret(tmp_path, env):
    env = {**env, "REFRACTURE_PREDICTION_SECRET": ""}
    result = runner.invoke(app, ["outcomes", "--raw", str(tmp_path)], env=env)
    assert result.exit_code == 1
    assert "REFRACTURE_PREDICTION_SECRET_FILE" in result.output


def test_an_unmigrated_store_is_named_with_the_fix(tmp_path, env):
    result = runner.invoke(app, ["predictions", "status"], env=env)
    assert result.exit_code == 1
    assert "refracture predictions migrate" in result.output
