"""The candidate models and how each one turns features into a raw log-odds score.

Every candidate is a *scorer*: ``fit(X, y)`` on a feature frame (float64, NaN = missing)
and ``raw_logit(X)`` -> float64 log-odds. Calibration (``training.calibration``) maps the
raw log-odds to calibrated ones; explanation (``training.explain``) decomposes them.

Candidates (``MODEL_TYPES``):

- ``logistic``: the clinical standard. Median imputation + missing indicators +
  winsorised standardisation (``LinearPrep``), a quadratic term for cement volume
  (its effect is U-shaped, clinical-evidence §3), and an essentially unpenalised
  logistic regression.
- ``elastic_net``: the same encoding, penalised logistic regression (L1/L2 mix searched).
- ``random_forest``: scikit-learn forest on the raw features; missing values handled
  natively by the trees (scikit-learn >= 1.4 learns a side for NaN at each split).
- ``xgboost``: gradient-boosted trees with monotone constraints (``monotone_constraints``)
  where the evidence gives a direction; missing values handled natively (a learned
  default direction per split).

No class weighting anywhere: reweighting would distort the probabilities the product
reports. The imbalance is handled by stratified splits and by reporting AUPRC and
calibration next to AUROC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

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
    return X if list(X.columns) == list(names) else X[names]


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
        "n_levels_treated": +1,           # multiple levels, new fracture OR 2.03 (Cao 2016)
    },
    "remote_fracture": {
        **_BONE_QUALITY,
        "brace_prescribed": -1,   # 0 % vs 4.1 % RVF (Yassavoly 2025)
        "leakage_any": +1,        # new fracture pooled OR 2.05 (JOSR 2022)
        "n_levels_treated": +1,   # OR 2.03 (Cao 2016)
    },
}


def monotone_constraints(outcome: str, feature_names: list[str]) -> tuple[int, ...]:
    """Monotone constraint per feature (in order) for ``outcome``: +1, -1 or 0."""
    table = MONOTONE.get(outcome, {})
    return tuple(int(table.get(name, 0)) for name in feature_names)


class _Picklable:
    """Scorers cache their SHAP explainer on first use; the cache is never pickled."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_explainer")}


#: Rows of training data kept with a tree-boosting model as the SHAP background.
BACKGROUND_ROWS = 100


# ----------------------------------------------------------------------------------------
# Linear models
# ----------------------------------------------------------------------------------------
@dataclass
class LinearPrep:
    """Encoding for the linear models, learned on training data only.

    Per feature: impute the training median; add a 0/1 missing indicator if the feature
    was ever missing in training; winsorise at the training 0.5th/99.5th percentiles;
    standardise with the training mean and SD. Features in ``QUADRATIC_FEATURES`` also
    get a squared (standardised) term. ``sources_`` names, for every output column, the
    feature it comes from, so explanations can be summed back per feature.
    """

    quadratic: tuple[str, ...] = QUADRATIC_FEATURES

    def fit(self, X: pd.DataFrame) -> "LinearPrep":
        values = X.to_numpy(dtype="float64")
        self.feature_names_ = list(X.columns)
        with np.errstate(all="ignore"):
            med = np.nanmedian(values, axis=0)
        self.medians_ = np.where(np.isnan(med), 0.0, med)
        self.indicator_ = np.isnan(values).any(axis=0)
        filled = np.where(np.isnan(values), self.medians_, values)
        self.low_ = np.percentile(filled, 0.5, axis=0)
        self.high_ = np.percentile(filled, 99.5, axis=0)
        clipped = np.clip(filled, self.low_, self.high_)
        self.mean_ = clipped.mean(axis=0)
        sd = clipped.std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        self.quad_idx_ = [self.feature_names_.index(q) for q in self.quadratic if q in self.feature_names_]
        z = (clipped - self.mean_) / self.scale_
        sq = z[:, self.quad_idx_] ** 2
        self.sq_mean_ = sq.mean(axis=0) if sq.shape[1] else np.zeros(0)
        self.sq_scale_ = np.where(sq.std(axis=0) > 0, sq.std(axis=0), 1.0) if sq.shape[1] else np.zeros(0)
        self.sources_ = (
            list(self.feature_names_)
            + [self.feature_names_[i] for i in self.quad_idx_]
            + [n for n, ind in zip(self.feature_names_, self.indicator_) if ind]
        )
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Encoded matrix (n, len(sources_)) for features in the fitted order."""
        values = in_order(X, self.feature_names_).to_numpy(dtype="float64")
        missing = np.isnan(values)
        filled = np.where(missing, self.medians_, values)
        z = (np.clip(filled, self.low_, self.high_) - self.mean_) / self.scale_
        sq = (z[:, self.quad_idx_] ** 2 - self.sq_mean_) / self.sq_scale_
        ind = missing[:, self.indicator_].astype("float64")
        return np.hstack([z, sq, ind])


@dataclass
class LinearScorer(_Picklable):
    """Logistic regression on the ``LinearPrep`` encoding. ``C`` is the inverse penalty
    strength; ``l1_ratio`` 0 = ridge, 1 = lasso (elastic net in between)."""

    model_type: str = "logistic"
    C: float = 1e4
    l1_ratio: float = 0.0
    random_state: int = 0

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> "LinearScorer":
        from sklearn.linear_model import LogisticRegression

        self.prep_ = LinearPrep().fit(X)
        Z = self.prep_.transform(X)
        if self.model_type == "elastic_net":
            # tol 1e-3 on standardised features: tighter only costs saga time, not risk accuracy.
            clf = LogisticRegression(C=self.C, l1_ratio=self.l1_ratio, solver="saga", max_iter=1000,
                                     tol=1e-3, random_state=self.random_state)
        else:
            # "Unpenalised" in practice: a negligible ridge keeps the fit finite when a rare
            # binary feature separates the classes in a small sample.
            clf = LogisticRegression(C=self.C, solver="lbfgs", max_iter=5000, random_state=self.random_state)
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(Z, np.asarray(y, dtype=int))
        self.clf_ = clf
        self.coef_ = clf.coef_.ravel().astype("float64")
        self.intercept_ = float(clf.intercept_[0])
        # Background for explanations: the training mean of the encoded columns.
        self.background_mean_ = Z.mean(axis=0)
        return self

    def raw_logit(self, X: pd.DataFrame) -> np.ndarray:
        return self.prep_.transform(X) @ self.coef_ + self.intercept_

    def params(self) -> dict[str, Any]:
        return {"C": self.C, "l1_ratio": self.l1_ratio}


# ----------------------------------------------------------------------------------------
# Trees
# ----------------------------------------------------------------------------------------
@dataclass
class ForestScorer(_Picklable):
    """Random forest (scikit-learn) on raw features with native NaN handling.
    Raw log-odds = logit of the forest's probability clipped to [EPS, 1 - EPS]."""

    n_estimators: int = 150
    min_samples_leaf: int = 20
    max_features: float = 0.3
    max_samples: float | None = 0.7
    random_state: int = 0
    n_jobs: int = 2
    model_type: str = field(default="random_forest", init=False)

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> "ForestScorer":
        from sklearn.ensemble import RandomForestClassifier

        self.forest_ = RandomForestClassifier(
            n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features, max_samples=self.max_samples, bootstrap=True,
            random_state=self.random_state, n_jobs=self.n_jobs,
        ).fit(X.to_numpy(dtype="float64"), np.asarray(y, dtype=int))
        self.feature_names_ = list(X.columns)
        return self

    def proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.forest_.predict_proba(in_order(X, self.feature_names_).to_numpy(dtype="float64"))[:, 1].astype("float64")

    def raw_logit(self, X: pd.DataFrame) -> np.ndarray:
        return logit(self.proba(X))

    def params(self) -> dict[str, Any]:
        return {"n_estimators": self.n_estimators, "min_samples_leaf": self.min_samples_leaf,
                "max_features": self.max_features, "max_samples": self.max_samples}


