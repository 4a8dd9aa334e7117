"""The Bulk fast path (``features.fhir.bulk_fast``) gives exactly the per-resource parser's
records, sources and problems, on a simulated cohort's FHIR export broken in the ways a
hospital's export is: lines that are not JSON or not the file's type, units to convert and
units that cannot be, several Observations of one measure, conflicting duplicates, codes
the mapping does not know, resources no patient owns."""

from __future__ import annotations

import copy
import datetime as dt

import orjson

import features.fhir.bulk_fast as bulk_fast
from features.fhir import codes as c
from features.fhir.bulk import read_bulk_ndjson
from features.fhir.export import export_resources
from features.io import read_raw
from features.validate import validate_raw
from fhir_support import simulated_export

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)


def _day(value: str, days: int) -> str:
    return (dt.date.fromisoformat(value[:10]) + dt.timedelta(days=days)).isoformat()


def _broken_export(tmp_path):
    """The export of 160 simulated procedures, with one kind of trouble per patient for the
    first dozen patients (the rest plain), written as Bulk NDJSON with extra bad lines.
    Returns the folder and what was done to whom."""
    raw_dir = simulated_export(tmp_path, "site-c-older-frail-pkp", 160, 11)
    resources = list(export_resources(validate_raw(read_raw(raw_dir))))
    patients = [r["id"] for r in resources if r["resourceType"] == "Patient"]

    def obs(patient: str, suffix: str) -> dict:
        return next(r for r in resources if r["resourceType"] == "Observation" and r["id"].endswith(suffix)
                    and r["subject"]["reference"] == f"Patient/{patient}")

    def proc_of(patient: str) -> dict:
        return next(r for r in resources if r["resourceType"] == "Procedure" and r["subject"]["reference"] == f"Patient/{patient}")

    done: dict[str, str] = {}
    p = iter(patients)
    # Units to convert (accepted, converted by the UCUM library).
    pid = next(p); q = obs(pid, "-height")["valueQuantity"]
    q.update(value=round(q["value"] / 2.54, 2), unit="in", code="[in_i]"); done["inches"] = pid
    pid = next(p); q = obs(pid, "-weight")["valueQuantity"]
    q.update(value=round(q["value"] / 0.45359237, 1), unit="lb", code="[lb_av]"); done["pounds"] = pid
    pid = next(p); q = obs(pid, "-dxa-bmd")["valueQuantity"]
    q.update(value=round(q["value"] * 1000, 1), unit="mg/cm2", code="mg/cm2"); done["mg/cm2"] = pid
    # A unit that cannot be converted (refused by name).
    pid = next(p); obs(pid, "-height")["valueQuantity"]["code"] = "kg"; done["incompatible"] = pid
    # Several heights: an older one (the latest before surgery is used), and a conflicting twin.
    pid = next(p); older = copy.deepcopy(obs(pid, "-height"))
    older.update(id=f"{pid}-height-older", effectiveDateTime=_day(older["effectiveDateTime"], -90))
    older["valueQuantity"]["value"] += 1.5; resources.append(older); done["older height"] = pid
    pid = next(p); twin = copy.deepcopy(obs(pid, "-weight"))
    twin["id"] = f"{pid}-weight-twin"; twin["valueQuantity"]["value"] += 3; resources.append(twin); done["conflict"] = pid
    # Several imaging examinations at one time point: an earlier pre-operative one, a later post-operative one.
    pid = next(p); pre = copy.deepcopy(obs(pid, "-preop"))
    pre.update(id=f"{pid}-preop-earlier", effectiveDateTime=_day(pre["effectiveDateTime"], -20))
    for comp in pre.get("component", []):
        if "valueQuantity" in comp:
            comp["valueQuantity"]["value"] += 1
    resources.append(pre); done["two preop"] = pid
    pid = next(p); post = copy.deepcopy(obs(pid, "-postop"))
    post.update(id=f"{pid}-postop-later", effectiveDateTime=_day(post["effectiveDateTime"], 3))
    for comp in post.get("component", []):
        if "valueQuantity" in comp:
            comp["valueQuantity"]["value"] += 2
    resources.append(post); done["two postop"] = pid
    # A code the mapping does not know; a result not final; an examination dated in the future.
    pid = next(p); obs(pid, "-weight")["code"]["coding"] = [{"system": c.PROJECT_SYSTEM, "code": "no_such_field"}]
    done["unknown code"] = pid
    pid = next(p); obs(pid, "-height")["status"] = "preliminary"; done["preliminary"] = pid
    pid = next(p); obs(pid, "-followup")["effectiveDateTime"] = "2099-01-01"; done["future"] = pid
    # An imaging value in another unit of the same dimension; a Procedure without its date.
    pid = next(p); comp = next(x for x in obs(pid, "-preop")["component"] if x.get("valueQuantity", {}).get("code") == "mm")
    comp["valueQuantity"].update(value=comp["valueQuantity"]["value"] / 10, unit="cm", code="cm"); done["cm"] = pid
    pid = next(p); del proc_of(pid)["performedDateTime"]; done["no surgery date"] = pid
    assert len(set(done.values())) == len(done) == 13

    folder = tmp_path / "bulk"
    folder.mkdir()
    files: dict[str, list[bytes]] = {}
    for r in resources:
        files.setdefault(r["resourceType"], []).append(orjson.dumps(r))
    # Observations split over two files, as servers do for large types.
    obs_lines = files.pop("Observation")
    files["Observation"], files["Observation_2"] = obs_lines[: len(obs_lines) // 2], obs_lines[len(obs_lines) // 2:]
    files["Observation"][5:5] = [
        b"{not json",                                                  # not JSON
        orjson.dumps({"resourceType": "Patient", "id": "stray"}),      # another type than the file's
        b"[1, 2]",                                                     # JSON, not a resource
        orjson.dumps({"resourceType": "Observation", "id": "x", "status": "final", "code": "text",
                      "subject": {"reference": f"Patient/{patients[-1]}"}}),  # an element of the wrong JSON type
        orjson.dumps({"resourceType": "Observation", "id": "orphan", "status": "final",
                      "code": {"coding": [{"system": c.LOINC, "code": "8302-2"}]},
                      "subject": {"reference": "Patient/nobody"}, "effectiveDateTime": "2020-01-01",
                      "valueQuantity": {"value": 170, "unit": "cm", "system": c.UCUM, "code": "cm"}}),
        b"",                                                           # a blank line
    ]
    for name, lines in files.items():
        (folder / f"{name}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    return folder, done


def _sources(parsed):
    return [(s.patient, s.procedure, list(s.basis), s.source, s.elements) for s in parsed.sources]


def test_the_fast_path_gives_the_reference_records_sources_and_problems(tmp_path, monkeypatch):
    folder, done = _broken_export(tmp_path)
    reference = read_bulk_ndjson(folder, now=NOW, fast=False, workers=1)

    sent_back: list[str] = []  # patients the fast path handed to the reference parser
    original = bulk_fast._reference

    def spy(items, now):
        sent_back.extend(r.get("id", "?") for _, r, _ in items if isinstance(r, dict) and r.get("resourceType") == "Patient")
        return original(items, now)

    monkeypatch.setattr(bulk_fast, "_reference", spy)
    fast = read_bulk_ndjson(folder, now=NOW)

    assert fast.records == reference.records
    assert _sources(fast) == _sources(reference)
    assert fast.problems == reference.problems
    assert fast.refused == reference.refused
    # The comparison covers the troubles: the reference did see them.
    by_patient = {s.patient: r for r, s in zip(reference.records, reference.sources)}
    refused_patients = {reference.sources[i].patient for i in reference.refused}
    for kind in ("incompatible", "conflict", "no surgery date"):
        assert f"Patient/{done[kind]}" in refused_patients or f"Patient/{done[kind]}" not in by_patient, kind
    messages = " | ".join(f"{p.source} {p.expression} {p.message}" for p in reference.problems)
    for text in ("not JSON", "expected Observation", "cannot be converted", "conflicting values", "no_such_field",
                 "preliminary"):
        assert text in messages, text
    assert by_patient[f"Patient/{done['inches']}"]["patient"]["height_cm"] is not None
    assert f"Patient/{done['inches']}" not in refused_patients and f"Patient/{done['mg/cm2']}" not in refused_patients
    older = next(s for s in reference.sources if s.patient == f"Patient/{done['older height']}")
    assert f"Observation/{done['older height']}-height" in older.basis
    assert f"Observation/{done['older height']}-height-older" not in older.basis
    two_pre = next(s for s in reference.sources if s.patient == f"Patient/{done['two preop']}")
    assert any(ref.endswith("-preop") for ref in two_pre.basis)
    # And the fast path did read most patients itself (plain ones), handing back the troubled ones.
    patients = {s.patient for s in reference.sources}
    assert len(patients) >= 100
    assert len(sent_back) <= len(done) + 2
    assert {done["inches"], done["pounds"], done["incompatible"], done["conflict"]} <= set(sent_back)
