"""The model artifact: what is logged to MLflow and what serving loads.

``RefractureModel`` holds one fitted candidate (a scorer from ``modelstore.candidates``,
giving a score ``eta(x)``), its horizon calibration (``modelstore.calibration``) and the
feature pipeline. It takes *flat raw records* (``features.records``: what a hospital
sends, or the project's own typed records from ``tables_to_records``), computes the
features with ``features.assemble.features_from_records`` (the very functions training
used) and returns the cumulative incidence of the outcome, death competing, at each
horizon (``p_3m`` ... ``p_24m``; ``modelstore.estimand``).

Stored without pickles (``save`` / ``load``), each part in its own format:
``model.json`` (format, estimand, horizons, calibration, feature list, metrics),
``booster.json`` (XGBoost's JSON) with ``background.npy``, or ``*.skops`` (scikit-learn
parts, loaded with an explicit list of trusted types) with ``linear.npz``. MLflow loads it
through models-from-code (``modelstore/pyfunc_entry.py``, logged as the model's code), so a
version survives a refactor of this class as long as ``load`` reads its format.

Serving loads it with ``modelstore.model.load_registered`` (or
``mlflow.pyfunc.load_model(uri).unwrap_python_model()``) and calls ``proba_from_features``
(headline horizon), ``curve_from_features``, ``explain_features`` and ``missing_inputs``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import xgboost as xgb
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, Schema

from features.assemble import features_from_records, select_features
from features.records import RECORD_FIELDS
from modelstore.calibration import HorizonCalibration
from modelstore.candidates import BoostScorer, ForestScorer, LinearScorer, expit, monotone_constraints
from modelstore.estimand import HEADLINE_HORIZON_MONTHS, estimand_of, horizon_column
from modelstore.explain import DEFAULT_XGB_METHOD, XGB_METHODS, method_text
from modelstore.explain import explain as explain_scorer
from modelstore.inputs import FEATURE_INPUTS, missing_inputs

#: Version of the stored layout; ``load`` refuses others with a message.
FORMAT_VERSION = 2
#: Name of the MLflow artifact (a folder) holding the stored parts.
ARTIFACT_KEY = "refracture_model"
#: Modules whose types a stored scikit-learn part may contain (checked before loading).
TRUSTED_MODULES = ("sklearn.", "numpy.", "modelstore.candidates.", "builtins.")


class ModelFormatError(RuntimeError):
    """A stored model cannot be read by this code (older or unknown format); says why."""


class RefractureModel(mlflow.pyfunc.PythonModel):
    """Cumulative incidence of one outcome (death competing) at several horizons, from
    flat raw records; for ``outcome="death"`` (the context model), the probability of
    death from any cause (no competing event).

    Attributes: ``outcome``, ``feature_set`` ('preop'/'postop'), ``horizons_months``
    (ascending), ``horizon_months`` (the headline horizon, 24 by default), ``estimand``,
    ``feature_names`` (model input features, catalogue order), ``model_type``
    ('logistic', 'elastic_net', 'random_forest', 'xgboost'), ``metrics`` (held-out test
    metrics at the headline horizon, with 95 % bootstrap CIs), ``params``
    (hyperparameters), ``calibration`` (``HorizonCalibration``), ``scorer`` (the fitted
    score model), ``explanation_method`` (how an XGBoost score is explained:
    ``modelstore.explain.XGB_METHODS``; chosen at training time, stored with the model).
    Constructed empty by MLflow's models-from-code and filled by
    ``load_context``.
    """

    def __init__(self, scorer=None, calibration: HorizonCalibration | None = None, outcome: str = "",
                 feature_set: str = "postop", horizon_months: float = HEADLINE_HORIZON_MONTHS,
                 feature_names: list[str] | None = None, metrics: dict[str, float] | None = None,
                 params: dict[str, Any] | None = None, info: dict[str, str] | None = None,
                 explanation_method: str = DEFAULT_XGB_METHOD):
        if explanation_method not in XGB_METHODS:
            raise ValueError(f"explanation_method {explanation_method!r}: choose one of {', '.join(XGB_METHODS)}")
        self.scorer = scorer
        self.explanation_method = explanation_method
        self.calibration = calibration
        self.outcome = outcome
        self.feature_set = feature_set
        self.horizon_months = float(horizon_months)
        self.feature_names = list(feature_names or [])
        self.metrics = dict(metrics or {})
        self.params = dict(params or {})
        self.info = dict(info or {})
        self.estimand = estimand_of(outcome)  # death: all-cause mortality, no competing risk
        if calibration is not None:
            calibration.index(self.horizon_months)  # the headline must be a calibrated horizon

    @property
    def model_type(self) -> str:
        return self.scorer.model_type

    @property
    def horizons_months(self) -> tuple[float, ...]:
        return self.calibration.horizons_months

    @property
    def columns(self) -> list[str]:
        """Output columns, one per horizon: ``p_3m``, ``p_6m``, ..."""
        return [horizon_column(h) for h in self.horizons_months]

    # -- features -------------------------------------------------------------------
    def features(self, records: pd.DataFrame, typed: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
        """Model features (float64, NaN = missing) for flat raw records, index aligned.
        ``typed``: the records as ``features.records.inspect_records`` read them, if done."""
        feats = select_features(features_from_records(records, self.feature_set, typed), self.feature_names)
        feats.index = records.index
        return feats

    # -- predictions ----------------------------------------------------------------
    def score_from_features(self, X: pd.DataFrame) -> np.ndarray:
        """The score eta(x) (raw log-odds by the headline horizon) of a feature frame."""
        return self.scorer.raw_logit(select_features(X, self.feature_names))

    def logit_from_features(self, X: pd.DataFrame, horizon_months: float | None = None) -> np.ndarray:
        """Calibrated log-odds at ``horizon_months`` (default: the headline horizon)."""
        k = self.calibration.index(self.horizon_months if horizon_months is None else horizon_months)
        return self.calibration.intercepts[k] + self.calibration.slope * self.score_from_features(X)

    def proba_from_features(self, X: pd.DataFrame, horizon_months: float | None = None) -> np.ndarray:
        """Calibrated cumulative incidence at ``horizon_months`` (default: headline)."""
        return expit(self.logit_from_features(X, horizon_months))

    def curve_from_features(self, X: pd.DataFrame) -> pd.DataFrame:
        """Cumulative incidence at every horizon (columns ``p_<m>m``), index of ``X``."""
        return self.curve_from_score(self.score_from_features(X), X.index)

    def curve_from_score(self, score: np.ndarray, index: pd.Index | None = None) -> pd.DataFrame:
        """As ``curve_from_features`` from the score eta(x) already computed
        (``score_from_features``, or ``Explanation.score``)."""
        p = expit(self.calibration.logit(np.asarray(score, dtype="float64")))
        return pd.DataFrame(p, columns=_curve_columns(self.horizons_months).copy(), index=index, copy=False)

    def predict_proba(self, records: pd.DataFrame, horizon_months: float | None = None) -> np.ndarray:
        """Calibrated P(outcome within ``horizon_months``, death competing) per flat raw record."""
        return self.proba_from_features(self.features(records), horizon_months)

    def predict_curve(self, records: pd.DataFrame) -> pd.DataFrame:
        """The risk curve of each flat raw record: columns ``p_3m`` ... ``p_24m``, same index."""
        return self.curve_from_features(self.features(records))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """pyfunc entry point: flat raw records in (ISO-text or datetime dates, numeric or
        integer flags), one column per horizon out (``p_3m`` ... ``p_24m``, same index)."""
        records = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.predict_curve(records)

    # -- explanation ----------------------------------------------------------------
    def explain(self, records: pd.DataFrame, horizon_months: float = HEADLINE_HORIZON_MONTHS):
        """SHAP contributions in calibrated log-odds at ``horizon_months``
        (``modelstore.explain.Explanation``; additive: base + sum = that horizon's log-odds)."""
        return self.explain_features(self.features(records), horizon_months)

    def explain_features(self, X: pd.DataFrame, horizon_months: float | None = None):
        """As ``explain`` but from a feature frame (default: the headline horizon)."""
        k = self.calibration.index(self.horizon_months if horizon_months is None else horizon_months)
        return explain_scorer(self.scorer, select_features(X, self.feature_names), slope=self.calibration.slope,
                              intercept=self.calibration.intercepts[k], xgb_method=self.explanation_method)

    @property
    def explanation_text(self) -> str:
        """The explanation method of this version in words (model card, docs)."""
        return method_text(self.model_type, self.explanation_method)

    def missing_inputs(self, records: pd.DataFrame) -> list[list[dict]]:
        """Per record: ``[{"field": "imaging.preop.hu_index", "feature": ..., "handling": ...}]``
        for every input a feature needed but did not get, and how this model handled it."""
        return self.missing_inputs_from_features(records, self.features(records))

    def missing_inputs_from_features(self, records: pd.DataFrame, X: pd.DataFrame,
                                     absent_fields: dict[str, np.ndarray] | None = None) -> list[list[dict]]:
        """As ``missing_inputs``, with the records' features ``X`` already computed (and, if
        given, which records lack each field: ``features.records.missing_fields``)."""
        medians = self.scorer.medians() if isinstance(self.scorer, LinearScorer) else {}
        return missing_inputs(records, X, self.model_type, medians, absent_fields)

    # -- storage --------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The JSON part of the stored model."""
        return {
            "format_version": FORMAT_VERSION, "estimand": self.estimand, "outcome": self.outcome,
            "feature_set": self.feature_set, "headline_horizon_months": self.horizon_months,
            "horizons_months": list(self.horizons_months), "calibration": self.calibration.to_dict(),
            "feature_names": self.feature_names, "model_type": self.model_type,
            "scorer_params": _jsonable(self.scorer.get_params()), "params": _jsonable(self.params),
            "metrics": _jsonable(self.metrics), "info": self.info,
            "explanation_method": self.explanation_method,
        }

    def save(self, folder: Path) -> Path:
        """Write every part into ``folder`` (created); no pickles. Returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        s = self.scorer
        if isinstance(s, BoostScorer):
            s.booster_.save_model(str(folder / "booster.json"))
            np.save(folder / "background.npy", s.background_, allow_pickle=False)
        elif isinstance(s, LinearScorer):
            sio = _skops()
            sio.dump(s.encoding_, folder / "encoding.skops")
            np.savez(folder / "linear.npz", coef=s.coef_, intercept=np.array([s.intercept_]),
                     background_mean=s.background_mean_)
        elif isinstance(s, ForestScorer):
            _skops().dump(s.forest_, folder / "forest.skops")
        else:
            raise TypeError(f"cannot store a scorer of type {type(s).__name__}")
        (folder / "model.json").write_text(json.dumps(self.describe(), indent=1), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: Path) -> "RefractureModel":
        """Read a model written by ``save`` (ModelFormatError for another format)."""
        folder = Path(folder)
        meta_path = folder / "model.json"
        if not meta_path.exists():
            raise ModelFormatError(f"{folder} holds no model.json: not a stored RefractureModel of format {FORMAT_VERSION}")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ModelFormatError(f"stored model format {meta.get('format_version')!r}; this code reads format "
                                   f"{FORMAT_VERSION}. Retrain with `refracture train`.")
        scorer = _load_scorer(folder, meta)
        model = cls(scorer, HorizonCalibration.from_dict(meta["calibration"]), meta["outcome"], meta["feature_set"],
                    meta["headline_horizon_months"], meta["feature_names"], meta["metrics"], meta["params"], meta["info"],
                    # Versions stored before the choice existed were explained interventionally.
                    meta.get("explanation_method", "interventional"))
        model.estimand = meta["estimand"]
        return model

    def load_context(self, context) -> None:
        """models-from-code: fill this empty instance from the logged artifact folder."""
        self.__dict__.update(RefractureModel.load(Path(context.artifacts[ARTIFACT_KEY])).__dict__)

    def __repr__(self) -> str:
        if self.scorer is None:
            return "RefractureModel(empty)"
        return (f"RefractureModel({self.model_type}, outcome={self.outcome}, feature_set={self.feature_set}, "
                f"horizons={','.join(f'{h:g}' for h in self.horizons_months)} months)")


@lru_cache(maxsize=16)
def _curve_columns(horizons_months: tuple[float, ...]) -> pd.Index:
    """The curve's column labels (``p_3m`` ...), built once per horizon set: building them
    (~50 µs) is a visible share of scoring a short batch, once per model."""
    return pd.Index([horizon_column(h) for h in horizons_months])


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}


def _skops():
    """``skops.io``, imported when a scikit-learn part is stored or loaded: importing it
    imports every scikit-learn module to list its trusted types (~1.2 s), which a process
    serving XGBoost versions (the common case) never needs."""
    import skops.io

    return skops.io


def _trusted_load(path: Path):
    """skops load allowing only types from ``TRUSTED_MODULES``; anything else is refused."""
    sio = _skops()
    untrusted = sio.get_untrusted_types(file=path)
    foreign = [t for t in untrusted if not t.startswith(TRUSTED_MODULES)]
    if foreign:
        raise ModelFormatError(f"{path.name} contains types this code does not trust: {', '.join(foreign[:5])}")
    return sio.load(path, trusted=untrusted)


def _load_scorer(folder: Path, meta: dict[str, Any]):
    kind, names, params = meta["model_type"], meta["feature_names"], meta["scorer_params"]
    if kind == "xgboost":
        booster = xgb.Booster()
        booster.load_model(str(folder / "booster.json"))
        scorer = BoostScorer(**params)
        scorer.feature_names_ = list(names)
        scorer.constraints_ = monotone_constraints(scorer.outcome, scorer.feature_names_)
        scorer.set_fitted(booster, np.load(folder / "background.npy", allow_pickle=False))
        return scorer
    if kind in ("logistic", "elastic_net"):
        scorer = LinearScorer(**params)
        scorer.feature_names_ = list(names)
        arrays = np.load(folder / "linear.npz", allow_pickle=False)
        scorer.set_fitted(_trusted_load(folder / "encoding.skops"), arrays["coef"], float(arrays["intercept"][0]),
                          arrays["background_mean"])
        return scorer
    if kind == "random_forest":
        scorer = ForestScorer(**params)
        scorer.feature_names_ = list(names)
        scorer.forest_ = _trusted_load(folder / "forest.skops")
        return scorer
    raise ModelFormatError(f"unknown model type {kind!r} in the stored model")


def used_record_fields(feature_names: list[str]) -> set[str]:
    """Flat record fields that feed ``feature_names``."""
    return {name for f in feature_names for group in FEATURE_INPUTS.get(f, ()) for name in group}


def record_signature(feature_names: list[str], horizons_months) -> ModelSignature:
    """MLflow signature: flat-record input, one ``p_<m>m`` column per horizon out.

    Text (ids, categories) are strings, measurements doubles (NaN marks a missing value).
    Dates and integer-valued fields (flags, counts) accept either form a caller has in
    hand: ISO text or datetimes, doubles or integers (``AnyType``), so the project's own
    typed records (``tables_to_records(validate_raw(...))``) go in unchanged. A field is
    required only if the contract requires it *and* a feature of this model uses it: a
    pre-operative model does not ask for the cement volume.
    """
    used = used_record_fields(feature_names)
    cols = []
    for f in RECORD_FIELDS:
        if f.spec.kind in ("date", "binary", "int"):
            kind: Any = AnyType()
        else:
            kind = "string" if f.spec.kind in ("id", "str", "category") else "double"
        cols.append(ColSpec(kind, f.flat_name, required=bool(f.required and f.flat_name in used)))
    outputs = Schema([ColSpec("double", horizon_column(h)) for h in horizons_months])
    return ModelSignature(inputs=Schema(cols), outputs=outputs)


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
