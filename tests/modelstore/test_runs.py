"""modelstore.runs on a real local MLflow store: how tracked runs end, which runs left
RUNNING are found, and how they are closed."""

from __future__ import annotations

import os
import socket

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from modelstore.runs import HOST_TAG, PID_TAG, StillRunning, close_runs, left_running, tracked_run
from modelstore.tracking import configure_tracking, get_or_create_experiment

DEAD_PID = 2**22 + 7  # above the default pid_max: never a live process


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        configure_tracking(tmp_path_factory.mktemp("runs") / "mlflow")
        yield get_or_create_experiment("refracture-runs-test")


def _status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


def test_a_tracked_run_ends_finished_failed_or_killed(store):
    with tracked_run(experiment_id=store, run_name="fine") as fine:
        pass
    with pytest.raises(ValueError), tracked_run(experiment_id=store, run_name="broken") as broken:
        raise ValueError("a bug")
    with pytest.raises(KeyboardInterrupt), tracked_run(experiment_id=store, run_name="parent") as parent:
        with tracked_run(experiment_id=store, run_name="child", nested=True) as child:
            raise KeyboardInterrupt
    assert [_status(r.info.run_id) for r in (fine, broken, parent, child)] == ["FINISHED", "FAILED", "KILLED", "KILLED"]
    assert mlflow.active_run() is None
    tags = MlflowClient().get_run(fine.info.run_id).data.tags
    assert (tags[HOST_TAG], tags[PID_TAG]) == (socket.gethostname(), str(os.getpid()))


def test_runs_left_running_are_found_with_whether_their_process_runs(store):
    client = MlflowClient()
    other = client.create_experiment("another-project")
    here = socket.gethostname()
    gone = client.create_run(store, run_name="gone", tags={HOST_TAG: here, PID_TAG: str(DEAD_PID)}).info.run_id
    nested = client.create_run(store, run_name="nested", tags={HOST_TAG: here, PID_TAG: str(DEAD_PID),
                                                                "mlflow.parentRunId": gone}).info.run_id
    alive = client.create_run(store, run_name="alive", tags={HOST_TAG: here, PID_TAG: str(os.getpid())}).info.run_id
    elsewhere = client.create_run(store, run_name="elsewhere", tags={HOST_TAG: "other-host", PID_TAG: "1"}).info.run_id
    untagged = client.create_run(store, run_name="older").info.run_id
    client.create_run(other, run_name="not ours")
    found = {r.run_id: r for r in left_running()}
    assert set(found) == {gone, nested, alive, elsewhere, untagged}
    assert [found[i].alive for i in (gone, nested, alive, elsewhere, untagged)] == [False, False, True, None, None]
    assert found[nested].parent_run_id == gone and found[gone].experiment == "refracture-runs-test"

    with pytest.raises(StillRunning, match=alive):
        close_runs([gone, alive])
    assert _status(gone) == "RUNNING"  # nothing closed
    assert close_runs([gone]) == [gone, nested]  # the nested run with it
    assert (_status(gone), _status(nested)) == ("FAILED", "FAILED")
    assert close_runs([gone, alive, elsewhere, untagged], status="KILLED", force=True) == [alive, elsewhere, untagged]
    assert left_running() == [] and _status(alive) == "KILLED"
    with pytest.raises(ValueError, match="FAILED, KILLED"):
        close_runs([gone], status="FINISHED")
