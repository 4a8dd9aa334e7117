"""Serving without models: request validation, settings, auth comparison, audit lines,
risk bands and the documented request schema. Fast; no MLflow, no server."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.records import RECORD_FIELDS, check_records, records_frame
from serving.http import audit
from modelstore.risk_bands import risk_band
from serving.config import DEFAULT_RISK_BANDS, ConfigError, ServingSettings, parse_model_versions
from serving.http.schemas import ProcedureRecord
from serving.http.validation import parse_records
from serving.scoring.examples import example_record

KEY = "k" * 24


def body(obj) -> bytes:
    return json.dumps(obj).encode()


def errors_by_field(parsed, record=0):
    return {e["field"]: e for e in parsed.errors if e["record"] == record}


# ------------------------------------------------------------------------ good input


def test_example_record_is_valid_and_complete():
    rec = example_record()
    parsed = parse_records(body(rec), 10)
    assert parsed.ok, parsed.errors
    assert parsed.procedure_ids == ["example-0001"]
    flat = records_frame([rec])
    assert flat.notna().all(axis=None), "the documented example should show every field"
    assert check_records(flat) == []


def test_single_record_and_list_give_the_same_flat_rows():
    one = parse_records(body(example_record()), 10)
    many = parse_records(body([example_record(), example_record()]), 10)
    assert one.ok and many.ok
    assert len(many.flat) == 2
    assert one.flat.iloc[0].to_dict() == many.flat.iloc[1].to_dict()


def test_imaging_is_optional_and_nulls_mean_missing():
    rec = example_record()
    del rec["imaging"]
    rec["patient"]["dxa_bmd_g_cm2"] = None
    parsed = parse_records(body(rec), 10)
    assert parsed.ok, parsed.errors
    assert parsed.flat["dxa_bmd_g_cm2"].isna().all()


def test_binary_true_false_are_read_as_1_0():
    rec = example_record()
    rec["patient"]["type2_diabetes"] = True
    parsed = parse_records(body(rec), 10)
    assert parsed.ok and parsed.flat["type2_diabetes"].iloc[0] == 1


# ------------------------------------------------------------------------- bad input


def test_every_field_error_is_listed_with_path_problem_and_allowed_range():
    rec = example_record()
    rec["patient"]["height_cm"] = 1.6  # metres, not cm
    rec["procedure"]["level"] = "L9"
    rec["imaging"]["preop"]["hu_index"] = "sixty"
    del rec["procedure"]["age_years"]
    rec["imaging"]["postop"]["leakage_venous"] = 2
    parsed = parse_records(body(rec), 10)
    assert parsed.status == 422
    errs = errors_by_field(parsed)
    assert set(errs) == {"patient.height_cm", "procedure.level", "imaging.preop.hu_index", "procedure.age_years",
                         "imaging.postop.leakage_venous"}
    assert errs["patient.height_cm"]["allowed"] == "120 – 210 cm"
    assert "metres" in errs["patient.height_cm"]["error"]
    assert "L5" in errs["procedure.level"]["allowed"]
    assert errs["procedure.age_years"]["error"] == "value missing (required)"
    assert errs["imaging.preop.hu_index"]["allowed"] == "-150 – 2500 HU"
    assert errs["imaging.postop.leakage_venous"]["allowed"] == "0, 1"


def test_service_refuses_exactly_what_check_records_refuses():
    """Range/allowed/required checks are the contract's own: the same fields are refused."""
    rec = example_record()
    rec["patient"]["weight_kg"] = 500
    rec["procedure"]["cement_volume_ml"] = 0.1
    rec["patient"]["sex"] = "X"
    rec["procedure"]["technique"] = None
    contract = {e["field"] for e in check_records(records_frame([rec]))}
    parsed = parse_records(body(rec), 10)
    assert {e["field"] for e in parsed.errors} == contract == {
        "patient.weight_kg", "procedure.cement_volume_ml", "patient.sex", "procedure.technique"}


