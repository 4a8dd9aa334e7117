"""The candidate models and how each one turns features into a raw log-odds score.

Every candidate is a *scorer*, a scikit-learn ``BaseEstimator`` (``get_params``, ``clone``):
``fit(X, y, sample_weight)`` on a feature frame (float64, NaN = missing) and
``raw_logit(X)`` -> float64 score ``eta(x)``, the log-odds of the event by the headline
horizon. The labels are the crude binary labels at that horizon and ``sample_weight`` the
inverse-probability-of-censoring weights (``training.competing_risks``): rows censored
before the horizon are not passed (weight 0), the others count 1 / G(t-). Calibration
(``modelstore.calibration``) maps eta to the risk at every horizon; explanation
(``modelstore.explain``) decomposes it.

Candidates (``MODEL_TYPES``):

- ``logistic``: the clinical standard. A scikit-learn encoding (``linear_encoding``:
  median imputation, missing indicators, winsorised standardisation, a quadratic term
  for cement volume, whose effect is U-shaped, clinical-evidence §3) and an essentially
  unpenalised logistic regression.
- ``elastic_net``: the same encoding, penalised logistic regression (L1/L2 mix searched).
- ``random_forest``: scikit-learn forest on the raw features; missing values handled
  natively by the trees (scikit-learn >= 1.4 learns a side for NaN at each split).
- ``xgboost``: gradient-boosted trees with monotone constraints (``monotone_constraints``)
  where the evidence gives a direction; missing values handled natively (a learned
  default direction per split).

No class weighting anywhere (the only weights are the censoring weights, which remove
bias rather than add it): reweighting classes would distort the probabilities the product
reports. The imbalance is handled by stratified splits and by reporting AUPRC and
calibration next to AUROC.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler

from modelstore.tree_margins import BlockMargins

MODEL_TYPES = ("logistic", "elastic_net", "random_forest", "xgboost")
#: Raw log-odds of a probability estimate (random forest) are taken of p clipped to
#: [EPS, 1 - EPS]: a forest can vote 0 or 1, whose log-odds are infinite.
EPS = 1e-4
#: Features whose effect is U-shaped (clinical-evidence §3: "cement volume: too little and
#: too much both raise risk"): linear models get a squared term, trees no constraint.
QUADRATIC_FEATURES = ("cement_volume_ml",)


def in_order(X: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``X[names]``, without the copy when the columns are already those, in that order
    (the serving path calls this several times per batch; each selection costs ~0.5 ms)."""
    # ``tolist``: under pandas 3 the labels are Arrow strings, and ``list(X.columns)`` costs 5x more.
    return X if X.columns.tolist() == list(names) else X[names]


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of p clipped to [EPS, 1 - EPS], float64."""
    p = np.clip(np.asarray(p, dtype="float64"), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def expit(z: np.ndarray) -> np.ndarray:
    """Inverse of logit, float64."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype="float64")))


