"""Procedure and cement-distribution features: technique, approach, volume, fill ratio,
endplate contact (NPEC) and leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _flag(mask: pd.Series, missing: pd.Series) -> np.ndarray:
    return np.where(missing, np.nan, mask.astype("float64"))


def cement_features(wide: pd.DataFrame) -> pd.DataFrame:
    """Cement features from a ``features.wide.procedure_frame``.

    Fill ratios in % of the vertebral body volume (pre-op CT); the larger-side ratio is
    the fuller hemivertebra's cement over half the body volume (Zeng review: > 13.82 %
    raises adjacent-fracture risk). ``npec_count`` = endplates (0-2) the cement does not
    touch on the post-op radiograph (Xiong 2021 NPEC). Leakage flags from post-op imaging;
    ``leakage_intradiscal_spike`` marks the spike type (Yassavoly 2025).
    """
    technique = wide["technique"]
    approach = wide["approach"]
    body = wide["vertebral_body_volume_ml_preop"]
    touches_upper = wide["cement_touches_upper_endplate_postop"]
    touches_lower = wide["cement_touches_lower_endplate_postop"]
    intradiscal = wide["leakage_intradiscal_postop"]
    no_intradiscal = intradiscal.isna()
    leak_parts = pd.DataFrame(
        {
            "intradiscal": np.where(no_intradiscal, np.nan, (intradiscal != "none").astype("float64")),
            "paravertebral": wide["leakage_paravertebral_postop"],
            "venous": wide["leakage_venous_postop"],
            "epidural": wide["leakage_epidural_postop"],
        },
        index=wide.index,
    )
    any_leak = leak_parts.max(axis=1, skipna=True)  # NaN only when every site is unknown
    return pd.DataFrame(
        {
            "technique_pkp": _flag(technique == "PKP", technique.isna()),
            "approach_bilateral": _flag(approach == "bilateral", approach.isna()),
            "cement_volume_ml": wide["cement_volume_ml"],
            "fill_ratio_total_pct": 100.0 * wide["cement_volume_ml"] / body,
            "fill_ratio_larger_side_pct": 100.0 * wide["cement_larger_side_volume_ml_postop"] / (body / 2.0),
            "npec_upper": 1.0 - touches_upper,
            "npec_lower": 1.0 - touches_lower,
            "npec_count": 2.0 - touches_upper - touches_lower,
            "leakage_any": any_leak,
            "leakage_intradiscal": leak_parts["intradiscal"],
            "leakage_intradiscal_spike": _flag(intradiscal == "spike", no_intradiscal),
            "leakage_paravertebral": leak_parts["paravertebral"],
            "leakage_venous": leak_parts["venous"],
            "leakage_epidural": leak_parts["epidural"],
        },
        index=wide.index,
    )
