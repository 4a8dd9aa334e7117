"""The probability of death by 24 months, served as context (issue 11).

Fast: the death label and its estimand (the IPCW mean of the training labels is exactly
1 - Kaplan-Meier, which is the truth within its standard error on a simulated cohort),
the estimand check at loading, and the scorer with and without a death model.
Slow (a trained store with a ``refracture-death`` champion): the in-process service fills
``context.death`` (equal to the registered pyfunc's ``p_24m``) and ``GET /model`` lists
it; a store without a death champion still serves the outcomes and leaves the context
out; batch output has ``death_p_24m`` and ``death_model_version``.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from serving_support import (API_KEY, OUTCOMES, Server, ensure_trained_store, store_env, to_json_records,
                             valid_flat_records)

from features.labels import DAYS_PER_MONTH, DEATH_TARGET, TARGETS, horizon_days
from modelstore.calibration import HorizonCalibration
from modelstore.candidates import make_scorer, monotone_constraints
from modelstore.estimand import DEATH_ESTIMAND, ESTIMAND
from modelstore.model import RefractureModel
from serving.scoring.loading import ModelsUnavailable, _check_outcome
from training.competing_risks import aalen_johansen, censoring_survival
from training.config import TrainConfig

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
HORIZONS = (3.0, 6.0, 12.0, 24.0)


# ------------------------------------------------------------------ label and estimand (fast)


@pytest.fixture(scope="module")
def death_data(tmp_path_factory):
    """The training data of ``death`` (``training.data.outcome_data``) on a simulated
    cohort of 3,000 procedures at the frail site C (about 29 % dead by 24 months, 15 %
    lost), with the simulator's truth."""
    from features.io import write_raw
    from features.simulator import load_profile, simulate
    from training.data import outcome_data, prepare

    raw = tmp_path_factory.mktemp("death-raw")
    tables, truth = simulate(load_profile("site-c-older-frail-pkp"), 3000, seed=21)
    write_raw(tables, raw)
    truth.to_parquet(raw / "truth.parquet")
    cfg = TrainConfig(raw_dir=raw, outcomes=(DEATH_TARGET,))
    prep = prepare(cfg)
    return prep, outcome_data(prep, DEATH_TARGET, cfg)


def test_death_is_trained_by_default_on_preoperative_features(tmp_path):
    cfg = TrainConfig(raw_dir=tmp_path)
    assert cfg.outcomes == TARGETS and cfg.outcomes[-1] == DEATH_TARGET
    assert cfg.feature_set_for(DEATH_TARGET) == "preop" and cfg.feature_set_for("adjacent_fracture") == "postop"
    cons = dict(zip(["age_years", "sex_female", "bmi_kg_m2", "chronic_kidney_disease"],
                    monotone_constraints(DEATH_TARGET, ["age_years", "sex_female", "bmi_kg_m2", "chronic_kidney_disease"])))
    assert cons == {"age_years": 1, "sex_female": -1, "bmi_kg_m2": -1, "chronic_kidney_disease": 1}


def test_death_labels_are_censoring_aware_and_weighted_mean_is_one_minus_km(death_data):
    """Status 1 death / 0 censored alive; the binary label is unknown when censored alive
    before the horizon; the IPCW-weighted label mean equals 1 - Kaplan-Meier exactly."""
    prep, data = death_data
    assert data.feature_set == "preop" and set(np.unique(data.status)) <= {0, 1}
    assert not any(c.endswith("_postop_pct") or c.startswith(("leakage", "npec", "cement")) for c in data.X.columns)
    t, s = data.time_days, data.status
    for k, h in enumerate(HORIZONS):
        lab, w = data.labels[:, k], data.weights[:, k]
        hd = horizon_days(h)
        assert np.isnan(lab[(s == 0) & (t < hd)]).all() and (w[(s == 0) & (t < hd)] == 0).all()
        assert (lab[(s == 1) & (t <= hd)] == 1).all() and (lab[t > hd] == 0).all()
    # With G fitted on all rows (here: recompute), the weighted mean is the KM estimate.
    G = censoring_survival(t, s)
    from training.data import horizon_targets

    labels, weights = horizon_targets(t, s, HORIZONS, G)
    for k, h in enumerate(HORIZONS):
        ipcw = float(np.sum(np.nan_to_num(labels[:, k]) * weights[:, k]) / len(t))
        km = aalen_johansen(t, s, horizon_days(h))
        assert ipcw == pytest.approx(km, abs=1e-10), h
    # The label column of features.labels agrees with the training labels at 24 months.
    frame_label = prep.training_set.loc[data.ids, DEATH_TARGET].astype("float64").to_numpy()
    np.testing.assert_array_equal(np.isnan(frame_label), np.isnan(data.labels[:, -1]))
    np.testing.assert_array_equal(frame_label[~np.isnan(frame_label)], data.labels[~np.isnan(frame_label), -1])


