"""Bone density features: DXA BMD and T-score, CT Hounsfield units and the HU ratio."""

from __future__ import annotations

import pandas as pd


def bone_density_features(wide: pd.DataFrame) -> pd.DataFrame:
    """HU/BMD features from a ``features.wide.procedure_frame``.

    Pre-operative: DXA BMD (g/cm²) and T-score, HU of the treated vertebra and of the
    vertebrae above and below, and the lower of the two adjacent HU. Post-operative: the
    augmented/adjacent HU ratio (post-op HU of the cemented vertebra over the lowest
    adjacent HU; adjacent HU from the post-op CT if measured there, else pre-op), a
    measure of the stiffness gradient (Zeng review: ratio > 15.18 with adjacent HU < 66.9
    marks high adjacent-fracture risk).
    """
    adjacent_min = wide[["hu_upper_adjacent_preop", "hu_lower_adjacent_preop"]].min(axis=1, skipna=True)
    adjacent_min_post = wide[["hu_upper_adjacent_postop", "hu_lower_adjacent_postop"]].min(axis=1, skipna=True)
    denominator = adjacent_min_post.fillna(adjacent_min)
    # HU near or below zero (fatty marrow) makes the ratio meaningless: leave it missing.
    ratio = wide["hu_index_postop"] / denominator.where(denominator >= 5)
    return pd.DataFrame(
        {
            "dxa_bmd_g_cm2": wide["dxa_bmd_g_cm2"],
            "dxa_t_score": wide["dxa_t_score"],
            "hu_index_preop": wide["hu_index_preop"],
            "hu_upper_adjacent": wide["hu_upper_adjacent_preop"],
            "hu_lower_adjacent": wide["hu_lower_adjacent_preop"],
            "hu_adjacent_min": adjacent_min,
            "hu_ratio_augmented_adjacent": ratio,
        },
        index=wide.index,
    )
