"""The mapping's entry points without the contract check, for the service's FHIR routes.

TEMPORARY, until ``features.fhir.parse.parse_bundle`` and ``parse_prefetch`` take
``check=False`` as ``parse_resources`` does (asked of the mapping's owner, issue 19): then
this module goes and the routes call them with ``check=False, validate=False``.

Why the service needs it: ``parse_bundle`` runs the contract checker on the one or two
records of a request (``check_records``: ~1-3 ms per call, a frame per call), and the
micro-batch runs the same checker again, once for a whole batch of concurrent requests
(``serving.http.micro_batch``), which is where ``/predict`` runs it. Checking twice doubled
the worker's CPU per FHIR request. The FHIR-model validation of every entry (``validate``,
~3 ms per resource) is left out for the same reason: the mapping reads each element it uses
defensively and names what it cannot read; elements it does not use are not its concern.

The envelope checks below are ``parse_bundle``'s and ``parse_prefetch``'s, word for word.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from features.fhir.parse import FhirProblem, FhirRecords, parse_resources


def _refused(expression: str, message: str, code: str = "invalid") -> FhirRecords:
    return FhirRecords(problems=[FhirProblem(expression, message, code=code)])


def parse_bundle_unchecked(bundle: Any, now: dt.datetime) -> FhirRecords:
    """``parse_bundle(bundle, now=now, validate=False)`` without the contract check."""
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
    out = parse_resources(items, now=now, validate=False, one_patient=True, check=False)
    out.problems[:0] = problems
    return out


def parse_prefetch_unchecked(prefetch: dict[str, Any], now: dt.datetime) -> FhirRecords:
    """``parse_prefetch(prefetch, now=now, validate=False)`` without the contract check."""
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
    return parse_resources(items, now=now, validate=False, one_patient=True, check=False)
