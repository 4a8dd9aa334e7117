"""A FHIR Bulk Data export (NDJSON) -> records and problems, for batch scoring.

A Bulk Data export is a folder of newline-delimited JSON files, one resource per line,
named by resource type (``Patient.ndjson``, ``Observation.ndjson``, or ``Observation_2.ndjson``
when a server splits a type). ``read_bulk_ndjson`` reads every ``*.ndjson`` file, groups the
resources by patient and parses each patient with ``features.fhir.parse`` (the mapping, then
the contract checker), so both batch engines (pandas and Spark) score the same records.
A problem is named by file, line and element; a patient's problem leaves out that patient's
records only, and the others are scored.

Large exports are parsed by several processes (``workers``, one per core by default): the
lines are grouped by patient in this process, and each worker parses whole patients.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from features.fhir.parse import FhirProblem, FhirRecords, merge, parse_resources, paused_gc

_TYPE_OF_FILE = re.compile(r"^([A-Z][A-Za-z]+)(?:[_.-]\d+)?\.ndjson$")
#: Below this many resources one process parses everything (starting workers costs more).
PARALLEL_FROM = 20_000


class BulkInputError(ValueError):
    """The folder cannot be read as a Bulk Data export at all (no NDJSON files)."""


def ndjson_files(directory: Path) -> list[Path]:
    """The export's NDJSON files, in name order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BulkInputError(f"{directory} is not a folder")
    files = sorted(p for p in directory.iterdir() if p.suffix == ".ndjson" and p.is_file())
    if not files:
        raise BulkInputError(f"{directory} holds no .ndjson files (a FHIR Bulk Data export: one <ResourceType>.ndjson per type)")
    return files


def _patient_key(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) else None
    subject = resource.get("subject")
    ref = subject.get("reference") if isinstance(subject, dict) else None
    return "/".join(ref.rstrip("/").split("/")[-2:]) if isinstance(ref, str) else None


def read_bulk_ndjson(directory: Path, *, now: dt.datetime | None = None, validate: bool = False,
                     workers: int | None = None) -> FhirRecords:
    """Every record of a Bulk Data export, with every problem by ``file:line`` and FHIRPath.

    ``validate``: also check every resource against the FHIR R4 models (fhir.resources; about
    half a millisecond per resource, so off by default for large exports: the elements the
    mapping reads are checked either way). ``workers``: processes that parse (default: one
    per core for exports of ``PARALLEL_FROM`` resources or more).
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    problems: list[FhirProblem] = []
    groups: dict[str | None, list[tuple[bytes, dict[str, Any], str]]] = {}
    with paused_gc():
        for path in ndjson_files(directory):
            m = _TYPE_OF_FILE.match(path.name)
            expected = m.group(1) if m else None
            for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
                if not line.strip():
                    continue
                src = f"{path.name}:{number}"
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    problems.append(FhirProblem("resource", f"not JSON: {exc}"[:200], code="structure", source=src))
                    continue
                rtype = resource.get("resourceType") if isinstance(resource, dict) else None
                if expected and rtype != expected:
                    problems.append(FhirProblem(f"{rtype or 'resource'}.resourceType",
                                                f"resourceType {rtype!r} in {path.name} (expected {expected})", source=src))
                    continue
                groups.setdefault(_patient_key(resource), []).append((line, resource, src))
    n = sum(len(g) for g in groups.values())
    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    patient_groups = [g for key, g in groups.items() if key is not None]
    if workers > 1 and n >= PARALLEL_FROM and len(patient_groups) > 1:
        chunks = _chunks(patient_groups, workers * 4)
        payload = [[[(line, src) for line, _, src in group] for group in chunk] for chunk in chunks]
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_parse_chunk, payload, [now] * len(payload), [validate] * len(payload)))
        out = merge(parts)
        if None in groups:  # resources with no patient: reported as such
            out.problems.extend(_parse_group(groups[None], now, validate).problems)
    else:
        out = _parse_group([item for g in groups.values() for item in g], now, validate)
    out.problems[:0] = problems
    return out


def _parse_group(items: list[tuple[bytes, dict[str, Any], str]], now: dt.datetime, validate: bool) -> FhirRecords:
    return parse_resources([(r, r.get("resourceType", "resource"), "") for _, r, _ in items], now=now,
                           validate=validate, one_patient=False, source_of={i: s for i, (_, _, s) in enumerate(items)})


def _parse_chunk(groups: list[list[tuple[bytes, str]]], now: dt.datetime, validate: bool) -> FhirRecords:
    """In a worker: whole patients' lines -> their parse."""
    with paused_gc():
        items = [(line, orjson.loads(line), src) for group in groups for line, src in group]
    return _parse_group(items, now, validate)


def _chunks(groups: list[list[Any]], n: int) -> list[list[list[Any]]]:
    """Patient groups in ``n`` runs of about equal resource counts, in input order."""
    total = sum(len(g) for g in groups)
    target = max(1, total // n)
    chunks: list[list[list[Any]]] = [[]]
    size = 0
    for group in groups:
        if size >= target:
            chunks.append([])
            size = 0
        chunks[-1].append(group)
        size += len(group)
    return [c for c in chunks if c]
