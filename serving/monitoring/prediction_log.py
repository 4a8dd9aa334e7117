"""The prediction log on ``/metrics``: the writer's counters
(``refracture_prediction_log_records`` by state: written, spooled, replayed, dropped) and
the latest realized figures ``refracture performance`` stored (``refracture_realized_*``
gauges; bounded labels: outcome, horizon, role), re-read from the store every
``REFRESH_S`` seconds (docs/monitoring.md, section 7).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds between two readings of the realized figures from the store.
REFRESH_S = 600.0


class PredictionLogMetrics:
    """The log's counters and the realized gauges (module docstring); created at start
    (BentoML sets up Prometheus' multiprocess mode before the service)."""

    GAUGES = ("observed_expected", "calibration_slope", "td_auroc")

    def __init__(self):
        import prometheus_client as pc

        self.records = pc.Counter("refracture_prediction_log_records", "Records by what the prediction log did with "
                                  "them: written, spooled, replayed, dropped.", ["state"], registry=None)
        labels = ["outcome", "horizon_months", "role"]
        self.gauges: dict[str, Any] = {}
        for metric in self.GAUGES:
            for suffix in ("", "_ci_low", "_ci_high"):
                name = f"refracture_realized_{metric}{suffix}"
                self.gauges[metric + suffix] = pc.Gauge(name, f"Realized {metric}{suffix.replace('_', ' ')} on matured "
                                                              "predictions (refracture performance).", labels,
                                                        registry=None, multiprocess_mode="max")
        for name in ("matured", "events"):
            self.gauges[name] = pc.Gauge(f"refracture_realized_{name}", f"Matured predictions ({name}) behind the "
                                         "realized figures.", labels, registry=None, multiprocess_mode="max")
        self.computed = pc.Gauge("refracture_realized_computed_timestamp_seconds", "When refracture performance ran.",
                                 registry=None, multiprocess_mode="max")
        self._stop = threading.Event()

    def count(self, state: str, n: int) -> None:
        """The writer's observer: ``n`` records went to ``state``."""
        self.records.labels(state=state).inc(n)

    def refresh(self, store) -> None:
        """Set the gauges from the store's latest realized figures (nothing when unreadable)."""
        try:
            rows = store.performance()
        except Exception as exc:  # noqa: BLE001 - /metrics must not fail with the store
            logger.warning("realized performance not read from the prediction store (%s)", type(exc).__name__)
            return
        for r in rows:
            labels = {"outcome": r["outcome"], "horizon_months": f"{r['horizon_months']:g}", "role": r["role"]}
            for key, value in ((r["metric"], r["value"]), (r["metric"] + "_ci_low", r["ci_low"]),
                               (r["metric"] + "_ci_high", r["ci_high"]), ("matured", r["matured"]),
                               ("events", r["events"])):
                if value is not None and key in self.gauges:
                    self.gauges[key].labels(**labels).set(float(value))
        if rows:
            latest = max(r["computed_at"] for r in rows)
            if latest.tzinfo is None:  # SQLite hands UTC back without its zone
                latest = latest.replace(tzinfo=dt.timezone.utc)
            self.computed.set(latest.timestamp())

    def start_refreshing(self, store, every_s: float = REFRESH_S) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.refresh(store)
                self._stop.wait(every_s)

        threading.Thread(target=loop, name="realized-gauges", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
