"""Test-set evaluation of risk curves, on the model's horizons (months), with the simulator's
oracle when it is known. Adapts ``training.time_metrics`` (days, competing risks, IPCW,
bootstrap over patients) to the model's outputs; computes nothing of its own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.labels import horizon_days
from modelstore.estimand import horizon_column
from training.evaluation import THRESHOLDS
from training.time_metrics import calibration_table, evaluate_at_horizons, net_benefit, net_benefit_replicates

#: Columns of ``evaluate_at_horizons`` reported per horizon, and the short names used in
#: flat MLflow metrics (``auroc`` is the time-dependent AUROC).
REPORTED = {"td_auroc": "auroc", "brier": "brier", "calibration_slope": "calibration_slope",
            "calibration_intercept": "calibration_intercept", "observed_expected": "observed_expected",
            "mean_predicted": "mean_predicted", "observed_risk": "observed_risk"}


def evaluate_curve(time_days: np.ndarray, status: np.ndarray, curve: pd.DataFrame, horizons_months,
                   n_boot: int, seed: int, truth: dict[float, np.ndarray] | None = None, *,
                   patients: np.ndarray) -> pd.DataFrame:
    """One row per horizon (``horizon_months`` first) of ``evaluate_at_horizons`` for the
    curve's columns ``p_<m>m``; with ``truth`` (months -> true risk) the oracle columns too.
    ``patients``: the patient id of each row (the bootstrap resamples patients)."""
    risks = {horizon_days(h): curve[horizon_column(h)].to_numpy(dtype="float64") for h in horizons_months}
    true = None if truth is None else {horizon_days(h): np.asarray(truth[h], dtype="float64") for h in horizons_months}
    table = evaluate_at_horizons(time_days, status, risks, n_boot=n_boot, seed=seed, truth=true, patients=patients)
    months = {round(horizon_days(h), 6): float(h) for h in horizons_months}
    table.insert(0, "horizon_months", [months[round(float(d), 6)] for d in table["horizon"]])
    return table


def flat_metrics(table: pd.DataFrame, headline_months: float, prefix: str = "") -> dict[str, float]:
    """Flat metrics from ``evaluate_curve``: the headline horizon's under plain names
    (``auroc``, ``auroc_ci_low``...), every horizon's as ``<name>_<m>m``. ``prefix='oracle_'``
    reads the oracle's columns."""
    out: dict[str, float] = {}
    for _, row in table.iterrows():
        m = row["horizon_months"]
        for col, name in REPORTED.items():
            for suffix in ("", "_ci_low", "_ci_high"):
                key = f"{prefix}{col}{suffix}"
                if key not in row:
                    continue
                out[f"{name}{suffix}_{m:g}m"] = float(row[key])
                if abs(m - headline_months) < 1e-9:
                    out[f"{name}{suffix}"] = float(row[key])
        if not prefix:
            for extra in ("mean_abs_diff_truth", "td_auroc_diff"):
                for suffix in ("", "_ci_low", "_ci_high"):
                    if f"{extra}{suffix}" in row:
                        out[f"{extra}{suffix}_{m:g}m"] = float(row[f"{extra}{suffix}"])
    return out


def calibration_tables(time_days: np.ndarray, status: np.ndarray, curve: pd.DataFrame, horizons_months,
                       n_boot: int, seed: int, *, patients: np.ndarray) -> pd.DataFrame:
    """Aalen-Johansen observed vs mean predicted risk by risk decile, at every horizon
    (CIs resample the patients of each decile: ``patients`` one id per row)."""
    parts = []
    for h in horizons_months:
        t = calibration_table(time_days, status, curve[horizon_column(h)].to_numpy(), horizon_days(h),
                              bins=10, n_boot=n_boot, seed=seed, patients=patients)
        t.insert(0, "horizon_months", float(h))
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def decision_curve(time_days: np.ndarray, status: np.ndarray, risk: np.ndarray, horizon_months: float,
                   n_boot: int, seed: int, thresholds=THRESHOLDS, *, patients: np.ndarray) -> pd.DataFrame:
    """Net benefit at ``horizon_months`` (``time_metrics.net_benefit``) at each threshold,
    with 95 % percentile bootstrap CIs of the net benefit and of treat-all (patients
    resampled with all their rows, ``patients`` one id per row; seeded)."""
    h = horizon_days(horizon_months)
    point = net_benefit(time_days, status, risk, h, thresholds)
    nb, all_ = net_benefit_replicates(time_days, status, risk, h, thresholds, n_boot, seed, patients=patients)
    point["net_benefit_ci_low"], point["net_benefit_ci_high"] = np.percentile(nb, [2.5, 97.5], axis=0)
    point["treat_all_ci_low"], point["treat_all_ci_high"] = np.percentile(all_, [2.5, 97.5], axis=0)
    point.insert(0, "horizon_months", float(horizon_months))
    return point


def net_benefit_metrics(curve: pd.DataFrame, prefix: str = "") -> dict[str, float]:
    """``net_benefit_05`` ... (with CIs) and ``treat_all_05`` ... from ``decision_curve``."""
    out: dict[str, float] = {}
    for _, row in curve.iterrows():
        k = f"{int(round(row['threshold'] * 100)):02d}"
        for suffix in ("", "_ci_low", "_ci_high"):
            out[f"{prefix}net_benefit_{k}{suffix}"] = float(row[f"net_benefit{suffix}"])
        out[f"{prefix}treat_all_{k}"] = float(row["treat_all"])
    return out
