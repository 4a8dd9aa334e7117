"""Bone density features: DXA BMD and T-score, CT Hounsfield units and the HU ratio."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features._columns import WideColumns, group_frame, numbers


def bone_density_columns(wide: WideColumns) -> dict[str, np.ndarray]:
    """HU/BMD features from the columns of a wide frame, one array by feature name.

    Pre-operative: DXA BMD (g/cm²) and T-score, HU of the treated vertebra and of the
    vertebrae above and below, and the lower of the two adjacent HU. Post-operative: the
    augmented/adjacent HU ratio (post-op HU of the cemented vertebra over the lowest
    adjacent HU; adjacent HU from the post-op CT if measured there, else pre-op), a
    measure of the stiffness gradient (Zeng review: ratio > 15.18 with adjacent HU < 66.9
    marks high adjacent-fracture risk).
    """
    upper, lower = numbers(wide, "hu_upper_adjacent_preop"), numbers(wide, "hu_lower_adjacent_preop")
    adjacent_min = np.fmin(upper, lower)  # the lower of the two; either alone if one is missing
    adjacent_min_post = np.fmin(numbers(wide, "hu_upper_adjacent_postop"), numbers(wide, "hu_lower_adjacent_postop"))
    denominator = np.where(np.isnan(adjacent_min_post), adjacent_min, adjacent_min_post)
    # HU near or below zero (fatty marrow) makes the ratio meaningless: leave it missing.
    with np.errstate(invalid="ignore"):
        usable = np.where(denominator >= 5, denominator, np.nan)
    ratio = numbers(wide, "hu_index_postop") / usable
    return {
        "dxa_bmd_g_cm2": numbers(wide, "dxa_bmd_g_cm2"),
        "dxa_t_score": numbers(wide, "dxa_t_score"),
        "hu_index_preop": numbers(wide, "hu_index_preop"),
        "hu_upper_adjacent": upper,
        "hu_lower_adjacent": lower,
        "hu_adjacent_min": adjacent_min,
        "hu_ratio_augmented_adjacent": ratio,
    }


def bone_density_features(wide: pd.DataFrame) -> pd.DataFrame:
    """``bone_density_columns`` of a wide frame (``features.wide.procedure_frame``), on its index."""
    return group_frame(bone_density_columns, wide)
