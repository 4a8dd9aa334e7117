"""Patients, treatment sessions and treated levels: who is treated, where and how.

Every function takes a ``numpy.random.Generator`` and returns plain numpy arrays (one
entry per patient or per treated level), so a cohort of 100,000 levels is drawn in a
few vectorised steps. One patient has one treatment session (one surgery date) with one
or more treated levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.levels import LEVELS
from features.simulator.anatomy import BODY_VOLUME_ML, N_LEVELS, REFERENCE_BODY_HEIGHT_CM
from features.simulator.profile import Categorical, Normal, Profile, Sex, SexValue, Share

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Sessions:
    """Which levels each patient's session treats.

    ``patient`` and ``level`` have one entry per treated level (level: 0 = T1 ... 16 = L5);
    ``treated`` is a (patients x 17) mask of the levels treated in each session.
    """

    n_levels: np.ndarray
    patient: np.ndarray
    level: np.ndarray
    treated: np.ndarray


def normal(rng: np.random.Generator, spec: Normal, size: int | tuple[int, ...]) -> np.ndarray:
    """Draw from a normal distribution clipped to the spec's [min, max]."""
    return np.clip(rng.normal(spec.mean, spec.sd, size), spec.min, spec.max)


def bernoulli(rng: np.random.Generator, p: float | np.ndarray | Share, size: int) -> np.ndarray:
    """0/1 draws (int8) with probability p (a number, an array or a Share)."""
    p = p.value if isinstance(p, Share) else p
    return (rng.random(size) < p).astype(np.int8)


def categorical(rng: np.random.Generator, spec: Categorical, size: int) -> np.ndarray:
    """Draw category names (object array) with the spec's probabilities."""
    names = np.array(list(spec.probabilities), dtype=object)
    cum = np.cumsum(list(spec.probabilities.values()))
    idx = np.minimum(np.searchsorted(cum, rng.random(size) * cum[-1], side="right"), len(names) - 1)
    return names[idx]


def by_sex(spec: Sex | SexValue, male: np.ndarray, field: str = "mean") -> np.ndarray:
    """Per-patient value of a sex-specific number, or of a sex-specific Normal's field (mean or sd)."""
    if isinstance(spec, SexValue):
        return np.where(male == 1, spec.male, spec.female)
    return np.where(male == 1, getattr(spec.male, field), getattr(spec.female, field))


def level_probabilities(profile: Profile) -> np.ndarray:
    """Probability of each of the 17 levels (T1..L5) being the treated level."""
    p = np.zeros(N_LEVELS)
    for name, prob in profile.procedure.levels.probabilities.items():
        p[LEVELS.index(name)] = prob
    return p / p.sum()


def draw_sessions(profile: Profile, n_procedures: int, rng: np.random.Generator) -> Sessions:
    """Draw sessions until exactly ``n_procedures`` levels are treated.

    Levels within a session are drawn without replacement in proportion to the profile's
    level distribution (Gumbel top-k), so multi-level sessions cluster at the
    thoracolumbar junction as the published level distributions do. The last session is
    shortened if needed so the total is exact.
    """
    counts_spec = profile.procedure.levels_per_session
    counts = np.array([int(k) for k in counts_spec.probabilities])
    probs = np.array(list(counts_spec.probabilities.values()))
    n_sessions_max = n_procedures  # every session treats >= 1 level
    n_levels = rng.choice(counts, size=n_sessions_max, p=probs / probs.sum())
    total = np.cumsum(n_levels)
    n_sessions = int(np.searchsorted(total, n_procedures) + 1)
    n_levels = n_levels[:n_sessions].copy()
    n_levels[-1] -= int(total[n_sessions - 1] - n_procedures)

    log_p = np.log(np.maximum(level_probabilities(profile), 1e-300))
    log_p[level_probabilities(profile) == 0] = -np.inf
    keys = log_p[None, :] + rng.gumbel(size=(n_sessions, N_LEVELS))
    order = np.argsort(-keys, axis=1, kind="stable")
    rank = np.empty_like(order)
    rank[np.arange(n_sessions)[:, None], order] = np.arange(N_LEVELS)[None, :]
    treated = rank < n_levels[:, None]
    patient, level = np.nonzero(treated)  # row-major: sessions in order, levels cranial to caudal
    return Sessions(n_levels=n_levels, patient=patient, level=level, treated=treated)


