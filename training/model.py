"""The model artifact: what is logged to MLflow and what serving loads.

``RefractureModel`` wraps one fitted candidate (a scorer from ``training.candidates``),
its Platt calibration and the feature pipeline. It takes *flat raw records*
(``features.records``: what a hospital sends), computes the features with
``features.assemble.features_from_records`` (the very functions training used) and
returns the calibrated probability of the outcome within ``horizon_months``.

Serving loads it with
``mlflow.pyfunc.load_model("models:/refracture-<outcome>@champion").unwrap_python_model()``
and calls ``predict_proba``, ``explain`` and ``missing_inputs``.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from training.calibration import Platt
from training.candidates import expit, in_order


class RefractureModel(mlflow.pyfunc.PythonModel):
    """Calibrated risk of one outcome within a horizon, from flat raw records.

    Attributes: ``outcome``, ``feature_set`` ('preop'/'postop'), ``horizon_months``,
    ``feature_names`` (model input features, catalogue order), ``model_type``
    ('logistic', 'elastic_net', 'random_forest', 'xgboost'), ``metrics`` (held-out test
    metrics with 95 % bootstrap CIs), ``params`` (hyperparameters), ``calibration``
    (Platt slope/intercept applied to the raw log-odds), ``scorer`` (the fitted model).
    """

    def __init__(self, scorer, calibration: Platt, outcome: str, feature_set: str, horizon_months: float,
                 feature_names: list[str], metrics: dict[str, float] | None = None,
                 params: dict[str, Any] | None = None, info: dict[str, str] | None = None):
        self.scorer = scorer
        self.calibration = calibration
        self.outcome = outcome
        self.feature_set = feature_set
        self.horizon_months = float(horizon_months)
        self.feature_names = list(feature_names)
        self.model_type = scorer.model_type
        self.metrics = dict(metrics or {})
        self.params = dict(params or {})
        self.info = dict(info or {})

    # -- features -------------------------------------------------------------------
    def features(self, records: pd.DataFrame, typed: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
        """Model features (float64, NaN = missing) for flat raw records, index aligned.
        ``typed``: the records as ``features.records.inspect_records`` read them, if done."""
        from features.assemble import features_from_records

        feats = in_order(features_from_records(records, self.feature_set, typed), self.feature_names)
        feats.index = records.index
        return feats

    # -- predictions ----------------------------------------------------------------
    def logit_from_features(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated log-odds from a feature frame (training/evaluation path)."""
        return self.calibration(self.scorer.raw_logit(in_order(X, self.feature_names)))

    def proba_from_features(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probability from a feature frame."""
        return expit(self.logit_from_features(X))

    def predict_proba(self, records: pd.DataFrame) -> np.ndarray:
        """Calibrated P(outcome within ``horizon_months``) for each flat raw record."""
        return self.proba_from_features(self.features(records))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """pyfunc entry point: flat raw records in, ``probability`` column out (same index)."""
        records = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return pd.DataFrame({"probability": self.predict_proba(records)}, index=records.index)

    # -- explanation ----------------------------------------------------------------
    def explain(self, records: pd.DataFrame):
        """SHAP contributions in calibrated log-odds (``training.explain.Explanation``)."""
        return self.explain_features(self.features(records))

    def explain_features(self, X: pd.DataFrame):
        """As ``explain`` but from a feature frame."""
        from training.explain import explain

        return explain(self.scorer, in_order(X, self.feature_names), slope=self.calibration.slope,
                       intercept=self.calibration.intercept)

    def missing_inputs(self, records: pd.DataFrame) -> list[list[dict]]:
        """Per record: ``[{"field": "imaging.preop.hu_index", "feature": ..., "handling": ...}]``
        for every input a feature needed but did not get, and how this model handled it."""
        return self.missing_inputs_from_features(records, self.features(records))

    def missing_inputs_from_features(self, records: pd.DataFrame, X: pd.DataFrame,
                                     absent_fields: dict[str, np.ndarray] | None = None) -> list[list[dict]]:
        """As ``missing_inputs``, with the records' features ``X`` already computed (and, if
        given, which records lack each field: ``features.records.missing_fields``)."""
        from training.inputs import missing_inputs

        medians = {}
        if self.model_type in ("logistic", "elastic_net"):
            prep = self.scorer.prep_
            medians = dict(zip(prep.feature_names_, prep.medians_))
        return missing_inputs(records, X, self.model_type, medians, absent_fields)

    def __repr__(self) -> str:
        return (f"RefractureModel({self.model_type}, outcome={self.outcome}, feature_set={self.feature_set}, "
                f"horizon={self.horizon_months:g} months)")


def used_record_fields(feature_names: list[str]) -> set[str]:
    """Flat record fields that feed ``feature_names``."""
    from training.inputs import FEATURE_INPUTS

    return {name for f in feature_names for group in FEATURE_INPUTS.get(f, ()) for name in group}


def record_signature(feature_names: list[str]):
    """MLflow signature of the flat-record input and the ``probability`` output.

    Text (ids, categories, ISO dates) are strings, numbers doubles (so NaN can mark a
    missing value). A field is required only if the contract requires it *and* a feature
    of this model uses it: a pre-operative model does not ask for the cement volume.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from features.records import RECORD_FIELDS

    used = used_record_fields(feature_names)
    cols = []
    for f in RECORD_FIELDS:
        kind = "string" if f.spec.kind in ("id", "str", "category", "date") else "double"
        cols.append(ColSpec(kind, f.flat_name, required=bool(f.required and f.flat_name in used)))
    return ModelSignature(inputs=Schema(cols), outputs=Schema([ColSpec("double", "probability")]))


