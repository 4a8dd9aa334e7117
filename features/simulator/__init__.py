"""Cohort simulator: synthetic PVP/PKP cohorts in the raw export contract, with known true risks.

Public API::

    profile = load_profile("xiong2021-pvp")          # or a path to a YAML file
    tables, truth = simulate(profile, n_procedures=10_000, seed=1)

``tables`` passes ``features.validate.validate_raw`` (the contract's columns plus its
optional metadata columns); ``truth`` holds, per treated level, the true absolute (crude)
risk of each outcome by 3, 6, 12 and 24 months with death as a competing risk
(``p_<outcome>_<m>m``), the probability of death by 3, 6, 12 and 24 months (``p_death_<m>m``) and the
deprecated alias ``p_<outcome>`` (= ``p_<outcome>_24m``). Pure: the only file read is the
profile YAML, and randomness comes only from ``numpy.random.default_rng(seed)`` (and
``effects_seed`` when effects are drawn from their published CIs).

Censoring. Follow-up ends before the data cut only by loss (6-15 % of patients) or
death (Gompertz, age- and sex-dependent); neither depends on the fractures, so the
Aalen-Johansen estimate from the labels equals the mean truth
(``tests/features/simulator/test_evidence_truth.py``). Binary labels at 24 months that drop early-censored
event-free patients are biased upwards; use the censoring-aware estimators of
``training.competing_risks``. The effects, their sources and every assumption are listed
in ``docs/simulator.md``.
"""

from features.simulator.pipeline import calibrate_intercepts, simulate
from features.simulator.profile import Profile, available_profiles, load_profile

__all__ = ["Profile", "available_profiles", "calibrate_intercepts", "load_profile", "simulate"]
