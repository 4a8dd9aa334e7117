"""The worker's scoring process: micro-batches scored on another core than the HTTP path.

A BentoML worker is one Python process, and one Python process runs Python on one core at
a time (the GIL). Measured on the bench machine (2 vCPUs, ``bench/README.md``, issue 14):
with scoring in a thread of the worker, the worker used 1.03 cores at 32 clients, the
second core sat idle, and the HTTP path (parse, auth, audit, BentoML) and the scoring of
the batches took turns on the one core: 3.6 ms of CPU per request, of which the HTTP
path alone is 1.4 ms.

So each worker starts one child process (``multiprocessing`` "spawn": a fresh
interpreter, nothing inherited from the worker's threads) holding a copy of the served
models, sent to it pickled at start (the same objects, not a second registry load: it
cannot serve other versions). The batcher's thread hands a batch to the child
(``serving.http.micro_batch.process_batch``: plain rows in, the answers' bytes and the drift
counts out) and waits, without the GIL; the worker's event loop keeps parsing and
answering meanwhile. The answers are the same bytes as in-thread scoring (tested).

- **Start.** The child is started and warmed up (one explained record) before the worker
  reports ready, so a broken model or a child that cannot start stops the start.
- **A child that dies** (killed, out of memory) fails the batch in flight over to a new
  child once: scoring has no side effects, so the batch is scored again there. A batch
  that kills two children in a row fails (500, "scoring failed") and the next batch
  starts a new child.
- **Stopping.** The child ends with the worker: at a normal exit the pool is shut down,
  and a child whose worker was killed notices within a second (its parent changes) and
  exits, so no orphan holds a copy of the models.
- ``REFRACTURE_SCORING_PROCESS=0`` scores in a thread of the worker instead (one core per
  worker, half the memory: each child holds a copy of the models).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from serving.http.micro_batch import BatchJob, BatchResult, process_batch
from serving.monitoring.drift_metrics import DriftCounter
from serving.scoring.served_models import SERVING_THREADS, ServedModels, use_threads

logger = logging.getLogger(__name__)

#: How often the child checks that its worker is still alive (seconds).
PARENT_CHECK_S = 1.0

# The child's state: the served models and the drift counter (set by ``_start_child``).
_CHILD: tuple[ServedModels, DriftCounter | None] | None = None


def _start_child(payload: bytes, parent_pid: int) -> None:
    """Runs once in the child: unpickle the models; exit when the worker is gone."""
    global _CHILD
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole group: the worker decides
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s [%(levelname)s] [scoring process] %(message)s")
    _CHILD = pickle.loads(payload)
    use_threads(_CHILD[0].all_models, SERVING_THREADS)  # a thread setting may not survive the pickle

    def watch_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)  # the worker was killed: nobody will ever send a batch

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()


def _score_in_child(jobs: list[BatchJob], explain: bool, horizon_months: float | None) -> BatchResult:
    assert _CHILD is not None, "scoring process not started"
    scorer, counter = _CHILD
    return process_batch(scorer, counter, jobs, explain, horizon_months)


class ScoringProcess:
    """Scores batches in one child process (see the module docstring). ``run`` blocks
    until the batch is scored: call it from a thread (the batcher's), not the event loop."""

    def __init__(self, scorer: ServedModels, counter: DriftCounter | None) -> None:
        self._payload = pickle.dumps((scorer, counter), protocol=pickle.HIGHEST_PROTOCOL)
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    def start(self, warm_up: list[BatchJob]) -> Any:
        """Start the child and score ``warm_up`` (explained) in it; returns its result and
        raises what the child raised (e.g. a model that cannot score)."""
        self._pool = self._new_pool()
        return self._pool.submit(_score_in_child, warm_up, True, None).result()

    def run(self, jobs: list[BatchJob], explain: bool, horizon_months: float | None) -> BatchResult:
        pool = self._pool
        if pool is None:
            raise RuntimeError("scoring process not started")
        try:
            return pool.submit(_score_in_child, jobs, explain, horizon_months).result()
        except BrokenProcessPool:
            logger.error("the scoring process ended unexpectedly; starting a new one and scoring the batch again")
            pool = self._replace(pool)
        try:
            return pool.submit(_score_in_child, jobs, explain, horizon_months).result()
        except BrokenProcessPool:
            logger.error("the new scoring process ended too; the batch failed")
            self._replace(pool)
            raise RuntimeError("scoring failed") from None

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    @property
    def pid(self) -> int | None:
        """The child's process id (None before the first batch or after ``close``)."""
        procs = getattr(self._pool, "_processes", None) or {}
        return next(iter(procs), None)

    def _replace(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is broken:  # another batcher's thread may have replaced it already
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                self.restarts += 1
            assert self._pool is not None
            return self._pool

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_child, initargs=(self._payload, os.getpid()))
