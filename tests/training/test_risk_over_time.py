"""Risk over time (issue 11): curves that never fall, for every record and candidate; the
censoring-weighted estimator against the old complete-case rule on a cohort with heavy
censoring and death where the true cumulative incidence is known in closed form; serving
refuses a model with other horizons or another estimand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features.labels import horizon_days
from features.simulator import load_profile, simulate
from features.io import write_raw
from serving.scoring.loading import ModelsUnavailable, _check_outcome
from modelstore.calibration import HorizonCalibration
from modelstore.candidates import MODEL_TYPES, expit, make_scorer
from training.competing_risks import censoring_survival
from training.config import ConfigError, TrainConfig
from training.data import horizon_targets, outcome_data, prepare
from training.fitting import fit_candidate
from modelstore.model import RefractureModel
from training.progress import NullProgress
from training.search import oof_raw_logit
from training.split import cv_folds

HORIZONS = (3.0, 6.0, 12.0, 24.0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    tables, _ = simulate(load_profile("yassavoly2025-pkp"), n_procedures=1500, seed=4)
    write_raw(tables, folder)
    (folder / "simulation.json").write_text(json.dumps({"profile": "yassavoly2025-pkp", "seed": 4}))
    cfg = TrainConfig(raw_dir=folder, search_trials=0, n_bootstrap=50, cv_folds=2, n_jobs=1, register=False)
    return cfg, prepare(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_candidates_curve_rises_for_every_record(prepared, model_type):
    cfg, prep = prepared
    data = outcome_data(prep, "adjacent_fracture", cfg)
    res = fit_candidate(model_type, cfg, data, None, {}, NullProgress())
    cal = res.model.calibration
    assert cal.horizons_months == HORIZONS and cal.slope > 0 and np.all(np.diff(cal.intercepts) >= 0)
    curve = res.model.curve_from_features(data.X)  # every procedure, train and test
    assert list(curve.columns) == ["p_3m", "p_6m", "p_12m", "p_24m"]
    assert (np.diff(curve.to_numpy(), axis=1) >= 0).all()
    assert ((curve.to_numpy() > 0) & (curve.to_numpy() < 1)).all()
    assert {"auroc_3m", "auroc_24m", "brier_12m", "calibration_slope_6m", "log_loss"} <= set(res.test_metrics)
    assert res.test_metrics["auroc"] == res.test_metrics["auroc_24m"]


def _competing_cohort(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Features, follow-up days, status and the true 24-month cumulative incidence.

    Exponential times (days): fracture hazard exp(-9.2 + 0.8 x1 + 0.5 x2), death hazard
    exp(-7.9 + 0.6 x1) (older, frailer patients die first and fracture more), loss to
    follow-up hazard 2.5e-4 / day, administrative end at 30 months. With competing
    exponentials the crude incidence by t is h_e / (h_e + h_d) (1 - exp(-(h_e + h_d) t)).
    """
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    h_event = np.exp(-9.2 + 0.8 * x1 + 0.5 * x2)
    h_death = np.exp(-7.9 + 0.6 * x1)
    t_event, t_death = rng.exponential(1 / h_event), rng.exponential(1 / h_death)
    t_loss = np.minimum(rng.exponential(1 / 2.5e-4, n), horizon_days(30))
    time = np.minimum.reduce([t_event, t_death, t_loss])
    status = np.select([time == t_event, time == t_death], [1, 2], 0)
    total = h_event + h_death
    h24 = horizon_days(24)
    true = h_event / total * (1 - np.exp(-total * h24))
    return pd.DataFrame({"x1": x1, "x2": x2}), np.floor(time) + 1, status, true


@pytest.mark.slow
def test_censoring_weights_remove_the_complete_case_bias():
    """30 % or more censored or dead before 24 months: the old rule (drop everyone whose
    follow-up ended early without the event, death included) overstates the risk; the
    IPCW score model with horizon calibration stays within 10 % of the truth."""
    X, time, status, true = _competing_cohort(12_000, seed=7)
    h24 = horizon_days(24)
    ended_early = (time < h24) & (status != 1)
    assert ended_early.mean() >= 0.30, ended_early.mean()
    groups = np.arange(len(X)).astype(str)

    # Old rule: complete cases only, death counted as censoring.
    old_label = np.where((status == 1) & (time <= h24), 1.0, np.where(time >= h24, 0.0, np.nan))
    keep = ~np.isnan(old_label)
    old = make_scorer("logistic", {}, "remote_fracture", seed=0).fit(X[keep], old_label[keep])
    old_mean = expit(old.raw_logit(X)).mean()
    assert old_mean / true.mean() - 1 > 0.10, (old_mean, true.mean())

    # New estimator: crude labels with IPCW weights, out-of-fold scores, horizon calibration.
    G = censoring_survival(time, status)
    labels, weights = horizon_targets(time, status, HORIZONS, G)
    y, w = np.nan_to_num(labels[:, -1]), weights[:, -1]
    strata = np.where(np.isnan(labels[:, -1]), 2, labels[:, -1]).astype(int)
    folds = cv_folds(strata, groups, 3, seed=0)
    oof = oof_raw_logit("logistic", {"C": 1e4, "l1_ratio": 0.0}, X, y, w, folds, "remote_fracture", 0, 1)
    cal = HorizonCalibration.fit(oof, labels, weights, HORIZONS)
    scorer = make_scorer("logistic", {}, "remote_fracture", seed=0).fit(X[w > 0], y[w > 0], sample_weight=w[w > 0])
    model = RefractureModel(scorer, cal, "remote_fracture", "postop", 24.0, ["x1", "x2"])
    predicted = model.curve_from_features(X)
    assert abs(predicted["p_24m"].mean() / true.mean() - 1) < 0.10, (predicted["p_24m"].mean(), true.mean())
    assert np.corrcoef(predicted["p_24m"], true)[0, 1] > 0.95
    assert (np.diff(predicted.to_numpy(), axis=1) >= 0).all()


def _model(horizons=HORIZONS, headline=24.0) -> RefractureModel:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"age_years": rng.normal(78, 8, 200)})
    scorer = make_scorer("logistic", {}, "adjacent_fracture", seed=0).fit(X, (rng.random(200) < 0.2).astype(int))
    cal = HorizonCalibration(tuple(horizons), tuple(np.linspace(-3, -1, len(horizons))), 1.0)
    return RefractureModel(scorer, cal, "adjacent_fracture", "postop", headline, ["age_years"])


def test_serving_refuses_other_horizons_or_another_estimand():
    _check_outcome(_model(), "adjacent_fracture", "models:/refracture-adjacent_fracture/1")
    with pytest.raises(ModelsUnavailable, match=r"predicts at 3,6,12 months \(headline 12.0\).*serves 3,6,12,24"):
        _check_outcome(_model((3.0, 6.0, 12.0), 12.0), "adjacent_fracture", "models:/refracture-adjacent_fracture/2")
    net = _model()
    net.estimand = "net risk, death censored"
    with pytest.raises(ModelsUnavailable, match="predicts 'net risk, death censored'.*Retrain"):
        _check_outcome(net, "adjacent_fracture", "models:/refracture-adjacent_fracture/3")


def test_config_puts_the_headline_among_the_horizons(tmp_path):
    cfg = TrainConfig(raw_dir=tmp_path, horizon_months=18, horizons_months=(24, 3, 6))
    assert cfg.horizons_months == (3.0, 6.0, 18.0, 24.0) and cfg.horizon_months == 18.0
    with pytest.raises(ConfigError, match="--horizons"):
        TrainConfig(raw_dir=tmp_path, horizons_months=(0.1, 24))
