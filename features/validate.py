"""Validation of a raw export against the contract in ``features.schema``.

``check_raw`` takes the tables as read (CSV text or Parquet types), returns them with every
column coerced to its contract type and *every* problem found, each naming the table, the
row key and the column, with its severity (``error``: the value cannot be used;
``warning``: implausible but possible, used) and its rule. ``validate_raw`` is the strict
form: it raises ``RawDataError`` listing the errors, so nothing downstream (features,
labels, training) runs on a table with an error; ``features.exclusion`` is the form that
sets the procedures holding errors aside instead, when the user asks for it.

The value rules are ``features.contract``'s, the same the service applies to records:
per cell (``column_problems``), and between the values of one procedure
(``plausibility_problems``, on the procedure's row of the wide frame, reported back at
the table, row and column the value came from). Rules only tables can state (keys,
references between tables, dates against the surgery, the session's level count) are
here, in ``TABLE_RULES``; every one is an error. The only time dependence is "in the
future", against today's date.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.coerce import coerce_array
from features.contract import COLUMN_RULES, ERROR, PLAUSIBILITY_RULES, WARNING, Severity, column_problems, \
    plausibility_problems
from features.levels import SACRAL_LEVELS
from features.schema import IMAGING_BY_TIMEPOINT, TABLES, ColumnSpec, TableSpec
from features.wide import flat_specs, table_columns

MAX_REPORTED_PER_CHECK = 20

#: The rules only tables can state, by name (every one an error). A missing table or column,
#: or an empty table, no row owns: no procedure can be set aside for it.
TABLE_RULES: dict[str, str] = {
    "table_missing": "a table of the contract is missing",
    "table_empty": "a table that needs rows has none",
    "column_missing": "a column of the contract is missing",
    "duplicate_key": "two rows share a key",
    "unknown_patient": "a procedure or event names a patient the patients table does not hold",
    "unknown_procedure": "an imaging row names a procedure the procedures table does not hold",
    "preop_exam_after_surgery": "a pre-operative examination is dated after the surgery",
    "exam_before_surgery": "a post-operative or follow-up examination is dated before the surgery",
    "event_before_surgery": "a new fracture is dated before the patient's first surgery",
    "followup_before_surgery": "the last follow-up contact is before the patient's last surgery",
    "death_before_surgery": "death is dated before the patient's last surgery",
    "death_before_followup": "death is dated before the last follow-up contact",
    "event_after_death": "a new fracture is dated after the patient's death",
    "after_data_cut": "a date is after the data cut export.yaml states (checked with export.yaml, after the tables; it "
                      "stops the command: either the file or the rows are wrong, so no procedure is set aside for it)",
    "level_count": "n_levels_treated differs from the session's rows",
    "level_twice": "the same level appears twice in one session",
}


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (table, row key, column), what, how sure, and which rule.

    ``severity``: ``error`` (the value cannot be used) or ``warning`` (used, reported).
    ``rule``: a name of ``features.contract.COLUMN_RULES``, ``PLAUSIBILITY_RULES`` or
    ``TABLE_RULES``. ``position``: the row's position in its table as read (None for a
    problem no row owns: a missing table or column); it is how ``features.exclusion``
    finds the procedures an error touches, whatever the keys say.
    """

    table: str
    row: str
    column: str
    message: str
    severity: Severity = ERROR
    rule: str = ""
    position: int | None = field(default=None, compare=False)

    def __str__(self) -> str:
        mark = "" if self.severity == ERROR else "(warning) "
        return f"{self.table} [{self.row}] {self.column}: {mark}{self.message}"


class RawDataError(ValueError):
    """Raised with every error found in a raw export (``warnings``: its warnings, if known)."""

    def __init__(self, violations: list[Violation], warnings: list[Violation] | None = None):
        self.violations = list(violations)
        self.warnings = list(warnings or [])
        head = "\n".join(f"  - {v}" for v in self.violations[:200])
        more = "" if len(self.violations) <= 200 else f"\n  ... and {len(self.violations) - 200} more"
        super().__init__(f"{len(self.violations)} violation(s) in the raw export:\n{head}{more}")


class BySeverity:
    """``errors`` and ``warnings`` of a class holding ``violations``."""

    violations: list[Violation]

    @property
    def errors(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == ERROR]

    @property
    def warnings(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == WARNING]


@dataclass
class RawCheck(BySeverity):
    """A raw export checked: the typed tables and every problem found (uncapped).

    ``typed``: every table read with its contract types, indexed by row position as read
    (``Violation.position``), rows with errors included; ``violations``: errors and
    warnings in report order.
    """

    typed: dict[str, pd.DataFrame]
    violations: list[Violation]

    def tables(self, typed: dict[str, pd.DataFrame] | None = None) -> dict[str, pd.DataFrame]:
        """The typed tables (``typed``, default all of ``self.typed``) as the pipelines take
        them: sacral events set aside (``_set_aside_sacral``)."""
        out = dict(self.typed if typed is None else typed)
        out["events"] = _set_aside_sacral(out["events"])
        return out

    @property
    def structural(self) -> list[Violation]:
        """Errors no row owns (a table or column missing, a table empty): the export as a
        whole cannot be used, whatever is set aside."""
        return [v for v in self.errors if v.position is None]


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


