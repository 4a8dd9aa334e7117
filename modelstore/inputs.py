"""Which raw record fields each feature is computed from, and how a model handles a
feature it could not compute.

``FEATURE_INPUTS[feature]`` is a tuple of *groups*; each group is a tuple of flat record
field names (``features.records``) of which at least one is needed. A feature that comes
out missing is reported through the groups whose fields are all missing. The mapping
follows the feature functions in ``features/`` (e.g. the compression rate needs the
fractured height and the height of at least one neighbour;
``tests/modelstore/test_model.py`` checks it against the pipelines).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from features.catalog import display_name
from features.coerce import missing_mask
from features.records import RECORD_FIELDS_BY_FLAT

_CR_PRE = (("vertebral_height_mm_preop",), ("upper_adjacent_height_mm_preop", "lower_adjacent_height_mm_preop"))
_CR_POST = (("vertebral_height_mm_postop",), ("upper_adjacent_height_mm_postop", "lower_adjacent_height_mm_postop"))
_LEAKS = ("leakage_intradiscal_postop", "leakage_paravertebral_postop", "leakage_venous_postop", "leakage_epidural_postop")


def _each(*names: str) -> tuple[tuple[str, ...], ...]:
    return tuple((n,) for n in names)


FEATURE_INPUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "age_years": _each("age_years"),
    "sex_female": _each("sex"),
    "bmi_kg_m2": _each("weight_kg", "height_cm"),
    "type2_diabetes": _each("type2_diabetes"),
    "chronic_kidney_disease": _each("chronic_kidney_disease"),
    "glucocorticoids_long_term": _each("glucocorticoids_long_term"),
    "prior_vertebral_fractures_n": _each("prior_vertebral_fractures_n"),
    "on_anti_osteoporosis_therapy": _each("anti_osteoporosis_therapy"),
    "denosumab_discontinued": _each("anti_osteoporosis_therapy"),
    "pain_to_surgery_days": _each("pain_onset_date", "surgery_date"),
    "n_levels_treated": _each("n_levels_treated"),
    "brace_prescribed": _each("brace_prescribed"),
    "dxa_bmd_g_cm2": _each("dxa_bmd_g_cm2"),
    "dxa_t_score": _each("dxa_t_score"),
    "hu_index_preop": _each("hu_index_preop"),
    "hu_upper_adjacent": _each("hu_upper_adjacent_preop"),
    "hu_lower_adjacent": _each("hu_lower_adjacent_preop"),
    "hu_adjacent_min": (("hu_upper_adjacent_preop", "hu_lower_adjacent_preop"),),
    "hu_ratio_augmented_adjacent": (
        ("hu_index_postop",),
        ("hu_upper_adjacent_postop", "hu_lower_adjacent_postop", "hu_upper_adjacent_preop", "hu_lower_adjacent_preop"),
    ),
    "psoas_muscle_index_cm2_m2": _each("psoas_area_cm2_preop", "height_cm"),
    "paraspinal_fat_fraction_pct": _each("paraspinal_fat_fraction_pct_preop"),
    "sarcopenia": _each("psoas_area_cm2_preop", "height_cm", "sex"),
    "technique_pkp": _each("technique"),
    "approach_bilateral": _each("approach"),
    "cement_volume_ml": _each("cement_volume_ml"),
    "fill_ratio_total_pct": _each("cement_volume_ml", "vertebral_body_volume_ml_preop"),
    "fill_ratio_larger_side_pct": _each("cement_larger_side_volume_ml_postop", "vertebral_body_volume_ml_preop"),
    "npec_upper": _each("cement_touches_upper_endplate_postop"),
    "npec_lower": _each("cement_touches_lower_endplate_postop"),
    "npec_count": _each("cement_touches_upper_endplate_postop", "cement_touches_lower_endplate_postop"),
    "leakage_any": (_LEAKS,),
    "leakage_intradiscal": _each("leakage_intradiscal_postop"),
    "leakage_intradiscal_spike": _each("leakage_intradiscal_postop"),
    "leakage_paravertebral": _each("leakage_paravertebral_postop"),
    "leakage_venous": _each("leakage_venous_postop"),
    "leakage_epidural": _each("leakage_epidural_postop"),
    "level_index": _each("level"),
    "thoracolumbar_junction": _each("level"),
    "compression_rate_preop_pct": _CR_PRE,
    "kyphotic_angle_preop_deg": _each("kyphotic_angle_deg_preop"),
    "wedge_angle_preop_deg": _each("wedge_angle_deg_preop"),
    "compression_rate_postop_pct": _CR_POST,
    "reduction_rate_pct": _CR_PRE + _CR_POST,
    "kyphotic_angle_postop_deg": _each("kyphotic_angle_deg_postop"),
    "reduction_angle_deg": _each("kyphotic_angle_deg_preop", "kyphotic_angle_deg_postop"),
    "ivc": _each("ivc_preop"),
    "endplate_disruption": _each("endplate_disruption_preop"),
}


def _missing_mask(column: pd.Series | None, n: int) -> np.ndarray:
    """True where a raw field has no value: absent column, None/NaN/NaT, or blank text."""
    if column is None:
        return np.ones(n, dtype=bool)
    return missing_mask(column.to_numpy())


def handling_text(model_type: str, feature: str, median: float | None = None) -> str:
    """How ``model_type`` treats a missing ``feature``, in words for a clinician."""
    label = display_name(feature)
    if model_type in ("logistic", "elastic_net"):
        value = "" if median is None or not np.isfinite(median) else f" ({median:.4g})"
        return (f"'{label}' could not be computed; the model used the training median{value} "
                "and its 'not measured' indicator")
    if model_type == "xgboost":
        return (f"'{label}' could not be computed; the boosted trees follow the branch learned "
                "for missing values in training")
    return (f"'{label}' could not be computed; each tree of the forest sends it to the side "
            "learned for missing values in training")


def missing_inputs(records: pd.DataFrame, features: pd.DataFrame, model_type: str,
                   medians: dict[str, float] | None = None,
                   absent_fields: Mapping[str, np.ndarray] | None = None) -> list[list[dict]]:
    """Per record: the input fields a missing feature needed, and how the model handled it.

    ``records`` are flat raw records and ``features`` their computed features (same row
    order). Returns one list per record of ``{"field": "imaging.preop.hu_index",
    "feature": "hu_index_preop", "handling": "..."}``; a field feeding several missing
    features is listed once per feature. A feature that is missing although its inputs
    are present (e.g. a ratio with a near-zero denominator) is reported with field ``""``.
    ``absent_fields``: per flat field, which records lack it, if already known
    (``features.records.missing_fields``); otherwise read from ``records``.
    """
    medians = medians or {}
    n = len(records)  # records' columns are read by position: their index does not matter
    out: list[list[dict]] = [[] for _ in range(n)]
    values = features.to_numpy()
    # A float frame's missing cells are its NaNs; ``isna`` finds the same ~10x slower.
    feature_missing = np.isnan(values) if values.dtype.kind == "f" else features.isna().to_numpy(dtype=bool)
    if not feature_missing.any():
        return out
    field_missing: dict[str, np.ndarray] = dict(absent_fields or {})

    def absent(name: str) -> np.ndarray:
        if name not in field_missing:
            field_missing[name] = _missing_mask(records[name] if name in records.columns else None, n)
        return field_missing[name]

    # Vectorised over records per feature; the loops below visit only the features missing
    # somewhere and their missing cells, feature by feature in column order (the order each
    # record's list is reported in).
    names = features.columns.tolist()
    for j in np.flatnonzero(feature_missing.any(axis=0)).tolist():
        feature = names[j]
        rows = np.flatnonzero(feature_missing[:, j]).tolist()
        handling = handling_text(model_type, feature, medians.get(feature))
        groups = FEATURE_INPUTS.get(feature, ())
        all_absent = [np.logical_and.reduce([absent(name) for name in group]) for group in groups]
        for i in rows:
            fields = [name for group, gone in zip(groups, all_absent) if gone[i] for name in group]
            if not fields:
                out[i].append({"field": "", "feature": feature,
                               "handling": handling + " (values given could not be combined)"})
            for name in fields:
                out[i].append({"field": RECORD_FIELDS_BY_FLAT[name].path, "feature": feature, "handling": handling})
    return out
