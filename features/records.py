"""Raw procedure records: the single-procedure form of the raw contract.

A *record* holds what a hospital knows about one treated level at prediction time: the
patient's baseline values, the procedure, and the pre-op and immediate post-op imaging.
Follow-up values and outcome dates are not part of it.

Two shapes, one set of fields:

- nested (the HTTP API): ``{"patient": {...}, "procedure": {...},
  "imaging": {"preop": {...}, "postop": {...}}}``
- flat (the MLflow model's input, batch files): one column per field; imaging fields are
  suffixed with their time point, e.g. ``hu_index_preop``.

``records_to_wide`` turns flat records into the wide frame with ``features.wide.wide_frame``,
the builder tables go through too, so training and serving run the very same feature
functions on frames built the same way. ``inspect_records`` checks records with the
contract's rules (``features.contract``), the ones ``refracture validate`` applies to tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from features.coerce import NUMERIC_KINDS, coerce_array, coerce_numbers, typed_missing
from features.contract import ERROR, ColumnScreen, allowed_text, column_problems, plausibility_problems, without
from features.schema import ColumnSpec, IMAGING, IMAGING_BY_TIMEPOINT, PATIENTS, PROCEDURES
from features.wide import procedure_index, table_columns, wide_frame

RECORD_TIMEPOINTS = ("preop", "postop")
_PATIENT_EXCLUDE = {"patient_id", "last_followup_date", "death_date"}
_PROCEDURE_EXCLUDE = {"patient_id"}


@dataclass(frozen=True)
class RecordField:
    """One field of a record: its flat name, nested location and contract column."""

    flat_name: str
    section: str  # "patient", "procedure" or "imaging"
    timepoint: str | None
    spec: ColumnSpec

    @property
    def path(self) -> str:
        """JSON path in the nested shape, e.g. 'imaging.preop.hu_index'."""
        if self.timepoint:
            return f"imaging.{self.timepoint}.{self.spec.name}"
        return f"{self.section}.{self.spec.name}"

    @property
    def required(self) -> bool:
        # Imaging is optional as a whole (no CT, no MRI...): pipelines handle missing values.
        return not self.spec.nullable and self.timepoint is None


def _fields() -> tuple[RecordField, ...]:
    out = [RecordField(c.name, "patient", None, c) for c in PATIENTS.columns if c.name not in _PATIENT_EXCLUDE]
    out += [RecordField(c.name, "procedure", None, c) for c in PROCEDURES.columns if c.name not in _PROCEDURE_EXCLUDE]
    for tp in RECORD_TIMEPOINTS:
        out += [RecordField(f"{name}_{tp}", "imaging", tp, IMAGING.column(name)) for name in IMAGING_BY_TIMEPOINT[tp]]
    return tuple(out)


RECORD_FIELDS: tuple[RecordField, ...] = _fields()
RECORD_FIELDS_BY_FLAT: dict[str, RecordField] = {f.flat_name: f for f in RECORD_FIELDS}
_NUMERIC_FIELDS = tuple(f for f in RECORD_FIELDS if f.spec.kind in NUMERIC_KINDS)


def flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    """Nested record -> flat dict (missing sections and fields become None)."""
    patient = record.get("patient") or {}
    procedure = record.get("procedure") or {}
    imaging = record.get("imaging") or {}
    flat: dict[str, Any] = {}
    for f in RECORD_FIELDS:
        if f.section == "patient":
            flat[f.flat_name] = patient.get(f.spec.name)
        elif f.section == "procedure":
            flat[f.flat_name] = procedure.get(f.spec.name)
        else:
            flat[f.flat_name] = (imaging.get(f.timepoint) or {}).get(f.spec.name)
    return flat


def nest_record(flat: dict[str, Any]) -> dict[str, Any]:
    """Flat dict -> nested record (None values are dropped)."""
    out: dict[str, Any] = {"patient": {}, "procedure": {}, "imaging": {tp: {} for tp in RECORD_TIMEPOINTS}}
    for f in RECORD_FIELDS:
        value = flat.get(f.flat_name)
        if value is None or (not isinstance(value, (str, list, dict)) and pd.isna(value)):
            continue
        if f.timepoint:
            out["imaging"][f.timepoint][f.spec.name] = value
        else:
            out[f.section][f.spec.name] = value
    return out


def _json_value(value: Any) -> Any:
    """One flat value as JSON: dates as YYYY-MM-DD, NumPy scalars as Python, whole floats
    as integers, missing as None."""
    if value is None or value is pd.NaT or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d")
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
        if isinstance(value, float) and value != value:
            return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def json_record(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat record (pandas or NumPy values, e.g. a row of ``tables_to_records``) as the
    nested JSON-ready record the API takes (missing values left out)."""
    return nest_record({k: _json_value(v) for k, v in flat.items()})


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Nested records -> flat DataFrame with one column per record field."""
    return pd.DataFrame([flatten_record(r) for r in records], columns=[f.flat_name for f in RECORD_FIELDS])


def tables_to_records(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Typed tables -> flat records (what a hospital would send at prediction time)."""
    columns, _ids = table_columns(tables)
    return pd.DataFrame({f.flat_name: columns[f.flat_name] for f in RECORD_FIELDS})


def _raw_columns(flat: pd.DataFrame) -> dict[str, np.ndarray | pd.Series]:
    """Each record field's raw cells (all-None if the column is absent).

    A frame of JSON values (all object columns) is split with one ``to_numpy`` call:
    pandas' per-column access costs ~70 µs, most of a one-record batch's checks.
    """
    if len(flat.columns) and all(dtype == object for dtype in flat.dtypes):
        matrix = flat.to_numpy(dtype=object)
        by_name = {name: matrix[:, i] for i, name in enumerate(flat.columns.tolist())}
    else:
        by_name = {name: flat[name] for name in flat.columns}
    absent = np.full(len(flat), None, dtype=object)
    return {f.flat_name: by_name.get(f.flat_name, absent) for f in RECORD_FIELDS}


