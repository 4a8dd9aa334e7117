"""The served prediction log, end to end: `refracture serve` with the log on (embedded
SQLite), /predict, /explain and the page's requests, then the store holds every answered
record once, with the answer's numbers, the audit line's request id and where it came
from; what-if copies are not logged; /metrics counts them and shows the realized gauges;
`refracture predict` logs a batch; a start without the site secret is refused."""

from __future__ import annotations

import datetime as dt
import json
import time

import httpx
import pytest
from serving_support import API_KEY, Server, ensure_trained_store, refracture, store_env, to_json_records, valid_flat_records

from predictionlog.keys import link_key
from predictionlog.store import PredictionStore

pytestmark = pytest.mark.slow
SECRET = "a-served-site-secret-of-at-least-32-characters"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: Seconds a start may take: a busy shared machine needed more than the usual 90.
READY_S = 300


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ensure_trained_store(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def logged(store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("predictions")
    env = store_env(store, REFRACTURE_API_KEY=API_KEY, REFRACTURE_AUDIT_SALT="log-salt",
                    REFRACTURE_AUDIT_LOG=str(folder / "audit.jsonl"), REFRACTURE_PREDICTION_LOG="1",
                    REFRACTURE_PREDICTION_DB=f"sqlite:///{folder / 'predictions.db'}",
                    REFRACTURE_PREDICTION_SECRET=SECRET, REFRACTURE_PREDICTION_FLUSH_SECONDS="0.1")
    return folder, env


def test_every_answered_record_is_logged_once(store, logged):
    folder, env = logged
    records = to_json_records(valid_flat_records(store, 5))
    # Realized figures stored before the start: the service exports them as gauges.
    db = PredictionStore(env["REFRACTURE_PREDICTION_DB"])
    db.migrate()
    db.replace_performance([{"outcome": "adjacent_fracture", "role": "champion", "model_version": "1",
                             "horizon_months": 24.0, "metric": "observed_expected", "value": 0.91, "ci_low": 0.7,
                             "ci_high": 1.15, "matured": 321, "events": 30,
                             "computed_at": dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)}])
    with Server(env, log=folder / "server.log", ready_timeout=READY_S) as server:
        api = httpx.post(f"{server.url}/predict", json=records[:3], headers=AUTH, timeout=60)
        page = httpx.post(f"{server.url}/explain", json=records[3], timeout=60,
                          headers={**AUTH, "X-Refracture-Source": "page"})
        what_if = httpx.post(f"{server.url}/predict", json=dict(records[3], patient={**records[3]["patient"],
                                                                                    "weight_kg": 90.0}),
                             headers={**AUTH, "X-Refracture-Source": "page", "X-Refracture-Purpose": "what-if"}, timeout=60)
        refused = httpx.post(f"{server.url}/predict", json={"patient": {}}, headers=AUTH, timeout=60)
        assert (api.status_code, page.status_code, what_if.status_code, refused.status_code) == (200, 200, 200, 422)
        deadline = time.monotonic() + 30
        while db.count() < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    frame = db.scores_frame()
    preds = frame.drop_duplicates("prediction_id")
    assert len(preds) == 4  # 3 + 1; neither the what-if copy nor the refused request
    assert sorted(preds["source"]) == ["api", "api", "api", "page"]
    answer = api.json()["predictions"][0]
    pid = answer["procedure_id"]
    row = frame[(frame["key_hash"] == link_key(SECRET.encode(), pid)) & (frame["outcome"] == "adjacent_fracture")].iloc[0]
    assert row["p_24m"] == pytest.approx(answer["outcomes"]["adjacent_fracture"]["probability"])
    assert row["model_version"] == answer["outcomes"]["adjacent_fracture"]["model"]["version"]
    assert row["risk_band"] == answer["outcomes"]["adjacent_fracture"]["risk_band"]
    assert str(row["surgery_date"]) == records[0]["procedure"]["surgery_date"]
    assert set(frame["outcome"]) >= {"cemented_refracture", "adjacent_fracture", "remote_fracture"}
    with db.engine.connect() as conn:
        request_ids = {r[0] for r in conn.exec_driver_sql("SELECT request_id FROM predictions")}
        clients = {r[0] for r in conn.exec_driver_sql("SELECT client FROM predictions")}
    assert clients == {"default"}  # the API key's caller (serving.http.callers), by name
    assert api.headers["x-request-id"] in request_ids and page.headers["x-request-id"] in request_ids
    audited = {json.loads(line)["request_id"] for line in (folder / "audit.jsonl").read_text().splitlines()}
    assert request_ids <= audited
    # Closed first: reading the file from this process would release its SQLite locks (POSIX
    # advisory locks go with any descriptor of the file) under a live connection.
    db.dispose()
    raw = b"".join(p.read_bytes() for p in folder.glob("predictions.db*"))
    assert pid.encode() not in raw  # the store holds the keyed hash, never the key
    assert 'refracture_prediction_log_records_total{state="written"} 4.0' in metrics
    assert 'refracture_realized_observed_expected{horizon_months="24",outcome="adjacent_fracture",role="champion"} 0.91' \
        in metrics


def test_batch_scoring_logs_its_records(store, logged, tmp_path):
    folder, env = logged
    flat = valid_flat_records(store, 40)
    flat.to_parquet(tmp_path / "in.parquet")
    db = PredictionStore(env["REFRACTURE_PREDICTION_DB"])
    before = db.count()
    db.dispose()
    done = refracture("predict", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out.parquet"),
                      env=env)
    assert done.returncode == 0, done.stderr
    assert "prediction log: 40 written" in done.stderr
    frame = db.scores_frame()
    batch = frame[frame["source"] == "batch"].drop_duplicates("prediction_id")
    assert db.count() - before == len(batch) == 40


def test_a_start_without_the_site_secret_is_refused(store, logged):
    _, env = logged
    env = {k: v for k, v in env.items() if k != "REFRACTURE_PREDICTION_SECRET"}
    done = refracture("serve", "--port", "1", env=env, timeout=120)
    assert done.returncode == 2
    assert "REFRACTURE_PREDICTION_SECRET_FILE" in done.stderr


@pytest.fixture(scope="module")
def with_challenger(store, tmp_path_factory):
    """A copy of the registry (the artifacts shared, read-only) whose adjacent-fracture
    model has a `challenger`: a new version of the champion's own model."""
    import shutil

    from mlflow import MlflowClient

    copy = tmp_path_factory.mktemp("shadow-store")
    (copy / "mlflow").mkdir()
    shutil.copy(store / "mlflow" / "mlflow.db", copy / "mlflow" / "mlflow.db")
    uri = f"sqlite:///{copy / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # both: the registry would follow the global URI
    name = "refracture-adjacent_fracture"
    champion = client.get_model_version_by_alias(name, "champion")
    new = client.create_model_version(name, champion.source, run_id=champion.run_id, tags=champion.tags)
    client.set_registered_model_alias(name, "challenger", new.version)
    return copy, str(champion.version), str(new.version)


def test_challengers_are_scored_in_shadow_and_never_returned(store, with_challenger, tmp_path):
    copy, champion, challenger = with_challenger
    env = store_env(copy, REFRACTURE_API_KEY=API_KEY, REFRACTURE_PREDICTION_LOG="1",
                    REFRACTURE_PREDICTION_DB=f"sqlite:///{tmp_path / 'predictions.db'}",
                    REFRACTURE_PREDICTION_SECRET=SECRET, REFRACTURE_PREDICTION_FLUSH_SECONDS="0.1",
                    REFRACTURE_SHADOW_CHALLENGERS="1")
    env["BENTOML_HOME"] = str(store / "bentoml")
    records = to_json_records(valid_flat_records(store, 3))
    db = PredictionStore(env["REFRACTURE_PREDICTION_DB"], create=False)
    with Server(env, log=tmp_path / "server.log", ready_timeout=READY_S) as server:
        answer = httpx.post(f"{server.url}/predict", json=records, headers=AUTH, timeout=60)
        assert answer.status_code == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not db.exists() or db.count("prediction_scores") < 3 * 4 + 3):
            time.sleep(0.3)
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    got = answer.json()["predictions"]
    assert {p["outcomes"]["adjacent_fracture"]["model"]["version"] for p in got} == {champion}  # never returned
    frame = db.scores_frame()
    shadow = frame[frame["role"] == "challenger"]
    assert len(shadow) == 3 and set(shadow["model_version"]) == {challenger}
    champ = frame[(frame["role"] == "champion") & (frame["outcome"] == "adjacent_fracture")]
    both = champ.merge(shadow, on="prediction_id", suffixes=("", "_shadow"))
    assert len(both) == 3  # the same predictions, paired
    assert both["p_24m"].to_numpy() == pytest.approx(both["p_24m_shadow"].to_numpy())  # the same model underneath
    assert 'refracture_shadow_records_total{state="scored"} 3.0' in metrics
