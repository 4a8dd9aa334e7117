"""What a site's export lacks, and how the site measures: missing examinations (not at
random) and measurement metadata (DXA site, CT tube voltage and contrast).

Drawn per patient after the outcomes, from the same generator, so the risks and events
of a cohort do not depend on a site's measurement habits.
"""

from __future__ import annotations

import numpy as np

from features.simulator.cohort import Arrays, categorical
from features.simulator.profile import Profile

#: Young-adult DXA reference (mean, SD in g/cm²) by site and sex for the T-score, total hip
#: and femoral neck from NHANES III (Looker 1998); lumbar spine from the profile.
#: Assumption: the lumbar-spine reference stands for the manufacturer's.
_HIP_REFERENCE = {"total_hip": {"F": (0.942, 0.122), "M": (1.041, 0.144)},
                  "femoral_neck": {"F": (0.858, 0.120), "M": (0.934, 0.137)}}
#: Areal BMD at the hip relative to the lumbar spine in older adults with vertebral
#: fractures (assumption: degenerative change inflates spine BMD; hip ~0.85x, neck ~0.75x).
_SITE_FACTOR = {"lumbar_spine": 1.0, "total_hip": 0.85, "femoral_neck": 0.75}


def frailty_score(patients: Arrays) -> np.ndarray:
    """Standardised frailty score: age, sarcopenia, earlier fractures, CKD (assumption:
    these patients are imaged less, e.g. no MRI when they cannot lie still, no DXA)."""
    raw = (patients["age_years"] - 80) / 10 + 0.5 * patients["sarcopenia"] \
        + 0.5 * (patients["prior_vertebral_fractures_n"] > 0) + 0.5 * patients["chronic_kidney_disease"]
    sd = raw.std()
    return (raw - raw.mean()) / (sd if sd > 0 else 1.0)


def draw_missingness(profile: Profile, patients: Arrays, rng: np.random.Generator) -> Arrays:
    """Per patient, True where an examination is missing: preop_mri, preop_ct, postop_ct, dxa."""
    m = profile.missingness
    shift = np.log(m.frailty_odds_ratio_per_sd.value) * frailty_score(patients)
    out: Arrays = {}
    for name in ("preop_mri", "preop_ct", "postop_ct", "dxa"):
        share = getattr(m, name).value
        if share <= 0:
            out[name] = np.zeros(len(shift), dtype=bool)
            rng.random(len(shift))  # keep the draw order fixed whatever the shares
            continue
        logit = np.log(share / (1 - share)) + shift if share < 1 else np.full(len(shift), np.inf)
        out[name] = rng.random(len(shift)) < 1 / (1 + np.exp(-logit))
    return out


def draw_measurement(profile: Profile, patients: Arrays, rng: np.random.Generator) -> Arrays:
    """Per patient: DXA site with the BMD (g/cm²) and T-score measured there, CT tube
    voltage (kV) and contrast (0/1), and the HU offset (additive, factor) they cause."""
    ms, b = profile.measurement, profile.bone
    n = len(patients["age_years"])
    site = categorical(rng, ms.dxa_site, n)
    male = patients["male"] == 1
    spine_true = patients["bmd_true"]
    factor = np.vectorize(_SITE_FACTOR.get, otypes=[float])(site)
    bmd = np.round(np.clip(spine_true * factor + patients["bmd_measurement_error"]
                           + np.where(site == "lumbar_spine", 0.0, rng.normal(0, 0.03, n)), 0.25, 1.6), 3)
    ref_mean = np.where(male, b.t_score_reference_mean_g_cm2.male, b.t_score_reference_mean_g_cm2.female)
    ref_sd = np.where(male, b.t_score_reference_sd_g_cm2.male, b.t_score_reference_sd_g_cm2.female)
    for name, ref in _HIP_REFERENCE.items():
        ref_mean = np.where(site == name, np.where(male, ref["M"][0], ref["F"][0]), ref_mean)
        ref_sd = np.where(site == name, np.where(male, ref["M"][1], ref["F"][1]), ref_sd)
    kvp = categorical(rng, ms.ct_kvp, n).astype(int)
    contrast = (rng.random(n) < ms.ct_contrast.value).astype(np.int8)
    return {
        "dxa_site": site,
        "dxa_bmd_g_cm2": bmd,
        "dxa_t_score": np.round(np.clip((bmd - ref_mean) / ref_sd, -7, 4), 1),
        "ct_kvp": kvp.astype(float),
        "ct_contrast": contrast,
        "hu_factor": 1 + ms.kvp_hu_factor_per_10kv.value * (kvp - 120) / 10,
        "hu_shift": ms.contrast_hu_shift.value * contrast,
    }
