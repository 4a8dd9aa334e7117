"""Validation of a raw export against the contract in ``features.schema``.

``validate_raw`` takes the tables as read (CSV text or Parquet types), returns them with
every column coerced to its contract type, and raises ``RawDataError`` listing *every*
violation at once, each naming the table, the row key and the column. Nothing downstream
(features, labels, training) runs on a table that has not passed here.

The value rules are ``features.contract``'s, the same the service applies to records:
per cell (``column_problems``), and between the values of one procedure
(``plausibility_problems``, on the procedure's row of the wide frame, reported back at
the table, row and column the value came from). Rules only tables can state (keys,
references between tables, dates against the surgery, the session's level count) are
here. The only time dependence is "in the future", against today's date.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.coerce import coerce_array
from features.contract import column_problems, plausibility_problems
from features.levels import SACRAL_LEVELS
from features.schema import IMAGING_BY_TIMEPOINT, TABLES, ColumnSpec, TableSpec
from features.wide import flat_specs, table_columns

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


def _typed_series(values: np.ndarray, index: pd.Index, col: ColumnSpec) -> pd.Series:
    """A coerced column as the typed tables hold it: int as Int64, binary as Int8 (values
    outside 0/1 are already reported and blanked), float as float64, dates as
    datetime64[ns], text as object (None = missing)."""
    if col.kind == "int":
        return pd.Series(values, index=index).astype("Int64")
    if col.kind == "binary":
        return pd.Series(np.where((values == 0) | (values == 1), values, np.nan), index=index).astype("Int8")
    return pd.Series(values, index=index, dtype=values.dtype)


def _check_table(df: pd.DataFrame, spec: TableSpec, limit: int = MAX_REPORTED_PER_CHECK) -> tuple[pd.DataFrame, list[Violation], dict[str, set[int]]]:
    """(typed table, violations, refused cells: column -> row positions)."""
    violations: list[Violation] = []
    refused: dict[str, set[int]] = {}
    missing = [c for c in spec.column_names if c not in df.columns]
    for name in missing:
        col = spec.column(name)
        violations.append(Violation(spec.name, "-", name, f"column missing ({col.definition} Unit: {col.unit or '-'})"))
    if missing:
        return df, violations, refused

    df = df.reset_index(drop=True)
    keys = _row_keys(df, spec)
    out = pd.DataFrame(index=df.index)
    for col in spec.columns:
        raw = df[col.name]
        values, bad = coerce_array(raw, col.kind)
        problems = column_problems(raw, values, bad, col, required=not col.nullable)
        violations.extend(_capped(spec.name, col.name, [(str(keys.iat[i]), message) for i, message in problems], limit))
        out[col.name] = _typed_series(values, raw.index, col)
        if problems:
            refused[col.name] = {i for i, _ in problems}
    # Extra columns are kept (a site may export more) but never used by the pipelines.
    for extra in df.columns.difference(spec.column_names):
        out[extra] = df[extra]

    key_cols = list(spec.key)
    dup = out.duplicated(key_cols, keep=False) & out[key_cols].notna().all(axis=1)
    violations.extend(_capped(spec.name, "+".join(key_cols),
                              [(str(keys.iat[i]), "duplicate key") for i in np.flatnonzero(dup.to_numpy())]))
    return out, violations, refused


def _capped(table: str, column: str, problems: list[tuple[str, str]], limit: int = MAX_REPORTED_PER_CHECK) -> list[Violation]:
    """At most ``limit`` violations per rule and column, then a count."""
    by_rule: dict[str, list[tuple[str, str]]] = {}
    for row, message in problems:
        by_rule.setdefault(_rule_of(message), []).append((row, message))
    out: list[Violation] = []
    for rule, hits in by_rule.items():
        out.extend(Violation(table, row, column, message) for row, message in hits[:limit])
        if len(hits) > limit:
            out.append(Violation(table, "...", column, f"{len(hits) - limit} more rows: {rule}"))
    return out


def _rule_of(message: str) -> str:
    """The rule a message states, without the offending value (for the "more rows" line)."""
    for marker in ("outside the allowed range", "is not allowed", "is not 0 or 1", "cannot read", "is in the future",
                   "value missing (required)", "text longer than", "duplicate key"):
        if marker in message:
            return marker
    return message


# ------------------------------------------------------------------------ cross-table


def _cross_table(t: dict[str, pd.DataFrame], limit: int = MAX_REPORTED_PER_CHECK) -> list[Violation]:
    v: list[Violation] = []
    patients, procedures, imaging, events = t["patients"], t["procedures"], t["imaging"], t["events"]
    known_patients = set(patients["patient_id"].dropna())
    known_procedures = set(procedures["procedure_id"].dropna())

    def report(table: str, rows: pd.DataFrame, key_cols: list[str], column: str, message) -> None:
        for _, r in rows.head(limit).iterrows():
            key = "/".join(str(r[k]) for k in key_cols)
            v.append(Violation(table, key, column, message(r) if callable(message) else message))
        if len(rows) > limit:
            v.append(Violation(table, "...", column, f"{len(rows) - limit} more rows"))

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
    died = events.merge(patients[["patient_id", "death_date"]], on="patient_id", how="inner")
    report("events", died[died["death_date"].notna() & (died["event_date"] > died["death_date"])], ["event_id"], "event_date",
           lambda r: f"fracture {r['event_date']:%Y-%m-%d} is after the patient's death ({r['death_date']:%Y-%m-%d})")

    # The session's level count must match its rows, and no level is treated twice in a session.
    session = procedures.groupby(["patient_id", "surgery_date"])["procedure_id"].transform("size")
    report("procedures", procedures[procedures["n_levels_treated"].notna() & (procedures["n_levels_treated"] != session)],
           ["procedure_id"], "n_levels_treated",
           lambda r: f"says {r['n_levels_treated']} levels but the export has {int(session.loc[r.name])} rows for this patient and surgery date")
    dup_level = procedures.duplicated(["patient_id", "surgery_date", "level"], keep=False)
    report("procedures", procedures[dup_level], ["procedure_id"], "level", "the same level appears twice in one session")
    return v


def _where(flat_name: str) -> tuple[str, str, str | None]:
    """(table, column, imaging time point or None) a flat record name comes from."""
    spec_by_flat = _FLAT_SPECS[flat_name]
    for tp in IMAGING_BY_TIMEPOINT:
        if flat_name == f"{spec_by_flat.name}_{tp}":
            return "imaging", spec_by_flat.name, tp
    table = "patients" if spec_by_flat.name in TABLES["patients"].column_names else "procedures"
    return table, spec_by_flat.name, None


_FLAT_SPECS = flat_specs()


def _implausible(typed: dict[str, pd.DataFrame], limit: int = MAX_REPORTED_PER_CHECK) -> list[Violation]:
    """``features.contract.plausibility_problems`` on each procedure, reported at the table,
    row and column of the value named (a patient's value once, however many procedures)."""
    columns, ids = table_columns(typed)
    patient_of = dict(zip(typed["procedures"]["procedure_id"].astype(str), typed["procedures"]["patient_id"]))
    seen: set[tuple[str, str, str, str]] = set()
    found: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    for problem in plausibility_problems(columns, len(ids)):
        table, column, tp = _where(problem.field)
        pid = ids[problem.position]
        row = str(patient_of[pid]) if table == "patients" else f"{pid}/{tp}" if tp else pid
        if (table, row, column, problem.message) in seen:
            continue
        seen.add((table, row, column, problem.message))
        found.setdefault((table, column, problem.allowed), []).append((row, problem.message))
    out: list[Violation] = []
    for (table, column, _allowed), hits in found.items():
        out.extend(_capped(table, column, hits, limit))
    return out


def _acceptable(typed: dict[str, pd.DataFrame], refused: dict[str, dict[str, set[int]]]) -> dict[str, pd.DataFrame]:
    """The typed tables with every refused cell made missing: the rules between values and
    across tables judge only values that are acceptable on their own (a value is reported
    once, for itself; the service does the same)."""
    out = dict(typed)
    for name, cells in refused.items():
        # Keys stay: they name the rows the violations are reported at.
        cells = {column: positions for column, positions in cells.items() if TABLES[name].column(column).kind != "id"}
        if cells:
            table = typed[name].copy()
            for column, positions in cells.items():
                table.loc[table.index[sorted(positions)], column] = None
            out[name] = table
    return out


def _set_aside_sacral(events: pd.DataFrame) -> pd.DataFrame:
    """Events without the sacral fractures: accepted by the contract, but the outcomes are
    vertebral (T1-L5), so they must not reach the labels. Their count is kept in
    ``attrs['sacral_events_set_aside']``."""
    sacral = events["fracture_level"].isin(SACRAL_LEVELS).to_numpy()
    kept = events.loc[~sacral].reset_index(drop=True)
    kept.attrs["sacral_events_set_aside"] = int(sacral.sum())
    return kept


def validate_raw(tables: dict[str, pd.DataFrame], max_per_check: int = MAX_REPORTED_PER_CHECK) -> dict[str, pd.DataFrame]:
    """Validate and type a raw export.

    Takes a mapping table name -> DataFrame (as read from CSV or Parquet). Returns the same
    tables with contract types (dates as datetime64, binaries as Int8, ...), except that
    sacral events (S1-S5) are set aside from ``events``. Raises RawDataError with every
    violation, by table, row key and column: at most ``max_per_check`` rows per rule and
    column, then a count (enough to fix a file; ``features.raw_records`` asks for all).
    """
    violations: list[Violation] = []
    for name in TABLES:
        if name not in tables:
            violations.append(Violation(name, "-", "-", "table missing"))
    typed: dict[str, pd.DataFrame] = {}
    refused: dict[str, dict[str, set[int]]] = {}
    for name, spec in TABLES.items():
        if name not in tables:
            continue
        if len(tables[name]) == 0 and not spec.may_be_empty:
            violations.append(Violation(name, "-", "-", "table is empty (no rows)"))
            continue
        df, problems, refused_cells = _check_table(tables[name], spec, max_per_check)
        violations.extend(problems)
        typed[name] = df
        refused[name] = refused_cells
    # The rules across tables need every table with its columns and unique keys; given
    # those, they run even when some cells were refused, so one pass reports everything.
    structural = len(typed) < len(TABLES) or any(
        v.message.startswith(("column missing", "duplicate key", "table")) for v in violations)
    if not structural:
        acceptable = _acceptable(typed, refused)
        violations.extend(_cross_table(acceptable, max_per_check))
        violations.extend(_implausible(acceptable, max_per_check))
    if violations:
        raise RawDataError(violations)
    typed["events"] = _set_aside_sacral(typed["events"])
    return typed