def draw_patients(profile: Profile, n_patients: int, rng: np.random.Generator) -> Arrays:
    """Baseline patient characteristics: demographics, bone, muscle, history, dates.

    Bone quality is one latent z per patient (lower with age, higher in men); DXA BMD and
    CT HU are both read from it, so HU correlates with BMD, age and sex. Psoas area falls
    and paraspinal fat rises with age, so sarcopenia rises with age.
    """
    d, b, m, h, f = profile.demographics, profile.bone, profile.muscle, profile.history, profile.followup
    age = normal(rng, d.age_years, n_patients)
    male = 1 - bernoulli(rng, d.female_share, n_patients)
    age_dev_10y = (age - d.age_years.mean) / 10
    height_cm = np.clip(rng.normal(by_sex(d.body_height_cm, male), by_sex(d.body_height_cm, male, "sd")), 125, 205)
    weight_kg = np.clip(rng.normal(by_sex(d.weight_kg, male), by_sex(d.weight_kg, male, "sd")), 28, 190)

    bone_z = b.age_slope_sd_per_10y.value * age_dev_10y + b.male_shift_sd.value * male + rng.standard_normal(n_patients)
    bmd_true = np.clip(b.bmd_g_cm2.mean + b.bmd_g_cm2.sd * bone_z, b.bmd_g_cm2.min, b.bmd_g_cm2.max)
    r = b.hu_bmd_correlation.value
    hu_z = r * bone_z + np.sqrt(1 - r**2) * rng.standard_normal(n_patients)
    hu_systemic = np.clip(b.hu_trabecular.mean + b.hu_trabecular.sd * hu_z, b.hu_trabecular.min, b.hu_trabecular.max)

    psoas = np.clip(rng.normal(by_sex(m.psoas_area_cm2, male), by_sex(m.psoas_area_cm2, male, "sd"))
                    + m.psoas_area_slope_per_10y.value * age_dev_10y, 2.0, 55.0)
    psoas_index = psoas / (height_cm / 100) ** 2
    fat = normal(rng, m.fat_fraction_pct, n_patients) + m.fat_fraction_slope_per_10y.value * age_dev_10y \
        + m.fat_fraction_female_shift.value * (1 - male)

    prior_rate = h.prior_fracture_rate.value * np.exp(-h.prior_fracture_bone_log_rate_per_sd.value * bone_z)
    prior_n = np.minimum(rng.poisson(prior_rate), 15)

    span_days = (f.enrolment_end - f.enrolment_start).days
    surgery_day = rng.integers(0, span_days + 1, n_patients)
    return {
        "age_years": age,
        "male": male.astype(np.int8),
        "height_cm": height_cm,
        "weight_kg": weight_kg,
        "bone_z": bone_z,
        "bmd_true": bmd_true,
        "hu_systemic": hu_systemic,
        "psoas_area_cm2": psoas,
        "psoas_index": psoas_index,
        "sarcopenia": (psoas_index < by_sex(m.psoas_index_cutoff_cm2_m2, male)).astype(np.int8),
        "paraspinal_fat_fraction_pct": np.clip(fat, 2.0, 95.0),
        "prior_vertebral_fractures_n": prior_n,
        "glucocorticoids_long_term": bernoulli(rng, h.glucocorticoids_long_term, n_patients),
        "type2_diabetes": bernoulli(rng, h.type2_diabetes, n_patients),
        "chronic_kidney_disease": bernoulli(rng, h.chronic_kidney_disease, n_patients),
        "anti_osteoporosis_therapy": categorical(rng, h.therapy, n_patients),
        "brace_prescribed": bernoulli(rng, h.brace, n_patients),
        "bmd_measurement_error": rng.normal(0.0, 0.015, n_patients),
        "surgery_day": surgery_day,  # days after the enrolment start
    }


def draw_procedures(profile: Profile, patients: Arrays, sessions: Sessions, rng: np.random.Generator) -> Arrays:
    """Per treated level: technique, approach, body volume, cement volume, pain onset."""
    pr = profile.procedure
    n = len(sessions.level)
    pat = sessions.patient
    n_patients = len(sessions.n_levels)
    pkp_session = bernoulli(rng, pr.pkp_share, n_patients)
    pkp = pkp_session[pat]
    approach = np.where(pkp == 1, categorical(rng, pr.approach_pkp, n), categorical(rng, pr.approach_pvp, n))

    size = (patients["height_cm"][pat] / REFERENCE_BODY_HEIGHT_CM) ** 2
    body_volume = BODY_VOLUME_ML[sessions.level] * size * np.exp(rng.normal(0, 0.08, n))
    mean_volume = float(level_probabilities(profile) @ BODY_VOLUME_ML)
    cement = rng.normal(pr.cement_volume_ml.mean, pr.cement_volume_ml.sd, n) \
        + pr.cement_ml_per_ml_body_volume.value * (BODY_VOLUME_ML[sessions.level] - mean_volume)
    cement = np.clip(cement, pr.cement_volume_ml.min, pr.cement_volume_ml.max)

    pain_days = np.clip(np.exp(rng.normal(pr.days_pain_to_surgery.mean, pr.days_pain_to_surgery.sd, n_patients)),
                        pr.days_pain_to_surgery.min, pr.days_pain_to_surgery.max).round()
    pain_missing = bernoulli(rng, pr.pain_onset_missing, n_patients).astype(bool)
    return {
        "pkp": pkp,
        "approach": approach,
        "body_volume_ml": body_volume,
        "cement_volume_ml": np.round(cement, 1),
        "days_pain_to_surgery": pain_days[pat],
        "pain_onset_missing": pain_missing[pat],
    }
