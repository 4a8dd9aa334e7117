"""The worker's scoring process (``serving.http.scoring_process``): the same answers, byte for
byte, as scoring in the worker's thread; a child that dies is replaced and the batch scored
again; a child whose worker is killed exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from features.records import json_record
from serving_support import ensure_trained_store, store_env, use_trained_store, valid_flat_records

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The served models and drift counter of the test store, and a batch of jobs: valid
    single records, a two-record request, a request with a field error, and one with a
    warning (implausible but possible: scored, the warning in its answer)."""
    from serving.monitoring.drift_metrics import DriftMetrics, served_reference
    from serving.scoring.loading import load_served_models
    from serving.scoring.served_models import ServedModels
    from serving.http.validation import parse_body

    saved = dict(os.environ)  # use_trained_store points this process at the store: restored after
    use_trained_store(tmp_path_factory.getbasetemp())
    scorer = ServedModels(load_served_models(None))
    drift = DriftMetrics(served_reference(scorer.models), scorer.outcomes)
    flat = valid_flat_records(ensure_trained_store(tmp_path_factory.getbasetemp()), 6)
    records = [json_record(row) for row in flat.to_dict(orient="records")]
    bad = json.loads(json.dumps(records[5]))
    bad["procedure"]["age_years"] = 240  # outside the contract's range: 422 for that request only
    warned = json.loads(json.dumps(records[5]))
    # The upper neighbour reads 24 mm before surgery and 33 mm after: beyond measurement error.
    warned["imaging"]["preop"]["upper_adjacent_height_mm"] = 24.0
    warned["imaging"]["postop"]["upper_adjacent_height_mm"] = 33.0
    bodies = [records[0], records[1], [records[2], records[3]], bad, records[4], warned]
    jobs = []
    for body in bodies:
        parsed = parse_body(json.dumps(body).encode(), 100)
        assert parsed.ok, parsed.errors
        jobs.append((parsed.rows, parsed.procedure_ids, parsed.errors))
    yield scorer, drift, jobs
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def child(served):
    from serving.http.scoring_process import ScoringProcess

    scorer, drift, jobs = served
    proc = ScoringProcess(scorer, drift.counter)
    warm = proc.start(jobs[:1])
    assert warm.answers[0][0] == 200
    yield proc
    pid = proc.pid
    proc.close()
    assert pid is not None
    if psutil.pid_exists(pid):
        psutil.Process(pid).wait(timeout=10)  # closing the pool ends the child


@pytest.mark.parametrize("explain,horizon", [(False, None), (True, 24.0), (True, 6.0)])
def test_the_child_answers_the_same_bytes_as_the_thread(served, child, explain, horizon):
    from serving.http.micro_batch import process_batch

    scorer, drift, jobs = served
    here = process_batch(scorer, drift.counter, jobs, explain, horizon)
    there = child.run(jobs, explain, horizon)
    assert [a[0] for a in here.answers] == [200, 200, 200, 422, 200, 200]
    assert there.answers == here.answers
    assert json.loads(here.answers[2][1])["predictions"][1]["record"] == 1  # numbered within its request
    assert json.loads(here.answers[3][1])["errors"][0]["field"] == "procedure.age_years"
    # Warnings never refuse: the record is scored and its answer names them; the others have none.
    warnings = json.loads(here.answers[5][1])["predictions"][0]["warnings"]
    assert {"field": "imaging.postop.upper_adjacent_height_mm", "rule": "neighbour_height_over_time"} in [
        {k: w[k] for k in ("field", "rule")} for w in warnings]
    assert "24 mm before and 33 mm after" in warnings[0]["warning"]
    assert all(p["warnings"] == [] for a in here.answers[:3] for p in json.loads(a[1])["predictions"])
    # The drift counts too: the six records scored, none of the refused one.
    assert there.drift.records == here.drift.records == 6
    assert there.drift.missing == here.drift.missing
    for name, (per_bucket, total) in here.drift.inputs.items():
        np.testing.assert_array_equal(there.drift.inputs[name][0], per_bucket)
        assert there.drift.inputs[name][1] == total
    assert set(there.drift.risks) == set(here.drift.risks)


def test_a_child_that_dies_is_replaced_and_the_batch_scored_again(served, child):
    scorer, drift, jobs = served
    first = child.pid
    os.kill(first, signal.SIGKILL)
    if psutil.pid_exists(first):
        psutil.Process(first).wait(timeout=10)
    before = child.restarts
    result = child.run(jobs, False, None)
    assert [a[0] for a in result.answers] == [200, 200, 200, 422, 200, 200]
    assert child.restarts == before + 1
    assert child.pid not in (None, first)


def test_drift_counts_added_equal_observing_one_by_one(served):
    """``DriftMetrics.add(counter.count(...))``, what the worker does with a child's counts,
    writes the same exposition as prometheus_client's own ``observe`` per value."""
    from prometheus_client import CollectorRegistry, generate_latest

    from features.records import inspect_records
    from serving.monitoring.drift_metrics import DriftMetrics
    from serving.http.micro_batch import process_batch
    from serving.http.validation import rows_frame

    scorer, drift, jobs = served
    ok = [j for j in jobs if not j[2]][:3]
    typed = inspect_records(rows_frame([r for rows, _, _ in ok for r in rows])).typed
    scored = [json.loads(a[1])["predictions"][0] for a in process_batch(scorer, None, ok, False).answers]
    texts = []
    for bulk in (True, False):
        registry = CollectorRegistry()
        metrics = DriftMetrics(drift.reference, scorer.outcomes, registry=registry)
        if bulk:
            metrics.add(metrics.counter.count(typed, scored))
        else:  # prometheus_client's own observe, value by value
            for name, hist in metrics.inputs.items():
                values = np.asarray(typed[name], dtype="float64")
                for v in values[~np.isnan(values)]:
                    hist.labels(input=name).observe(v)
            for item in scored:
                for outcome, res in item["outcomes"].items():
                    for h, p in res["curve"].items():
                        metrics.risk.labels(outcome=outcome, horizon_months=f"{float(h):g}").observe(p)
        texts.append({line for line in generate_latest(registry).decode().splitlines()
                      if line.startswith(("refracture_input_value", "refracture_predicted_risk")) and "_created" not in line})
    assert texts[0] == texts[1]
    assert any('refracture_predicted_risk_count{horizon_months="24",outcome="remote_fracture"} 3.0' == t for t in texts[0])


CHILD_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from serving.http.scoring_process import ScoringProcess
from serving.scoring.served_models import ServedModels
proc = ScoringProcess(ServedModels([]), None)
proc._pool = proc._new_pool()
print(proc._pool.submit(int, "7").result(), proc.pid, flush=True)
time.sleep(600)
"""


def test_a_child_whose_worker_is_killed_exits(tmp_path):
    """SIGKILL of the worker runs no clean-up: the child must notice on its own."""
    worker = subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT.format(root=str(ROOT))], stdout=subprocess.PIPE,
                              text=True, env=store_env(tmp_path))
    try:
        answer, pid = worker.stdout.readline().split()
        assert answer == "7"
        child = psutil.Process(int(pid))
        assert child.ppid() == worker.pid
        worker.kill()
        worker.wait(timeout=10)
        child.wait(timeout=10)  # raises TimeoutExpired if the child stays
    finally:
        if worker.poll() is None:
            worker.kill()
