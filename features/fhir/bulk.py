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
    with paused_gc():  # the whole read: every allocation here is live data (see paused_gc)
        return _read(directory, now or dt.datetime.now(dt.timezone.utc), validate, workers)


def _read(directory: Path, now: dt.datetime, validate: bool, workers: int | None) -> FhirRecords:
    lines: list[tuple[bytes, str, str | None]] = []  # (line, file:line, the file's resource type)
    for path in ndjson_files(directory):
        m = _TYPE_OF_FILE.match(path.name)
        expected = m.group(1) if m else None
        lines.extend((line, f"{path.name}:{number}", expected)
                     for number, line in enumerate(path.read_bytes().split(b"\n"), start=1) if line.strip())
    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    if workers == 1 or len(lines) < PARALLEL_FROM:
        keys, problems, resources = _keys(lines, keep=True)
        items = [(resources[i], lines[i][1]) for i in range(len(lines)) if keys[i] is not False]
        out = parse_resources([(r, r.get("resourceType", "resource"), "") for r, _ in items], now=now, validate=validate,
                              one_patient=False, source_of={i: src for i, (_, src) in enumerate(items)})
        out.problems[:0] = problems
        return out
    # Two passes on the workers: which patient each line is about, then whole patients parsed.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        shares = [lines[i::workers * 4] for i in range(workers * 4)]
        keyed = list(pool.map(_keys, shares))
        groups: dict[str | None, list[tuple[bytes, str]]] = {}
        problems: list[FhirProblem] = []
        for share, (keys, share_problems) in zip(shares, keyed):
            problems.extend(share_problems)
            for (line, src, _), key in zip(share, keys):
                if key is not False:
                    groups.setdefault(key, []).append((line, src))
        patient_groups = [g for key, g in groups.items() if key is not None]
        chunks = _chunks(patient_groups, workers * 4)
        parts = list(pool.map(_parse_chunk, chunks, [now] * len(chunks), [validate] * len(chunks)))
    out = merge(parts)
    if None in groups:  # resources with no patient: reported as such
        out.problems.extend(_parse_lines(groups[None], now, validate).problems)
    out.problems[:0] = sorted(problems, key=lambda p: p.source)
    return out


def _keys(lines: list[tuple[bytes, str, str | None]], keep: bool = False) -> tuple[Any, ...]:
    """Per line: the patient it is about (None: none found; False: the line is refused), and
    the problems of refused lines (and, with ``keep``, the parsed resources)."""
    keys: list[str | None | bool] = []
    problems: list[FhirProblem] = []
    resources: list[Any] = []
    with paused_gc():
        for line, src, expected in lines:
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                problems.append(FhirProblem("resource", f"not JSON: {exc}"[:200], code="structure", source=src))
                keys.append(False)
                resources.append(None)
                continue
            resources.append(resource)
            rtype = resource.get("resourceType") if isinstance(resource, dict) else None
            if expected and rtype != expected:
                problems.append(FhirProblem(f"{rtype or 'resource'}.resourceType",
                                            f"resourceType {rtype!r} in {src.split(':')[0]} (expected {expected})", source=src))
                keys.append(False)
                continue
            keys.append(_patient_key(resource))
    return (keys, problems, resources) if keep else (keys, problems)


def _parse_lines(items: list[tuple[bytes, str]], now: dt.datetime, validate: bool) -> FhirRecords:
    with paused_gc():
        resources = [orjson.loads(line) for line, _ in items]
    return parse_resources([(r, r.get("resourceType", "resource"), "") for r in resources], now=now, validate=validate,
                           one_patient=False, source_of={i: src for i, (_, src) in enumerate(items)})


def _parse_chunk(groups: list[list[tuple[bytes, str]]], now: dt.datetime, validate: bool) -> FhirRecords:
    """In a worker: whole patients' lines -> their parse."""
    return _parse_lines([item for group in groups for item in group], now, validate)


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
