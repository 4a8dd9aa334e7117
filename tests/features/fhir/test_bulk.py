"""The Bulk NDJSON reader: records, and problems by file, line and element."""

from __future__ import annotations

import orjson
import pytest

from features.fhir.bulk import BulkInputError, read_bulk_ndjson
from features.fhir.export import export_resources
from features.io import read_raw
from features.raw_records import scorable_records
from features.validate import validate_raw
from fhir_support import mismatches, records_in_order, simulated_export


def _write(folder, resources):
    folder.mkdir()
    files = {}
    for r in resources:
        files.setdefault(r["resourceType"], []).append(orjson.dumps(r))
    for rtype, lines in files.items():
        (folder / f"{rtype}.ndjson").write_bytes(b"\n".join(lines) + b"\n")


def test_bulk_export_reads_back_and_bad_lines_are_named(tmp_path):
    raw_dir = simulated_export(tmp_path, "xiong2021-pvp", 60, 3)
    resources = list(export_resources(validate_raw(read_raw(raw_dir))))
    # Break one patient's height unit and add a line that is not JSON and one of the wrong type.
    height = next(r for r in resources if r.get("id", "").endswith("-height"))
    height["valueQuantity"]["code"] = "kg"
    broken_patient = height["subject"]["reference"]
    bulk = tmp_path / "bulk"
    _write(bulk, resources)
    with (bulk / "Observation.ndjson").open("ab") as fh:
        fh.write(b"{not json\n")
        fh.write(orjson.dumps({"resourceType": "Patient", "id": "stray"}) + b"\n")
    parsed = read_bulk_ndjson(bulk)
    lines = (bulk / "Observation.ndjson").read_bytes().splitlines()
    height_line = next(i for i, line in enumerate(lines, 1) if orjson.loads(line).get("id") == height["id"])
    sources = {p.source: p for p in parsed.errors}
    assert f"Observation.ndjson:{height_line}" in sources
    assert "'kg' cannot be converted" in sources[f"Observation.ndjson:{height_line}"].message
    assert f"Observation.ndjson:{len(lines) - 1}" in sources and "not JSON" in sources[f"Observation.ndjson:{len(lines) - 1}"].message
    assert "expected Observation" in sources[f"Observation.ndjson:{len(lines)}"].message
    # Only the broken patient's records are refused; the others equal the raw export's.
    records, record_sources = parsed.accepted()
    assert len(records) == 59 and all(s.patient != broken_patient for s in record_sources)
    expected = scorable_records(read_raw(raw_dir)).records
    expected = expected[expected["procedure_id"].isin([r["procedure"]["procedure_id"] for r in records])]
    assert mismatches(expected, records_in_order(records, expected["procedure_id"])) == {}


def test_a_folder_without_ndjson_is_refused(tmp_path):
    with pytest.raises(BulkInputError, match="no .ndjson"):
        read_bulk_ndjson(tmp_path)


def test_parallel_workers_give_the_same_records_and_problems(tmp_path, monkeypatch):
    import features.fhir.bulk as bulk

    raw_dir = simulated_export(tmp_path, "site-c-older-frail-pkp", 80, 5)
    resources = list(export_resources(validate_raw(read_raw(raw_dir))))
    next(r for r in resources if r.get("id", "").endswith("-weight"))["valueQuantity"]["code"] = "cm"
    folder = tmp_path / "bulk"
    _write(folder, resources)
    monkeypatch.setattr(bulk, "PARALLEL_FROM", 10)
    one, two = read_bulk_ndjson(folder, workers=1), read_bulk_ndjson(folder, workers=2)
    assert sorted(r["procedure"]["procedure_id"] for r in one.records) == sorted(r["procedure"]["procedure_id"] for r in two.records)
    assert {(p.source, p.expression, p.message) for p in one.problems} == {(p.source, p.expression, p.message) for p in two.problems}
    assert len(one.refused) == len(two.refused) >= 1
    by_id = {r["procedure"]["procedure_id"]: r for r in two.records}
    assert all(by_id[r["procedure"]["procedure_id"]] == r for r in one.records)
    # The same sources too: each patient's resources read in the export's order (the basis
    # of a RiskAssessment lists them in that order).
    def sources(parsed):
        return {r["procedure"]["procedure_id"]: (s.patient, s.procedure, list(s.basis), s.source, s.elements)
                for r, s in zip(parsed.records, parsed.sources)}
    assert sources(one) == sources(two)