def _check_table(df: pd.DataFrame, spec: TableSpec) -> tuple[pd.DataFrame, list[Violation], dict[str, set[int]]]:
    """(typed table indexed by row position, violations, refused cells: column -> row positions)."""
    violations: list[Violation] = []
    refused: dict[str, set[int]] = {}
    missing = [c for c in spec.column_names if c not in df.columns]
    for name in missing:
        col = spec.column(name)
        violations.append(Violation(spec.name, "-", name, f"column missing ({col.definition} Unit: {col.unit or '-'})",
                                    rule="column_missing"))
    if missing:
        return df, violations, refused

    df = df.reset_index(drop=True)
    keys = _row_keys(df, spec)
    out = pd.DataFrame(index=df.index)
    for col in spec.columns:
        raw = df[col.name]
        values, bad = coerce_array(raw, col.kind)
        problems = column_problems(raw, values, bad, col, required=not col.nullable)
        violations.extend(Violation(spec.name, str(keys.iat[p.position]), col.name, p.message, rule=p.rule,
                                    position=p.position) for p in problems)
        out[col.name] = _typed_series(values, raw.index, col)
        if problems:
            refused[col.name] = {p.position for p in problems}
    # Extra columns are kept (a site may export more) but never used by the pipelines.
    for extra in df.columns.difference(spec.column_names):
        out[extra] = df[extra]

    key_cols = list(spec.key)
    dup = out.duplicated(key_cols, keep=False) & out[key_cols].notna().all(axis=1)
    violations.extend(Violation(spec.name, str(keys.iat[i]), "+".join(key_cols), "duplicate key", rule="duplicate_key",
                                position=int(i)) for i in np.flatnonzero(dup.to_numpy()))
    return out, violations, refused


def capped(violations: list[Violation], limit: int = MAX_REPORTED_PER_CHECK) -> list[Violation]:
    """At most ``limit`` violations per table, column, rule and severity (in first-seen
    order), then one line with the count of the rest: enough to fix a file."""
    groups: dict[tuple[str, str, str, str], list[Violation]] = {}
    for v in violations:
        groups.setdefault((v.table, v.column, v.rule, v.severity), []).append(v)
    out: list[Violation] = []
    for (table, column, rule, severity), hits in groups.items():
        out.extend(hits[:limit])
        if len(hits) > limit:
            out.append(Violation(table, "...", column, f"{len(hits) - limit} more rows: {rule_text(rule)}",
                                 severity=severity, rule=rule))
    return out


def rule_text(rule: str) -> str:
    """A rule's name in words."""
    by_name = {**COLUMN_RULES, **TABLE_RULES, **{r.name: r.name.replace("_", " ") for r in PLAUSIBILITY_RULES}}
    return by_name.get(rule, rule)


# ------------------------------------------------------------------------ cross-table


def _rows(table: str, rows: pd.DataFrame, key_cols: list[str], column: str, message, rule: str) -> list[Violation]:
    """One violation per row of ``rows`` (an offending part of ``table``, positions in
    ``_pos``), its key from ``key_cols``; ``message``: text, or a function of the row."""
    keys = rows[key_cols].astype("string").fillna("?").agg("/".join, axis=1) if len(rows) else []
    return [Violation(table, str(key), column, message(r) if callable(message) else message, rule=rule,
                      position=int(r["_pos"]))
            for key, (_, r) in zip(keys, rows.iterrows())]


