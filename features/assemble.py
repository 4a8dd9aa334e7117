"""Assembly: raw tables -> feature table (and labels) for a feature set.

This is the one feature pipeline. Training calls it on a whole export; the service calls
it on request records (``features.records``). Every step is a pure function of the
tables: no cohort statistics are used, so a single record gets exactly the features it
would get inside a cohort.

Both reach ``features_from_columns``, which runs every group's column function (one module
per group in ``features/``) on the typed columns of the wide frame: training reads them
from the frame (``features_from_wide``), the service takes the typed record columns the
frame would be built from (``features_from_records``), which skips building it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import pandas as pd

from features._columns import WideColumns
from features.ascertainment import Ascertainment
from features.bone_density import bone_density_columns, bone_density_features
from features.catalog import FEATURES, feature_names
from features.cement import cement_columns, cement_features
from features.clinical import clinical_columns, clinical_features
from features.imaging_signs import imaging_sign_columns, imaging_sign_features
from features.labels import build_labels
from features.morphometry import morphometry_columns, morphometry_features
from features.records import record_columns
from features.sarcopenia import sarcopenia_columns, sarcopenia_features
from features.wide import procedure_frame

#: The feature groups as frame-in/frame-out functions (one module each)...
GROUP_FUNCTIONS = (
    clinical_features,
    bone_density_features,
    sarcopenia_features,
    cement_features,
    morphometry_features,
    imaging_sign_features,
)
#: ... and the array functions they wrap, which the assembly calls.
GROUP_COLUMNS = (
    clinical_columns,
    bone_density_columns,
    sarcopenia_columns,
    cement_columns,
    morphometry_columns,
    imaging_sign_columns,
)
CATALOGUE_ORDER: tuple[str, ...] = tuple(f.name for f in FEATURES)


@lru_cache(maxsize=64)
def _column_index(names: tuple[str, ...]) -> pd.Index:
    return pd.Index(list(names))


def features_from_columns(wide: WideColumns, index: pd.Index, names: Sequence[str] = CATALOGUE_ORDER) -> pd.DataFrame:
    """The features ``names`` (catalogue names, in that order; float64, NaN = missing) of
    the columns of a wide frame, on ``index`` (one label per row).

    The groups' arrays go into one float64 block and one frame: a frame per group joined
    with ``pd.concat`` and reordered cost ~4 ms per call, most of a request batch's time.
    """
    computed: dict[str, np.ndarray] = {}
    for columns_of in GROUP_COLUMNS:
        computed.update(columns_of(wide))
    # One row per feature: the layout pandas keeps a float block in, so no copy follows.
    block = np.empty((len(names), wide.n_rows), dtype="float64")
    for j, name in enumerate(names):
        block[j] = computed[name]
    # A copy of the cached labels: a caller may rename the columns of its frame.
    return pd.DataFrame(block.T, index=index, columns=_column_index(tuple(names)).copy(), copy=False)


@lru_cache(maxsize=256)
def _positions(columns: tuple[str, ...], names: tuple[str, ...]) -> np.ndarray | None:
    """Where each of ``names`` is among ``columns`` (None if one is absent or repeated)."""
    where = {c: i for i, c in enumerate(columns)}
    if len(where) < len(columns) or any(n not in where for n in names):
        return None
    return np.array([where[n] for n in names], dtype=np.intp)


def select_features(X: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """``X[names]`` (``X`` itself when its columns are already ``names``, in that order).

    A frame of float64 columns (what ``features_from_columns`` returns) is cut as one
    array: pandas' column selection costs ~0.3 ms on a short frame, and the service selects
    each model's columns on every request batch. Other frames go through pandas.
    """
    columns = X.columns.tolist()
    if columns == list(names):
        return X
    positions = _positions(tuple(columns), tuple(names))
    if positions is None or any(dtype != np.float64 for dtype in X.dtypes):
        return X[list(names)]
    return pd.DataFrame(X.to_numpy()[:, positions], index=X.index, columns=_column_index(tuple(names)).copy(),
                        copy=False)


def features_from_wide(wide: pd.DataFrame) -> pd.DataFrame:
    """Every catalogued feature from a wide frame (``procedure_frame`` or ``records_to_wide``)."""
    return features_from_columns(WideColumns.of(wide), wide.index)


def compute_all_features(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every catalogued feature (all timings), one float64 column each, indexed by procedure_id."""
    return features_from_wide(procedure_frame(tables))


def features_from_records(flat_records: pd.DataFrame, feature_set: str, typed=None) -> pd.DataFrame:
    """Features of ``feature_set`` for flat raw records (``features.records``): the serving path.
    ``typed``: the records' values as ``features.records.inspect_records`` read them."""
    columns, index = record_columns(flat_records, typed)
    return features_from_columns(WideColumns(columns, len(index)), index, feature_names(feature_set))


def build_feature_table(tables: dict[str, pd.DataFrame], feature_set: str) -> pd.DataFrame:
    """Features of ``feature_set`` ('preop' or 'postop'), one row per procedure_id."""
    names = feature_names(feature_set)
    return compute_all_features(tables)[names]


def build_training_set(tables: dict[str, pd.DataFrame], feature_set: str, horizon_months: float = 24.0,
                       ascertainment: Ascertainment | None = None) -> pd.DataFrame:
    """Features of ``feature_set`` with ``patient_id`` and the outcome labels at the horizon.

    One row per procedure, indexed by ``procedure_id``. Label columns are described in
    ``features.labels.build_labels``; ``ascertainment``: the export's ``export.yaml``
    (None: the default when it has none).
    """
    features = build_feature_table(tables, feature_set)
    labels = build_labels(tables, horizon_months=horizon_months, ascertainment=ascertainment)
    ids = tables["procedures"].set_index("procedure_id")[["patient_id"]]
    out = ids.join(features, how="left").join(labels, how="left")
    out.attrs["feature_set"] = feature_set
    out.attrs["horizon_months"] = horizon_months
    return out
