"""What a training run records in MLflow: parameters, metrics, tables, figures, the model.

Each function logs into the *active* run; ``training.pipeline`` opens and closes the runs.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from training import plots
from modelstore.artifact import log_model
from modelstore.candidates import monotone_constraints
from training.config import TrainConfig
from training.data import OutcomeData
from training.fitting import CandidateResult


def log_text(text: str, name: str) -> None:
    mlflow.log_text(text, name)


def log_figure(fig, name: str) -> None:
    mlflow.log_figure(fig, name)
    plots.close(fig)


def clean(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Finite metrics only, names prefixed (MLflow refuses NaN in some stores)."""
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.floating)) and np.isfinite(v)}


def log_setup(cfg: TrainConfig, data: OutcomeData, tags: dict[str, str]) -> None:
    """Parent run: tags, configuration and the counts at the headline horizon."""
    mlflow.set_tags({**tags, "run_kind": "parent"})
    mlflow.log_params({
        "raw_dir": str(cfg.raw_dir.resolve()) if hasattr(cfg.raw_dir, "resolve") else str(cfg.raw_dir),
        "feature_set": data.feature_set, "horizon_months": cfg.horizon_months,
        "horizons_months": ",".join(f"{h:g}" for h in cfg.horizons_months), "seed": cfg.seed,
        "search_trials": cfg.search_trials, "test_size": cfg.test_size, "cv_folds": cfg.cv_folds,
        "n_bootstrap": cfg.n_bootstrap, "candidates": ",".join(cfg.candidates), "n_features": data.X.shape[1],
        "censoring_model": cfg.censoring_model, "exclude_invalid": cfg.exclude_invalid,
    })
    c, tr, te = data.counts(), data.counts(data.train), data.counts(data.test)
    mlflow.log_metrics({"n_procedures": c["n"], "n_events": c["events"], "n_deaths_first": c["deaths_first"],
                        "n_censored": c["censored_before"], "n_train": tr["n"], "n_test": te["n"],
                        "n_test_events": te["events"]})


def _headline_curves(label: str, data: OutcomeData, p: np.ndarray) -> dict[str, tuple]:
    y, w = data.headline(data.test)
    return {label: (y, p, w)}


def log_candidate(res: CandidateResult, cfg: TrainConfig, data: OutcomeData, example: pd.DataFrame,
                  tags: dict[str, str], truth: dict[float, np.ndarray] | None) -> None:
    """Child run: hyperparameters, calibration, metrics, per-horizon table, plots, SHAP and
    the model (no pickles: ``modelstore.artifact.log_model``)."""
    model = res.model
    mlflow.set_tags({**tags, "candidate": res.model_type})
    mlflow.log_params({f"hp_{k}": v for k, v in res.params.items()})
    cal = model.calibration
    mlflow.log_params({"calibration_slope_b": round(cal.slope, 6),
                       **{f"calibration_intercept_{h:g}m": round(a, 6) for h, a in zip(cal.horizons_months, cal.intercepts)}})
    mlflow.log_metrics({**clean(res.test_metrics, "test_"), **clean(res.cv_metrics, "cv_"), "fit_seconds": res.seconds})
    log_text(res.test_table.to_csv(index=False), "horizon_metrics.csv")
    curves = _headline_curves(res.model_type, data, res.p_test)
    if truth is not None:
        curves.update(_headline_curves("oracle (true risk)", data, truth[cfg.horizon_months][data.test]))
    log_figure(plots.roc_figure(curves, f"{data.outcome} by {cfg.horizon_months:g} mo, test set"), "plots/roc.png")
    expl = res.explanation
    log_figure(plots.shap_beeswarm_figure(expl, f"{res.model_type}: SHAP at {cfg.horizon_months:g} months, {data.outcome}"),
               "shap/beeswarm.png")
    log_figure(plots.shap_bar_figure(expl, f"{res.model_type}: mean |SHAP|, {data.outcome}"), "shap/mean_abs_shap.png")
    mean_abs = pd.Series(np.abs(expl.values).mean(axis=0), index=expl.feature_names).sort_values(ascending=False)
    log_text(mean_abs.to_frame("mean_abs_shap_logodds").to_csv(), "shap/mean_abs_shap.csv")
    if res.model_type == "xgboost":
        cons = dict(zip(model.feature_names, monotone_constraints(data.outcome, model.feature_names)))
        mlflow.log_dict({k: v for k, v in cons.items() if v}, "monotone_constraints.json")
    res.model_uri = log_model(model, example)


def log_comparison(results: dict[str, CandidateResult], data: OutcomeData, cfg: TrainConfig,
                   truth: dict[float, np.ndarray] | None, calibration: dict[str, pd.DataFrame],
                   decision: dict[str, pd.DataFrame]) -> None:
    """Parent run: every candidate (and the oracle) on the same test rows: time-dependent ROC
    at the headline, calibration by decile at every horizon, decision curve, risk over time."""
    te = data.test
    title = f"{data.outcome}, test set (n={len(te)})"
    curves: dict[str, tuple] = {}
    for k, r in results.items():
        curves.update(_headline_curves(k, data, r.p_test))
    over_time = {k: r.test_table for k, r in results.items()}
    if truth is not None:
        curves.update(_headline_curves("oracle (true risk)", data, truth[cfg.horizon_months][te]))
    log_figure(plots.roc_figure(curves, f"{title}, by {cfg.horizon_months:g} months"), "plots/roc_all.png")
    log_figure(plots.calibration_figure(calibration, title), "plots/calibration_all.png")
    log_figure(plots.decision_curve_figure(decision, f"{title}, by {cfg.horizon_months:g} months"),
               "plots/decision_curve_all.png")
    log_figure(plots.risk_over_time_figure(over_time, title), "plots/risk_over_time.png")
    log_text(pd.concat([t.assign(model=k) for k, t in calibration.items()]).to_csv(index=False),
             "calibration_by_decile.csv")
    log_text(pd.concat([t.assign(model=k) for k, t in decision.items()]).to_csv(index=False), "decision_curve.csv")
    log_text(pd.concat([r.test_table.assign(model=k) for k, r in results.items()]).to_csv(index=False),
             "horizon_metrics.csv")
