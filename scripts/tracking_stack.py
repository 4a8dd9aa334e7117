"""A local MLflow tracking stack: PostgreSQL backend store + ``mlflow server`` serving artifacts.

For development and the tests, the same stack a team runs for real (docs/deployment.md):

    scripts/tracking-stack.sh -- .venv/bin/refracture train --raw data/demo --outcome all
    scripts/tracking-stack.sh --data data/stack --port 5000      # keep it, until Ctrl-C

It starts a PostgreSQL cluster (``initdb``/``pg_ctl``) in a folder of its own, listening on
127.0.0.1 and a free port with a random password, creates the ``mlflow`` database and the
prediction log's ``predictions`` database (``REFRACTURE_PREDICTION_DB`` is set for the
command; ``--postgres-only`` starts the cluster without MLflow), starts
``mlflow server --backend-store-uri postgresql+psycopg://… --artifacts-destination
<folder>/artifacts --serve-artifacts`` on 127.0.0.1, waits until ``/health`` answers, then
runs the given command with ``MLFLOW_TRACKING_URI`` set (or waits for Ctrl-C without one).
On exit, error or SIGINT/SIGTERM/SIGHUP it stops the MLflow server and PostgreSQL and,
unless ``--data`` was given, deletes the folder.

The PostgreSQL binaries are taken from ``PATH`` or Debian's ``/usr/lib/postgresql/*/bin``;
when missing, ``scripts/ensure-postgres.sh`` installs Debian's ``postgresql`` package.
PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user.

Tests import ``TrackingStack`` from this file (tests/support/tracking_support.py), so they start
exactly what the script starts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger("tracking-stack")

ROOT = Path(__file__).resolve().parents[1]
PG_USER = "refracture"
PG_DATABASE = "mlflow"
#: The prediction log's own database in the same cluster (predictionlog.store).
PG_PREDICTIONS_DATABASE = "predictions"
#: Seconds to wait for PostgreSQL / the MLflow server (the first start migrates the schema).
PG_START_TIMEOUT_S = 60
MLFLOW_START_TIMEOUT_S = 180


class StackError(RuntimeError):
    """The stack could not be started; the message says which part and where its log is."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pg_bin(install: bool = True) -> Path:
    """Folder holding ``initdb`` and ``pg_ctl``: from PATH, else the newest Debian
    ``/usr/lib/postgresql/<major>/bin``; installs Debian's package first when ``install``."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if debian:
        return debian[-1].parent
    if not install:
        raise StackError("PostgreSQL's initdb was not found: run scripts/ensure-postgres.sh (installs Debian's postgresql)")
    subprocess.run(["bash", str(ROOT / "scripts" / "ensure-postgres.sh")], check=True)
    return find_pg_bin(install=False)


def _run_as() -> str | None:
    """The user that runs PostgreSQL when we are root (it refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise StackError("running as root and there is no 'postgres' user to run PostgreSQL as")


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


class TrackingStack:
    """PostgreSQL + MLflow tracking server in ``base`` (a new temporary folder when None).

    ``tracking_uri`` is what clients use (``http://127.0.0.1:<port>``); ``backend_uri``
    (with the password) is only handed to the server. Use as a context manager, or call
    ``start()`` and ``stop()``; ``stop_server()``/``start_server()`` restart only MLflow.
    """

    def __init__(self, base: Path | None = None, port: int = 0, workers: int = 1):
        self.keep = base is not None
        self.base = Path(base).resolve() if base else Path(tempfile.mkdtemp(prefix="refracture-stack-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.workers = workers
        self.pg_dir = self.base / "postgres"
        self.pg_data = self.pg_dir / "data"
        self.pg_log = self.pg_dir / "postgres.log"
        self.artifacts = self.base / "artifacts"
        self.server_log = self.base / "mlflow-server.log"
        self.pg_port: int | None = None
        self._password: str | None = None
        self._server: subprocess.Popen | None = None
        self._pg_started = False
        self._pg_bin: Path | None = None
        self._user = _run_as()

    # ------------------------------------------------------------------ public

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_uri(self) -> str:
        return f"postgresql+psycopg://{PG_USER}:{self._password}@127.0.0.1:{self.pg_port}/{PG_DATABASE}"

    @property
    def predictions_uri(self) -> str:
        """SQLAlchemy URL of the prediction log's database (``REFRACTURE_PREDICTION_DB``)."""
        return f"postgresql+psycopg://{PG_USER}:{self._password}@127.0.0.1:{self.pg_port}/{PG_PREDICTIONS_DATABASE}"

    def start(self) -> "TrackingStack":
        try:
            self.start_postgres()
            self.start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop what this object started (MLflow, then PostgreSQL); delete a temporary folder."""
        self.stop_server()
        self.stop_postgres()
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "TrackingStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ) with MLFLOW_TRACKING_URI pointing at the server and
        REFRACTURE_PREDICTION_DB at the prediction log's database."""
        env = dict(os.environ if base is None else base)
        env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        env["REFRACTURE_PREDICTION_DB"] = self.predictions_uri
        return env

    # ------------------------------------------------------------------ PostgreSQL

    def _pg(self, tool: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        cmd = [str(self._pg_bin / tool), *args]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, **kwargs)

    def start_postgres(self) -> None:
        """initdb (first time), then pg_ctl start on 127.0.0.1:<free port>; create the database."""
        self._pg_bin = find_pg_bin()
        password_file = self.pg_dir / "password"
        fresh = not (self.pg_data / "PG_VERSION").exists()
        if fresh:
            self.pg_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.pg_dir, 0o700)
            password_file.write_text(secrets.token_urlsafe(24))
            os.chmod(password_file, 0o600)
        if self._user:
            # The run-as user must reach its folder; a throwaway base is ours alone otherwise.
            os.chmod(self.base, 0o711)
            info = pwd.getpwnam(self._user)
            for path in [self.pg_dir, *self.pg_dir.rglob("*")]:
                os.chown(path, info.pw_uid, info.pw_gid)
        self._password = password_file.read_text().strip()
        if fresh:
            done = self._pg("initdb", "-D", str(self.pg_data), "-U", PG_USER, "--pwfile", str(password_file),
                            "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-locale")
            if done.returncode:
                raise StackError(f"initdb failed in {self.pg_data}:\n{done.stdout}{done.stderr}")
        self.pg_port = self.pg_port or free_port()  # a restart keeps the port: clients' URLs stay valid
        # TCP only: every client connects to 127.0.0.1, and a Unix socket's path is limited to
        # 107 bytes, which a folder under a long TMPDIR exceeds (PostgreSQL then refuses to start).
        options = f"-c listen_addresses=127.0.0.1 -p {self.pg_port} -c unix_socket_directories=''"
        done = self._pg("pg_ctl", "start", "-D", str(self.pg_data), "-l", str(self.pg_log), "-o", options, "-w",
                        "-t", str(PG_START_TIMEOUT_S))
        if done.returncode:
            raise StackError(f"PostgreSQL did not start ({self.pg_log}):\n{done.stderr}\n{_tail(self.pg_log)}")
        self._pg_started = True
        self._create_database()
        logger.info("PostgreSQL on 127.0.0.1:%s (data in %s)", self.pg_port, self.pg_data)

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.pg_port, user=PG_USER, password=self._password,
                             dbname="postgres", autocommit=True) as conn:
            for name in (PG_DATABASE, PG_PREDICTIONS_DATABASE):
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                    conn.execute(f'CREATE DATABASE "{name}"')

    def stop_postgres(self) -> None:
        if self._pg_started:
            done = self._pg("pg_ctl", "stop", "-D", str(self.pg_data), "-m", "fast", "-w", "-t", "30")
            if done.returncode:
                logger.warning("pg_ctl stop failed: %s", done.stderr.strip())
            self._pg_started = False

    # ------------------------------------------------------------------ MLflow server

    def start_server(self) -> None:
        """``mlflow server`` on 127.0.0.1:<port> against the database; returns once /health answers."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        # Through the environment, not argv: the password stays out of `ps`.
        env["MLFLOW_BACKEND_STORE_URI"] = self.backend_uri
        # MLflow's job runner (GenAI scorers, prompt optimisation) is unused here; it also
        # ignores SIGTERM, which made every stop wait for the kill timeout.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        cmd = [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", str(self.artifacts),
               "--serve-artifacts", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]
        log = open(self.server_log, "ab")
        try:
            # Its own process group, so stop_server() ends the workers too and a Ctrl-C
            # reaches only the command, not the server (stopped in order afterwards).
            self._server = subprocess.Popen(cmd, cwd=self.base, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + MLFLOW_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                raise StackError(f"mlflow server exited with {self._server.returncode} ({self.server_log}):\n"
                                 f"{_tail(self.server_log)}")
            try:
                with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        logger.info("MLflow tracking server on %s (artifacts in %s)", self.tracking_uri, self.artifacts)
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise StackError(f"mlflow server not healthy after {MLFLOW_START_TIMEOUT_S} s ({self.server_log}):\n"
                         f"{_tail(self.server_log)}")

    def stop_server(self) -> None:
        proc, self._server = self._server, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group only
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _raise_on_signal(signum, _frame):
    # Turn SIGTERM/SIGHUP into an exception so the `finally` below stops the stack.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tracking-stack.sh",
        description="Start PostgreSQL and an MLflow tracking server on 127.0.0.1, run COMMAND with "
                    "MLFLOW_TRACKING_URI set, then stop both. Without COMMAND, run until Ctrl-C.")
    parser.add_argument("--data", type=Path, help="keep the cluster and artifacts in this folder (default: a "
                                                  "temporary folder, deleted on exit)")
    parser.add_argument("--port", type=int, default=0, help="port of the MLflow server (default: a free one)")
    parser.add_argument("--workers", type=int, default=1, help="MLflow server worker processes (default 1)")
    parser.add_argument("--postgres-only", action="store_true",
                        help="start PostgreSQL only (the prediction log's database), no MLflow server")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    logging.basicConfig(level=logging.INFO, format="tracking-stack: %(message)s", stream=sys.stderr)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_on_signal)
    stack = TrackingStack(args.data, port=args.port, workers=args.workers)
    try:
        if args.postgres_only:
            stack.start_postgres()
        else:
            stack.start()
            logger.info("MLFLOW_TRACKING_URI=%s", stack.tracking_uri)
        logger.info("REFRACTURE_PREDICTION_DB=postgresql+psycopg://%s:***@127.0.0.1:%s/%s", PG_USER, stack.pg_port,
                    PG_PREDICTIONS_DATABASE)
        if not command:
            logger.info("running until Ctrl-C")
            while True:
                time.sleep(3600)
        env = stack.env()
        if args.postgres_only:
            env.pop("MLFLOW_TRACKING_URI")
        child = subprocess.Popen(command, env=env)
        try:
            return child.wait()
        except BaseException:
            if child.poll() is None:
                child.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=20)
            raise
    except StackError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        stack.stop()
        logger.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
