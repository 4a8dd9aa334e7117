"""Work around a few bad rows: the procedures holding errors set aside, and the report that says which.

A hospital export of 20,000 procedures with a handful of broken rows should not stop
training, a site report or a recalibration, nor be edited by hand. ``checked_export``
takes a checked export (``features.validate.check_raw``) and a policy:

- ``exclude_invalid=False`` (the default of every command): any error stops the work
  (``RawDataError``, every error listed), as ``validate_raw`` does;
- ``exclude_invalid=True``: the procedures an error touches, and only those, are left out;
  the rest is used.

What "the procedures an error touches" means, by the table the error is in:

- ``procedures``: that procedure (a procedure row without a usable key: that row);
- ``imaging``: the procedure the row belongs to, at any time point;
- ``patients``: every procedure of that patient (the patient's values enter every one of
  their procedures' features, follow-up and labels);
- ``events``: every procedure of that patient (a new fracture with a wrong date or level
  changes the labels of all of them); an event naming a patient the export does not hold
  touches no procedure, and is left out itself.

Rows that only excluded procedures use go with them (a patient whose every procedure is
excluded, with their events; imaging rows of excluded procedures). The kept procedures are
not checked again: a session keeps its recorded level count when one of its levels is
excluded (the count is a fact of the surgery, not of the export). Warnings exclude nothing.
Problems no row owns (a table or a column missing, an empty table) stop the work whatever
the policy: nothing can be set aside for them.

``ExclusionReport`` lists every error and warning by table, row key, column, rule and
severity, with the procedures each error excluded; its fingerprint (SHA-256 of the CSV
bytes) identifies the exclusions a trained model or a report was built with. Pure:
writing the CSV or logging it to MLflow is the caller's job.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.validate import BySeverity, RawCheck, RawDataError, Violation, capped

#: Where a run keeps the exclusion report among its MLflow artifacts (training, recalibration).
VALIDATION_ARTIFACT = "validation/exclusions.csv"
#: Columns of the exclusion report, in order.
REPORT_COLUMNS = ("table", "row", "column", "rule", "severity", "message", "excluded_procedures")


@dataclass
class ExclusionReport(BySeverity):
    """What was set aside and why: ``violations`` (errors and warnings, uncapped, in report
    order), ``touched`` (per violation, the procedure ids it excluded; empty for warnings),
    ``excluded`` (every procedure id left out, in the order of the procedures table; a row
    without a key as ``row <n>``) and ``n_procedures`` (rows of the procedures table)."""

    violations: list[Violation] = field(default_factory=list)
    touched: list[list[str]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    n_procedures: int = 0

    def frame(self) -> pd.DataFrame:
        """One row per violation: ``REPORT_COLUMNS`` (excluded procedures joined by ';')."""
        rows = [(v.table, v.row, v.column, v.rule, v.severity, v.message, ";".join(ids))
                for v, ids in zip(self.violations, self.touched)]
        return pd.DataFrame(rows, columns=list(REPORT_COLUMNS))

    def csv_bytes(self) -> bytes:
        """The report as UTF-8 CSV (``\\n`` line ends): the bytes written and fingerprinted."""
        return self.frame().to_csv(index=False, lineterminator="\n").encode("utf-8")

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of ``csv_bytes``."""
        return hashlib.sha256(self.csv_bytes()).hexdigest()

    def summary(self) -> dict[str, str]:
        """Counts and fingerprint as text, for MLflow params/tags and file metadata."""
        return {"excluded_procedures": str(len(self.excluded)), "export_procedures": str(self.n_procedures),
                "validation_errors": str(len(self.errors)), "validation_warnings": str(len(self.warnings)),
                "exclusion_report_sha256": self.fingerprint}


@dataclass
class CheckedExport:
    """A raw export ready for the pipelines: ``tables`` (typed, sacral events set aside,
    excluded procedures and the rows only they use left out) and ``report``."""

    tables: dict[str, pd.DataFrame]
    report: ExclusionReport


def exclusion_report(check: RawCheck) -> ExclusionReport:
    """What ``checked_export(check, exclude_invalid=True)`` would set aside, whatever the
    errors (``refracture validate`` shows it before any work is done)."""
    typed = check.typed
    if "procedures" not in typed or not {"procedure_id", "patient_id"} <= set(typed["procedures"].columns):
        return ExclusionReport(check.violations, [[] for _ in check.violations], [], 0)
    procedures = typed["procedures"]
    ids = _keys(procedures["procedure_id"])
    rows_of = _Rows(procedures, ids)
    touched_rows = [_touched_rows(v, typed, rows_of) if v.severity == "error" else set() for v in check.violations]
    bad_rows = set().union(*touched_rows) if touched_rows else set()
    return ExclusionReport(check.violations, [sorted(_name(ids, i) for i in rows) for rows in touched_rows],
                           list(dict.fromkeys(_name(ids, i) for i in sorted(bad_rows))), len(procedures))


