"""Reading raw cells as their contract type, on NumPy arrays.

One function, ``coerce_array``, reads a column of raw cells (CSV text, JSON values, Parquet
types) as its contract kind and says which cells could not be read. It is shared by table
validation (``features.validate``) and the record path (``features.records``: the service
and batch scoring), so both read a value the same way.

It works on NumPy arrays rather than pandas Series because the record path runs it on
every field of every request batch: a pandas operation costs ~0.1 ms however short the
column, and ~10 of them per field made a one-record batch spend ~100 ms here. Typed
columns (Parquet numbers and datetimes) are converted whole; object columns are read cell
by cell, which is cheap for the short batches the service sees.

Rules, per kind:

- missing: None, NaN, NA, NaT, or blank text. Missing is not unreadable.
- ``int`` / ``float`` / ``binary``: numbers, or text that reads as a number (surrounding
  spaces allowed). ``int`` and ``binary`` must be whole numbers within ±2**53 and ±127
  (anything larger, such as 1e300 or inf, is unreadable). Booleans read as 1/0, and so
  does the text ``True``/``False`` (any case) in a ``binary`` column, as pandas and
  spreadsheets write flags.
- ``date``: ISO 8601 text or a datetime; time zones are dropped; dates before 1900-01-01 or
  after 2199-12-31 are unreadable (the nanosecond date type cannot hold years past 2262).
- ``id`` / ``str`` / ``category``: text with surrounding spaces trimmed; other values are
  written as text.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

import numpy as np
import pandas as pd

#: Largest magnitude read into an integer column (exact in float64), and into a 0/1 column.
INT_LIMIT = 2.0**53
BINARY_LIMIT = 127.0
#: Dates outside this window cannot be read (typos such as 2202 for 2022 are caught by the
#: cross-table checks; these bounds only keep absurd years out of the date type).
DATE_MIN = pd.Timestamp("1900-01-01")
DATE_MAX = pd.Timestamp("2199-12-31")

#: Arrow text columns at least this long are trimmed and parsed with vectorised string
#: operations; shorter ones cell by cell (each Arrow operation has a fixed cost).
VECTORISE_TEXT_FROM = 256

NUMERIC_KINDS = ("int", "float", "binary")
TEXT_KINDS = ("id", "str", "category")


#: A number written with a decimal comma ("12,5").
DECIMAL_COMMA = re.compile(r"\s*[-+]?\d*,\d+\s*")
#: A decimal number as every reader writes it (ASCII digits, optional sign, point and
#: exponent): the cells ``_numeric_text`` converts in one cast.
PLAIN_NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
#: Flag text read as 1/0 in a binary column.
BOOLEAN_TEXT = {"true": 1.0, "false": 0.0}


def unreadable_text(value: object, kind: str) -> str:
    """Why a cell could not be read as its contract type."""
    if kind in ("int", "float") and isinstance(value, str) and DECIMAL_COMMA.fullmatch(value):
        return f"cannot read {value!r} as a number: the decimal separator is a point ({value.strip().replace(',', '.')})"
    if kind == "date":
        return f"cannot read {value!r} as a date from {DATE_MIN.date()} to {DATE_MAX.date()} (YYYY-MM-DD)"
    if kind in ("int", "binary"):
        return f"cannot read {value!r} as {'a whole number' if kind == 'int' else '0 or 1'}"
    return f"cannot read {value!r} as {kind}"


def _is_missing(v: object) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float):
        return v != v
    if isinstance(v, str):
        return not v.strip()
    if isinstance(v, (np.floating, np.datetime64, np.timedelta64)):
        return bool(np.isnan(v))
    return False


def missing_mask(raw: np.ndarray) -> np.ndarray:
    """True where a cell holds no value (None, NaN, NA, NaT, blank text)."""
    if raw.dtype.kind == "f":
        return np.isnan(raw)
    if raw.dtype.kind == "M":
        return np.isnat(raw)
    if raw.dtype.kind in "iub":
        return np.zeros(len(raw), dtype=bool)
    return np.fromiter((_is_missing(v) for v in raw), dtype=bool, count=len(raw))


def typed_missing(values: np.ndarray) -> np.ndarray:
    """True where a *typed* column (``coerce_array``'s values) has no value: NaN, NaT, or
    None in a text column (``coerce_array`` writes None for every missing text cell).
    Vectorised for every kind: batch scoring calls it on every field of every chunk."""
    if values.dtype == object:
        return np.equal(values, None)
    return missing_mask(values)


def _as_number(v: object) -> float | None:
    """A cell as a float, or None if it is not a number."""
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, numbers.Real):
        try:
            return float(v)
        except OverflowError:  # an int beyond float range
            return None
    if isinstance(v, str):
        text = v.strip()
        if "_" in text:  # Python would read "1_000"; a data file means something else
            return None
        try:
            return float(text)
        except ValueError:
            return None
    return None


_PLAIN_NUMBERS = {int, float, type(None)}


def _numeric(raw: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    return _whole_numbers(*_read_numbers(raw, kind), kind)


def _read_numbers(raw: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(float values, unreadable) of raw cells, before the whole-number rule."""
    values = None
    if raw.dtype.kind in "fiub":
        values = raw.astype("float64")
    elif {type(v) for v in raw} <= _PLAIN_NUMBERS:  # JSON numbers and nulls: no per-cell parsing
        try:
            values = np.array([np.nan if v is None else v for v in raw], dtype="float64")
        except OverflowError:  # an int beyond float range: read cell by cell below
            values = None
    if values is not None:
        return values, np.zeros(len(raw), dtype=bool)
    values = np.full(len(raw), np.nan)
    bad = np.zeros(len(raw), dtype=bool)
    for i, v in enumerate(raw):
        if _is_missing(v):
            continue
        if kind == "binary" and isinstance(v, str) and v.strip().lower() in BOOLEAN_TEXT:
            values[i] = BOOLEAN_TEXT[v.strip().lower()]
            continue
        number = _as_number(v)
        if number is None or math.isnan(number):
            bad[i] = True
        else:
            values[i] = number
    return values, bad


def _whole_numbers(values: np.ndarray, bad: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``int`` and ``binary`` values that are not whole numbers within their limit made unreadable."""
    if kind in ("int", "binary"):
        limit = INT_LIMIT if kind == "int" else BINARY_LIMIT
        with np.errstate(invalid="ignore"):
            nonint = ~np.isnan(values) & ((values != np.round(values)) | (np.abs(values) > limit))
        bad |= nonint
        values[nonint] = np.nan
    return values, bad


def _numeric_text(raw: pd.Series, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``_numeric`` of an Arrow text column, the same values for less: the cells that are a
    plain decimal number (``PLAIN_NUMBER``, after trimming) are converted by one
    ``float64`` cast of the column (NumPy calls Python's ``float`` on each, so the values are
    exactly ``_as_number``'s); every other present cell ("True", "1_000", "inf", a typo) is
    read by ``_read_numbers``, cell by cell. A 5,000-procedure CSV export read ~25 numeric
    columns cell by cell, most of ``refracture validate``'s time."""
    text = raw.str.strip()
    present = (text.notna() & (text != "")).to_numpy(dtype=bool)
    plain = text.str.fullmatch(PLAIN_NUMBER).to_numpy(dtype=bool, na_value=False)
    values = np.full(len(raw), np.nan)
    bad = np.zeros(len(raw), dtype=bool)
    if plain.any():
        values[plain] = text.to_numpy(dtype=object)[plain].astype("float64")
    other = present & ~plain
    if other.any():
        values[other], bad[other] = _read_numbers(raw.to_numpy(dtype=object)[other], kind)
    return _whole_numbers(values, bad, kind)


def coerce_numbers(columns: list[np.ndarray | pd.Series], kinds: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``coerce_array`` of several numeric columns of one length (``kinds``: numeric), the
    same (values, unreadable) per column, for less.

    The columns of JSON numbers and nulls (object arrays of int, float and None, what the
    service receives) are read as one block: ``coerce_array``'s fixed cost of ~10 µs per
    column was most of reading a request batch's ~40 numeric fields. Others are read one
    by one.
    """
    if any(kind not in NUMERIC_KINDS for kind in kinds):
        raise ValueError(f"coerce_numbers reads numeric kinds ({', '.join(NUMERIC_KINDS)}), got {sorted(set(kinds))}")
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(columns)
    plain = [j for j, raw in enumerate(columns) if isinstance(raw, np.ndarray) and raw.dtype == object
             and set(map(type, raw.tolist())) <= _PLAIN_NUMBERS]
    if plain:
        cells = np.stack([columns[j] for j in plain])
        try:
            values = np.where(np.equal(cells, None), np.nan, cells).astype("float64")
        except OverflowError:  # an int beyond float range: read column by column below
            plain = []
    if plain:
        # Whole numbers within their limit in int and 0/1 columns, as ``_numeric`` checks.
        limits = np.array([INT_LIMIT if kinds[j] == "int" else BINARY_LIMIT if kinds[j] == "binary" else np.inf
                           for j in plain])[:, None]
        whole = np.array([kinds[j] in ("int", "binary") for j in plain])[:, None]
        with np.errstate(invalid="ignore"):
            bad = whole & ~np.isnan(values) & ((values != np.round(values)) | (np.abs(values) > limits))
        values[bad] = np.nan
        for row, j in enumerate(plain):
            out[j] = (values[row], bad[row])
    return [read if read is not None else coerce_array(raw, kind) for read, raw, kind in zip(out, columns, kinds)]


_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_days(raw: np.ndarray, missing: np.ndarray) -> np.ndarray | None:
    """Fast path: every present cell is 'YYYY-MM-DD' text (what JSON clients send).
    Returns datetime64[ns] (NaT = missing or outside the window), or None to take the
    general path (other shapes, or a non-existent day such as 2021-02-30)."""
    cells = raw[~missing]
    if not all(isinstance(v, str) and _ISO_DAY.fullmatch(v.strip()) for v in cells):
        return None
    days = np.full(len(raw), np.datetime64("NaT", "D"), dtype="datetime64[D]")
    try:
        days[~missing] = np.array([v.strip() for v in cells], dtype="datetime64[D]")
    except ValueError:
        return None
    days[(days < np.datetime64(DATE_MIN.date())) | (days > np.datetime64(DATE_MAX.date()))] = np.datetime64("NaT", "D")
    return days.astype("datetime64[ns]")


def _dates(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    missing = missing_mask(raw)
    if raw.dtype == object and (fast := _iso_days(raw, missing)) is not None:
        return fast, ~missing & np.isnat(fast)
    if raw.dtype.kind == "M":
        parsed = pd.Series(raw)
    else:
        cells = np.where(missing, None, raw).astype(object)
        try:
            parsed = pd.to_datetime(pd.Series(cells, dtype=object), errors="coerce", format="ISO8601")
        except ValueError:  # cells in different time zones (pandas refuses to mix them)
            parsed = pd.Series([_wall_clock(c) for c in cells], dtype="datetime64[ns]")
        if not pd.api.types.is_datetime64_any_dtype(parsed.dtype):  # all missing
            parsed = pd.to_datetime(pd.Series(cells, dtype=object), errors="coerce", format="ISO8601", utc=True)
    return _date_window(parsed, ~missing)


def _wall_clock(cell: Any) -> pd.Timestamp:
    """One date cell's own wall-clock time, its time zone dropped (NaT if unreadable): the
    calendar date the hospital wrote, as for a column in a single time zone, not that
    moment in UTC, which can fall on another day."""
    stamp = pd.to_datetime(cell, errors="coerce", format="ISO8601") if cell is not None else pd.NaT
    if stamp is pd.NaT or pd.isna(stamp):
        return pd.NaT
    return stamp.tz_localize(None) if stamp.tzinfo is not None else stamp


def _date_window(parsed: pd.Series, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parsed dates -> datetime64[ns] within the readable window; unreadable = present but NaT."""
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    outside = parsed.notna() & ((parsed < DATE_MIN) | (parsed > DATE_MAX))
    values = parsed.where(~outside).to_numpy(dtype="datetime64[ns]")
    return values, present & np.isnat(values)


def _text(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty(len(raw), dtype=object)
    for i, v in enumerate(raw):
        out[i] = None if _is_missing(v) else (v.strip() if isinstance(v, str) else str(v))
    return out, np.zeros(len(raw), dtype=bool)


def coerce_array(raw: np.ndarray | pd.Series, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Read raw cells as ``kind``. Returns (values, unreadable).

    ``values``: float64 (NaN = missing) for numeric kinds, datetime64[ns] (NaT) for dates,
    object (None) for text; unreadable cells are missing in ``values`` and True in
    ``unreadable``.
    """
    if isinstance(raw, pd.Series):
        if isinstance(raw.dtype, pd.DatetimeTZDtype):
            raw = raw.dt.tz_localize(None)
        if raw.dtype.kind in "fiub" or raw.dtype.kind == "M":
            raw = raw.to_numpy()
        elif pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype):
            raw = raw.to_numpy(dtype="float64", na_value=np.nan)  # nullable Int64 / Float64 / boolean
        elif (kind in NUMERIC_KINDS and pd.api.types.is_string_dtype(raw.dtype) and raw.dtype != object
              and len(raw) >= VECTORISE_TEXT_FROM):
            return _numeric_text(raw, kind)
        elif (kind in TEXT_KINDS + ("date",) and pd.api.types.is_string_dtype(raw.dtype) and raw.dtype != object
              and len(raw) >= VECTORISE_TEXT_FROM):
            # Arrow-backed text (Parquet, CSV): trim, blank -> missing, vectorised.
            text = raw.str.strip()
            present = (text.notna() & (text != "")).to_numpy(dtype=bool)
            if kind == "date":
                parsed = pd.to_datetime(text.where(present), errors="coerce", format="ISO8601")
                return _date_window(parsed, present)
            return text.where(present, None).to_numpy(dtype=object, na_value=None), np.zeros(len(raw), dtype=bool)
        else:
            raw = raw.to_numpy(dtype=object)
    if kind in NUMERIC_KINDS:
        return _numeric(raw, kind)
    if kind == "date":
        return _dates(raw)
    return _text(raw)
