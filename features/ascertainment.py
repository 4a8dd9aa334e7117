"""How far an export's follow-up reaches: the site metadata file ``export.yaml``.

A death date after the last clinic contact is what a death registry gives, and whether a
fracture after the last contact would have reached the export only the hospital knows.
The labels (``features.labels``) need both, so the export states them in one small YAML
file beside its tables, validated once here::

    # export.yaml
    site: Hospital C                              # optional, shown in reports
    data_cut: 2025-01-31                          # the date the export was drawn
    deaths_ascertained_until: data_cut            # or last_contact
    fractures_ascertained_until: death_or_data_cut  # or last_contact

- ``deaths_ascertained_until``: ``data_cut`` when every patient's death up to the data cut
  is in ``death_date`` (linked from a death registry), so a patient with no death date is
  known alive at the data cut; ``last_contact`` when deaths are known only while the
  patient is in contact (a death after the last contact is then not counted: the deaths
  of other patients after their last contact are unknown, and counting only those that
  happened to be learnt would overstate mortality).
- ``fractures_ascertained_until``: ``death_or_data_cut`` when any new fracture until
  death or the data cut would be in ``events`` (a hospital that would have treated it,
  deaths linked from a registry: needs ``deaths_ascertained_until: data_cut``), so a
  death after the last contact competes with the fractures; ``last_contact`` when
  fractures are known only until the last contact (fracture follow-up is censored
  there, and a later death does not compete).
- ``data_cut``: required when deaths are ascertained until it (and so when fractures
  are); no date in the tables may be after it.

**Without the file** (``resolve(None, tables)``): fractures until the last contact, the
one statement true of every export, which never counts a patient fracture-free for
longer than the hospital saw them (the other choice would count every patient lost to
follow-up as fracture-free until the data cut, an understatement no figure in the export
can reveal). Its price when deaths come after the last contact is that they do not
compete, so the fracture risks are overstated: that is never silent (``followup_notes``
counts those deaths, and any fracture recorded after the last contact, which is then not
counted, and says which line of ``export.yaml`` changes it). Deaths until the
last contact, unless the export itself records deaths after the last contact: those can
only come from outside the clinic (a registry), so deaths are then taken as ascertained
until the latest date the export holds (a lower bound of the data cut: no death after it
can be missing from a registry-linked export), and they count. Either way no recorded
death is dropped without a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.validate import MAX_REPORTED_PER_CHECK, RawDataError, Violation

#: The site metadata file of a raw export, beside its tables.
EXPORT_METADATA_FILE = "export.yaml"
LAST_CONTACT, DATA_CUT, DEATH_OR_DATA_CUT = "last_contact", "data_cut", "death_or_data_cut"
#: Every date of the contract, by table: none may be after the data cut.
EXPORT_DATES = {"patients": ("last_followup_date", "death_date"), "procedures": ("surgery_date",),
          "imaging": ("exam_date",), "events": ("event_date",)}
_KEYS = {"patients": ("patient_id",), "procedures": ("procedure_id",), "imaging": ("procedure_id", "timepoint"),
         "events": ("event_id",)}


#: What the labels assume when an export has no ``export.yaml`` (module docstring), in one
#: sentence for the data dictionary.
DEFAULT_WITHOUT_FILE = (
    "Without the file, fractures are taken as ascertained until the last contact (true of every export: no patient "
    "is counted fracture-free longer than the hospital saw them), and deaths until the last contact too, unless the "
    "export records deaths after the last contact: those come from a registry, so deaths then count until the latest "
    "date of the export. Deaths after the last contact that do not compete with the fractures, and fractures after "
    "it that are not counted, are reported by `refracture validate`, `train` and `site-report` with the line of "
    "`export.yaml` that changes them.")


class ExportMetadata(BaseModel):
    """``export.yaml`` as written (module docstring). Unknown fields are refused, so a
    misspelt field cannot silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str | None = Field(None, min_length=1, max_length=200, description="Site name shown in reports.")
    data_cut: date | None = Field(None, description="The date the export was drawn (YYYY-MM-DD): no date in the "
                                  "tables may be after it. Required when deaths are ascertained until the data cut.")
    deaths_ascertained_until: Literal["last_contact", "data_cut"] = Field(
        description="data_cut: every death until the data cut is recorded (linked from a death registry), so a "
                    "patient without a death date is alive at the data cut and a death after the last contact counts; "
                    "last_contact: deaths are known only while the patient is in contact (a later death is not counted).")
    fractures_ascertained_until: Literal["last_contact", "death_or_data_cut"] = Field(
        description="death_or_data_cut: any new fracture until death or the data cut is in events (a hospital that "
                    "would have treated it; needs deaths_ascertained_until: data_cut), so every death competes with "
                    "the fractures; last_contact: fractures are known only until the last contact (follow-up is "
                    "censored there, a later death does not compete, a later fracture is not counted).")

    @model_validator(mode="after")
    def _consistent(self) -> ExportMetadata:
        if self.fractures_ascertained_until == DEATH_OR_DATA_CUT and self.deaths_ascertained_until != DATA_CUT:
            raise ValueError("fractures_ascertained_until: death_or_data_cut needs deaths_ascertained_until: data_cut "
                             "(fractures can be followed to a death only when the death is known)")
        if self.deaths_ascertained_until == DATA_CUT and self.data_cut is None:
            raise ValueError("data_cut is required (YYYY-MM-DD) when deaths or fractures are ascertained until it")
        if self.data_cut is not None and self.data_cut > date.today():
            raise ValueError(f"data_cut {self.data_cut} is in the future")
        return self


