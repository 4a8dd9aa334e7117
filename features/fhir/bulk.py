"""A FHIR Bulk Data export (NDJSON) -> records and problems, for batch scoring.

A Bulk Data export is a folder of newline-delimited JSON files, one resource per line,
named by resource type (``Patient.ndjson``, ``Observation.ndjson``, or ``Observation_2.ndjson``
when a server splits a type). ``read_bulk_ndjson`` reads every ``*.ndjson`` file, groups the
resources by patient and parses each patient with ``features.fhir.parse`` (the mapping, then
the contract checker), so both batch engines (pandas and Spark) score the same records.
A problem is named by file, line and element; a patient's problem leaves out that patient's
records only, and the others are scored.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import orjson

from features.fhir.parse import FhirProblem, FhirRecords, parse_resources

_TYPE_OF_FILE = re.compile(r"^([A-Z][A-Za-z]+)(?:[_.-]\d+)?\.ndjson$")


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


def read_bulk_ndjson(directory: Path, *, now: dt.datetime | None = None, validate: bool = False) -> FhirRecords:
    """Every record of a Bulk Data export, with every problem by ``file:line`` and FHIRPath.

    ``validate``: also check every resource against the FHIR R4 models (fhir.resources; about
    half a millisecond per resource, so off by default for large exports: the elements the
    mapping reads are checked either way).
    """
    items: list[tuple[Any, str, str]] = []
    where: dict[int, str] = {}
    problems: list[FhirProblem] = []
    for path in ndjson_files(directory):
        m = _TYPE_OF_FILE.match(path.name)
        expected = m.group(1) if m else None
        with path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
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
                where[len(items)] = src
                items.append((resource, rtype if isinstance(rtype, str) else "resource", ""))
    out = parse_resources(items, now=now, validate=validate, one_patient=False, source_of=where)
    out.problems[:0] = problems
    return out
