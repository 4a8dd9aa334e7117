"""The batched writer: off the answer's path, spooled while the store is down, replayed
exactly once when it is back, and every loss counted."""

from __future__ import annotations

import threading
import time

import numpy as np
from sqlalchemy.exc import OperationalError

from predictionlog.rows import ModelScores, Predictions, RowBatch, ShadowScores
from predictionlog.writer import PredictionWriter
from prediction_log_support import SECRET, migrated_store


class Switchable:
    """A real store that can be made unreachable (raises as the driver does)."""

    def __init__(self, store):
        self.store = store
        self.down = False
        self.inserts = 0

    def insert(self, batch: RowBatch) -> int:
        if self.down:
            raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))
        self.inserts += 1
        return self.store.insert(batch)


def _call(n: int, tag: str = "") -> Predictions:
    scores = [ModelScores("cemented_refracture", "refracture-cemented_refracture", "1", np.full((n, 4), 0.05))]
    return Predictions("api", [f"{tag}V{i}" for i in range(n)], scores, request_id=tag or None)


def _writer(store, tmp_path, **kw) -> PredictionWriter:
    kw = {"batch_records": 50, "flush_seconds": 0.05, "retry_seconds": 0.1, **kw}
    return PredictionWriter(store, SECRET, tmp_path / "spool", **kw).start()


def test_submit_returns_at_once_and_batches_are_written(tmp_path):
    store = Switchable(migrated_store(tmp_path))
    w = _writer(store, tmp_path, batch_records=100, flush_seconds=0.2)
    started = time.perf_counter()
    for i in range(40):
        assert w.submit(_call(5, f"c{i}-"))
    assert time.perf_counter() - started < 0.5
    assert w.flush(10)
    assert w.counters()["written"] == 200
    assert store.inserts <= 4  # in batches of about 100 records, not one write per call
    w.close()
    assert store.store.count() == 200


def test_an_outage_is_spooled_and_replayed_once_in_order(tmp_path):
    store = Switchable(migrated_store(tmp_path))
    w = _writer(store, tmp_path)
    calls = [_call(3, f"a{i}-") for i in range(10)]
    for c in calls[:5]:
        w.submit(c)
    assert w.flush(10)
    store.down = True
    for c in calls[5:]:
        w.submit(c)
        # A challenger's shadow score for it, which needs the prediction stored first.
        w.submit(ShadowScores(c.prediction_ids, [ModelScores("cemented_refracture", "refracture-cemented_refracture",
                                                             "2", np.full((3, 4), 0.07), role="challenger")]))
    assert w.flush(10)
    c = w.counters()
    assert c["spooled"] == 30 and c["spool_pending"] == 30 and store.store.count() == 15
    assert list((tmp_path / "spool").glob("spool-*.jsonl"))
    store.down = False
    deadline = time.monotonic() + 10
    while w.counters()["spool_pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    c = w.counters()
    assert (c["written"], c["replayed"], c["dropped"], c["spool_pending"]) == (15, 30, 0, 0)
    assert store.store.count() == 30 and store.store.count("prediction_scores") == 45
    assert not list((tmp_path / "spool").glob("spool-*.jsonl"))
    w.close()


def test_a_spool_left_by_a_crashed_process_is_replayed_by_the_next_once(tmp_path):
    inner = migrated_store(tmp_path)
    store = Switchable(inner)
    store.down = True
    w = _writer(store, tmp_path)
    calls = [_call(4, f"b{i}-") for i in range(5)]
    for c in calls:
        w.submit(c)
    assert w.flush(10)
    inner.insert(calls[0].rows(SECRET))  # the first one did reach the store (its commit was in doubt)
    w.close()  # the process ends with the store still down: its lock goes, the file stays
    spool = next((tmp_path / "spool").glob("spool-*.jsonl"))
    with open(spool, "a") as fh:
        fh.write('{"predictions": [{"prediction_id": "torn')  # a crash mid-line
    w2 = _writer(Switchable(inner), tmp_path)
    deadline = time.monotonic() + 10
    while inner.count() < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w2.flush(5)
    time.sleep(0.2)
    assert inner.count() == 20  # every prediction once, the one already stored included
    assert w2.counters()["replayed"] == 20 and not spool.exists()
    w2.close()


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path):
    gate = threading.Event()

    class Slow:
        def insert(self, batch):
            gate.wait(10)
            return len(batch.predictions)

    w = _writer(Slow(), tmp_path, max_queue_records=100, batch_records=10)
    accepted = sum(w.submit(_call(10, f"d{i}-")) for i in range(30))
    assert accepted < 30
    assert w.counters()["dropped"] == 10 * (30 - accepted)
    gate.set()
    assert w.flush(10)
    w.close()


def test_a_call_the_store_refuses_is_dropped_alone(tmp_path):
    store = migrated_store(tmp_path)
    w = _writer(store, tmp_path, flush_seconds=0.3)
    good = _call(3, "g-")
    orphan = ShadowScores(["f" * 32], [ModelScores("cemented_refracture", "m", "2", np.full((1, 4), 0.1),
                                                   role="challenger")])  # no such prediction
    w.submit(good)
    w.submit(orphan)
    assert w.flush(10)
    c = w.counters()
    assert c["dropped"] == 1 and store.count() == 3
    w.close()


def test_a_bad_shape_from_a_caller_is_dropped_and_counted(tmp_path, caplog):
    store = migrated_store(tmp_path)
    w = _writer(store, tmp_path)
    bad = Predictions("api", ["x", "y"], [ModelScores("cemented_refracture", "m", "1", np.zeros((2, 3)))])
    w.submit(bad)
    w.submit(_call(2, "ok-"))
    assert w.flush(10)
    assert w.counters()["dropped"] == 2 and store.count() == 2
    assert "risks of shape (2, 3)" in caplog.text
    w.close()


def test_a_closed_writer_accepts_nothing(tmp_path):
    w = _writer(migrated_store(tmp_path), tmp_path)
    w.close()
    assert not w.submit(_call(2))
    assert w.counters()["dropped"] == 2
