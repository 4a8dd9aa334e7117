"""A hospital's labelled export scored by registered versions, evaluated with the
censoring-aware estimates of ``training.time_metrics`` (IPCW, death competing).

Pure: typed tables and models in, DataFrames out; the CLI (``refracture site-report``)
reads the export, loads the versions, writes the files and logs the MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.ascertainment import Ascertainment, followup_notes, resolve
from features.labels import OUTCOMES, build_labels, horizon_days
from features.records import tables_to_records
from modelstore.estimand import horizon_column
from training.data import subgroup_frame
from training.time_metrics import calibration_table, evaluate_at_horizons, net_benefit, net_benefit_replicates

#: Thresholds of the decision curves (predicted risk by the headline horizon): the range
#: where follow-up or treatment decisions on a refracture risk sit.
DECISION_THRESHOLDS = tuple(np.round(np.arange(0.02, 0.31, 0.02), 2))
#: Resamples behind the decision curve's CIs (all at once per threshold,
#: ``time_metrics.net_benefit_replicates``; the calibration deciles take min(n_boot, 100)).
N_BOOT_CURVES = 40
#: Fewest events by the headline horizon for a subgroup level's metrics (else left blank).
MIN_SUBGROUP_EVENTS = 10


@dataclass
class SiteData:
    """A site's records (index procedure_id, one row per treated level as serving sees
    them), the follow-up per outcome (``<o>_time_days``, ``<o>_status``: 0 censored, 1
    event, 2 death first), the subgroups (sex, age band, region, technique) and each
    record's patient id (``patients``, aligned with ``records``; folds group by it), and
    how far the export ascertained deaths and fractures (``ascertainment``, which the
    labels followed, with ``followup_notes`` on what that means for them)."""

    records: pd.DataFrame
    labels: pd.DataFrame
    subgroups: pd.DataFrame
    patients: np.ndarray | None = None
    ascertainment: Ascertainment = Ascertainment()
    followup_notes: tuple[str, ...] = ()

    def follow_up(self, outcome: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row mask with a follow-up time, time in days, status) for ``outcome``."""
        t = self.labels[f"{outcome}_time_days"].to_numpy(dtype="float64")
        s = self.labels[f"{outcome}_status"].to_numpy(dtype="float64")
        ok = np.isfinite(t) & (t >= 0) & np.isfinite(s)
        return ok, t[ok], s[ok].astype("int64")


def site_data(tables: dict[str, pd.DataFrame], ascertainment: Ascertainment | None = None) -> SiteData:
    """SiteData from validated typed tables (``features.validate.validate_raw``) and the
    export's ``export.yaml`` (``features.io.read_export_metadata``; None: the default)."""
    records = tables_to_records(tables)
    records.index = records["procedure_id"].astype(str)
    ascertainment = resolve(ascertainment, tables)
    labels = build_labels(tables, ascertainment=ascertainment)
    labels.index = labels.index.astype(str)
    labels = labels.reindex(records.index)
    patients = tables["procedures"].set_index(tables["procedures"]["procedure_id"].astype(str))["patient_id"]
    return SiteData(records, labels, subgroup_frame(records).set_axis(records.index),
                    patients.reindex(records.index).astype(str).to_numpy(), ascertainment,
                    tuple(followup_notes(ascertainment, tables)))


def evaluate_outcome(curve: pd.DataFrame, time_days: np.ndarray, status: np.ndarray, horizons_months,
                     headline_months: float, groups: pd.DataFrame, *, cohort: str, outcome: str,
                     n_boot: int = 200, n_boot_subgroups: int = 50, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Every censoring-aware figure of one outcome's predicted ``curve`` (columns
    ``p_<m>m``, rows aligned with ``time_days``/``status``/``groups``).

    Returns ``metrics`` (``evaluate_at_horizons`` per horizon: td-AUROC, O/E, calibration
    slope/intercept, Brier, with 95 % bootstrap CIs; ``horizon`` in days), ``calibration``
    (deciles at every horizon, observed with CI), ``decision`` (net benefit at the
    headline horizon, CIs from ``n_boot`` paired resamples) and ``subgroups`` (the headline
    horizon's metrics per level of each ``groups`` column, with CIs); each with ``outcome``
    and ``cohort`` columns.
    """
    risks = {horizon_days(h): curve[horizon_column(h)].to_numpy(dtype="float64") for h in horizons_months}
    metrics = evaluate_at_horizons(time_days, status, risks, n_boot=n_boot, seed=seed)
    calibration = pd.concat([calibration_table(time_days, status, r, h, n_boot=min(n_boot, 100), seed=seed)
                             .assign(horizon=h) for h, r in risks.items()], ignore_index=True)
    hd = horizon_days(headline_months)
    p = risks[hd]
    decision = net_benefit(time_days, status, p, hd, DECISION_THRESHOLDS).assign(horizon=hd)
    b = min(n_boot, N_BOOT_CURVES)
    if b:
        reps = net_benefit_replicates(time_days, status, p, hd, DECISION_THRESHOLDS, b, seed)
        decision["net_benefit_ci_low"], decision["net_benefit_ci_high"] = np.percentile(reps, [2.5, 97.5], axis=0)
    rows = []
    for col in groups.columns:
        values = groups[col].to_numpy()
        for level in pd.unique(values[pd.notna(values)]):
            m = values == level
            events = int(((status[m] == 1) & (time_days[m] <= hd)).sum())
            row = {"subgroup": col, "level": str(level), "n": int(m.sum()), "events": events}
            if events >= MIN_SUBGROUP_EVENTS and m.sum() - events >= MIN_SUBGROUP_EVENTS:
                t = evaluate_at_horizons(time_days[m], status[m], {hd: p[m]}, n_boot=n_boot_subgroups, seed=seed)
                row.update({k: v for k, v in t.iloc[0].items() if k not in ("horizon", "n", "events")})
            rows.append(row)
    subgroups = pd.DataFrame(rows)
    tag = {"outcome": outcome, "cohort": cohort}
    return {"metrics": metrics.assign(**tag), "calibration": calibration.assign(**tag),
            "decision": decision.assign(**tag), "subgroups": subgroups.assign(**tag)}


def training_site_metrics(table: pd.DataFrame, *, cohort: str, outcome: str) -> pd.DataFrame:
    """The version's own held-out figures (its run's ``horizon_metrics.csv``, from
    ``training.horizon_metrics.evaluate_curve``) in ``evaluate_at_horizons`` form."""
    out = table.copy()
    if "horizon_months" in out:
        out["horizon"] = [horizon_days(h) for h in out["horizon_months"]]
    return out.assign(outcome=outcome, cohort=cohort)


__all__ = ["OUTCOMES", "SiteData", "site_data", "evaluate_outcome", "training_site_metrics", "DECISION_THRESHOLDS"]
