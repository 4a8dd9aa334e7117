"""Where runs and models are recorded: the MLflow tracking store.

By default an embedded store inside the project: SQLite ``mlflow/mlflow.db`` with
artifacts beside it in ``mlflow-artifacts/`` (MLflow 3 would otherwise write
``./mlflow.db`` and ``./mlruns``). The artifacts live outside ``mlflow/`` because every
model version carries its models-from-code file (``modelstore/pyfunc_entry.py``), and
``mlflow/`` must hold no Python file: it would shadow the real ``mlflow`` package. ``MLFLOW_TRACKING_URI`` points everything at a tracking server
instead. Nothing here runs on import.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import mlflow
import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

#: Environment variable naming the local store folder (default ``./mlflow``).
STORE_DIR_ENV = "REFRACTURE_MLFLOW_DIR"
#: A tracking server that does not answer within this many seconds is reported as
#: unreachable (MLflow's own default retries for minutes).
DEFAULT_HTTP_TIMEOUT_S = "10"
#: Retries (after 0, 1, 2 s, plus up to 1 s jitter) once a command has reached the server: a
#: shared server closes idle keep-alive connections and restarts workers, and a training
#: must not die of one dropped request. The first probe (``check_tracking``) never retries,
#: so a server that is not there at all is reported in seconds.
DEFAULT_HTTP_RETRIES = "3"
DEFAULT_HTTP_BACKOFF_FACTOR = "1"
#: MLflow's HTTP client settings for a tracking server, unless the environment sets them.
HTTP_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": DEFAULT_HTTP_TIMEOUT_S,
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": DEFAULT_HTTP_RETRIES,
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": DEFAULT_HTTP_BACKOFF_FACTOR,
}
#: Every embedded-store URI ``configure_tracking`` chose in this process. MLflow copies the
#: tracking URI into ``MLFLOW_TRACKING_URI``, so the variable may hold one of ours (or, once
#: something restored the environment, an earlier one of ours) rather than the user's.
_configured: set[str] = set()


class TrackingUnavailable(RuntimeError):
    """The tracking store or server cannot be used; the message says which and why."""


def local_store(store_dir: Path | None = None) -> tuple[str, str, Path]:
    """(tracking URI, artifact root URI, folder) of the embedded SQLite store.

    ``store_dir`` defaults to ``$REFRACTURE_MLFLOW_DIR`` or ``./mlflow``; the folder is
    created. Paths are absolute so runs started from another directory find the same store.
    """
    folder = Path(store_dir or os.environ.get(STORE_DIR_ENV) or "mlflow").expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = artifacts_folder(folder)
    artifacts.mkdir(exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", artifacts.as_uri(), folder


def artifacts_folder(store_folder: Path) -> Path:
    """Artifacts of an embedded store: the sibling folder ``<store>-artifacts`` (module
    docstring: the store folder itself holds no Python file)."""
    return store_folder.parent / f"{store_folder.name}-artifacts"


def _user_uri() -> str | None:
    """``MLFLOW_TRACKING_URI`` as set by the user (not by an earlier ``configure_tracking``)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return None if not uri or uri in _configured else uri


def artifact_root(tracking_uri: str) -> str | None:
    """Artifact location for new experiments of ``tracking_uri``: ``<store>-artifacts/``
    beside the folder of a SQLite database file; None (the server's own default) for a
    tracking server."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        folder = artifacts_folder(db.parent)
        folder.mkdir(parents=True, exist_ok=True)
        return folder.as_uri()
    return None


def configure_tracking(store_dir: Path | None = None) -> str:
    """Point MLflow at the tracking store and return its URI.

    ``MLFLOW_TRACKING_URI`` wins when set; otherwise the embedded SQLite store in
    ``store_dir`` (see ``local_store``). For an HTTP server, ``HTTP_CLIENT_DEFAULTS`` (a
    short timeout and a few quick retries) are set where the environment does not set
    them, so an unreachable server fails in seconds (``check_tracking``) rather than
    minutes, and one dropped request does not end a training.
    """
    uri = _user_uri()
    if uri:
        if uri.startswith(("http://", "https://")):
            for name, value in HTTP_CLIENT_DEFAULTS.items():
                os.environ.setdefault(name, value)
    else:
        uri = local_store(store_dir)[0]
        _configured.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    logger.debug("tracking store: %s", uri)
    return uri


def check_tracking(uri: str) -> None:
    """Fail fast with a clear message if the tracking store cannot be reached.

    Raises TrackingUnavailable naming the URI and the underlying error.
    """
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # see DEFAULT_HTTP_RETRIES
    try:
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot use this store"
        hint = ""
        if uri.startswith(("http://", "https://")):
            hint = (" Is the server running? Unset MLFLOW_TRACKING_URI to use the local store in ./mlflow,"
                    " or raise MLFLOW_HTTP_REQUEST_TIMEOUT for a slow server.")
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingUnavailable(f"tracking store {uri} is unreachable: {first_line[:300]}.{hint}") from exc
    finally:
        if retries is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = retries


def already_exists(exc: BaseException) -> bool:
    """True when ``exc`` is MLflow's RESOURCE_ALREADY_EXISTS: on a shared server another
    process created the same experiment or registered model between our look-up and create."""
    return isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_ALREADY_EXISTS"


def get_or_create_experiment(name: str) -> str:
    """Experiment id for ``name`` in the configured store, creating it with an explicit
    artifact location (``artifacts/<name>`` beside a SQLite store) when it does not exist.
    Safe when several processes create the same experiment at once (a shared server)."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root(mlflow.get_tracking_uri())
    try:
        return client.create_experiment(name, artifact_location=f"{location}/{name}" if location else None)
    except Exception as exc:
        if not already_exists(exc):
            raise
        return client.get_experiment_by_name(name).experiment_id


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the tracking store stopped answering" (not a bad request)."""
    return (ConnectionError, TimeoutError, requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            requests.exceptions.RetryError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def _chain(exc: BaseException):
    """``exc`` and every exception it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def lost_connection_reason(exc: BaseException) -> str | None:
    """Why the tracking store stopped answering ("Connection refused", ...) when ``exc`` comes
    from losing it, else None (a bad request, a missing model, a bug).

    MLflow wraps a refused connection in MlflowException("API request to ... failed"), and a
    failure while marking runs FAILED hides the first one, so the whole chain is searched.
    """
    kinds = _connection_errors()
    lost = [e for e in _chain(exc) if isinstance(e, kinds)]
    if not lost:
        return None
    # The innermost operating-system reason ("Connection refused") reads better than urllib3's.
    os_errors = [e for e in lost if isinstance(e, OSError) and e.strerror]
    return os_errors[-1].strerror if os_errors else str(lost[-1]).strip().splitlines()[0][:300]


def connection_lost(exc: BaseException, uri: str, doing: str, consequence: str = "") -> TrackingUnavailable | None:
    """A TrackingUnavailable naming ``uri`` when ``exc`` comes from losing the tracking store
    while ``doing`` something (e.g. "training adjacent_fracture"), followed by
    ``consequence`` (what the user should know about the state left behind); None for any
    other error."""
    reason = lost_connection_reason(exc)
    if reason is None:
        return None
    tail = f" {consequence}" if consequence else ""
    return TrackingUnavailable(f"the tracking store {uri} stopped answering while {doing} ({reason}).{tail}")