# ----------------------------------------------------------------------------------------
# Monotone constraints (XGBoost). +1: risk never falls as the value rises; -1: never rises.
# Each entry cites clinical-evidence §3. Not constrained on purpose: cement volume and fill
# ratios (U-shaped), level index (the thoracolumbar flag carries the junction effect),
# reduction angle and wedge/kyphotic angles (directions not established), technique.
# ----------------------------------------------------------------------------------------
_BONE_QUALITY = {
    # low BMD: key predictor of refracture/new fracture (Zeng review; high BMD OR 0.31, PMC6911304)
    "dxa_bmd_g_cm2": -1,
    "dxa_t_score": -1,
    # per 1 HU lower ~5.8 % higher risk; ORs per +1 HU 0.93-0.98 in four series (Zeng; Sci Rep 2025)
    "hu_index_preop": -1,
    "hu_upper_adjacent": -1,
    "hu_lower_adjacent": -1,
    "hu_adjacent_min": -1,
    # prior fracture 2.55x (Zeng review), OR 1.43 per baseline fracture (VERTOS II)
    "prior_vertebral_fractures_n": +1,
    # long-term glucocorticoids OR 2.63 (Cao 2016)
    "glucocorticoids_long_term": +1,
    # anti-osteoporosis therapy protective; denosumab discontinuation raises risk (Zeng review)
    "on_anti_osteoporosis_therapy": -1,
    "denosumab_discontinued": +1,
    # age independent (Zeng review, OR 2.48 dichotomised)
    "age_years": +1,
    # sarcopenia 2.78x (Lin 2025 via Zeng); paraspinal fat OR 1.064 per % (Si 2022)
    "sarcopenia": +1,
    "psoas_muscle_index_cm2_m2": -1,
    "paraspinal_fat_fraction_pct": +1,
    # type 2 diabetes and CKD: risk factors in meta-analysis (Zeng review)
    "type2_diabetes": +1,
    "chronic_kidney_disease": +1,
}
MONOTONE: dict[str, dict[str, int]] = {
    "cemented_refracture": {
        **_BONE_QUALITY,
        "ivc": +1,                    # OR 27.1 (Xiong 2021); pooled 2.97 (WJCC 2021)
        "endplate_disruption": +1,    # OR 3.23 (Xiong 2021)
        "reduction_rate_pct": +1,     # OR 2.94 per ~10 points (Xiong 2021)
        "npec_count": +1,             # OR 1.99 per NPEC step (Xiong 2021); both-endplate contact 5.2 % vs 16.5 %
        "npec_upper": +1,
        "npec_lower": +1,
        "thoracolumbar_junction": +1,  # recollapse OR 2.09 (WJCC 2021)
    },
    "adjacent_fracture": {
        **_BONE_QUALITY,
        "leakage_intradiscal": +1,        # OR 10.99 (Front Surg 2026)
        "leakage_intradiscal_spike": +1,  # spike 7/9 AVF vs round 0/2 (Yassavoly 2025)
        "leakage_any": +1,                # any leakage, new fracture pooled OR 2.05 (JOSR 2022)
        "hu_ratio_augmented_adjacent": +1,  # stiffness gradient (Matsumoto 2024 via Zeng)
        "thoracolumbar_junction": +1,     # listed driver of AVF (clinical-evidence §1)
        # n_levels_treated not constrained: Yassavoly 2025 found multiple treated levels do
        # not raise adjacent or remote risk (issue 12), against Cao 2016's pooled OR 2.03.
    },
    "remote_fracture": {
        **_BONE_QUALITY,
        "brace_prescribed": -1,   # 0 % vs 4.1 % RVF (Yassavoly 2025)
        "leakage_any": +1,        # new fracture pooled OR 2.05 (JOSR 2022)
        # n_levels_treated not constrained (Yassavoly 2025; see adjacent_fracture).
    },
    # Death from any cause (the context model, pre-operative features only). Directions are
    # general geriatric epidemiology, not clinical-evidence §3 (which covers fractures), and
    # are assumptions here; in the simulator death depends on age and sex only
    # (features.simulator.outcomes.death_hazard_per_year: Gompertz in age, higher in men),
    # so the other constraints only keep noise from taking the wrong direction.
    "death": {
        "age_years": +1,                   # Gompertz: mortality doubles about every 8 years (profiles)
        "sex_female": -1,                  # higher mortality in men at every age (profiles' annual_at_80)
        "bmi_kg_m2": -1,                   # assumption: low BMI (frailty) raises mortality in the old
        "hu_index_preop": -1,              # assumption: poorer bone, frailer patient
        "hu_adjacent_min": -1,
        "prior_vertebral_fractures_n": +1,  # assumption: prevalent vertebral fractures mark excess mortality
        "glucocorticoids_long_term": +1,   # assumption: comorbidity needing them
        "type2_diabetes": +1,              # assumption: comorbidity
        "chronic_kidney_disease": +1,      # assumption: comorbidity
        "sarcopenia": +1,                  # assumption: frailty
        "psoas_muscle_index_cm2_m2": -1,   # assumption: frailty (less muscle)
    },
}


def monotone_constraints(outcome: str, feature_names: list[str]) -> tuple[int, ...]:
    """Monotone constraint per feature (in order) for ``outcome``: +1, -1 or 0."""
    table = MONOTONE.get(outcome, {})
    return tuple(int(table.get(name, 0)) for name in feature_names)


#: Rows of training data kept with a tree-boosting model as the SHAP background.
BACKGROUND_ROWS = 100
#: Trees whose margins XGBoost sums in float32 before the sum goes to float64
#: (``BoostScorer.raw_logit``): 25 keeps the rounding error below ~5e-7 in log-odds.
TREES_PER_BLOCK = 25


