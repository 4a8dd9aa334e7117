"""Morphometry by the definitions of Xiong 2021 (clinical-evidence §2): compression rate,
reduction rate, compression-rate increase, kyphotic/wedge/reduction angles, level."""

from __future__ import annotations

import pandas as pd

from features.levels import is_thoracolumbar, level_index


def compression_rate_pct(height_mm: pd.Series, upper_mm: pd.Series, lower_mm: pd.Series) -> pd.Series:
    """Compression rate in %: fractured height / mean height of the vertebrae above and below.

    When one neighbour is missing (at L5 there is no lumbar vertebra below) the other
    alone is the reference, as Xiong 2021 does at L5 (ratio of L5 to L4 height).
    """
    reference = pd.concat([upper_mm, lower_mm], axis=1).mean(axis=1, skipna=True)
    return 100.0 * height_mm / reference


def _col(wide: pd.DataFrame, name: str) -> pd.Series:
    # Records sent for prediction carry no follow-up imaging: those columns are absent.
    return wide[name] if name in wide.columns else pd.Series(float("nan"), index=wide.index)


def _cr(wide: pd.DataFrame, timepoint: str) -> pd.Series:
    return compression_rate_pct(
        _col(wide, f"vertebral_height_mm_{timepoint}"),
        _col(wide, f"upper_adjacent_height_mm_{timepoint}"),
        _col(wide, f"lower_adjacent_height_mm_{timepoint}"),
    )


def morphometry_features(wide: pd.DataFrame) -> pd.DataFrame:
    """Morphometry from a ``features.wide.procedure_frame``.

    Rates in % (of the reference height), changes in percentage points, angles in degrees.
    ``reduction_rate_pct`` = post-op CR − pre-op CR; ``compression_rate_increase_pct``
    (CRI) = post-op CR − follow-up CR; ``reduction_angle_deg`` = pre-op KA − post-op KA.
    """
    cr_pre, cr_post, cr_follow = _cr(wide, "preop"), _cr(wide, "postop"), _cr(wide, "followup")
    return pd.DataFrame(
        {
            "level_index": level_index(wide["level"]).astype("float64"),
            "thoracolumbar_junction": is_thoracolumbar(wide["level"]).astype("float64"),
            "compression_rate_preop_pct": cr_pre,
            "kyphotic_angle_preop_deg": wide["kyphotic_angle_deg_preop"],
            "wedge_angle_preop_deg": wide["wedge_angle_deg_preop"],
            "compression_rate_postop_pct": cr_post,
            "reduction_rate_pct": cr_post - cr_pre,
            "kyphotic_angle_postop_deg": wide["kyphotic_angle_deg_postop"],
            "reduction_angle_deg": wide["kyphotic_angle_deg_preop"] - wide["kyphotic_angle_deg_postop"],
            "compression_rate_increase_pct": cr_post - cr_follow,
        },
        index=wide.index,
    )