def test_unknown_fields_are_refused_not_ignored():
    rec = example_record()
    rec["patient"]["hu_idx"] = 60
    rec["extra_section"] = {}
    parsed = parse_records(body(rec), 10)
    assert parsed.status == 422
    fields = {e["field"]: e["error"] for e in parsed.errors}
    assert "unknown field" in fields["patient.hu_idx"] and "unknown field" in fields["extra_section"]


@pytest.mark.parametrize("raw, status", [
    (b"", 400), (b"{", 400), (b"not json", 400), (b'{"patient": NaN}', 400), (b"\xff\xfe\x00", 400),
    (b"[" * 50_000, 400), (b"[]", 422), (b"3", 422), (b'"text"', 422), (b"null", 422), (b"[1, 2]", 422),
])
def test_malformed_bodies_get_4xx_with_an_error_list(raw, status):
    parsed = parse_records(raw, 10)
    assert parsed.status == status
    assert parsed.errors and all({"record", "field", "error", "allowed"} <= set(e) for e in parsed.errors)


@pytest.mark.parametrize("path, value", [
    ("patient.height_cm", 1e308 * 10),      # inf once parsed
    ("patient.height_cm", 10**400),
    ("patient.prior_vertebral_fractures_n", 1e300),
    ("patient.prior_vertebral_fractures_n", 2.5),
    ("procedure.surgery_date", "0001-01-01"),
    ("procedure.surgery_date", "2021-02-30"),
    ("procedure.surgery_date", 20210110),
    ("procedure.procedure_id", 12),
    ("procedure.procedure_id", "x" * 5000),
    ("patient.sex", ["F"]),
    ("patient.weight_kg", {"value": 60}),
    ("patient.weight_kg", "60"),
    ("patient.weight_kg", True),
])
def test_absurd_or_mistyped_values_are_field_errors(path, value):
    rec = example_record()
    section, name = path.split(".")
    rec[section][name] = value
    raw = json.dumps(rec).replace("Infinity", "1e999").encode()
    parsed = parse_records(raw, 10)
    assert parsed.status == 422, parsed
    assert path in errors_by_field(parsed)


def test_batch_file_values_beyond_json_are_field_errors():
    """Batch files (CSV/Parquet) can hold what JSON requests cannot: numbers too large for an
    integer, 0/1 fields with 300, dates past the year 2262. Each is a field error."""
    from features.records import check_records, records_frame

    flat = records_frame([example_record()] * 4).astype(object)  # as a CSV reader may leave it
    flat.loc[0, "n_levels_treated"] = 1e300
    flat.loc[1, "brace_prescribed"] = 300
    flat.loc[2, "surgery_date"] = "9999-12-31"
    flat.loc[3, "height_cm"] = 520.0
    got = {(e["record"], e["field"]): e["error"] for e in check_records(flat)}
    assert "whole number" in got[(0, "procedure.n_levels_treated")]
    assert "0 or 1" in got[(1, "procedure.brace_prescribed")]
    assert "as a date from 1900" in got[(2, "procedure.surgery_date")]
    assert "outside the allowed range" in got[(3, "patient.height_cm")]
    assert "metres" not in got[(3, "patient.height_cm")]
    flat.loc[3, "height_cm"] = 1.62
    assert "look like metres" in {(e["record"], e["field"]): e["error"] for e in check_records(flat)}[(3, "patient.height_cm")]


def test_pain_onset_after_surgery_is_refused_as_validation_refuses_it():
    rec = example_record()
    rec["procedure"]["pain_onset_date"] = "2024-03-02"
    rec["procedure"]["surgery_date"] = "2024-03-01"
    parsed = parse_records(body(rec), 10)
    assert parsed.status == 422
    assert "after the surgery" in errors_by_field(parsed)["procedure.pain_onset_date"]["error"]


def test_batch_with_some_bad_records_is_refused_whole_with_per_record_errors():
    good, bad = example_record(), example_record()
    bad["patient"]["weight_kg"] = 5
    parsed = parse_records(body([good, bad, good, 7]), 10)
    assert parsed.status == 422 and parsed.flat is None
    assert {e["record"] for e in parsed.errors} == {1, 3}
    assert "nothing was scored" in parsed.message


