"""MRI signs before surgery: intravertebral cleft and endplate cortical disruption."""

from __future__ import annotations

import pandas as pd

from features._columns import numbers


def imaging_sign_features(wide: pd.DataFrame) -> pd.DataFrame:
    """``ivc`` and ``endplate_disruption`` (0/1, missing without pre-op MRI)."""
    return pd.DataFrame(
        {"ivc": numbers(wide, "ivc_preop"), "endplate_disruption": numbers(wide, "endplate_disruption_preop")},
        index=wide.index,
    )