def test_one_minus_km_matches_the_simulators_true_death_risk(death_data):
    """1 - KM of the labels vs the mean true probability of death (``p_death_<m>m``).

    Tolerance 4 standard errors: SE = sqrt(p (1 - p) D / (n G(t))), the binomial SE inflated
    for censoring (G: probability of still being followed at t) and for several levels
    per patient (D: mean procedures per patient, the upper bound when their deaths are
    one). 4 SE over four horizons makes a chance failure about 1 in 4,000 runs. (Counting
    patients lost alive as alive to 24 months is about 1 point low at site C, within the
    SE of a cohort this small: the censoring-heavy bias test is tests/training/test_risk_over_time.py's.)"""
    prep, data = death_data
    t, s = data.time_days, data.status
    G = censoring_survival(t, s)
    deff = len(t) / pd.Series(data.patient_ids).nunique()
    for h in HORIZONS:
        true = float(prep.truth[f"p_death_{h:g}m"].reindex(data.ids).mean())
        km = aalen_johansen(t, s, h * DAYS_PER_MONTH)
        g = float(G(np.array([h * DAYS_PER_MONTH]))[0])
        se = math.sqrt(true * (1 - true) * deff / (len(t) * g))
        assert abs(km - true) <= 4 * se, (h, km, true, se)


# ------------------------------------------------------------------ loading and scoring (fast)


def _death_model(estimand: str | None = None, horizons=HORIZONS) -> RefractureModel:
    rng = np.random.default_rng(1)
    X = pd.DataFrame({"age_years": rng.normal(78, 8, 300)})
    y = (rng.random(300) < 1 / (1 + np.exp(-(X["age_years"] - 85) / 5))).astype(int)
    scorer = make_scorer("logistic", {}, DEATH_TARGET, seed=0).fit(X, y)
    cal = HorizonCalibration(tuple(horizons), tuple(np.linspace(-4, -2, len(horizons))), 1.0)
    model = RefractureModel(scorer, cal, DEATH_TARGET, "preop", 24.0, ["age_years"])
    if estimand is not None:
        model.estimand = estimand
    return model


def test_death_model_has_its_own_estimand_and_loading_checks_it():
    model = _death_model()
    assert model.estimand == DEATH_ESTIMAND and model.describe()["estimand"] == DEATH_ESTIMAND
    _check_outcome(model, DEATH_TARGET, "models:/refracture-death/1")
    with pytest.raises(ModelsUnavailable, match="predicts 'crude cumulative incidence, death competing'.*serves "
                                                "'all-cause mortality, no competing risk'"):
        _check_outcome(_death_model(ESTIMAND), DEATH_TARGET, "models:/refracture-death/2")
    with pytest.raises(ModelsUnavailable, match=r"predicts at 12,24 months"):
        _check_outcome(_death_model(horizons=(12.0, 24.0)), DEATH_TARGET, "models:/refracture-death/3")


# ------------------------------------------------------------------ the service (slow: a trained store)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ensure_trained_store(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def store_without_death(store, tmp_path_factory):
    """A copy of the trained store whose ``refracture-death`` has no champion."""
    from mlflow.tracking import MlflowClient

    from modelstore.tracking import configure_tracking

    copy = tmp_path_factory.mktemp("no-death") / "store"
    shutil.copytree(store, copy)
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    configure_tracking(copy / "mlflow")
    MlflowClient().delete_registered_model_alias("refracture-death", "champion")
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved
    configure_tracking(store / "mlflow")  # leave this process pointing at the shared store
    return copy


def test_service_without_a_death_model_serves_the_outcomes_and_no_context(store_without_death, tmp_path):
    """The real ``refracture serve`` (a second in-process service would clash on metrics)."""
    import httpx

    flat = valid_flat_records(store_without_death, 3)
    env = store_env(store_without_death, REFRACTURE_API_KEY=API_KEY, REFRACTURE_AUDIT_SALT="test-salt")
    with Server(env, log=tmp_path / "server.log") as server:
        r = httpx.post(f"{server.url}/predict", content=json.dumps(to_json_records(flat)), headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        for item in r.json()["predictions"]:
            assert "context" not in item and set(item["outcomes"]) == set(OUTCOMES)
        assert httpx.get(f"{server.url}/model", headers=AUTH, timeout=10).json()["context"] == {}
        assert "serving without the death context" in server.log_text()


def test_batch_output_has_the_death_column_only_with_a_death_model(store, store_without_death):
    from serving.batch.pandas_engine import check_and_score, output_template
    from serving.scoring.loading import load_from_registry
    from serving.scoring.served_models import ServedModels

    flat = valid_flat_records(store, 15)
    keys = ("MLFLOW_TRACKING_URI", "REFRACTURE_MLFLOW_DIR")
    saved = {k: os.environ.pop(k, None) for k in keys}
    try:
        os.environ["REFRACTURE_MLFLOW_DIR"] = str(store / "mlflow")
        models = load_from_registry()
        os.environ["REFRACTURE_MLFLOW_DIR"] = str(store_without_death / "mlflow")
        without = load_from_registry()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    assert [m.outcome for m in models] == [*OUTCOMES, DEATH_TARGET] and [m.outcome for m in without] == list(OUTCOMES)
    scored, errors = check_and_score(models, flat)
    assert errors == []
    death = next(m for m in models if m.outcome == DEATH_TARGET)
    np.testing.assert_allclose(scored["death_p_24m"], death.model.predict_proba(flat, 24.0), atol=1e-12)
    assert (scored["death_model_version"] == death.version).all()
    # The same numbers as the API's context (one scorer for both).
    answers = ServedModels(models).score(flat, list(flat["procedure_id"].astype(str)))
    np.testing.assert_allclose(scored["death_p_24m"], [a["context"]["death"]["probability"] for a in answers], atol=0)
    assert list(output_template(models).columns)[-2:] == ["death_p_24m", "death_model_version"]
    plain, _ = check_and_score(without, flat)
    assert not any(c.startswith("death") for c in plain.columns)
    cols_with = [c for c in scored.columns if not c.startswith("death")]
    assert cols_with == list(plain.columns)