def _read_fields(columns: dict[str, np.ndarray | pd.Series]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every field's raw cells (``_raw_columns``) read as its contract type:
    (values, unreadable) by flat name, in ``RECORD_FIELDS`` order."""
    numeric = [f.flat_name for f in _NUMERIC_FIELDS]
    read = dict(zip(numeric, coerce_numbers([columns[name] for name in numeric], [f.spec.kind for f in _NUMERIC_FIELDS])))
    return {f.flat_name: read[f.flat_name] if f.flat_name in read else coerce_array(columns[f.flat_name], f.spec.kind)
            for f in RECORD_FIELDS}


def records_to_wide(flat: pd.DataFrame, typed: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Flat records (any dtypes: JSON values, CSV text, Parquet types) -> the wide frame
    the feature functions take (``features.wide.wide_frame``).

    Values that cannot be read as their type become missing; the contract's checks are the
    caller's job (``check_records``), as they are ``validate_raw``'s for tables.
    ``typed``: the same records already read by ``inspect_records`` (not read again).
    """
    columns, index = record_columns(flat, typed)
    return wide_frame(columns, list(index))


def record_columns(flat: pd.DataFrame, typed: dict[str, np.ndarray] | None = None
                   ) -> tuple[dict[str, np.ndarray], pd.Index]:
    """What ``records_to_wide`` builds its frame from: the typed columns of every record
    field but ``procedure_id`` (``typed`` if given, else read from ``flat``), and the index
    (``procedure_id``, or ``record-<i>`` for all when an id is missing). The feature
    pipeline takes these directly (``features.assemble.features_from_records``)."""
    if typed is None:
        typed = {name: values for name, (values, _) in _read_fields(_raw_columns(flat)).items()}
    columns = {f.flat_name: typed[f.flat_name] for f in RECORD_FIELDS}
    ids = columns.pop("procedure_id")
    if all(v is not None for v in ids):
        labels = [str(v) for v in ids]
    else:
        labels = [f"record-{i}" for i in range(len(flat))]
    return columns, procedure_index(labels)


@dataclass
class InspectedRecords:
    """Flat records read once: every field's typed values (``records_to_wide`` takes them),
    every field error (``check_records``: the record is refused; ``{'record': i, 'field':
    path, 'error': text, 'allowed': text}``, the service's error shape) and every warning
    (implausible but possible: the record is scored, the warning reported; ``{'record',
    'field', 'warning', 'allowed', 'rule'}``)."""

    typed: dict[str, np.ndarray]
    errors: list[dict[str, Any]]
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def subset(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Typed values of the records at ``positions`` (in that order)."""
        return {name: values[positions] for name, values in self.typed.items()}


def check_records(flat: pd.DataFrame) -> list[dict[str, Any]]:
    """Every field error in flat records: [{'record': i, 'field': path, 'error': ..., 'allowed': ...}].

    Empty list when all records are acceptable (warnings are not errors: ``inspect_records``
    lists them). Uses the contract's types, ranges and allowed values, so the service
    refuses exactly what validation would refuse.
    """
    return inspect_records(flat).errors


def inspect_records(flat: pd.DataFrame) -> InspectedRecords:
    """Read every field of flat records as its contract type and list every field error and
    warning (``features.contract``: per field, then between the fields of each record)."""
    errors: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    # Cells are read by position (``_raw_columns``): the frame's index plays no part.
    columns = _raw_columns(flat)
    read = _read_fields(columns)
    typed = {name: values for name, (values, _) in read.items()}
    to_check = _fields_to_check(read)
    acceptable: dict[str, np.ndarray] = {}
    for f in RECORD_FIELDS:
        values, bad = read[f.flat_name]
        problems = column_problems(columns[f.flat_name], values, bad, f.spec, f.required) if f.flat_name in to_check else []
        errors.extend(_err(p.position, f, p.message) for p in problems)
        acceptable[f.flat_name] = without(values, {p.position for p in problems}) if problems else values
    for problem in plausibility_problems(acceptable, len(flat)):
        path = RECORD_FIELDS_BY_FLAT[problem.field].path
        if problem.severity == ERROR:
            errors.append({"record": problem.position, "field": path, "error": problem.message,
                           "allowed": problem.allowed})
        else:
            warnings.append({"record": problem.position, "field": path, "warning": problem.message,
                             "allowed": problem.allowed, "rule": problem.rule})
    errors.sort(key=lambda e: e["record"])
    warnings.sort(key=lambda w: w["record"])
    return InspectedRecords(typed, errors, warnings)


_SCREEN = ColumnScreen(tuple(f.spec for f in RECORD_FIELDS), tuple(f.required for f in RECORD_FIELDS))


def _fields_to_check(read: dict[str, tuple[np.ndarray, np.ndarray]]) -> set[str]:
    """Fields whose cells ``column_problems`` must look at: those the one-pass screen
    (``features.contract.ColumnScreen``) cannot clear."""
    flagged = _SCREEN([read[f.flat_name] for f in RECORD_FIELDS])
    return {f.flat_name for f, flag in zip(RECORD_FIELDS, flagged) if flag}


def missing_fields(typed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per field, which records have no value (from ``InspectedRecords.typed``)."""
    return {name: typed_missing(values) for name, values in typed.items()}


def _err(i: int, f: RecordField, message: str) -> dict[str, Any]:
    return {"record": i, "field": f.path, "error": message, "allowed": allowed_text(f.spec)}
