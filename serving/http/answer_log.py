"""What ``/predict`` and ``/explain`` hand the prediction log (``predictionlog``).

``AnsweredPredictions`` holds the answer's JSON bytes and the request's flat records, by
reference. Reading the answer back into rows (per record and model: version, risks at
every horizon, risk band, missing inputs) is done by the writer's thread, off the
answer's path, from the very bytes the client received.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from predictionlog.rows import ModelScores, Predictions, RowBatch, new_prediction_ids
from predictionlog.schema import HORIZONS_MONTHS
from serving.scoring.served_models import CONTEXT_HORIZON_MONTHS, curve_key

#: How ``X-Refracture-Source`` names the clinician page; every other caller is ``api``.
PAGE_SOURCE = "page"
#: ``X-Refracture-Purpose`` of the page's what-if requests: a changed copy of a record,
#: not a prediction for the patient, so not logged.
WHAT_IF = "what-if"


class AnsweredPredictions:
    """One answered request, queued for the prediction log (module docstring)."""

    def __init__(self, payload: bytes, rows: list[dict[str, Any]], source: str, request_id: str | None,
                 client: str | None, store_inputs: bool):
        self.payload = payload
        self.flat = rows
        self.source = source
        self.request_id = request_id
        self.client = client
        self.store_inputs = store_inputs
        self.prediction_ids = new_prediction_ids(len(rows))  # known now: a shadow score refers to them

    @property
    def n_records(self) -> int:
        return len(self.flat)

    def predictions(self) -> Predictions:
        answers = orjson.loads(self.payload)["predictions"]
        scores: list[ModelScores] = []
        keys = [curve_key(h) for h in HORIZONS_MONTHS]
        for outcome, first in answers[0].get("outcomes", {}).items():
            risks = np.array([[a["outcomes"][outcome]["curve"].get(k, np.nan) for k in keys] for a in answers],
                             dtype="float64")
            scores.append(ModelScores(outcome, first["model"]["name"], str(first["model"]["version"]), risks,
                                      [a["outcomes"][outcome].get("risk_band") for a in answers]))
        death = answers[0].get("context", {}).get("death")
        if death is not None:
            at = [i for i, h in enumerate(HORIZONS_MONTHS) if abs(h - CONTEXT_HORIZON_MONTHS) < 1e-9]
            risks = np.full((len(answers), len(HORIZONS_MONTHS)), np.nan)
            risks[:, at] = np.array([[a["context"]["death"]["probability"]] for a in answers])
            scores.append(ModelScores("death", death["model"]["name"], str(death["model"]["version"]), risks))
        missing = [sorted({m["field"] for o in a.get("outcomes", {}).values() for m in o.get("missing_inputs", [])})
                   for a in answers]
        return Predictions(self.source, [a.get("procedure_id") for a in answers], scores,
                           surgery_dates=[r.get("surgery_date") for r in self.flat], missing_inputs=missing,
                           request_id=self.request_id, client=self.client,
                           inputs=self.flat if self.store_inputs else None, prediction_ids=self.prediction_ids)

    def rows(self, secret: bytes) -> RowBatch:
        return self.predictions().rows(secret)


