"""SHAP explanations: local accuracy (additivity in calibrated log-odds at every horizon) for
every candidate type, on simulated data with missing values, and the clinical labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.assemble import build_training_set
from features.catalog import display_name, feature_names
from features.records import tables_to_records
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from modelstore.calibration import HorizonCalibration
from modelstore.candidates import MODEL_TYPES, expit, make_scorer
from modelstore.explain import ADDITIVITY_TOLERANCE, XGB_METHODS, Explanation, explain
from modelstore.model import RefractureModel

OUTCOME = "cemented_refracture"
SMALL_PARAMS = {
    "logistic": {"C": 1e4, "l1_ratio": 0.0},
    "elastic_net": {"C": 0.2, "l1_ratio": 0.5},
    "random_forest": {"n_estimators": 40, "min_samples_leaf": 10, "max_features": 0.4, "max_samples": 0.8},
    "xgboost": {"n_estimators": 60, "learning_rate": 0.1, "max_depth": 3, "min_child_weight": 2.0,
                "subsample": 0.9, "colsample_bytree": 0.8, "reg_lambda": 1.0},
}


@pytest.fixture(scope="module")
def cohort():
    tables, _ = simulate(load_profile("xiong2021-pvp"), n_procedures=1200, seed=11)
    typed = validate_raw(tables)
    ts = build_training_set(typed, "postop")
    lab = ts[ts[OUTCOME].notna()]
    X = lab[feature_names("postop")]
    y = lab[OUTCOME].astype(int).to_numpy()
    records = tables_to_records(typed).set_index("procedure_id", drop=False)
    return X, y, records.loc[X.index]


#: (model type, XGBoost explanation method); float32 path-dependent sums are held to 1e-5.
EXPLAINERS = [(t, "interventional") for t in MODEL_TYPES] + [("xgboost", "path_dependent")]


@pytest.mark.parametrize("model_type,method", EXPLAINERS)
def test_local_accuracy_in_calibrated_log_odds(cohort, model_type, method):
    X, y, _ = cohort
    assert X.isna().any().any(), "the check must cover missing values"
    scorer = make_scorer(model_type, SMALL_PARAMS[model_type], OUTCOME, seed=3, n_jobs=1).fit(X, y)
    rows = X.iloc[:150]
    expl = explain(scorer, rows, slope=0.83, intercept=-0.41, xgb_method=method)  # a non-trivial recalibration
    model_logit = 0.83 * scorer.raw_logit(rows) - 0.41
    atol = ADDITIVITY_TOLERANCE if method == "path_dependent" else 1e-6
    assert expl.values.shape == (150, X.shape[1])
    np.testing.assert_allclose(expl.base_value + expl.values.sum(axis=1), model_logit, rtol=0, atol=atol)
    np.testing.assert_allclose(expl.logit(), model_logit, rtol=0, atol=atol)
    np.testing.assert_allclose(expl.probability(), expit(model_logit), rtol=0, atol=1e-7)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_model_explain_from_records_is_additive_at_every_horizon(cohort, model_type):
    """base + contributions = the calibrated log-odds of that horizon's risk (within 1e-5),
    contributions are the same up to the common slope, and the default horizon is 24 months."""
    X, y, records = cohort
    scorer = make_scorer(model_type, SMALL_PARAMS[model_type], OUTCOME, seed=3, n_jobs=1).fit(X, y)
    calibration = HorizonCalibration((3.0, 6.0, 12.0, 24.0), (-1.7, -1.1, -0.4, 0.2), 1.1)
    model = RefractureModel(scorer, calibration, OUTCOME, "postop", 24, list(X.columns))
    some = records.iloc[:20]
    curve = model.predict_curve(some)
    for h in (3, 6, 12, 24):
        expl = model.explain(some, horizon_months=h)
        assert isinstance(expl, Explanation)
        p = curve[f"p_{h}m"].to_numpy()
        np.testing.assert_allclose(expl.logit(), np.log(p) - np.log1p(-p), rtol=0, atol=1e-5)
        np.testing.assert_allclose(expl.probability(), model.predict_proba(some, horizon_months=h), rtol=0, atol=1e-7)
        assert list(expl.feature_values.index) == list(some.index)
    np.testing.assert_allclose(model.explain(some, 3).values, model.explain(some, 24).values, atol=1e-12)
    np.testing.assert_allclose(model.explain(some).logit(), model.explain(some, 24).logit(), atol=0)


def test_display_names_and_units_come_from_the_catalogue(cohort):
    X, y, _ = cohort
    scorer = make_scorer("logistic", SMALL_PARAMS["logistic"], OUTCOME, seed=0).fit(X, y)
    expl = explain(scorer, X.iloc[:3])
    assert expl.display_names == [display_name(n) for n in X.columns]
    i = expl.feature_names.index("hu_adjacent_min")
    assert expl.units[i] == "HU" and "[HU]" in expl.display_names[i]
    assert isinstance(expl.feature_values, pd.DataFrame) and expl.feature_values.shape == (3, X.shape[1])


def test_missing_feature_gets_its_own_contribution_in_linear_models(cohort):
    """The missing indicator's effect is credited to the missing feature itself."""
    X, y, _ = cohort
    scorer = make_scorer("logistic", SMALL_PARAMS["logistic"], OUTCOME, seed=0).fit(X, y)
    row = X.iloc[[0]].copy()
    row_missing = row.copy()
    row_missing["hu_index_preop"] = np.nan
    a = explain(scorer, row).frame()
    b = explain(scorer, row_missing).frame()
    changed = (a - b).abs().iloc[0]
    assert changed.drop("hu_index_preop").max() < 1e-12


