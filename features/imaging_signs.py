"""MRI signs before surgery: intravertebral cleft and endplate cortical disruption."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features._columns import WideColumns, group_frame, numbers


def imaging_sign_columns(wide: WideColumns) -> dict[str, np.ndarray]:
    """``ivc`` and ``endplate_disruption`` (0/1, missing without pre-op MRI)."""
    return {"ivc": numbers(wide, "ivc_preop"), "endplate_disruption": numbers(wide, "endplate_disruption_preop")}


def imaging_sign_features(wide: pd.DataFrame) -> pd.DataFrame:
    """``imaging_sign_columns`` of a wide frame (``features.wide.procedure_frame``), on its index."""
    return group_frame(imaging_sign_columns, wide)
