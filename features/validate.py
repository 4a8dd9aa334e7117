"""Validation of a raw export against the contract in ``features.schema``.

``validate_raw`` is pure: it takes the tables as read (CSV text or Parquet types), returns
them with every column coerced to its contract type, and raises ``RawDataError`` listing
*every* violation at once, each naming the table, the row key and the column. Nothing
downstream (features, labels, training) runs on a table that has not passed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa

from features.coerce import coerce_array, unreadable_text
from features.schema import TABLES, ColumnSpec, TableSpec

MAX_REPORTED_PER_CHECK = 20


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (table, row key, column) and what."""

    table: str
    row: str
    column: str
    message: str

    def __str__(self) -> str:
        return f"{self.table} [{self.row}] {self.column}: {self.message}"


class RawDataError(ValueError):
    """Raised with every violation found in a raw export."""

    def __init__(self, violations: list[Violation]):
        self.violations = list(violations)
        head = "\n".join(f"  - {v}" for v in self.violations[:200])
        more = "" if len(self.violations) <= 200 else f"\n  ... and {len(self.violations) - 200} more"
        super().__init__(f"{len(self.violations)} violation(s) in the raw export:\n{head}{more}")


# --------------------------------------------------------------------------- coercion


def _row_keys(df: pd.DataFrame, spec: TableSpec) -> pd.Series:
    """A printable key per row, e.g. 'P000123' or 'P000123/preop'; falls back to the line number."""
    if all(k in df.columns for k in spec.key):
        parts = [df[k].astype("string").fillna("?") for k in spec.key]
        key = parts[0]
        for part in parts[1:]:
            key = key + "/" + part
        return key.astype(object)
    return pd.Series([f"row {i + 1}" for i in range(len(df))], index=df.index, dtype=object)


