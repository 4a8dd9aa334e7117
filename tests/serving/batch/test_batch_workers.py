"""``refracture predict`` on both cores (issue 14): the file split over several chunk
workers gives exactly the output of one worker, errors keep their record numbers, and the
explained probabilities add up."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.assemble import build_training_set
from features.catalog import feature_names
from features.records import tables_to_records
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from modelstore.calibration import HorizonCalibration
from modelstore.candidates import make_scorer
from modelstore.model import RefractureModel
from serving.batch.pandas_engine import BatchInputError, score_file
from serving.scoring.served_models import LoadedModel

OUTCOME = "adjacent_fracture"


@pytest.fixture(scope="module")
def setup():
    typed = validate_raw(simulate(load_profile("xiong2021-pvp"), n_procedures=1500, seed=21)[0])
    ts = build_training_set(typed, "postop")
    lab = ts[ts[OUTCOME].notna()]
    names = feature_names("postop")
    scorer = make_scorer("xgboost", {"n_estimators": 80, "learning_rate": 0.1, "max_depth": 3}, OUTCOME, seed=1,
                         n_jobs=1).fit(lab[names], lab[OUTCOME].astype(int).to_numpy())
    calibration = HorizonCalibration((3.0, 6.0, 12.0, 24.0), (-2.0, -1.4, -0.6, 0.1), 0.9)
    model = RefractureModel(scorer, calibration, OUTCOME, "postop", 24, names)
    records = tables_to_records(typed).reset_index(drop=True)
    return [LoadedModel(OUTCOME, f"refracture-{OUTCOME}", "7", model)], records


@pytest.mark.parametrize("explain", [False, True])
def test_two_workers_give_the_output_of_one(setup, tmp_path, explain):
    models, records = setup
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out-{workers}.parquet"
        score_file(models, tmp_path / "unused.parquet", out, explain=explain, chunk_size=333, records=records,
                   workers=workers)
        outputs.append(pd.read_parquet(out))
    one, two = outputs
    assert len(one) == len(records) and one["procedure_id"].tolist() == records["procedure_id"].astype(str).tolist()
    pd.testing.assert_frame_equal(one, two)
    if explain:
        contrib = one[[c for c in one.columns if c.startswith(f"{OUTCOME}__")]].to_numpy()
        p = one[f"{OUTCOME}_probability"].to_numpy()
        logit = one[f"{OUTCOME}_base_value"].to_numpy() + contrib.sum(axis=1)
        np.testing.assert_allclose(logit, np.log(p) - np.log1p(-p), rtol=0, atol=1e-5)


def test_errors_keep_their_record_numbers_across_workers(setup, tmp_path):
    models, records = setup
    bad = records.copy()
    bad["surgery_date"] = bad["surgery_date"].astype(object)
    bad.loc[[5, len(bad) - 2], "surgery_date"] = "not a date"
    out = tmp_path / "out.parquet"
    with pytest.raises(BatchInputError) as info:
        score_file(models, tmp_path / "unused.parquet", out, chunk_size=200, records=bad, workers=2)
    assert sorted({e["record"] for e in info.value.errors if "surgery_date" in str(e["field"])}) == [5, len(bad) - 2]
    assert not out.exists()
