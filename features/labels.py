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

The estimand is the **absolute (crude) risk**: the probability that the fracture happens
within the horizon, given that the patient may die first. Death is a *competing event*,
not censoring: a patient who died without the fracture is known not to have had it.

For each outcome the label frame holds:

- ``<outcome>_time_days``: days from surgery to the first such event, or else to death,
  or else to the last contact (censoring);
- ``<outcome>_status``: competing-risks status at that time: 1 the event, 2 death before
  any such event, 0 censored (lost or data cut, alive and event-free at last contact);
- ``<outcome>_event``: 1 if the event was observed, else 0 (``status == 1``);
- ``<outcome>``: the binary crude label at the horizon: 1 if the event happened within the
  horizon, 0 if the patient died without it before the horizon or was followed to the
  horizon without it, and **missing** if censored (status 0) before the horizon. Missing
  labels must not be dropped silently: unbiased estimates reweight the labelled rows by
  the inverse probability of remaining uncensored (``training.competing_risks``).

A death counts only when ``death_date`` is on or before ``last_followup_date`` (or no
last contact is recorded): a death learnt later (registry linkage after the patient was
lost) says nothing about fractures after the last contact, so follow-up is censored
there. Months are 365.25/12 days.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.levels import LEVEL_INDEX

OUTCOMES = ("cemented_refracture", "adjacent_fracture", "remote_fracture")
#: Targets trained and served beside the outcomes as context, not for decision: death from
#: any cause (``death_time_days`` / ``death_status``, the binary ``death`` at the horizon).
#: Death has no competing event, so its crude risk is 1 - Kaplan-Meier.
DEATH_TARGET = "death"
CONTEXT_TARGETS = (DEATH_TARGET,)
#: Everything ``refracture train`` trains by default: the outcomes, then the context.
TARGETS = OUTCOMES + CONTEXT_TARGETS
#: Competing-risks status codes of ``<outcome>_status``.
CENSORED, EVENT, DEATH = 0, 1, 2
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

    Takes typed tables (``features.validate.validate_raw``). Returns ``followup_days``,
    ``death_time_days`` / ``death_status`` (1 died within follow-up, 0 censored alive),
    ``death`` (0/1 death by the horizon, missing when censored alive before it) and,
    per outcome, ``<o>_time_days`` (float), ``<o>_status`` (0 censored, 1 event, 2 death
    first), ``<o>_event`` (0/1) and ``<o>`` (0/1, missing when censored before the horizon).
    """
    if horizon_months <= 0:
        raise ValueError(f"horizon_months must be positive, got {horizon_months}")
    procedures, patients, events = tables["procedures"], tables["patients"], tables["events"]
    ends = patients[["patient_id", "last_followup_date", "death_date"]].copy()
    last, death = ends["last_followup_date"], ends["death_date"]
    died = death.notna() & (last.isna() | (death <= last))
    ends["end_date"] = death.where(died, last)
    ends["died"] = died
    base = procedures[["procedure_id", "patient_id", "surgery_date"]].merge(
        ends[["patient_id", "end_date", "died"]], on="patient_id", how="left")
    base["followup_days"] = (base["end_date"] - base["surgery_date"]).dt.days.astype("float64")
    base["died"] = base["died"].fillna(False).astype(bool)
    base = base.set_index("procedure_id")

    pairs = _classify_events(procedures, events)
    pairs = pairs.assign(days=(pairs["event_date"] - pairs["surgery_date"]).dt.days.astype("float64"))
    first = pairs.groupby(["procedure_id", "outcome"])["days"].min().unstack("outcome")

    h = horizon_days(horizon_months)
    died = base["died"].to_numpy()
    out = pd.DataFrame(index=base.index)
    out["followup_days"] = base["followup_days"]
    out["death_time_days"] = base["followup_days"]
    out["death_status"] = died.astype("int8")
    t_death = base["followup_days"].to_numpy(dtype="float64")
    death_label = pd.Series(pd.NA, index=base.index, dtype="Int8")
    death_label[died & (t_death <= h)] = 1
    death_label[t_death > h] = 0
    death_label[~died & (t_death >= h)] = 0
    out[DEATH_TARGET] = death_label
    for outcome in OUTCOMES:
        event_days = first[outcome].reindex(base.index) if outcome in first.columns else pd.Series(np.nan, index=base.index)
        observed = event_days.notna().to_numpy()
        time = event_days.where(observed, base["followup_days"])
        status = np.where(observed, EVENT, np.where(died, DEATH, CENSORED)).astype("int8")
        t = time.to_numpy(dtype="float64")
        label = pd.Series(pd.NA, index=base.index, dtype="Int8")
        label[(status == EVENT) & (t <= h)] = 1
        label[((status == EVENT) & (t > h)) | ((status == DEATH) & (t <= h)) | (t >= h) & (status != EVENT)] = 0
        out[f"{outcome}_time_days"] = time
        out[f"{outcome}_status"] = status
        out[f"{outcome}_event"] = observed.astype("int8")
        out[outcome] = label
    out.attrs["horizon_months"] = float(horizon_months)
    return out
