"""How the tracking layer behaves on a shared server, without one: a lost connection is told
apart from other MLflow errors, one dropped request is retried (but not the first probe),
and creating an experiment or a registered model that another process has just created is
not an error."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from serving_support import free_port

from training import registry
from modelstore.tracking import (HTTP_CLIENT_DEFAULTS, TrackingUnavailable, already_exists, check_tracking,
                               configure_tracking, connection_lost, get_or_create_experiment, lost_connection_reason)


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return configure_tracking(tmp_path / "store")


def test_a_refused_connection_is_a_lost_tracking_store(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(MlflowException) as caught:
        MlflowClient(tracking_uri=uri).get_run("0" * 32)
    assert lost_connection_reason(caught.value) == "Connection refused"
    lost = connection_lost(caught.value, uri, "training adjacent_fracture", "Check the registry.")
    assert str(lost) == (f"the tracking store {uri} stopped answering while training adjacent_fracture "
                         "(Connection refused). Check the registry.")


def test_a_lost_connection_hidden_by_a_later_error_is_still_found():
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionError:
            raise MlflowException("could not mark the run FAILED")  # noqa: B904 - as mlflow.end_run does
    except MlflowException as exc:
        assert lost_connection_reason(exc) == "Connection refused"


def test_other_mlflow_errors_are_not_a_lost_connection(local_store):
    with pytest.raises(MlflowException) as caught:
        MlflowClient().get_model_version("refracture-adjacent_fracture", "99")
    assert lost_connection_reason(caught.value) is None
    assert connection_lost(caught.value, local_store, "listing") is None
    assert lost_connection_reason(ValueError("bad column")) is None


def test_an_experiment_created_meanwhile_by_another_process_is_reused(local_store, monkeypatch):
    existing = get_or_create_experiment("refracture-adjacent_fracture")
    # The other process creates it between our look-up and our create.
    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", _none_once(MlflowClient.get_experiment_by_name))
    assert get_or_create_experiment("refracture-adjacent_fracture") == existing


def test_a_registered_model_created_meanwhile_by_another_process_is_reused(local_store, monkeypatch):
    import mlflow
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return [0.5] * len(model_input)

    exp = get_or_create_experiment("refracture-adjacent_fracture")
    with mlflow.start_run(experiment_id=exp):
        uri = mlflow.pyfunc.log_model(name="model", python_model=Constant()).model_uri
    assert registry.register(uri, "adjacent_fracture", {"k": 1}).version in (1, "1")

    def gone(self, name):  # the look-up misses the model another process has just created
        raise MlflowException(f"Registered Model with name={name} not found", error_code=RESOURCE_DOES_NOT_EXIST)

    monkeypatch.setattr(MlflowClient, "get_registered_model", gone)
    assert str(registry.register(uri, "adjacent_fracture", {"k": 2}).version) == "2"


def test_already_exists_reads_the_error_code():
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS

    assert already_exists(MlflowException("x", error_code=RESOURCE_ALREADY_EXISTS))
    assert not already_exists(MlflowException("x", error_code=INVALID_PARAMETER_VALUE))
    assert not already_exists(ValueError("x"))


def _none_once(real):
    calls = []

    def lookup(self, name):
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    return lookup


class _DropsFirstRequest(http.server.BaseHTTPRequestHandler):
    """A stand-in tracking server that closes the first connection without an answer (as a
    server closing an idle keep-alive connection, or a worker restarting, does), then
    answers MLflow's experiment search."""

    dropped: list[str] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self.dropped:
            self.dropped.append(self.path)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = json.dumps({"experiments": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    _DropsFirstRequest.dropped = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DropsFirstRequest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_one_dropped_request_does_not_fail_a_command(flaky_server, monkeypatch):
    for name, value in HTTP_CLIENT_DEFAULTS.items():
        monkeypatch.setenv(name, value)
    assert MlflowClient(tracking_uri=flaky_server).search_experiments() == []
    assert _DropsFirstRequest.dropped  # the first attempt really was dropped


def test_the_first_probe_does_not_retry(flaky_server, monkeypatch):
    for name, value in HTTP_CLIENT_DEFAULTS.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(TrackingUnavailable, match=flaky_server):
        check_tracking(flaky_server)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_CLIENT_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


def test_a_restored_environment_does_not_redirect_the_next_store(tmp_path, monkeypatch):
    """MLflow copies the tracking URI into MLFLOW_TRACKING_URI; when something restores an
    earlier value of ours (monkeypatch does, between tests), the next configure_tracking(store)
    must still use its own store, not the stale one."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = configure_tracking(tmp_path / "first")
    with monkeypatch.context() as m:
        m.delenv("MLFLOW_TRACKING_URI", raising=False)
        second = configure_tracking(tmp_path / "second")
        assert second != first
    assert os.environ.get("MLFLOW_TRACKING_URI") == first  # restored by the context: stale
    assert configure_tracking(tmp_path / "third").endswith("third/mlflow.db")