@dataclass
class BoostScorer(_Picklable):
    """XGBoost (binary:logistic) with monotone constraints; native NaN handling.

    Raw log-odds are computed in float64: XGBoost routes each row to its leaves
    (``pred_leaf``) and the leaf values are summed in float64 with the base margin.
    XGBoost's own margin is summed in float32 (errors of ~1e-6 over hundreds of
    trees), which would make exact SHAP additivity untestable.
    """

    outcome: str = ""
    n_estimators: int = 300
    learning_rate: float = 0.05
    max_depth: int = 3
    min_child_weight: float = 5.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    random_state: int = 0
    n_jobs: int = 2
    model_type: str = field(default="xgboost", init=False)

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> "BoostScorer":
        import xgboost as xgb

        self.feature_names_ = list(X.columns)
        self.constraints_ = monotone_constraints(self.outcome, self.feature_names_)
        self.model_ = xgb.XGBClassifier(
            n_estimators=self.n_estimators, learning_rate=self.learning_rate, max_depth=self.max_depth,
            min_child_weight=self.min_child_weight, subsample=self.subsample,
            colsample_bytree=self.colsample_bytree, reg_lambda=self.reg_lambda,
            monotone_constraints=self.constraints_, tree_method="hist", objective="binary:logistic",
            eval_metric="logloss", random_state=self.random_state, n_jobs=self.n_jobs,
        ).fit(X.to_numpy(dtype="float64"), np.asarray(y, dtype=int))
        self._index_leaves()
        rng = np.random.default_rng(self.random_state)
        take = rng.choice(len(X), size=min(BACKGROUND_ROWS, len(X)), replace=False)
        self.background_ = X.to_numpy(dtype="float64")[np.sort(take)]
        return self

    def _index_leaves(self) -> None:
        import json

        booster = self.model_.get_booster()
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

    def raw_logit(self, X: pd.DataFrame) -> np.ndarray:
        import xgboost as xgb

        data = xgb.DMatrix(in_order(X, self.feature_names_).to_numpy(dtype="float64"), missing=np.nan)
        leaves = self.model_.get_booster().predict(data, pred_leaf=True).reshape(len(X), -1)
        # Leaf node ids -> positions in the flattened (trees x nodes) table: one ``take``
        # (3x faster than 2-D fancy indexing on 50k rows).
        table = np.ascontiguousarray(self.leaf_values_)
        index = leaves.astype(np.int64)
        index += np.arange(leaves.shape[1], dtype=np.int64) * table.shape[1]
        return self.base_margin_ + table.ravel().take(index).sum(axis=1)

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("n_estimators", "learning_rate", "max_depth", "min_child_weight",
                                              "subsample", "colsample_bytree", "reg_lambda")}


def make_scorer(model_type: str, params: dict[str, Any], outcome: str, seed: int, n_jobs: int = 2):
    """An unfitted scorer of ``model_type`` with hyperparameters ``params``."""
    if model_type in ("logistic", "elastic_net"):
        return LinearScorer(model_type=model_type, random_state=seed, **params)
    if model_type == "random_forest":
        return ForestScorer(random_state=seed, n_jobs=n_jobs, **params)
    if model_type == "xgboost":
        return BoostScorer(outcome=outcome, random_state=seed, n_jobs=n_jobs, **params)
    raise ValueError(f"unknown model type {model_type!r}: choose one of {', '.join(MODEL_TYPES)}")
