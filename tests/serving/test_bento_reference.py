"""Issue 13: a Bento carries each model's drift reference, so a deployed Bento's /metrics
compares the inputs with the training data without any registry access.

Exports the trained store's champions into a temporary BentoML model store (what
``refracture bento`` does before ``bentoml build``), then loads them as the Bento's
service does, with the tracking server unreachable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving_support import ensure_trained_store, free_port, store_env

ROOT = Path(__file__).resolve().parents[2]

_EXPORT = """
import json, sys
from modelstore.tracking import configure_tracking
from modelstore.drift_reference import load_reference
from mlflow.tracking import MlflowClient
from serving.scoring.loading import export_to_bentoml, resolve_pins
configure_tracking()
pins = resolve_pins()
export_to_bentoml(pins, manifest_path=__import__('pathlib').Path(sys.argv[1]))
mv = MlflowClient().get_model_version(pins[0].name, pins[0].version)
json.dump(load_reference(dict(mv.tags)), open(sys.argv[2], 'w'))
"""

_SERVE = """
import json, sys
from pathlib import Path
from prometheus_client import CollectorRegistry, generate_latest
from features.records import inspect_records
from serving.monitoring.drift_metrics import DriftMetrics, served_reference
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from features.records import tables_to_records
from serving.scoring.loading import load_from_bento, read_manifest
import pandas as pd
models = load_from_bento(read_manifest(Path(sys.argv[1])))
assert all(m.source.startswith('bento:') for m in models)
ref = served_reference(models)
json.dump(ref, open(sys.argv[2], 'w'))
registry = CollectorRegistry()
drift = DriftMetrics(ref, [m.outcome for m in models], registry=registry)
records = tables_to_records(validate_raw(simulate(load_profile('xiong2021-pvp'), 30, 5)[0])).head(30)
drift.observe(inspect_records(records).typed, [{'outcomes': {}}] * len(records))
print(generate_latest(registry).decode())
"""


def test_a_bento_carries_the_drift_reference_and_its_metrics_use_it(tmp_path_factory, tmp_path):
    store = ensure_trained_store(tmp_path_factory.getbasetemp())
    env = store_env(store, BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="True",
                    PYTHONPATH=str(ROOT))
    manifest, registry_ref, bento_ref = tmp_path / "bento_models.json", tmp_path / "registry.json", tmp_path / "bento.json"
    out = subprocess.run([sys.executable, "-c", _EXPORT, str(manifest), str(registry_ref)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    entry = json.loads(manifest.read_text())["cemented_refracture"]
    name, version = entry["tag"].split(":")
    assert (tmp_path / "bentoml" / "models" / name.lower() / version / "drift_reference.json").exists()

    # As in a deployed Bento: no registry (an unreachable tracking server, an empty store dir).
    run_env = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
               "REFRACTURE_MLFLOW_DIR": str(tmp_path / "no-registry"), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    out = subprocess.run([sys.executable, "-c", _SERVE, str(manifest), str(bento_ref)], env=run_env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(bento_ref.read_text()) == json.loads(registry_ref.read_text())
    text = out.stdout
    # Reference-aware series exist only when the reference is known.
    assert 'refracture_input_reference_share{input="hu_index_preop",le="+Inf"} 1.0' in text
    assert 'refracture_input_value_bucket{input="age_years",le="+Inf"} 30.0' in text
    assert not (tmp_path / "no-registry").exists()
