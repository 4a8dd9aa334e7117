"""A raw export turned into flat records for scoring, keeping the records that pass.

``refracture validate`` and training refuse an export with any violation: a model must
not learn from a broken table. Scoring is different: a hospital scoring its monthly export
wants every sound record scored and the broken ones named. ``scorable_records`` therefore

1. checks the tables with ``features.validate.check_raw`` (the contract, every
   violation by table, row key and column, none left out; warnings exclude nothing);
2. refuses the whole export only for problems no single record owns (a missing table or
   column, an unreadable file): then nothing is scored, as before;
3. otherwise maps each violation to the procedures whose record it touches (a patient's
   row to all of that patient's procedures, an imaging row to its procedure, ...) and
   leaves those out. Violations in what a record does not use (follow-up imaging, events,
   last contact, death) are reported but exclude nothing;
4. builds the flat records with ``features.records.tables_to_records`` from the tables
   as read (raw cells, as in a flat-records file), so the scorer reads every value with the
   same ``features.coerce`` rules as for any other input, and checks the kept records with
   ``features.records.inspect_records`` as a last guard (its errors exclude too).

Whether broken records are left out or stop the scoring is the caller's policy
(``refracture predict --raw --exclude-invalid``); ``ScorableRecords.report`` is the
exclusion report (``features.exclusion.ExclusionReport``) either way.

Pure: tables in, records and violations out. Reading the files is ``features.io.read_raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.exclusion import ExclusionReport
from features.records import RECORD_FIELDS, RECORD_TIMEPOINTS, inspect_records, tables_to_records
from features.validate import BySeverity, RawDataError, Violation, capped, check_raw

#: Columns of each table that feed a record (its fields, its keys, and the exam date that
#: dates the imaging values): a violation there excludes the record.
_RECORD_COLUMNS: dict[str, set[str]] = {
    "patients": {f.spec.name for f in RECORD_FIELDS if f.section == "patient"} | {"patient_id"},
    "procedures": {f.spec.name for f in RECORD_FIELDS if f.section == "procedure"} | {"patient_id"},
    "imaging": {f.spec.name for f in RECORD_FIELDS if f.section == "imaging"} | {"procedure_id", "timepoint", "exam_date"},
}


@dataclass
class ScorableRecords(BySeverity):
    """What a raw export gives to scoring.

    ``records``: flat records (raw cells) of the procedures that pass, in the order of the
    procedures table. ``violations``: every violation found (by table, row key, column),
    errors and warnings. ``excluded``: procedure ids left out because an error touches
    their record. ``n_procedures``: rows of the procedures table. ``report``: the
    exclusion report (every violation with the procedures it left out).
    """

    records: pd.DataFrame
    violations: list[Violation] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    n_procedures: int = 0
    report: ExclusionReport = field(default_factory=ExclusionReport)

    def report_lines(self, limit: int = 200) -> list[str]:
        """The violations as ``refracture validate`` prints them (capped per rule and column,
        errors then warnings), then what was left out."""
        shown = capped(self.errors) + capped(self.warnings)
        lines = [f"  - {v}" for v in shown[:limit]]
        if len(shown) > limit:
            lines.append(f"  ... and {len(shown) - limit} more")
        lines.append(f"{len(self.excluded)} of {self.n_procedures} procedure records not scored "
                     "(their rows break the contract); the others were scored.")
        return lines


def scorable_records(tables: dict[str, pd.DataFrame]) -> ScorableRecords:
    """Flat records of every procedure whose record passes the contract, and every violation.

    Takes the four tables as read (``features.io.read_raw``: CSV text or Parquet types).
    Raises ``RawDataError`` (every violation) when the export as a whole cannot be used:
    a table or column missing, a file unreadable, an empty table.
    """
    violations = _all_violations(tables)
    errors = [v for v in violations if v.severity == "error"]
    whole = [v for v in errors if v.row == "-" and v.table in _RECORD_COLUMNS]
    if whole:
        raise RawDataError(errors)
    procedures = tables["procedures"]
    ids = _text(procedures["procedure_id"])
    touches = _Touches(tables, ids)
    bad = touches.all(errors)
    # Rows whose key is missing or repeated cannot be joined one-to-one; their procedures
    # are already among the excluded (the duplicate / missing key is a violation).
    kept_tables = _joinable(tables, ids, bad)
    if errors:
        # Check the kept rows again: a rule between tables may read differently once the
        # broken rows are gone.
        again = [v for v in _all_violations(_record_rows_only(kept_tables))
                 if v.severity == "error" and not _level_count_artifact(v, tables, bad)]
        violations = violations + [v for v in again if v not in violations]
        more = _Touches(kept_tables, _text(kept_tables["procedures"]["procedure_id"])).all(again)
        if more - bad:
            bad |= more
            kept_tables = _joinable(tables, ids, bad)
    records = tables_to_records(kept_tables).reset_index(drop=True)
    late = inspect_records(records).errors
    if late:  # rules the table checks and the record checks state differently: exclude too
        patient_of = dict(zip(kept_tables["procedures"]["procedure_id"], kept_tables["procedures"]["patient_id"]))
        violations = violations + [_as_violation(e, records, patient_of) for e in late]
        bad |= {str(records.at[e["record"], "procedure_id"]) for e in late}
        records = records[~records["procedure_id"].astype(str).isin(bad)].reset_index(drop=True)
    excluded = [i for i in dict.fromkeys(ids.dropna()) if i in bad]
    excluded += [f"row {i + 1}" for i in np.flatnonzero(ids.isna().to_numpy())]
    touched = [sorted(touches.of(v) & bad) if v.severity == "error" else [] for v in violations]
    report = ExclusionReport(violations, touched, excluded, len(procedures))
    return ScorableRecords(records, violations, excluded, len(procedures), report)


def _all_violations(tables: dict[str, pd.DataFrame]) -> list[Violation]:
    """Every violation of the export, errors and warnings, uncapped (leaving out a record
    needs them all)."""
    return check_raw(tables).violations


def _record_rows_only(kept: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The kept tables reduced to what records use, for the second check: patients with a
    kept procedure, pre-/post-operative imaging, no events, and the follow-up columns
    (reported in the first check, never scored) set to values no rule objects to (last
    contact on the last surgery date, no death), so only rules about record rows can fail."""
    procedures = kept["procedures"]
    patients = kept["patients"][kept["patients"]["patient_id"].isin(set(procedures["patient_id"]))].copy()
    last_surgery = procedures.groupby("patient_id")["surgery_date"].max()
    patients["last_followup_date"] = patients["patient_id"].map(last_surgery)
    patients["death_date"] = None
    imaging = kept["imaging"][kept["imaging"]["timepoint"].isin(RECORD_TIMEPOINTS)]
    return {"patients": patients, "procedures": procedures, "imaging": imaging, "events": kept["events"].iloc[0:0]}


