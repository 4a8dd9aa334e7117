"""RiskAssessment NDJSON lines for a whole scored table, column by column.

The one builder of RiskAssessments is ``serving.fhir.risk_assessment.risk_assessments``.
Building and serialising its dict for every outcome of every procedure costs far more than
scoring them, so this module asks the builder once per kind of resource (outcome, model
version, risk band, horizons) for a resource, replaces the values that change from row to
row (id, subject, parent, basis, each probability, the explanation) by markers, serialises
it with orjson, and cuts it at the markers: a template. A row is then its template's pieces
joined with its own values, serialised by orjson too, so a line is byte for byte what
``orjson.dumps(builder output)`` gives (``tests/serving/batch/test_risk_assessment_lines.py``
compares them on thousands of rows). A change to the builder changes the templates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import orjson
import pandas as pd

from features.fhir.export import fhir_id
from features.fhir.read import RecordSource
from features.labels import DEATH_TARGET
from modelstore.naming import model_name
from serving.fhir.risk_assessment import explanation_extension, risk_assessments

_CURVE = re.compile(r"^(?P<outcome>.+)_p_(?P<months>\d+(?:\.\d+)?)m$")


@dataclass(frozen=True)
class ScoredLayout:
    """Where a scored table (``serving.batch.pandas_engine`` columns) keeps each outcome's
    values: ``curves[o]``: (months as written, column) per horizon; ``contributions[o]``:
    the per-feature contribution columns (``--explain``)."""

    outcomes: list[str]
    curves: dict[str, list[tuple[str, str]]]
    contributions: dict[str, list[str]]


def scored_layout(scored: pd.DataFrame) -> ScoredLayout:
    outcomes = [col[: -len("_model_version")] for col in scored.columns
                if col.endswith("_model_version") and not col.startswith(f"{DEATH_TARGET}_")]
    curves = {o: [(m.group("months"), col) for col in scored.columns if (m := _CURVE.match(col)) and m.group("outcome") == o]
              for o in outcomes}
    contributions = {o: [col for col in scored.columns if col.startswith(f"{o}__")] for o in outcomes}
    return ScoredLayout(outcomes, curves, contributions)


_ID, _SUBJECT, _PARENT, _BASIS, _EXTENSION = "\x00id\x00", "\x00subject\x00", "\x00parent\x00", "\x00basis\x00", "\x00ext\x00"


def _p(k: int) -> str:
    return f"\x00p{k}\x00"


def _template(outcome: str, item: dict[str, Any], occurrence: str, explained: bool) -> list[bytes]:
    """The builder's resource for one kind of row, cut at the row's own values: the pieces
    between, in order id, subject, parent, basis, probabilities[, extension]."""
    curve = item["curve"]
    if outcome == DEATH_TARGET:
        prediction = {"procedure_id": "x", "outcomes": {}, "context": {"death": item}}
    else:
        prediction = {"procedure_id": "x", "outcomes": {outcome: item}}
    resource = risk_assessments(prediction, RecordSource(_SUBJECT, _PARENT), occurrence)[0]
    resource["id"] = _ID
    resource["basis"] = _BASIS
    for k, entry in enumerate(resource["prediction"]):
        entry["probabilityDecimal"] = _p(k)
    markers = [_ID, _SUBJECT, _PARENT, _BASIS, *(_p(k) for k in range(len(resource["prediction"])))]
    if explained:
        resource["extension"] = _EXTENSION
        markers.append(_EXTENSION)
    text = orjson.dumps(resource)
    pieces = []
    for marker in markers:
        quoted = orjson.dumps(marker)
        head, sep, text = text.partition(quoted)
        if not sep or quoted in text:
            raise RuntimeError(f"the RiskAssessment builder's output has no single place for {marker!r}")
        pieces.append(head)
    pieces.append(text)
    assert len(curve) == len(resource["prediction"])
    return pieces


def _floats(values: np.ndarray) -> list[bytes]:
    """Each float as orjson writes it inside a resource."""
    text = orjson.dumps([float(v) for v in values])
    return text[1:-1].split(b",") if len(values) else []


def risk_assessment_lines(scored: pd.DataFrame, sources: dict[str, RecordSource], occurrence: str,
                          explanation: Callable[[str, int], dict[str, Any]] | None = None) -> Iterator[list[bytes]]:
    """Per scored row (``serving.batch.pandas_engine`` columns), its RiskAssessments as JSON
    lines (outcomes, then the death context), equal to the builder's. ``explanation(outcome,
    row)``: the ``/explain``-shaped explanation of a row when the table has contribution
    columns (``fhir_output._explanation``)."""
    layout = scored_layout(scored)
    n = len(scored)
    pids = [str(p) for p in scored["procedure_id"].to_numpy()]
    horizon = scored["horizon_months"].to_numpy(dtype=float)
    kinds: list[tuple[str, list[tuple[str, str]], np.ndarray, np.ndarray, list[list[bytes]], bool]] = []
    for o in layout.outcomes:
        versions = scored[f"{o}_model_version"].astype(str).to_numpy()
        bands = scored[f"{o}_risk_band"].astype(str).to_numpy()
        probs = [_floats(scored[col].to_numpy()) for _, col in layout.curves[o]]
        kinds.append((o, layout.curves[o], versions, bands, probs, bool(layout.contributions[o])))
    death = f"{DEATH_TARGET}_p_24m" in scored.columns
    if death:
        death_versions = scored[f"{DEATH_TARGET}_model_version"].astype(str).to_numpy()
        death_probs = [_floats(scored[f"{DEATH_TARGET}_p_24m"].to_numpy())]
    templates: dict[tuple, list[bytes]] = {}

    def template(outcome: str, version: str, band: str, months: float, curve: list[tuple[str, str]],
                 explained: bool) -> list[bytes]:
        key = (outcome, version, band, months, explained)
        got = templates.get(key)
        if got is None:
            model = {"name": model_name(outcome), "version": version, "run_id": None}
            if outcome == DEATH_TARGET:
                item = {"probability": 0.0, "horizon_months": 24.0, "model": model, "curve": {"24": 0.0}}
            else:
                item = {"probability": 0.0, "horizon_months": months, "risk_band": band,
                        "curve": {f"{float(m):g}": 0.0 for m, _ in curve}, "model": model}
                if explained:
                    item["explanation"] = {"horizon_months": 0.0, "base_value": 0.0, "raising": [], "lowering": []}
            got = templates[key] = _template(outcome, item, occurrence, explained)
        return got

    def line(pieces: list[bytes], values: list[bytes]) -> bytes:
        out = [pieces[0]]
        for piece, value in zip(pieces[1:], values):
            out.append(value)
            out.append(piece)
        return b"".join(out)

    ids = {o: [orjson.dumps(fhir_id(f"{pid}-{o}", "risk")) for pid in pids]
           for o in [*layout.outcomes, *([DEATH_TARGET] if death else [])]}
    for i in range(n):
        source = sources[pids[i]]
        row = [orjson.dumps(source.patient), orjson.dumps(source.procedure),
               orjson.dumps([{"reference": ref} for ref in source.basis])]
        lines = []
        for o, curve, versions, bands, probs, explained in kinds:
            values = [ids[o][i], *row, *(p[i] for p in probs)]
            if explained:
                values.append(orjson.dumps([explanation_extension(explanation(o, i))]))
            lines.append(line(template(o, versions[i], bands[i], horizon[i], curve, explained), values))
        if death:
            lines.append(line(template(DEATH_TARGET, death_versions[i], "", 24.0, [], False),
                              [ids[DEATH_TARGET][i], *row, death_probs[0][i]]))
        yield lines
