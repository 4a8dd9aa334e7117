"""Assembly: raw tables -> feature table (and labels) for a feature set.

This is the one feature pipeline. Training calls it on a whole export; the service calls
it on the tables built from request records (``features.records``). Every step is a pure
function of the tables: no cohort statistics are used, so a single record gets exactly
the features it would get inside a cohort.
"""

from __future__ import annotations

import pandas as pd

from features.bone_density import bone_density_features
from features.catalog import FEATURES, feature_names
from features.cement import cement_features
from features.clinical import clinical_features
from features.imaging_signs import imaging_sign_features
from features.labels import build_labels
from features.morphometry import morphometry_features
from features.records import records_to_wide
from features.sarcopenia import sarcopenia_features
from features.wide import procedure_frame

GROUP_FUNCTIONS = (
    clinical_features,
    bone_density_features,
    sarcopenia_features,
    cement_features,
    morphometry_features,
    imaging_sign_features,
)


def features_from_wide(wide: pd.DataFrame) -> pd.DataFrame:
    """Every catalogued feature from a wide frame (``procedure_frame`` or ``records_to_wide``)."""
    parts = [fn(wide) for fn in GROUP_FUNCTIONS]
    out = pd.concat(parts, axis=1)
    return out[[f.name for f in FEATURES]].astype("float64")


def compute_all_features(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every catalogued feature (all timings), one float64 column each, indexed by procedure_id."""
    return features_from_wide(procedure_frame(tables))


def features_from_records(flat_records: pd.DataFrame, feature_set: str, typed=None) -> pd.DataFrame:
    """Features of ``feature_set`` for flat raw records (``features.records``): the serving path.
    ``typed``: the records' values as ``features.records.inspect_records`` read them."""
    feats = features_from_wide(records_to_wide(flat_records, typed))
    names = feature_names(feature_set)
    return feats if list(feats.columns) == names else feats[names]


def build_feature_table(tables: dict[str, pd.DataFrame], feature_set: str) -> pd.DataFrame:
    """Features of ``feature_set`` ('preop' or 'postop'), one row per procedure_id."""
    names = feature_names(feature_set)
    return compute_all_features(tables)[names]


def build_training_set(tables: dict[str, pd.DataFrame], feature_set: str, horizon_months: float = 24.0) -> pd.DataFrame:
    """Features of ``feature_set`` with ``patient_id`` and the outcome labels at the horizon.

    One row per procedure, indexed by ``procedure_id``. Label columns are described in
    ``features.labels.build_labels``.
    """
    features = build_feature_table(tables, feature_set)
    labels = build_labels(tables, horizon_months=horizon_months)
    ids = tables["procedures"].set_index("procedure_id")[["patient_id"]]
    out = ids.join(features, how="left").join(labels, how="left")
    out.attrs["feature_set"] = feature_set
    out.attrs["horizon_months"] = horizon_months
    return out
