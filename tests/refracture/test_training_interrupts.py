"""A real `refracture train` process stopped mid-search, on a local store: Ctrl-C (SIGINT) and
SIGTERM end its runs as KILLED; SIGKILL leaves them RUNNING, `refracture models` lists them
and `refracture close-runs` closes them (nested runs included), but not while their process
still runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from serving_support import ROOT, refracture

CLI = [sys.executable, "-c", "from refracture.cli import main; main()"]
#: An XGBoost search long enough to be stopped in.
BUDGET = ["--outcome", "adjacent_fracture", "--candidates", "xgboost", "--search-trials", "200", "--bootstrap", "50",
          "--cv-folds", "2", "--n-jobs", "1"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("interrupts") / "raw"
    done = refracture("synth", "--n", "800", "--seed", "4", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def _env(store: Path) -> dict[str, str]:
    # Without the tracking URI another module of this worker may have set (mlflow.set_tracking_uri
    # exports it to the environment): the store is the one --store and REFRACTURE_MLFLOW_DIR name.
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return {**env, "REFRACTURE_MLFLOW_DIR": str(store), "PYTHONUNBUFFERED": "1"}


def _train_until_the_search(cohort: Path, store: Path) -> subprocess.Popen:
    """A training process, returned once it prints that the XGBoost search began (its
    parent run and the candidate's run are open)."""
    proc = subprocess.Popen([*CLI, "train", "--raw", str(cohort), *BUDGET], cwd=ROOT, env=_env(store),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 600
    for line in proc.stderr:
        seen.append(line)
        if "adjacent_fracture: xgboost: search, 200 trials" in line:
            time.sleep(2)  # a few trials in
            return proc
        assert time.monotonic() < deadline, "".join(seen)
    proc.wait()
    pytest.fail("training ended before its search:\n" + "".join(seen))


def _runs(store: Path) -> dict[str, str]:
    """run name -> status of every run in the store."""
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}", registry_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return {r.info.run_name: r.info.status for r in client.search_runs(experiments, run_view_type=ViewType.ALL)}


@pytest.mark.parametrize(("sig", "code", "said"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_stopped_training_marks_its_runs_killed(cohort, tmp_path, sig, code, said):
    store = tmp_path / "mlflow"
    proc = _train_until_the_search(cohort, store)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-3000:]
    assert f"stopped ({said})" in err and "marked KILLED" in " ".join(err.split())
    assert "Traceback" not in err
    runs = _runs(store)
    parent = [name for name in runs if name.startswith("adjacent_fracture-postop-")]
    assert len(parent) == 1 and runs[parent[0]] == "KILLED", runs
    assert runs["xgboost"] == "KILLED", runs
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}", registry_uri=f"sqlite:///{store / 'mlflow.db'}")
    assert not client.search_registered_models()  # nothing registered
    listed = refracture("models", "--store", str(store), env=_env(store))
    assert listed.returncode == 0 and "marked RUNNING" not in listed.stdout + listed.stderr


def test_runs_left_running_by_a_kill_are_listed_and_closed(cohort, tmp_path):
    store = tmp_path / "mlflow"
    proc = _train_until_the_search(cohort, store)
    try:  # while it runs: listed as running, and not closed without --force
        listed = refracture("models", "--store", str(store), env=_env(store))
        text = " ".join((listed.stdout + listed.stderr).split())
        assert "their process still runs on this machine" in text and "close them" not in text
        (parent_name,) = [name for name in _runs(store) if name.startswith("adjacent_fracture-postop-")]
        parent_id = text.split(f"{parent_name} (", 1)[1].split(")", 1)[0]
        refused = refracture("close-runs", parent_id, "--store", str(store), env=_env(store))
        assert refused.returncode == 1 and "still runs on this machine" in " ".join(refused.stderr.split())
        assert _runs(store)[parent_name] == "RUNNING"
    finally:
        proc.kill()  # SIGKILL: nothing runs on the way out
        proc.communicate(timeout=60)
    runs = _runs(store)
    assert runs == {parent_name: "RUNNING", "xgboost": "RUNNING"}

    listed = refracture("models", "--store", str(store), env=_env(store))
    text = " ".join((listed.stdout + listed.stderr).split())
    assert listed.returncode == 0, text
    assert "1 run(s) marked RUNNING, their process is gone" in text and parent_name in text
    # The outer run only: its nested run is closed with it.
    assert f"close them: refracture close-runs {parent_id}" in text

    closed = refracture("close-runs", parent_id, "--store", str(store), env=_env(store))
    assert closed.returncode == 0, closed.stderr
    assert "closed 2 run(s) as FAILED" in closed.stderr
    assert _runs(store) == {parent_name: "FAILED", "xgboost": "FAILED"}
    again = refracture("models", "--store", str(store), env=_env(store))
    assert "marked RUNNING" not in again.stdout + again.stderr
