"""Procedure and cement-distribution features: technique, approach, volume, fill ratio,
endplate contact (NPEC) and leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features._columns import WideColumns, flag, group_frame, numbers, present, text


def cement_columns(wide: WideColumns) -> dict[str, np.ndarray]:
    """Cement features from the columns of a wide frame, one array by feature name.

    Fill ratios in % of the vertebral body volume (pre-op CT); the larger-side ratio is
    the fuller hemivertebra's cement over the *whole* body volume, as Zhou 2023 defines it
    (Zeng review: > 13.82 % raises adjacent-fracture risk; the threshold only holds with
    this denominator). ``npec_count`` = endplates (0-2) the cement does not
    touch on the post-op radiograph (Xiong 2021 NPEC). Leakage flags from post-op imaging;
    ``leakage_intradiscal_spike`` marks the spike type (Yassavoly 2025).
    """
    technique, approach = text(wide, "technique"), text(wide, "approach")
    body = numbers(wide, "vertebral_body_volume_ml_preop")
    volume = numbers(wide, "cement_volume_ml")
    touches_upper = numbers(wide, "cement_touches_upper_endplate_postop")
    touches_lower = numbers(wide, "cement_touches_lower_endplate_postop")
    intradiscal = text(wide, "leakage_intradiscal_postop")
    intradiscal_known = present(intradiscal)
    leak_intradiscal = flag(intradiscal != "none", intradiscal_known)
    paravertebral = numbers(wide, "leakage_paravertebral_postop")
    venous = numbers(wide, "leakage_venous_postop")
    epidural = numbers(wide, "leakage_epidural_postop")
    any_leak = np.fmax.reduce([leak_intradiscal, paravertebral, venous, epidural])  # NaN only when every site is unknown
    return {
        "technique_pkp": flag(technique == "PKP", present(technique)),
        "approach_bilateral": flag(approach == "bilateral", present(approach)),
        "cement_volume_ml": volume,
        "fill_ratio_total_pct": 100.0 * volume / body,
        "fill_ratio_larger_side_pct": 100.0 * numbers(wide, "cement_larger_side_volume_ml_postop") / body,
        "npec_upper": 1.0 - touches_upper,
        "npec_lower": 1.0 - touches_lower,
        "npec_count": 2.0 - touches_upper - touches_lower,
        "leakage_any": any_leak,
        "leakage_intradiscal": leak_intradiscal,
        "leakage_intradiscal_spike": flag(intradiscal == "spike", intradiscal_known),
        "leakage_paravertebral": paravertebral,
        "leakage_venous": venous,
        "leakage_epidural": epidural,
    }


def cement_features(wide: pd.DataFrame) -> pd.DataFrame:
    """``cement_columns`` of a wide frame (``features.wide.procedure_frame``), on its index."""
    return group_frame(cement_columns, wide)