def _weights(sample_weight, n: int) -> np.ndarray | None:
    return None if sample_weight is None else np.asarray(sample_weight, dtype="float64").reshape(n)


# ----------------------------------------------------------------------------------------
# Linear models
# ----------------------------------------------------------------------------------------
class Winsorizer(TransformerMixin, BaseEstimator):
    """Clip each column to its training ``low``/``high`` percentiles (0.5 / 99.5 by default):
    a handful of extreme values must not set a linear model's slope."""

    def __init__(self, low: float = 0.5, high: float = 99.5):
        self.low = low
        self.high = high

    def fit(self, X, y=None):
        X = np.asarray(X, dtype="float64")
        self.low_ = np.percentile(X, self.low, axis=0)
        self.high_ = np.percentile(X, self.high, axis=0)
        return self

    def transform(self, X):
        return np.clip(np.asarray(X, dtype="float64"), self.low_, self.high_)


class SquaredTerms(TransformerMixin, BaseEstimator):
    """Append the square of the columns at positions ``columns`` (U-shaped effects)."""

    def __init__(self, columns: tuple[int, ...] = ()):
        self.columns = columns

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        X = np.asarray(X, dtype="float64")
        return np.hstack([X, X[:, list(self.columns)] ** 2])


def linear_encoding(feature_names: list[str], quadratic: tuple[str, ...] = QUADRATIC_FEATURES) -> FeatureUnion:
    """The linear models' encoding, from scikit-learn pieces, learned on training data only.

    Values: training-median imputation, winsorising at the 0.5th/99.5th percentiles,
    standardisation, the squared standardised value of ``quadratic`` features, then every
    column standardised again (the squares included). Missingness: a 0/1 indicator for
    each feature that was missing in training. Output columns: values, squares, indicators.
    """
    squares = tuple(feature_names.index(q) for q in quadratic if q in feature_names)
    values = Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("winsorise", Winsorizer()),
        ("scale", StandardScaler()),
        ("square", SquaredTerms(squares)),
        ("rescale", StandardScaler()),
    ])
    return FeatureUnion([("values", values), ("missing", MissingIndicator(features="missing-only", error_on_new=False))])


def encoded_sources(encoding: FeatureUnion, feature_names: list[str]) -> list[str]:
    """The feature each column of a fitted ``linear_encoding`` comes from (for explanations)."""
    values = encoding.transformer_list[0][1]
    squares = [feature_names[i] for i in values.named_steps["square"].columns]
    missing = [feature_names[i] for i in encoding.transformer_list[1][1].features_]
    return list(feature_names) + squares + missing


def imputation_medians(encoding: FeatureUnion, feature_names: list[str]) -> dict[str, float]:
    """Training median used for each feature of a fitted ``linear_encoding``."""
    stats = encoding.transformer_list[0][1].named_steps["impute"].statistics_
    return dict(zip(feature_names, (float(v) for v in stats)))


