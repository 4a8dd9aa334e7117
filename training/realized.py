"""Realized performance: how the served models did on the patients they scored, once the
outcomes are known.

Pure: frames from the prediction store in (``predictionlog.store.PredictionStore``:
``scores_frame`` and ``outcomes_frame``), DataFrames out; ``refracture performance``
reads the store, writes the report, the MLflow run and the figures the service exports.

The estimators are the site report's, called, not rewritten: each model version's
predictions at a horizon go through ``training.site_eval.evaluate_outcome`` (td-AUROC,
O/E, calibration slope and intercept, Brier with 95 % bootstrap CIs; calibration by
decile; the decision curve), censoring-aware as there (IPCW, death competing), and the
months and the champion-challenger pairs through ``training.time_metrics.evaluate_at_horizons``.

Which predictions count, at a horizon h:

- **matured**: linked to an export whose data cut is at least h after the surgery, so
  every patient could have been followed to h; a loss to follow-up before h is handled by
  the inverse-probability-of-censoring weights, as in the site report. Younger
  predictions wait (an event already seen among them would bias O/E upwards, their
  non-events being unknown yet);
- **once per procedure and version**: a procedure scored several times by the same model
  version (a repeated request, the page reloaded) counts once, with its first prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.labels import horizon_days
from modelstore.estimand import horizon_column
from training.site_eval import evaluate_outcome
from training.time_metrics import evaluate_at_horizons

#: The figures reported per model version, outcome and horizon, each with its 95 % CI.
HEADLINE_METRICS = ("observed_expected", "calibration_slope", "td_auroc")
#: Realized O/E outside this band, with a 95 % interval that excludes 1, on at least
#: ``MIN_MATURED_ALERT`` matured predictions, is a calibration alert (a fifth under or a
#: quarter over, beyond chance). docs/prometheus/refracture-realized.rules.yml holds the
#: same numbers (a test checks they agree).
OE_BAND = (0.8, 1.25)
MIN_MATURED_ALERT = 100
#: ... and at least this many events: below, a percentile interval of a ratio is no
#: interval (no event gives O/E 0 "between 0 and 0"), and one event gives a slope of anything.
MIN_EVENTS_ALERT = 20
#: A calibration slope whose 95 % interval lies below this: risks too extreme.
SLOPE_ALERT_BELOW = 0.8
#: Bootstrap resamples per month of prediction (a month holds few events: its intervals
#: are wide whatever the number of resamples).
N_BOOT_MONTHS = 100


def matured(scores: pd.DataFrame, outcomes: pd.DataFrame, horizon_months: float) -> pd.DataFrame:
    """The scores whose outcome is linked and matured at ``horizon_months``, one per
    procedure, outcome, role and model version (the first logged), with the follow-up
    (``time_days``, ``status``, ``patient_hash``, ``data_cut``) beside them."""
    # The export's surgery date: the follow-up time counts from it.
    linked = scores.merge(outcomes.rename(columns={"surgery_date": "surgery_date_linked"}),
                          on=["prediction_id", "outcome"], how="inner")
    followed = (pd.to_datetime(linked["data_cut"]) - pd.to_datetime(linked["surgery_date_linked"])).dt.days
    linked = linked[followed.to_numpy(dtype="float64") >= horizon_days(horizon_months)]
    linked = linked.sort_values("logged_at", kind="stable")
    first = ~linked.duplicated(["key_hash", "outcome", "role", "model_version"], keep="first")
    return linked[first].reset_index(drop=True)


@dataclass
class Realized:
    """Everything ``refracture performance`` reports.

    ``metrics``: one row per outcome, model version, role and horizon (days, as the site
    report's frames) with ``matured`` (= ``n``), ``events`` and every metric of
    ``time_metrics.evaluate_at_horizons`` with CIs, ``cohort`` naming the version;
    ``calibration`` and ``decision`` as ``evaluate_outcome`` returns them; ``by_month``:
    O/E, slope and AUROC per month of prediction; ``paired``: champion and challenger on
    the same predictions, the AUROC difference with its paired CI."""

    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)
    decision: pd.DataFrame = field(default_factory=pd.DataFrame)
    by_month: pd.DataFrame = field(default_factory=pd.DataFrame)
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)


def cohort_name(outcome: str, version: str, role: str) -> str:
    """How a version is named in the report's tables and figures."""
    return f"v{version} ({role})"


def realized_performance(scores: pd.DataFrame, outcomes: pd.DataFrame, horizons_months, headline_months: float,
                         n_boot: int = 200, seed: int = 0, by_month: bool = True) -> Realized:
    """Realized performance of every model version in ``scores`` (module docstring).

    ``scores``: ``PredictionStore.scores_frame()``; ``outcomes``:
    ``PredictionStore.outcomes_frame()``; ``horizons_months``: the horizons to report;
    ``headline_months``: the decision curve's horizon; ``by_month``: also the figures per
    month of prediction (the slow part). Versions with no matured prediction at a horizon
    have no row there."""
    if scores.empty or outcomes.empty:
        return Realized()
    parts: dict[str, list[pd.DataFrame]] = {"metrics": [], "calibration": [], "decision": [], "by_month": [], "paired": []}
    for h in horizons_months:
        rows = matured(scores, outcomes, h)
        col = horizon_column(h)
        for (outcome, version, role), part in rows.groupby(["outcome", "model_version", "role"], sort=True):
            ok = part[col].notna().to_numpy()
            part = part[ok]
            if part.empty:
                continue
            t, s = part["time_days"].to_numpy(dtype="float64"), part["status"].to_numpy(dtype="int64")
            tag = {"model_name": part["model_name"].iat[0], "model_version": version, "role": role,
                   "horizon_months": float(h)}
            res = evaluate_outcome(part[[col]], t, s, [h], h, pd.DataFrame(index=part.index),
                                   cohort=cohort_name(outcome, version, role), outcome=outcome, n_boot=n_boot, seed=seed)
            parts["metrics"].append(res["metrics"].assign(matured=len(part), **tag))
            parts["calibration"].append(res["calibration"].assign(**tag))
            if abs(h - headline_months) < 1e-9:
                parts["decision"].append(res["decision"].assign(**tag))
            if by_month:
                parts["by_month"].append(_by_month(part, col, h, seed).assign(outcome=outcome, **tag))
        parts["paired"].append(_paired(rows, col, h, n_boot, seed))
    out = {k: pd.concat([p for p in v if len(p)], ignore_index=True) if any(len(p) for p in v) else pd.DataFrame()
           for k, v in parts.items()}
    return Realized(**out)


def _by_month(part: pd.DataFrame, col: str, horizon_months: float, seed: int) -> pd.DataFrame:
    """O/E, slope and AUROC (with CIs) of the predictions made in each calendar month."""
    month = pd.to_datetime(part["logged_at"]).dt.strftime("%Y-%m").to_numpy()
    rows = []
    hd = horizon_days(horizon_months)
    for m in sorted(set(month)):
        sel = month == m
        t = part["time_days"].to_numpy(dtype="float64")[sel]
        s = part["status"].to_numpy(dtype="int64")[sel]
        table = evaluate_at_horizons(t, s, {hd: part[col].to_numpy(dtype="float64")[sel]}, n_boot=N_BOOT_MONTHS,
                                     seed=seed)
        row = table.iloc[0].to_dict()
        rows.append({"month": m, **{k: row[k] for k in ("horizon", "n", "events", "mean_predicted", "observed_risk")},
                     **{f"{k}{suffix}": row[f"{k}{suffix}"] for k in HEADLINE_METRICS
                        for suffix in ("", "_ci_low", "_ci_high")}})
    return pd.DataFrame(rows)


def _paired(rows: pd.DataFrame, col: str, horizon_months: float, n_boot: int, seed: int) -> pd.DataFrame:
    """Champion and challenger scored on the same predictions (a challenger in shadow):
    both sets of metrics on the same bootstrap resamples, and the champion's AUROC minus
    the challenger's with its paired 95 % CI. The challenger's risks take the place of
    ``evaluate_at_horizons``' oracle (its ``truth``), whose figures are computed on the
    same resamples; nothing else about them is an oracle."""
    champ = rows[rows["role"] == "champion"]
    chall = rows[rows["role"] == "challenger"]
    if champ.empty or chall.empty:
        return pd.DataFrame()
    both = champ.merge(chall[["prediction_id", "outcome", "model_version", col]], on=["prediction_id", "outcome"],
                       suffixes=("", "_challenger"))
    both = both[both[col].notna() & both[f"{col}_challenger"].notna()]
    out = []
    hd = horizon_days(horizon_months)
    for (outcome, v1, v2), part in both.groupby(["outcome", "model_version", "model_version_challenger"], sort=True):
        t, s = part["time_days"].to_numpy(dtype="float64"), part["status"].to_numpy(dtype="int64")
        table = evaluate_at_horizons(t, s, {hd: part[col].to_numpy(dtype="float64")}, n_boot=n_boot, seed=seed,
                                     truth={hd: part[f"{col}_challenger"].to_numpy(dtype="float64")})
        r = table.iloc[0]
        row = {"outcome": outcome, "champion_version": v1, "challenger_version": v2, "horizon_months": float(horizon_months),
               "matured": int(r["n"]), "events": int(r["events"])}
        for k in HEADLINE_METRICS + ("mean_predicted",):
            for suffix in ("", "_ci_low", "_ci_high"):
                row[f"champion_{k}{suffix}"] = float(r[f"{k}{suffix}"])
                row[f"challenger_{k}{suffix}"] = float(r[f"oracle_{k}{suffix}"])
        for suffix in ("", "_ci_low", "_ci_high"):
            row[f"td_auroc_diff{suffix}"] = float(r[f"td_auroc_diff{suffix}"])
        out.append(row)
    return pd.DataFrame(out)


def promotion_evidence(scores: pd.DataFrame, outcomes: pd.DataFrame, outcome: str, current: str, candidate: str,
                       horizons_months, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """The realized comparison ``refracture promote`` shows before it moves the champion:
    the current champion version (its answers) and the candidate (scored in shadow as the
    challenger) on the same matured predictions of ``outcome``, at each horizon with any
    (``_paired``'s rows). Empty when the candidate was never scored in shadow, or none of
    those predictions has matured."""
    keep = (scores["outcome"] == outcome) & (
        ((scores["role"] == "champion") & (scores["model_version"] == str(current)))
        | ((scores["role"] == "challenger") & (scores["model_version"] == str(candidate))))
    parts = [_paired(matured(scores[keep], outcomes, h), horizon_column(h), h, n_boot, seed) for h in horizons_months]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def calibration_alerts(metrics: pd.DataFrame, band: tuple[float, float] = OE_BAND,
                       min_matured: int = MIN_MATURED_ALERT, min_events: int = MIN_EVENTS_ALERT) -> pd.DataFrame:
    """The calibration alerts of the realized figures (``Realized.metrics`` rows), by the
    rule the Prometheus alerts apply (``OE_BAND``, ``MIN_MATURED_ALERT``,
    ``MIN_EVENTS_ALERT``, ``SLOPE_ALERT_BELOW``): ``outcome``, ``model_version``,
    ``role``, ``horizon_months``, ``alert`` (over_prediction, under_prediction,
    slope_low) and the figure with its interval."""
    rows = []
    if metrics.empty:
        return pd.DataFrame(columns=["outcome", "model_version", "role", "horizon_months", "alert", "value",
                                     "ci_low", "ci_high"])
    low, high = band
    for _, r in metrics[(metrics["matured"] >= min_matured) & (metrics["events"] >= min_events)].iterrows():
        oe, lo, hi = r["observed_expected"], r["observed_expected_ci_low"], r["observed_expected_ci_high"]
        found = []
        if oe < low and hi < 1:
            found.append(("over_prediction", oe, lo, hi))
        if oe > high and lo > 1:
            found.append(("under_prediction", oe, lo, hi))
        if r["calibration_slope_ci_high"] < SLOPE_ALERT_BELOW:
            found.append(("slope_low", r["calibration_slope"], r["calibration_slope_ci_low"], r["calibration_slope_ci_high"]))
        rows += [{"outcome": r["outcome"], "model_version": r["model_version"], "role": r["role"],
                  "horizon_months": r["horizon_months"], "alert": a, "value": v, "ci_low": cl, "ci_high": ch}
                 for a, v, cl, ch in found]
    return pd.DataFrame(rows, columns=["outcome", "model_version", "role", "horizon_months", "alert", "value",
                                       "ci_low", "ci_high"])


def summary_records(realized: Realized) -> list[dict]:
    """The ``--json`` figures: per model version, outcome and horizon, the matured
    predictions, events, and O/E, calibration slope and AUROC each with its 95 % CI."""
    out = []
    for _, r in realized.metrics.iterrows():
        rec = {"outcome": r["outcome"], "model_name": r["model_name"], "model_version": str(r["model_version"]),
               "role": r["role"], "horizon_months": float(r["horizon_months"]), "matured": int(r["matured"]),
               "events": int(r["events"])}
        for k in HEADLINE_METRICS:
            rec[k] = {"value": _num(r[k]), "ci_low": _num(r[f"{k}_ci_low"]), "ci_high": _num(r[f"{k}_ci_high"])}
        out.append(rec)
    return out


def _num(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def gauge_rows(realized: Realized, scores: pd.DataFrame, computed_at) -> list[dict]:
    """The latest figures the service exports (``predictionlog.schema.realized_performance``):
    per outcome and role, the version that made that role's newest prediction, at each
    horizon, each headline metric with its CI, matured predictions and events."""
    if realized.metrics.empty:
        return []
    newest = (scores.sort_values("logged_at").groupby(["outcome", "role"])["model_version"].last())
    rows = []
    for _, r in realized.metrics.iterrows():
        if newest.get((r["outcome"], r["role"])) != r["model_version"]:
            continue
        for k in HEADLINE_METRICS:
            rows.append({"outcome": r["outcome"], "role": r["role"], "model_version": str(r["model_version"]),
                         "horizon_months": float(r["horizon_months"]), "metric": k, "value": _num(r[k]),
                         "ci_low": _num(r[f"{k}_ci_low"]), "ci_high": _num(r[f"{k}_ci_high"]),
                         "matured": int(r["matured"]), "events": int(r["events"]), "computed_at": computed_at})
    return rows
