"""Shared by the prediction-log tests: a migrated store, and simulated predictions that a
later export of the same simulated site can be linked to."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from features.labels import OUTCOMES
from features.simulator import simulate
from modelstore.estimand import DEFAULT_HORIZONS_MONTHS
from predictionlog.rows import ModelScores, Predictions
from predictionlog.store import PredictionStore

SECRET = b"a-test-site-secret-of-at-least-32-characters"
PROFILE = "xiong2021-pvp"


def migrated_store(folder: Path) -> PredictionStore:
    """A fresh SQLite store in ``folder``, at the newest migration."""
    store = PredictionStore(f"sqlite:///{Path(folder) / 'predictions.db'}")
    store.migrate()
    return store


def truth_scores(procedures: pd.DataFrame, truth: pd.DataFrame, version: str = "1", role: str = "champion",
                 scale: float = 1.0) -> list[ModelScores]:
    """Per outcome, the simulator's true risks (times ``scale``, capped below 1) as the
    'model' of registered version ``version``: a perfectly calibrated one when scale is 1."""
    tr = truth.set_index("procedure_id").loc[procedures["procedure_id"].to_numpy()]
    out = []
    for o in OUTCOMES:
        risks = tr[[f"p_{o}_{m:g}m" for m in DEFAULT_HORIZONS_MONTHS]].to_numpy() * scale
        out.append(ModelScores(o, f"refracture-{o}", version, np.minimum(risks, 0.999), role=role))
    return out


def log_at_surgery(store: PredictionStore, procedures: pd.DataFrame, scores: list[ModelScores],
                   source: str = "batch") -> Predictions:
    """Log one prediction per procedure, dated at its surgery, in one batch (stored directly)."""
    p = Predictions(source, list(procedures["procedure_id"]), scores, surgery_dates=list(procedures["surgery_date"]),
                    request_id="test-run")
    batch = p.rows(SECRET)
    for row, when in zip(batch.predictions, procedures["surgery_date"]):
        row["logged_at"] = pd.Timestamp(when).tz_localize("UTC").isoformat()
    store.insert(batch)
    return p


def site_exports(n: int, seed: int, first_cut: dt.date, later_cut: dt.date):
    """The same simulated site drawn at two data cuts: (tables, truth) at each."""
    return simulate(PROFILE, n, seed=seed, data_cut=first_cut), simulate(PROFILE, n, seed=seed, data_cut=later_cut)
