"""Simulated cohorts run through the real data path, shared by the evidence tests.

Each cohort goes simulator -> ``validate_raw`` -> ``build_feature_table`` /
``build_labels``, exactly as a hospital export would, and is built once per test session
(cached): the evidence tests read it, they must not modify it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import sqrt

import numpy as np
import pandas as pd

from features.assemble import build_feature_table
from features.labels import build_labels
from features.simulator import load_profile, simulate
from features.validate import validate_raw

#: Large enough for ~4,000 cemented refractures in the Xiong-like cohort (the odds ratios'
#: simulation error is then far below the published CIs) and still ~15 s to build.
XIONG_N, XIONG_SEED = 120_000, 2021
PKP_N, PKP_SEED = 60_000, 2025
SITE_C_N, SITE_C_SEED = 60_000, 13


@dataclass(frozen=True)
class PipelineCohort:
    """A simulated export after validation, with features (post-op set), labels and truth.

    ``data``: one row per procedure_id: patient_id, level, technique, every post-op
    feature, the label columns of ``features.labels`` and the truth probabilities.
    """

    tables: dict[str, pd.DataFrame]
    truth: pd.DataFrame
    data: pd.DataFrame


@lru_cache(maxsize=None)
def pipeline_cohort(profile: str, n: int, seed: int) -> PipelineCohort:
    """Simulate, validate, build features and labels (cached per arguments)."""
    tables, truth = simulate(load_profile(profile), n_procedures=n, seed=seed)
    typed = validate_raw(tables)
    features = build_feature_table(typed, "postop")
    labels = build_labels(typed, horizon_months=24)
    procedures = typed["procedures"].set_index("procedure_id")[["patient_id", "level", "technique"]]
    data = procedures.join(features).join(labels).join(truth.set_index("procedure_id"))
    return PipelineCohort(tables=typed, truth=truth, data=data)


def xiong_cohort() -> PipelineCohort:
    """The xiong2021-pvp cohort used by the odds-ratio, Table 1 and incidence tests."""
    return pipeline_cohort("xiong2021-pvp", XIONG_N, XIONG_SEED)


def pkp_cohort() -> PipelineCohort:
    """The yassavoly2025-pkp cohort used by the incidence and structure tests."""
    return pipeline_cohort("yassavoly2025-pkp", PKP_N, PKP_SEED)


def site_c_cohort() -> PipelineCohort:
    """The made-up older, frailer site-c-older-frail-pkp cohort (issue 13: transport)."""
    return pipeline_cohort("site-c-older-frail-pkp", SITE_C_N, SITE_C_SEED)


def case_control_sample(data: pd.DataFrame, outcome: str = "cemented_refracture", seed: int = 0) -> pd.DataFrame:
    """Xiong 2021's design: every labelled case and as many random labelled controls.

    Procedures whose label is missing (censored before 24 months without the event) are
    left out, as a study would leave out patients it could not follow.
    """
    labelled = data[data[outcome].notna()]
    cases = labelled[labelled[outcome] == 1]
    controls = labelled[labelled[outcome] == 0].sample(n=len(cases), random_state=seed)
    return pd.concat([cases, controls])


def wilson_interval(events: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95 % interval of a published proportion events/n."""
    p = events / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def patient_incidence(data: pd.DataFrame) -> pd.DataFrame:
    """Per-patient 24-month labels, counted as the published cohorts count them.

    Cemented refracture / adjacent fracture: on at least one treated level. Remote
    fracture (Yassavoly 2025, "at least one normal segment away"): two or more levels
    from *every* treated level, i.e. a remote label on all of the patient's levels (a
    fracture next to one treated level is a per-level remote label of the others, but
    not a remote fracture of the patient). Missing where the labels are missing.
    """
    g = data.groupby("patient_id")
    return pd.DataFrame({
        "cemented_refracture": g["cemented_refracture"].max(),
        "adjacent_fracture": g["adjacent_fracture"].max(),
        "remote_fracture": g["remote_fracture"].min(),
        "any_new_fracture": g[["cemented_refracture", "adjacent_fracture", "remote_fracture"]].max().max(axis=1),
    }).astype("Float64")


def proportion(mask: pd.Series) -> float:
    """Share of True among non-missing values."""
    values = mask.dropna().astype(float)
    return float(np.mean(values)) if len(values) else float("nan")
