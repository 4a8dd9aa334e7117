"""The FHIR data of a CDS Hooks call: the prefetch templates, what a call's prefetch lacks, and
fetching that from the CDS client's FHIR server with the token it passed.

CDS Hooks 2.0 ("Providing FHIR Resources to a CDS Service", https://cds-hooks.hl7.org/2.0/):

- A template is a FHIR read or search with tokens such as ``{{context.patientId}}``; valid
  templates use instance reads, type searches with references, token equality
  (``code=system|code``, comma = or) and ``_count``/``_sort`` ("Prefetch query restrictions").
- "The CDS Client MUST NOT send any prefetch template key that it chooses not to satisfy ...
  If the CDS Client has no data to populate a template prefetch key, the prefetch template
  key MUST have a value of null"; it "MAY paginate prefetch results"; errors "SHOULD" come as
  OperationOutcomes, which "CDS Services SHOULD check".
- "It is the CDS Service's responsibility to check prefetched data against its template to
  determine what requests were satisfied (if any) and to programmatically retrieve any
  additional necessary data. If the CDS Service is unable to obtain required data because it
  cannot access the FHIR server and the request did not contain the necessary prefetch keys,
  the service SHALL respond with an HTTP 412 Precondition Failed status code."
- Access: "If the CDS Client provides both fhirServer and fhirAuthorization request parameters,
  the CDS Service MAY use the FHIR server"; the ``access_token`` is an OAuth 2.0 bearer token
  ("token_type: Fixed value: Bearer"), to be treated as transient.

So a key is *complete* when its value is a resource, a Bundle without a ``next`` page, or null;
it *needs fetching* when absent, an OperationOutcome, or a Bundle with a ``next`` link (then the
remaining pages are fetched). Fetching uses ``fhirServer`` + the resolved template (or the
``next`` URL, which must be on the same server), ``Authorization: Bearer <access_token>``,
``Accept: application/fhir+json``, a timeout, at most ``MAX_PAGES`` pages and
``MAX_ENTRIES`` resources per key. The token is never logged or echoed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from features.fhir import codes as c
from features.fhir.mapping import FIELD_MAPS

#: One key per resource type the mapping reads (``features.fhir.mapping``).
_PATIENT = "{{context.patientId}}"


def _token_list(codes: list[c.Code]) -> str:
    return ",".join(dict.fromkeys(f"{code.system}|{code.code}" for code in codes))


def prefetch_templates() -> dict[str, str]:
    """Prefetch key -> template: the patient, its augmentation Procedures (by the technique
    codes the mapping reads), the Observations the mapping reads (by code), and all its
    Conditions and MedicationStatements (the mapping reads ICD-10-CM and ATC codes by prefix,
    which a token search cannot express)."""
    procedure_codes = [code for m in FIELD_MAPS if m.field == "technique" for code in m.codes]
    observation_codes = [code for m in FIELD_MAPS if m.resource == "Observation" for code in m.codes]
    observation_codes.append(c.IMAGING_PANEL)
    # References in the [type]/[id] form: a bare id is allowed too, but some servers (Medplum's,
    # where the search parameter may target several types) only match the typed form.
    return {
        "patient": f"Patient/{_PATIENT}",
        "procedures": f"Procedure?patient=Patient/{_PATIENT}&code={_token_list(procedure_codes)}",
        "observations": f"Observation?patient=Patient/{_PATIENT}&code={_token_list(observation_codes)}",
        "conditions": f"Condition?patient=Patient/{_PATIENT}",
        "medications": f"MedicationStatement?patient=Patient/{_PATIENT}",
    }


#: Pages fetched per key at most (a Bundle ``next`` link followed this many times).
MAX_PAGES = 20
#: Resources kept per key at most.
MAX_ENTRIES = 5000
#: Timeout of one request to the FHIR server (seconds).
FETCH_TIMEOUT_S = 5.0
_TOKEN = re.compile(r"\{\{\s*context\.([A-Za-z0-9_]+)\s*\}\}")


class PrefetchFailed(Exception):
    """The FHIR data could not be had (HTTP 412 per CDS Hooks), with why (no token echoed)."""


def resolve(template: str, context: dict[str, Any]) -> str:
    """A template with its ``{{context.x}}`` tokens replaced by the (URL-encoded) context values;
    only root-level primitive fields may be used (CDS Hooks "Prefetch tokens")."""
    def value(m: re.Match) -> str:
        v = context.get(m.group(1))
        if not isinstance(v, (str, int, float)) or isinstance(v, bool) or v == "":
            raise PrefetchFailed(f"context.{m.group(1)} is needed by a prefetch template and is missing")
        return quote(str(v), safe="")
    return _TOKEN.sub(value, template)


def _next_link(value: Any) -> str | None:
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        return None
    for link in value.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def _is_outcome(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    if value.get("resourceType") == "OperationOutcome":
        return True
    # A search Bundle whose only entries are OperationOutcomes (search mode "outcome").
    entries = value.get("entry") or [] if value.get("resourceType") == "Bundle" else []
    return bool(entries) and all(isinstance(e, dict) and isinstance(e.get("resource"), dict) and
                                 e["resource"].get("resourceType") == "OperationOutcome" for e in entries)


def incomplete(prefetch: dict[str, Any], templates: dict[str, str]) -> dict[str, str | None]:
    """Key -> what to fetch for every key not satisfied: None (the whole template) or the URL
    of the next page of a paginated Bundle."""
    out: dict[str, str | None] = {}
    for key in templates:
        if key not in prefetch or _is_outcome(prefetch[key]):
            out[key] = None
        elif (link := _next_link(prefetch[key])) is not None:
            out[key] = link
    return out


@dataclass(frozen=True)
class FhirAccess:
    """The CDS client's FHIR server and the bearer token it passed for it."""

    server: str
    access_token: str

    def __repr__(self) -> str:  # never show the token
        return f"FhirAccess(server={self.server!r})"


