"""Hyperparameter search inside cross-validation on the training part (optuna, seeded).

Labels are the crude binary labels at the headline horizon and every fit and every loss
is weighted by the inverse-probability-of-censoring weights (``training.competing_risks``;
rows censored before the horizon weigh 0 and are left out of the fits, but still get an
out-of-fold score: shorter horizons use them).

The objective is the IPCW-weighted cross-validated log loss at the headline horizon
*after* Platt calibration of the pooled out-of-fold scores: the models are calibrated
afterwards anyway, so the search should reward discrimination and sharpness, not raw
calibration. The out-of-fold scores of the best trial are returned and reused to fit the
horizon calibration (``modelstore.calibration``) and for model selection, so no extra
cross-validation is needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import optuna
import pandas as pd
from joblib import Parallel, delayed

from modelstore.calibration import fit_logistic_1d
from modelstore.candidates import expit, make_scorer
from training.evaluation import weighted_log_loss

logger = logging.getLogger(__name__)

#: Fixed hyperparameters of the baseline (no search).
LOGISTIC_PARAMS: dict[str, Any] = {"C": 1e4, "l1_ratio": 0.0}
#: Trees per forest: fixed (more trees mostly cost time: 150 averages the votes well enough
#: for a risk estimate that is recalibrated afterwards).
FOREST_TREES = 150
#: The forest costs several times more per trial than the other candidates and has three
#: influential hyperparameters: it gets half the trial budget (at least 1).
FOREST_TRIAL_SHARE = 0.5


def trial_budget(model_type: str, search_trials: int) -> int:
    """Trials ``model_type`` runs for a budget of ``search_trials`` (0: none, defaults used).
    The one place the baseline's fixed parameters and the forest's share are applied."""
    if model_type == "logistic" or search_trials <= 0:
        return 0
    if model_type == "random_forest":
        return max(1, int(round(search_trials * FOREST_TRIAL_SHARE)))
    return search_trials
#: Candidates whose cross-validation folds are fitted in parallel (one thread per fit).
FOLD_PARALLEL = ("logistic", "elastic_net", "xgboost")


def suggest(model_type: str, trial) -> dict[str, Any]:
    """Hyperparameters for one optuna trial of ``model_type`` (bounded search spaces)."""
    if model_type == "elastic_net":
        # C above 1 is practically the unpenalised baseline (and saga converges slowly there).
        return {"C": trial.suggest_float("C", 1e-3, 1.0, log=True),
                "l1_ratio": trial.suggest_float("l1_ratio", 0.0, 1.0)}
    if model_type == "random_forest":
        return {"n_estimators": FOREST_TREES,
                "min_samples_leaf": trial.suggest_int("min_samples_leaf", 10, 200, log=True),
                "max_features": trial.suggest_float("max_features", 0.1, 0.5),
                "max_samples": trial.suggest_float("max_samples", 0.3, 0.8)}
    if model_type == "xgboost":
        return {"n_estimators": trial.suggest_int("n_estimators", 50, 400, step=50),
                "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
                "max_depth": trial.suggest_int("max_depth", 2, 5),
                "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 50.0, log=True),
                "subsample": trial.suggest_float("subsample", 0.5, 1.0),
                "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
                "reg_lambda": trial.suggest_float("reg_lambda", 0.1, 20.0, log=True)}
    raise ValueError(f"no search space for {model_type!r}")


def default_params(model_type: str) -> dict[str, Any]:
    """Hyperparameters used without search (baseline, or ``--search-trials 0``)."""
    if model_type == "logistic":
        return dict(LOGISTIC_PARAMS)
    if model_type == "elastic_net":
        return {"C": 0.1, "l1_ratio": 0.5}
    if model_type == "random_forest":
        return {"n_estimators": FOREST_TREES, "min_samples_leaf": 20, "max_features": 0.3, "max_samples": 0.7}
    return {"n_estimators": 200, "learning_rate": 0.05, "max_depth": 3, "min_child_weight": 5.0,
            "subsample": 0.8, "colsample_bytree": 0.8, "reg_lambda": 1.0}


def oof_raw_logit(model_type: str, params: dict[str, Any], X: pd.DataFrame, y: np.ndarray, weight: np.ndarray,
                  folds: list[tuple[np.ndarray, np.ndarray]], outcome: str, seed: int, n_jobs: int) -> np.ndarray:
    """Out-of-fold raw log-odds: each row scored by the model fitted without its fold
    (fitted on the fold's rows with positive ``weight``, weighted by it).

    Linear models and XGBoost run their folds on ``n_jobs`` threads, each fit single-threaded
    (XGBoost's OpenMP threads busy-wait and slow down many-fold when the cores are shared
    with other work; one thread per fit avoids that and gives the same model). The forest
    parallelises over its trees and runs its folds one after another.
    """
    def one(train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inner = 1 if model_type in FOLD_PARALLEL else n_jobs
        fit_rows = train[weight[train] > 0]
        scorer = make_scorer(model_type, params, outcome, seed, inner).fit(X.iloc[fit_rows], y[fit_rows],
                                                                            sample_weight=weight[fit_rows])
        return val, scorer.raw_logit(X.iloc[val])

    out = np.full(len(y), np.nan)
    if model_type in FOLD_PARALLEL and n_jobs > 1:
        parts = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(one)(tr, va) for tr, va in folds)
    else:
        parts = [one(tr, va) for tr, va in folds]
    for val, raw in parts:
        out[val] = raw
    return out


def calibrated_log_loss(raw: np.ndarray, y: np.ndarray, weight: np.ndarray) -> float:
    """Weighted log loss of ``raw`` log-odds after weighted Platt scaling fitted on them."""
    slope, intercept = fit_logistic_1d(raw, y, weight)
    return weighted_log_loss(y, expit(slope * raw + intercept), weight)


@dataclass
class SearchResult:
    """Best hyperparameters, their cross-validated calibrated log loss and OOF log-odds."""

    model_type: str
    params: dict[str, Any]
    cv_log_loss: float
    oof_raw: np.ndarray
    n_trials: int


def search(model_type: str, X: pd.DataFrame, y: np.ndarray, weight: np.ndarray,
           folds: list[tuple[np.ndarray, np.ndarray]], outcome: str, seed: int, search_trials: int, n_jobs: int = 2,
           on_trial: Callable[[int, float], None] | None = None) -> SearchResult:
    """Search ``model_type`` hyperparameters with ``trial_budget`` TPE trials (seeded).

    ``y``: crude labels at the headline horizon (any value where ``weight`` is 0);
    ``weight``: their IPCW weights. ``logistic`` and ``search_trials == 0`` use
    ``default_params`` (cross-validated once for the OOF scores). ``on_trial(i, loss)`` is
    called after each trial (progress bars).
    """
    n_trials = trial_budget(model_type, search_trials)
    if n_trials == 0:
        params = default_params(model_type)
        oof = oof_raw_logit(model_type, params, X, y, weight, folds, outcome, seed, n_jobs)
        loss = calibrated_log_loss(oof, y, weight)
        if on_trial:
            on_trial(1, loss)
        return SearchResult(model_type, params, loss, oof, 0)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    oofs: dict[int, np.ndarray] = {}

    def objective(trial) -> float:
        params = suggest(model_type, trial)
        oof = oof_raw_logit(model_type, params, X, y, weight, folds, outcome, seed, n_jobs)
        oofs[trial.number] = oof
        return calibrated_log_loss(oof, y, weight)

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, n_trials // 2)))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    # The defaults are a sensible first guess: enqueue them so search never does worse.
    study.enqueue_trial({k: v for k, v in default_params(model_type).items() if k != "n_estimators" or model_type == "xgboost"})
    callbacks = [lambda st, tr: on_trial(tr.number + 1, tr.value)] if on_trial else []
    study.optimize(objective, n_trials=n_trials, callbacks=callbacks)
    best = study.best_trial
    params = suggest(model_type, optuna.trial.FixedTrial(best.params))
    logger.debug("%s: best CV log loss %.4f after %d trials", model_type, best.value, n_trials)  # training's progress says it
    return SearchResult(model_type, params, float(best.value), oofs[best.number], n_trials)