#: Fields a site without CT (or without MRI) cannot send: used for the example records.
_CT_FIELDS = ("hu_index_preop", "hu_upper_adjacent_preop", "hu_lower_adjacent_preop", "vertebral_body_volume_ml_preop",
              "psoas_area_cm2_preop", "paraspinal_fat_fraction_pct_preop", "hu_index_postop",
              "hu_upper_adjacent_postop", "hu_lower_adjacent_postop", "cement_larger_side_volume_ml_postop")
_MRI_FIELDS = ("ivc_preop", "endplate_disruption_preop")


def example_records(records: pd.DataFrame) -> pd.DataFrame:
    """Three made-up flat records shaped as a client sends them, for the MLflow input example.

    No row of the data is copied (an input example is stored in plain text): every field
    takes the cohort median (numbers, rounded) or most frequent value (categories); dates
    are a fixed surgery date and the median pain-to-surgery interval. Record 2 has no CT
    values, record 3 no MRI signs and no pain-onset date, as hospitals present them. Dates
    are ISO strings, numbers float with None for missing.
    """
    from features.records import RECORD_FIELDS

    surgery = pd.Timestamp("2024-01-15")
    typical: dict[str, Any] = {}
    for f in RECORD_FIELDS:
        col = records[f.flat_name] if f.flat_name in records else pd.Series(dtype=object)
        if f.spec.kind == "id":
            typical[f.flat_name] = None
        elif f.spec.kind == "date":
            typical[f.flat_name] = surgery.date().isoformat()
        elif f.spec.kind in ("str", "category"):
            mode = col.dropna().astype(str).mode()
            typical[f.flat_name] = str(mode.iat[0]) if len(mode) else (f.spec.allowed[0] if f.spec.allowed else None)
        else:
            values = pd.to_numeric(col, errors="coerce").dropna()
            if len(values) == 0:
                typical[f.flat_name] = None
            elif f.spec.kind in ("binary", "int"):
                typical[f.flat_name] = float(np.round(values.median()))
            else:
                typical[f.flat_name] = float(np.round(values.median(), 2))
    if "pain_onset_date" in records and "surgery_date" in records:
        days = (pd.to_datetime(records["surgery_date"]) - pd.to_datetime(records["pain_onset_date"])).dt.days.dropna()
        typical["pain_onset_date"] = (surgery - pd.Timedelta(days=int(days.median()) if len(days) else 14)).date().isoformat()
    no_ct = {**typical, **{k: None for k in _CT_FIELDS}}
    no_mri = {**typical, **{k: None for k in _MRI_FIELDS}, "pain_onset_date": None}
    out = pd.DataFrame([typical, no_ct, no_mri], columns=[f.flat_name for f in RECORD_FIELDS])
    out["procedure_id"] = ["example-1", "example-2", "example-3"]
    for f in RECORD_FIELDS:
        if f.spec.kind in ("id", "str", "category", "date"):
            out[f.flat_name] = out[f.flat_name].astype(object).where(out[f.flat_name].notna(), None)
        else:
            out[f.flat_name] = out[f.flat_name].astype("float64")
    return out