def test_batch_size_limit():
    assert parse_records(body([example_record()] * 3), 3).ok
    parsed = parse_records(body([example_record()] * 4), 3)
    assert parsed.status == 422 and "1 – 3 records" in parsed.errors[0]["allowed"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(RECORD_FIELDS), value=json_values)
def test_any_json_value_in_any_field_is_a_clean_answer(field, value):
    """Whatever a field holds, the answer is 200 or a 4xx listing errors: never an exception."""
    rec = example_record()
    if field.timepoint:
        rec["imaging"][field.timepoint][field.spec.name] = value
    else:
        rec[field.section][field.spec.name] = value
    raw = json.dumps(rec, allow_nan=True).replace("Infinity", "1e999").encode()
    parsed = parse_records(raw, 10)
    assert parsed.status in (200, 422)
    if parsed.status == 422:
        assert all(e["field"] for e in parsed.errors)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_any_json_body_is_a_clean_answer(value):
    parsed = parse_records(json.dumps(value).encode(), 10)
    assert parsed.status in (200, 400, 422)


# ---------------------------------------------------------------------- OpenAPI model


def test_request_schema_documents_units_ranges_and_required_fields():
    schema = ProcedureRecord.model_json_schema()
    patient = schema["$defs"]["Patient"]
    height = patient["properties"]["height_cm"]
    assert (height["minimum"], height["maximum"], height["x-unit"]) == (120, 210, "cm")
    assert "Standing body height" in height["description"]
    assert "height_cm" in patient["required"] and "dxa_bmd_g_cm2" not in patient["required"]
    assert patient["properties"]["dxa_bmd_g_cm2"]["nullable"] is True
    assert patient["additionalProperties"] is False
    assert schema["$defs"]["Procedure"]["properties"]["level"]["enum"][-1] == "L5"
    documented = {f"{sec}.{name}" for sec in ("patient", "procedure")
                  for name in schema["$defs"][sec.capitalize()]["properties"]}
    documented |= {f"imaging.{tp}.{name}" for tp in ("preop", "postop")
                   for name in schema["$defs"][f"Imaging{tp.capitalize()}"]["properties"]}
    assert documented == {f.path for f in RECORD_FIELDS}


# ------------------------------------------------------------------ settings and auth


def test_no_key_refuses_to_start_unless_insecure_dev():
    with pytest.raises(ConfigError, match="REFRACTURE_API_KEY"):
        ServingSettings.from_env({})
    dev = ServingSettings.from_env({"REFRACTURE_INSECURE_DEV": "1"})
    assert dev.insecure_dev and dev.api_key is None


def test_short_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="too short"):
        ServingSettings.from_env({"REFRACTURE_API_KEY": "abc"})
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert ServingSettings.from_env({"REFRACTURE_API_KEY_FILE": str(key_file)}).api_key == KEY


def test_scoring_process_setting(monkeypatch):
    from serving import config

    base = {"REFRACTURE_API_KEY": KEY}
    assert ServingSettings.from_env({**base, "REFRACTURE_SCORING_PROCESS": "0"}).scoring_process is False
    assert ServingSettings.from_env({**base, "REFRACTURE_SCORING_PROCESS": "yes"}).scoring_process is True
    for cpus, expected in ((1, False), (2, True), (8, True)):  # auto (the default): a core of its own
        monkeypatch.setattr(config, "_usable_cpus", lambda cpus=cpus: cpus)
        assert ServingSettings.from_env(base).scoring_process is expected
        assert ServingSettings.from_env({**base, "REFRACTURE_SCORING_PROCESS": " Auto "}).scoring_process is expected
    with pytest.raises(ConfigError, match="REFRACTURE_SCORING_PROCESS='maybe': expected 1, 0 or auto"):
        ServingSettings.from_env({**base, "REFRACTURE_SCORING_PROCESS": "maybe"})


