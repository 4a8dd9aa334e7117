"""Sarcopenia features: psoas muscle index, paraspinal fat fraction, sarcopenia flag."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features._columns import WideColumns, flag, group_frame, numbers, text

#: Psoas muscle index cut-offs at L3 (cm²/m²) below which a patient is sarcopenic.
#: Source: Hamaguchi Y et al., Nutrition 2016;32(11-12):1200-1205 (men 6.36, women 3.92).
PMI_THRESHOLD_CM2_M2 = {"M": 6.36, "F": 3.92}
SARCOPENIA_SOURCE = "Hamaguchi 2016 (Nutrition 32:1200): psoas muscle index at L3 < 6.36 cm²/m² men, < 3.92 cm²/m² women"


def sarcopenia_columns(wide: WideColumns) -> dict[str, np.ndarray]:
    """Sarcopenia features from the columns of a wide frame, one array by feature name.

    ``psoas_muscle_index_cm2_m2`` = psoas area at L3 (cm², both sides) / height (m)²;
    ``paraspinal_fat_fraction_pct`` as measured; ``sarcopenia`` = 1 when the index is
    below the sex-specific threshold in ``PMI_THRESHOLD_CM2_M2``, missing when the index is.
    """
    pmi = numbers(wide, "psoas_area_cm2_preop") / (numbers(wide, "height_cm") / 100.0) ** 2
    sex = text(wide, "sex")
    threshold = np.full(wide.n_rows, np.nan)
    for code, cut in PMI_THRESHOLD_CM2_M2.items():
        threshold[sex == code] = cut
    return {
        "psoas_muscle_index_cm2_m2": pmi,
        "paraspinal_fat_fraction_pct": numbers(wide, "paraspinal_fat_fraction_pct_preop"),
        "sarcopenia": flag(pmi < threshold, ~np.isnan(pmi) & ~np.isnan(threshold)),
    }


def sarcopenia_features(wide: pd.DataFrame) -> pd.DataFrame:
    """``sarcopenia_columns`` of a wide frame (``features.wide.procedure_frame``), on its index."""
    return group_frame(sarcopenia_columns, wide)