class LinearScorer(BaseEstimator):
    """Logistic regression on ``linear_encoding``. ``C`` is the inverse penalty strength;
    ``l1_ratio`` 0 = ridge, 1 = lasso (elastic net in between)."""

    def __init__(self, model_type: str = "logistic", C: float = 1e4, l1_ratio: float = 0.0, random_state: int = 0):
        self.model_type = model_type
        self.C = C
        self.l1_ratio = l1_ratio
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y: np.ndarray, sample_weight=None) -> "LinearScorer":
        self.feature_names_ = list(X.columns)
        self.encoding_ = linear_encoding(self.feature_names_)
        Z = self.encoding_.fit_transform(X.to_numpy(dtype="float64"))
        if self.model_type == "elastic_net":
            # tol 1e-3 on standardised features: tighter only costs saga time, not risk accuracy.
            clf = LogisticRegression(C=self.C, l1_ratio=self.l1_ratio, solver="saga", max_iter=1000,
                                     tol=1e-3, random_state=self.random_state)
        else:
            # "Unpenalised" in practice: a negligible ridge keeps the fit finite when a rare
            # binary feature separates the classes in a small sample.
            clf = LogisticRegression(C=self.C, solver="lbfgs", max_iter=5000, random_state=self.random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(Z, np.asarray(y, dtype=int), sample_weight=_weights(sample_weight, len(Z)))
        self.classifier_ = clf
        self.set_fitted(self.encoding_, clf.coef_.ravel(), float(clf.intercept_[0]), Z.mean(axis=0))
        return self

    def set_fitted(self, encoding: FeatureUnion, coef: np.ndarray, intercept: float, background_mean: np.ndarray) -> None:
        """Fitted state (also how a stored model is restored): the encoding, coefficients,
        intercept and the training mean of the encoded columns (the explanation background)."""
        self.encoding_ = encoding
        self.coef_ = np.asarray(coef, dtype="float64")
        self.intercept_ = float(intercept)
        self.background_mean_ = np.asarray(background_mean, dtype="float64")
        self.sources_ = encoded_sources(encoding, self.feature_names_)

    def encode(self, X: pd.DataFrame) -> np.ndarray:
        """Encoded matrix (n, len(sources_)) of features in the fitted order."""
        return self.encoding_.transform(in_order(X, self.feature_names_).to_numpy(dtype="float64"))

    def raw_logit(self, X: pd.DataFrame) -> np.ndarray:
        return self.encode(X) @ self.coef_ + self.intercept_

    def medians(self) -> dict[str, float]:
        """Training median imputed for each feature."""
        return imputation_medians(self.encoding_, self.feature_names_)


# ----------------------------------------------------------------------------------------
# Trees
# ----------------------------------------------------------------------------------------
class ForestScorer(BaseEstimator):
    """Random forest (scikit-learn) on raw features with native NaN handling.
    Raw log-odds = logit of the forest's probability clipped to [EPS, 1 - EPS]."""

    model_type = "random_forest"

    def __init__(self, n_estimators: int = 150, min_samples_leaf: int = 20, max_features: float = 0.3,
                 max_samples: float | None = 0.7, random_state: int = 0, n_jobs: int = 2):
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.max_samples = max_samples
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X: pd.DataFrame, y: np.ndarray, sample_weight=None) -> "ForestScorer":
        self.forest_ = RandomForestClassifier(
            n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features, max_samples=self.max_samples, bootstrap=True,
            random_state=self.random_state, n_jobs=self.n_jobs,
        ).fit(X.to_numpy(dtype="float64"), np.asarray(y, dtype=int), sample_weight=_weights(sample_weight, len(X)))
        self.feature_names_ = list(X.columns)
        return self

    def proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.forest_.predict_proba(in_order(X, self.feature_names_).to_numpy(dtype="float64"))[:, 1].astype("float64")

    def raw_logit(self, X: pd.DataFrame) -> np.ndarray:
        return logit(self.proba(X))


