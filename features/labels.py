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

How far follow-up reaches is the export's statement (``export.yaml``,
``features.ascertainment``; a default when absent):

- the death target runs to death, or to the end of death ascertainment: the data cut
  when deaths are linked from a registry (``deaths_ascertained_until: data_cut``; a death
  after the last clinic contact then counts), else the last contact (a death after it is
  not counted: other patients' deaths after their last contact are unknown);
- each outcome runs to its first event, or to death or the end of fracture
  ascertainment: death or the data cut when the hospital would have seen any new
  fracture until then (``fractures_ascertained_until: death_or_data_cut``: every death
  before the data cut competes), else the last contact (a death after it does not
  compete: the fracture status between the last contact and death is unknown; nor does a
  fracture recorded after it count, for the same reason).

``followup_days`` is the days to the end of fracture follow-up (death or censoring).
Months are 365.25/12 days.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.ascertainment import DATA_CUT, DEATH_OR_DATA_CUT, Ascertainment, resolve
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


def _follow_up(patients: pd.DataFrame, until_death_or_cut: bool, data_cut) -> pd.DataFrame:
    """Per patient: ``end_date`` (death, else the end of ascertainment) and ``died``
    (a death within the window). ``until_death_or_cut``: the window runs to the data cut
    (every recorded death is in it), else to the last contact (a death on or before it)."""
    last, death = patients["last_followup_date"], patients["death_date"]
    if until_death_or_cut:
        died = death.notna()
        end = death.where(died, pd.Timestamp(data_cut))
    else:
        died = death.notna() & (last.isna() | (death <= last))
        end = death.where(died, last)
    return pd.DataFrame({"patient_id": patients["patient_id"], "end_date": end, "died": died})


def _within(pairs: pd.DataFrame, window: pd.DataFrame) -> pd.DataFrame:
    """The (procedure, event) pairs whose event falls within the patient's fracture window:
    a fracture after the end of ascertainment (after the last contact, when fractures are
    ascertained until it) is not counted, as other patients' fractures then are unknown."""
    end = pairs["patient_id"].map(window.set_index("patient_id")["end_date"])
    return pairs[end.isna().to_numpy() | (pairs["event_date"] <= end).to_numpy()]


def _per_procedure(procedures: pd.DataFrame, window: pd.DataFrame) -> tuple[pd.Series, np.ndarray]:
    """(days from surgery to the window's end, died within it) per procedure."""
    base = procedures[["procedure_id", "patient_id", "surgery_date"]].merge(window, on="patient_id", how="left")
    days = (base["end_date"] - base["surgery_date"]).dt.days.astype("float64")
    return pd.Series(days.to_numpy(), index=base["procedure_id"]), base["died"].fillna(False).astype(bool).to_numpy()


def build_labels(tables: dict[str, pd.DataFrame], horizon_months: float = DEFAULT_HORIZON_MONTHS,
                 ascertainment: Ascertainment | None = None) -> pd.DataFrame:
    """Labels for every procedure at ``horizon_months`` (default 24), indexed by procedure_id.

    Takes typed tables (``features.validate.validate_raw``) and the export's
    ``ascertainment`` (``features.io.read_export_metadata``; None: the default of
    ``features.ascertainment.resolve``). Returns ``followup_days``,
    ``death_time_days`` / ``death_status`` (1 died within follow-up, 0 censored alive),
    ``death`` (0/1 death by the horizon, missing when censored alive before it) and,
    per outcome, ``<o>_time_days`` (float), ``<o>_status`` (0 censored, 1 event, 2 death
    first), ``<o>_event`` (0/1) and ``<o>`` (0/1, missing when censored before the horizon).
    """
    if horizon_months <= 0:
        raise ValueError(f"horizon_months must be positive, got {horizon_months}")
    procedures, patients, events = tables["procedures"], tables["patients"], tables["events"]
    asc = resolve(ascertainment, tables)
    t_death_s, died_d = _per_procedure(procedures, _follow_up(patients, asc.deaths_until == DATA_CUT, asc.data_cut))
    window = _follow_up(patients, asc.fractures_until == DEATH_OR_DATA_CUT, asc.data_cut)
    followup, died = _per_procedure(procedures, window)
    base = pd.DataFrame({"followup_days": followup})

    pairs = _within(_classify_events(procedures, events), window)
    pairs = pairs.assign(days=(pairs["event_date"] - pairs["surgery_date"]).dt.days.astype("float64"))
    first = pairs.groupby(["procedure_id", "outcome"])["days"].min().unstack("outcome")

    h = horizon_days(horizon_months)
    out = pd.DataFrame(index=base.index)
    out["followup_days"] = base["followup_days"]
    out["death_time_days"] = t_death_s
    out["death_status"] = died_d.astype("int8")
    t_death = t_death_s.to_numpy(dtype="float64")
    death_label = pd.Series(pd.NA, index=base.index, dtype="Int8")
    death_label[died_d & (t_death <= h)] = 1
    death_label[t_death > h] = 0
    death_label[~died_d & (t_death >= h)] = 0
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
