"""Shared helpers for the serving tests: a trained, registered champion in a temporary
MLflow store, valid records, and a real server process on a free loopback port.

The store is trained once per test session (per xdist worker) through the real CLI
(``refracture synth`` + ``refracture train`` with a tiny budget) and reused by every
serving test module that asks for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd

from features.labels import OUTCOMES
from features.records import json_record

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789abcdef"


@contextlib.contextmanager
def asgi_client():
    """The service in-process (``RefractureRisk.to_asgi()`` behind Starlette's TestClient),
    with the Prometheus collectors it registered removed afterwards: BentoML registers its
    HTTP metrics in the process-wide registry, so a second module serving in the same test
    worker would otherwise fail with DuplicateTimeseries."""
    import prometheus_client
    from starlette.testclient import TestClient

    from serving.service import RefractureRisk

    registry = prometheus_client.REGISTRY
    before = set(registry._collector_to_names)
    try:
        with TestClient(RefractureRisk.to_asgi()) as c:
            yield c
    finally:
        for collector in set(registry._collector_to_names) - before:
            registry.unregister(collector)


def refracture(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the real ``refracture`` CLI (``python -m``-style, same interpreter)."""
    cmd = [sys.executable, "-c", "from refracture.cli import main; main()", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env or os.environ.copy(), capture_output=True, text=True, timeout=timeout)


def ensure_trained_store(base: Path) -> Path:
    """A folder with a raw export (``raw/``) and an MLflow store (``mlflow/``) holding a
    champion for every outcome; trained on first call, reused after (marker file).

    Trained in-process through the training package's public API (the CLI runs the same
    ``training.pipeline.run``), with a tiny budget: one candidate, no search, 2 folds."""
    store = base / "serving-store"
    marker = store / "ready.json"
    if marker.exists():
        return store
    from features.simulator import load_profile, simulate
    from features.io import write_raw
    from training.config import TrainConfig
    from training.pipeline import run

    store.mkdir(parents=True, exist_ok=True)
    tables, _truth = simulate(load_profile("xiong2021-pvp"), 1500, 3)
    write_raw(tables, store / "raw")
    cfg = TrainConfig(raw_dir=store / "raw", search_trials=0, candidates=("xgboost",), n_bootstrap=50, cv_folds=2,
                      n_jobs=1, shap_rows=50, store_dir=store / "mlflow")
    results = run(cfg)
    assert all(r.refused is None and r.alias == "champion" for r in results), [(r.outcome, r.refused, r.alias) for r in results]
    marker.write_text(json.dumps({"trained": True}))
    return store


def store_env(store: Path, **extra: str) -> dict[str, str]:
    """Environment pointing every MLflow call at the temporary store (the prediction log
    off unless ``extra`` turns it on)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "REFRACTURE_API_KEY", "REFRACTURE_INSECURE_DEV")}
    env["REFRACTURE_MLFLOW_DIR"] = str(store / "mlflow")
    env["BENTOML_HOME"] = str(store / "bentoml")
    env["BENTOML_DO_NOT_TRACK"] = "True"
    env["PYTHONPATH"] = str(ROOT)
    # The prediction log is off unless a test turns it on (with its own store and secret).
    env["REFRACTURE_PREDICTION_LOG"] = "0"
    env.update(extra)
    return env


def use_trained_store(base: Path) -> Path:
    """Train (once) the store of ``ensure_trained_store(base)`` and point this process's
    MLflow and service settings at it, as the benchmarks that load models in-process need."""
    store = ensure_trained_store(base)
    os.environ.update({k: v for k, v in store_env(store).items() if k.startswith(("REFRACTURE", "BENTOML", "MLFLOW"))})
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return store


def valid_flat_records(store: Path, n: int = 20) -> pd.DataFrame:
    """The first ``n`` flat records of the store's raw export (valid by construction)."""
    from features.records import tables_to_records
    from features.validate import validate_raw
    from features.io import read_raw

    return tables_to_records(validate_raw(read_raw(store / "raw"))).head(n).reset_index(drop=True)


def to_json_records(flat: pd.DataFrame) -> list[dict]:
    """Flat records -> nested JSON-ready records (dates as YYYY-MM-DD, missing values left out)."""
    return [json_record(row) for row in flat.to_dict("records")]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``refracture serve`` in a subprocess on 127.0.0.1:<free port>; stopped on exit."""

    def __init__(self, env: dict[str, str], *extra_args: str, log: Path | None = None, bento: str | None = None,
                 cwd: Path = ROOT, tls: tuple[Path, Path] | None = None, ready_timeout: float = 90):
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        #: What httpx checks the server's certificate against (its own, self-signed, for TLS).
        self.verify: str | bool = str(tls[0]) if tls else True
        self.env = env
        self.args = (*extra_args, "--tls-cert", str(tls[0]), "--tls-key", str(tls[1])) if tls else extra_args
        self.log = log
        self.bento = bento
        self.cwd = cwd
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.ready_timeout = ready_timeout

    def command(self) -> list[str]:
        if self.bento:  # a built Bento, served by BentoML itself
            return [sys.executable, "-m", "bentoml", "serve", self.bento, "--host", "127.0.0.1", "--port", str(self.port)]
        return [sys.executable, "-c", "from refracture.cli import main; main()", "serve", "--port", str(self.port), *self.args]

    def __enter__(self) -> "Server":
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self.__exit__()  # a server that never became ready is stopped too, not left running
            raise
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.log_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"server not ready after {timeout} s; log: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log and self.log.exists() else ""

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            import signal

            os.killpg(self.proc.pid, signal.SIGTERM)  # the server's own process group only
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