@dataclass(frozen=True)
class Ascertainment:
    """What the labels follow: how far deaths and fractures were ascertained, the data cut
    (``None`` when nothing reaches it), and where this came from (``source``:
    ``export.yaml``, or ``default`` when the file is absent; ``inferred_data_cut`` when the
    default took the latest date of the export as the data cut)."""

    deaths_until: str = LAST_CONTACT
    fractures_until: str = LAST_CONTACT
    data_cut: date | None = None
    source: str = "default"
    site: str | None = None
    inferred_data_cut: bool = False

    def describe(self) -> str:
        """One line for a clinician or a data manager."""
        cut = "" if self.data_cut is None else f" {self.data_cut:%Y-%m-%d}" + (
            " (the latest date in the export)" if self.inferred_data_cut else "")
        deaths = "until the data cut" + cut if self.deaths_until == DATA_CUT else "until the last contact"
        fractures = ("until death or the data cut" + cut if self.fractures_until == DEATH_OR_DATA_CUT
                     else "until the last contact")
        origin = EXPORT_METADATA_FILE if self.source == EXPORT_METADATA_FILE else f"default, no {EXPORT_METADATA_FILE}"
        return f"deaths ascertained {deaths}; fractures ascertained {fractures} ({origin})"

    def tags(self, prefix: str = "") -> dict[str, str]:
        """MLflow tags (all text) recording the ascertainment the labels used."""
        return {f"{prefix}deaths_ascertained_until": self.deaths_until,
                f"{prefix}fractures_ascertained_until": self.fractures_until,
                f"{prefix}data_cut": "none" if self.data_cut is None else f"{self.data_cut:%Y-%m-%d}"
                + (" (inferred)" if self.inferred_data_cut else ""),
                f"{prefix}ascertainment_source": self.source}


def metadata_text(meta: ExportMetadata) -> str:
    """``export.yaml`` text for ``meta`` (what the simulator writes)."""
    lines = ["# Site metadata of this export: how far its follow-up reaches (docs/estimand.md)."]
    if meta.site:
        lines.append(f"site: {meta.site}")
    if meta.data_cut is not None:
        lines.append(f"data_cut: {meta.data_cut:%Y-%m-%d}")
    lines += [f"deaths_ascertained_until: {meta.deaths_ascertained_until}",
              f"fractures_ascertained_until: {meta.fractures_ascertained_until}", ""]
    return "\n".join(lines)


def parse_metadata(raw: object) -> Ascertainment:
    """Validate ``export.yaml`` as read (a mapping). Raises ``RawDataError`` naming every bad
    field (table ``export.yaml``, column the field)."""
    if not isinstance(raw, dict):
        raise RawDataError([Violation(EXPORT_METADATA_FILE, "-", "-",
                                      f"must be a mapping of fields (site, data_cut, deaths_ascertained_until, "
                                      f"fractures_ascertained_until), got {type(raw).__name__}")])
    try:
        meta = ExportMetadata.model_validate(raw)
    except ValidationError as exc:
        raise RawDataError([Violation(EXPORT_METADATA_FILE, "-", ".".join(str(p) for p in e["loc"]) or "-",
                                      _message(e), rule="export_metadata") for e in exc.errors()]) from None
    return from_metadata(meta)


def from_metadata(meta: ExportMetadata) -> Ascertainment:
    """The ascertainment an ``export.yaml`` states."""
    return Ascertainment(meta.deaths_ascertained_until, meta.fractures_ascertained_until, meta.data_cut,
                         EXPORT_METADATA_FILE, meta.site)


def _message(error: dict) -> str:
    """A pydantic error as a sentence for the data manager who wrote the file."""
    if error["type"] == "extra_forbidden":
        return f"unknown field (allowed: {', '.join(ExportMetadata.model_fields)})"
    if error["type"] == "missing":
        return "required: " + str(ExportMetadata.model_fields[error["loc"][0]].description)
    if error["type"] == "value_error":  # a rule between fields
        return str(error["msg"]).removeprefix("Value error, ")
    return f"{error['msg']} (got {error.get('input')!r})"


