"""RiskAssessment.ndjson from a batch's scored output (``refracture predict --fhir-ndjson``).

Both engines write the flat scored table as today; this turns its rows back into the
``/predict`` answer shape and builds the resources with the service's own builder
(``serving.fhir.risk_assessment``), so a procedure gets the same RiskAssessments from the
batch as from the endpoint. With ``--explain`` the top factors come from the per-feature
contribution columns (feature names; the endpoint adds clinical words).

Every resource of the first ``VALIDATE_FIRST`` records is checked against the FHIR R4 model
(a model check costs about a millisecond per RiskAssessment, so not all of a million);
``tests/serving/fhir`` checks every resource for 1,000 procedures per profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orjson
import pandas as pd

from features.fhir.parse import RecordSource
from features.labels import DEATH_TARGET
from modelstore.naming import model_name
from serving.batch.risk_assessment_lines import risk_assessment_lines, scored_layout
from serving.fhir.risk_assessment import risk_assessments, validate
from serving.scoring.served_models import TOP_FACTORS

VALIDATE_FIRST = 20


def predictions_from_scored(scored: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """Rows of a scored table (``serving.batch.pandas_engine`` columns) as ``/predict`` answers."""
    layout = scored_layout(scored)
    outcomes, curves, contrib = layout.outcomes, layout.curves, layout.contributions
    columns = {col: scored[col].to_numpy() for col in scored.columns}
    death = f"{DEATH_TARGET}_p_24m" in columns
    for i in range(len(scored)):
        answer: dict[str, Any] = {"procedure_id": str(columns["procedure_id"][i]), "outcomes": {}}
        for o in outcomes:
            item: dict[str, Any] = {
                "probability": float(columns[f"{o}_probability"][i]),
                "horizon_months": float(columns["horizon_months"][i]),
                "risk_band": str(columns[f"{o}_risk_band"][i]),
                "curve": {f"{float(m):g}": float(columns[col][i]) for m, col in curves[o]},
                "model": {"name": model_name(o), "version": str(columns[f"{o}_model_version"][i]), "run_id": None},
            }
            if contrib[o]:
                item["explanation"] = _explanation(o, contrib[o], columns, i, item["horizon_months"])
            answer["outcomes"][o] = item
        if death:
            answer["context"] = {"death": {"probability": float(columns[f"{DEATH_TARGET}_p_24m"][i]), "horizon_months": 24.0,
                                           "model": {"name": model_name(DEATH_TARGET),
                                                     "version": str(columns[f"{DEATH_TARGET}_model_version"][i]),
                                                     "run_id": None}}}
        yield answer


def _explanation(outcome: str, cols: list[str], columns: dict[str, np.ndarray], i: int, horizon: float) -> dict[str, Any]:
    values = np.array([float(columns[col][i]) for col in cols])
    order = np.argsort(-values)
    name = len(outcome) + 2

    def factor(j: int) -> dict[str, Any]:
        return {"feature": cols[j][name:], "text": cols[j][name:], "contribution": float(values[j])}

    return {"horizon_months": horizon, "base_value": float(columns[f"{outcome}_base_value"][i]),
            "raising": [factor(j) for j in order[:TOP_FACTORS] if values[j] > 1e-9],
            "lowering": [factor(j) for j in order[::-1][:TOP_FACTORS] if values[j] < -1e-9]}


def write_risk_assessments(scored: pd.DataFrame, sources: dict[str, RecordSource], path: Path, occurrence: str,
                           reference: bool = False) -> int:
    """Write one RiskAssessment per outcome (and the death context) per scored procedure to
    ``path`` (NDJSON, atomically); returns how many. ``sources``: procedure_id -> the
    record's source (``features.fhir.parse.FhirRecords.accepted``). The lines come from the
    builder's templates (``risk_assessment_lines``); ``reference=True`` builds and serialises
    every resource with the builder instead (the same bytes, slower)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with tmp.open("wb") as fh:
        for k, lines in enumerate(_reference_lines(scored, sources, occurrence) if reference else
                                  risk_assessment_lines(scored, sources, occurrence, _explainer(scored))):
            if k < VALIDATE_FIRST:
                for line in lines:
                    validate(orjson.loads(line))
            fh.write(b"\n".join(lines))
            fh.write(b"\n")
            n += len(lines)
    tmp.replace(path)
    return n


def _reference_lines(scored: pd.DataFrame, sources: dict[str, RecordSource], occurrence: str) -> Iterator[list[bytes]]:
    """Per row, its resources built by the builder and serialised one by one."""
    for answer in predictions_from_scored(scored):
        yield [orjson.dumps(r) for r in risk_assessments(answer, sources[answer["procedure_id"]], occurrence)]


def _explainer(scored: pd.DataFrame):
    """(outcome, row) -> the row's explanation, as ``predictions_from_scored`` gives it."""
    layout = scored_layout(scored)
    columns = {col: scored[col].to_numpy() for col in scored.columns}
    horizon = scored["horizon_months"].to_numpy(dtype=float) if "horizon_months" in scored.columns else None

    def explanation(outcome: str, i: int) -> dict[str, Any]:
        return _explanation(outcome, layout.contributions[outcome], columns, i, float(horizon[i]))

    return explanation
