"""The Bulk fast path: a FHIR Bulk Data export read patient by patient like the per-resource
parser, with its Observations (most of an export's bytes) decoded by msgspec into the few
elements the mapping reads and chosen without a per-value object.

``read_bulk_fast(directory, now)`` returns what ``bulk.read_bulk_ndjson(..., fast=False)``
(the reference) returns: the same records in the same order, the same problems (file,
line, element, message) in the same order. It gets there by doing as little of its own as
it can:

- lines: every line that does not decode as the mapping's Observation elements (not JSON,
  another resourceType, an element of an unexpected JSON type) is read by the reference's
  own line reader (``ndjson.line_keys``), so its problem is the reference's;
- patients: resources are grouped as the reference groups them (``parse._by_patient``: the
  Patient's keys, the ``subject``); Patients, Procedures, Conditions and
  MedicationStatements are read by the reference's own functions (``parse._parse_patient``,
  ``history``); only Observations are read here (``fast_observations``), and only in the
  plain case;
- fallback: a patient with anything the fast reading does not cover (``Decline``: a unit to
  convert, a duplicate, an unknown code, an Observation that did not decode, ...), with a
  problem once its Observations were read, or whose record fails the contract's checker, is
  parsed again, whole, by the reference (``parse.parse_resources``); resources with no
  patient likewise.

What it cannot see: msgspec skips the elements the mapping does not read without checking
that a number in them fits a double (``1e999``); the reference's JSON reader refuses such a
line as not JSON. Text that is not UTF-8 is caught (the file is then read line by line by
the reference's reader).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import msgspec
import orjson

from features.fhir.ndjson import base_of, expected_type, line_keys, ndjson_files
from features.fhir.fast_observations import DECODER, Decline, Observation, PatientObservations, digest, subject_of
from features.fhir.parse import (READ_TYPES, FhirProblem, FhirRecords, _parse_patient, check_records, parse_resources,
                                 paused_gc)
from features.fhir.read import Ctx, Res, ref_keys, reference
from features.records import inspect_records, records_frame

#: Lines decoded at once (a block with a line that does not decode is decoded line by line).
BLOCK_LINES = 2048


def read_bulk_fast(directory: Path, *, now: dt.datetime | None = None) -> Any:
    """Every record of a Bulk Data export and every problem, as the per-resource parser gives
    them (``features.fhir.parse.FhirRecords``, per patient)."""
    with paused_gc():
        return _read(Path(directory), now or dt.datetime.now(dt.timezone.utc))


class _Typed:
    """An Observation decoded by msgspec, with where it was read."""

    __slots__ = ("pos", "obs", "source", "line")

    def __init__(self, pos: int, obs: Observation, source: str, line: bytes):
        self.pos, self.obs, self.source, self.line = pos, obs, source, line

    def resource(self) -> dict[str, Any]:
        return orjson.loads(self.line)


def _read(directory: Path, now: dt.datetime) -> FhirRecords:
    line_problems: list[FhirProblem] = []
    read: list[tuple[int, Any, str]] = []  # (position, dict resource or _Typed, file:line) of the read types
    junk: list[tuple[int, Any, str]] = []  # resources the reference refuses before grouping (not an object, ...)
    pos = 0
    for path in ndjson_files(directory):
        expected = expected_type(path)
        data = path.read_bytes()
        lines = [(line, f"{path.name}:{number}") for number, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
        start, pos = pos, pos + len(lines)
        typed = expected == "Observation" and _utf8(data)
        decoded = _decode(lines) if typed else [None] * len(lines)
        odd = [i for i, d in enumerate(decoded) if d is None or d.resourceType != "Observation"]
        keys, problems, resources = line_keys([(lines[i][0], lines[i][1], expected) for i in odd], keep=True)
        line_problems.extend(problems)
        for i, d in enumerate(decoded):
            if d is not None and d.resourceType == "Observation":
                read.append((start + i, _Typed(start + i, d, lines[i][1], lines[i][0]), lines[i][1]))
        for i, key, resource in zip(odd, keys, resources):
            if key is False:
                continue
            rtype = resource.get("resourceType") if isinstance(resource, dict) else None
            if not isinstance(rtype, str):
                junk.append((start + i, resource, lines[i][1]))
            elif rtype == "Observation":
                again = _decode_one(lines[i][0]) if _utf8(lines[i][0]) else None
                read.append((start + i, _Typed(start + i, again, lines[i][1], lines[i][0]) if again is not None else resource,
                             lines[i][1]))
            elif rtype in READ_TYPES:
                read.append((start + i, resource, lines[i][1]))
    read.sort(key=lambda item: item[0])
    return _parse(read, junk, line_problems, now)


def _utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode(lines: list[tuple[bytes, str]]) -> list[Observation | None]:
    """Each line's Observation elements, or None where it does not decode."""
    out: list[Observation | None] = []
    for a in range(0, len(lines), BLOCK_LINES):
        block = lines[a:a + BLOCK_LINES]
        try:
            got = DECODER.decode_lines(b"\n".join(line for line, _ in block))
        except (msgspec.DecodeError, msgspec.ValidationError):
            got = None
        if got is None or len(got) != len(block):
            got = [_decode_one(line) for line, _ in block]
        out.extend(got)
    return out


