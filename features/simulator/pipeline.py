"""``simulate``: draw a cohort from a profile and return the raw tables and the truth.

The order of the draws is fixed, so one seed always gives the same cohort (byte for byte
once written). Nothing here reads or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.simulator.cohort import Arrays, Sessions, draw_patients, draw_procedures, draw_sessions
from features.simulator.export import build_tables
from features.simulator.imaging import draw_followup_imaging, draw_operative_imaging
from features.simulator.outcomes import (
    censoring_months,
    covariates,
    draw_events,
    intercepts_of,
    linear_predictor,
    patient_truth,
    risks,
)
from features.simulator.profile import OUTCOMES, Profile, load_profile


@dataclass(frozen=True)
class _Baseline:
    sessions: Sessions
    patients: Arrays
    procedures: Arrays
    imaging: Arrays
    etas: dict[str, np.ndarray]


def _draw_baseline(profile: Profile, n_procedures: int, rng: np.random.Generator) -> _Baseline:
    sessions = draw_sessions(profile, n_procedures, rng)
    patients = draw_patients(profile, len(sessions.n_levels), rng)
    procedures = draw_procedures(profile, patients, sessions, rng)
    imaging = draw_operative_imaging(profile, patients, sessions, procedures, rng)
    per_patient, per_level = covariates(patients, sessions, procedures, imaging)
    etas = {
        "cemented_refracture": linear_predictor(profile.outcomes["cemented_refracture"], per_level),
        "adjacent_fracture": linear_predictor(profile.outcomes["adjacent_fracture"], per_level),
        "remote_fracture": linear_predictor(profile.outcomes["remote_fracture"], per_patient),
    }
    return _Baseline(sessions, patients, procedures, imaging, etas)


def simulate(profile: Profile | str | Path, n_procedures: int, seed: int) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Simulate ``n_procedures`` treated levels (in as many sessions as it takes).

    ``profile`` is a loaded ``Profile`` or a name/path for ``load_profile``; ``seed`` seeds
    the one ``numpy.random.default_rng`` every draw comes from.

    Returns ``(tables, truth)``: the raw export (``patients``, ``procedures``, ``imaging``,
    ``events``; the contract of ``features.schema``) and one row per ``procedure_id`` with
    the true probability of each outcome label within ``profile.horizon_months``
    (``p_cemented_refracture``, ``p_adjacent_fracture``, ``p_remote_fracture``).
    """
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    if n_procedures < 1:
        raise ValueError("n_procedures must be at least 1")
    rng = np.random.default_rng(seed)
    base = _draw_baseline(profile, n_procedures, rng)
    r = risks(base.sessions, base.etas, intercepts_of(profile))
    followup, death = censoring_months(profile, base.patients, rng)
    events = draw_events(profile, base.sessions, r, followup, rng)
    followup_imaging = draw_followup_imaging(profile, base.imaging, events.cemented_observed, rng)
    return build_tables(profile, base.sessions, base.patients, base.procedures, base.imaging, followup_imaging,
                        followup, death, events, r, rng)


def calibrate_intercepts(profile: Profile, n_procedures: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Intercepts (log-odds) that make each outcome's mean patient-level truth equal its target.

    A tool for editing profiles, not used by ``simulate``: after changing a profile's
    covariates or odds ratios, run it and copy the values into ``intercept_log_odds``.
    Targets are per-patient incidences as published (``outcomes.patient_truth``).
    """
    base = _draw_baseline(profile, n_procedures, np.random.default_rng(seed))
    intercepts = intercepts_of(profile)
    for outcome in OUTCOMES:
        target = profile.outcomes[outcome].target_incidence.value
        lo, hi = -20.0, 10.0
        for _ in range(60):
            intercepts[outcome] = (lo + hi) / 2
            mean = patient_truth(base.sessions, risks(base.sessions, base.etas, intercepts))[outcome].mean()
            lo, hi = (intercepts[outcome], hi) if mean < target else (lo, intercepts[outcome])
        intercepts[outcome] = round((lo + hi) / 2, 3)
    return intercepts
