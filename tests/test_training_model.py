"""The model artifact contract serving relies on: pyfunc round trip through MLflow,
flat records with missing optional fields and ISO dates, missing-input reporting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.assemble import build_training_set, features_from_records
from features.catalog import FEATURE_SETS, feature_names
from features.records import RECORD_FIELDS, RECORD_FIELDS_BY_FLAT, tables_to_records
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from training.calibration import Platt
from training.candidates import make_scorer
from training.inputs import FEATURE_INPUTS
from training.model import RefractureModel, example_records, record_signature

OUTCOME = "adjacent_fracture"


def _iso_records(records: pd.DataFrame) -> pd.DataFrame:
    """Records as a client sends them: dates as ISO strings, None for missing text."""
    out = records.copy()
    for f in RECORD_FIELDS:
        if f.spec.kind == "date":
            out[f.flat_name] = [None if pd.isna(v) else pd.Timestamp(v).date().isoformat() for v in out[f.flat_name]]
        elif f.spec.kind in ("id", "str", "category"):
            out[f.flat_name] = [None if pd.isna(v) else str(v) for v in out[f.flat_name]]
    return out.astype({f.flat_name: object for f in RECORD_FIELDS if f.spec.kind in ("id", "str", "category", "date")})


@pytest.fixture(scope="module")
def fitted():
    tables, _ = simulate(load_profile("yassavoly2025-pkp"), n_procedures=800, seed=5)
    typed = validate_raw(tables)
    ts = build_training_set(typed, "postop")
    lab = ts[ts[OUTCOME].notna()]
    names = feature_names("postop")
    scorer = make_scorer("xgboost", {"n_estimators": 30, "max_depth": 2}, OUTCOME, seed=0, n_jobs=1)
    scorer.fit(lab[names], lab[OUTCOME].astype(int).to_numpy())
    model = RefractureModel(scorer, Platt(0.9, -0.1), OUTCOME, "postop", 24.0, names,
                            metrics={"auroc": 0.7, "auroc_ci_low": 0.6, "auroc_ci_high": 0.8})
    records = tables_to_records(typed)
    return model, records


def test_every_feature_names_its_inputs():
    used = {n for s in FEATURE_SETS for n in feature_names(s)}
    assert used <= set(FEATURE_INPUTS), sorted(used - set(FEATURE_INPUTS))
    for feature, groups in FEATURE_INPUTS.items():
        for group in groups:
            for name in group:
                assert name in RECORD_FIELDS_BY_FLAT, f"{feature}: {name} is not a record field"


def test_feature_inputs_match_the_pipelines(raw):
    """Blanking an optional group makes its feature missing; blanking everything else changes nothing."""
    typed = validate_raw(raw)
    record = _iso_records(tables_to_records(typed)).iloc[[0]].reset_index(drop=True)  # A1-1, nearly complete
    base = features_from_records(record, "postop").iloc[0]
    for feature in feature_names("postop"):
        if pd.isna(base[feature]):
            continue
        listed = {n for g in FEATURE_INPUTS[feature] for n in g}
        for group in FEATURE_INPUTS[feature]:
            if all(RECORD_FIELDS_BY_FLAT[n].required for n in group):
                continue  # a record without a required field is refused before prediction
            blank = record.copy()
            for name in group:
                blank[name] = None
            assert pd.isna(features_from_records(blank, "postop").iloc[0][feature]), (feature, group)
        others = record.copy()
        for f in RECORD_FIELDS:
            if f.flat_name not in listed and f.flat_name != "procedure_id":
                others[f.flat_name] = None
        assert features_from_records(others, "postop").iloc[0][feature] == pytest.approx(base[feature]), feature


def test_predict_returns_probability_column_with_index(fitted):
    model, records = fitted
    batch = _iso_records(records.iloc[:5]).set_index(pd.Index([10, 11, 12, 13, 14]))
    out = model.predict(None, batch)
    assert list(out.columns) == ["probability"] and list(out.index) == [10, 11, 12, 13, 14]
    assert ((out["probability"] > 0) & (out["probability"] < 1)).all()
    np.testing.assert_allclose(out["probability"].to_numpy(), model.predict_proba(batch))


def test_missing_inputs_name_fields_and_handling(fitted):
    model, records = fitted
    example = example_records(records)
    report = model.missing_inputs(example)
    assert len(report) == 3
    fields = {item["field"] for item in report[1]}  # record 2 has no CT
    assert "imaging.preop.hu_index" in fields
    assert all("missing values" in item["handling"] for item in report[1])
    assert "procedure.pain_onset_date" in {item["field"] for item in report[2]}
    assert not any(item["field"].startswith("imaging.preop.hu") for item in report[0])


def _reference_missing_inputs(records: pd.DataFrame, features: pd.DataFrame, model: RefractureModel) -> list[list[dict]]:
    """The documented rule, record by record and cell by cell (slow, obviously right)."""
    from training.inputs import handling_text

    def gone(v) -> bool:
        return v is None or (isinstance(v, str) and not v.strip()) or (not isinstance(v, str) and pd.isna(v))

    medians = dict(zip(model.scorer.prep_.feature_names_, model.scorer.prep_.medians_)) \
        if model.model_type in ("logistic", "elastic_net") else {}
    out = []
    for i in range(len(records)):
        row = records.iloc[i]
        items = []
        for feature in features.columns:
            if not pd.isna(features.iloc[i][feature]):
                continue
            handling = handling_text(model.model_type, feature, medians.get(feature))
            fields = [n for g in FEATURE_INPUTS[feature] if all(gone(row.get(n)) for n in g) for n in g]
            if not fields:
                items.append({"field": "", "feature": feature, "handling": handling + " (values given could not be combined)"})
            items += [{"field": RECORD_FIELDS_BY_FLAT[n].path, "feature": feature, "handling": handling} for n in fields]
        out.append(items)
    return out


def test_missing_inputs_equal_the_cell_by_cell_rule(fitted):
    """The vectorised report lists exactly what the per-record rule lists, in the same order,
    for blanks given as None, NaN, empty text and absent columns."""
    model, records = fitted
    batch = _iso_records(records.iloc[:40]).reset_index(drop=True)
    batch.loc[0, ["hu_upper_adjacent_preop", "hu_lower_adjacent_preop"]] = np.nan
    batch.loc[1, ["vertebral_body_volume_ml_preop", "psoas_area_cm2_preop"]] = None
    batch.loc[2, "pain_onset_date"] = "   "
    batch.loc[3, ["vertebral_height_mm_postop", "upper_adjacent_height_mm_postop"]] = np.nan
    batch.loc[4, "upper_adjacent_height_mm_preop"] = np.nan  # the lower neighbour still gives the rate
    batch.loc[5, "leakage_intradiscal_postop"] = None
    batch = batch.drop(columns=["ivc_preop"])
    X = model.features(batch)
    assert X.isna().any(axis=1).sum() >= 6
    assert model.missing_inputs_from_features(batch, X) == _reference_missing_inputs(batch, X, model)
    assert model.missing_inputs(batch) == _reference_missing_inputs(batch, X, model)
    # The service's path: which fields are absent, from the records as the checks read them.
    from features.records import inspect_records, missing_fields

    inspected = inspect_records(batch)
    assert model.missing_inputs_from_features(batch, X, missing_fields(inspected.typed)) == \
        _reference_missing_inputs(batch, X, model)


def test_signature_requires_only_fields_the_features_use():
    sig = record_signature(feature_names("preop"))
    required = {c.name for c in sig.inputs.inputs if c.required}
    assert "age_years" in required and "sex" in required
    assert "cement_volume_ml" not in required  # known only after surgery
    assert "hu_index_preop" not in required  # imaging is optional
    sig_post = record_signature(feature_names("postop"))
    assert "cement_volume_ml" in {c.name for c in sig_post.inputs.inputs if c.required}


@pytest.mark.slow
def test_pyfunc_round_trip_through_mlflow(fitted, tmp_path, monkeypatch):
    import mlflow

    from training.pipeline import pip_requirements
    from modelstore.tracking import configure_tracking, get_or_create_experiment

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model, records = fitted
    configure_tracking(tmp_path / "store")
    assert (tmp_path / "store" / "artifacts").is_dir()
    exp = get_or_create_experiment("contract-test")
    example = example_records(records)
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.pyfunc.log_model(name="model", python_model=model, signature=record_signature(model.feature_names),
                                       input_example=example, pip_requirements=pip_requirements())
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    batch = _iso_records(records.iloc[:4])
    batch.loc[1, "hu_index_preop"] = np.nan  # optional field missing
    batch.loc[2, "pain_onset_date"] = None
    out = loaded.predict(batch)
    np.testing.assert_allclose(out["probability"].to_numpy(), model.predict_proba(batch), rtol=1e-12)
    unwrapped = loaded.unwrap_python_model()
    assert unwrapped.outcome == OUTCOME and unwrapped.feature_set == "postop" and unwrapped.horizon_months == 24.0
    assert unwrapped.model_type == "xgboost" and unwrapped.metrics["auroc"] == 0.7
    assert unwrapped.feature_names == feature_names("postop")
    expl = unwrapped.explain(batch)
    p = unwrapped.predict_proba(batch)
    np.testing.assert_allclose(expl.logit(), np.log(p) - np.log1p(-p), atol=1e-6)
    assert len(unwrapped.missing_inputs(batch)) == 4
    assert not list(tmp_path.glob("store/**/*.py")), "no Python files in the store"