class BoostScorer(BaseEstimator):
    """XGBoost (binary:logistic) with monotone constraints; native NaN handling.

    Raw log-odds (``raw_logit``) are XGBoost's own margin, taken in blocks of
    ``TREES_PER_BLOCK`` trees: XGBoost sums each block in float32 and the blocks are
    added in float64 with the base margin. One float32 sum over a few hundred trees is
    off by up to ~3e-6 (6e-6 with the base margin in it); blocks of 25 trees keep the
    error below ~5e-7 (``bench/README.md``, issue 14), 20x inside the 1e-5 additivity rule
    of ``modelstore.explain``, at half the cost of routing rows to leaves (``pred_leaf``)
    and summing the leaf values in float64 (``raw_logit_exact``, kept as the reference).
    The block sums go through ``modelstore.tree_margins.BlockMargins``: the same numbers
    as ``inplace_predict``, bit for bit, for a tenth of its Python cost per call.
    The fitted model is the ``booster_`` (stored as XGBoost JSON).
    """

    model_type = "xgboost"

    def __init__(self, outcome: str = "", n_estimators: int = 300, learning_rate: float = 0.05, max_depth: int = 3,
                 min_child_weight: float = 5.0, subsample: float = 0.8, colsample_bytree: float = 0.8,
                 reg_lambda: float = 1.0, random_state: int = 0, n_jobs: int = 2):
        self.outcome = outcome
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X: pd.DataFrame, y: np.ndarray, sample_weight=None) -> "BoostScorer":
        self.feature_names_ = list(X.columns)
        self.constraints_ = monotone_constraints(self.outcome, self.feature_names_)
        model = xgb.XGBClassifier(
            n_estimators=self.n_estimators, learning_rate=self.learning_rate, max_depth=self.max_depth,
            min_child_weight=self.min_child_weight, subsample=self.subsample,
            colsample_bytree=self.colsample_bytree, reg_lambda=self.reg_lambda,
            monotone_constraints=self.constraints_, tree_method="hist", objective="binary:logistic",
            eval_metric="logloss", random_state=self.random_state, n_jobs=self.n_jobs,
        ).fit(X.to_numpy(dtype="float64"), np.asarray(y, dtype=int), sample_weight=_weights(sample_weight, len(X)))
        rng = np.random.default_rng(self.random_state)
        take = rng.choice(len(X), size=min(BACKGROUND_ROWS, len(X)), replace=False)
        self.set_fitted(model.get_booster(), X.to_numpy(dtype="float64")[np.sort(take)])
        return self

    def set_fitted(self, booster, background: np.ndarray) -> None:
        """Fitted state (also how a stored model is restored): the booster and the SHAP
        background rows; indexes the leaf values for float64 log-odds."""
        self.booster_ = booster
        self.background_ = np.asarray(background, dtype="float64")
        dump = json.loads(booster.save_raw("json").decode())
        trees = dump["learner"]["gradient_booster"]["model"]["trees"]
        width = max(len(t["split_conditions"]) for t in trees)
        table = np.zeros((len(trees), width), dtype="float64")
        for i, t in enumerate(trees):
            # For leaves, split_conditions holds the leaf value (float32, exact in float64).
            table[i, : len(t["split_conditions"])] = np.asarray(t["split_conditions"], dtype="float32").astype("float64")
        self.leaf_values_ = table
        base = dump["learner"]["learner_model_param"]["base_score"]
        p0 = float(np.float32(str(base).strip("[]")))
        self.base_margin_ = float(np.log(p0) - np.log1p(-p0))
        self.margins_ = BlockMargins(booster, TREES_PER_BLOCK)

    def set_threads(self, n_threads: int, explain_threads: int | None = None) -> None:
        """Threads XGBoost predicts with and (``explain_threads``, default the same)
        explains with, input matrices included."""
        self.margins_.set_threads(n_threads)
        self.explain_threads_ = explain_threads or n_threads
        self.booster_.set_param({"nthread": self.explain_threads_})

    def raw_logit(self, X: pd.DataFrame) -> np.ndarray:
        """Raw log-odds, float64, within ~5e-7 of ``raw_logit_exact`` (see the class)."""
        data = in_order(X, self.feature_names_).to_numpy(dtype="float32")
        # The base margin is added here, in float64; ``margins_`` sums the trees only.
        return self.base_margin_ + self.margins_(data)

    def raw_logit_exact(self, X: pd.DataFrame) -> np.ndarray:
        """Raw log-odds summed in float64 from each row's leaves (slower; the reference)."""
        data = xgb.DMatrix(in_order(X, self.feature_names_).to_numpy(dtype="float64"), missing=np.nan)
        leaves = self.booster_.predict(data, pred_leaf=True).reshape(len(X), -1)
        # Leaf node ids -> positions in the flattened (trees x nodes) table: one ``take``
        # (3x faster than 2-D fancy indexing on 50k rows).
        table = np.ascontiguousarray(self.leaf_values_)
        index = leaves.astype(np.int64)
        index += np.arange(leaves.shape[1], dtype=np.int64) * table.shape[1]
        return self.base_margin_ + table.ravel().take(index).sum(axis=1)


def make_scorer(model_type: str, params: dict[str, Any], outcome: str, seed: int, n_jobs: int = 2):
    """An unfitted scorer of ``model_type`` with hyperparameters ``params``."""
    if model_type in ("logistic", "elastic_net"):
        return LinearScorer(model_type=model_type, random_state=seed, **params)
    if model_type == "random_forest":
        return ForestScorer(random_state=seed, n_jobs=n_jobs, **params)
    if model_type == "xgboost":
        return BoostScorer(outcome=outcome, random_state=seed, n_jobs=n_jobs, **params)
    raise ValueError(f"unknown model type {model_type!r}: choose one of {', '.join(MODEL_TYPES)}")
