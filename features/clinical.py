"""Clinical features: demographics, comorbidity, therapy, timing of surgery, brace."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features._columns import WideColumns, dates, flag, group_frame, numbers, present, text

ACTIVE_THERAPIES = frozenset({"bisphosphonate", "denosumab", "teriparatide", "romosozumab", "other"})


def clinical_columns(wide: WideColumns) -> dict[str, np.ndarray]:
    """Clinical features from the columns of a wide frame, one array by feature name.

    Returns age (years), sex, BMI (kg/m²), comorbidity flags, prior vertebral fractures,
    anti-osteoporosis therapy (active / denosumab discontinued), days from pain onset to
    surgery, number of levels treated in the session and the post-operative brace.
    """
    height_m = numbers(wide, "height_cm") / 100.0
    sex = text(wide, "sex")
    therapy = text(wide, "anti_osteoporosis_therapy")
    therapy_known = present(therapy)
    surgery = dates(wide, "surgery_date")
    onset = dates(wide, "pain_onset_date")
    pain_days = np.floor((surgery - onset) / np.timedelta64(1, "D"))  # whole days; NaN when a date is missing
    return {
        "age_years": numbers(wide, "age_years"),
        "sex_female": flag(sex == "F", present(sex)),
        "bmi_kg_m2": numbers(wide, "weight_kg") / height_m**2,
        "type2_diabetes": numbers(wide, "type2_diabetes"),
        "chronic_kidney_disease": numbers(wide, "chronic_kidney_disease"),
        "glucocorticoids_long_term": numbers(wide, "glucocorticoids_long_term"),
        "prior_vertebral_fractures_n": numbers(wide, "prior_vertebral_fractures_n"),
        "on_anti_osteoporosis_therapy": flag(np.isin(therapy, list(ACTIVE_THERAPIES)), therapy_known),
        "denosumab_discontinued": flag(therapy == "denosumab_discontinued", therapy_known),
        "pain_to_surgery_days": pain_days,
        "n_levels_treated": numbers(wide, "n_levels_treated"),
        "brace_prescribed": numbers(wide, "brace_prescribed"),
    }


def clinical_features(wide: pd.DataFrame) -> pd.DataFrame:
    """``clinical_columns`` of a wide frame (``features.wide.procedure_frame``), on its index."""
    return group_frame(clinical_columns, wide)
