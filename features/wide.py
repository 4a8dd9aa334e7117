"""One row per procedure: patient, procedure and imaging values side by side.

Imaging columns are suffixed with their time point (``vertebral_height_mm_preop``,
``hu_index_postop``, ...). Only columns measured at a time point
(``schema.IMAGING_BY_TIMEPOINT``) are taken from it. A missing imaging row or value
becomes NaN; nothing is imputed here.
"""

from __future__ import annotations

import pandas as pd

from features.schema import IMAGING_BY_TIMEPOINT, IMAGING, PATIENTS, PROCEDURES

_PATIENT_COLS = [c.name for c in PATIENTS.columns if c.timing != "followup"]


def _numeric(df: pd.DataFrame) -> pd.DataFrame:
    """Nullable integer columns to float64 (NaN for missing) so arithmetic is uniform."""
    out = df.copy()
    for name in out.columns:
        if pd.api.types.is_integer_dtype(out[name].dtype) or pd.api.types.is_bool_dtype(out[name].dtype):
            out[name] = out[name].astype("float64")
    return out


def procedure_frame(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Join patients, procedures and imaging (pivoted by time point) into one row per procedure.

    Takes typed tables (``features.validate.validate_raw`` output, or
    ``features.records.records_to_tables``); ``events`` is not used. Returns a DataFrame
    indexed by ``procedure_id``, in the order of the procedures table.
    """
    procedures = tables["procedures"][[c.name for c in PROCEDURES.columns]]
    patients = tables["patients"][[c for c in _PATIENT_COLS if c in tables["patients"].columns]]
    wide = procedures.merge(patients, on="patient_id", how="left", validate="many_to_one")
    imaging = tables.get("imaging")
    for timepoint, columns in IMAGING_BY_TIMEPOINT.items():
        cols = [c for c in columns if c in IMAGING.column_names]
        if imaging is not None and len(imaging):
            part = imaging.loc[imaging["timepoint"] == timepoint, ["procedure_id", "exam_date", *cols]]
        else:
            part = pd.DataFrame(columns=["procedure_id", "exam_date", *cols])
        part = part.rename(columns={c: f"{c}_{timepoint}" for c in ["exam_date", *cols]})
        wide = wide.merge(part, on="procedure_id", how="left", validate="one_to_one")
    return _numeric(wide.set_index("procedure_id"))