def _decode_one(line: bytes) -> Observation | None:
    try:
        return DECODER.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _parse(read: list[tuple[int, Any, str]], junk: list[tuple[int, Any, str]], line_problems: list[FhirProblem],
           now: dt.datetime) -> FhirRecords:
    # Group as parse._by_patient: Patients by their keys, in the order they come; the others by subject.
    groups: dict[str, list[tuple[int, Any, str]]] = {}
    alias: dict[str, str] = {}
    for item in read:
        resource = item[1]
        if isinstance(resource, dict) and resource["resourceType"] == "Patient":
            res = Res(resource, "Patient", "", item[2])
            groups.setdefault(res.ref, []).append(item)
            for k in ref_keys(res):
                alias[k] = res.ref
    orphans: list[tuple[int, Any, str]] = []
    for item in read:
        resource = item[1]
        if isinstance(resource, dict):
            if resource["resourceType"] == "Patient":
                continue
            subject = reference(resource.get("subject"))
        else:
            subject = subject_of(resource.obs)
        key = alias.get(subject or "")
        (orphans if key is None else groups[key]).append(item)
    # The reference's order of problems: lines, then resources no patient owns, then patient by
    # patient, then the contract checker's by record.
    out = FhirRecords(per_patient=True)
    out.problems.extend(line_problems)
    if junk or orphans:
        nobody = sorted(junk + orphans, key=lambda item: item[0])
        out.problems.extend(_reference(nobody, now).problems)
    today_limit = Ctx(None, now, False).today_limit
    parts: list[tuple[bool, FhirRecords, list[tuple[int, Any, str]]]] = []  # (fast?, parse, the patient's items)
    for items in groups.values():
        fast = _fast_patient(items, now, today_limit)
        parts.append((True, fast, items) if fast is not None else (False, _reference(items, now), items))
    # Fast records the contract refuses: the patient goes to the reference (its messages name elements).
    fast_records = [(k, i) for k, (is_fast, part, _) in enumerate(parts) if is_fast for i in range(len(part.records))]
    if fast_records:
        inspected = inspect_records(records_frame(parts[k][1].records[i] for k, i in fast_records))
        for k in sorted({fast_records[e["record"]][0] for e in inspected.errors}):
            parts[k] = (False, _reference(parts[k][2], now), parts[k][2])
    checked: list[int] = []
    for is_fast, part, _ in parts:
        offset = len(out.records)
        if not is_fast:
            checked.extend(range(offset, offset + len(part.records)))
        out.records.extend(part.records)
        out.sources.extend(part.sources)
        out.problems.extend(p if p.record is None else FhirProblem(p.expression, p.message, p.severity, p.code,
                                                                   p.record + offset, p.source) for p in part.problems)
    out.problems.extend(_contract_problems(out, checked))
    return out


def _fast_patient(items: list[tuple[int, Any, str]], now: dt.datetime, today_limit: dt.date) -> FhirRecords | None:
    """One patient read with the fast Observations, or None: the reference must read it."""
    resources: list[Res] = []
    observations: list[_Typed] = []
    for _, resource, source in items:
        if isinstance(resource, dict):
            if resource["resourceType"] == "Observation":
                return None  # it did not decode as the elements the fast path reads
            resources.append(Res(resource, resource["resourceType"], "", source))
        else:
            observations.append(resource)
    resources.sort(key=lambda r: r.type != "Patient")  # the Patient first, as parse._by_patient groups them
    lazy = _LazyObservations(observations, today_limit)
    part = FhirRecords(per_patient=True)
    try:
        _parse_patient(resources, now, part, input_level=False, observe=lazy.observe)
    except Decline:
        return None
    if part.problems and lazy.read:
        return None  # the reference says it in its own order, Observations' problems included
    return part


class _LazyObservations:
    """A patient's Observations, digested the first time a record needs them (a patient with no
    completed augmentation never does, as in the reference)."""

    def __init__(self, observations: list[_Typed], today_limit: dt.date):
        self.observations, self.today_limit = observations, today_limit
        self.read = False
        self._digested: PatientObservations | None = None

    def observe(self, *args: Any) -> None:
        if self._digested is None:
            self.read = True
            digests = [d for d in (digest(o.obs, self.today_limit) for o in self.observations) if d is not None]
            self._digested = PatientObservations(digests)
        self._digested.observe(*args)


def _reference(items: list[tuple[int, Any, str]], now: dt.datetime) -> FhirRecords:
    """The per-resource parser on some resources (in input order), without the contract check."""
    resources = [(r.resource() if isinstance(r, _Typed) else r) for _, r, _ in items]
    return parse_resources([(r, base_of(r), "") for r in resources], now=now, one_patient=False, check=False,
                           source_of={i: src for i, (_, _, src) in enumerate(items)})


def _contract_problems(out: FhirRecords, indexes: list[int]) -> list[FhirProblem]:
    """The contract checker's errors on the records at ``indexes`` (renumbered to them)."""
    if not indexes:
        return []
    part = FhirRecords(records=[out.records[i] for i in indexes], sources=[out.sources[i] for i in indexes],
                       per_patient=True)
    check_records(part)
    return [FhirProblem(p.expression, p.message, p.severity, p.code, indexes[p.record], p.source) for p in part.problems]