def _deaths_after_last_contact(patients: pd.DataFrame) -> pd.Series:
    return patients["death_date"].notna() & patients["last_followup_date"].notna() \
        & (patients["death_date"] > patients["last_followup_date"])


def latest_date(tables: dict[str, pd.DataFrame]) -> date | None:
    """The latest date any table of the export holds (a lower bound of its data cut)."""
    found = [tables[t][c].max() for t, cols in EXPORT_DATES.items() for c in cols if t in tables and len(tables[t])]
    found = [d for d in found if pd.notna(d)]
    return max(found).date() if found else None


def resolve(stated: Ascertainment | None, tables: dict[str, pd.DataFrame]) -> Ascertainment:
    """The ascertainment stated in ``export.yaml``, or the default (module docstring) for
    typed ``tables`` when the export has no such file."""
    if stated is not None:
        return stated
    if _deaths_after_last_contact(tables["patients"]).any():
        return Ascertainment(DATA_CUT, LAST_CONTACT, latest_date(tables), "default", inferred_data_cut=True)
    return Ascertainment()


def ascertainment_problems(asc: Ascertainment, tables: dict[str, pd.DataFrame],
                           limit: int = MAX_REPORTED_PER_CHECK) -> list[Violation]:
    """Dates after the stated data cut, by table, row key and column (typed tables)."""
    if asc.data_cut is None or asc.inferred_data_cut:
        return []
    cut = pd.Timestamp(asc.data_cut)
    out: list[Violation] = []
    for table, columns in EXPORT_DATES.items():
        df = tables[table]
        for column in columns:
            late = df[df[column].notna() & (df[column] > cut)]
            for _, r in late.head(limit).iterrows():
                out.append(Violation(table, "/".join(str(r[k]) for k in _KEYS[table]), column,
                                     f"{r[column]:%Y-%m-%d} is after the data cut {asc.data_cut:%Y-%m-%d} "
                                     f"stated in {EXPORT_METADATA_FILE}", rule="after_data_cut"))
            if len(late) > limit:
                out.append(Violation(table, "...", column, f"{len(late) - limit} more rows after the data cut",
                                     rule="after_data_cut"))
    return out


def _fractures_after_last_contact(tables: dict[str, pd.DataFrame]) -> int:
    ev = tables["events"].merge(tables["patients"][["patient_id", "last_followup_date"]], on="patient_id", how="inner")
    return int((ev["event_date"] > ev["last_followup_date"]).sum())


def followup_notes(asc: Ascertainment, tables: dict[str, pd.DataFrame]) -> list[str]:
    """What the reader must know about how the labels used the export's deaths and
    fractures: deaths after the last contact that do not compete with the fractures (their
    risks may then be overstated) or are not counted, fractures after the last contact not
    counted, and a data cut the default inferred."""
    after = int(_deaths_after_last_contact(tables["patients"]).sum())
    late_fractures = _fractures_after_last_contact(tables) if asc.fractures_until == LAST_CONTACT else 0
    notes = []
    if after and asc.deaths_until == DATA_CUT and asc.inferred_data_cut:
        notes.append(f"no {EXPORT_METADATA_FILE}: {after} deaths are recorded after the last contact, so deaths are "
                     f"taken as linked from a registry until {asc.data_cut:%Y-%m-%d} (the latest date in the export) "
                     "and count for the death target; state data_cut and deaths_ascertained_until in "
                     f"{EXPORT_METADATA_FILE} if this is wrong")
    if after and asc.deaths_until == LAST_CONTACT:
        notes.append(f"{after} deaths recorded after the last contact are not counted ({EXPORT_METADATA_FILE} says "
                     "deaths are ascertained until the last contact): follow-up ends at the last contact")
    if after and asc.fractures_until == LAST_CONTACT:
        notes.append(f"{after} deaths recorded after the last contact do not compete with the fractures (fractures "
                     "ascertained until the last contact): the fracture risks are overstated if these patients could "
                     "not have had a fracture unseen; if the hospital would have seen any new fracture until death or "
                     f"the data cut, write fractures_ascertained_until: death_or_data_cut in {EXPORT_METADATA_FILE}")
    if late_fractures:
        notes.append(f"{late_fractures} fractures recorded after the patient's last contact are not counted (fractures "
                     "ascertained until the last contact: other patients' fractures after it are unknown); if the "
                     "hospital would have seen any new fracture until death or the data cut, write "
                     f"fractures_ascertained_until: death_or_data_cut in {EXPORT_METADATA_FILE}")
    return notes


def checked(stated: Ascertainment | None, tables: dict[str, pd.DataFrame]) -> Ascertainment:
    """``resolve`` the ascertainment of validated ``tables`` and check its data cut against
    them; raises ``RawDataError`` naming every date after the stated data cut."""
    asc = resolve(stated, tables)
    problems = ascertainment_problems(asc, tables)
    if problems:
        raise RawDataError(problems)
    return asc
