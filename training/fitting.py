"""Fitting one candidate: search, horizon calibration, refit, cross-validated and test metrics.

No MLflow here (``training.run_log`` records the result). The steps, for the training part:

1. hyperparameter search in grouped cross-validation on the crude label at the headline
   horizon with IPCW weights (``training.search``), which also gives each row's
   out-of-fold score eta;
2. the horizon calibration (``modelstore.calibration``) fitted on those out-of-fold scores,
   stacked over every horizon;
3. the score model refitted on the whole training part (rows with a known label at the
   headline, IPCW-weighted);
4. cross-validated metrics for selection: fold k's scores calibrated on the other folds,
   then IPCW-weighted AUROC, log loss and calibration slope at the headline horizon;
5. the test part: the risk curve of every test procedure, evaluated at every horizon
   (``training.horizon_metrics``), with the IPCW log loss at the headline horizon.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from modelstore.calibration import HorizonCalibration
from modelstore.candidates import expit, make_scorer
from training.config import TrainConfig
from training.data import OutcomeData
from training.evaluation import replicates, weighted_log_loss, with_ci
from training.horizon_metrics import evaluate_curve, flat_metrics
from training.progress import Progress
from modelstore.model import RefractureModel
from training.search import search, trial_budget
from training.split import fold_ids

#: Cross-validated metrics used by selection (IPCW-weighted, headline horizon).
CV_METRICS = ("auroc", "log_loss", "brier", "calibration_slope", "calibration_intercept")


@dataclass
class CandidateResult:
    """One fitted candidate and its evaluation. ``test_table``: one row per horizon
    (``training.horizon_metrics.evaluate_curve``); ``test_metrics``: flat, headline under
    plain names (``auroc`` = time-dependent AUROC), ``<name>_<m>m`` per horizon."""

    model_type: str
    params: dict[str, Any]
    model: RefractureModel
    cv_metrics: dict[str, float]
    curve_test: pd.DataFrame
    test_table: pd.DataFrame
    test_metrics: dict[str, float]
    run_id: str = ""
    model_uri: str = ""
    seconds: float = 0.0
    explanation: Any = None

    @property
    def p_test(self) -> np.ndarray:
        """Risk at the headline horizon on the test rows."""
        return self.curve_test.iloc[:, self.model.calibration.index(self.model.horizon_months)].to_numpy()


def cross_fitted_headline(oof: np.ndarray, data: OutcomeData) -> np.ndarray:
    """Calibrated headline risk of the training rows: fold k's out-of-fold scores calibrated
    by a horizon calibration fitted on the other folds."""
    tr = data.train
    ids = fold_ids(len(tr), data.folds)
    out = np.empty(len(tr))
    for k in range(len(data.folds)):
        mask = ids == k
        cal = HorizonCalibration.fit(oof[~mask], data.labels[tr][~mask], data.weights[tr][~mask], data.horizons_months)
        out[mask] = expit(cal.logit(oof[mask])[:, data.k])
    return out


def cv_metrics(oof: np.ndarray, data: OutcomeData, n_boot: int, seed: int) -> dict[str, float]:
    """IPCW-weighted cross-validated metrics at the headline horizon, with bootstrap CIs."""
    y, w = data.headline(data.train)
    p = cross_fitted_headline(oof, data)
    keep = w > 0
    point, reps = replicates(y[keep], p[keep], n_boot=n_boot, seed=seed, weight=w[keep])
    return with_ci({k: point[k] for k in CV_METRICS}, reps)


def test_evaluation(model: RefractureModel, data: OutcomeData, truth: dict[float, np.ndarray] | None,
                    n_boot: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """(test curve, per-horizon table, flat metrics) of ``model`` on the test part."""
    te = data.test
    curve = model.curve_from_features(data.X.iloc[te])
    truth_test = None if truth is None else {h: v[te] for h, v in truth.items()}
    table = evaluate_curve(data.time_days[te], data.status[te], curve, data.horizons_months, n_boot, seed, truth_test)
    metrics = flat_metrics(table, model.horizon_months)
    y, w = data.headline(te)
    metrics["log_loss"] = weighted_log_loss(y, curve.iloc[:, data.k].to_numpy(), w)
    return curve, table, metrics


def fit_candidate(model_type: str, cfg: TrainConfig, data: OutcomeData, truth: dict[float, np.ndarray] | None,
                  info: dict[str, str], progress: Progress) -> CandidateResult:
    """Search, calibrate, refit and evaluate one candidate (module docstring)."""
    t0 = time.perf_counter()
    budget = trial_budget(model_type, cfg.search_trials)
    trials = max(1, budget)
    progress.step(f"{data.outcome}: {model_type}: " + (f"search, {budget} trials" if budget else "fixed parameters"))
    tr = data.train
    X_train = data.X.iloc[tr]
    y, w = data.headline(tr)
    result = search(model_type, X_train, y, w, data.folds, data.outcome, cfg.seed, cfg.search_trials, cfg.n_jobs,
                    on_trial=lambda i, loss: progress.trials(i, trials))
    searched = f" (best of {result.n_trials} trials: CV log loss {result.cv_log_loss:.4f})" if result.n_trials else ""
    progress.step(f"{data.outcome}: {model_type}: refit, cross-validated and test metrics{searched}")
    calibration = HorizonCalibration.fit(result.oof_raw, data.labels[tr], data.weights[tr], data.horizons_months)
    fit = w > 0
    scorer = make_scorer(model_type, result.params, data.outcome, cfg.seed, cfg.n_jobs)
    scorer.fit(X_train[fit], y[fit], sample_weight=w[fit])
    cv = cv_metrics(result.oof_raw, data, n_boot=min(cfg.n_bootstrap, 300), seed=cfg.seed)
    model = RefractureModel(scorer, calibration, data.outcome, data.feature_set, cfg.horizon_months,
                            list(data.X.columns), params=result.params, info=info,
                            explanation_method=cfg.shap_method)
    curve, table, metrics = test_evaluation(model, data, truth, cfg.n_bootstrap, cfg.seed)
    model.metrics = {**metrics, "cv_log_loss": cv["log_loss"], "cv_auroc": cv["auroc"]}
    return CandidateResult(model_type, result.params, model, cv, curve, table, metrics,
                           seconds=time.perf_counter() - t0)
