"""End to end against a real MLflow tracking server on PostgreSQL (scripts/tracking_stack.py,
in a temporary folder, on 127.0.0.1): the unchanged `refracture` CLI trains two outcomes
from two processes at once, promotes while the service runs, and fails cleanly when the
server stops mid-training.

The tests share one stack and build on each other's registry, in file order (the file
runs on one xdist worker with ``--dist loadfile``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient
from serving_support import API_KEY, ROOT, Server, refracture, store_env
from tracking_support import load_stack_module

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: A small budget: one candidate, no search, 2 folds, 50 bootstrap resamples (~15 s each on
#: an idle 2-core machine).
FAST = ["--search-trials", "0", "--candidates", "logistic", "--bootstrap", "50", "--cv-folds", "2", "--n-jobs", "1"]
CLI = [sys.executable, "-c", "from refracture.cli import main; main()"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    logs = tmp_path_factory.mktemp("pg-stack-logs")
    with load_stack_module().TrackingStack(workers=2) as s:
        try:
            yield s
        finally:  # the stack's folder is deleted on stop: keep its logs for a failure's diagnosis
            for log in (s.server_log, s.pg_log):
                if log.exists():
                    shutil.copy(log, logs / log.name)


@pytest.fixture(scope="module")
def env(stack, tmp_path_factory):
    """The CLI's environment: the server's URI, and a local-store folder that must stay unused."""
    home = tmp_path_factory.mktemp("pg-client")
    return {**store_env(home), "MLFLOW_TRACKING_URI": stack.tracking_uri}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, env):
    out = tmp_path_factory.mktemp("pg-cohort") / "raw"
    done = refracture("synth", "--profile", "xiong2021-pvp", "--n", "1500", "--seed", "3", "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def client(stack):
    return MlflowClient(tracking_uri=stack.tracking_uri, registry_uri=stack.tracking_uri)


def start_training(cohort, env, outcome: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "train", "--raw", str(cohort), "--outcome", outcome, *FAST, *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train_concurrently(cohort, env, *jobs: tuple[str, ...]) -> dict[str, subprocess.CompletedProcess]:
    """Start one `refracture train` process per job at once; wait for all."""
    procs = {job[0]: start_training(cohort, env, *job) for job in jobs}
    done = {}
    for outcome, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[outcome] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def registry_state(client) -> dict[str, tuple[list[int], dict[str, str]]]:
    """{registered model: (sorted versions, {alias: version})} of every refracture model."""
    state = {}
    for rm in client.search_registered_models(filter_string="name LIKE 'refracture-%'"):
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{rm.name}'"))
        state[rm.name] = (versions, {k: str(v) for k, v in rm.aliases.items()})
    return state


def parent_runs(client, outcome: str):
    exp = client.get_experiment_by_name(f"refracture-{outcome}")
    return client.search_runs([exp.experiment_id], filter_string="tags.run_kind = 'parent'",
                              order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def first_training(stack, cohort, env):
    return train_concurrently(cohort, env, ("cemented_refracture",), ("adjacent_fracture",))


def test_two_outcomes_trained_at_once_both_register_cleanly(first_training, client, stack, env):
    for outcome, done in first_training.items():
        assert done.returncode == 0, f"{outcome}:\n{done.stderr[-3000:]}"
    (a,), (b,) = parent_runs(client, "cemented_refracture"), parent_runs(client, "adjacent_fracture")
    # The two trainings really overlapped on the server.
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
    assert registry_state(client) == {
        "refracture-cemented_refracture": ([1], {"champion": "1"}),
        "refracture-adjacent_fracture": ([1], {"champion": "1"}),
    }
    for outcome, parent in (("cemented_refracture", a), ("adjacent_fracture", b)):
        assert parent.info.status == "FINISHED"
        mv = client.get_model_version(f"refracture-{outcome}", "1")
        assert mv.tags["outcome"] == outcome and mv.tags["parent_run_id"] == parent.info.run_id
        assert mv.tags["alias.champion.reason"].startswith("refracture train: first version")
        assert client.get_run(mv.run_id).info.experiment_id == parent.info.experiment_id
        # Artifacts went through the server into its artifacts destination, not to a local store.
        assert client.get_run(mv.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
        assert list((stack.artifacts / parent.info.experiment_id).rglob("MLmodel"))
        assert "model_card.md" in {f.path for f in client.list_artifacts(parent.info.run_id)}
        assert (stack.artifacts / parent.info.experiment_id / parent.info.run_id / "artifacts" / "model_card.md").is_file()
    assert not Path(env["REFRACTURE_MLFLOW_DIR"]).exists(), "the CLI used a local store despite MLFLOW_TRACKING_URI"

    listed = refracture("models", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "refracture-cemented_refracture" in listed.stdout and "refracture-adjacent_fracture" in listed.stdout


def test_promote_while_serving_keeps_the_pinned_version_until_restart(first_training, stack, client, cohort, env,
                                                                      tmp_path):
    """A second adjacent_fracture version and a remote_fracture champion (trained at once),
    then `refracture serve` pins the champions; `refracture promote` moves the champion to
    the other version while it runs; the running service keeps its version, a restarted
    one serves the new champion, and goes on serving while the tracking server is down."""
    from serving.scoring.examples import example_record

    done = train_concurrently(cohort, env, ("remote_fracture",), ("adjacent_fracture", "--seed", "7"))
    for outcome, result in done.items():
        assert result.returncode == 0, f"{outcome}:\n{result.stderr[-3000:]}"
    name = "refracture-adjacent_fracture"
    versions, aliases = registry_state(client)[name]
    assert versions == [1, 2] and aliases["champion"] in ("1", "2")
    if aliases["champion"] == "1":  # v2 did not beat v1 on the test set
        assert aliases.get("challenger") == "2"
    before = aliases["champion"]
    after = "2" if before == "1" else "1"

    def served_version(url):
        info = httpx.get(f"{url}/model", headers=AUTH, timeout=30).json()["outcomes"]["adjacent_fracture"]["model"]["version"]
        answer = httpx.post(f"{url}/predict", json=example_record(), headers=AUTH, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["outcomes"]["adjacent_fracture"]["model"]["version"] == info
        return info

    serve_env = {**env, "REFRACTURE_API_KEY": API_KEY}
    with Server(serve_env, log=tmp_path / "serve.log") as server:
        assert served_version(server.url) == before
        moved = refracture("promote", "--outcome", "adjacent_fracture", "--version", after, "--reason", "review board",
                           "--yes", env=env)
        assert moved.returncode == 0, moved.stderr
        assert str(client.get_registered_model(name).aliases["champion"]) == after
        assert client.get_model_version(name, after).tags["alias.champion.reason"] == "refracture promote: review board"
        assert served_version(server.url) == before  # pinned at start, not hot-swapped
    with Server(serve_env, log=tmp_path / "restarted.log") as restarted:
        assert served_version(restarted.url) == after
        stack.stop_server()
        try:
            assert served_version(restarted.url) == after  # models are in memory: no registry needed
        finally:
            stack.start_server()
        # A supervisor's SIGTERM to `refracture serve` alone stops the BentoML server it started.
        os.kill(restarted.proc.pid, signal.SIGTERM)
        restarted.proc.wait(timeout=60)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{restarted.url}/readyz", timeout=5)


def test_server_stopped_mid_training_gives_a_clear_error_and_leaves_the_registry_intact(first_training, stack, client,
                                                                                        cohort, env):
    before = registry_state(client)
    assert before["refracture-cemented_refracture"] == ([1], {"champion": "1"})
    known = {r.info.run_id for r in parent_runs(client, "cemented_refracture")}
    proc = start_training(cohort, env, "cemented_refracture", "--seed", "11")
    try:
        deadline = time.monotonic() + 120
        while not ({r.info.run_id for r in parent_runs(client, "cemented_refracture")} - known):
            assert proc.poll() is None and time.monotonic() < deadline, "training never started a run"
            time.sleep(0.2)
        stack.stop_server()  # while the candidates are being fitted and logged
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stack.start_server()  # same port, same database
    text = " ".join(err.split())
    assert proc.returncode == 1, err[-3000:]
    assert f"the tracking store {stack.tracking_uri} stopped answering while training cemented_refracture" in text
    assert "Connection refused" in text and "refracture models" in text
    assert "Traceback" not in err
    assert registry_state(client) == before
    unfinished = [r for r in parent_runs(client, "cemented_refracture") if r.info.run_id not in known]
    assert len(unfinished) == 1 and unfinished[0].info.status == "RUNNING"  # left as it was when the server went
    run_id = unfinished[0].info.run_id
    assert f"`refracture close-runs {run_id}`" in text  # said on the way out, with the run it could not close
    listed = refracture("models", env=env)
    assert listed.returncode == 0 and "refracture-cemented_refracture" in listed.stdout
    said = " ".join(listed.stderr.split())
    assert "1 run(s) marked RUNNING, their process is gone" in said and f"close them: refracture close-runs {run_id}" in said
    closed = refracture("close-runs", run_id, env=env)
    assert closed.returncode == 0 and "as FAILED" in closed.stderr, closed.stderr
    assert client.get_run(run_id).info.status == "FAILED"
    exp = client.get_experiment_by_name("refracture-cemented_refracture").experiment_id
    assert not client.search_runs([exp], filter_string="attributes.status = 'RUNNING'")  # its nested run too
    assert "marked RUNNING" not in refracture("models", env=env).stderr