async def complete(prefetch: dict[str, Any], templates: dict[str, str], context: dict[str, Any],
                   access: FhirAccess | None, client: httpx.AsyncClient | None = None) -> dict[str, Any]:
    """``prefetch`` with every unsatisfied key fetched from the FHIR server. Raises
    ``PrefetchFailed`` when something is missing and cannot be fetched."""
    todo = incomplete(prefetch, templates)
    if not todo:
        return prefetch
    if access is None:
        raise PrefetchFailed(f"prefetch lacks {', '.join(sorted(todo))} and the call gives no fhirServer and "
                             "fhirAuthorization to fetch them with")
    out = dict(prefetch)
    own = client is None
    client = client or httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False)
    try:
        for key, next_url in todo.items():
            if next_url is None:
                out[key] = await _fetch_all(client, access, _absolute(access.server, resolve(templates[key], context)), key)
            else:
                out[key] = _merged(out[key], await _fetch_all(client, access, next_url, key))
    finally:
        if own:
            await client.aclose()
    return out


def _absolute(server: str, relative: str) -> str:
    return urljoin(server.rstrip("/") + "/", relative)


def _same_server(server: str, url: str) -> bool:
    a, b = urlsplit(server), urlsplit(url)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc) and b.path.startswith(a.path.rstrip("/"))


async def _fetch_all(client: httpx.AsyncClient, access: FhirAccess, url: str, key: str) -> Any:
    """One read (a resource, or None when not found) or a search with all its pages, merged."""
    pages: list[dict[str, Any]] = []
    while url is not None:
        if not _same_server(access.server, url):
            raise PrefetchFailed(f"{key}: the FHIR server's next page is on another server")
        if len(pages) >= MAX_PAGES:
            raise PrefetchFailed(f"{key}: more than {MAX_PAGES} pages of results")
        page = await _get(client, access, url, key)
        if page is None:
            return None
        if page.get("resourceType") != "Bundle":
            return page
        pages.append(page)
        url = _next_link(page)
    merged = pages[0]
    for page in pages[1:]:
        merged = _merged(merged, page)
    if len(merged.get("entry") or []) > MAX_ENTRIES:
        raise PrefetchFailed(f"{key}: more than {MAX_ENTRIES} resources")
    return merged


def _merged(first: dict[str, Any], more: Any) -> dict[str, Any]:
    """A search Bundle with the entries of the following pages, and no ``next`` link."""
    entries = list(first.get("entry") or []) + list((more or {}).get("entry") or [])
    links = [link for link in first.get("link") or [] if isinstance(link, dict) and link.get("relation") != "next"]
    out = {**first, "entry": entries}
    if links:
        out["link"] = links
    else:
        out.pop("link", None)
    return out


async def _get(client: httpx.AsyncClient, access: FhirAccess, url: str, key: str) -> dict[str, Any] | None:
    try:
        response = await client.get(url, headers={"Authorization": f"Bearer {access.access_token}",
                                                  "Accept": "application/fhir+json"})
    except httpx.HTTPError as exc:
        raise PrefetchFailed(f"{key}: the FHIR server did not answer ({type(exc).__name__})") from None
    if response.status_code in (404, 410):
        return None
    if response.status_code != 200:
        raise PrefetchFailed(f"{key}: the FHIR server answered {response.status_code}")
    try:
        data = response.json()
    except ValueError:
        raise PrefetchFailed(f"{key}: the FHIR server's answer is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise PrefetchFailed(f"{key}: the FHIR server's answer is not a FHIR resource")
    if data["resourceType"] == "OperationOutcome":
        raise PrefetchFailed(f"{key}: the FHIR server answered with an OperationOutcome")
    return data