# ------------------------------------------------------------ XGBoost: two TreeSHAP methods
@pytest.fixture(scope="module")
def boosted(cohort):
    """An XGBoost score model of the size training picks without search (200 trees)."""
    X, y, records = cohort
    params = {"n_estimators": 200, "learning_rate": 0.05, "max_depth": 3, "min_child_weight": 5.0,
              "subsample": 0.8, "colsample_bytree": 0.8, "reg_lambda": 1.0}
    return make_scorer("xgboost", params, OUTCOME, seed=5, n_jobs=1).fit(X, y)


@pytest.mark.parametrize("trees,depth", [(200, 3), (600, 5)])
def test_blocked_float32_margin_stays_within_1e6_of_the_float64_leaf_sum(cohort, trees, depth):
    """The served score sums XGBoost's float32 margins of 25-tree blocks in float64; it must
    stay far inside the 1e-5 additivity rule on the largest model the search can pick
    (more trees and deeper than its range), missing values included."""
    X, y, _ = cohort
    params = {"n_estimators": trees, "learning_rate": 0.05, "max_depth": depth, "min_child_weight": 1.0,
              "subsample": 0.8, "colsample_bytree": 0.8, "reg_lambda": 1.0}
    scorer = make_scorer("xgboost", params, OUTCOME, seed=5, n_jobs=1).fit(X, y)
    assert X.isna().any().any()
    fast, exact = scorer.raw_logit(X), scorer.raw_logit_exact(X)
    assert np.abs(fast - exact).max() < 1e-6, np.abs(fast - exact).max()
    # A single float32 sum over every tree would not be (this is what the blocks are for).
    one_sum = scorer.booster_.inplace_predict(X.to_numpy("float32"), predict_type="margin", missing=np.nan)
    assert np.abs(one_sum - exact).max() > np.abs(fast - exact).max()
    assert scorer.raw_logit(X.iloc[:0]).shape == (0,)


@pytest.mark.parametrize("method", XGB_METHODS)
def test_both_xgboost_methods_are_additive_within_1e5_at_every_horizon(cohort, boosted, method):
    X, _, records = cohort
    calibration = HorizonCalibration((3.0, 6.0, 12.0, 24.0), (-2.1, -1.3, -0.5, 0.3), 1.25)
    model = RefractureModel(boosted, calibration, OUTCOME, "postop", 24, list(X.columns), explanation_method=method)
    some = records.iloc[:300]
    curve = model.predict_curve(some)
    for h in (3, 6, 12, 24):
        expl = model.explain(some, horizon_months=h)
        p = curve[f"p_{h}m"].to_numpy()
        error = np.abs(expl.logit() - (np.log(p) - np.log1p(-p)))
        assert error.max() <= ADDITIVITY_TOLERANCE, (method, h, error.max())
        assert method.replace("_", "-") in expl.method, expl.method  # no silent fallback here


def test_path_dependent_and_interventional_agree_on_the_dominant_features(cohort, boosted):
    """Conditional (path-dependent) and marginal (interventional) expectations differ in
    detail, but not in what a clinician reads: per record, the feature with the largest
    interventional contribution has the same sign under both and stays among the top 3
    path-dependent ones; over the records, the 3 features with the largest mean |SHAP| are
    the same set. (This fails if a method mislabels columns or inverts the bias.)"""
    X, _, _ = cohort
    rows = X.iloc[:400]
    inter = explain(boosted, rows, xgb_method="interventional").values
    path = explain(boosted, rows, xgb_method="path_dependent").values
    top = np.abs(inter).argmax(axis=1)
    idx = np.arange(len(rows))
    dominant = np.abs(inter[idx, top]) > 0.05  # records where one feature clearly leads
    assert dominant.sum() >= 100
    same_sign = np.sign(inter[idx, top]) == np.sign(path[idx, top])
    assert same_sign[dominant].mean() >= 0.95, same_sign[dominant].mean()
    path_rank = (-np.abs(path)).argsort(axis=1).argsort(axis=1)[idx, top]
    assert (path_rank[dominant] < 3).mean() >= 0.9, (path_rank[dominant] < 3).mean()
    top3 = lambda v: set(np.argsort(-np.abs(v).mean(axis=0))[:3])  # noqa: E731
    assert top3(inter) == top3(path), (top3(inter), top3(path))


def test_path_dependent_falls_back_to_interventional_beyond_the_tolerance(cohort, boosted):
    """With a tolerance the float32 sums cannot meet, the exact method is used and named."""
    from modelstore.explain import raw_contributions

    X, _, _ = cohort
    rows = X.iloc[:50]
    base, values, method, _ = raw_contributions(boosted, rows, "path_dependent", tolerance=1e-12)
    assert method.startswith("interventional") and "above" in method
    np.testing.assert_allclose(base + values.sum(axis=1), boosted.raw_logit(rows), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="path_dependent, interventional"):
        raw_contributions(boosted, rows, "exact")


@pytest.mark.parametrize("method", XGB_METHODS)
def test_explanation_method_is_stored_with_the_model(cohort, boosted, method, tmp_path):
    X, _, _ = cohort
    calibration = HorizonCalibration((3.0, 6.0, 12.0, 24.0), (-2.1, -1.3, -0.5, 0.3), 1.25)
    model = RefractureModel(boosted, calibration, OUTCOME, "postop", 24, list(X.columns), explanation_method=method)
    loaded = RefractureModel.load(model.save(tmp_path / "m"))
    assert loaded.explanation_method == method
    np.testing.assert_allclose(loaded.explain_features(X.iloc[:20]).values, model.explain_features(X.iloc[:20]).values,
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="explanation_method"):
        RefractureModel(boosted, calibration, OUTCOME, "postop", 24, list(X.columns), explanation_method="saabas")
