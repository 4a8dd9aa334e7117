"""The censoring model of the training weights (``training.censoring``): the Cox model
given the patient's covariates removes the bias the marginal Kaplan-Meier leaves when
censoring depends on the patient, agrees with it when censoring does not, and keeps the
tie rule and the one-time-per-row call of ``competing_risks.ipcw_weights``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.labels import horizon_days
from training.censoring import CENSORING_COVARIATES, CoxCensoring, CovariateDesign, censoring_model
from training.competing_risks import censoring_survival, crude_label, ipcw_weights

H = horizon_days(24)


def _cohort(n: int, seed: int, censoring_slope: float):
    """Exponential times (days) driven by age: fracture hazard exp(-9.2 + 0.8 z), death
    exp(-7.6 + 0.7 z), censoring exp(-7.4 + censoring_slope z) (older patients lost more
    often when the slope is positive), z = (age - 80) / 7; administrative end at 30 months.
    Returns (covariates, time, status, true mean crude 24-month incidence, the true
    censoring survival G(at | z) of each row)."""
    rng = np.random.default_rng(seed)
    age = rng.normal(80, 7, n)
    z = (age - 80) / 7
    h_event, h_death, h_cens = np.exp(-9.2 + 0.8 * z), np.exp(-7.6 + 0.7 * z), np.exp(-7.4 + censoring_slope * z)
    t_event, t_death = rng.exponential(1 / h_event), rng.exponential(1 / h_death)
    t_cens = np.minimum(rng.exponential(1 / h_cens), horizon_days(30))
    time = np.minimum.reduce([t_event, t_death, t_cens])
    status = np.select([time == t_event, time == t_death], [1, 2], 0)
    total = h_event + h_death
    truth = float(np.mean(h_event / total * (1 - np.exp(-total * H))))
    X = pd.DataFrame({"age_years": age, "sex_female": rng.integers(0, 2, n).astype(float),
                      "sarcopenia": np.where(rng.random(n) < 0.3, np.nan, rng.integers(0, 2, n))})
    true_G = lambda at, before=False: np.exp(-h_cens * np.floor(np.asarray(at)))  # noqa: E731 - days as recorded
    return X, np.floor(time) + 1, status, truth, true_G


def _ipcw_mean(time, status, G) -> float:
    y = np.nan_to_num(crude_label(time, status, H))
    w = ipcw_weights(time, status, H, G=G)
    return float((w * y).sum() / w.sum())


def test_cox_weights_remove_the_bias_of_censoring_that_depends_on_the_patient():
    """Older patients (more fractures, earlier deaths) are lost more often: the marginal
    Kaplan-Meier under-weights them and underestimates the incidence; the Cox model
    recovers the censoring model (slope 1.2 per SD of age) and gives what the true
    censoring survival gives on the same rows (which is itself within sampling error of
    the truth, its weights being large)."""
    X, t, s, truth, true_G = _cohort(40_000, seed=3, censoring_slope=1.2)
    rows = np.arange(len(t))
    km = _ipcw_mean(t, s, censoring_model("km", t, s, X, rows))
    cox = _ipcw_mean(t, s, censoring_model("cox", t, s, X, rows, until=H))
    oracle = _ipcw_mean(t, s, true_G)
    assert km / oracle - 1 < -0.10 and km / truth - 1 < -0.10, (km, oracle, truth)
    assert abs(cox / oracle - 1) < 0.01, (cox, oracle)
    assert abs(cox / truth - 1) < 0.06, (cox, truth)
    beta = CoxCensoring().fit(t, s, X, until=H).beta_
    assert abs(beta[1] - 1.2 * X["age_years"].std() / 7) < 0.05  # age, standardised by its SD


def test_cox_and_kaplan_meier_agree_when_censoring_does_not_depend_on_the_patient():
    X, t, s, _, _ = _cohort(20_000, seed=4, censoring_slope=0.0)
    rows = np.arange(len(t))
    km_G, cox_G = censoring_survival(t, s), censoring_model("cox", t, s, X, rows, until=H)
    at = np.minimum(t, H)
    assert np.max(np.abs(km_G(at, before=True) - cox_G(at, before=True))) < 0.03
    assert abs(_ipcw_mean(t, s, km_G) / _ipcw_mean(t, s, cox_G) - 1) < 0.01


def test_the_censoring_survival_is_a_step_per_row_with_the_km_tie_rule():
    """A censoring on the day of an event is after it: G(T-) of that event excludes it and
    G(T) includes it. Without a varying covariate the model is the Kaplan-Meier itself."""
    t = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 5.0, 6.0])
    s = np.array([1, 0, 1, 0, 2, 0, 1, 0])
    X = pd.DataFrame({"age_years": [70.0, 75.0, 80.0, 85.0, 90.0, 72.0, 88.0, 79.0]})
    G = CoxCensoring().fit(t, s, X).survival_for(X)
    before, after = G(t, before=True), G(t, before=False)
    assert len(set(G(np.full(8, 3.0), before=True).round(12))) == 8  # one curve per row (its covariates)
    assert after[2] < before[2] and before[2] == pytest.approx(G(np.full(8, 1.5))[2])  # event on day 2
    assert after[0] == before[0] == 1.0
    constant = pd.DataFrame({"age_years": np.full(8, 80.0)})
    km_like = CoxCensoring().fit(t, s, constant).survival_for(constant)
    km = censoring_survival(t, s)
    for left in (False, True):
        assert np.array_equal(km_like(t, before=left), km(t, before=left))
    with pytest.raises(ValueError, match="one time per row"):
        G(np.array([1.0]))
    # No censoring before the longest horizon (only the data cut, after it): G is 1 there.
    uncensored = CoxCensoring().fit(t, s, X, until=1.5).survival_for(X)
    assert np.array_equal(uncensored(np.full(8, 1.5), before=True), np.ones(8))


def test_the_design_imputes_flags_and_standardises_with_the_training_rows():
    train = pd.DataFrame({"age_years": [70.0, 80.0, 90.0], "sarcopenia": [1.0, np.nan, 0.0], "sex_female": [1.0] * 3})
    design = CovariateDesign().fit(train)
    Z = design.transform(pd.DataFrame({"age_years": [100.0], "sarcopenia": [np.nan], "sex_female": [0.0]}))
    assert design.columns_ == ["sarcopenia_missing", "age_years", "sarcopenia"]  # constant sex dropped
    assert np.allclose(Z, [[(1 - 1 / 3) / np.std([0, 1, 0], ddof=1), 2.0, 0.0]])
    assert set(design.columns_) - {f"{c}_missing" for c in CENSORING_COVARIATES} <= set(CENSORING_COVARIATES)


def test_breslow_is_nelson_aalen_without_covariates_and_includes_each_jump():
    from training.censoring import _breslow

    times, cumhaz = _breslow(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1, 1, 0, 1]), np.zeros(4))
    assert np.array_equal(times, [1.0, 2.0, 3.0])
    assert np.allclose(cumhaz, [1 / 4, 1 / 4 + 1 / 3, 1 / 4 + 1 / 3 + 1])
