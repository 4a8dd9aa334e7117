"""End to end: the real ``refracture serve`` on 127.0.0.1 (free port) in a subprocess,
called with ``bentoml.SyncHTTPClient`` and plain HTTP; schemathesis against the served
OpenAPI document; a restart picks up a new champion; ``refracture predict`` on files;
the start refused without an API key."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pandas as pd
import pytest
from serving_support import (API_KEY, OUTCOMES, ROOT, Server, ensure_trained_store, free_port, refracture, store_env,
                             to_json_records, valid_flat_records)

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    return ensure_trained_store(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def own_store(store, tmp_path_factory):
    """A registry of our own (a copy of the session store's database; the artifacts are
    shared, read-only), so the restart test can move its champion alias freely."""
    copy = tmp_path_factory.mktemp("e2e-store")
    (copy / "mlflow").mkdir()
    shutil.copy(store / "mlflow" / "mlflow.db", copy / "mlflow" / "mlflow.db")
    shutil.copytree(store / "raw", copy / "raw")
    return copy


@pytest.fixture(scope="module")
def server(own_store, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = store_env(own_store, REFRACTURE_API_KEY=API_KEY, REFRACTURE_AUDIT_SALT="e2e-salt")
    with Server(env, log=log) as s:
        yield s


@pytest.fixture(scope="module")
def flat(store):
    return valid_flat_records(store, 30)


def test_sync_http_client_and_plain_http_agree(server):
    import bentoml

    from serving.scoring.examples import example_record

    rec = example_record()
    with bentoml.SyncHTTPClient(server.url, token=API_KEY) as client:
        via_client = client.predict(rec)
    via_http = httpx.post(f"{server.url}/predict", json=rec, headers=AUTH, timeout=60).json()
    assert via_client == via_http
    assert set(via_http["predictions"][0]["outcomes"]) == set(OUTCOMES)


def test_auth_over_http(server):
    from serving.scoring.examples import example_record

    assert httpx.post(f"{server.url}/predict", json=example_record(), timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key-0123456789"}
    assert httpx.post(f"{server.url}/explain", json=example_record(), headers=wrong, timeout=30).status_code == 401
    for path in ("/healthz", "/readyz", "/docs.json"):
        assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 200
    # /model and /metrics need a credential (model:read, metrics:read).
    for path in ("/model", "/metrics"):
        assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 401
        assert httpx.get(f"{server.url}{path}", headers=AUTH, timeout=30).status_code == 200
    assert httpx.get(f"{server.url}/readyz", timeout=30).json()["identity"]["state"] == "ok"


def test_concurrent_requests_all_answered_correctly(server, flat):
    """Requests scored together in a batch get the same answer as alone."""
    from concurrent.futures import ThreadPoolExecutor

    records = to_json_records(flat.head(16))
    alone = httpx.post(f"{server.url}/predict", json=records, headers=AUTH, timeout=60).json()["predictions"]

    def one(i):
        return httpx.post(f"{server.url}/predict", json=records[i], headers=AUTH, timeout=60).json()["predictions"][0]

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(one, range(16)))
    for a, b in zip(alone, together):
        assert a["procedure_id"] == b["procedure_id"]
        for o in OUTCOMES:
            assert a["outcomes"][o]["probability"] == pytest.approx(b["outcomes"][o]["probability"], abs=1e-12)


def _refused_only_beyond_the_schema(body) -> bool:
    """True if the contract accepts ``body`` once the rules JSON Schema cannot express are
    set aside: the rules between values of a record (``features.contract.PLAUSIBILITY_RULES``,
    e.g. pain onset on or before the surgery) and "no date after today"."""
    from unittest import mock

    from features import contract
    from features.coerce import DATE_MAX
    from features.records import check_records, records_frame

    records = body if isinstance(body, list) else [body]
    if not all(isinstance(r, dict) for r in records):
        return False
    with mock.patch.object(contract, "PLAUSIBILITY_RULES", ()), mock.patch.object(contract, "latest_date", lambda: DATE_MAX):
        return not check_records(records_frame(records))


def valid_data_accepted_but_for_cross_field_rules(ctx, response, case):
    """schemathesis' positive-data check, except for the contract's rules that JSON Schema
    cannot express (documented in the fields' descriptions and docs/data-dictionary.md): a
    schema-valid record breaking only those may get 422."""
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    if response.status_code == 422 and case.meta is not None and case.meta.generation.mode.is_positive:
        if _refused_only_beyond_the_schema(case.body):
            return None
    return positive_data_acceptance(ctx, response, case)


def test_schemathesis_no_5xx_and_responses_match_the_schema(server):
    import schemathesis
    from schemathesis.specs.openapi.checks import positive_data_acceptance
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/explain", "/model", "/healthz"}
    for op in operations:
        budget = 15 if op.path in ("/predict", "/explain") else 3
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if op.method.upper() == "POST" else [GenerationMode.POSITIVE]
        for mode in modes:
            @settings(max_examples=budget, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case):
                case.call_and_validate(base_url=server.url, headers=AUTH, timeout=60,
                                       excluded_checks=[positive_data_acceptance],
                                       additional_checks=[valid_data_accepted_but_for_cross_field_rules])

            check()


def test_cli_predict_matches_http_for_csv_parquet_and_json(server, store, flat, tmp_path, monkeypatch):
    """The real command (typer's runner, in-process: loading the models once keeps this
    short) on CSV, Parquet and JSON, with and without --explain; a bad file writes nothing."""
    from typer.testing import CliRunner

    from refracture.cli import app

    env = store_env(store)
    records = to_json_records(flat)
    http = httpx.post(f"{server.url}/predict", json=records, headers=AUTH, timeout=60).json()["predictions"]
    expected = np.array([[p["outcomes"][o]["probability"] for o in OUTCOMES] for p in http])

    as_text = flat.copy()
    for col in ("surgery_date", "pain_onset_date"):
        as_text[col] = as_text[col].dt.strftime("%Y-%m-%d")
    inputs = {"csv": tmp_path / "in.csv", "parquet": tmp_path / "in.parquet", "json": tmp_path / "in.json"}
    as_text.to_csv(inputs["csv"], index=False)
    as_text.to_parquet(inputs["parquet"], index=False)
    inputs["json"].write_text(json.dumps(records))

    def check(out):
        scored = pd.read_parquet(out)
        assert list(scored["procedure_id"]) == list(flat["procedure_id"])
        got = scored[[f"{o}_probability" for o in OUTCOMES]].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)

    monkeypatch.setenv("REFRACTURE_MLFLOW_DIR", env["REFRACTURE_MLFLOW_DIR"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    for kind in ("csv", "parquet", "json"):
        out = tmp_path / f"out-{kind}.parquet"
        result = runner.invoke(app, ["predict", "--input", str(inputs[kind]), "--output", str(out)])
        assert result.exit_code == 0, result.output
        check(out)

    out = tmp_path / "explained.csv"
    result = runner.invoke(app, ["predict", "--input", str(inputs["parquet"]), "--output", str(out), "--explain"])
    assert result.exit_code == 0, result.output
    explained = pd.read_csv(out)
    for o in OUTCOMES:
        contrib = explained[[c for c in explained.columns if c.startswith(f"{o}__")]].sum(axis=1)
        logit = explained[f"{o}_base_value"] + contrib
        # Additive within the 1e-5 log-odds rule (issue 14: XGBoost's own TreeSHAP).
        p = explained[f"{o}_probability"]
        np.testing.assert_allclose(logit, np.log(p / (1 - p)), rtol=0, atol=1e-5)

    bad = flat.head(5).copy()
    bad.loc[2, "weight_kg"] = 900
    bad.to_parquet(tmp_path / "bad.parquet", index=False)
    out = tmp_path / "never.csv"
    result = runner.invoke(app, ["predict", "--input", str(tmp_path / "bad.parquet"), "--output", str(out)])
    assert result.exit_code == 1
    assert "record 2 patient.weight_kg" in result.output
    assert not out.exists()


def test_serve_refuses_to_start_without_a_key(store):
    result = refracture("serve", "--port", "1", env=store_env(store), timeout=120)
    assert result.returncode == 2
    assert "REFRACTURE_API_KEY" in result.stderr and "--insecure-dev" in result.stderr


def test_restart_picks_up_a_new_champion(server, own_store, tmp_path):
    """Move the champion alias to a new version: the running service keeps its pinned
    version; a restarted one serves the new champion and says so."""
    from mlflow.tracking import MlflowClient

    from serving.scoring.examples import example_record

    uri = f"sqlite:///{own_store / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "refracture-adjacent_fracture"
    old = client.get_model_version_by_alias(name, "champion")
    new = client.create_model_version(name, old.source, run_id=old.run_id)
    client.set_registered_model_alias(name, "champion", new.version)

    def served_version(url):
        info = httpx.get(f"{url}/model", headers=AUTH, timeout=30).json()["outcomes"]["adjacent_fracture"]["model"]["version"]
        answer = httpx.post(f"{url}/predict", json=example_record(), headers=AUTH, timeout=60).json()
        assert answer["predictions"][0]["outcomes"]["adjacent_fracture"]["model"]["version"] == info
        return info

    assert served_version(server.url) == str(old.version)  # pinned at start, not hot-swapped
    env = store_env(own_store, REFRACTURE_API_KEY=API_KEY)
    with Server(env, log=tmp_path / "restarted.log") as restarted:
        assert served_version(restarted.url) == str(new.version) != str(old.version)


def test_bento_runs_without_the_registry(store, server, tmp_path):
    """`refracture bento` pins the champions into a BentoML store and builds; the Bento then
    serves them with no MLflow registry at all, with the same answers."""
    from serving.scoring.examples import example_record

    project = tmp_path / "project"  # build from a copy: the pin file is written into serving/
    for name in ("features", "modelstore", "predictionlog", "training", "serving", "refracture"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "bento_models.json"))
    for name in ("bentofile.yaml", "pyproject.toml", "requirements.lock", "requirements-serve.lock"):
        shutil.copy(ROOT / name, project / name)
    env = store_env(store, BENTOML_HOME=str(tmp_path / "bentoml"), PYTHONPATH=str(project))
    result = subprocess.run([sys.executable, "-c", "from refracture.cli import main; main()", "bento"], cwd=project,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((project / "serving" / "bento_models.json").read_text())
    assert set(manifest) == {*OUTCOMES, "death"}  # the death model (context) is pinned too

    no_registry = tmp_path / "no-registry"
    run_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    # The tracking server is down (nothing listens there): the Bento does not need it.
    unreachable = f"http://127.0.0.1:{free_port()}"
    run_env.update(REFRACTURE_MLFLOW_DIR=str(no_registry), REFRACTURE_API_KEY=API_KEY, MLFLOW_TRACKING_URI=unreachable)
    with Server(run_env, bento="refracture-risk:latest", cwd=tmp_path, log=tmp_path / "bento.log") as bento:
        info = httpx.get(f"{bento.url}/model", headers=AUTH, timeout=30).json()
        answer = httpx.post(f"{bento.url}/predict", json=example_record(), headers=AUTH, timeout=60).json()
        metrics = httpx.get(f"{bento.url}/metrics", headers=AUTH, timeout=30).text
    assert all(o["source"].startswith("bento:") for o in info["outcomes"].values())
    # The Bento carries each model's drift reference: reference-aware input metrics, no registry.
    assert 'refracture_input_reference_share{input="hu_index_preop"' in metrics
    # The one record scored (in the worker's scoring process) is counted by the worker's
    # /metrics: the drift counts come back with the answers.
    assert re.search(r'^refracture_records_scored_total(\{[^}]*\})? 1\.0$', metrics, re.M), metrics[:3000]
    assert re.search(r'^refracture_input_value_count\{input="age_years"\} 1\.0$', metrics, re.M)
    assert not no_registry.exists()
    reference = httpx.post(f"{server.url}/predict", json=example_record(), headers=AUTH, timeout=60).json()
    for o in ("cemented_refracture", "remote_fracture"):  # adjacent may have been re-pinned by the restart test
        assert answer["predictions"][0]["outcomes"][o]["probability"] == reference["predictions"][0]["outcomes"][o]["probability"]
    assert info["context"]["death"]["source"].startswith("bento:")
    assert answer["predictions"][0]["context"] == reference["predictions"][0]["context"]