def _coerce_column(raw: pd.Series, col: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    """Coerce one column to its contract type (``features.coerce``). Returns (values, mask
    of unreadable cells) as Series on ``raw``'s index: int as Int64, binary as Int8, float
    as float64, dates as datetime64[ns], text as object (None = missing)."""
    values, bad = coerce_array(raw, col.kind)
    if col.kind == "int":
        typed = pd.Series(values, index=raw.index).astype("Int64")
    elif col.kind == "binary":
        typed = pd.Series(values, index=raw.index).astype("Int8")
    else:
        typed = pd.Series(values, index=raw.index, dtype=values.dtype)
    return typed, pd.Series(bad, index=raw.index)


def _pandera_schema(spec: TableSpec) -> pa.DataFrameSchema:
    columns: dict[str, pa.Column] = {}
    for col in spec.columns:
        checks: list[pa.Check] = []
        if col.allowed:
            checks.append(pa.Check.isin(list(col.allowed), error=f"must be one of: {col.range_text}"))
        elif col.kind == "binary":
            checks.append(pa.Check.isin([0, 1], error="must be 0 or 1"))
        elif col.min is not None and col.max is not None:
            # Two checks, so a unit hint ("values this small look like metres") is only
            # given for values on its side of the range.
            msg = f"outside the allowed range {col.range_text} {col.unit}".rstrip()
            low = msg + (f" ({col.unit_hint})" if col.unit_hint and col.unit_hint_side == "below" else "")
            high = msg + (f" ({col.unit_hint})" if col.unit_hint and col.unit_hint_side == "above" else "")
            checks.append(pa.Check.greater_than_or_equal_to(col.min, error=low))
            checks.append(pa.Check.less_than_or_equal_to(col.max, error=high))
        unique = len(spec.key) == 1 and col.name == spec.key[0]
        columns[col.name] = pa.Column(nullable=col.nullable, checks=checks, unique=unique, required=True)
    return pa.DataFrameSchema(columns, name=spec.name, strict=False)


def _check_table(df: pd.DataFrame, spec: TableSpec) -> tuple[pd.DataFrame, list[Violation]]:
    violations: list[Violation] = []
    missing = [c for c in spec.column_names if c not in df.columns]
    for name in missing:
        col = spec.column(name)
        violations.append(Violation(spec.name, "-", name, f"column missing ({col.definition} Unit: {col.unit or '-'})"))
    if missing:
        return df, violations

    df = df.reset_index(drop=True)
    keys = _row_keys(df, spec)
    out = pd.DataFrame(index=df.index)
    for col in spec.columns:
        values, bad = _coerce_column(df[col.name], col)
        for i in np.flatnonzero(bad.to_numpy())[:MAX_REPORTED_PER_CHECK]:
            violations.append(Violation(spec.name, str(keys.iat[i]), col.name,
                                        unreadable_text(df[col.name].iat[i], col.kind)))
        out[col.name] = values
    # Extra columns are kept (a site may export more) but never used by the pipelines.
    for extra in df.columns.difference(spec.column_names):
        out[extra] = df[extra]

    try:
        _pandera_schema(spec).validate(out, lazy=True)
    except pa.errors.SchemaErrors as exc:
        violations.extend(_from_failure_cases(exc.failure_cases, spec, keys, out))

    if len(spec.key) > 1:
        dup = out.duplicated(list(spec.key), keep=False)
        for i in np.flatnonzero(dup.to_numpy())[:MAX_REPORTED_PER_CHECK]:
            violations.append(Violation(spec.name, str(keys.iat[i]), "+".join(spec.key), "duplicate key"))
    return out, violations


def _from_failure_cases(fc: pd.DataFrame, spec: TableSpec, keys: pd.Series, df: pd.DataFrame) -> list[Violation]:
    out: list[Violation] = []
    for (column, check), group in fc.groupby(["column", "check"], sort=False, dropna=False):
        column = column if isinstance(column, str) else "-"
        if check == "not_nullable":
            message = "value missing (required)"
        elif check == "field_uniqueness":
            message = "duplicate key"
        else:
            message = str(check)
        for _, case in group.head(MAX_REPORTED_PER_CHECK).iterrows():
            idx = case["index"]
            row = str(keys.iat[int(idx)]) if pd.notna(idx) and int(idx) < len(keys) else "-"
            shown = "" if check in ("not_nullable", "field_uniqueness") else f" (got {case['failure_case']!r})"
            out.append(Violation(spec.name, row, column, message + shown))
        if len(group) > MAX_REPORTED_PER_CHECK:
            out.append(Violation(spec.name, "...", column, f"{len(group) - MAX_REPORTED_PER_CHECK} more rows: {message}"))
    return out


# ------------------------------------------------------------------------ cross-table


def _cross_table(t: dict[str, pd.DataFrame]) -> list[Violation]:
    v: list[Violation] = []
    patients, procedures, imaging, events = t["patients"], t["procedures"], t["imaging"], t["events"]
    known_patients = set(patients["patient_id"].dropna())
    known_procedures = set(procedures["procedure_id"].dropna())

    def report(table: str, rows: pd.DataFrame, key_cols: list[str], column: str, message) -> None:
        for _, r in rows.head(MAX_REPORTED_PER_CHECK).iterrows():
            key = "/".join(str(r[k]) for k in key_cols)
            v.append(Violation(table, key, column, message(r) if callable(message) else message))
        if len(rows) > MAX_REPORTED_PER_CHECK:
            v.append(Violation(table, "...", column, f"{len(rows) - MAX_REPORTED_PER_CHECK} more rows"))

    report("procedures", procedures[~procedures["patient_id"].isin(known_patients)], ["procedure_id"], "patient_id",
           lambda r: f"patient {r['patient_id']!r} is not in the patients table")
    report("imaging", imaging[~imaging["procedure_id"].isin(known_procedures)], ["procedure_id", "timepoint"], "procedure_id",
           "procedure is not in the procedures table")
    report("events", events[~events["patient_id"].isin(known_patients)], ["event_id"], "patient_id",
           lambda r: f"patient {r['patient_id']!r} is not in the patients table")

    # Dates against surgery.
    surg = procedures[["procedure_id", "patient_id", "surgery_date"]]
    img = imaging.merge(surg, on="procedure_id", how="inner")
    report("imaging", img[(img["timepoint"] == "preop") & (img["exam_date"] > img["surgery_date"])],
           ["procedure_id", "timepoint"], "exam_date",
           lambda r: f"pre-operative exam {r['exam_date']:%Y-%m-%d} is after the surgery ({r['surgery_date']:%Y-%m-%d})")
    report("imaging", img[(img["timepoint"] != "preop") & (img["exam_date"] < img["surgery_date"])],
           ["procedure_id", "timepoint"], "exam_date",
           lambda r: f"{r['timepoint']} exam {r['exam_date']:%Y-%m-%d} is before the surgery ({r['surgery_date']:%Y-%m-%d})")
    report("procedures", procedures[procedures["pain_onset_date"] > procedures["surgery_date"]], ["procedure_id"],
           "pain_onset_date", "pain onset is after the surgery")

    first_surgery = procedures.groupby("patient_id")["surgery_date"].min().rename("first_surgery_date")
    ev = events.merge(first_surgery, left_on="patient_id", right_index=True, how="inner")
    report("events", ev[ev["event_date"] < ev["first_surgery_date"]], ["event_id"], "event_date",
           lambda r: f"follow-up event {r['event_date']:%Y-%m-%d} is before the surgery ({r['first_surgery_date']:%Y-%m-%d})")
    last_surgery = procedures.groupby("patient_id")["surgery_date"].max().rename("last_surgery_date")
    pt = patients.merge(last_surgery, left_on="patient_id", right_index=True, how="inner")
    report("patients", pt[pt["last_followup_date"] < pt["last_surgery_date"]], ["patient_id"], "last_followup_date",
           lambda r: f"last follow-up {r['last_followup_date']:%Y-%m-%d} is before the surgery ({r['last_surgery_date']:%Y-%m-%d})")
    report("patients", pt[pt["death_date"].notna() & (pt["death_date"] < pt["last_surgery_date"])], ["patient_id"], "death_date",
           "death is before the surgery")
    report("patients", pt[pt["death_date"].notna() & (pt["death_date"] < pt["last_followup_date"])], ["patient_id"], "death_date",
           "death is before the last follow-up contact")

    # The session's level count must match its rows, and no level is treated twice in a session.
    session = procedures.groupby(["patient_id", "surgery_date"])["procedure_id"].transform("size")
    report("procedures", procedures[procedures["n_levels_treated"].notna() & (procedures["n_levels_treated"] != session)],
           ["procedure_id"], "n_levels_treated",
           lambda r: f"says {r['n_levels_treated']} levels but the export has {int(session.loc[r.name])} rows for this patient and surgery date")
    dup_level = procedures.duplicated(["patient_id", "surgery_date", "level"], keep=False)
    report("procedures", procedures[dup_level], ["procedure_id"], "level", "the same level appears twice in one session")
    return v


def validate_raw(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Validate and type a raw export.

    Takes a mapping table name -> DataFrame (as read from CSV or Parquet). Returns the same
    tables with contract types (dates as datetime64, binaries as Int8, ...). Raises
    RawDataError with every violation, by table, row key and column.
    """
    violations: list[Violation] = []
    for name in TABLES:
        if name not in tables:
            violations.append(Violation(name, "-", "-", "table missing"))
    typed: dict[str, pd.DataFrame] = {}
    for name, spec in TABLES.items():
        if name not in tables:
            continue
        if len(tables[name]) == 0 and not spec.may_be_empty:
            violations.append(Violation(name, "-", "-", "table is empty (no rows)"))
            continue
        df, problems = _check_table(tables[name], spec)
        violations.extend(problems)
        typed[name] = df
    if not violations:
        violations.extend(_cross_table(typed))
    if violations:
        raise RawDataError(violations)
    return typed
