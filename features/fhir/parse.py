"""FHIR R4 resources -> the service's records, with every problem named by FHIRPath.

Pure functions, no I/O: resources in (JSON objects), records and problems out. What each
field is read from, and the rule that picks one value among several, is the mapping's
(``features.fhir.mapping``); this module applies it. The records are then checked by the
contract's own checker (``features.records.inspect_records``), the one ``/predict`` runs, so
a FHIR input is refused exactly where the same values as JSON would be, and its errors are
named by the FHIR element the value came from.

See ``features.fhir`` for the public API (``parse_bundle``, ``parse_resources``,
``parse_prefetch``) and ``FhirRecords``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import pandas as pd
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from features.contract import FUTURE_SLACK_DAYS
from features.fhir import codes as c
from features.fhir.mapping import (DXA_DAYS, FIELD_MAP, GLUCOCORTICOID_DAYS, IMAGING_FIELDS, POSTOP_IMAGING_DAYS,
                                   PREOP_IMAGING_DAYS, UCUM_OF_UNIT, VERTEBRA_OFFSET, VITALS_DAYS)
from features.fhir.units import UnitError, quantity_value
from features.levels import LEVEL_INDEX, LEVELS
from features.records import RECORD_FIELDS, inspect_records, records_frame
from features.schema import IMAGING

#: Resource types the mapping reads; others in the input are ignored.
READ_TYPES = ("Patient", "Procedure", "Observation", "Condition", "MedicationStatement")
#: Bundle types a patient's resources may come in.
BUNDLE_TYPES = ("collection", "transaction", "searchset", "batch")
_OBS_USED = {"final", "amended", "corrected"}
_OBS_DISCARDED = {"cancelled", "entered-in-error"}
_NOT_PRESENT = {"refuted", "entered-in-error"}
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(T.*)?$")
#: Imaging codes the parser knows: every imaging column of the contract (follow-up ones are
#: recognised and not used).
_IMAGING_CODES = frozenset(n for n in IMAGING.column_names if n not in ("procedure_id", "timepoint", "exam_date"))
_RECORD_IMAGING = frozenset(f.flat_name for f in RECORD_FIELDS if f.section == "imaging")
#: Per imaging code: (kind, UCUM unit of the contract).
_IMAGING_KIND = {n: (IMAGING.column(n).kind, UCUM_OF_UNIT.get(IMAGING.column(n).unit, "")) for n in _IMAGING_CODES}
_TIMEPOINT_BY_CODE = {code.code: tp for tp, code in c.TIMEPOINT.items()}
_LEAKAGE_BY_CODE = {code.code: v for v, code in c.LEAKAGE_INTRADISCAL.items()}
_TECHNIQUE_BY_CODING = {(code.system, code.code): t for t, codes in c.TECHNIQUE.items() for code in codes}
_APPROACH_BY_CODING = {(code.system, code.code): a for a, codes in c.APPROACH.items() for code in codes}
_DXA_BY_CODE: dict[str, tuple[str, str]] = {}
for _site, (_bmd, _t) in c.DXA_BY_SITE.items():
    _DXA_BY_CODE[_bmd.code] = (_site, "bmd")
    _DXA_BY_CODE[_t.code] = (_site, "t")
_PROJECT_PATIENT_CODES = {c.DXA_UNSTATED[0].code: ("unstated", "bmd"), c.DXA_UNSTATED[1].code: ("unstated", "t")}
#: Every code the project CodeSystem defines (``features.fhir.codesystem`` builds it from the same lists).
PROJECT_CODES: frozenset[str] = frozenset(
    {m.codes[0].code for m in FIELD_MAP.values() if m.codes and m.codes[0].system == c.PROJECT_SYSTEM}
    | _IMAGING_CODES | {c.IMAGING_PANEL.code} | set(_TIMEPOINT_BY_CODE) | set(_LEAKAGE_BY_CODE)
    | {code.code for codes in (*c.TECHNIQUE.values(), *c.APPROACH.values()) for code in codes if code.system == c.PROJECT_SYSTEM}
    | set(_PROJECT_PATIENT_CODES)
    | {code.code for table in (c.OUTCOME, c.ASSESSMENT, c.RISK_BAND) for code in table.values()}
)


@dataclass(frozen=True)
class FhirProblem:
    """One problem in a FHIR input.

    ``expression``: FHIRPath of the offending element, from the resource (``Observation.
    valueQuantity``) or the Bundle (``Bundle.entry[3].resource.valueQuantity``).
    ``severity``: ``error`` (the record, or the input if ``record`` is None, is refused) or
    ``warning`` (a resource was not used; nothing refused). ``code``: the
    OperationOutcome issue type (``invalid``, ``code-invalid``, ``value``, ``duplicate``,
    ``required``, ``not-found``, ``business-rule``, ``structure``). ``record``: index of the
    refused record, if one. ``source``: where the resource was read (``Observation.ndjson:12``
    for Bulk files, else '').
    """

    expression: str
    message: str
    severity: str = "error"
    code: str = "invalid"
    record: int | None = None
    source: str = ""

    def __str__(self) -> str:
        where = f"{self.source} " if self.source else ""
        return f"{self.severity}: {where}{self.expression}: {self.message}"


class RecordSource:
    """Where one record came from: its patient and procedure, the element of every field
    (``elements``: record path -> FHIRPath, for the contract checker's errors), and the
    resources used (``basis``: ``Type/id`` references, for ``RiskAssessment.basis``)."""

    __slots__ = ("patient", "procedure", "basis", "source", "_elements")

    def __init__(self, patient: str, procedure: str, source: str = ""):
        self.patient, self.procedure, self.source = patient, procedure, source
        self.basis: list[str] = []
        self._elements: dict[str, Any] = {}  # path -> FHIRPath, or the _Measure it is built from

    @property
    def elements(self) -> dict[str, str]:
        return {k: v if isinstance(v, str) else v.expression for k, v in self._elements.items()}

    def element(self, path: str) -> str:
        """The FHIRPath of one record path (the procedure's, if the field has none)."""
        v = self._elements.get(path, self.procedure)
        return v if isinstance(v, str) else v.expression

    def __repr__(self) -> str:
        return f"RecordSource({self.patient!r}, {self.procedure!r}, source={self.source!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Sent between processes (the Bulk reader's workers) with the FHIRPaths as text.
        return {"patient": self.patient, "procedure": self.procedure, "basis": self.basis, "source": self.source,
                "_elements": self.elements}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class FhirRecords:
    """The parse of a FHIR input.

    ``records``: nested records (the shape ``/predict`` takes), one per completed vertebral
    augmentation Procedure, in input order. ``sources``: one per record. ``problems``:
    everything refused or not used, errors first by record. ``refused``: indexes of records
    with an error (their own, or one of the whole input). ``no_procedure``: the input holds
    a patient but no vertebral augmentation (CDS Hooks answers with no cards).
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    sources: list[RecordSource] = field(default_factory=list)
    problems: list[FhirProblem] = field(default_factory=list)
    no_procedure: bool = False
    #: Many patients (Bulk): an error no record owns (an unreadable line, a patient with no
    #: procedure) is reported but refuses nothing else.
    per_patient: bool = False

    @property
    def errors(self) -> list[FhirProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def input_refused(self) -> bool:
        """An error no single record owns (two patients, wrong resourceType, ...) in the
        input of one patient."""
        return not self.per_patient and any(p.record is None for p in self.errors)

    @property
    def refused(self) -> set[int]:
        if self.input_refused:
            return set(range(len(self.records)))
        return {p.record for p in self.errors if p.record is not None}

    def accepted(self) -> tuple[list[dict[str, Any]], list[RecordSource]]:
        """The records (and their sources) with no error, ready to score."""
        refused = self.refused
        keep = [i for i in range(len(self.records)) if i not in refused]
        return [self.records[i] for i in keep], [self.sources[i] for i in keep]

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.records)


# ---------------------------------------------------------------------------- public API


def parse_bundle(bundle: Any, *, now: dt.datetime | None = None, validate: bool = True) -> FhirRecords:
    """A FHIR Bundle (type collection or transaction) of one patient's resources -> records.

    ``now``: the request time (default: now, UTC); anything dated after it is refused.
    ``validate``: check every entry's resource with the FHIR R4 models (fhir.resources R4B)
    first, so malformed elements are named even where the mapping does not read them.
    """
    if not isinstance(bundle, dict):
        return _refused("Bundle", "expected a FHIR Bundle (a JSON object)", "structure")
    if bundle.get("resourceType") != "Bundle":
        return _refused("Bundle.resourceType", f"expected resourceType 'Bundle', got {bundle.get('resourceType')!r}")
    if bundle.get("type") not in ("collection", "transaction"):
        return _refused("Bundle.type", f"Bundle type {bundle.get('type')!r} is not accepted: send a 'collection' or "
                                       "'transaction' Bundle of one patient's resources", "value")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        return _refused("Bundle.entry", "Bundle.entry must be a list", "structure")
    items: list[tuple[Any, str, str]] = []
    problems: list[FhirProblem] = []
    for i, entry in enumerate(entries):
        base = f"Bundle.entry[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            problems.append(FhirProblem(f"{base}.resource", "entry without a resource", code="structure"))
            continue
        items.append((entry["resource"], f"{base}.resource", entry.get("fullUrl") or ""))
    out = parse_resources(items, now=now, validate=validate, one_patient=True)
    out.problems[:0] = problems
    return out


def parse_prefetch(prefetch: dict[str, Any], *, now: dt.datetime | None = None, validate: bool = True) -> FhirRecords:
    """CDS Hooks prefetch (key -> a Bundle, usually a searchset, or one resource, or None)
    -> records of the one patient it describes. Expressions start with the prefetch key:
    ``prefetch.conditions.entry[2].resource.code``."""
    items: list[tuple[Any, str, str]] = []
    for key, value in (prefetch or {}).items():
        if value is None:
            continue
        base = f"prefetch.{key}"
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            for i, entry in enumerate(value.get("entry") or []):
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                    items.append((entry["resource"], f"{base}.entry[{i}].resource", entry.get("fullUrl") or ""))
        else:
            items.append((value, base, ""))
    return parse_resources(items, now=now, validate=validate, one_patient=True)


def parse_resources(items: Iterable[tuple[Any, str, str] | tuple[Any, str] | Any], *, now: dt.datetime | None = None,
                    validate: bool = False, one_patient: bool = True, source_of: dict[int, str] | None = None,
                    check: bool = True) -> FhirRecords:
    """Resources -> records (the core the other entry points call).

    ``items``: resources, or (resource, FHIRPath base[, fullUrl]) tuples; the base prefixes
    every problem's expression (default: the resource type). ``one_patient``: the input is
    one patient's (a second Patient refuses the input); else resources are grouped by
    patient (the Bulk reader) and a patient's problem refuses only that patient's records.
    ``source_of``: position -> where the resource was read (``file:line``) for problems.
    ``check``: run the contract checker on the records.
    """
    with paused_gc():
        return _parse_resources(items, now or dt.datetime.now(dt.timezone.utc), validate, one_patient, source_of, check)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large input is read: parsed JSON makes
    hundreds of thousands of acyclic objects, and the collections they trigger took ~40 % of
    a Bulk read's CPU (measured, bench/README.md). Reference counting still frees memory."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def merge(parts: list[FhirRecords]) -> FhirRecords:
    """Parses of disjoint patients as one (record indexes renumbered)."""
    out = FhirRecords(per_patient=True)
    for part in parts:
        offset = len(out.records)
        out.records.extend(part.records)
        out.sources.extend(part.sources)
        out.no_procedure |= part.no_procedure
        out.problems.extend(p if p.record is None else FhirProblem(p.expression, p.message, p.severity, p.code,
                                                                   p.record + offset, p.source) for p in part.problems)
    return out


def _parse_resources(items: Iterable[Any], now: dt.datetime, validate: bool, one_patient: bool,
                     source_of: dict[int, str] | None, check: bool) -> FhirRecords:
    resources: list[_Res] = []
    problems: list[FhirProblem] = []
    for pos, item in enumerate(items):
        resource, base, full_url = _unpack(item)
        src = (source_of or {}).get(pos, "")
        if not isinstance(resource, dict):
            problems.append(FhirProblem(base or "resource", "expected a FHIR resource (a JSON object)", code="structure", source=src))
            continue
        rtype = resource.get("resourceType")
        base = base or (rtype if isinstance(rtype, str) else "resource")
        if not isinstance(rtype, str):
            problems.append(FhirProblem(f"{base}.resourceType", "resourceType missing", source=src))
            continue
        if validate:
            problems.extend(model_problems(resource, base, src))
        if rtype in READ_TYPES:
            resources.append(_Res(resource, base, full_url, src))
    if not one_patient:
        out = FhirRecords(problems=problems, per_patient=True)
        for group in _by_patient(resources, out.problems):
            _parse_patient(group, now, out, input_level=False)
    else:
        out = FhirRecords(problems=problems)
        _parse_patient(resources, now, out, input_level=True)
    if check:
        check_records(out)
    return out


def model_problems(resource: dict[str, Any], base: str, source: str = "") -> list[FhirProblem]:
    """Problems of one resource against its FHIR R4 model (fhir.resources R4B)."""
    rtype = resource.get("resourceType")
    try:
        model = get_fhir_model_class(rtype)
    except (ValueError, KeyError, TypeError):
        return [FhirProblem(f"{base}.resourceType", f"{rtype!r} is not a FHIR resource type", source=source)]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        out = []
        for err in exc.errors()[:20]:
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"] if p != "__root__")
            out.append(FhirProblem(f"{base}{path}", f"not valid FHIR R4: {err['msg']}", code="structure", source=source))
        return out
    return []


def check_records(out: FhirRecords) -> FhirRecords:
    """Run the contract's checker (``inspect_records``, as ``/predict`` does) on the parsed
    records and add its errors, named by the element each value came from."""
    if not out.records:
        return out
    inspected = inspect_records(records_frame(out.records))
    for err in inspected.errors:
        i = err["record"]
        src = out.sources[i]
        expression = src.element(err["field"])
        allowed = f" (allowed: {err['allowed']})" if err.get("allowed") else ""
        out.problems.append(FhirProblem(expression, f"{err['field']}: {err['error']}{allowed}", code="value", record=i,
                                        source=src.source))
    return out


def record_frame(out: FhirRecords) -> pd.DataFrame:
    """The accepted records as the flat frame batch scoring takes (``features.records``)."""
    records, _ = out.accepted()
    return records_frame(records)


# ---------------------------------------------------------------------------- internals


class _Res:
    """One resource of the input, with where it was read."""

    __slots__ = ("r", "base", "full_url", "source", "type", "ref")

    def __init__(self, r: dict[str, Any], base: str, full_url: str, source: str):
        self.r, self.base, self.full_url, self.source = r, base, full_url, source
        self.type: str = r["resourceType"]
        rid = r.get("id")
        self.ref: str = f"{self.type}/{rid}" if isinstance(rid, str) else full_url


def _unpack(item: Any) -> tuple[Any, str, str]:
    if isinstance(item, tuple):
        if len(item) == 3:
            return item
        return item[0], item[1], ""
    return item, "", ""


def _refused(expression: str, message: str, code: str = "invalid") -> FhirRecords:
    return FhirRecords(problems=[FhirProblem(expression, message, code=code)])


def _ref_keys(res: _Res) -> list[str]:
    keys = []
    rid = res.r.get("id")
    if isinstance(rid, str):
        keys.append(f"{res.type}/{rid}")
    if res.full_url:
        keys.append(res.full_url)
        if "/" in res.full_url and not res.full_url.startswith("urn:"):
            keys.append("/".join(res.full_url.rstrip("/").split("/")[-2:]))
    return keys


def _reference(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        ref = value["reference"]
        if not ref.startswith("urn:") and ref.count("/") > 1:  # absolute URL -> Type/id
            ref = "/".join(ref.rstrip("/").split("/")[-2:])
        return ref
    return None


def _by_patient(resources: list[_Res], problems: list[FhirProblem]) -> Iterator[list[_Res]]:
    """Group resources by the patient they belong to (Bulk: many patients in one input)."""
    patients: dict[str, list[_Res]] = {}
    alias: dict[str, str] = {}
    for res in resources:
        if res.type == "Patient":
            key = res.ref
            patients.setdefault(key, []).append(res)
            for k in _ref_keys(res):
                alias[k] = key
    orphans: list[_Res] = []
    for res in resources:
        if res.type == "Patient":
            continue
        subject = _reference(res.r.get("subject"))
        key = alias.get(subject or "")
        if key is None:
            problems.append(FhirProblem(f"{res.base}.subject", f"refers to patient {subject!r}, which is not in the input"
                                        if subject else "no subject (the patient it is about)", code="not-found",
                                        severity="warning", source=res.source))
            orphans.append(res)
            continue
        patients[key].append(res)
    yield from patients.values()


def _date_of(value: Any) -> tuple[dt.date, dt.datetime | None] | None:
    """A FHIR date/dateTime -> (calendar date as written, aware datetime if it has a time)."""
    if not isinstance(value, str):
        return None
    return _read_date(value)


@functools.lru_cache(maxsize=65536)
def _read_date(value: str) -> tuple[dt.date, dt.datetime | None] | None:
    m = _DATE.match(value)
    if not m or not m.group(2) or not m.group(3):
        return None
    try:
        day = dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None
    moment = None
    if m.group(4):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
    return day, moment


def _codings(concept: Any) -> list[tuple[str, str]]:
    if not isinstance(concept, dict):
        return []
    return [(cd.get("system"), cd.get("code")) for cd in concept.get("coding") or [] if isinstance(cd, dict)]


def _project_code(concept: Any) -> str | None:
    for system, code in _codings(concept):
        if system == c.PROJECT_SYSTEM:
            return code
    return None


class _Measure:
    """One value of one field, with when (calendar day, moment if timed) and where it was sent
    (``base`` of the resource, component index or -1, value element; the FHIRPath is built
    only when a value is chosen or refused)."""

    __slots__ = ("field", "value", "day", "moment", "base", "component", "element", "ref", "timepoint")

    def __init__(self, field: str, value: Any, day: dt.date, moment: dt.datetime | None, base: str, component: int,
                 element: str, ref: str, timepoint: str | None = None):
        self.field, self.value, self.day, self.moment = field, value, day, moment
        self.base, self.component, self.element, self.ref, self.timepoint = base, component, element, ref, timepoint

    @property
    def expression(self) -> str:
        part = f".component[{self.component}]" if self.component >= 0 else ""
        return f"{self.base}{part}.{self.element}"

    @property
    def key(self) -> tuple:
        """Order in time: the moment if timed, else the start of the day (UTC)."""
        return (self.moment or dt.datetime.combine(self.day, dt.time(), tzinfo=dt.timezone.utc), self.day)


class _Ctx:
    """What one patient's parse collects."""

    def __init__(self, out: FhirRecords, now: dt.datetime, input_level: bool):
        self.out = out
        self.now = now
        self.today_limit = now.date() + dt.timedelta(days=FUTURE_SLACK_DAYS)
        self.input_level = input_level
        self.patient_errors: list[FhirProblem] = []

    def error(self, res: _Res | None, path: str, message: str, code: str = "invalid") -> None:
        base = res.base if res else "Bundle"
        self.patient_errors.append(FhirProblem(f"{base}{path}", message, code=code, source=res.source if res else ""))

    def warn(self, res: _Res, path: str, message: str, code: str = "informational") -> None:
        self.out.problems.append(FhirProblem(f"{res.base}{path}", message, severity="warning", code=code, source=res.source))

    def future(self, res: _Res, path: str, day: dt.date) -> bool:
        if day > self.today_limit:
            self.error(res, path, f"dated {day.isoformat()}, after the request time ({self.now.date().isoformat()})", "value")
            return True
        return False


def _parse_patient(resources: list[_Res], now: dt.datetime, out: FhirRecords, input_level: bool) -> None:
    ctx = _Ctx(out, now, input_level)
    patients = [r for r in resources if r.type == "Patient"]
    if not patients:
        ctx.error(None, "", "no Patient resource: the records need the patient's sex and birth date", "required")
        _finish(ctx, [], [])
        return
    if len(patients) > 1:
        for extra in patients[1:]:
            ctx.error(extra, "", f"a second Patient ({extra.ref}): the input must hold one patient's resources "
                                 f"(the first is {patients[0].ref})", "business-rule")
        _finish(ctx, [], [])
        return
    patient = patients[0]
    keys = set(_ref_keys(patient))
    by_ref: dict[str, _Res] = {}
    for res in resources:
        for k in _ref_keys(res):
            by_ref[k] = res
    mine: list[_Res] = []
    for res in resources:
        if res is patient:
            continue
        subject = _reference(res.r.get("subject"))
        if subject is not None and subject not in keys:
            ctx.error(res, ".subject", f"refers to patient {subject!r}, not to {patient.ref} whose resources these are",
                      "business-rule")
            continue
        mine.append(res)
    procedures = [r for r in mine if r.type == "Procedure" and _technique(r) is not None]
    completed: list[_Res] = []
    for proc in procedures:
        status = proc.r.get("status")
        if status == "completed":
            completed.append(proc)
        elif status not in ("entered-in-error", "not-done"):
            ctx.warn(proc, ".status", f"a vertebral augmentation with status {status!r}: only completed ones are scored")
    if not completed:
        out.no_procedure = True
        ctx.error(patient, "", "no completed vertebral augmentation Procedure (PVP or PKP) for this patient: nothing "
                               "to predict from", "not-found")
        _finish(ctx, [], [])
        return
    patient_fields = _patient_values(ctx, patient)
    surgery = {id(p): _surgery(ctx, p) for p in completed}
    records, sources = [], []
    for proc in completed:
        day = surgery[id(proc)]
        rec, src = _procedure_record(ctx, patient, patient_fields, proc, day, completed, surgery, mine, by_ref)
        records.append(rec)
        sources.append(src)
    _finish(ctx, records, sources)


def _finish(ctx: _Ctx, records: list[dict], sources: list[RecordSource]) -> None:
    """Add this patient's records; its errors refuse them (or the input, for one patient)."""
    out = ctx.out
    start = len(out.records)
    out.records.extend(records)
    out.sources.extend(sources)
    for p in ctx.patient_errors:
        if ctx.input_level or not records:
            out.problems.append(p if ctx.input_level else FhirProblem(p.expression, p.message, p.severity, p.code, None, p.source))
        else:
            for i in range(start, start + len(records)):
                out.problems.append(FhirProblem(p.expression, p.message, p.severity, p.code, i, p.source))
    if not ctx.input_level and not records and ctx.patient_errors:
        pass  # a patient with no record: its problems are reported (record None) for the Bulk report


# ---------------------------------------------------------------------------- patient-level values


def _patient_values(ctx: _Ctx, patient: _Res) -> dict[str, tuple[Any, str]]:
    """sex and birth date: (value, expression)."""
    values: dict[str, tuple[Any, str]] = {}
    gender = patient.r.get("gender")
    sex = {"female": "F", "male": "M"}.get(gender)
    if sex is None:
        ctx.error(patient, ".gender", f"gender {gender!r}: the contract records sex as female or male", "value")
    values["sex"] = (sex, f"{patient.base}.gender")
    values["birthDate"] = (patient.r.get("birthDate"), f"{patient.base}.birthDate")
    return values


def _age(ctx: _Ctx, patient: _Res, surgery: dt.date | None) -> float | None:
    birth = patient.r.get("birthDate")
    if surgery is None:
        return None
    if not isinstance(birth, str):
        ctx.error(patient, ".birthDate", "birthDate missing: age at surgery is required", "required")
        return None
    m = _DATE.match(birth)
    if not m:
        ctx.error(patient, ".birthDate", f"cannot read birthDate {birth!r}", "value")
        return None
    year, month, day = int(m.group(1)), m.group(2), m.group(3)
    try:
        born = dt.date(year, int(month) if month else 7, int(day) if day else (15 if month else 1))
    except ValueError:
        ctx.error(patient, ".birthDate", f"cannot read birthDate {birth!r}", "value")
        return None
    if not day:
        ctx.warn(patient, ".birthDate", f"birthDate {birth!r} has no day: age computed from {born.isoformat()}")
    return round((surgery - born).days / 365.25, 2)


def _surgery(ctx: _Ctx, proc: _Res) -> dt.date | None:
    performed = proc.r.get("performedDateTime")
    path = ".performedDateTime"
    if performed is None and isinstance(proc.r.get("performedPeriod"), dict):
        performed, path = proc.r["performedPeriod"].get("start"), ".performedPeriod.start"
    read = _date_of(performed)
    if read is None:
        ctx.error(proc, path if performed is not None else ".performed[x]",
                  "the surgery date is missing or not a full date (YYYY-MM-DD)" if performed is None else
                  f"cannot read {performed!r} as a date", "required")
        return None
    if ctx.future(proc, path, read[0]):
        return None
    return read[0]


def _surgery_moment(proc: _Res) -> dt.datetime | None:
    performed = proc.r.get("performedDateTime")
    if performed is None and isinstance(proc.r.get("performedPeriod"), dict):
        performed = proc.r["performedPeriod"].get("start")
    read = _date_of(performed)
    return read[1] if read else None


def _technique(proc: _Res) -> str | None:
    for coding in _codings(proc.r.get("code")):
        t = _TECHNIQUE_BY_CODING.get(coding)
        if t:
            return t
    return None


def _procedure_record(ctx: _Ctx, patient: _Res, pvals: dict[str, tuple[Any, str]], proc: _Res, surgery: dt.date | None,
                      completed: list[_Res], surgery_of: dict[int, dt.date | None], mine: list[_Res],
                      by_ref: dict[str, _Res]) -> tuple[dict[str, Any], RecordSource]:
    errors_before = len(ctx.patient_errors)
    src = RecordSource(patient=patient.ref, procedure=proc.ref, source=proc.source)
    src.basis = [patient.ref, proc.ref]
    el = src._elements
    rec: dict[str, Any] = {"patient": {}, "procedure": {}, "imaging": {"preop": {}, "postop": {}}}
    P, R = rec["patient"], rec["procedure"]
    # ---- procedure
    pid = None
    for ident in proc.r.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == c.PROCEDURE_ID_SYSTEM:
            pid = ident.get("value")
    R["procedure_id"] = pid if pid is not None else proc.r.get("id")
    el["procedure.procedure_id"] = f"{proc.base}.identifier"
    R["surgery_date"] = surgery.isoformat() if surgery else None
    el["procedure.surgery_date"] = f"{proc.base}.performed"
    R["technique"] = _technique(proc)
    el["procedure.technique"] = f"{proc.base}.code"
    R["level"] = _level(ctx, proc)
    el["procedure.level"] = f"{proc.base}.bodySite"
    R["age_years"] = _age(ctx, patient, surgery)
    el["procedure.age_years"] = f"{patient.base}.birthDate"
    same_day = [p for p in completed if surgery is not None and surgery_of[id(p)] == surgery]
    R["n_levels_treated"] = len(same_day) if surgery else None
    el["procedure.n_levels_treated"] = f"{proc.base}.performed"
    treated_levels = {lv for lv in (_level(None, p) for p in same_day) if lv}
    _extensions(ctx, proc, R, el)
    R["brace_prescribed"] = int(any((c.PROJECT_SYSTEM, c.BRACE.code) in _codings(f) for f in proc.r.get("followUp") or []))
    el["procedure.brace_prescribed"] = f"{proc.base}.followUp"
    index_refs = {_reference(r) for r in proc.r.get("reasonReference") or []} - {None}
    R["pain_onset_date"] = None
    el["procedure.pain_onset_date"] = f"{proc.base}.reasonReference"
    for ref in index_refs:
        cond = by_ref.get(ref)
        if cond is not None and cond.type == "Condition":
            onset = _date_of(cond.r.get("onsetDateTime"))
            if onset:
                R["pain_onset_date"] = onset[0].isoformat()
                el["procedure.pain_onset_date"] = f"{cond.base}.onsetDateTime"
                src.basis.append(cond.ref)
    # ---- patient
    P["sex"], el["patient.sex"] = pvals["sex"]
    if surgery is not None:
        _conditions(ctx, P, el, src, mine, surgery, index_refs, treated_levels)
        _medications(ctx, P, el, src, mine, surgery)
        _observations(ctx, rec, el, src, mine, proc, surgery, completed, surgery_of)
    if len(ctx.patient_errors) > errors_before and not ctx.input_level:
        pass
    return rec, src


def _level(ctx: _Ctx | None, proc: _Res) -> str | None:
    found: set[str] = set()
    for site in proc.r.get("bodySite") or []:
        for system, code in _codings(site):
            if system == c.SNOMED:
                level = c.VERTEBRA_BY_SCTID.get(code)
                if level:
                    found.add(level)
                elif ctx is not None:
                    ctx.error(proc, ".bodySite", f"SNOMED CT {code!r} is not a vertebra T1-L5 (unknown code for the "
                                                 "treated level)", "code-invalid")
    if len(found) > 1 and ctx is not None:
        ctx.error(proc, ".bodySite", f"several vertebrae ({', '.join(sorted(found, key=LEVEL_INDEX.get))}): send one "
                                     "Procedure per treated level", "business-rule")
        return None
    if not found:
        if ctx is not None:
            ctx.error(proc, ".bodySite", "no vertebra T1-L5 (SNOMED CT body structure) as body site: the treated level "
                                         "is required", "required")
        return None
    return found.pop()


def _extensions(ctx: _Ctx, proc: _Res, R: dict[str, Any], el: dict[str, str]) -> None:
    R["approach"] = None
    R["cement_volume_ml"] = None
    el["procedure.approach"] = f"{proc.base}.extension('{c.EXT_APPROACH}')"
    el["procedure.cement_volume_ml"] = f"{proc.base}.extension('{c.EXT_CEMENT_VOLUME}')"
    for i, ext in enumerate(proc.r.get("extension") or []):
        if not isinstance(ext, dict):
            continue
        path = f".extension[{i}]"
        if ext.get("url") == c.EXT_APPROACH:
            codings = _codings(ext.get("valueCodeableConcept"))
            values = {_APPROACH_BY_CODING[cd] for cd in codings if cd in _APPROACH_BY_CODING}
            if len(values) != 1:
                ctx.error(proc, f"{path}.valueCodeableConcept", f"approach codes {codings} are not one of the known "
                                                                "approach codes", "code-invalid")
            else:
                R["approach"] = values.pop()
            el["procedure.approach"] = f"{proc.base}{path}.valueCodeableConcept"
        elif ext.get("url") == c.EXT_CEMENT_VOLUME:
            try:
                R["cement_volume_ml"] = _round(quantity_value(ext.get("valueQuantity"), "mL"))
            except UnitError as exc:
                ctx.error(proc, f"{path}.valueQuantity", f"cement volume: {exc}", "value")
            el["procedure.cement_volume_ml"] = f"{proc.base}{path}.valueQuantity"


def _round(value: float) -> float:
    """Converted values to 9 significant digits: 157.48000000000002 -> 157.48, so a unit
    conversion does not leave binary noise the contract's range checks or the round trip see."""
    return float(f"{value:.9g}")


# ---------------------------------------------------------------------------- conditions


def _icd(code: str | None, prefixes: tuple[str, ...]) -> bool:
    return isinstance(code, str) and any(code.replace(" ", "").upper().startswith(p) for p in prefixes)


def _conditions(ctx: _Ctx, P: dict, el: dict, src: RecordSource, mine: list[_Res], surgery: dt.date,
                index_refs: set[str], treated_levels: set[str]) -> None:
    dm_codes = {cd.code for cd in c.CONDITIONS["type2_diabetes"]["codes"]}  # type: ignore[attr-defined]
    ckd_codes = {cd.code for cd in c.CONDITIONS["chronic_kidney_disease"]["codes"]}  # type: ignore[attr-defined]
    fx_codes = {cd.code for cd in c.CONDITIONS["vertebral_fracture"]["codes"]}  # type: ignore[attr-defined]
    P["type2_diabetes"] = 0
    P["chronic_kidney_disease"] = 0
    el["patient.type2_diabetes"] = el["patient.chronic_kidney_disease"] = "Condition.code"
    el["patient.prior_vertebral_fractures_n"] = "Condition.code"
    fracture_sites: set[str] = set()
    undated_site = 0
    for cond in (r for r in mine if r.type == "Condition"):
        verification = {code for _, code in _codings(cond.r.get("verificationStatus"))}
        if verification & _NOT_PRESENT:
            continue
        codings = _codings(cond.r.get("code"))
        sct = {code for system, code in codings if system == c.SNOMED}
        icd = [code for system, code in codings if system == c.ICD10CM]
        is_dm = bool(sct & dm_codes) or any(_icd(x, c.CONDITIONS["type2_diabetes"]["icd10cm_prefixes"]) for x in icd)  # type: ignore[arg-type]
        is_ckd = bool(sct & ckd_codes) or any(_icd(x, c.CONDITIONS["chronic_kidney_disease"]["icd10cm_prefixes"]) for x in icd)  # type: ignore[arg-type]
        fx_icd = any(_icd(x, c.VERTEBRAL_ICD10CM) for x in icd)
        is_fx = bool(sct & fx_codes) or fx_icd
        if not (is_dm or is_ckd or is_fx):
            continue
        when = _date_of(cond.r.get("onsetDateTime")) or _date_of(cond.r.get("recordedDate"))
        if when is not None and ctx.future(cond, ".onsetDateTime", when[0]):
            continue
        before = when is None or when[0] <= surgery
        if is_dm and before:
            P["type2_diabetes"] = 1
            el["patient.type2_diabetes"] = f"{cond.base}.code"
            src.basis.append(cond.ref)
        if is_ckd and before:
            P["chronic_kidney_disease"] = 1
            el["patient.chronic_kidney_disease"] = f"{cond.base}.code"
            src.basis.append(cond.ref)
        if is_fx:
            if cond.ref in index_refs or (when is not None and when[0] >= surgery):
                continue
            levels = set()
            for site in cond.r.get("bodySite") or []:
                for system, code in _codings(site):
                    if system == c.SNOMED and code in c.VERTEBRA_BY_SCTID:
                        levels.add(c.VERTEBRA_BY_SCTID[code])
            if not levels and not fx_icd:
                continue  # an osteoporotic fracture elsewhere (hip, wrist): not vertebral
            if levels & treated_levels:
                continue  # a fracture treated in this session (the index fracture of one of its levels)
            if levels:
                fracture_sites |= levels
            else:
                undated_site += 1
            src.basis.append(cond.ref)
    P["prior_vertebral_fractures_n"] = len(fracture_sites) + undated_site


# ---------------------------------------------------------------------------- medications


def _atc(concept: Any) -> list[str]:
    return [code for system, code in _codings(concept) if system == c.ATC and isinstance(code, str)]


def _therapy_class(atc: list[str]) -> str | None:
    for code in atc:
        for prefix, value in c.THERAPY_BY_ATC:
            if code.upper().startswith(prefix):
                return value
    return None


def _medications(ctx: _Ctx, P: dict, el: dict, src: RecordSource, mine: list[_Res], surgery: dt.date) -> None:
    P["glucocorticoids_long_term"] = 0
    P["anti_osteoporosis_therapy"] = "none"
    el["patient.glucocorticoids_long_term"] = "MedicationStatement.medicationCodeableConcept"
    el["patient.anti_osteoporosis_therapy"] = "MedicationStatement.medicationCodeableConcept"
    active: list[tuple[str, _Res]] = []
    stopped_denosumab: list[tuple[dt.date | None, _Res]] = []
    bisphosphonate_starts: list[dt.date | None] = []
    for med in (r for r in mine if r.type == "MedicationStatement"):
        status = med.r.get("status")
        if status in ("entered-in-error", "not-taken", "unknown"):
            continue
        concept = med.r.get("medicationCodeableConcept")
        atc = _atc(concept)
        if not atc:
            if concept is not None or med.r.get("medicationReference") is not None:
                ctx.warn(med, ".medication", "no ATC coding: cannot tell whether it is an anti-osteoporosis drug or a "
                                             "glucocorticoid, so it was not used (add an ATC coding)", "code-unknown")
            continue
        period = med.r.get("effectivePeriod") if isinstance(med.r.get("effectivePeriod"), dict) else {}
        start = _date_of(period.get("start")) if period else _date_of(med.r.get("effectiveDateTime"))
        end = _date_of(period.get("end")) if period else None
        start_day, end_day = (start[0] if start else None), (end[0] if end else None)
        if start_day and ctx.future(med, ".effectivePeriod.start", start_day):
            continue
        if any(code.upper().startswith(c.GLUCOCORTICOID_ATC_PREFIX) for code in atc) and status in ("active", "completed"):
            if start_day is None:
                ctx.error(med, ".effectivePeriod.start", "a systemic glucocorticoid without a start date: cannot tell "
                                                        f"whether it was taken for >= {GLUCOCORTICOID_DAYS} days", "required")
                continue
            last = min(end_day or surgery, surgery)
            if (last - start_day).days >= GLUCOCORTICOID_DAYS and start_day <= surgery:
                P["glucocorticoids_long_term"] = 1
                el["patient.glucocorticoids_long_term"] = f"{med.base}.medicationCodeableConcept"
                src.basis.append(med.ref)
            continue
        klass = _therapy_class(atc)
        if klass is None:
            continue
        started = start_day is None or start_day <= surgery
        ended = end_day is not None and end_day < surgery
        if klass == "bisphosphonate":
            bisphosphonate_starts.append(start_day)
        if status in ("active", "intended") and started and not ended or (
                status == "completed" and start_day is not None and started and end_day is not None and not ended):
            active.append((klass, med))
        elif klass == "denosumab" and (status in ("stopped", "completed") or ended):
            stopped_denosumab.append((end_day, med))
    if active:
        klass, med = min(active, key=lambda a: c.THERAPY_PRIORITY.index(a[0]))
        P["anti_osteoporosis_therapy"] = klass
        el["patient.anti_osteoporosis_therapy"] = f"{med.base}.medicationCodeableConcept"
        src.basis.append(med.ref)
    elif stopped_denosumab:
        end_day, med = stopped_denosumab[0]
        followed = any(s is not None and end_day is not None and end_day <= s <= surgery for s in bisphosphonate_starts)
        if not followed:
            P["anti_osteoporosis_therapy"] = "denosumab_discontinued"
            el["patient.anti_osteoporosis_therapy"] = f"{med.base}.status"
            src.basis.append(med.ref)


# ---------------------------------------------------------------------------- observations


def _observations(ctx: _Ctx, rec: dict, el: dict, src: RecordSource, mine: list[_Res], proc: _Res,
                  surgery: dt.date, completed: list[_Res], surgery_of: dict[int, dt.date | None]) -> None:
    P = rec["patient"]
    vitals: dict[str, list[_Measure]] = defaultdict(list)
    dxa: list[tuple[str, str, _Measure]] = []
    imaging: dict[str, list[_Measure]] = defaultdict(list)
    for obs in (r for r in mine if r.type == "Observation"):
        status = obs.r.get("status")
        if status in _OBS_DISCARDED:
            continue
        codings = _codings(obs.r.get("code"))
        project_code = next((code for system, code in codings if system == c.PROJECT_SYSTEM), None)
        loinc = {code for system, code in codings if system == c.LOINC}
        kind = None
        if project_code is not None:
            if project_code not in PROJECT_CODES:
                ctx.error(obs, ".code", f"unknown code {project_code!r} in {c.PROJECT_SYSTEM}", "code-invalid")
                continue
            kind = "imaging" if project_code in _IMAGING_CODES or project_code == c.IMAGING_PANEL.code else (
                "dxa" if project_code in _PROJECT_PATIENT_CODES else None)
            if kind is None:
                ctx.error(obs, ".code", f"{project_code!r} is not an Observation code of the mapping", "code-invalid")
                continue
        elif c.BODY_HEIGHT.code in loinc or c.BODY_WEIGHT.code in loinc or loinc & set(_DXA_BY_CODE):
            kind = "vital" if (c.BODY_HEIGHT.code in loinc or c.BODY_WEIGHT.code in loinc) else "dxa"
        else:
            continue  # not an observation the mapping reads
        if status not in _OBS_USED:
            ctx.warn(obs, ".status", f"status {status!r}: only final, amended or corrected results are used")
            continue
        when = _date_of(obs.r.get("effectiveDateTime"))
        path_eff = ".effectiveDateTime"
        if when is None and isinstance(obs.r.get("effectivePeriod"), dict):
            when, path_eff = _date_of(obs.r["effectivePeriod"].get("start")), ".effectivePeriod.start"
        if when is None:
            ctx.error(obs, ".effective[x]", "no effective date (YYYY-MM-DD): cannot tell when it was measured", "required")
            continue
        if ctx.future(obs, path_eff, when[0]):
            continue
        if kind == "vital":
            field_name, unit = ("height_cm", "cm") if c.BODY_HEIGHT.code in loinc else ("weight_kg", "kg")
            value = _quantity(ctx, obs, ".valueQuantity", obs.r.get("valueQuantity"), unit, field_name)
            if value is not None:
                vitals[field_name].append(_Measure(field_name, value, when[0], when[1], obs.base, -1, "valueQuantity", obs.ref))
        elif kind == "dxa":
            site, which = _PROJECT_PATIENT_CODES.get(project_code) if project_code else next(
                _DXA_BY_CODE[code] for code in loinc if code in _DXA_BY_CODE)
            field_name, unit = ("dxa_bmd_g_cm2", "g/cm2") if which == "bmd" else ("dxa_t_score", "{T-score}")
            value = _quantity(ctx, obs, ".valueQuantity", obs.r.get("valueQuantity"), unit, field_name)
            if value is not None:
                dxa.append((site, which, _Measure(field_name, value, when[0], when[1], obs.base, -1, "valueQuantity", obs.ref)))
        else:
            if not _belongs(ctx, obs, project_code, proc, completed):
                continue
            stated = None
            for i, ext in enumerate(obs.r.get("extension") or []):
                if isinstance(ext, dict) and ext.get("url") == c.EXT_TIMEPOINT:
                    stated = _TIMEPOINT_BY_CODE.get(_project_code(ext.get("valueCodeableConcept")) or "")
                    if stated is None:
                        ctx.error(obs, f".extension[{i}]", "unknown imaging time point code", "code-invalid")
            panel = project_code == c.IMAGING_PANEL.code
            items = obs.r.get("component") or [] if panel else [obs.r]
            day, moment, base, ref = when[0], when[1], obs.base, obs.ref
            for j, item in enumerate(items):
                j = j if panel else -1
                code = None
                concept = item.get("code") if type(item) is dict else None
                if type(concept) is dict:
                    for coding in concept.get("coding") or ():
                        if type(coding) is dict and coding.get("system") == c.PROJECT_SYSTEM:
                            code = coding.get("code")
                            break
                if code not in _IMAGING_CODES:
                    path = f".component[{j}]" if panel else ""
                    ctx.error(obs, f"{path}.code", f"unknown imaging measure {code!r}: not a field of the contract "
                                                   f"({c.PROJECT_SYSTEM})", "code-invalid")
                    continue
                kind, unit = _IMAGING_KIND[code]
                quantity = item.get("valueQuantity") if kind == "float" else None
                # The common case, a Quantity in the contract's own unit, read inline (this loop
                # runs for every imaging value of a Bulk export).
                if (type(quantity) is dict and quantity.get("code") == unit and quantity.get("system") == c.UCUM
                        and type(quantity.get("value")) in (int, float) and quantity.get("comparator") is None):
                    value, element = quantity["value"], "valueQuantity"
                else:
                    value, element = _imaging_value(ctx, obs, f".component[{j}]" if panel else "", item, code)
                if value is not None:
                    imaging[code].append(_Measure(code, value, day, moment, base, j, element, ref, stated))
    for field_name, measures in vitals.items():
        chosen = _pick_before(ctx, measures, surgery, VITALS_DAYS)
        P[field_name] = chosen.value if chosen else None
        if chosen:
            el[f"patient.{field_name}"] = chosen
            src.basis.append(chosen.ref)
    P.setdefault("height_cm", None)
    P.setdefault("weight_kg", None)
    _dxa(ctx, P, el, src, dxa, surgery)
    _imaging(ctx, rec, el, src, imaging, proc, surgery)


def _quantity(ctx: _Ctx, obs: _Res, path: str, quantity: Any, unit: str, field_name: str) -> float | None:
    if quantity is None:
        if obs.r.get("dataAbsentReason") is not None:
            return None
        ctx.error(obs, path, f"{field_name}: no valueQuantity", "required")
        return None
    try:
        value = quantity_value(quantity, unit)
    except UnitError as exc:
        ctx.error(obs, path, f"{field_name}: {exc}", "value")
        return None
    return value if quantity.get("code") == unit else _round(value)


def _imaging_value(ctx: _Ctx, obs: _Res, path: str, item: dict, code: str) -> tuple[Any, str]:
    kind, unit = _IMAGING_KIND[code]
    if kind == "binary":
        value = item.get("valueBoolean")
        if not isinstance(value, bool):
            if item.get("dataAbsentReason") is None:
                ctx.error(obs, f"{path}.valueBoolean", f"{code}: expected valueBoolean (true or false)", "value")
            return None, "valueBoolean"
        return int(value), "valueBoolean"
    if kind == "category":
        concept = item.get("valueCodeableConcept")
        chosen = _project_code(concept)
        if chosen not in _LEAKAGE_BY_CODE:
            if concept is not None or item.get("dataAbsentReason") is None:
                ctx.error(obs, f"{path}.valueCodeableConcept", f"{code}: unknown code {chosen!r} (expected one of "
                                                               f"{', '.join(sorted(_LEAKAGE_BY_CODE))})", "code-invalid")
            return None, "valueCodeableConcept"
        return _LEAKAGE_BY_CODE[chosen], "valueCodeableConcept"
    value = _quantity(ctx, obs, f"{path}.valueQuantity", item.get("valueQuantity"), unit, code)
    return value, "valueQuantity"


def _belongs(ctx: _Ctx, obs: _Res, code: str | None, proc: _Res, completed: list[_Res]) -> bool:
    """Whether an imaging Observation is about ``proc`` (``RULE_LINK``)."""
    part_of = [_reference(p) for p in obs.r.get("partOf") or []]
    part_of = [p for p in part_of if p]
    if part_of:
        return any(p in _ref_keys(proc) for p in part_of)
    sites = {c.VERTEBRA_BY_SCTID[cd] for s in obs.r.get("bodySite") and [obs.r["bodySite"]] or []
             for system, cd in _codings(s) if system == c.SNOMED and cd in c.VERTEBRA_BY_SCTID}
    if sites and code in VERTEBRA_OFFSET and code != c.IMAGING_PANEL.code:
        offset = VERTEBRA_OFFSET[code]
        matches = [p for p in completed if (lv := _level(None, p)) and 0 <= LEVEL_INDEX[lv] - 1 + offset < len(LEVELS)
                   and LEVELS[LEVEL_INDEX[lv] - 1 + offset] in sites]
        if not matches:
            if proc is completed[0]:
                ctx.error(obs, ".bodySite", f"{code}: body site {sorted(sites)} is not the vertebra this field names "
                                            "for any treated level", "business-rule")
            return False
        return proc in matches
    if sites and code == c.IMAGING_PANEL.code:
        return _level(None, proc) in sites
    if len(completed) == 1:
        return True
    if proc is completed[0]:
        ctx.error(obs, ".partOf", "the patient has several augmentation Procedures: say which one this imaging "
                                  "belongs to (partOf, or bodySite)", "business-rule")
    return False


def _conflict(ctx: _Ctx, chosen: list[_Measure]) -> _Measure | None:
    values = {m.value for m in chosen}
    if len(values) > 1:
        first = chosen[0]
        ctx.patient_errors.append(FhirProblem(
            first.expression, f"{first.field}: conflicting values {sorted(values, key=str)} at the same time "
                              f"({first.moment.isoformat() if first.moment else first.day.isoformat()}); "
                              f"also sent at {', '.join(m.expression for m in chosen[1:])}", code="duplicate"))
        return None
    return chosen[0]


def _extreme(ctx: _Ctx, measures: list[_Measure], latest: bool) -> _Measure | None:
    """The latest (or earliest) of ``measures``; several at that time must agree."""
    if len(measures) == 1:
        return measures[0]
    keys = [m.key for m in measures]
    best = max(keys) if latest else min(keys)
    return _conflict(ctx, [m for m, k in zip(measures, keys) if k == best])


def _pick_before(ctx: _Ctx, measures: list[_Measure], surgery: dt.date, window: int) -> _Measure | None:
    eligible = [m for m in measures if m.day <= surgery and (surgery - m.day).days <= window]
    return _extreme(ctx, eligible, latest=True) if eligible else None


def _dxa(ctx: _Ctx, P: dict, el: dict, src: RecordSource, dxa: list[tuple[str, str, _Measure]], surgery: dt.date) -> None:
    P["dxa_bmd_g_cm2"] = None
    P["dxa_t_score"] = None
    eligible = [(s, w, m) for s, w, m in dxa if m.day <= surgery and (surgery - m.day).days <= DXA_DAYS]
    if not eligible:
        return
    exam_day = max(m.day for _, _, m in eligible)
    exam = [(s, w, m) for s, w, m in eligible if m.day == exam_day]
    by_site: dict[str, dict[str, _Measure]] = defaultdict(dict)
    for site in {s for s, _, _ in exam}:
        for which in ("bmd", "t"):
            ms = [m for s, w, m in exam if s == site and w == which]
            if ms:
                chosen = _extreme(ctx, ms, latest=True)
                if chosen is not None:
                    by_site[site][which] = chosen
    with_bmd = [s for s in by_site if "bmd" in by_site[s]]
    pool, which = (with_bmd, "bmd") if with_bmd else ([s for s in by_site if "t" in by_site[s]], "t")
    if not pool:
        return
    site = min(pool, key=lambda s: (by_site[s][which].value, s))
    for w, name in (("bmd", "dxa_bmd_g_cm2"), ("t", "dxa_t_score")):
        m = by_site[site].get(w)
        if m is not None:
            P[name] = m.value
            el[f"patient.{name}"] = m
            src.basis.append(m.ref)


def _imaging(ctx: _Ctx, rec: dict, el: dict, src: RecordSource, imaging: dict[str, list[_Measure]], proc: _Res,
             surgery: dt.date) -> None:
    moment = _surgery_moment(proc)
    for code, measures in imaging.items():
        pre: list[_Measure] = []
        post: list[_Measure] = []
        for m in measures:
            tp = m.timepoint
            if tp is not None:
                if tp == "preop" and m.day > surgery or tp != "preop" and m.day < surgery:
                    ctx.patient_errors.append(FhirProblem(m.expression, f"{code}: stated {tp} but dated {m.day} "
                                                                        f"(surgery {surgery})", code="business-rule"))
                    continue
            elif m.day < surgery:
                tp = "preop"
            elif m.day > surgery:
                tp = "postop"
            elif m.moment is not None and moment is not None:
                tp = "preop" if m.moment < moment else "postop"
            else:
                ctx.patient_errors.append(FhirProblem(
                    m.expression, f"{code}: dated the surgery day ({surgery}) without a time, so it cannot be told "
                                  "pre- from post-operative: send the time, or the imaging-timepoint extension",
                    code="business-rule"))
                continue
            if tp == "preop" and (m.timepoint or (surgery - m.day).days <= PREOP_IMAGING_DAYS):
                pre.append(m)
            elif tp == "postop" and (m.timepoint or (m.day - surgery).days <= POSTOP_IMAGING_DAYS):
                post.append(m)
        if pre and f"{code}_preop" in _RECORD_IMAGING:
            chosen = _extreme(ctx, pre, latest=True)
            if chosen is not None:
                rec["imaging"]["preop"][code] = chosen.value
                el[f"imaging.preop.{code}"] = chosen
                src.basis.append(chosen.ref)
        if post and f"{code}_postop" in _RECORD_IMAGING:
            chosen = _extreme(ctx, post, latest=False)
            if chosen is not None:
                rec["imaging"]["postop"][code] = chosen.value
                el[f"imaging.postop.{code}"] = chosen
                src.basis.append(chosen.ref)
    src.basis[:] = list(dict.fromkeys(src.basis))
