"""How our MLflow runs end, and the runs a crash left ``RUNNING``.

A run opened by ``tracked_run`` ends ``FINISHED`` when its block completes, ``KILLED`` when
an interrupt ends it (Ctrl-C, or SIGTERM, which the command line raises as an interrupt:
``refracture.interrupts``) and ``FAILED`` on any other error, MLflow's own statuses. It is
tagged with the machine and process that run it, so a run still marked ``RUNNING`` whose
process is gone (killed outright, the machine lost, or the tracking store unreachable when
the run ended) can be told from one still running: ``left_running`` finds them and
``close_runs`` marks them, what ``refracture models`` and ``refracture close-runs`` show and do.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

import mlflow
from mlflow.entities import RunStatus, ViewType
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

#: Tags naming where a run's process runs.
HOST_TAG = "refracture.host"
PID_TAG = "refracture.pid"
#: MLflow's tag naming a nested run's parent.
PARENT_TAG = "mlflow.parentRunId"
#: The statuses a run can be closed with.
CLOSING_STATUSES = ("FAILED", "KILLED")


def process_tags() -> dict[str, str]:
    """This process's machine and id, as run tags."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def end_status(exc: BaseException | None) -> str:
    """MLflow's status for a run ended by ``exc``: FINISHED (none), KILLED (an interrupt) or FAILED."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


def _end_innermost(status: str) -> str | None:
    """End the innermost active run with ``status``; its id if the store could not be told
    (it stopped answering: the run stays RUNNING there until ``close_runs``), logged."""
    run = mlflow.active_run()
    try:
        mlflow.end_run(status)  # pops the run before it writes: it is no longer active either way
    except Exception as exc:  # noqa: BLE001 - the store is gone; the runs around it are tried too
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        logger.warning("run %s could not be marked %s (%s); it shows as RUNNING until `refracture close-runs %s`",
                       run.info.run_id, status, reason, run.info.run_id)
        return run.info.run_id
    return None


def close_active_runs(status: str) -> list[str]:
    """End every run this process has open, innermost first, with ``status``. Returns the
    ids the store could not be told about (``_end_innermost``)."""
    left = []
    while mlflow.active_run() is not None:
        if (run_id := _end_innermost(status)) is not None:
            left.append(run_id)
    return left


@contextmanager
def tracked_run(**start_run_args) -> Iterator[mlflow.ActiveRun]:
    """``mlflow.start_run(**start_run_args)`` tagged with ``process_tags``, ended FINISHED, or
    on an exception KILLED or FAILED (``end_status``) together with the runs opened inside it
    that are still open, and the exception re-raised."""
    tags = {**process_tags(), **(start_run_args.pop("tags", None) or {})}
    run = mlflow.start_run(tags=tags, **start_run_args)
    try:
        yield run
    except BaseException as exc:
        _end_through(run.info.run_id, end_status(exc))
        raise
    mlflow.end_run("FINISHED")  # a store that stopped answering here is an error of the block's caller


def _end_through(run_id: str, status: str) -> None:
    while (active := mlflow.active_run()) is not None:
        _end_innermost(status)
        if active.info.run_id == run_id:
            return


@dataclass(frozen=True)
class LeftRunning:
    """A run marked RUNNING. ``alive``: its process still runs on this machine (True), is
    gone (False), or runs elsewhere or was not tagged (None: cannot tell from here)."""

    run_id: str
    experiment: str
    name: str
    started: datetime
    host: str | None
    pid: int | None
    alive: bool | None
    parent_run_id: str | None


def _alive(host: str | None, pid: int | None) -> bool | None:
    if host is None or pid is None or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def left_running() -> list[LeftRunning]:
    """Every run of ours marked RUNNING, oldest first: tagged by ``tracked_run`` (whatever the
    experiment), or in an experiment named ``refracture-*`` (runs from before the tags)."""
    client = MlflowClient()
    experiments = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ALL)}
    if not experiments:
        return []
    runs = client.search_runs(list(experiments), filter_string="attributes.status = 'RUNNING'",
                              run_view_type=ViewType.ALL, max_results=5000, order_by=["attributes.start_time ASC"])
    out = []
    for r in runs:
        experiment = experiments[r.info.experiment_id]
        if HOST_TAG not in r.data.tags and not experiment.startswith("refracture-"):
            continue  # another project's run on a shared server
        host, pid = _process_of(r.data.tags)
        out.append(LeftRunning(r.info.run_id, experiment, r.info.run_name or "",
                               datetime.fromtimestamp(r.info.start_time / 1000, timezone.utc), host, pid,
                               _alive(host, pid), r.data.tags.get(PARENT_TAG)))
    return out


class StillRunning(RuntimeError):
    """A run to close whose process still runs on this machine."""


def close_runs(run_ids: list[str], status: str = "FAILED", force: bool = False) -> list[str]:
    """Mark ``run_ids`` and their nested runs still RUNNING as ``status`` (FAILED or KILLED),
    ending them now. Returns the ids closed; a run that is not RUNNING is left as it is.

    Raises StillRunning (nothing closed) when a run's process still runs on this machine,
    unless ``force``; MLflow's error for an unknown run id.
    """
    if status not in CLOSING_STATUSES:
        raise ValueError(f"close runs as one of {', '.join(CLOSING_STATUSES)}, not {status!r}")
    client = MlflowClient()
    running = [run for run in (client.get_run(run_id) for run_id in run_ids)
               if run.info.status == RunStatus.to_string(RunStatus.RUNNING)]
    alive = [run.info.run_id for run in running if _alive(*_process_of(run.data.tags))]
    if alive and not force:
        raise StillRunning(f"the process of run(s) {', '.join(alive)} still runs on this machine: stop it, or "
                           "close them anyway with --force")
    closed: list[str] = []
    while running:
        run = running.pop(0)
        children = client.search_runs([run.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run.info.run_id}'",
                                      run_view_type=ViewType.ALL, max_results=1000)
        running += [c for c in children if c.info.status == RunStatus.to_string(RunStatus.RUNNING)]
        client.set_terminated(run.info.run_id, status)
        closed.append(run.info.run_id)
    return closed


def _process_of(tags: dict[str, str]) -> tuple[str | None, int | None]:
    """(host, pid) a run was tagged with (``process_tags``)."""
    pid = tags.get(PID_TAG)
    return tags.get(HOST_TAG), int(pid) if pid and pid.isdigit() else None
