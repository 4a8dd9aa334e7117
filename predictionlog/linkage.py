"""Outcomes of a later export linked to the predictions logged months before.

A later export of the same hospital (the raw contract: patients with their last contact
and death, procedures, events) is turned into each procedure's follow-up with the
training's own definitions (``features.labels.build_labels``: which fracture counts as
which outcome, death as a competing event, censoring), its procedure keys into the keyed
hashes the predictions were logged with (``predictionlog.keys``), and the two are joined.

Each linked prediction gets, per target (the three outcomes and death):

- its follow-up as of the export's **data cut**: days to the event, death or last
  contact, and the status (0 censored, 1 event, 2 death first), which the censoring-aware
  estimators take as they are;
- its status at every horizon (``horizon_status``): ``event``, ``death_first``,
  ``event_free``, ``censored`` (lost before the horizon) or ``not_mature`` when the data
  cut comes before surgery + horizon.

A prediction keeps the follow-up of the export with the latest data cut: an export with
an earlier cut than the one already linked does not replace it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.ascertainment import EXPORT_DATES, Ascertainment, latest_date
from features.labels import DEATH, EVENT, TARGETS, build_labels, horizon_days
from predictionlog.keys import link_key, link_keys
from predictionlog.schema import HORIZONS_MONTHS
from predictionlog.store import PredictionStore

logger = logging.getLogger(__name__)

#: The dates of an export whose latest value is its data cut when none is stated.
DATE_COLUMNS = tuple((table, column) for table, columns in EXPORT_DATES.items() for column in columns)
#: Prefix of the text hashed for a patient key, so a patient key and a procedure key that
#: happen to be equal never share a hash.
PATIENT_DOMAIN = "patient:"


def data_cut_of(tables: dict[str, pd.DataFrame]) -> dt.date:
    """The latest date recorded anywhere in the export (``DATE_COLUMNS``): its data cut
    when the export does not state one."""
    latest = latest_date(tables)
    if latest is None:
        raise ValueError("the export holds no date: cannot tell its data cut (give it with --data-cut)")
    return latest


def check_data_cut(tables: dict[str, pd.DataFrame], data_cut: dt.date) -> None:
    """ValueError naming the table, column and first row key of a date after ``data_cut``
    (the export cannot have seen it)."""
    cut = pd.Timestamp(data_cut)
    for t, c in DATE_COLUMNS:
        if t not in tables or c not in tables[t]:
            continue
        late = tables[t][c] > cut
        if late.any():
            key = tables[t].columns[0]
            row = tables[t].loc[late].iloc[0]
            raise ValueError(f"{t}, row {key}={row[key]}, column {c}: {row[c].date()} is after the data cut "
                             f"{data_cut} ({int(late.sum())} such row(s)); give the export's real cut with --data-cut")


def horizon_status(time_days: np.ndarray, status: np.ndarray, followed_days: np.ndarray,
                   horizon_months: float) -> np.ndarray:
    """What was observed by ``horizon_months`` for each row (``schema.HORIZON_STATUSES``).

    ``time_days``/``status``: the follow-up (``features.labels``: 0 censored, 1 event, 2
    death first); ``followed_days``: days from surgery to the data cut (a horizon is mature
    when it is at least ``horizon_days``)."""
    h = horizon_days(horizon_months)
    t = np.asarray(time_days, dtype="float64")
    s = np.asarray(status)
    out = np.full(len(t), "censored", dtype=object)
    out[t >= h] = "event_free"
    out[(s == DEATH) & (t <= h)] = "death_first"
    out[(s == EVENT) & (t <= h)] = "event"
    out[np.asarray(followed_days, dtype="float64") < h] = "not_mature"
    return out


def follow_up(tables: dict[str, pd.DataFrame], data_cut: dt.date, targets=TARGETS,
              ascertainment: Ascertainment | None = None) -> pd.DataFrame:
    """One row per procedure of the export: ``procedure_id``, ``patient_id``,
    ``surgery_date``, ``followed_days`` (surgery to the data cut) and, per target,
    ``<t>_time_days`` and ``<t>_status`` (``features.labels.build_labels``, following the
    export's ``export.yaml``: ``ascertainment``, None for its default)."""
    labels = build_labels(tables, ascertainment=ascertainment)
    procs = tables["procedures"][["procedure_id", "patient_id", "surgery_date"]].copy()
    procs["procedure_id"] = procs["procedure_id"].astype(str).str.strip()
    labels.index = labels.index.astype(str).str.strip()
    out = procs.set_index("procedure_id")
    out["followed_days"] = (pd.Timestamp(data_cut) - out["surgery_date"]).dt.days.astype("float64")
    for t in targets:
        out[f"{t}_time_days"] = labels[f"{t}_time_days"].reindex(out.index)
        out[f"{t}_status"] = labels[f"{t}_status"].reindex(out.index)
    return out.reset_index()


def _records(**columns) -> list[dict]:
    """Row dicts of plain Python values from equal-length arrays and scalars (repeated)."""
    n = max((len(v) for v in columns.values() if isinstance(v, np.ndarray)), default=0)
    lists = {k: v.tolist() if isinstance(v, np.ndarray) else [v] * n for k, v in columns.items()}
    keys = list(lists)
    return [dict(zip(keys, values)) for values in zip(*lists.values())]


@dataclass
class LinkSummary:
    """What a linkage did: ``procedures`` in the export, ``predictions`` linked (of
    ``procedures_predicted`` distinct procedures), ``kept_newer`` predictions left with a
    later export's follow-up, ``surgery_date_differs`` predictions whose logged surgery
    date is not the export's, and ``statuses`` (target, horizon months, status, count)."""

    data_cut: dt.date
    procedures: int
    procedures_predicted: int = 0
    predictions: int = 0
    kept_newer: int = 0
    surgery_date_differs: int = 0
    statuses: pd.DataFrame = field(default_factory=pd.DataFrame)


def link_outcomes(store: PredictionStore, tables: dict[str, pd.DataFrame], secret: bytes, data_cut: dt.date,
                  fingerprint: str, targets=TARGETS, ascertainment: Ascertainment | None = None) -> LinkSummary:
    """Link the export (validated typed tables) to the store's predictions and store each
    linked prediction's follow-up and horizon statuses; returns a ``LinkSummary``.
    ``ascertainment``: how far the export followed deaths and fractures (its ``export.yaml``)."""
    check_data_cut(tables, data_cut)
    fu = follow_up(tables, data_cut, targets, ascertainment)
    fu["key_hash"] = link_keys(secret, fu["procedure_id"])
    logged = store.prediction_keys(fu["key_hash"].dropna())
    summary = LinkSummary(data_cut=data_cut, procedures=len(fu))
    if logged.empty:
        return summary
    previous = store.latest_data_cuts()
    if len(previous):
        newer = logged["prediction_id"].map(previous.set_index("prediction_id")["data_cut"])
        keep = newer.notna() & (pd.to_datetime(newer) > pd.Timestamp(data_cut))
        summary.kept_newer = int(keep.sum())
        logged = logged[~keep.to_numpy()]
    joined = logged.merge(fu, on="key_hash", how="inner", suffixes=("_logged", ""))
    summary.procedures_predicted = int(joined["procedure_id"].nunique())
    summary.predictions = int(joined["prediction_id"].nunique())
    logged_date = pd.to_datetime(joined["surgery_date_logged"])
    summary.surgery_date_differs = int((logged_date.notna() & (logged_date != joined["surgery_date"])).sum())
    now = dt.datetime.now(dt.timezone.utc)
    ids = joined["prediction_id"].to_numpy(dtype=object)
    patient_hash = np.array([link_key(secret, PATIENT_DOMAIN + str(p)) for p in joined["patient_id"]], dtype=object)
    surgery = np.array(joined["surgery_date"].dt.date.tolist(), dtype=object)
    followed = joined["followed_days"].to_numpy(dtype="float64")
    linked, horizons, counts = [], [], []
    for t in targets:
        time_days = joined[f"{t}_time_days"].to_numpy(dtype="float64")
        status = joined[f"{t}_status"].to_numpy()
        ok = np.isfinite(time_days)
        linked += _records(prediction_id=ids[ok], outcome=t, patient_hash=patient_hash[ok], surgery_date=surgery[ok],
                           data_cut=data_cut, time_days=time_days[ok], status=status[ok].astype("int64"),
                           export_fingerprint=fingerprint, linked_at=now)
        for h in HORIZONS_MONTHS:
            st = horizon_status(time_days[ok], status[ok], followed[ok], h)
            horizons += _records(prediction_id=ids[ok], outcome=t, horizon_months=float(h), status=st)
            values, n = np.unique(st.astype(str), return_counts=True)
            counts += [{"outcome": t, "horizon_months": float(h), "status": v, "predictions": int(c)}
                       for v, c in zip(values, n)]
    store.store_outcomes(linked, horizons)
    summary.statuses = pd.DataFrame(counts)
    logger.info("linked %d prediction(s) of %d procedure(s) to the export cut %s", summary.predictions,
                summary.procedures_predicted, data_cut)
    return summary
