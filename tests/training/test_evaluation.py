"""Metrics, bootstrap CIs, calibration, split and selection: unit tests on known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from modelstore.calibration import HorizonCalibration, fit_logistic_1d
from modelstore.candidates import expit, logit, monotone_constraints
from training.evaluation import evaluate, paired_difference, replicates, subgroup_metrics
from training.split import cv_folds, train_test_split_grouped


@pytest.fixture(scope="module")
def preds():
    rng = np.random.default_rng(0)
    p = rng.beta(1, 12, 3000)
    p[:200] = np.round(p[:200], 2)  # ties
    y = (rng.random(3000) < p).astype(float)
    return y, p


def test_point_metrics_match_scikit_learn(preds):
    y, p = preds
    point, _ = replicates(y, p, n_boot=0, seed=0, patients=None)
    assert point["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert point["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert point["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert point["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-12)


def test_calibration_of_true_probabilities_is_near_ideal(preds):
    y, p = preds
    m = evaluate(y, p, n_boot=200, seed=1, patients=None)
    assert m["calibration_slope_ci_low"] < 1 < m["calibration_slope_ci_high"]
    assert m["calibration_intercept_ci_low"] < 0 < m["calibration_intercept_ci_high"]
    assert m["auroc_ci_low"] < m["auroc"] < m["auroc_ci_high"]
    # Over-confident predictions (log-odds doubled) give a slope near 1/2.
    sharp = expit(2 * logit(p))
    assert evaluate(y, sharp, n_boot=50, seed=1, patients=None)["calibration_slope"] == pytest.approx(0.5, abs=0.1)


def test_bootstrap_is_seeded_and_paired(preds):
    y, p = preds
    assert evaluate(y, p, 100, seed=3, patients=None) == evaluate(y, p, 100, seed=3, patients=None)
    d = paired_difference(y, p, p, ("auroc", "log_loss"), n_boot=100, seed=3, patients=None)
    assert d["auroc_diff"] == 0 and d["auroc_diff_ci_low"] == 0 and d["auroc_diff_ci_high"] == 0


def test_net_benefit_by_hand():
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=float)
    p = np.array([0.5, 0.4, 0.02, 0.03, 0.2, 0.01, 0.01, 0.01, 0.01, 0.01])
    point, _ = replicates(y, p, 0, 0, patients=None)
    # At 10 %: treated = {0.5, 0.4, 0.2}: TP 1, FP 2 -> 1/10 - 2/10 * (0.1/0.9)
    assert point["net_benefit_10"] == pytest.approx(0.1 - 0.2 / 9)
    assert point["treat_all_10"] == pytest.approx(0.2 - 0.8 / 9)


def test_platt_recovers_a_known_map():
    rng = np.random.default_rng(2)
    raw = rng.normal(-2, 1.5, 20000)
    y = (rng.random(20000) < expit(0.6 * raw - 0.3)).astype(float)
    slope, intercept = fit_logistic_1d(raw, y)
    assert slope == pytest.approx(0.6, abs=0.05) and intercept == pytest.approx(-0.3, abs=0.1)
    # Weights count as repeated rows: doubling a random half equals duplicating it.
    w = np.where(rng.random(20000) < 0.5, 2.0, 1.0)
    dup = np.repeat(np.arange(20000), w.astype(int))
    np.testing.assert_allclose(fit_logistic_1d(raw, y, w), fit_logistic_1d(raw[dup], y[dup]), rtol=1e-5)


def test_horizon_calibration_recovers_a_known_map_and_keeps_curves_rising():
    """Stacked IPCW-weighted fit: recovers a common slope and ordered intercepts; when the
    data would want a falling intercept, the fit holds it level instead (curves never fall)."""
    rng = np.random.default_rng(3)
    n = 30000
    eta = rng.normal(0, 1, n)
    a = np.array([-4.0, -3.0, -2.4, -2.0])
    p = expit(a[None, :] + 0.7 * eta[:, None])
    u = rng.random(n)
    labels = (u[:, None] < p).astype(float)
    weights = rng.uniform(1.0, 1.5, (n, 4))
    labels[rng.random(n) < 0.1, 3] = np.nan  # unknown at 24 months
    cal = HorizonCalibration.fit(eta, labels, np.where(np.isnan(labels), 0, weights), (3, 6, 12, 24))
    assert cal.slope == pytest.approx(0.7, abs=0.05)
    np.testing.assert_allclose(cal.intercepts, a, atol=0.1)
    crossed = labels[:, [0, 1, 3, 2]]  # the 24-month column is now rarer than the 12-month one
    held = HorizonCalibration.fit(eta, crossed, np.where(np.isnan(crossed), 0, weights), (3, 6, 12, 24))
    assert np.all(np.diff(held.intercepts) >= 0) and held.slope > 0
    assert held.intercepts[2] == pytest.approx(held.intercepts[3], abs=1e-6)


def test_subgroups_report_counts_and_skip_tiny_groups(preds):
    import pandas as pd

    y, p = preds
    groups = pd.DataFrame({"sex": np.where(np.arange(len(y)) % 2, "F", "M"),
                           "technique": np.where(np.arange(len(y)) < 20, "PKP", "PVP")})
    out = subgroup_metrics(y, p, groups, n_boot=50, seed=0, patients=None)
    assert set(out["subgroup"]) == {"sex", "technique"}
    assert out["n"].sum() == 2 * len(y)
    tiny = out[(out.subgroup == "technique") & (out.level == "PKP")].iloc[0]
    assert np.isnan(tiny.get("auroc", np.nan))


def test_split_is_grouped_stratified_and_seeded():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(600), rng.integers(1, 3, 600))
    y = (rng.random(len(groups)) < 0.1).astype(int)
    train, test = train_test_split_grouped(y, groups, 0.2, seed=4)
    assert not set(groups[train]) & set(groups[test])
    assert len(test) / len(y) == pytest.approx(0.2, abs=0.03)
    assert y[test].mean() == pytest.approx(y.mean(), abs=0.03)
    again = train_test_split_grouped(y, groups, 0.2, seed=4)
    assert (again[1] == test).all()
    for tr, va in cv_folds(y[train], groups[train], 4, seed=4):
        assert not set(groups[train][tr]) & set(groups[train][va])


def test_monotone_constraints_follow_the_evidence():
    names = ["ivc", "hu_adjacent_min", "cement_volume_ml", "leakage_intradiscal", "brace_prescribed"]
    assert monotone_constraints("cemented_refracture", names) == (1, -1, 0, 0, 0)
    assert monotone_constraints("adjacent_fracture", names) == (0, -1, 0, 1, 0)
    assert monotone_constraints("remote_fracture", names) == (0, -1, 0, 0, -1)
    # Yassavoly 2025 (issue 12): multiple treated levels do not raise adjacent or remote risk.
    for outcome in ("cemented_refracture", "adjacent_fracture", "remote_fracture"):
        assert monotone_constraints(outcome, ["n_levels_treated"]) == (0,)
