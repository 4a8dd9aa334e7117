"""The real server and the real CLI under faults (issue 9): stopped by a signal, hostile
request heads, invented paths on /metrics, the tracking server unreachable at start, and
training killed mid-run. Each test starts its own processes on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from serving_support import API_KEY, ROOT, OUTCOMES, Server, ensure_trained_store, free_port, refracture, store_env

pytestmark = pytest.mark.slow
HEAD_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ensure_trained_store(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    env = store_env(store, REFRACTURE_API_KEY=API_KEY, REFRACTURE_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT_S),
                    REFRACTURE_AUDIT_LOG=str(tmp_path_factory.mktemp("audit") / "audit.jsonl"))
    with Server(env, log=tmp_path_factory.mktemp("faults") / "server.log") as srv:
        yield srv


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_refracture_serve_stops_every_process_and_frees_the_port(store, tmp_path, signum):
    """A process manager signals only the process it started: `refracture serve` itself."""
    env = store_env(store, REFRACTURE_API_KEY=API_KEY)
    srv = Server(env, log=tmp_path / "server.log")
    with srv:
        main = psutil.Process(srv.proc.pid)
        family = [main, *main.children(recursive=True)]
        assert len(family) >= 2, "the server runs in worker processes"
        assert httpx.get(f"{srv.url}/readyz", timeout=10).status_code == 200
        os.kill(srv.proc.pid, signum)  # the process only, not its group
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert alive == [], f"still running after {signum.name}: {[p.pid for p in alive]}"
        assert _port_is_free(srv.port)


def test_request_head_size_and_read_time_are_limited(server):
    big_header = httpx.get(f"{server.url}/healthz", headers={"X-Filler": "a" * 40_000}, timeout=10)
    assert big_header.status_code == 400
    long_url = httpx.get(f"{server.url}/healthz?q={'a' * 40_000}", timeout=10)
    assert long_url.status_code == 400
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200  # still serving

    with socket.create_connection(("127.0.0.1", server.port), timeout=HEAD_TIMEOUT_S + 10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        assert s.recv(1024) == b""  # closed by the server
        assert time.monotonic() - started < HEAD_TIMEOUT_S + 5


def test_metrics_do_not_grow_with_invented_paths(server):
    for i in range(5):
        httpx.get(f"{server.url}/hostile-{i}-path", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
        httpx.get(f"{server.url}/ui/static/../hostile-{i}", timeout=10)
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).text
    assert "hostile-" not in text
    assert 'endpoint="other"' in text


def test_tracking_server_unreachable_is_a_clear_error_naming_the_uri(store):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = store_env(store, REFRACTURE_API_KEY=API_KEY, MLFLOW_TRACKING_URI=uri)
    started = time.monotonic()
    result = refracture("serve", "--port", str(free_port()), env=env, timeout=120)
    assert result.returncode != 0
    assert uri in result.stderr and "unreachable" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 90


# ------------------------------------------------------------------ training killed


def _db(store: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{store / 'mlflow' / 'mlflow.db'}?mode=ro", uri=True, timeout=30)


def _snapshot(store: Path) -> dict:
    with _db(store) as db:
        aliases = dict(((n, a), v) for n, a, v in db.execute("select name, alias, version from registered_model_aliases"))
        runs = dict(db.execute("select run_uuid, status from runs where status = 'FINISHED'"))
        versions = set(db.execute("select name, version from model_versions"))
    return {"aliases": aliases, "finished_runs": runs, "versions": versions}


def _count(store: Path, sql: str) -> int:
    try:
        with _db(store) as db:
            return db.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # locked by the writer for a moment
        return -1


TRAIN = ["train", "--outcome", "adjacent_fracture", "--candidates", "xgboost", "--search-trials", "2",
         "--bootstrap", "50", "--cv-folds", "2", "--n-jobs", "1"]


def _train_until(store: Path, env: dict, sql: str, timeout: float = 400) -> bool:
    """Start `refracture train`; SIGKILL it as soon as ``sql``'s count grows. True if killed."""
    before = _count(store, sql)
    cmd = [sys.executable, "-c", "from refracture.cli import main; main()", *TRAIN, "--raw", str(store / "raw")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if _count(store, sql) > before:
                proc.kill()
                proc.wait(timeout=30)
                return True
            time.sleep(0.05)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _assert_registry_intact(store: Path, before: dict) -> None:
    from mlflow.tracking import MlflowClient

    after = _snapshot(store)
    # Earlier runs still finished; aliases still point at versions that exist and load.
    assert {r: s for r, s in after["finished_runs"].items() if r in before["finished_runs"]} == before["finished_runs"]
    uri = f"sqlite:///{store / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for (name, alias), version in after["aliases"].items():
        assert (name, version) in after["versions"]
        mv = client.get_model_version_by_alias(name, alias)
        assert mv.status == "READY"
    for key, version in before["aliases"].items():  # a kill never drops an alias
        assert key in after["aliases"]


def test_training_killed_mid_run_leaves_the_registry_intact_and_the_next_train_works(store, tmp_path):
    own = tmp_path / "store"
    shutil.copytree(store, own)
    env = store_env(own)
    before = _snapshot(own)
    assert {("refracture-" + o, "champion") for o in OUTCOMES} <= set(before["aliases"])

    # During the search: the candidate's nested run (searched and fitted inside it) appears.
    assert _train_until(own, env, "select count(*) from tags where key = 'mlflow.parentRunId'"), \
        "training ended before the kill"
    _assert_registry_intact(own, before)

    # During registration: the new model version appears.
    assert _train_until(own, env, "select count(*) from model_versions"), "training ended before registration"
    _assert_registry_intact(own, before)

    # The next run works and registers a new version with an alias.
    result = refracture(*TRAIN, "--raw", str(own / "raw"), env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    after = _snapshot(own)
    new_versions = {v for n, v in after["versions"] if n == "refracture-adjacent_fracture"} - \
                   {v for n, v in before["versions"] if n == "refracture-adjacent_fracture"}
    assert new_versions
    _assert_registry_intact(own, before)
