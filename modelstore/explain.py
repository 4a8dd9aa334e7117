"""SHAP explanations in calibrated log-odds at one horizon: the one explanation module
for training (plots, model card) and serving (per-patient contributions).

Every explanation is *additive on the scale the product reports*:
``base_value + values.sum(axis=1)`` equals the model's calibrated log-odds at the
explained horizon for each record (``Explanation.logit``), for every candidate type: to
floating-point accuracy, or within ``ADDITIVITY_TOLERANCE`` (1e-5, checked on every call)
for XGBoost's float32 path-dependent TreeSHAP. Calibration at horizon t is an affine map of the score
(``logit F(t) = a_t + b * eta``, ``modelstore.calibration``), so contributions are
multiplied by ``b`` (the same at every horizon) and the base becomes ``a_t + b * base``;
additivity is preserved exactly at each horizon.

How the raw (uncalibrated) log-odds are decomposed, per model type:

- ``logistic`` / ``elastic_net``: linear SHAP with independent features (the closed form
  ``shap.LinearExplainer`` computes): column j contributes ``coef_j * (z_j - mean_j)``
  against the training mean of the encoded column; the columns that come from one
  feature (its value, its squared term, its missing indicator) are summed into that
  feature. Exact.
- ``xgboost``, one of two methods chosen at training time (``XGB_METHODS``; stored in the
  model artifact as ``explanation_method`` and named in the model card):

  * ``path_dependent`` (default): XGBoost's own TreeSHAP (``Booster.predict(...,
    pred_contribs=True)``, multi-threaded, float32). Each contribution is the change of
    the *conditional* expectation ``E[f(X) | X_S = x_S]`` as the feature joins, the
    conditional distribution estimated by the training cover of each tree branch. Its
    float32 sums are within ~1e-6 of the model's log-odds (``raw_logit``: 25-tree float32
    blocks added in float64, within ~5e-7 of the float64 leaf sum); every
    call checks the sum against those log-odds and, if any record is off by more
    than ``ADDITIVITY_TOLERANCE`` (1e-5 in calibrated log-odds, below any clinical
    meaning), recomputes with interventional TreeSHAP and says so in ``method``.
  * ``interventional``: ``shap.TreeExplainer(feature_perturbation="interventional")``
    against a fixed background sample of training rows stored with the model: the
    change of the *marginal* expectation ``E_background[f(x_S, X_rest)]``, features set
    independently of the others. Float64, exact up to ~1e-8 against the float64 leaf
    sum (``raw_logit_exact``), so within ~5e-7 of the served log-odds; ~30x slower.

  The two differ when features are correlated: path-dependent credit follows the
  correlations the trees learned (a feature the trees split on can receive part of the
  credit of a correlated one), interventional credit does not.
- ``random_forest``: path-dependent TreeSHAP of the forest's probability (exact on the
  probability scale). The forest's raw output is a probability, so the contributions
  are **rescaled** onto the log-odds scale: each record's contributions are multiplied
  by the secant slope ``(logit f(x) - logit E[f]) / (f(x) - E[f])`` of the logit
  between the base value and the prediction (the derivative when they coincide). Sums
  are then exact in log-odds and signs and relative sizes within a record are kept;
  this is an approximation: it is not the SHAP decomposition of the log-odds itself
  (that is not defined for an averaging forest), and it is stated in the model card.

Display names and units come from ``features.catalog``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import shap
import xgboost as xgb

from features.assemble import select_features
from features.catalog import FEATURES_BY_NAME, display_name
from modelstore.candidates import logit

#: How XGBoost models may be explained (``explain(..., xgb_method=...)``), default first.
XGB_METHODS = ("path_dependent", "interventional")
DEFAULT_XGB_METHOD = XGB_METHODS[0]
#: Largest |base + sum of contributions - log-odds| accepted from XGBoost's float32
#: TreeSHAP, in calibrated log-odds: the clinical meaning does not change below it.
ADDITIVITY_TOLERANCE = 1e-5

METHODS = {
    "logistic": "linear SHAP (independent features, training-mean background), exact",
    "elastic_net": "linear SHAP (independent features, training-mean background), exact",
    "xgboost": "interventional TreeSHAP against a training background sample, exact in log-odds",
    "random_forest": "path-dependent TreeSHAP on probability, rescaled to log-odds by the logit secant slope (approximation; sums are exact)",
}
XGB_METHOD_TEXT = {
    "path_dependent": "path-dependent TreeSHAP (XGBoost's own `pred_contribs`, conditional expectations "
                      "estimated from the training cover of each branch; additive within 1e-5 in log-odds)",
    "interventional": METHODS["xgboost"] + " (marginal expectations: features set independently of each other)",
}


def method_text(model_type: str, xgb_method: str = DEFAULT_XGB_METHOD) -> str:
    """One sentence naming the explanation method of a model type (model card, API)."""
    return XGB_METHOD_TEXT[xgb_method] if model_type == "xgboost" else METHODS[model_type]


@dataclass
class Explanation:
    """Per-record feature contributions to the calibrated log-odds.

    ``base_value``: calibrated log-odds of the reference (background) patient;
    ``values``: (n, k) contributions in log-odds, one column per feature;
    ``feature_values``: (n, k) the feature values explained (NaN = missing), in the units
    named by ``units``. ``display_names`` are clinical words with unit.
    """

    base_value: float
    values: np.ndarray
    feature_names: list[str]
    display_names: list[str]
    units: list[str]
    feature_values: pd.DataFrame
    method: str = ""
    model_logit: np.ndarray | None = None
    #: The model's raw (uncalibrated) score eta(x) when the explainer computed it to check
    #: its sum (float32 TreeSHAP), so a caller that also needs the risk curve reuses it.
    score: np.ndarray | None = None

    def logit(self) -> np.ndarray:
        """Calibrated log-odds per record: base_value + sum of contributions."""
        return self.base_value + self.values.sum(axis=1)

    def probability(self) -> np.ndarray:
        """Calibrated probability per record: the logistic of the model's own float64
        log-odds (``model_logit``) when the explainer computed them (float32 TreeSHAP), so
        the probability is the one ``/predict`` gives; else of ``logit()`` (exact)."""
        z = self.logit() if self.model_logit is None else self.model_logit
        return 1.0 / (1.0 + np.exp(-z))

    def frame(self) -> pd.DataFrame:
        """Contributions as a DataFrame (records x feature names)."""
        return pd.DataFrame(self.values, index=self.feature_values.index, columns=self.feature_names)


def raw_contributions(scorer, X: pd.DataFrame, xgb_method: str = DEFAULT_XGB_METHOD,
                      tolerance: float = ADDITIVITY_TOLERANCE) -> tuple[float, np.ndarray, str, np.ndarray | None]:
    """(base, values, method text, raw log-odds or None) decomposing ``scorer.raw_logit(X)``
    (uncalibrated log-odds; returned when the method had to compute them to check its sum).
    ``tolerance``: largest additivity error accepted from the float32 path-dependent
    method, in raw log-odds (else interventional is used)."""
    kind = scorer.model_type
    if kind in ("logistic", "elastic_net"):
        return (*_linear(scorer, X), METHODS[kind], None)
    if kind == "xgboost":
        if xgb_method not in XGB_METHODS:
            raise ValueError(f"unknown XGBoost explanation method {xgb_method!r}: choose one of {', '.join(XGB_METHODS)}")
        if xgb_method == "path_dependent":
            base, values = _boosted_path_dependent(scorer, X)
            raw = scorer.raw_logit(X)
            error = np.abs(base + values.sum(axis=1) - raw)
            if not len(error) or float(error.max()) <= tolerance:
                return base, values, XGB_METHOD_TEXT["path_dependent"], raw
            # float32 sums of a large ensemble can drift past the tolerance: fall back to
            # the exact float64 method rather than report a sum that is off.
            return (*_boosted(scorer, X), XGB_METHOD_TEXT["interventional"]
                    + f" (path-dependent sum off by {float(error.max()):.1e}, above {tolerance:.0e})", None)
        return (*_boosted(scorer, X), XGB_METHOD_TEXT["interventional"], None)
    if kind == "random_forest":
        return (*_forest(scorer, X), METHODS[kind], None)
    raise ValueError(f"no explainer for model type {kind!r}")


def explain(scorer, X: pd.DataFrame, slope: float = 1.0, intercept: float = 0.0,
            xgb_method: str = DEFAULT_XGB_METHOD) -> Explanation:
    """Explain ``scorer`` on features ``X`` in calibrated log-odds (``slope * raw + intercept``).
    ``xgb_method``: ``XGB_METHODS`` entry used for an XGBoost scorer (others ignore it);
    the additivity tolerance applies in calibrated log-odds."""
    X = select_features(X, list(scorer.feature_names_)) if hasattr(scorer, "feature_names_") else X
    tolerance = ADDITIVITY_TOLERANCE / max(abs(slope), 1e-12)
    base, values, method, raw = raw_contributions(scorer, X, xgb_method, tolerance)
    names = list(X.columns)
    return Explanation(
        base_value=float(slope * base + intercept),
        values=slope * values,
        feature_names=names,
        display_names=[display_name(n) for n in names],
        units=[FEATURES_BY_NAME[n].unit if n in FEATURES_BY_NAME else "" for n in names],
        feature_values=X.copy(),
        method=method,
        model_logit=None if raw is None else slope * raw + intercept,
        score=raw,
    )


def _linear(scorer, X: pd.DataFrame) -> tuple[float, np.ndarray]:
    Z = scorer.encode(X)
    per_column = scorer.coef_ * (Z - scorer.background_mean_)
    base = float(scorer.intercept_ + scorer.coef_ @ scorer.background_mean_)
    names = list(scorer.feature_names_)
    position = {n: i for i, n in enumerate(names)}
    group = np.zeros((len(scorer.sources_), len(names)))
    for col, source in enumerate(scorer.sources_):
        group[col, position[source]] = 1.0
    return base, per_column @ group


def _tree_explainer(scorer):
    """shap.TreeExplainer for a tree scorer, built once per loaded model (not pickled)."""
    cached = scorer.__dict__.get("_explainer_cache")
    if cached is not None:
        return cached
    if scorer.model_type == "xgboost":
        explainer = shap.TreeExplainer(scorer.booster_, data=scorer.background_,
                                       feature_perturbation="interventional", model_output="raw")
    else:
        explainer = shap.TreeExplainer(scorer.forest_, feature_perturbation="tree_path_dependent")
    scorer.__dict__["_explainer_cache"] = explainer
    return explainer


def _boosted(scorer, X: pd.DataFrame) -> tuple[float, np.ndarray]:
    explainer = _tree_explainer(scorer)
    values = np.asarray(explainer.shap_values(X.to_numpy(dtype="float64"), check_additivity=False), dtype="float64")
    # Interventional SHAP's base is the mean model output over the background. shap takes
    # the margin of XGBoost's float32 base_score in float32, ~1e-8 off the float64 margin
    # ``raw_logit`` uses when the base score is not 0.5 (weighted fits); the same mean
    # taken from ``raw_logit`` keeps the sum exact.
    background = pd.DataFrame(scorer.background_, columns=scorer.feature_names_)
    return float(np.mean(scorer.raw_logit(background))), values


def _boosted_path_dependent(scorer, X: pd.DataFrame) -> tuple[float, np.ndarray]:
    """XGBoost's TreeSHAP on the margin: its last column is the bias (the same for every
    row: the cover-weighted mean margin); float32, computed on the booster's threads."""
    if len(X) == 0:
        return float(scorer.base_margin_), np.zeros((0, X.shape[1]))
    # The matrix is built on the explanation's threads too (XGBoost's default is every
    # core, which for a micro-batch of a few rows costs more in thread hand-offs than it saves).
    threads = getattr(scorer, "explain_threads_", None) or -1
    data = xgb.DMatrix(X.to_numpy(dtype="float64"), missing=np.nan, nthread=threads)
    contribs = scorer.booster_.predict(data, pred_contribs=True)
    return float(contribs[0, -1]), contribs[:, :-1].astype("float64")


def _forest(scorer, X: pd.DataFrame) -> tuple[float, np.ndarray]:
    explainer = _tree_explainer(scorer)
    raw = np.asarray(explainer.shap_values(X.to_numpy(dtype="float64"), check_additivity=False), dtype="float64")
    phi = raw[..., 1] if raw.ndim == 3 else raw
    base_p = float(np.ravel(explainer.expected_value)[-1])
    f = base_p + phi.sum(axis=1)  # equals the forest's probability (path-dependent SHAP is exact)
    base_logit = float(logit(np.array([base_p]))[0])
    diff = f - base_p
    derivative = 1.0 / (np.clip(base_p, 1e-12, 1) * np.clip(1 - base_p, 1e-12, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        secant = np.where(np.abs(diff) > 1e-12, (logit(f) - base_logit) / diff, derivative)
    return base_logit, phi * secant[:, None]
