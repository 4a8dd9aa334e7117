"""Morphometry by the definitions of Xiong 2021 (clinical-evidence §2): compression rate,
reduction rate, compression-rate increase, kyphotic/wedge/reduction angles, level."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features._columns import WideColumns, group_frame, mean_present, numbers, text
from features.levels import LEVEL_INDEX, THORACOLUMBAR_JUNCTION


def compression_rate_pct(height_mm, upper_mm, lower_mm):
    """Compression rate in %: fractured height / mean height of the vertebrae above and below.

    When one neighbour is missing (at L5 there is no lumbar vertebra below) the other
    alone is the reference, as Xiong 2021 does at L5 (ratio of L5 to L4 height).
    Takes Series (returns a Series on ``height_mm``'s index) or arrays (returns an array).
    """
    h, u, lo = (np.asarray(x, dtype="float64") for x in (height_mm, upper_mm, lower_mm))
    rate = 100.0 * h / mean_present(u, lo)
    return pd.Series(rate, index=height_mm.index) if isinstance(height_mm, pd.Series) else rate


def _cr(wide: WideColumns, timepoint: str) -> np.ndarray:
    # Records sent for prediction carry no follow-up imaging: those columns are absent (NaN).
    return compression_rate_pct(
        numbers(wide, f"vertebral_height_mm_{timepoint}"),
        numbers(wide, f"upper_adjacent_height_mm_{timepoint}"),
        numbers(wide, f"lower_adjacent_height_mm_{timepoint}"),
    )


def morphometry_columns(wide: WideColumns) -> dict[str, np.ndarray]:
    """Morphometry from the columns of a wide frame, one array by feature name.

    Rates in % (of the reference height), changes in percentage points, angles in degrees.
    ``reduction_rate_pct`` = post-op CR − pre-op CR; ``compression_rate_increase_pct``
    (CRI) = post-op CR − follow-up CR; ``reduction_angle_deg`` = pre-op KA − post-op KA.
    """
    cr_pre, cr_post, cr_follow = _cr(wide, "preop"), _cr(wide, "postop"), _cr(wide, "followup")
    level = text(wide, "level")
    kyphosis_pre, kyphosis_post = numbers(wide, "kyphotic_angle_deg_preop"), numbers(wide, "kyphotic_angle_deg_postop")
    return {
        "level_index": np.array([LEVEL_INDEX.get(v, np.nan) for v in level], dtype="float64"),
        "thoracolumbar_junction": np.isin(level, list(THORACOLUMBAR_JUNCTION)).astype("float64"),
        "compression_rate_preop_pct": cr_pre,
        "kyphotic_angle_preop_deg": kyphosis_pre,
        "wedge_angle_preop_deg": numbers(wide, "wedge_angle_deg_preop"),
        "compression_rate_postop_pct": cr_post,
        "reduction_rate_pct": cr_post - cr_pre,
        "kyphotic_angle_postop_deg": kyphosis_post,
        "reduction_angle_deg": kyphosis_pre - kyphosis_post,
        "compression_rate_increase_pct": cr_post - cr_follow,
    }


def morphometry_features(wide: pd.DataFrame) -> pd.DataFrame:
    """``morphometry_columns`` of a wide frame (``features.wide.procedure_frame``), on its index."""
    return group_frame(morphometry_columns, wide)