def _level_count_artifact(v: Violation, tables: dict[str, pd.DataFrame], bad: set[str]) -> bool:
    """True for a level-count violation that only leaving out a sibling level caused: the
    procedure's session (patient, surgery date) lost a row to the exclusions. (A session
    both miscounted and holding a broken level is then not reported twice; its broken
    level is.)"""
    if v.table != "procedures" or v.column != "n_levels_treated":
        return False
    procedures = tables["procedures"]
    ids = _text(procedures["procedure_id"])
    session = procedures.loc[(ids == v.row).to_numpy(), ["patient_id", "surgery_date"]]
    if session.empty:
        return False
    patient = str(session.iloc[0]["patient_id"]).strip()
    same_day = (procedures["surgery_date"] == session.iloc[0]["surgery_date"]).fillna(False)  # same column, same type
    siblings = ids[((_text(procedures["patient_id"]) == patient) & same_day).to_numpy()]
    return bool(set(siblings) & bad)


def _text(values: pd.Series) -> pd.Series:
    """Keys as text with surrounding spaces trimmed (missing stays missing)."""
    return values.astype("string").str.strip().astype(object).where(values.notna(), None)


class _Touches:
    """Which procedure ids' records use the row and column a violation names."""

    def __init__(self, tables: dict[str, pd.DataFrame], ids: pd.Series):
        procedures = tables["procedures"]
        self.by_patient: dict[str, list[str]] = {}
        for patient, pid in zip(_text(procedures["patient_id"]).tolist(), ids.tolist()):
            if patient is not None and pid is not None:
                self.by_patient.setdefault(patient, []).append(str(pid))

    def of(self, v: Violation) -> set[str]:
        if v.table not in _RECORD_COLUMNS or not (set(v.column.split("+")) & _RECORD_COLUMNS[v.table]):
            return set()
        row = v.row.strip()
        if v.table == "patients":
            return set(self.by_patient.get(row, []))
        if v.table == "procedures":
            return {row}
        procedure, _, timepoint = row.rpartition("/")
        return {procedure.strip()} if timepoint in RECORD_TIMEPOINTS or timepoint == "?" else set()

    def all(self, violations: list[Violation]) -> set[str]:
        return set().union(*(self.of(v) for v in violations)) if violations else set()


def _joinable(tables: dict[str, pd.DataFrame], ids: pd.Series, bad: set[str]) -> dict[str, pd.DataFrame]:
    """The tables without excluded procedures and without rows whose key is missing or
    repeated, so patients, procedures and imaging join one-to-one."""
    keep = ids.notna() & ~ids.isin(bad)
    procedures = tables["procedures"][keep.to_numpy()].copy()
    procedures["procedure_id"] = _text(procedures["procedure_id"])
    procedures["patient_id"] = _text(procedures["patient_id"])
    patients = tables["patients"].copy()
    patients["patient_id"] = _text(patients["patient_id"])
    patients = patients[patients["patient_id"].notna() & ~patients["patient_id"].duplicated(keep=False)]
    imaging = tables["imaging"].copy()
    imaging["procedure_id"] = _text(imaging["procedure_id"])
    imaging["timepoint"] = _text(imaging["timepoint"])
    imaging = imaging[imaging["procedure_id"].isin(set(procedures["procedure_id"]))]
    imaging = imaging[~imaging.duplicated(["procedure_id", "timepoint"], keep=False)]
    return {"patients": patients, "procedures": procedures, "imaging": imaging, "events": tables["events"]}


def _as_violation(error: dict, records: pd.DataFrame, patient_of: dict[str, str]) -> Violation:
    """A record check's error (``inspect_records``) named by table, row key and column."""
    section, *rest = error["field"].split(".")
    procedure = str(records.at[error["record"], "procedure_id"])
    message = error["error"] + (f" (allowed: {error['allowed']})" if error.get("allowed") else "")
    if section == "patient":
        return Violation("patients", str(patient_of.get(procedure, procedure)), rest[-1], message)
    if section == "procedure":
        return Violation("procedures", procedure, rest[-1], message)
    return Violation("imaging", f"{procedure}/{rest[0]}", rest[-1], message)
