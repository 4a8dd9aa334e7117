"""The prediction store: migrations, idempotent writes, retention, settings and keys."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from modelstore.errors import ConfigError
from predictionlog.keys import link_key, link_keys
from predictionlog.rows import ModelScores, Predictions, ShadowScores
from predictionlog.schema import METADATA, VERSION_TABLE
from predictionlog.settings import PredictionLogSettings
from predictionlog.store import PredictionStore, SchemaOutOfDate, head_revision
from prediction_log_support import SECRET, migrated_store


def _call(n=3, source="api", version="2", request_id="r1", **kw) -> Predictions:
    risks = np.linspace(0.01, 0.4, n * 4).reshape(n, 4)
    return Predictions(source, [f"V{i}" for i in range(n)],
                       [ModelScores("adjacent_fracture", "refracture-adjacent_fracture", version, risks, ["low"] * n)],
                       surgery_dates=["2025-03-01"] * n, missing_inputs=[["dxa_bmd_g_cm2"]] * n,
                       request_id=request_id, **kw)


def test_migrations_build_exactly_the_tables_the_code_uses(tmp_path):
    store = migrated_store(tmp_path)
    assert store.revision() == head_revision()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE,
                                                                       "compare_type": True}), METADATA)
    assert diff == []
    store.migrate()  # again: nothing to do
    assert store.revision() == head_revision()


def test_an_empty_database_is_refused_with_the_command_that_fixes_it(tmp_path):
    store = PredictionStore(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SchemaOutOfDate, match="refracture predictions migrate"):
        store.require_current()


def test_a_batch_written_twice_is_stored_once(tmp_path):
    store = migrated_store(tmp_path)
    call = _call()
    batch = call.rows(SECRET)
    assert store.insert(batch) == 3
    assert store.insert(batch) == 0
    shadow = ShadowScores(call.prediction_ids, [ModelScores("adjacent_fracture", "refracture-adjacent_fracture", "3",
                                                            np.full((3, 4), 0.1), role="challenger")]).rows(SECRET)
    store.insert(shadow)
    store.insert(shadow)
    assert (store.count(), store.count("prediction_scores")) == (3, 6)
    frame = store.scores_frame()
    assert sorted(frame["role"]) == ["challenger"] * 3 + ["champion"] * 3
    champion = frame[frame["role"] == "champion"].sort_values("prediction_id")
    np.testing.assert_allclose(champion[["p_3m", "p_6m", "p_12m", "p_24m"]].to_numpy(),
                               np.linspace(0.01, 0.4, 12).reshape(3, 4))


def test_the_store_holds_no_procedure_key(tmp_path):
    store = migrated_store(tmp_path)
    store.insert(Predictions("api", ["HOSPITAL-NUMBER-123456"], [], request_id="r").rows(SECRET))
    store.dispose()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("predictions.db*"))
    assert b"HOSPITAL-NUMBER-123456" not in raw
    assert link_key(SECRET, "HOSPITAL-NUMBER-123456").encode() in raw


def test_keys_are_keyed_and_stripped():
    assert link_key(SECRET, " V1 ") == link_key(SECRET, "V1") != link_key(SECRET, "v1")
    assert link_key(SECRET, "V1") != link_key(b"another-secret-of-at-least-32-characters!", "V1")
    assert link_keys(SECRET, ["V1", None, float("nan"), "  "]) == [link_key(SECRET, "V1"), None, None, None]


def test_prune_deletes_old_predictions_with_their_scores(tmp_path):
    store = migrated_store(tmp_path)
    old = _call(request_id="old", logged_at=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
    new = _call(request_id="new", logged_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    store.insert(old.rows(SECRET))
    store.insert(new.rows(SECRET))
    assert store.prune(dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)) == 3
    assert (store.count(), store.count("prediction_scores")) == (3, 3)
    assert set(store.scores_frame()["prediction_id"]) == set(new.prediction_ids)


def test_bad_calls_are_refused_by_name():
    with pytest.raises(ValueError, match="source 'email'"):
        _call(source="email")
    with pytest.raises(ValueError, match="surgery_dates: 1 values for 3 records"):
        Predictions("api", ["a", "b", "c"], [], surgery_dates=["2025-01-01"])
    with pytest.raises(ValueError, match=r"adjacent_fracture: risks of shape \(3, 2\), expected \(3, 4\)"):
        Predictions("api", ["a", "b", "c"], [ModelScores("adjacent_fracture", "m", "1", np.zeros((3, 2)))]).rows(SECRET)


# ---------------------------------------------------------------- settings

def test_settings_need_a_long_enough_secret_while_the_log_is_on(tmp_path):
    with pytest.raises(ConfigError, match="REFRACTURE_PREDICTION_SECRET_FILE"):
        PredictionLogSettings.from_env({})
    assert not PredictionLogSettings.from_env({"REFRACTURE_PREDICTION_LOG": "0"}).enabled
    with pytest.raises(ConfigError, match="too short"):
        PredictionLogSettings.from_env({"REFRACTURE_PREDICTION_SECRET": "short"})
    secret_file = tmp_path / "secret"
    secret_file.write_text("x" * 40 + "\n")
    s = PredictionLogSettings.from_env({"REFRACTURE_PREDICTION_SECRET_FILE": str(secret_file),
                                        "REFRACTURE_PREDICTION_DB": "postgresql+psycopg://u:pw-secret@db:5432/predictions"})
    assert s.secret == b"x" * 40 and not s.store_inputs
    assert "pw-secret" not in repr(s) and "xxxx" not in repr(s)
    with pytest.raises(ConfigError, match="cannot read it"):
        PredictionLogSettings.from_env({"REFRACTURE_PREDICTION_SECRET_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize("env, message", [
    ({"REFRACTURE_PREDICTION_DB": "mysql://x/y"}, "mysql is not supported"),
    ({"REFRACTURE_PREDICTION_DB": "not a url"}, "is not a database URL"),
    ({"REFRACTURE_PREDICTION_RETENTION_DAYS": "90"}, "at least 731 days"),
    ({"REFRACTURE_PREDICTION_QUEUE": "many"}, "is not a number"),
    ({"REFRACTURE_PREDICTION_STORE_INPUTS": "maybe"}, "expected 1 or 0"),
])
def test_bad_settings_are_named(env, message):
    with pytest.raises(ConfigError, match=message):
        PredictionLogSettings.from_env({"REFRACTURE_PREDICTION_LOG": "0", **env})


def test_the_spool_sits_beside_a_sqlite_store(tmp_path):
    s = PredictionLogSettings.from_env({"REFRACTURE_PREDICTION_LOG": "0",
                                        "REFRACTURE_PREDICTION_DB": f"sqlite:///{tmp_path}/p.db"})
    assert s.spool_dir == tmp_path / "prediction-spool"


# ---------------------------------------------------------------- the facade callers use

def test_the_log_stores_inputs_only_when_the_deployment_says_so(tmp_path):
    import pandas as pd

    from predictionlog.log import PredictionLog

    base = {"REFRACTURE_PREDICTION_DB": f"sqlite:///{tmp_path / 'predictions.db'}", "REFRACTURE_PREDICTION_SECRET": SECRET.decode()}
    migrated_store(tmp_path)
    scores = [ModelScores("adjacent_fracture", "refracture-adjacent_fracture", "1", np.full((2, 4), 0.1))]
    inputs = pd.DataFrame({"age_years": [81.5, float("nan")], "sex": ["F", None]})
    for store_inputs in ("0", "1"):
        log = PredictionLog.open(PredictionLogSettings.from_env({**base, "REFRACTURE_PREDICTION_STORE_INPUTS": store_inputs}))
        sent = log.record(source="page", procedure_ids=["P1", "P2"], scores=scores, inputs=inputs, request_id=store_inputs,
                          client="ward-3")
        assert sent is not None and log.flush(10)
        log.close()
    with log.store.engine.connect() as conn:
        rows = dict(conn.exec_driver_sql("SELECT request_id, inputs FROM predictions WHERE record_index = 0").all())
        client = conn.exec_driver_sql("SELECT DISTINCT client FROM predictions").scalar_one()
    assert rows["0"] is None and json.loads(rows["1"]) == {"age_years": 81.5, "sex": "F"}
    assert client == "ward-3"
    assert PredictionLog.open(PredictionLogSettings.from_env({"REFRACTURE_PREDICTION_LOG": "0"})) is None
