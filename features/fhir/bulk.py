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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from features.fhir.bulk_fast import read_bulk_fast
from features.fhir.ndjson import BulkInputError, base_of, expected_type, line_keys, ndjson_files
from features.fhir.parse import FhirProblem, FhirRecords, merge, parse_resources, paused_gc

__all__ = ["BulkInputError", "PARALLEL_FROM", "ndjson_files", "read_bulk_ndjson"]

#: Below this many resources one process parses everything (starting workers costs more).
PARALLEL_FROM = 20_000


def read_bulk_ndjson(directory: Path, *, now: dt.datetime | None = None, validate: bool = False,
                     workers: int | None = None, fast: bool = True) -> FhirRecords:
    """Every record of a Bulk Data export, with every problem by ``file:line`` and FHIRPath.

    ``fast``: read with the fast path (``features.fhir.bulk_fast``: the same records and
    problems, its Observations decoded without a dict per element; patients it does not
    cover are read by the per-resource parser). ``fast=False`` is the reference: every
    resource through the per-resource parser. ``validate``: also check every resource
    against the FHIR R4 models (fhir.resources; about half a millisecond per resource, so
    off by default for large exports: the elements the mapping reads are checked either
    way; implies the reference path). ``workers``: processes the reference path parses with
    (default: one per core for exports of ``PARALLEL_FROM`` resources or more).
    """
    if fast and not validate:
        return read_bulk_fast(directory, now=now)
    with paused_gc():  # the whole read: every allocation here is live data (see paused_gc)
        return _read(directory, now or dt.datetime.now(dt.timezone.utc), validate, workers)


def _read(directory: Path, now: dt.datetime, validate: bool, workers: int | None) -> FhirRecords:
    lines: list[tuple[bytes, str, str | None]] = []  # (line, file:line, the file's resource type)
    for path in ndjson_files(directory):
        expected = expected_type(path)
        lines.extend((line, f"{path.name}:{number}", expected)
                     for number, line in enumerate(path.read_bytes().split(b"\n"), start=1) if line.strip())
    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    if workers == 1 or len(lines) < PARALLEL_FROM:
        keys, problems, resources = line_keys(lines, keep=True)
        items = [(resources[i], lines[i][1]) for i in range(len(lines)) if keys[i] is not False]
        out = parse_resources([(r, base_of(r), "") for r, _ in items], now=now, validate=validate,
                              one_patient=False, source_of={i: src for i, (_, src) in enumerate(items)})
        out.problems[:0] = problems
        return out
    # Two passes on the workers: which patient each line is about, then whole patients parsed.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        k = workers * 4
        shares = [lines[i::k] for i in range(k)]
        keyed = list(pool.map(_line_keys, shares))
        keys_in_order: list[Any] = [None] * len(lines)
        problems: list[FhirProblem] = []
        for i, (keys, share_problems) in enumerate(keyed):
            problems.extend(share_problems)
            keys_in_order[i::k] = keys
        # Each patient's lines in the export's order, as one process reads them (the order
        # values were sent in orders a record's basis and breaks ties).
        groups: dict[str | None, list[tuple[bytes, str]]] = {}
        for (line, src, _), key in zip(lines, keys_in_order):
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


def _parse_lines(items: list[tuple[bytes, str]], now: dt.datetime, validate: bool) -> FhirRecords:
    with paused_gc():
        resources = [orjson.loads(line) for line, _ in items]
    return parse_resources([(r, base_of(r), "") for r in resources], now=now, validate=validate,
                           one_patient=False, source_of={i: src for i, (_, src) in enumerate(items)})


def _line_keys(lines: list[tuple[bytes, str, str | None]]) -> tuple[Any, ...]:
    """In a worker: ``ndjson.line_keys`` with the collector paused."""
    with paused_gc():
        return line_keys(lines)


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
