"""Pre- and post-operative imaging of each treated level, and the follow-up images.

Measurements are drawn as a radiologist would record them (heights in mm to 0.1 mm,
angles to 0.1°, HU to 1 HU). The risk-relevant quantities (reduction rate, NPEC count,
fill ratios, HU ratio) are then computed *from the recorded values* with the pipeline's
definitions (clinical-evidence.md §2), so a model fitted on the export sees exactly the
variables the true risk was built from.
"""

from __future__ import annotations

import numpy as np

from features.contract import HEIGHT_READING_SD_MM
from features.simulator.anatomy import N_LEVELS, NORMAL_HEIGHT_MM, REFERENCE_BODY_HEIGHT_CM, REGIONAL_KYPHOSIS_DEG
from features.simulator.cohort import Arrays, Sessions, bernoulli, categorical, normal
from features.simulator.profile import Profile

#: Measurement error of one height read on a lateral radiograph, mm: the contract's
#: (``features.contract.HEIGHT_READING_SD_MM``, Alanay 2007), so the simulated exports carry
#: the error real ones do. Each examination's neighbours are read anew: an untreated
#: neighbour's height before and after surgery differs by SD 2.3 mm.
HEIGHT_READ_SD_MM = HEIGHT_READING_SD_MM


def compression_rate_pct(height: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """CR % = 100 * height / mean(available adjacent heights) (L5: the vertebra above only)."""
    ref = np.where(np.isnan(lower), upper, np.where(np.isnan(upper), lower, (upper + lower) / 2))
    return 100 * height / ref


def _adjacent_heights(upper_true: np.ndarray, lower_true: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = len(upper_true)
    upper = np.round(np.clip(upper_true + rng.normal(0, HEIGHT_READ_SD_MM, n), 8, 60), 1)
    lower = np.round(np.clip(lower_true + rng.normal(0, HEIGHT_READ_SD_MM, n), 8, 60), 1)
    return upper, lower


def _with_cr(cr: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Vertebral height (mm, 0.1 mm) that gives compression rate ``cr`` against the recorded neighbours."""
    ref = np.where(np.isnan(lower), upper, np.where(np.isnan(upper), lower, (upper + lower) / 2))
    return np.round(np.clip(cr / 100 * ref, 3, 60), 1)


def _leakage_base_odds(share: float, odds_ratio: float, exposed: float) -> float:
    """Odds of leakage without the exposure such that the overall share is ``share``."""
    lo, hi = 1e-6, 10.0
    for _ in range(60):
        mid = np.sqrt(lo * hi)
        p = (1 - exposed) * mid / (1 + mid) + exposed * mid * odds_ratio / (1 + mid * odds_ratio)
        lo, hi = (mid, hi) if p < share else (lo, mid)
    return float(np.sqrt(lo * hi))


def draw_operative_imaging(profile: Profile, patients: Arrays, sessions: Sessions, procedures: Arrays,
                           rng: np.random.Generator) -> Arrays:
    """Pre-op and post-op measurements of each treated level, plus measured derived values.

    The pre-operative compression rate is drawn as recorded: up to ~110 %, because painful
    fractures with little or no height loss (oedema on MRI) are augmented too and a height
    read on a radiograph carries ~1.6 mm of error, so a fractured body may read at or
    slightly above its neighbours (issue 22). Each neighbour is read with that error on
    every examination.

    Structure (clinical-evidence.md §2, §4): a cleft (IVC) sits in a more collapsed body,
    raises height restoration (Xiong 2021: +7.2-12.6 points) and makes cement miss the
    endplates (NPEC 94.7 % vs 78.4 %); PKP restores more height than PVP; endplate
    disruption makes intradiscal leakage more likely.
    """
    im = profile.imaging
    n = len(sessions.level)
    pat = sessions.patient
    level = sessions.level
    has_upper = level > 0
    has_lower = level < N_LEVELS - 1
    scale = patients["height_cm"][pat] / REFERENCE_BODY_HEIGHT_CM
    upper_true = np.where(has_upper, NORMAL_HEIGHT_MM[np.maximum(level - 1, 0)] * scale * np.exp(rng.normal(0, 0.04, n)), np.nan)
    lower_true = np.where(has_lower, NORMAL_HEIGHT_MM[np.minimum(level + 1, N_LEVELS - 1)] * scale * np.exp(rng.normal(0, 0.04, n)), np.nan)

    ivc = bernoulli(rng, im.ivc, n)
    endplate_disruption = bernoulli(rng, im.endplate_disruption, n)
    cr_pre_true = np.clip(normal(rng, im.compression_rate_preop_pct, n) + im.ivc_compression_rate_shift_pct.value * ivc,
                          im.compression_rate_preop_pct.min, im.compression_rate_preop_pct.max)
    rr_true = rng.normal(im.reduction_rate_pct.mean, im.reduction_rate_pct.sd, n) \
        + normal(rng, im.ivc_extra_reduction_pct, n) * ivc + im.pkp_extra_reduction_pct.value * procedures["pkp"]
    rr_true = np.clip(rr_true, im.reduction_rate_pct.min, im.reduction_rate_pct.max)
    # Restoration stops at about the neighbours' height; a body read above it before surgery
    # (little height loss plus reading error) keeps at least its pre-operative reading.
    cr_post_true = np.minimum(cr_pre_true + rr_true, np.maximum(102.0, cr_pre_true))

    up_pre, lo_pre = _adjacent_heights(upper_true, lower_true, rng)
    up_post, lo_post = _adjacent_heights(upper_true, lower_true, rng)
    h_pre = _with_cr(cr_pre_true, up_pre, lo_pre)
    h_post = _with_cr(cr_post_true, up_post, lo_post)
    cr_pre = compression_rate_pct(h_pre, up_pre, lo_pre)
    cr_post = compression_rate_pct(h_post, up_post, lo_post)

    per_pct = im.wedge_angle_per_pct_collapse.value
    wedge_pre = np.clip(per_pct * (100 - cr_pre_true) + normal(rng, im.wedge_angle_noise_deg, n), -15, 60)
    kyphosis_pre = np.clip(wedge_pre + REGIONAL_KYPHOSIS_DEG[level] + normal(rng, im.kyphosis_noise_deg, n), -40, 90)
    # Restoring height also corrects kyphosis: the reduction angle follows the reduction rate
    # (profile slope; the 495-patient PKP study ties risk to this Cobb correction).
    reduction_angle = np.clip(normal(rng, im.reduction_angle_deg, n) + im.reduction_angle_per_pct_reduction.value * rr_true,
                              im.reduction_angle_deg.min, im.reduction_angle_deg.max)
    kyphosis_post = np.clip(kyphosis_pre - reduction_angle, -40, 90)
    wedge_post = np.clip(wedge_pre - per_pct * (cr_post_true - cr_pre_true) + rng.normal(0, 1.0, n), -15, 60)

    # CT: native HU of the fractured body, its neighbours, and the augmented body after surgery.
    hu_sys = patients["hu_systemic"][pat]
    hu_pre = np.round(np.clip(hu_sys + rng.normal(10, 12, n), -100, 600))
    hu_up_pre = np.where(has_upper, np.round(np.clip(hu_sys + rng.normal(0, 10, n), 5, 500)), np.nan)
    hu_lo_pre = np.where(has_lower, np.round(np.clip(hu_sys + rng.normal(0, 10, n), 5, 500)), np.nan)
    hu_up_post = np.round(np.clip(hu_up_pre + rng.normal(0, 4, n), 5, 500))
    hu_lo_post = np.round(np.clip(hu_lo_pre + rng.normal(0, 4, n), 5, 500))
    # The fractured body is smaller than a normal one (read on the pre-op CT). Assumption:
    # half the volume follows the height lost at the point of maximum compression.
    body_volume = np.round(np.clip(procedures["body_volume_ml"] * (0.5 + 0.5 * cr_pre_true / 100), 5, 120), 1)
    cement = procedures["cement_volume_ml"]
    fill_pct = 100 * cement / body_volume
    hu_post = np.round(np.clip(im.cemented_hu_base.value + im.cemented_hu_per_fill_pct.value * fill_pct
                               + rng.normal(0, 60, n), 200, 2450))

    # The larger side's share of the cement does not depend on the approach: a unipedicular
    # needle usually crosses the midline, and neither even vs hemivertebral filling nor the
    # approach changes the risk (Xiong 2021 p = 0.605; Gaughen 2002; Jacobson 2017).
    larger_share = np.clip(normal(rng, im.larger_side_share_of_cement, n), 0.5, 1.0)
    larger_side_ml = np.round(cement * larger_share, 1)

    pattern = np.where(ivc == 1, categorical(rng, im.npec_pattern_ivc, n), categorical(rng, im.npec_pattern_no_ivc, n))
    touches_upper = np.isin(pattern, ["none", "lower_only"]).astype(np.int8)
    touches_lower = np.isin(pattern, ["none", "upper_only"]).astype(np.int8)

    ed_share = float(endplate_disruption.mean()) if n else 0.0
    odds0 = _leakage_base_odds(im.leakage_intradiscal.value, im.leakage_intradiscal_endplate_disruption_or.value, ed_share)
    odds = odds0 * np.where(endplate_disruption == 1, im.leakage_intradiscal_endplate_disruption_or.value, 1.0)
    intradiscal = rng.random(n) < odds / (1 + odds)
    spike = rng.random(n) < im.leakage_intradiscal_spike_share.value
    leakage_intradiscal = np.where(intradiscal, np.where(spike, "spike", "round"), "none").astype(object)
    upper_disc = rng.random(n) < im.leakage_intradiscal_upper_share.value
    # A leak towards a missing neighbour (T1 above, L5 below: the L5-S1 disc) still happens.
    leak_side = np.where(intradiscal, np.where(upper_disc, "upper", "lower"), "none").astype(object)

    min_adjacent_hu = np.fmin(hu_up_pre, hu_lo_pre)  # pre-op CT, as features.bone_density defines it
    return {
        "ivc": ivc,
        "endplate_disruption": endplate_disruption,
        "upper_true": upper_true, "lower_true": lower_true,
        "up_pre": up_pre, "lo_pre": lo_pre, "h_pre": h_pre,
        "up_post": up_post, "lo_post": lo_post, "h_post": h_post,
        "cr_pre": cr_pre, "cr_post": cr_post,
        "reduction_rate_pct": cr_post - cr_pre,
        "wedge_pre": np.round(wedge_pre, 1), "wedge_post": np.round(wedge_post, 1),
        "kyphosis_pre": np.round(kyphosis_pre, 1), "kyphosis_post": np.round(kyphosis_post, 1),
        "hu_pre": hu_pre, "hu_up_pre": hu_up_pre, "hu_lo_pre": hu_lo_pre,
        "hu_post": hu_post, "hu_up_post": hu_up_post, "hu_lo_post": hu_lo_post,
        "min_adjacent_hu": min_adjacent_hu,
        "hu_ratio": hu_post / np.fmin(hu_up_post, hu_lo_post),  # post-op CT, as features.bone_density
        "body_volume_ml": body_volume,
        "fill_pct": fill_pct,
        "larger_side_ml": larger_side_ml,
        # Larger-side cement over the WHOLE body volume (LSBCV/VBV %, Zhou 2023), the ratio
        # whose 13.82 % threshold the Zeng review quotes.
        "larger_side_fill_whole_pct": 100 * larger_side_ml / body_volume,
        "reduction_angle_deg": np.round(kyphosis_pre, 1) - np.round(kyphosis_post, 1),  # as measured
        "touches_upper": touches_upper,
        "touches_lower": touches_lower,
        "npec_count": (2 - touches_upper - touches_lower).astype(np.int8),
        "leakage_intradiscal": leakage_intradiscal,
        "leakage_intradiscal_side": leak_side,
        "leakage_paravertebral": bernoulli(rng, im.leakage_paravertebral, n),
        "leakage_venous": bernoulli(rng, im.leakage_venous, n),
        "leakage_epidural": bernoulli(rng, im.leakage_epidural, n),
    }


def draw_followup_imaging(profile: Profile, imaging: Arrays, refractured: np.ndarray, rng: np.random.Generator) -> Arrays:
    """Follow-up radiograph/MRI of each treated level.

    A cemented refracture meets Xiong 2021's criterion: compression-rate increase (CRI)
    >= 15 points (drawn 15.6-40.2, mean ~23.9, so rounding cannot push it under 15) and
    bone marrow edema. Other levels lose 0-14 points: a share lose 7-14 (Jacobson 2017:
    gradual height loss is not a refracture) and rarely show edema for other reasons.
    """
    im = profile.imaging
    n = len(refractured)
    cri_fracture = np.clip(rng.normal(im.refracture_cri_pct.mean, im.refracture_cri_pct.sd, n),
                           max(im.refracture_cri_pct.min, 15.6), im.refracture_cri_pct.max)
    gradual = rng.random(n) < im.gradual_height_loss_share.value
    cri_other = np.where(gradual, rng.uniform(7, 14, n), np.clip(rng.normal(1.5, 2.0, n), -2, 6.9))
    cri = np.where(refractured, cri_fracture, cri_other)
    up_fu, lo_fu = _adjacent_heights(imaging["upper_true"], imaging["lower_true"], rng)
    h_fu = _with_cr(imaging["cr_post"] - cri, up_fu, lo_fu)
    edema = np.where(refractured, 1, bernoulli(rng, im.edema_without_refracture, n)).astype(np.int8)
    per_pct = im.wedge_angle_per_pct_collapse.value
    return {
        "up_fu": up_fu, "lo_fu": lo_fu, "h_fu": h_fu,
        "kyphosis_fu": np.round(np.clip(imaging["kyphosis_post"] + per_pct * cri + rng.normal(0, 1.0, n), -40, 90), 1),
        "wedge_fu": np.round(np.clip(imaging["wedge_post"] + per_pct * cri + rng.normal(0, 1.0, n), -15, 60), 1),
        "bone_marrow_edema": edema,
    }
