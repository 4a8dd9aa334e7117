"""Exports that record deaths as registries do (issue 22): the frail site D profile,
whose deaths are linked from a registry until the data cut (so nearly all come after the
last clinic visit) and whose fractures are ascertained until death or the data cut.

The labels that follow its ``export.yaml`` (``features.ascertainment``) estimate the
truth: the Aalen-Johansen incidence of every outcome, and 1 - Kaplan-Meier for death,
within 4 standard errors of the mean true risk (SE as in ``test_evidence_truth.py``).
Read with deaths until the last contact the same export loses almost every death; with
fractures until the last contact (the default without ``export.yaml``) the registry
deaths do not compete and every fracture incidence is overstated: that is what the
metadata file repairs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from features.ascertainment import Ascertainment, followup_notes, resolve
from features.labels import DAYS_PER_MONTH, OUTCOMES, build_labels
from features.simulator import load_profile, simulate
from features.simulator.export import ascertainment_of, export_metadata
from features.validate import validate_raw
from training.competing_risks import aalen_johansen, censoring_survival

PROFILE = "site-d-frail-registry-pkp"
H = 24 * DAYS_PER_MONTH


@pytest.fixture(scope="module")
def cohort():
    profile = load_profile(PROFILE)
    tables, truth = simulate(profile, 20_000, seed=3)
    typed = validate_raw(tables)
    return profile, typed, truth.set_index("procedure_id")


def _aj_and_tolerance(labels, target: str, patients: int) -> tuple[float, float]:
    t, s = labels[f"{target}_time_days"].to_numpy(), labels[f"{target}_status"].to_numpy()
    observed = aalen_johansen(t, s, H)
    g = float(censoring_survival(t, s)(np.array([H]))[0])
    deff = len(labels) / patients
    return observed, 4 * math.sqrt(observed * (1 - observed) * deff / (len(labels) * g))


def test_deaths_come_from_the_registry_after_the_last_visit_and_fractures_until_death(cohort):
    profile, typed, _ = cohort
    pt = typed["patients"]
    died = pt["death_date"].notna()
    assert died.mean() > 0.4
    assert (pt.loc[died, "death_date"] > pt.loc[died, "last_followup_date"]).mean() > 0.95
    # Fractures after the last contact (until death or the data cut) are in the export.
    ev = typed["events"].merge(pt, on="patient_id")
    assert (ev["event_date"] > ev["last_followup_date"]).mean() > 0.1
    assert (ev["death_date"].isna() | (ev["event_date"] <= ev["death_date"])).all()
    meta = export_metadata(profile)
    assert (meta.deaths_ascertained_until, meta.fractures_ascertained_until, meta.data_cut) == \
        ("data_cut", "death_or_data_cut", profile.followup.data_cut)


def test_frail_patients_are_seen_less_often_and_die_sooner(cohort):
    _, typed, _ = cohort
    pt = typed["patients"].set_index("patient_id")
    first = typed["procedures"].groupby("patient_id")["surgery_date"].min()
    age = typed["procedures"].groupby("patient_id")["age_years"].first()
    frail = (pt["prior_vertebral_fractures_n"] > 0) & (pt["chronic_kidney_disease"] == 1)
    gap = (pt["death_date"] - pt["last_followup_date"]).dt.days
    assert gap[frail].median() > 1.2 * gap[~frail].median()
    dead_2y = (pt["death_date"] - first).dt.days <= H
    old = age >= 85  # within an age band, the frailty hazard ratios show
    assert dead_2y[frail & old].mean() > 1.2 * dead_2y[~frail & old].mean()


def test_labels_following_export_yaml_estimate_the_true_risks(cohort):
    profile, typed, truth = cohort
    labels = build_labels(typed, ascertainment=ascertainment_of(profile))
    true = truth.reindex(labels.index)
    n_patients = typed["patients"]["patient_id"].nunique()
    for target in (*OUTCOMES, "death"):
        observed, tol = _aj_and_tolerance(labels, target, n_patients)
        expected = float(true[f"p_{target}_24m"].mean())
        assert abs(observed - expected) <= tol, (target, observed, expected, tol)


def test_read_until_the_last_contact_the_deaths_vanish_or_do_not_compete(cohort):
    """Deaths until the last contact: almost none is left. Fractures until the last contact
    (the default without export.yaml): the deaths after it do not compete and each
    fracture incidence is overstated (measured +16 %, +4 % and +9 %); the fractures
    the export holds after the last contact are set aside, and both are said."""
    profile, typed, truth = cohort
    n_patients = typed["patients"]["patient_id"].nunique()
    clinic = build_labels(typed, ascertainment=Ascertainment("last_contact", "last_contact", None, "export.yaml"))
    true = truth.reindex(clinic.index)
    observed, _ = _aj_and_tolerance(clinic, "death", n_patients)
    assert observed < 0.1 * float(true["p_death_24m"].mean())
    default = resolve(None, typed)
    assert (default.deaths_until, default.fractures_until, default.inferred_data_cut) == ("data_cut", "last_contact", True)
    labels = build_labels(typed)
    for target in (*OUTCOMES, "death"):
        observed, tol = _aj_and_tolerance(labels, target, n_patients)
        expected = float(true[f"p_{target}_24m"].mean())
        if target == "death":  # counted: the deaths after the last contact come from a registry
            assert abs(observed - expected) <= tol
        else:
            assert observed > expected, (target, observed, expected)
    notes = followup_notes(default, typed)
    assert [n.split(" ")[1:4] for n in notes[1:]] == [["deaths", "recorded", "after"], ["fractures", "recorded", "after"]]
