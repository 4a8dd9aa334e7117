"""``PredictionLog``: the one object a caller holds to remember what it predicted.

The service (``/predict``, ``/explain``, the page), batch scoring, FHIR and CDS Hooks all
log through it, so every prediction is stored the same way:

    log = PredictionLog.open(PredictionLogSettings.from_env())   # None when the log is off
    sent = log.record(source="api", procedure_ids=ids, scores=[ModelScores(...), ...],
                      surgery_dates=dates, missing_inputs=missing, request_id=rid, client=name)
    log.record_shadow(sent, [ModelScores(..., role="challenger")])   # a challenger scored later
    log.counters()   # written, spooled, replayed, dropped, queued, spool_pending
    log.close()

``record`` returns at once (the writer thread stores the rows); it never raises for a
store that is down (the rows are spooled), and returns None when the queue was full (the
records are counted as dropped). Model inputs are kept only when the deployment turns it
on (``store_inputs``); otherwise ``inputs`` is ignored.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from sqlalchemy.exc import SQLAlchemyError

from predictionlog.rows import ModelScores, Predictions, ShadowScores
from predictionlog.settings import PredictionLogSettings
from predictionlog.store import PredictionStore
from predictionlog.writer import PredictionWriter

logger = logging.getLogger(__name__)


class PredictionLog:
    """A store and its started writer, for one process (module docstring)."""

    def __init__(self, settings: PredictionLogSettings, store: PredictionStore, writer: PredictionWriter):
        self.settings = settings
        self.store = store
        self.writer = writer

    @classmethod
    def open(cls, settings: PredictionLogSettings, retry_seconds: float = 5.0,
             observer=None) -> "PredictionLog | None":
        """The log of these settings with its writer started, or None when the log is off.

        Raises ``predictionlog.store.SchemaOutOfDate`` when the store answers but is not at
        the newest migration (a deployment step was missed); a store that does not answer
        yet is only warned about: the writer spools until it does."""
        if not settings.enabled:
            return None
        if settings.secret is None:
            raise ValueError("the prediction log needs its secret (PredictionLogSettings.from_env checks it)")
        store = PredictionStore(settings.url)
        try:
            store.require_current()
        except SQLAlchemyError as exc:
            logger.warning("prediction store %r not reachable at start (%s); predictions are spooled to %s until it is",
                           store, type(exc).__name__, settings.spool_dir)
        writer = PredictionWriter(store, settings.secret, settings.spool_dir, settings.max_queue_records,
                                  settings.batch_records, settings.flush_seconds, retry_seconds, observer).start()
        return cls(settings, store, writer)

    def record(self, *, source: str, procedure_ids: Sequence[Any], scores: Sequence[ModelScores],
               surgery_dates: Sequence[Any] | None = None, missing_inputs: Sequence[Sequence[str]] | None = None,
               request_id: str | None = None, client: str | None = None,
               inputs: Any = None, wait_s: float = 0.0) -> Predictions | None:
        """Queue one call's predictions (``predictionlog.rows.Predictions`` says what each
        argument holds); returns them (their ``prediction_ids`` for a shadow score), or
        None when the queue was full and they were dropped. ``wait_s``: wait that long for
        room first (batch scoring; the service never waits)."""
        sent = Predictions(source, procedure_ids, scores, surgery_dates, missing_inputs, request_id, client,
                           inputs if self.settings.store_inputs else None)
        return sent if self.writer.submit(sent, wait_s) else None

    def submit(self, pending) -> bool:
        """Queue anything with ``n_records`` and ``rows(secret)`` (a caller's own adapter,
        e.g. the service's answer bytes); False when dropped."""
        return self.writer.submit(pending)

    def record_shadow(self, predictions: Predictions, scores: Sequence[ModelScores]) -> bool:
        """Queue a challenger's scores of predictions already recorded; False when dropped."""
        return self.writer.submit(ShadowScores(predictions.prediction_ids, scores))

    def counters(self) -> dict[str, int]:
        return self.writer.counters()

    def flush(self, timeout: float = 30.0) -> bool:
        return self.writer.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        self.writer.close(timeout)
        self.store.dispose()
