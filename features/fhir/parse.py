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
import gc
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import pandas as pd
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from features.fhir import codes as c
from features.fhir.history import conditions, medications
from features.fhir.measures import PROJECT_CODES, observations
from features.fhir.read import (DATE, Ctx, FhirProblem, RecordSource, Res, codings, date_of, level_of, quantity_in,
                                ref_keys, reference)
from features.records import inspect_records, records_frame

__all__ = ["BUNDLE_TYPES", "PROJECT_CODES", "READ_TYPES", "FhirProblem", "FhirRecords", "RecordSource", "check_records",
           "merge", "model_problems", "parse_bundle", "parse_prefetch", "parse_resources", "paused_gc", "record_frame"]

#: Resource types the mapping reads; others in the input are ignored.
READ_TYPES = ("Patient", "Procedure", "Observation", "Condition", "MedicationStatement")
#: Bundle types a patient's resources may come in.
BUNDLE_TYPES = ("collection", "transaction", "searchset", "batch")
_TECHNIQUE_BY_CODING = {(code.system, code.code): t for t, codes in c.TECHNIQUE.items() for code in codes}
_APPROACH_BY_CODING = {(code.system, code.code): a for a, codes in c.APPROACH.items() for code in codes}


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


def parse_bundle(bundle: Any, *, now: dt.datetime | None = None, validate: bool = True,
                 check: bool = True) -> FhirRecords:
    """A FHIR Bundle (type collection or transaction) of one patient's resources -> records.

    ``now``: the request time (default: now, UTC); anything dated after it is refused.
    ``validate``: check every entry's resource with the FHIR R4 models (fhir.resources R4B)
    first, so malformed elements are named even where the mapping does not read them.
    ``check``: run the contract checker on the records (the service leaves it to its
    micro-batch, which checks a whole batch of concurrent requests at once).
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
    out = parse_resources(items, now=now, validate=validate, one_patient=True, check=check)
    out.problems[:0] = problems
    return out


def parse_prefetch(prefetch: dict[str, Any], *, now: dt.datetime | None = None, validate: bool = True,
                   check: bool = True) -> FhirRecords:
    """CDS Hooks prefetch (key -> a Bundle, usually a searchset, or one resource, or None)
    -> records of the one patient it describes. Expressions start with the prefetch key:
    ``prefetch.conditions.entry[2].resource.code``. ``check`` as for ``parse_bundle``."""
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
    return parse_resources(items, now=now, validate=validate, one_patient=True, check=check)


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
    resources: list[Res] = []
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
            resources.append(Res(resource, base, full_url, src))
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


def _unpack(item: Any) -> tuple[Any, str, str]:
    if isinstance(item, tuple):
        if len(item) == 3:
            return item
        return item[0], item[1], ""
    return item, "", ""


def _refused(expression: str, message: str, code: str = "invalid") -> FhirRecords:
    return FhirRecords(problems=[FhirProblem(expression, message, code=code)])


def _by_patient(resources: list[Res], problems: list[FhirProblem]) -> Iterator[list[Res]]:
    """Group resources by the patient they belong to (Bulk: many patients in one input)."""
    patients: dict[str, list[Res]] = {}
    alias: dict[str, str] = {}
    for res in resources:
        if res.type == "Patient":
            key = res.ref
            patients.setdefault(key, []).append(res)
            for k in ref_keys(res):
                alias[k] = key
    orphans: list[Res] = []
    for res in resources:
        if res.type == "Patient":
            continue
        subject = reference(res.r.get("subject"))
        key = alias.get(subject or "")
        if key is None:
            problems.append(FhirProblem(f"{res.base}.subject", f"refers to patient {subject!r}, which is not in the input"
                                        if subject else "no subject (the patient it is about)", code="not-found",
                                        severity="warning", source=res.source))
            orphans.append(res)
            continue
        patients[key].append(res)
    yield from patients.values()


def _parse_patient(resources: list[Res], now: dt.datetime, out: FhirRecords, input_level: bool,
                   observe: Callable[..., None] = observations) -> None:
    """One patient's resources -> its records (and problems) in ``out``. ``observe``: what
    fills a record's measured fields (``measures.observations``; the Bulk fast path,
    ``features.fhir.bulk_fast``, passes its own reader of pre-digested Observations)."""
    ctx = Ctx(out, now, input_level)
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
    keys = set(ref_keys(patient))
    by_ref: dict[str, Res] = {}
    for res in resources:
        for k in ref_keys(res):
            by_ref[k] = res
    mine: list[Res] = []
    for res in resources:
        if res is patient:
            continue
        subject = reference(res.r.get("subject"))
        if subject is not None and subject not in keys:
            ctx.error(res, ".subject", f"refers to patient {subject!r}, not to {patient.ref} whose resources these are",
                      "business-rule")
            continue
        mine.append(res)
    procedures = [r for r in mine if r.type == "Procedure" and _technique(r) is not None]
    completed: list[Res] = []
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
        rec, src = _procedure_record(ctx, patient, patient_fields, proc, day, completed, surgery, mine, by_ref, observe)
        records.append(rec)
        sources.append(src)
    _finish(ctx, records, sources)


def _finish(ctx: Ctx, records: list[dict], sources: list[RecordSource]) -> None:
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


# ---------------------------------------------------------------------------- patient-level values


def _patient_values(ctx: Ctx, patient: Res) -> dict[str, tuple[Any, str]]:
    """sex and birth date: (value, expression)."""
    values: dict[str, tuple[Any, str]] = {}
    gender = patient.r.get("gender")
    sex = {"female": "F", "male": "M"}.get(gender)
    if sex is None:
        ctx.error(patient, ".gender", f"gender {gender!r}: the contract records sex as female or male", "value")
    values["sex"] = (sex, f"{patient.base}.gender")
    values["birthDate"] = (patient.r.get("birthDate"), f"{patient.base}.birthDate")
    return values


def _age(ctx: Ctx, patient: Res, surgery: dt.date | None) -> float | None:
    birth = patient.r.get("birthDate")
    if surgery is None:
        return None
    if not isinstance(birth, str):
        ctx.error(patient, ".birthDate", "birthDate missing: age at surgery is required", "required")
        return None
    m = DATE.match(birth)
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


def _surgery(ctx: Ctx, proc: Res) -> dt.date | None:
    performed = proc.r.get("performedDateTime")
    path = ".performedDateTime"
    if performed is None and isinstance(proc.r.get("performedPeriod"), dict):
        performed, path = proc.r["performedPeriod"].get("start"), ".performedPeriod.start"
    read = date_of(performed)
    if read is None:
        ctx.error(proc, path if performed is not None else ".performed[x]",
                  "the surgery date is missing or not a full date (YYYY-MM-DD)" if performed is None else
                  f"cannot read {performed!r} as a date", "required")
        return None
    if ctx.future(proc, path, read[0]):
        return None
    return read[0]



def _technique(proc: Res) -> str | None:
    for coding in codings(proc.r.get("code")):
        t = _TECHNIQUE_BY_CODING.get(coding)
        if t:
            return t
    return None


def _procedure_record(ctx: Ctx, patient: Res, pvals: dict[str, tuple[Any, str]], proc: Res, surgery: dt.date | None,
                      completed: list[Res], surgery_of: dict[int, dt.date | None], mine: list[Res],
                      by_ref: dict[str, Res], observe: Callable[..., None] = observations
                      ) -> tuple[dict[str, Any], RecordSource]:
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
    R["level"] = level_of(ctx, proc)
    el["procedure.level"] = f"{proc.base}.bodySite"
    R["age_years"] = _age(ctx, patient, surgery)
    el["procedure.age_years"] = f"{patient.base}.birthDate"
    same_day = [p for p in completed if surgery is not None and surgery_of[id(p)] == surgery]
    R["n_levels_treated"] = len(same_day) if surgery else None
    el["procedure.n_levels_treated"] = f"{proc.base}.performed"
    treated_levels = {lv for lv in (level_of(None, p) for p in same_day) if lv}
    _extensions(ctx, proc, R, el)
    R["brace_prescribed"] = int(any((c.PROJECT_SYSTEM, c.BRACE.code) in codings(f) for f in proc.r.get("followUp") or []))
    el["procedure.brace_prescribed"] = f"{proc.base}.followUp"
    index_refs = {reference(r) for r in proc.r.get("reasonReference") or []} - {None}
    R["pain_onset_date"] = None
    el["procedure.pain_onset_date"] = f"{proc.base}.reasonReference"
    for ref in index_refs:
        cond = by_ref.get(ref)
        if cond is not None and cond.type == "Condition":
            onset = date_of(cond.r.get("onsetDateTime"))
            if onset:
                R["pain_onset_date"] = onset[0].isoformat()
                el["procedure.pain_onset_date"] = f"{cond.base}.onsetDateTime"
                src.basis.append(cond.ref)
    # ---- patient
    P["sex"], el["patient.sex"] = pvals["sex"]
    if surgery is not None:
        conditions(ctx, P, el, src, mine, surgery, index_refs, treated_levels)
        medications(ctx, P, el, src, mine, surgery)
        observe(ctx, rec, el, src, mine, proc, surgery, completed, surgery_of)
    return rec, src




def _extensions(ctx: Ctx, proc: Res, R: dict[str, Any], el: dict[str, str]) -> None:
    R["approach"] = None
    R["cement_volume_ml"] = None
    el["procedure.approach"] = f"{proc.base}.extension('{c.EXT_APPROACH}')"
    el["procedure.cement_volume_ml"] = f"{proc.base}.extension('{c.EXT_CEMENT_VOLUME}')"
    for i, ext in enumerate(proc.r.get("extension") or []):
        if not isinstance(ext, dict):
            continue
        path = f".extension[{i}]"
        if ext.get("url") == c.EXT_APPROACH:
            sent = codings(ext.get("valueCodeableConcept"))
            values = {_APPROACH_BY_CODING[cd] for cd in sent if cd in _APPROACH_BY_CODING}
            if len(values) != 1:
                ctx.error(proc, f"{path}.valueCodeableConcept", f"approach codes {sent} are not one of the known "
                                                                "approach codes", "code-invalid")
            else:
                R["approach"] = values.pop()
            el["procedure.approach"] = f"{proc.base}{path}.valueCodeableConcept"
        elif ext.get("url") == c.EXT_CEMENT_VOLUME:
            try:
                R["cement_volume_ml"] = quantity_in(ext.get("valueQuantity"), "mL")
            except ValueError as exc:  # units.UnitError
                ctx.error(proc, f"{path}.valueQuantity", f"cement volume: {exc}", "value")
            el["procedure.cement_volume_ml"] = f"{proc.base}{path}.valueQuantity"
