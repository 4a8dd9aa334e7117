"""Outcome labels, time-to-event and censoring, per procedure.

Each new fracture in ``events`` is attributed to every procedure of that patient done
before it, by its distance from the procedure's level:

- ``cemented_refracture``: the fracture is at the procedure's own level.
- ``adjacent_fracture``: it is one level above or below, and that level had not itself
  been treated by then (a fracture of another cemented level is that level's refracture,
  not an adjacent fracture of this one).
- ``remote_fracture``: it is two or more levels away from *every* level treated by then
  (at least one normal segment in between, as Yassavoly 2025 counts it). A fracture next
  to another level of a multi-level session is that level's adjacent fracture, not a
  remote fracture of this one.

For each outcome the label frame holds:

- ``<outcome>_time_days``: days from surgery to the first such event, or to censoring;
- ``<outcome>_event``: 1 if the event was observed, 0 if censored;
- ``<outcome>``: the binary label at the horizon: 1 if the event happened within the
  horizon, 0 if the patient was followed to the horizon without it, and **missing** if
  follow-up ended (last contact or death) before the horizon without the event. Such
  procedures get no binary label: treating them as negatives would bias risk downward.
  Training on the labelled subset assumes censoring is unrelated to risk; the time and
  event columns are kept for survival methods that do not need that assumption.

Censoring is at the earlier of ``last_followup_date`` and ``death_date``; death is a
competing event and is treated as censoring. Months are 365.25/12 days.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.levels import LEVEL_INDEX

OUTCOMES = ("cemented_refracture", "adjacent_fracture", "remote_fracture")
DAYS_PER_MONTH = 365.25 / 12
DEFAULT_HORIZON_MONTHS = 24.0


def horizon_days(horizon_months: float) -> float:
    """Horizon in days for a horizon in months."""
    return float(horizon_months) * DAYS_PER_MONTH


def _classify_events(procedures: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Pairs (procedure, event after it) with the outcome each pair counts as."""
    proc = procedures[["procedure_id", "patient_id", "surgery_date", "level"]].copy()
    proc["level_idx"] = proc["level"].map(LEVEL_INDEX)
    ev = events[["event_id", "patient_id", "event_date", "fracture_level"]].copy()
    ev["event_level_idx"] = ev["fracture_level"].map(LEVEL_INDEX)
    pairs = proc.merge(ev, on="patient_id", how="inner")
    pairs = pairs[pairs["event_date"] > pairs["surgery_date"]]
    if pairs.empty:
        return pairs.assign(outcome=pd.Series(dtype=object))

    # Distance from the fracture to the nearest level treated (in any session) before it.
    treated = proc[["patient_id", "level_idx", "surgery_date"]].rename(columns={"level_idx": "treated_idx"})
    hit = pairs[["event_id", "patient_id", "event_level_idx", "event_date"]].drop_duplicates("event_id")
    hit = hit.merge(treated, on="patient_id", how="inner")
    hit = hit[hit["surgery_date"] < hit["event_date"]]
    nearest = (hit["event_level_idx"] - hit["treated_idx"]).abs().groupby(hit["event_id"]).min()
    nearest_treated = pairs["event_id"].map(nearest)

    distance = (pairs["event_level_idx"] - pairs["level_idx"]).abs()
    outcome = np.select(
        [distance == 0, (distance == 1) & (nearest_treated >= 1), (distance >= 2) & (nearest_treated >= 2)],
        ["cemented_refracture", "adjacent_fracture", "remote_fracture"],
        default="",
    )
    pairs = pairs.assign(outcome=outcome)
    return pairs[pairs["outcome"] != ""]


def build_labels(tables: dict[str, pd.DataFrame], horizon_months: float = DEFAULT_HORIZON_MONTHS) -> pd.DataFrame:
    """Labels for every procedure at ``horizon_months`` (default 24), indexed by procedure_id.

    Takes typed tables (``features.validate.validate_raw``). Returns ``followup_days``
    and, per outcome, ``<o>_time_days`` (float), ``<o>_event`` (0/1) and ``<o>``
    (0/1, missing when censored before the horizon without the event).
    """
    if horizon_months <= 0:
        raise ValueError(f"horizon_months must be positive, got {horizon_months}")
    procedures, patients, events = tables["procedures"], tables["patients"], tables["events"]
    ends = patients[["patient_id", "last_followup_date", "death_date"]].copy()
    ends["censor_date"] = ends[["last_followup_date", "death_date"]].min(axis=1, skipna=True)
    base = procedures[["procedure_id", "patient_id", "surgery_date"]].merge(
        ends[["patient_id", "censor_date"]], on="patient_id", how="left")
    base["followup_days"] = (base["censor_date"] - base["surgery_date"]).dt.days.astype("float64")
    base = base.set_index("procedure_id")

    pairs = _classify_events(procedures, events)
    pairs = pairs.assign(days=(pairs["event_date"] - pairs["surgery_date"]).dt.days.astype("float64"))
    first = pairs.groupby(["procedure_id", "outcome"])["days"].min().unstack("outcome")

    h = horizon_days(horizon_months)
    out = pd.DataFrame(index=base.index)
    out["followup_days"] = base["followup_days"]
    for outcome in OUTCOMES:
        event_days = first[outcome].reindex(base.index) if outcome in first.columns else pd.Series(np.nan, index=base.index)
        observed = event_days.notna()
        time = event_days.where(observed, base["followup_days"])
        label = pd.Series(pd.NA, index=base.index, dtype="Int8")
        label[observed & (event_days <= h)] = 1
        label[(observed & (event_days > h)) | (~observed & (base["followup_days"] >= h))] = 0
        out[f"{outcome}_time_days"] = time
        out[f"{outcome}_event"] = observed.astype("int8")
        out[outcome] = label
    out.attrs["horizon_months"] = float(horizon_months)
    return out
