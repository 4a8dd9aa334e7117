"""Cohort simulator: synthetic PVP/PKP cohorts in the raw export contract, with known true risks.

Public API::

    profile = load_profile("xiong2021-pvp")          # or a path to a YAML file
    tables, truth = simulate(profile, n_procedures=10_000, seed=1)

``tables`` passes ``features.validate.validate_raw``; ``truth`` holds each treated level's
true probability of each outcome within the profile's horizon. Pure: the only file read is
the profile YAML, and randomness comes only from ``numpy.random.default_rng(seed)``.

Censoring, and what it does to labels. Every patient could be followed past the horizon
before the profile's data cut; follow-up ends earlier only by loss (6-8 % of patients)
or death (Gompertz, age- and sex-dependent). About 85 % (xiong2021-pvp) and 90 %
(yassavoly2025-pkp) of treated levels therefore carry a 24-month label. The labels of
``features.labels`` drop levels censored before 24 months without an event; because
events are front-loaded, those dropped are mostly non-events, so the labelled incidence
runs ~5-10 % (relative) above the true mean probability (e.g. 4.2 % vs 3.8 % for
cemented refracture in xiong2021-pvp). ``tests/test_evidence_incidence.py`` bounds this
at 15 %.
"""

from features.simulator.pipeline import calibrate_intercepts, simulate
from features.simulator.profile import Profile, available_profiles, load_profile

__all__ = ["Profile", "available_profiles", "calibrate_intercepts", "load_profile", "simulate"]
