"""``ServedModels.score`` answers a record the same inside a batch as alone, with and
without explanations, and its answer holds the model's own numbers.

The scorer reads a batch's values as arrays (features, curves, bands, explanations) and
reuses the explainer's score for the curve; these tests hold each record's answer to the
model's plain per-record functions. A small XGBoost model is fitted in-process.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from features.assemble import build_training_set
from features.catalog import feature_names
from features.records import RECORD_FIELDS, inspect_records, json_record, tables_to_records
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from modelstore.calibration import HorizonCalibration
from modelstore.candidates import make_scorer
from modelstore.model import RefractureModel
from modelstore.risk_bands import risk_band
from serving.http.validation import parse_body, rows_frame
from serving.scoring.served_models import LoadedModel, ServedModels

OUTCOMES = ("adjacent_fracture", "remote_fracture")


@pytest.fixture(scope="module")
def served():
    tables, _ = simulate(load_profile("yassavoly2025-pkp"), n_procedures=800, seed=5)
    typed = validate_raw(tables)
    ts = build_training_set(typed, "postop")
    models = []
    for k, outcome in enumerate(OUTCOMES):
        lab = ts[ts[outcome].notna()]
        names = feature_names("postop")
        scorer = make_scorer("xgboost", {"n_estimators": 30, "max_depth": 2}, outcome, seed=k, n_jobs=1)
        scorer.fit(lab[names], lab[outcome].astype(int).to_numpy())
        calibration = HorizonCalibration((3.0, 6.0, 12.0, 24.0), (-1.9, -1.2, -0.6, -0.1), 0.9)
        model = RefractureModel(scorer, calibration, outcome, "postop", 24.0, names, metrics={"auroc": 0.7})
        models.append(LoadedModel(outcome, f"refracture-{outcome}", "1", model))
    flat = tables_to_records(typed).head(24)
    # Blanks in the imaging, as hospitals without CT or MRI send them.
    flat.loc[flat.index[::3], ["hu_index_preop", "hu_upper_adjacent_preop", "hu_lower_adjacent_preop"]] = np.nan
    flat.loc[flat.index[1::4], ["ivc_preop", "leakage_intradiscal_postop"]] = None
    parsed = [parse_body(json.dumps(json_record(row)).encode(), 10) for row in flat.to_dict("records")]
    batch = rows_frame([row for p in parsed for row in p.rows])
    assert not inspect_records(batch).errors
    return ServedModels(models), batch, [p.procedure_ids[0] for p in parsed]


@pytest.mark.parametrize("explain", [False, True])
def test_each_record_alone_gets_its_answer_in_the_batch(served, explain):
    scorer, batch, ids = served
    together = scorer.score(batch, ids, explain=explain, typed=inspect_records(batch).typed, horizon_months=12.0)
    assert any(o["missing_inputs"] for a in together for o in a["outcomes"].values())
    for i in range(len(batch)):
        one = batch.iloc[[i]].reset_index(drop=True)
        alone = scorer.score(one, [ids[i]], explain=explain, first_index=i, typed=inspect_records(one).typed,
                             horizon_months=12.0)
        assert alone == [together[i]]
    # A batch cut out of a larger frame (index not 0..n-1) answers the same.
    subset = batch.iloc[[5, 2, 9]]
    inspected = inspect_records(subset.reset_index(drop=True))
    assert scorer.score(subset, [ids[5], ids[2], ids[9]], explain=explain, typed=inspected.typed,
                        horizon_months=12.0) == [{**together[k], "record": n} for n, k in enumerate((5, 2, 9))]


def test_answers_hold_the_models_own_numbers(served):
    """Curve, band and explanation of each record against the model's functions."""
    scorer, batch, ids = served
    answers = scorer.score(batch, ids, explain=True, horizon_months=12.0)
    plain = scorer.score(batch, ids)
    for m in scorer.models:
        X = m.model.features(batch)
        curve = m.model.curve_from_features(X)
        expl = m.model.explain_features(X, 12.0)
        for i, (answer, without) in enumerate(zip(answers, plain)):
            item = answer["outcomes"][m.outcome]
            # The curve from the explainer's score is the one /predict gives, bit for bit.
            assert item["curve"] == without["outcomes"][m.outcome]["curve"]
            assert list(item["curve"].values()) == curve.iloc[i].tolist()
            assert item["probability"] == curve.iloc[i]["p_24m"]
            assert item["risk_band"] == risk_band(item["probability"], scorer.risk_bands[m.outcome])
            e = item["explanation"]
            assert e["probability"] == curve.iloc[i]["p_12m"] and e["base_value"] == float(expl.base_value)
            assert [c["feature"] for c in e["contributions"]] == expl.feature_names
            assert [c["contribution"] for c in e["contributions"]] == expl.values[i].tolist()
            cells = expl.feature_values.iloc[i]
            assert [c["value"] for c in e["contributions"]] == [None if pd.isna(v) else float(v) for v in cells]
            ranked = sorted((-v, j) for j, v in enumerate(expl.values[i]) if v > 1e-9)[:3]
            assert [f["feature"] for f in e["raising"]] == [expl.feature_names[j] for _, j in ranked]
            assert all(math.isfinite(f["contribution"]) for f in e["raising"] + e["lowering"])


def test_a_field_absent_from_the_frame_is_reported_missing(served):
    """Records from a file may lack a column entirely: the scorer reads it as missing."""
    scorer, batch, ids = served
    dropped = batch.drop(columns=["ivc_preop"])
    assert "ivc_preop" in {f.flat_name for f in RECORD_FIELDS}
    answers = scorer.score(dropped, ids)
    fields = {d["field"] for a in answers for o in a["outcomes"].values() for d in o["missing_inputs"]}
    assert "imaging.preop.ivc" in fields
