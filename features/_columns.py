"""Column access for the feature functions: NumPy arrays out of a wide frame.

The feature functions take and return DataFrames, but compute on NumPy arrays: a pandas
operation costs ~50 µs however short the frame, and the service runs the pipeline on
every request batch (dozens of records), where that overhead was most of the cost.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def numbers(wide: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as float64 (NaN = missing); all-NaN if the column is absent."""
    if name not in wide.columns:
        return np.full(len(wide), np.nan)
    return wide[name].to_numpy(dtype="float64", na_value=np.nan)


def text(wide: pd.DataFrame, name: str) -> np.ndarray:
    """A text column as an object array (None = missing)."""
    values = wide[name].to_numpy(dtype=object)
    return np.where(pd.isna(values), None, values)


def present(values: np.ndarray) -> np.ndarray:
    """True where an object array holds a value."""
    return ~pd.isna(values)


def flag(condition: np.ndarray, known: np.ndarray) -> np.ndarray:
    """1.0/0.0 where ``known``, else NaN."""
    return np.where(known, condition.astype("float64"), np.nan)


def mean_present(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean of the non-missing of two arrays, per element (NaN when both are missing)."""
    count = (~np.isnan(a)).astype("float64") + (~np.isnan(b))
    total = np.nan_to_num(a) + np.nan_to_num(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)
