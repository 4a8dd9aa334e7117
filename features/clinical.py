"""Clinical features: demographics, comorbidity, therapy, timing of surgery, brace."""

from __future__ import annotations

import numpy as np
import pandas as pd

ACTIVE_THERAPIES = frozenset({"bisphosphonate", "denosumab", "teriparatide", "romosozumab", "other"})


def clinical_features(wide: pd.DataFrame) -> pd.DataFrame:
    """Clinical features from a ``features.wide.procedure_frame``.

    Returns age (years), sex, BMI (kg/m²), comorbidity flags, prior vertebral fractures,
    anti-osteoporosis therapy (active / denosumab discontinued), days from pain onset to
    surgery, number of levels treated in the session and the post-operative brace.
    """
    height_m = wide["height_cm"] / 100.0
    therapy = wide["anti_osteoporosis_therapy"]
    pain_days = (wide["surgery_date"] - wide["pain_onset_date"]).dt.days.astype("float64")
    return pd.DataFrame(
        {
            "age_years": wide["age_years"].astype("float64"),
            "sex_female": np.where(wide["sex"].isna(), np.nan, (wide["sex"] == "F").astype("float64")),
            "bmi_kg_m2": wide["weight_kg"] / height_m**2,
            "type2_diabetes": wide["type2_diabetes"],
            "chronic_kidney_disease": wide["chronic_kidney_disease"],
            "glucocorticoids_long_term": wide["glucocorticoids_long_term"],
            "prior_vertebral_fractures_n": wide["prior_vertebral_fractures_n"],
            "on_anti_osteoporosis_therapy": np.where(therapy.isna(), np.nan, therapy.isin(ACTIVE_THERAPIES).astype("float64")),
            "denosumab_discontinued": np.where(therapy.isna(), np.nan, (therapy == "denosumab_discontinued").astype("float64")),
            "pain_to_surgery_days": pain_days,
            "n_levels_treated": wide["n_levels_treated"],
            "brace_prescribed": wide["brace_prescribed"],
        },
        index=wide.index,
    )