def _with_positions(t: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {name: df.assign(_pos=df.index.to_numpy()) for name, df in t.items()}


def _cross_table(t: dict[str, pd.DataFrame], typed: dict[str, pd.DataFrame]) -> list[Violation]:
    """The rules across tables on the joinable rows ``t``; ``typed``: every row (a key held
    by two rows is known, if not joinable)."""
    t = _with_positions(t)
    v: list[Violation] = []
    patients, procedures, imaging, events = t["patients"], t["procedures"], t["imaging"], t["events"]
    known_patients = set(typed["patients"]["patient_id"].dropna())
    known_procedures = set(typed["procedures"]["procedure_id"].dropna())

    v += _rows("procedures", procedures[~procedures["patient_id"].isin(known_patients)], ["procedure_id"], "patient_id",
               lambda r: f"patient {r['patient_id']!r} is not in the patients table", "unknown_patient")
    v += _rows("imaging", imaging[~imaging["procedure_id"].isin(known_procedures)], ["procedure_id", "timepoint"],
               "procedure_id", "procedure is not in the procedures table", "unknown_procedure")
    v += _rows("events", events[~events["patient_id"].isin(known_patients)], ["event_id"], "patient_id",
               lambda r: f"patient {r['patient_id']!r} is not in the patients table", "unknown_patient")

    # Dates against surgery.
    surg = procedures[["procedure_id", "patient_id", "surgery_date"]]
    img = imaging.merge(surg, on="procedure_id", how="inner")
    v += _rows("imaging", img[(img["timepoint"] == "preop") & (img["exam_date"] > img["surgery_date"])],
               ["procedure_id", "timepoint"], "exam_date",
               lambda r: f"pre-operative exam {r['exam_date']:%Y-%m-%d} is after the surgery ({r['surgery_date']:%Y-%m-%d})",
               "preop_exam_after_surgery")
    v += _rows("imaging", img[(img["timepoint"] != "preop") & (img["exam_date"] < img["surgery_date"])],
               ["procedure_id", "timepoint"], "exam_date",
               lambda r: f"{r['timepoint']} exam {r['exam_date']:%Y-%m-%d} is before the surgery ({r['surgery_date']:%Y-%m-%d})",
               "exam_before_surgery")

    first_surgery = procedures.groupby("patient_id")["surgery_date"].min().rename("first_surgery_date")
    ev = events.merge(first_surgery, left_on="patient_id", right_index=True, how="inner")
    v += _rows("events", ev[ev["event_date"] < ev["first_surgery_date"]], ["event_id"], "event_date",
               lambda r: f"follow-up event {r['event_date']:%Y-%m-%d} is before the surgery ({r['first_surgery_date']:%Y-%m-%d})",
               "event_before_surgery")
    last_surgery = procedures.groupby("patient_id")["surgery_date"].max().rename("last_surgery_date")
    pt = patients.merge(last_surgery, left_on="patient_id", right_index=True, how="inner")
    v += _rows("patients", pt[pt["last_followup_date"] < pt["last_surgery_date"]], ["patient_id"], "last_followup_date",
               lambda r: f"last follow-up {r['last_followup_date']:%Y-%m-%d} is before the surgery ({r['last_surgery_date']:%Y-%m-%d})",
               "followup_before_surgery")
    v += _rows("patients", pt[pt["death_date"].notna() & (pt["death_date"] < pt["last_surgery_date"])], ["patient_id"],
               "death_date", "death is before the surgery", "death_before_surgery")
    v += _rows("patients", pt[pt["death_date"].notna() & (pt["death_date"] < pt["last_followup_date"])], ["patient_id"],
               "death_date", "death is before the last follow-up contact", "death_before_followup")
    died = events.merge(patients[["patient_id", "death_date"]], on="patient_id", how="inner")
    v += _rows("events", died[died["death_date"].notna() & (died["event_date"] > died["death_date"])], ["event_id"],
               "event_date", lambda r: f"fracture {r['event_date']:%Y-%m-%d} is after the patient's death "
               f"({r['death_date']:%Y-%m-%d})", "event_after_death")

    # The session's level count must match its rows, and no level is treated twice in a session.
    session = procedures.groupby(["patient_id", "surgery_date"])["procedure_id"].transform("size")
    v += _rows("procedures", procedures[procedures["n_levels_treated"].notna() & (procedures["n_levels_treated"] != session)],
               ["procedure_id"], "n_levels_treated",
               lambda r: f"says {r['n_levels_treated']} levels but the export has {int(session.loc[r.name])} rows for this "
                         "patient and surgery date", "level_count")
    dup_level = procedures.duplicated(["patient_id", "surgery_date", "level"], keep=False)
    v += _rows("procedures", procedures[dup_level], ["procedure_id"], "level", "the same level appears twice in one session",
               "level_twice")
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


def _implausible(typed: dict[str, pd.DataFrame]) -> list[Violation]:
    """``features.contract.plausibility_problems`` on each procedure, reported at the table,
    row and column of the value named (a patient's value once, however many procedures)."""
    columns, ids = table_columns(typed)
    procedures, patients, imaging = typed["procedures"], typed["patients"], typed["imaging"]
    patient_of = dict(zip(procedures["procedure_id"].astype(str), procedures["patient_id"]))
    procedure_pos = dict(zip(procedures["procedure_id"].astype(str), procedures.index))
    patient_pos = dict(zip(patients["patient_id"], patients.index))
    imaging_pos = dict(zip(zip(imaging["procedure_id"].astype(str), imaging["timepoint"]), imaging.index))
    seen: set[tuple[str, str, str, str]] = set()
    out: list[Violation] = []
    for problem in plausibility_problems(columns, len(ids)):
        table, column, tp = _where(problem.field)
        pid = ids[problem.position]
        if table == "patients":
            row, position = str(patient_of[pid]), patient_pos.get(patient_of[pid])
        elif tp:
            row, position = f"{pid}/{tp}", imaging_pos.get((pid, tp))
        else:
            row, position = pid, procedure_pos.get(pid)
        if (table, row, column, problem.message) in seen:
            continue
        seen.add((table, row, column, problem.message))
        out.append(Violation(table, row, column, problem.message, severity=problem.severity, rule=problem.rule,
                             position=None if position is None else int(position)))
    # Grouped by rule and column, as the cell checks are (the report reads rule by rule).
    order = {(r.name, sev): k for k, (r, sev) in enumerate((r, s) for r in PLAUSIBILITY_RULES for s in (ERROR, WARNING))}
    return sorted(out, key=lambda v: (order.get((v.rule, v.severity), 0), v.table, v.column))


def _acceptable(typed: dict[str, pd.DataFrame], refused: dict[str, dict[str, set[int]]],
                violations: list[Violation]) -> dict[str, pd.DataFrame]:
    """The typed tables ready for the rules between values and across tables: every
    refused cell made missing (a value is reported once, for itself; the service does the
    same), and rows whose key is missing or repeated left out (they cannot be joined one
    to one; they are errors already)."""
    out = dict(typed)
    unjoinable: dict[str, set[int]] = {}
    for v in violations:
        if v.rule in ("duplicate_key",) or (v.rule == "required" and v.column in TABLES[v.table].key):
            unjoinable.setdefault(v.table, set()).add(v.position)
    for name, table in typed.items():
        cells = {column: positions for column, positions in refused.get(name, {}).items()
                 if TABLES[name].column(column).kind != "id"}
        if cells or name in unjoinable:
            table = table.copy()
            # Keys stay: they name the rows the violations are reported at.
            for column, positions in cells.items():
                table.loc[table.index[sorted(positions)], column] = None
            out[name] = table.drop(index=sorted(unjoinable.get(name, ())))
    return out


def _set_aside_sacral(events: pd.DataFrame) -> pd.DataFrame:
    """Events without the sacral fractures: accepted by the contract, but the outcomes are
    vertebral (T1-L5), so they must not reach the labels. Their count is kept in
    ``attrs['sacral_events_set_aside']``."""
    sacral = events["fracture_level"].isin(SACRAL_LEVELS).to_numpy()
    kept = events.loc[~sacral].reset_index(drop=True)
    kept.attrs["sacral_events_set_aside"] = int(sacral.sum())
    return kept


def check_raw(tables: dict[str, pd.DataFrame]) -> RawCheck:
    """Check and type a raw export: every problem, errors and warnings, in one pass.

    Takes a mapping table name -> DataFrame (as read from CSV or Parquet). Returns the
    tables with contract types (dates as datetime64, binaries as Int8, ...; each indexed by
    row position as read; ``RawCheck.tables`` sets the sacral events aside) and every
    violation, by table, row key and column. The rules across tables and between values
    need every table with its columns; given those, they run even when some cells or keys
    were refused (on the rows that can be joined), so one pass reports everything.
    """
    violations: list[Violation] = []
    for name in TABLES:
        if name not in tables:
            violations.append(Violation(name, "-", "-", "table missing", rule="table_missing"))
    typed: dict[str, pd.DataFrame] = {}
    refused: dict[str, dict[str, set[int]]] = {}
    for name, spec in TABLES.items():
        if name not in tables:
            continue
        if len(tables[name]) == 0 and not spec.may_be_empty:
            violations.append(Violation(name, "-", "-", "table is empty (no rows)", rule="table_empty"))
            continue
        df, problems, refused_cells = _check_table(tables[name], spec)
        violations.extend(problems)
        typed[name] = df
        refused[name] = refused_cells
    whole = len(typed) < len(TABLES) or any(v.position is None for v in violations)
    if not whole:
        acceptable = _acceptable(typed, refused, violations)
        violations.extend(_cross_table(acceptable, typed))
        violations.extend(_implausible(acceptable))
    return RawCheck(typed, violations)


def validate_raw(tables: dict[str, pd.DataFrame], max_per_check: int = MAX_REPORTED_PER_CHECK) -> dict[str, pd.DataFrame]:
    """Validate and type a raw export, refusing it on any error (warnings pass).

    Returns ``check_raw``'s typed tables (sacral events set aside from ``events``). Raises
    RawDataError with every error, by table, row key and column: at most ``max_per_check``
    rows per rule and column, then a count (enough to fix a file); its ``warnings`` hold
    the warnings, likewise capped.
    """
    check = check_raw(tables)
    if check.errors:
        raise RawDataError(capped(check.errors, max_per_check), capped(check.warnings, max_per_check))
    return check.tables()
