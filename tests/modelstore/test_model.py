"""The model artifact contract serving relies on: pyfunc round trip through MLflow without
pickles (models-from-code), flat records with missing optional fields and ISO dates or the
project's typed records, one column per horizon, missing-input reporting, refusal of the
old pickled format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.assemble import build_training_set, features_from_records
from features.catalog import FEATURE_SETS, feature_names
from features.records import RECORD_FIELDS, RECORD_FIELDS_BY_FLAT, tables_to_records
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from modelstore.artifact import load_model, log_model
from modelstore.calibration import HorizonCalibration
from modelstore.candidates import make_scorer
from modelstore.inputs import FEATURE_INPUTS
from modelstore.model import ModelFormatError, RefractureModel, example_records, record_signature

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
    calibration = HorizonCalibration((3.0, 6.0, 12.0, 24.0), (-1.9, -1.2, -0.6, -0.1), 0.9)
    model = RefractureModel(scorer, calibration, OUTCOME, "postop", 24.0, names,
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


def test_predict_returns_one_column_per_horizon_with_index(fitted):
    model, records = fitted
    batch = _iso_records(records.iloc[:5]).set_index(pd.Index([10, 11, 12, 13, 14]))
    out = model.predict(None, batch)
    assert list(out.columns) == ["p_3m", "p_6m", "p_12m", "p_24m"] and list(out.index) == [10, 11, 12, 13, 14]
    assert ((out > 0) & (out < 1)).all().all()
    assert (np.diff(out.to_numpy(), axis=1) > 0).all()  # the curve rises (intercepts strictly increase here)
    np.testing.assert_allclose(out["p_24m"].to_numpy(), model.predict_proba(batch))
    np.testing.assert_allclose(out["p_6m"].to_numpy(), model.predict_proba(batch, horizon_months=6))
    with pytest.raises(ValueError, match="no calibration for 9 months"):
        model.predict_proba(batch, horizon_months=9)


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
    from modelstore.inputs import handling_text

    def gone(v) -> bool:
        return v is None or (isinstance(v, str) and not v.strip()) or (not isinstance(v, str) and pd.isna(v))

    medians = model.scorer.medians() if model.model_type in ("logistic", "elastic_net") else {}
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
    sig = record_signature(feature_names("preop"), (3, 6, 12, 24))
    assert [c.name for c in sig.outputs.inputs] == ["p_3m", "p_6m", "p_12m", "p_24m"]
    required = {c.name for c in sig.inputs.inputs if c.required}
    assert "age_years" in required and "sex" in required
    assert "cement_volume_ml" not in required  # known only after surgery
    assert "hu_index_preop" not in required  # imaging is optional
    sig_post = record_signature(feature_names("postop"), (3, 6, 12, 24))
    assert "cement_volume_ml" in {c.name for c in sig_post.inputs.inputs if c.required}


@pytest.mark.slow
def test_pyfunc_round_trip_from_the_registry_without_pickles(fitted, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from modelstore.tracking import configure_tracking, get_or_create_experiment

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    model, records = fitted
    configure_tracking(tmp_path / "store")
    assert (tmp_path / "store-artifacts").is_dir()
    exp = get_or_create_experiment("contract-test")
    with mlflow.start_run(experiment_id=exp):
        uri = log_model(model, example_records(records))
    mv = mlflow.register_model(uri, "refracture-contract")
    loaded = mlflow.pyfunc.load_model(f"models:/refracture-contract/{mv.version}")
    assert [c.name for c in loaded.metadata.signature.outputs.inputs] == ["p_3m", "p_6m", "p_12m", "p_24m"]
    batch = _iso_records(records.iloc[:4])
    batch.loc[1, "hu_index_preop"] = np.nan  # optional field missing
    batch.loc[2, "pain_onset_date"] = None
    out = loaded.predict(batch)
    np.testing.assert_allclose(out.to_numpy(), model.predict_curve(batch).to_numpy(), rtol=1e-12)
    # The project's own typed records (datetime dates, numeric flags) go in unchanged.
    typed = records.iloc[:4].reset_index(drop=True)
    assert str(typed["surgery_date"].dtype).startswith("datetime64")
    typed_out = loaded.predict(typed)
    np.testing.assert_allclose(typed_out.to_numpy(), model.predict_curve(typed).to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(typed_out.to_numpy(), model.predict_curve(_iso_records(typed)).to_numpy(), rtol=1e-12)
    unwrapped = load_model(f"models:/refracture-contract/{mv.version}")
    assert unwrapped.outcome == OUTCOME and unwrapped.feature_set == "postop" and unwrapped.horizon_months == 24.0
    assert unwrapped.horizons_months == (3.0, 6.0, 12.0, 24.0)
    assert unwrapped.estimand == "crude cumulative incidence, death competing"
    assert unwrapped.model_type == "xgboost" and unwrapped.metrics["auroc"] == 0.7
    assert unwrapped.feature_names == feature_names("postop")
    for h in (6, 24):
        expl = unwrapped.explain(batch, horizon_months=h)
        p = unwrapped.predict_proba(batch, horizon_months=h)
        np.testing.assert_allclose(expl.logit(), np.log(p) - np.log1p(-p), atol=1e-6)
    assert len(unwrapped.missing_inputs(batch)) == 4
    # Stored parts in their own formats; the only Python file is the models-from-code stub.
    local = mlflow.artifacts.download_artifacts(f"models:/refracture-contract/{mv.version}", dst_path=str(tmp_path / "dl"))
    names = {p.name for p in Path(local).rglob("*") if p.is_file()}
    assert {"booster.json", "background.npy", "model.json", "pyfunc_entry.py"} <= names
    assert not {n for n in names if n.endswith((".pkl", ".pickle", ".cloudpickle"))}, names
    assert not list(tmp_path.glob("store/**/*.py"))  # the store folder holds no Python file
    assert [p.name for p in tmp_path.glob("store-artifacts/**/*.py")] == ["pyfunc_entry.py"]
    assert MlflowClient().get_model_version("refracture-contract", mv.version)


@pytest.mark.slow
def test_a_version_in_the_old_pickled_format_is_refused(fitted, tmp_path, monkeypatch):
    """A version logged as a cloudpickled PythonModel (the format before risk curves) is
    refused with a message that says to retrain."""
    import mlflow

    from modelstore.tracking import configure_tracking, get_or_create_experiment

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model, _ = fitted
    configure_tracking(tmp_path / "store")

    class OldModel(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return pd.DataFrame({"probability": np.full(len(model_input), 0.1)})

    with mlflow.start_run(experiment_id=get_or_create_experiment("old-format")):
        info = mlflow.pyfunc.log_model(name="model", python_model=OldModel())
    mv = mlflow.register_model(info.model_uri, "refracture-old")
    with pytest.raises(ModelFormatError, match="old format.*Retrain"):
        load_model(f"models:/refracture-old/{mv.version}")


def test_stored_parts_load_back_identically_for_every_candidate(tmp_path):
    """save/load without pickles gives the same curve and explanation, for every model type."""
    from modelstore.candidates import MODEL_TYPES

    tables, _ = simulate(load_profile("yassavoly2025-pkp"), n_procedures=600, seed=8)
    typed = validate_raw(tables)
    ts = build_training_set(typed, "postop")
    lab = ts[ts[OUTCOME].notna()]
    names = feature_names("postop")
    records = tables_to_records(typed).set_index("procedure_id", drop=False).loc[lab.index[:30]]
    calibration = HorizonCalibration((3.0, 6.0, 12.0, 24.0), (-2.0, -1.5, -1.5, -0.5), 1.1)
    small = {"random_forest": {"n_estimators": 20}, "xgboost": {"n_estimators": 20}}
    for model_type in MODEL_TYPES:
        scorer = make_scorer(model_type, small.get(model_type, {}), OUTCOME, seed=0, n_jobs=1)
        scorer.fit(lab[names], lab[OUTCOME].astype(int).to_numpy())
        model = RefractureModel(scorer, calibration, OUTCOME, "postop", 24.0, names)
        again = RefractureModel.load(model.save(tmp_path / model_type))
        np.testing.assert_array_equal(again.predict_curve(records).to_numpy(), model.predict_curve(records).to_numpy())
        np.testing.assert_allclose(again.explain(records, 12).values, model.explain(records, 12).values, atol=1e-12)
        assert again.missing_inputs(records) == model.missing_inputs(records)
    (tmp_path / "xgboost" / "model.json").write_text('{"format_version": 1}')
    with pytest.raises(ModelFormatError, match="format 1"):
        RefractureModel.load(tmp_path / "xgboost")


def test_scorers_are_scikit_learn_estimators():
    """get_params / clone work (scikit-learn's estimator contract); fitted state ends in '_'."""
    from sklearn.base import clone

    from modelstore.candidates import MODEL_TYPES

    for model_type in MODEL_TYPES:
        scorer = make_scorer(model_type, {}, OUTCOME, seed=3, n_jobs=1)
        params = scorer.get_params()
        assert params["random_state"] == 3
        twin = clone(scorer)
        assert twin.get_params() == params and twin is not scorer
        assert not [k for k in vars(twin) if k.endswith("_")], "unfitted clone carries fitted state"
