"""RiskAssessment.ndjson from templates (``serving.batch.risk_assessment_lines``) is byte for
byte what the one builder (``serving.fhir.risk_assessment.risk_assessments``) serialised
gives, row by row, on a scored table of thousands of rows with every kind of value (model
versions and bands that change from row to row, probabilities at 0, 1, tiny and missing,
with and without the explanation); a sample of lines validates against the FHIR R4 model."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from features.fhir.read import RecordSource
from features.labels import DEATH_TARGET
from serving.batch.fhir_output import write_risk_assessments
from serving.fhir.risk_assessment import EXT_FACTORS, validate

OUTCOMES = ("cemented_refracture", "adjacent_fracture", "remote_fracture")
HORIZONS = (3, 6, 12, 24)
OCCURRENCE = "2026-12-07T23:00:00+00:00"


def _scored(n: int, explain: bool, seed: int) -> tuple[pd.DataFrame, dict[str, RecordSource]]:
    """A table in ``serving.batch.pandas_engine``'s columns, and each row's source."""
    rng = np.random.default_rng(seed)
    ids = [f"V{i:07d}" for i in range(n)]
    cols: dict[str, object] = {"procedure_id": ids, "horizon_months": np.full(n, 24.0)}
    for o in OUTCOMES:
        curve = np.sort(rng.uniform(0, 0.6, size=(n, len(HORIZONS))), axis=1)
        curve[:5] = [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1e-300, 5e-324, 1e-17, 0.1],
                     [np.nan, np.nan, np.nan, np.nan], [1 / 3, 2 / 3, 0.1 + 0.2, 0.9999999999999999]]
        for k, m in enumerate(HORIZONS):
            cols[f"{o}_p_{m}m"] = curve[:, k]
        cols[f"{o}_probability"] = curve[:, -1]
        cols[f"{o}_risk_band"] = rng.choice(["low", "intermediate", "high"], size=n)
        cols[f"{o}_model_version"] = rng.choice(["3", "4", "12"], size=n)
        if explain:
            cols[f"{o}_base_value"] = rng.normal(-2, 0.5, size=n)
            for feature in ("age_years", "dxa_t_score", "hu_index", "kyphotic_angle_deg", "bmi", "t2dm"):
                values = rng.normal(0, 0.3, size=n)
                values[rng.random(n) < 0.2] = 0.0  # neither raising nor lowering
                cols[f"{o}__{feature}"] = values
    cols[f"{DEATH_TARGET}_p_24m"] = rng.uniform(0, 0.3, size=n)
    cols[f"{DEATH_TARGET}_model_version"] = rng.choice(["1", "2"], size=n)
    sources = {}
    for i, pid in enumerate(ids):
        s = RecordSource(f"Patient/P{i // 2:07d}", f"Procedure/{pid}", source=f"Procedure.ndjson:{i + 1}")
        s.basis = [s.patient, s.procedure] + [f"Observation/{pid}-{x}" for x in ("height", "preop", "postop")[: i % 4]]
        sources[pid] = s
    return pd.DataFrame(cols), sources


@pytest.mark.parametrize("explain", [False, True])
def test_template_lines_are_the_builders_bytes(tmp_path, explain):
    scored, sources = _scored(3000 if not explain else 1500, explain, seed=19 + explain)
    fast, reference = tmp_path / "fast.ndjson", tmp_path / "reference.ndjson"
    n_fast = write_risk_assessments(scored, sources, fast, OCCURRENCE)
    n_ref = write_risk_assessments(scored, sources, reference, OCCURRENCE, reference=True)
    assert n_fast == n_ref == len(scored) * (len(OUTCOMES) + 1)
    fast_lines, ref_lines = fast.read_bytes().splitlines(), reference.read_bytes().splitlines()
    assert len(fast_lines) == n_fast
    assert fast_lines == ref_lines
    # The lines carry the row's own values (not one template's): ids, basis, probabilities.
    first = [orjson.loads(line) for line in fast_lines[: len(OUTCOMES) + 1]]
    assert [r["code"]["coding"][0]["code"] for r in first] == [f"risk_assessment.{o}" for o in (*OUTCOMES, DEATH_TARGET)]
    assert all(r["prediction"][0].get("probabilityDecimal") == 0.0 for r in first[:-1])
    later = orjson.loads(fast_lines[(len(OUTCOMES) + 1) * 7])
    assert later["parent"]["reference"] == "Procedure/V0000007" and len(later["basis"]) == 2 + 7 % 4
    assert ("extension" in later) == explain and (not explain or later["extension"][0]["url"] == EXT_FACTORS)
    # A sample of lines (beyond the first rows the writer checks itself) is valid FHIR R4.
    rng = np.random.default_rng(5)
    for k in rng.choice(len(fast_lines), size=60, replace=False):
        validate(orjson.loads(fast_lines[k]))
