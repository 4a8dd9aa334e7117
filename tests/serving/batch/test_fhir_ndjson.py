"""``refracture predict --fhir-ndjson`` end to end, with real champions (the serving tests'
store): 1,000 simulated procedures per profile written as Bulk FHIR, scored by the CLI on
the pandas engine (and one profile on Spark ``local[2]``), against the same procedures sent
to ``/predict``'s own path (``serving.http.validation.parse_records`` -> ``ServedModels.score``):
every probability of every horizon equal to 1e-12, every RiskAssessment valid FHIR R4."""

from __future__ import annotations

import os

import numpy as np
import orjson
import pandas as pd
import pytest
from serving_support import ensure_trained_store, refracture, store_env, to_json_records

from features.fhir.export import export_resources
from features.io import read_raw, write_raw
from features.raw_records import scorable_records
from features.simulator import simulate
from features.validate import validate_raw

pytestmark = pytest.mark.slow
PROFILES = ("xiong2021-pvp", "yassavoly2025-pkp", "site-c-older-frail-pkp")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ensure_trained_store(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def scorer(store):
    saved = {k: os.environ.get(k) for k in ("REFRACTURE_MLFLOW_DIR", "MLFLOW_TRACKING_URI", "REFRACTURE_MODEL_VERSIONS")}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("REFRACTURE_MODEL_VERSIONS", None)
    os.environ["REFRACTURE_MLFLOW_DIR"] = str(store / "mlflow")
    from serving.scoring.loading import load_from_registry
    from serving.scoring.served_models import ServedModels

    yield ServedModels(load_from_registry())
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _bulk(tmp_path, profile: str, n: int = 1000, seed: int = 23):
    tables, _ = simulate(profile, n, seed)
    raw = tmp_path / f"raw-{profile}"
    write_raw(tables, raw)
    bulk = tmp_path / f"bulk-{profile}"
    bulk.mkdir()
    files: dict[str, list[bytes]] = {}
    for r in export_resources(validate_raw(read_raw(raw))):
        files.setdefault(r["resourceType"], []).append(orjson.dumps(r))
    for rtype, lines in files.items():
        (bulk / f"{rtype}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    return raw, bulk


def _via_predict_path(scorer, raw) -> dict[str, dict]:
    """The records as JSON through /predict's parsing and checks, scored by the served models."""
    from features.records import inspect_records
    from serving.http.validation import parse_records, rows_frame

    flat = scorable_records(read_raw(raw)).records
    body = orjson.dumps(to_json_records(_typed_flat(raw)))
    parsed = parse_records(body, max_records=100_000)
    assert parsed.ok, parsed.errors[:3]
    frame = rows_frame(parsed.rows)
    inspected = inspect_records(frame)
    answers = scorer.score(frame, parsed.procedure_ids, typed=inspected.typed)
    assert len(answers) == len(flat)
    return {a["procedure_id"]: a for a in answers}


def _typed_flat(raw) -> pd.DataFrame:
    from features.records import tables_to_records

    return tables_to_records(validate_raw(read_raw(raw))).reset_index(drop=True)


def _compare(expected: dict[str, dict], out_dir, scored_path) -> int:
    from serving.fhir.risk_assessment import validate

    resources = [orjson.loads(line) for line in (out_dir / "RiskAssessment.ndjson").read_bytes().splitlines()]
    worst, n = 0.0, 0
    for k, r in enumerate(resources):
        if k < 200:
            validate(r)
        procedure = r["parent"]["reference"].split("/", 1)[1]
        outcome = r["prediction"][0]["outcome"]["coding"][0]["code"]
        answer = expected[procedure]
        if outcome == "death":
            want = {24.0: answer["context"]["death"]["probability"]}
        else:
            want = {float(h): p for h, p in answer["outcomes"][outcome]["curve"].items()}
        got = {float(p["whenRange"]["high"]["value"]): p["probabilityDecimal"] for p in r["prediction"]}
        assert got.keys() == want.keys()
        worst = max(worst, max(abs(got[h] - want[h]) for h in want))
        n += 1
    assert worst <= 1e-12, worst
    scored = pd.read_parquet(scored_path)
    for o in ("cemented_refracture", "adjacent_fracture", "remote_fracture"):
        want = np.array([expected[str(p)]["outcomes"][o]["curve"]["24"] for p in scored["procedure_id"]])
        assert np.max(np.abs(scored[f"{o}_p_24m"].to_numpy() - want)) <= 1e-12
    return n


@pytest.mark.parametrize("profile", PROFILES)
def test_pandas_engine_equals_predict(tmp_path, store, scorer, profile):
    raw, bulk = _bulk(tmp_path, profile)
    expected = _via_predict_path(scorer, raw)
    out = tmp_path / "out"
    result = refracture("predict", "--fhir-ndjson", str(bulk), "--output", str(out / "scored.parquet"), env=store_env(store))
    assert result.returncode == 0, result.stderr[-2000:]
    n = _compare(expected, out, out / "scored.parquet")
    assert n == 4 * len(expected)  # three outcomes and the death context per procedure


def test_refused_resources_are_named_and_the_rest_scored(tmp_path, store, scorer):
    raw, bulk = _bulk(tmp_path, "xiong2021-pvp", n=200, seed=29)
    lines = (bulk / "Observation.ndjson").read_bytes().splitlines()
    bad = orjson.loads(lines[0])
    bad["valueQuantity"]["code"] = "kg" if bad["code"]["coding"][0]["code"] != "29463-7" else "cm"
    lines[0] = orjson.dumps(bad)
    (bulk / "Observation.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    result = refracture("predict", "--fhir-ndjson", str(bulk), "--output", str(out / "scored.parquet"), env=store_env(store))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Observation.ndjson:1 " in result.stderr and "cannot be converted" in result.stderr
    scored = pd.read_parquet(out / "scored.parquet")
    assert len(scored) == 199
    assert len((out / "RiskAssessment.ndjson").read_bytes().splitlines()) == 4 * 199


def test_spark_engine_equals_predict(tmp_path, store, scorer):
    pytest.importorskip("pyspark")
    raw, bulk = _bulk(tmp_path, "yassavoly2025-pkp")
    expected = _via_predict_path(scorer, raw)
    out = tmp_path / "out"
    result = refracture("predict", "--engine", "spark", "--master", "local[2]", "--fhir-ndjson", str(bulk),
                        "--output", str(out / "scored"), env=store_env(store), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    _compare(expected, out, out / "scored")
