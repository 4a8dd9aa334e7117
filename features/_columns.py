"""Column access for the feature functions: NumPy arrays out of a wide frame.

The feature functions take and return DataFrames, but compute on NumPy arrays: a pandas
operation costs ~50 µs however short the frame, and the service runs the pipeline on
every request batch (dozens of records), where that overhead was most of the cost.

Each group module computes its columns from a ``WideColumns`` (``clinical_columns``...)
and wraps them in a DataFrame (``clinical_features``). ``WideColumns`` reads a wide frame
(``features.wide.wide_frame``) or, on the service's path, the typed columns that frame is
built from, without building it: the values read are the same either way.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import pandas as pd


class WideColumns:
    """The columns of a wide frame by flat name, and its number of rows.

    ``columns``: a wide frame, or typed columns as ``features.coerce.coerce_array`` writes
    them (numbers float64, dates datetime64[ns], text object with None), which is what
    ``wide_frame`` puts in the frame. A column absent from it is missing in every row.
    """

    __slots__ = ("columns", "n_rows")

    def __init__(self, columns: pd.DataFrame | Mapping[str, np.ndarray], n_rows: int):
        self.columns = columns
        self.n_rows = n_rows

    @classmethod
    def of(cls, wide: pd.DataFrame) -> "WideColumns":
        """The columns of a wide frame."""
        return cls(wide, len(wide))

    def get(self, name: str) -> np.ndarray | pd.Series | None:
        """The column ``name`` (a Series of a frame, else an array), or None if absent."""
        return self.columns.get(name)

    def __getitem__(self, name: str) -> np.ndarray | pd.Series:
        """The column ``name``; KeyError if absent (a column every wide frame has)."""
        values = self.columns.get(name)
        if values is None:
            raise KeyError(name)
        return values


def numbers(wide: WideColumns, name: str) -> np.ndarray:
    """A numeric column as float64 (NaN = missing); all-NaN if the column is absent."""
    values = wide.get(name)
    if values is None:
        return np.full(wide.n_rows, np.nan)
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype="float64", na_value=np.nan)
    return np.asarray(values, dtype="float64")


def dates(wide: WideColumns, name: str) -> np.ndarray:
    """A date column as datetime64[ns] (NaT = missing)."""
    values = wide[name]
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype="datetime64[ns]")
    return np.asarray(values, dtype="datetime64[ns]")


def text(wide: WideColumns, name: str) -> np.ndarray:
    """A text column as an object array (None = missing)."""
    values = wide[name]
    values = values.to_numpy(dtype=object) if isinstance(values, pd.Series) else np.asarray(values, dtype=object)
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


GroupColumns = Callable[[WideColumns], dict[str, np.ndarray]]


def group_frame(columns_of: GroupColumns, wide: pd.DataFrame) -> pd.DataFrame:
    """A feature group's columns (``columns_of``) of a wide frame, as a frame on its index."""
    return pd.DataFrame(columns_of(WideColumns.of(wide)), index=wide.index)
