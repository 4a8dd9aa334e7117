"""Challengers scored in shadow: each answered request's records scored again by the
``challenger`` version of each outcome, logged in the prediction store next to the
champion's answer (``role`` challenger), never returned.

Off by default (``REFRACTURE_SHADOW_CHALLENGERS=1`` turns it on). The endpoint only puts
the request's records on a bounded queue and returns; one thread of the worker scores
them with the challengers (XGBoost on one thread) and hands the scores to the prediction
log. A full queue drops the shadow job, never the answer, and counts it
(``refracture_shadow_records_total{state="dropped"}``); ``realized performance`` then
compares the two on the same patients once their outcomes are linked.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from modelstore.risk_bands import bands_of
from predictionlog.rows import ModelScores, ShadowScores
from serving.http.validation import rows_frame

logger = logging.getLogger(__name__)

#: Requests waiting for shadow scoring at most (per worker); beyond, they are dropped.
MAX_QUEUED_REQUESTS = 256


class ShadowScorer:
    """The shadow thread of one worker (module docstring). ``challengers``: loaded
    models (``serving.scoring.loading.load_challengers``); ``log``: the worker's
    ``PredictionLog``; ``risk_bands``: the served bands."""

    def __init__(self, challengers: list, log, risk_bands: dict[str, tuple[float, float]],
                 max_queued: int = MAX_QUEUED_REQUESTS):
        import prometheus_client as pc

        self.challengers = challengers
        self.log = log
        self.risk_bands = risk_bands
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self.records = pc.Counter("refracture_shadow_records", "Records scored by the challengers in shadow, or "
                                  "dropped (queue full).", ["state"], registry=None)
        self._thread = threading.Thread(target=self._run, name="shadow-challengers", daemon=True)
        self._thread.start()

    def submit(self, rows: list[dict[str, Any]], prediction_ids: list[str]) -> bool:
        """Queue a request's records (returns at once); False, counted, when full."""
        try:
            self._queue.put_nowait((rows, prediction_ids))
            return True
        except queue.Full:
            self.records.labels(state="dropped").inc(len(rows))
            return False

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            rows, ids = job
            try:
                flat = rows_frame(rows)
                scores = []
                for m in self.challengers:
                    curve = m.model.predict_curve(flat)
                    band = self.risk_bands.get(m.outcome)
                    bands = bands_of(curve.iloc[:, -1].to_numpy(), band).tolist() if band else None
                    scores.append(ModelScores(m.outcome, m.name, str(m.version), curve, bands, role="challenger"))
                if self.log.submit(ShadowScores(ids, scores)):
                    self.records.labels(state="scored").inc(len(rows))
            except Exception:  # noqa: BLE001 - a shadow failure must never reach the answers
                logger.exception("shadow scoring failed for %d record(s)", len(rows))
                self.records.labels(state="failed").inc(len(rows))

    def close(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
