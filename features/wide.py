"""One row per procedure: patient, procedure and imaging values side by side.

Imaging columns are suffixed with their time point (``vertebral_height_mm_preop``,
``hu_index_postop``, ...); these flat names are the record fields of ``features.records``.
Only columns measured at a time point (``schema.IMAGING_BY_TIMEPOINT``) are taken from it.
A missing imaging row or value is missing; nothing is imputed here.

``wide_frame`` is the one builder of the frame the feature functions take. Tables reach it
through ``table_columns`` (``procedure_frame``), records through
``features.records.records_to_wide``, so training and serving compute features from frames
built, and typed, the same way.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from features.coerce import coerce_array
from features.schema import IMAGING, IMAGING_BY_TIMEPOINT, PATIENTS, PROCEDURES, ColumnSpec

_PATIENT_COLS = [c.name for c in PATIENTS.columns if c.timing != "followup" and c.name != "patient_id"]
_PROCEDURE_COLS = [c.name for c in PROCEDURES.columns if c.name != "patient_id"]


def flat_specs(timepoints: tuple[str, ...] = tuple(IMAGING_BY_TIMEPOINT)) -> dict[str, ColumnSpec]:
    """Flat name -> contract column of every per-procedure value: patient (baseline),
    procedure, and imaging at each of ``timepoints``."""
    out = {name: PATIENTS.column(name) for name in _PATIENT_COLS}
    out.update({name: PROCEDURES.column(name) for name in _PROCEDURE_COLS})
    for tp in timepoints:
        out.update({f"{name}_{tp}": IMAGING.column(name) for name in IMAGING_BY_TIMEPOINT[tp]})
    return out


def wide_frame(columns: Mapping[str, np.ndarray], procedure_ids: list[str]) -> pd.DataFrame:
    """The wide frame from typed columns (``features.coerce.coerce_array`` output: numbers
    float64, dates datetime64[ns], text object with None), indexed by ``procedure_id``."""
    index = procedure_index(procedure_ids)
    # Text stays an object column (None = missing), as typed: letting pandas infer its
    # string type copies every text cell into Arrow and the feature functions back out.
    return pd.DataFrame({name: pd.Series(values, index=index, dtype=object, copy=False) if values.dtype == object
                         else values for name, values in columns.items()}, index=index)


def procedure_index(procedure_ids: list[str]) -> pd.Index:
    """The index of a wide frame (and of its features): the procedure ids, as object."""
    return pd.Index(procedure_ids, dtype=object, name="procedure_id")


def table_columns(tables: dict[str, pd.DataFrame]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Typed tables (``features.validate.validate_raw`` output) -> (typed columns by flat
    name, procedure ids), one row per procedure in the order of the procedures table.
    Every time point of ``IMAGING_BY_TIMEPOINT`` is included (follow-up too)."""
    procedures = tables["procedures"]
    patients = tables["patients"]
    joined = procedures[["procedure_id", "patient_id", *_PROCEDURE_COLS[1:]]].merge(
        patients[["patient_id", *_PATIENT_COLS]], on="patient_id", how="left", validate="many_to_one")
    imaging = tables.get("imaging")
    for timepoint, columns in IMAGING_BY_TIMEPOINT.items():
        if imaging is not None and len(imaging):
            part = imaging.loc[imaging["timepoint"] == timepoint, ["procedure_id", *columns]]
        else:
            part = pd.DataFrame(columns=["procedure_id", *columns])
        part = part.rename(columns={c: f"{c}_{timepoint}" for c in columns})
        joined = joined.merge(part, on="procedure_id", how="left", validate="one_to_one")
    typed = {name: coerce_array(joined[name], spec.kind)[0] for name, spec in flat_specs().items()}
    return typed, [str(v) for v in joined["procedure_id"]]


def procedure_frame(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The wide frame of typed tables (``features.validate.validate_raw`` output); ``events``
    is not used. Indexed by ``procedure_id``, in the order of the procedures table."""
    columns, ids = table_columns(tables)
    columns.pop("procedure_id")
    return wide_frame(columns, ids)