def checked_export(check: RawCheck, exclude_invalid: bool = False) -> CheckedExport:
    """The tables of a checked export under a policy (see the module docstring).

    Raises ``RawDataError`` (the errors, capped per rule as ``validate_raw`` lists them;
    its ``warnings`` too) when the export has an error and ``exclude_invalid`` is False, or
    when an error no row owns makes the export unusable as a whole.
    """
    errors = check.errors
    if errors and (not exclude_invalid or check.structural):
        raise RawDataError(capped(errors), capped(check.warnings))
    report = exclusion_report(check)
    if not errors:
        return CheckedExport(check.tables(), report)
    ids = _keys(check.typed["procedures"]["procedure_id"])
    excluded = set(report.excluded)
    bad_rows = {i for i in range(len(ids)) if _name(ids, i) in excluded}
    return CheckedExport(check.tables(_kept(check.typed, check, bad_rows, ids)), report)


def _name(ids: list[str | None], i: int) -> str:
    """A procedure row's name in the report: its id, or ``row <n>`` without one."""
    return ids[i] if ids[i] is not None else f"row {i + 1}"


def _keys(values: pd.Series) -> list[str | None]:
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values.tolist()]


class _Rows:
    """Row positions in the procedures table by procedure id and by patient id."""

    def __init__(self, procedures: pd.DataFrame, ids: list[str | None]):
        self.by_id: dict[str, list[int]] = {}
        self.by_patient: dict[str, list[int]] = {}
        for pos, pid, patient in zip(procedures.index, ids, procedures["patient_id"].tolist()):
            if pid is not None:
                self.by_id.setdefault(pid, []).append(int(pos))
            if patient is not None:
                self.by_patient.setdefault(str(patient), []).append(int(pos))


def _touched_rows(v: Violation, typed: dict[str, pd.DataFrame], rows_of: _Rows) -> set[int]:
    """Row positions in the procedures table of the procedures an error touches."""
    if v.position is None:
        return set()
    if v.table == "procedures":
        return {v.position}
    row = typed[v.table].loc[v.position]
    if v.table == "imaging":
        pid = row["procedure_id"]
        return set(rows_of.by_id.get(str(pid), [])) if pid is not None else set()
    patient = row["patient_id"]  # patients and events
    return set(rows_of.by_patient.get(str(patient), [])) if patient is not None else set()


def _kept(typed: dict[str, pd.DataFrame], check: RawCheck, bad_rows: set[int], ids: list[str | None]
          ) -> dict[str, pd.DataFrame]:
    """The typed tables without the excluded procedures, the rows only they use, and the
    rows holding errors that touch no procedure (an event of an unknown patient, an
    imaging row of an unknown procedure)."""
    erroneous: dict[str, set[int]] = {}
    for v in check.errors:
        erroneous.setdefault(v.table, set()).add(v.position)
    procedures = typed["procedures"]
    keep_proc = ~procedures.index.isin(list(bad_rows))
    kept_procedures = procedures[keep_proc]
    kept_ids = {ids[i] for i in np.flatnonzero(keep_proc) if ids[i] is not None}
    kept_patients = set(kept_procedures["patient_id"].dropna().astype(str))
    excluded_patients = set(procedures.loc[~keep_proc, "patient_id"].dropna().astype(str)) - kept_patients

    def rows(name: str, keep: np.ndarray) -> pd.DataFrame:
        table = typed[name]
        return table[keep & ~table.index.isin(list(erroneous.get(name, ())))].reset_index(drop=True)

    patients, imaging, events = typed["patients"], typed["imaging"], typed["events"]
    return {
        "patients": rows("patients", ~patients["patient_id"].astype(str).isin(excluded_patients).to_numpy()),
        "procedures": kept_procedures.reset_index(drop=True),
        "imaging": rows("imaging", imaging["procedure_id"].astype(str).isin(kept_ids).to_numpy()),
        "events": rows("events", events["patient_id"].astype(str).isin(kept_patients).to_numpy()),
    }