def test_key_comparison_is_constant_time(monkeypatch):
    calls = []
    import hmac

    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    s = ServingSettings.from_env({"REFRACTURE_API_KEY": KEY})
    assert s.key_matches(KEY) and not s.key_matches(KEY[:-1] + "x") and not s.key_matches(None)
    assert len(calls) == 2
    assert KEY not in repr(s)


def test_limits_and_pinned_versions_from_env():
    s = ServingSettings.from_env({"REFRACTURE_API_KEY": KEY, "REFRACTURE_MAX_RECORDS": "5",
                                  "REFRACTURE_MODEL_VERSIONS": "adjacent_fracture=3, remote_fracture=1"})
    assert s.max_records == 5 and s.model_versions == {"adjacent_fracture": "3", "remote_fracture": "1"}
    with pytest.raises(ConfigError):
        ServingSettings.from_env({"REFRACTURE_API_KEY": KEY, "REFRACTURE_MAX_RECORDS": "0"})
    with pytest.raises(ConfigError):
        parse_model_versions("adjacent_fracture=latest")


# --------------------------------------------------------------------------- audit


def test_audit_line_hashes_keys_and_holds_no_values():
    line = audit.audit_line(endpoint="/predict", method="POST", status=200, latency_ms=12.3456, salt=b"salt",
                            procedure_ids=["P-000123"], outcomes=["adjacent_fracture"],
                            model_versions={"adjacent_fracture": "4"}, n_records=1)
    data = json.loads(line)
    assert "P-000123" not in line
    assert data["procedure_key_hashes"] == [audit.key_hash(b"salt", "P-000123")]
    assert audit.key_hash(b"other", "P-000123") != audit.key_hash(b"salt", "P-000123")
    assert {"time", "endpoint", "status", "latency_ms", "outcomes", "model_versions"} <= set(data)


# ----------------------------------------------------------------------- risk bands


@pytest.mark.parametrize("outcome", sorted(DEFAULT_RISK_BANDS))
def test_risk_bands_are_ordered_and_cover_zero_to_one(outcome):
    low, high = DEFAULT_RISK_BANDS[outcome]
    assert 0 < low < high < 1
    assert risk_band(0.0, (low, high)) == "low"
    assert risk_band(low, (low, high)) == "intermediate"
    assert risk_band(high, (low, high)) == "high" == risk_band(1.0, (low, high))


def test_example_is_not_mutated_between_calls():
    a = example_record()
    a["patient"]["sex"] = "M"
    assert example_record()["patient"]["sex"] == "F" and copy.deepcopy(a) != example_record()


# ------------------------------------------------------------------ batching, docs


def test_micro_batcher_scores_concurrent_requests_together_and_in_order():
    import asyncio
    import time

    from serving.http.batcher import MicroBatcher

    sizes = []

    def process(jobs):
        time.sleep(0.05)  # a batch in progress lets the others queue up
        sizes.append(len(jobs))
        return [[r["x"] for r in j.rows] for j in jobs]

    async def main():
        batcher = MicroBatcher(process, max_records=100)
        requests = [[{"x": i}, {"x": i}] for i in range(12)]
        return await asyncio.gather(*(batcher.submit(rows, ["a", "b"], []) for rows in requests))

    results = asyncio.run(main())
    assert results == [[i, i] for i in range(12)]
    assert sum(sizes) == 12 and len(sizes) < 12 and max(sizes) > 1


def test_a_failing_batch_fails_its_requests_not_the_batcher():
    import asyncio

    from serving.http.batcher import MicroBatcher

    calls = []

    def process(jobs):
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return ["ok" for _ in jobs]

    async def main():
        batcher = MicroBatcher(process)
        with pytest.raises(RuntimeError):
            await batcher.submit([{"x": 1}], ["a"], [])
        return await batcher.submit([{"x": 1}], ["a"], [])

    assert asyncio.run(main()) == "ok"


def test_the_documented_curl_example_is_the_served_example():
    from pathlib import Path

    text = (Path(__file__).parents[3] / "docs" / "serving.md").read_text(encoding="utf-8")
    body = text.split("<<'JSON'\n", 1)[1].split("\nJSON\n", 1)[0]
    assert json.loads(body) == example_record()
