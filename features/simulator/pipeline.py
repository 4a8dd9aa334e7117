"""``simulate``: draw a cohort from a profile and return the raw tables and the truth.

The order of the draws is fixed, so one seed always gives the same cohort (byte for byte
once written). Nothing here reads or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from features.simulator.cohort import Arrays, Sessions, draw_patients, draw_procedures, draw_sessions
from features.simulator.export import build_tables
from features.simulator.imaging import draw_followup_imaging, draw_operative_imaging
from features.simulator.missingness import draw_measurement, draw_missingness
from features.simulator.outcomes import (
    covariates,
    crude_risk,
    draw_events,
    ceilings_of,
    intercepts_of,
    linear_predictor,
    observation_months,
    patient_cumhaz,
    patient_death_hazard,
    risks,
    truth_table,
)
from features.simulator.profile import OUTCOMES, Profile, load_profile


@dataclass(frozen=True)
class _Baseline:
    sessions: Sessions
    patients: Arrays
    procedures: Arrays
    imaging: Arrays
    etas: dict[str, np.ndarray]


def _etas(profile: Profile, per_patient: Arrays, per_level: Arrays, per_side: dict[str, Arrays]) -> dict[str, np.ndarray]:
    adjacent = profile.outcomes["adjacent_fracture"]
    return {
        "cemented_refracture": linear_predictor(profile.outcomes["cemented_refracture"], per_level),
        "adjacent_upper": linear_predictor(adjacent, per_side["upper"]),
        "adjacent_lower": linear_predictor(adjacent, per_side["lower"]),
        "remote_fracture": linear_predictor(profile.outcomes["remote_fracture"], per_patient),
    }


def _draw_baseline(profile: Profile, n_procedures: int, rng: np.random.Generator) -> _Baseline:
    sessions = draw_sessions(profile, n_procedures, rng)
    patients = draw_patients(profile, len(sessions.n_levels), rng)
    procedures = draw_procedures(profile, patients, sessions, rng)
    imaging = draw_operative_imaging(profile, patients, sessions, procedures, rng)
    return _Baseline(sessions, patients, procedures, imaging,
                     _etas(profile, *covariates(patients, sessions, procedures, imaging, profile)))


def draw_effects(profile: Profile, rng: np.random.Generator) -> Profile:
    """A copy of ``profile`` whose odds ratios with a published CI (``Term.ci``) are drawn
    from it: log OR ~ Normal(log OR, (log high - log low) / 3.92). Other terms stay fixed."""
    outcomes = {}
    for name, model in profile.outcomes.items():
        terms = {}
        for key, term in model.terms.items():
            if term.ci is None:
                terms[key] = term
                continue
            se = (np.log(term.ci[1]) - np.log(term.ci[0])) / 3.92
            drawn = float(np.exp(rng.normal(np.log(term.odds_ratio), se)))
            # The drawn value is the world's truth; its CI is kept for the record only.
            terms[key] = term.model_copy(update={"odds_ratio": drawn, "ci": None,
                                                 "source": f"drawn from {term.ci} ({term.source})"})
        outcomes[name] = model.model_copy(update={"terms": terms})
    return profile.model_copy(update={"outcomes": outcomes})


def _match_net_means(base: _Baseline, intercepts: dict[str, float], targets: dict[str, float],
                     ceilings: dict[str, float]) -> dict[str, float]:
    """Intercepts that give each outcome's mean per-patient net horizon risk ``targets``
    (bisection; used by --draw-effects so a drawn world keeps the profile's incidence)."""
    out = dict(intercepts)
    for outcome in OUTCOMES:
        lo, hi = -20.0, 10.0
        for _ in range(40):
            out[outcome] = (lo + hi) / 2
            lam = patient_cumhaz(base.sessions, risks(base.sessions, base.etas, out, ceilings))[outcome]
            mean = float(np.mean(-np.expm1(-lam)))
            lo, hi = (out[outcome], hi) if mean < targets[outcome] else (lo, out[outcome])
        out[outcome] = (lo + hi) / 2
    return out


def simulate(profile: Profile | str | Path, n_procedures: int, seed: int,
             effects_seed: int | None = None, data_cut: date | None = None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Simulate ``n_procedures`` treated levels (in as many sessions as it takes).

    ``profile`` is a loaded ``Profile`` or a name/path for ``load_profile``; ``seed`` seeds
    the one ``numpy.random.default_rng`` every cohort draw comes from. ``effects_seed``
    (optional) first draws every odds ratio with a published CI from that CI
    (``draw_effects``) and re-solves the intercepts so the cohort's mean net risks equal
    those of the point-estimate world on the same patients.

    Returns ``(tables, truth)``: the raw export (``patients``, ``procedures``, ``imaging``,
    ``events``; the contract of ``features.schema`` plus its optional metadata columns)
    and one row per ``procedure_id`` with ``p_<outcome>_<m>m`` (the true crude risk by m =
    3, 6, 12, 24 months, death competing), ``p_death_<m>m`` (death from any cause by m
    months), and ``p_<outcome>``
    (deprecated alias of ``p_<outcome>_24m``).

    ``data_cut`` (optional): the export as the hospital would draw it on that date instead
    of the profile's cut: the same patients, inputs, fractures and deaths as with the same
    seed at any other cut (``outcomes.censoring_months``), the procedures done at least
    ``MIN_DAYS_BEFORE_CUT`` days before it, and their follow-up to it. Simulating a
    deployment, exports cut months apart show the same procedures' outcomes maturing.
    """
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    if n_procedures < 1:
        raise ValueError("n_procedures must be at least 1")
    rng = np.random.default_rng(seed)
    base = _draw_baseline(profile, n_procedures, rng)
    intercepts = intercepts_of(profile)
    if effects_seed is not None:
        point = patient_cumhaz(base.sessions, risks(base.sessions, base.etas, intercepts, ceilings_of(profile)))
        targets = {o: float(np.mean(-np.expm1(-lam))) for o, lam in point.items()}
        profile = draw_effects(profile, np.random.default_rng(effects_seed))
        per_patient, per_level, per_side = covariates(base.patients, base.sessions, base.procedures, base.imaging, profile)
        base = _Baseline(base.sessions, base.patients, base.procedures, base.imaging,
                         _etas(profile, per_patient, per_level, per_side))
        intercepts = _match_net_means(base, intercepts, targets, ceilings_of(profile))
    r = risks(base.sessions, base.etas, intercepts, ceilings_of(profile))
    truth = truth_table(profile, base.sessions, base.patients, r)
    seen = observation_months(profile, base.patients, rng, data_cut)
    events = draw_events(profile, base.sessions, r, seen.fracture_window, rng)
    followup_imaging = draw_followup_imaging(profile, base.imaging, events.cemented_observed, rng)
    missing = draw_missingness(profile, base.patients, rng)
    measured = draw_measurement(profile, base.patients, rng)
    tables, truth_df = build_tables(profile, base.sessions, base.patients, base.procedures, base.imaging,
                                    followup_imaging, seen, events, truth, missing, measured, rng)
    return (tables, truth_df) if data_cut is None else cut_export(tables, truth_df, data_cut)


#: Days between a procedure and the data cut for it to be in a cut export: its post-operative
#: images (taken up to 2 days after surgery) and its first contact are then before the cut.
MIN_DAYS_BEFORE_CUT = 3


def cut_export(tables: dict[str, pd.DataFrame], truth: pd.DataFrame,
               data_cut: date) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The export and truth restricted to the patients operated at least
    ``MIN_DAYS_BEFORE_CUT`` days before ``data_cut`` (a patient's levels are treated in
    one session); their rows in every table, in the same order."""
    last_day = pd.Timestamp(data_cut) - pd.Timedelta(days=MIN_DAYS_BEFORE_CUT)
    procedures = tables["procedures"]
    keep = procedures["surgery_date"] <= last_day
    patients = set(procedures.loc[keep, "patient_id"])
    procedure_ids = set(procedures.loc[keep, "procedure_id"])
    out = {
        "patients": tables["patients"][tables["patients"]["patient_id"].isin(patients)],
        "procedures": procedures[keep],
        "imaging": tables["imaging"][tables["imaging"]["procedure_id"].isin(procedure_ids)],
        "events": tables["events"][tables["events"]["patient_id"].isin(patients)],
    }
    out = {name: df.reset_index(drop=True) for name, df in out.items()}
    kept_truth = truth[truth["procedure_id"].isin(procedure_ids)].reset_index(drop=True)
    kept_truth.attrs = dict(truth.attrs)
    return out, kept_truth


def calibrate_intercepts(profile: Profile, n_procedures: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Intercepts (log-odds) that make each outcome's mean per-patient crude risk at the
    horizon (death competing, as published cohorts count it) equal its target incidence.

    A tool for editing profiles, not used by ``simulate``: after changing a profile's
    covariates or odds ratios, run it and copy the values into ``intercept_log_odds``.
    """
    base = _draw_baseline(profile, n_procedures, np.random.default_rng(seed))
    hz = patient_death_hazard(profile.followup.mortality, base.patients)
    horizon = float(profile.horizon_months)
    intercepts = intercepts_of(profile)
    for outcome in OUTCOMES:
        target = profile.outcomes[outcome].target_incidence.value
        timing = profile.outcomes[outcome].timing
        lo, hi = -20.0, 10.0
        for _ in range(30):
            intercepts[outcome] = (lo + hi) / 2
            lam = patient_cumhaz(base.sessions, risks(base.sessions, base.etas, intercepts, ceilings_of(profile)))[outcome]
            mean = crude_risk(lam, timing, hz, profile.followup.mortality, (horizon,))[horizon].mean()
            lo, hi = (intercepts[outcome], hi) if mean < target else (lo, intercepts[outcome])
        intercepts[outcome] = round((lo + hi) / 2, 3)
    return intercepts
