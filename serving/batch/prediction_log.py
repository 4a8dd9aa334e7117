"""What ``refracture predict`` (pandas engine) hands the prediction log: a scored file's
output columns read back as predictions, in calls of ``CALL_RECORDS`` records.

Per record: its procedure key and surgery date (the input), per served model its version,
``<outcome>_p_<m>m`` at every horizon and ``<outcome>_risk_band`` (``death_p_24m`` only for
the death model), and the run's id as the request id. The missing inputs of a batch
record are not in the output, so they are not stored (None).
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd

from predictionlog.rows import ModelScores
from predictionlog.schema import HORIZONS_MONTHS
from modelstore.estimand import horizon_column

#: Records per logged call: the writer's queue takes them one call at a time.
CALL_RECORDS = 5000


def batch_scores(models, output: pd.DataFrame) -> list[ModelScores]:
    """One ``ModelScores`` per served model from the output columns."""
    out = []
    for m in models:
        cols = [f"{m.outcome}_{horizon_column(h)}" for h in HORIZONS_MONTHS]
        risks = np.column_stack([output[c].to_numpy(dtype="float64") if c in output else np.full(len(output), np.nan)
                                 for c in cols])
        band = f"{m.outcome}_risk_band"
        out.append(ModelScores(m.outcome, m.name, str(m.version), risks,
                               output[band].tolist() if band in output else None))
    return out


def log_scored(log, models, flat: pd.DataFrame, output: pd.DataFrame, run_id: str | None = None,
               source: str = "batch") -> str:
    """Queue a scored file's predictions (waiting for room: a batch never drops), in calls
    of ``CALL_RECORDS``; ``source``: ``batch``, or ``fhir`` for a Bulk FHIR export; returns
    the run id used as their request id."""
    run_id = run_id or f"batch-{uuid.uuid4().hex[:12]}"
    for a in range(0, len(output), CALL_RECORDS):
        part = output.iloc[a:a + CALL_RECORDS]
        sent = log.record(source=source, procedure_ids=part["procedure_id"].tolist(), scores=batch_scores(models, part),
                          surgery_dates=flat["surgery_date"].iloc[a:a + CALL_RECORDS].tolist(), request_id=run_id,
                          inputs=flat.iloc[a:a + CALL_RECORDS], wait_s=600)
        if sent is None:
            raise RuntimeError(f"the prediction log took no records from {a} on (closed)")
    return run_id
