"""The lines of a FHIR Bulk Data export (NDJSON): its files, and each line read as JSON with
the problem of a line that cannot be used (not JSON, another resourceType than its file's),
named by ``file:line``. Both Bulk readers (``bulk``, the per-resource one, and ``bulk_fast``)
read lines with these functions, so a broken line is reported alike by both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from features.fhir.read import FhirProblem

TYPE_OF_FILE = re.compile(r"^([A-Z][A-Za-z]+)(?:[_.-]\d+)?\.ndjson$")


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


def expected_type(path: Path) -> str | None:
    """The resource type a file's name announces (``Observation_2.ndjson`` -> Observation), if any."""
    m = TYPE_OF_FILE.match(path.name)
    return m.group(1) if m else None


def patient_key(resource: Any) -> str | None:
    """The patient a resource is about, to group lines by (None: not found)."""
    if not isinstance(resource, dict):
        return None
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) else None
    subject = resource.get("subject")
    ref = subject.get("reference") if isinstance(subject, dict) else None
    return "/".join(ref.rstrip("/").split("/")[-2:]) if isinstance(ref, str) else None


def line_keys(lines: list[tuple[bytes, str, str | None]], keep: bool = False) -> tuple[Any, ...]:
    """Per line (bytes, ``file:line``, the file's resource type): the patient it is about (None:
    none found; False: the line is refused), and the problems of refused lines (and, with
    ``keep``, the parsed resources, None where not JSON)."""
    keys: list[str | None | bool] = []
    problems: list[FhirProblem] = []
    resources: list[Any] = []
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
        keys.append(patient_key(resource))
    return (keys, problems, resources) if keep else (keys, problems)


def base_of(resource: Any) -> Any:
    """The FHIRPath base the parser names a Bulk resource's problems from (its type)."""
    return resource.get("resourceType", "resource") if isinstance(resource, dict) else "resource"
