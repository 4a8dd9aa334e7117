"""Prefetch (serving.cds_hooks.prefetch): the templates cover what the mapping reads, what a call
lacks is told apart from what it says is empty, and the missing data is fetched from a FHIR
server over HTTP (a real one on loopback: reads, searches, pages, the bearer token)."""

from __future__ import annotations

import asyncio

import pytest
from cds_support import MiniFhirServer, prefetch_of, resources_of
from fhir_support import example

from features.fhir import codes as c
from features.fhir.parse import parse_prefetch
from features.fhir.mapping import FIELD_MAPS
from serving.cds_hooks.prefetch import FhirAccess, PrefetchFailed, complete, incomplete, prefetch_templates, resolve

TOKEN = "fhir-access-token-0123456789"


def test_templates_ask_for_every_code_the_mapping_reads_and_only_use_allowed_query_forms():
    t = prefetch_templates()
    assert set(t) == {"patient", "procedures", "observations", "conditions", "medications"}
    assert t["patient"] == "Patient/{{context.patientId}}"
    for code in (code for m in FIELD_MAPS if m.resource == "Observation" for code in m.codes):
        assert f"{code.system}|{code.code}" in t["observations"]
    assert f"{c.IMAGING_PANEL.system}|{c.IMAGING_PANEL.code}" in t["observations"]
    for technique in c.TECHNIQUE.values():
        assert all(f"{code.system}|{code.code}" in t["procedures"] for code in technique)
    # CDS Hooks "Prefetch query restrictions": reads, patient references, token equality.
    for template in t.values():
        query = template.partition("?")[2]
        assert all(p.split("=")[0] in ("patient", "code") for p in query.split("&") if p), template


def test_resolve_fills_context_tokens_url_encoded_and_refuses_a_missing_one():
    assert resolve("Observation?patient={{context.patientId}}", {"patientId": "a b/c"}) == "Observation?patient=a%20b%2Fc"
    with pytest.raises(PrefetchFailed, match="context.patientId"):
        resolve("Patient/{{context.patientId}}", {})


def test_incomplete_tells_missing_from_empty_and_follows_pages_and_outcomes():
    templates = prefetch_templates()
    full = prefetch_of(resources_of(example()))
    assert incomplete(full, templates) == {}
    assert incomplete({**full, "medications": None}, templates) == {}  # null: the client has no data
    partial = {k: v for k, v in full.items() if k != "observations"}
    assert incomplete(partial, templates) == {"observations": None}
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    assert incomplete({**full, "conditions": outcome}, templates) == {"conditions": None}
    paged = {**full["procedures"], "link": [{"relation": "next", "url": "https://ehr/fhir/Procedure?page=2"}]}
    assert incomplete({**full, "procedures": paged}, templates) == {"procedures": "https://ehr/fhir/Procedure?page=2"}


def test_missing_keys_are_fetched_from_the_fhir_server_with_the_token_across_pages():
    resources = resources_of(example())
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    context = {"patientId": patient["id"], "userId": "Practitioner/1"}
    with MiniFhirServer(resources, TOKEN, page_size=2) as fhir:
        got = asyncio.run(complete({}, prefetch_templates(), context, FhirAccess(fhir.url, TOKEN)))
        assert {p for p, _, _ in fhir.requests} >= {f"/fhir/Patient/{patient['id']}", "/fhir/Observation",
                                                    "/fhir/Procedure", "/fhir/Condition", "/fhir/MedicationStatement"}
        assert all(auth == f"Bearer {TOKEN}" for _, _, auth in fhir.requests)
        assert any("_offset=2" in q for _, q, _ in fhir.requests)  # a second page was followed
        # The fetched data reads as the prefetched one does: the same record.
        direct = parse_prefetch(prefetch_of(resources))
        fetched = parse_prefetch(got)
        assert fetched.errors == [] and fetched.records == direct.records
        # A paginated prefetch key: only the rest is fetched, and merged.
        first_page = asyncio.run(complete({}, {"observations": prefetch_templates()["observations"]}, context,
                                          FhirAccess(fhir.url, TOKEN), ))["observations"]
        assert len(first_page["entry"]) == sum(r["resourceType"] == "Observation" for r in resources)


def test_the_fhir_server_refusing_or_absent_is_a_precondition_failure_without_the_token():
    resources = resources_of(example())
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    context = {"patientId": patient["id"]}
    with MiniFhirServer(resources, TOKEN) as fhir:
        with pytest.raises(PrefetchFailed, match="answered 401") as info:
            asyncio.run(complete({}, prefetch_templates(), context, FhirAccess(fhir.url, "wrong-token")))
        assert "wrong-token" not in str(info.value)
        url = fhir.url
    with pytest.raises(PrefetchFailed, match="did not answer"):
        asyncio.run(complete({}, prefetch_templates(), context, FhirAccess(url, TOKEN)))
    with pytest.raises(PrefetchFailed, match="no fhirServer"):
        asyncio.run(complete({}, prefetch_templates(), context, None))
    # A next link to another server is not followed (the token would go there).
    paged = {"resourceType": "Bundle", "type": "searchset", "entry": [],
             "link": [{"relation": "next", "url": "https://elsewhere.example/fhir/Procedure?page=2"}]}
    with pytest.raises(PrefetchFailed, match="another server"):
        asyncio.run(complete({"procedures": paged}, {"procedures": "Procedure?patient={{context.patientId}}"}, context,
                             FhirAccess(url, TOKEN)))


def test_access_never_shows_its_token():
    assert TOKEN not in repr(FhirAccess("https://ehr.example/fhir", TOKEN))
