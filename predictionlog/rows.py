"""What one call's predictions are, and their rows in the store.

A caller (the service, batch scoring, FHIR, CDS Hooks) hands the writer a ``Predictions``
(or, for a challenger scored in shadow, a ``ShadowScores``) holding references to what it
already computed: building the rows (hashing keys, one dict per record and model) is done
later by the writer's thread, off the answer's path. The caller must not change the
arrays it passed afterwards.

Rows are plain JSON values (text, numbers, None; dates as ISO text), so a batch that
cannot reach the store is spooled to a file as it is and replayed unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from predictionlog.keys import link_keys
from predictionlog.schema import HORIZONS_MONTHS, RISK_COLUMNS, ROLES, SOURCES

#: Longest client name stored (``predictions.client``); longer names are cut.
MAX_CLIENT_CHARS = 128


def new_prediction_ids(n: int) -> list[str]:
    """``n`` unique prediction ids: one random 96-bit prefix per call and the position."""
    prefix = uuid.uuid4().hex[:24]
    return [f"{prefix}{i:08x}" for i in range(n)]


@dataclass(frozen=True)
class ModelScores:
    """One model's answers for the records of a call.

    ``risks``: the predicted cumulative incidence, one row per record and one column per
    horizon of ``predictionlog.schema.HORIZONS_MONTHS`` (a DataFrame with the columns
    ``p_3m`` ... ``p_24m``, as ``RefractureModel.predict_curve`` returns, or an array in
    that order). ``risk_band``: the band of each record (None when not banded, e.g. death).
    ``role``: ``champion`` (the answer) or ``challenger`` (shadow).
    """

    outcome: str
    model_name: str
    model_version: str
    risks: Any
    risk_band: Sequence[str | None] | None = None
    role: str = "champion"

    def matrix(self, n: int) -> np.ndarray:
        """The risks as an (n, horizons) float array; ValueError naming what is wrong."""
        if isinstance(self.risks, pd.DataFrame):
            missing = [c for c in RISK_COLUMNS if c not in self.risks.columns]
            if missing:
                raise ValueError(f"{self.outcome}: risks lack the column(s) {', '.join(missing)}")
            values = self.risks[list(RISK_COLUMNS)].to_numpy(dtype="float64")
        else:
            values = np.asarray(self.risks, dtype="float64")
        if values.shape != (n, len(HORIZONS_MONTHS)):
            raise ValueError(f"{self.outcome}: risks of shape {values.shape}, expected ({n}, {len(HORIZONS_MONTHS)})")
        return values


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")


def _iso_date(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    return None if pd.isna(stamp) else stamp.date().isoformat()


def _score_rows(ids: Sequence[str], scores: Sequence[ModelScores]) -> list[dict[str, Any]]:
    rows = []
    n = len(ids)
    for s in scores:
        _check_role(s.role)
        values = s.matrix(n)
        bands = list(s.risk_band) if s.risk_band is not None else [None] * n
        for i, pid in enumerate(ids):
            row = {"prediction_id": pid, "outcome": s.outcome, "role": s.role, "model_name": s.model_name,
                   "model_version": str(s.model_version), "risk_band": None if bands[i] is None else str(bands[i])}
            for j, col in enumerate(RISK_COLUMNS):
                v = float(values[i, j])
                row[col] = v if math.isfinite(v) else None
            rows.append(row)
    return rows


@dataclass
class RowBatch:
    """Rows for the store: ``predictions`` then ``scores`` (written in that order, in one
    transaction). ``n_records``: the number of predictions it stands for."""

    predictions: list[dict[str, Any]] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_records(self) -> int:
        """Predictions, plus the predictions given challenger scores in shadow: what the
        callers submitted (``Predictions.n_records`` + ``ShadowScores.n_records``)."""
        return len(self.predictions) + len({r["prediction_id"] for r in self.scores if r["role"] != "champion"})

    def to_json(self) -> str:
        return json.dumps({"predictions": self.predictions, "scores": self.scores}, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "RowBatch":
        data = json.loads(text)
        return cls(list(data["predictions"]), list(data["scores"]))

    def extend(self, other: "RowBatch") -> None:
        self.predictions.extend(other.predictions)
        self.scores.extend(other.scores)


@dataclass
class Predictions:
    """One call's predictions, as the caller has them (see the module docstring).

    ``procedure_ids``: each record's procedure key (None when absent: logged, never
    linkable); ``surgery_dates``: dates or ISO text; ``missing_inputs``: per record, the
    names of the missing fields; ``request_id``: the audit log's id of the HTTP request
    (or the batch run's); ``client``: the caller's name when known; ``inputs``: per record
    the model inputs (a list of dicts or a DataFrame of flat records), passed only when the
    deployment stores them.
    ``prediction_ids`` are drawn here unless given (``new_prediction_ids``), so a shadow
    score can refer to them.
    """

    source: str
    procedure_ids: Sequence[Any]
    scores: Sequence[ModelScores]
    surgery_dates: Sequence[Any] | None = None
    missing_inputs: Sequence[Sequence[str]] | None = None
    request_id: str | None = None
    client: str | None = None
    inputs: Sequence[dict[str, Any]] | pd.DataFrame | None = None
    logged_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    prediction_ids: list[str] | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r}: expected one of {', '.join(SOURCES)}")
        n = len(self.procedure_ids)
        for name in ("surgery_dates", "missing_inputs", "inputs"):
            given = getattr(self, name)
            if given is not None and len(given) != n:
                raise ValueError(f"{name}: {len(given)} values for {n} records")
        if self.prediction_ids is None:
            self.prediction_ids = new_prediction_ids(n)
        elif len(self.prediction_ids) != n:
            raise ValueError(f"prediction_ids: {len(self.prediction_ids)} values for {n} records")

    @property
    def n_records(self) -> int:
        return len(self.procedure_ids)

    def rows(self, secret: bytes) -> RowBatch:
        """The rows to store; the procedure keys become keyed hashes here."""
        hashes = link_keys(secret, self.procedure_ids)
        inputs_all = self.inputs.to_dict("records") if isinstance(self.inputs, pd.DataFrame) else self.inputs
        when = self.logged_at.astimezone(dt.timezone.utc).isoformat()
        client = None if self.client is None else str(self.client)[:MAX_CLIENT_CHARS]
        preds = []
        for i, pid in enumerate(self.prediction_ids):
            missing = self.missing_inputs[i] if self.missing_inputs is not None else None
            inputs = inputs_all[i] if inputs_all is not None else None
            preds.append({
                "prediction_id": pid, "logged_at": when, "source": self.source, "request_id": self.request_id,
                "record_index": i, "client": client, "key_hash": hashes[i],
                "surgery_date": _iso_date(self.surgery_dates[i]) if self.surgery_dates is not None else None,
                "missing_inputs": None if missing is None else json.dumps(list(missing), separators=(",", ":")),
                "inputs": None if inputs is None else json.dumps(_jsonable(inputs), separators=(",", ":"),
                                                                 ensure_ascii=True),
            })
        return RowBatch(preds, _score_rows(self.prediction_ids, self.scores))


@dataclass
class ShadowScores:
    """Challenger scores of predictions already logged (``Predictions.prediction_ids``),
    scored in shadow: stored with ``role='challenger'``, never returned to the caller."""

    prediction_ids: Sequence[str]
    scores: Sequence[ModelScores]

    @property
    def n_records(self) -> int:
        return len(self.prediction_ids)

    def rows(self, secret: bytes) -> RowBatch:
        return RowBatch([], _score_rows(list(self.prediction_ids), self.scores))


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    """A record's values as JSON values: numbers (NaN as None), text, dates as ISO text."""
    out = {}
    for k, v in record.items():
        if v is None or v is pd.NaT:
            out[k] = None
        elif isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        elif isinstance(v, (float, np.floating)):
            out[k] = float(v) if math.isfinite(v) else None
        elif isinstance(v, (dt.date, pd.Timestamp, np.datetime64)):
            out[k] = _iso_date(v)
        else:
            out[k] = str(v)
    return out
