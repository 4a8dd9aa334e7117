"""Orchestration of ``refracture train``: data -> candidates -> evaluation -> MLflow -> registry.

Per outcome: one MLflow experiment (``<prefix><outcome>``), one parent run per
invocation and one child run per candidate. The registry is written only at the very end,
after every candidate has been trained, evaluated and logged; a failure before that marks
the runs FAILED and leaves the registry untouched.

Model selection (documented in the model card) uses the training part only, so the
test-set numbers stay an honest estimate of the selected model:

1. each candidate's out-of-fold log-odds (from the search's best trial) are calibrated by
   *cross-fitted* Platt scaling (fold k calibrated on the other folds), giving honest
   cross-validated (CV) log loss, AUROC (bootstrap CI) and calibration slope;
2. eligible: CV calibration slope within [0.8, 1.2] and CV AUROC at or above the lower
   95 % CI bound of the best CV AUROC (not clearly worse at discrimination);
3. the eligible candidate with the lowest CV log loss is selected (none eligible: lowest
   CV log loss overall, flagged);
4. it becomes ``champion`` if its test log loss is lower than the current champion's
   re-scored on this run's test set, otherwise ``challenger``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.config import TrainConfig

logger = logging.getLogger(__name__)

SLOPE_RANGE = (0.8, 1.2)
SELECTION_RULE = (
    "among candidates whose cross-validated calibration slope (training part, cross-fitted Platt) lies in "
    "[0.8, 1.2] and whose cross-validated AUROC is at least the lower 95 % CI bound of the best cross-validated "
    "AUROC, the one with the lowest cross-validated log loss; it takes the `champion` alias only if its test log "
    "loss is lower than the current champion's re-scored on the same test set, otherwise `challenger`."
)
DESCRIPTIONS = {
    "logistic": "logistic regression (clinical baseline): training-median imputation with missing-value indicators, "
                "winsorised (0.5/99.5 %) standardised features, a squared term for cement volume (U-shaped effect), "
                "negligible ridge (C = 1e4).",
    "elastic_net": "elastic-net penalised logistic regression on the same encoding as the baseline (saga solver).",
    "random_forest": "random forest (scikit-learn) on the raw features; missing values handled natively by the trees. "
                     "The forest's probability is converted to log-odds (clipped at 1e-4) before calibration.",
    "xgboost": "gradient-boosted trees (XGBoost, hist) with monotone constraints from clinical-evidence §3; missing "
               "values handled natively (learned default direction per split).",
}


class TrainingRefused(RuntimeError):
    """The data cannot support training as asked (too few events, wrong feature set...)."""


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """Everything read from the export once, shared by all outcomes."""

    tables: dict[str, pd.DataFrame]
    training_set: pd.DataFrame
    records: pd.DataFrame
    subgroups: pd.DataFrame
    fingerprint: str
    truth: pd.DataFrame | None
    profile: str
    git_commit: str


def data_fingerprint(raw_dir: Path) -> str:
    """SHA-256 over the raw table files (name and bytes, in contract order)."""
    from features.schema import TABLES
    from features.io import find_table_file

    h = hashlib.sha256()
    for name in TABLES:
        path = find_table_file(raw_dir, name)
        if path is None:
            continue
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def git_commit() -> str:
    """Commit of the code (with '+dirty' if there are uncommitted changes), or a note."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "none (no commit yet)"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_profile(raw_dir: Path) -> str:
    """Simulator profile named in ``simulation.json`` ('unknown' if truth exists without it;
    'none' for a real export)."""
    meta = raw_dir / "simulation.json"
    if meta.exists():
        try:
            return str(json.loads(meta.read_text(encoding="utf-8")).get("profile", "unknown"))
        except (OSError, ValueError):
            return "unknown"
    return "unknown" if (raw_dir / "truth.parquet").exists() else "none"


def subgroup_frame(records: pd.DataFrame) -> pd.DataFrame:
    """Sex, age band, region (thoracolumbar T10-L2 vs other) and technique per procedure."""
    from features.levels import is_thoracolumbar
    from training.evaluation import age_band

    out = pd.DataFrame(index=records["procedure_id"].astype(str).to_numpy())
    out["sex"] = records["sex"].to_numpy()
    out["age_band"] = age_band(pd.Series(records["age_years"].to_numpy(dtype="float64"))).to_numpy()
    tl = is_thoracolumbar(pd.Series(records["level"].to_numpy()))
    out["region"] = np.where(np.asarray(tl, dtype=bool), "thoracolumbar (T10-L2)", "other")
    out["technique"] = records["technique"].to_numpy()
    return out


def check_feature_set(tables: dict[str, pd.DataFrame], training_set: pd.DataFrame, feature_set: str) -> None:
    """Refuse a post-operative feature set when the export has no post-operative data."""
    from features.catalog import FEATURES_BY_NAME

    if feature_set != "postop":
        return
    imaging = tables["imaging"]
    n_post = int((imaging["timepoint"] == "postop").sum())
    post_features = [n for n in training_set.columns if n in FEATURES_BY_NAME and FEATURES_BY_NAME[n].timing == "postop"]
    empty = [n for n in post_features if training_set[n].isna().all()]
    cement_empty = training_set["cement_volume_ml"].isna().all() if "cement_volume_ml" in training_set else True
    if n_post == 0 or len(empty) == len(post_features) or cement_empty:
        raise TrainingRefused(
            f"feature set 'postop' does not match this export: {n_post} imaging rows with timepoint 'postop'; "
            f"{len(empty)} of {len(post_features)} post-operative features are empty in every row"
            + (" (cement volume is empty too)" if cement_empty else "")
            + ". Use --feature-set preop, or export the immediate post-operative imaging and operative record.")


def prepare(cfg: TrainConfig) -> Prepared:
    """Read, validate and build features once. Raises RawDataError / TrainingRefused."""
    from features.assemble import build_training_set
    from features.records import tables_to_records
    from features.validate import validate_raw
    from features.io import read_raw

    tables = validate_raw(read_raw(cfg.raw_dir))
    ts = build_training_set(tables, cfg.feature_set, horizon_months=cfg.horizon_months)
    ts.index = ts.index.astype(str)
    check_feature_set(tables, ts, cfg.feature_set)
    records = tables_to_records(tables)
    truth = None
    truth_path = Path(cfg.raw_dir) / "truth.parquet"
    if truth_path.exists():
        truth = pd.read_parquet(truth_path)
        truth = truth.set_index(truth["procedure_id"].astype(str))
    return Prepared(tables, ts, records, subgroup_frame(records), data_fingerprint(Path(cfg.raw_dir)),
                    truth, read_profile(Path(cfg.raw_dir)), git_commit())


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------
@dataclass
class CandidateResult:
    model_type: str
    params: dict[str, Any]
    model: Any  # RefractureModel
    test_metrics: dict[str, float]
    cv_metrics: dict[str, float]
    p_test: np.ndarray
    run_id: str = ""
    model_uri: str = ""
    seconds: float = 0.0
    explanation: Any = None


@dataclass
class OutcomeResult:
    outcome: str
    experiment_id: str = ""
    parent_run_id: str = ""
    selected: str = ""
    registered_version: str | None = None
    alias: str | None = None
    candidates: dict[str, CandidateResult] = field(default_factory=dict)
    oracle_metrics: dict[str, float] | None = None
    refused: str | None = None
    seconds: float = 0.0
    card: str = ""


class _NullProgress:
    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass

    def advance(self, *args, **kwargs):
        pass

    def remove_task(self, *args, **kwargs):
        pass


# ------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------
def labelled_rows(prep: Prepared, outcome: str, cfg: TrainConfig) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """(labelled frame, y, train positions, test positions); refuses too few events."""
    from training.split import train_test_split_grouped

    ts = prep.training_set
    lab = ts[ts[outcome].notna()]
    y = lab[outcome].astype(int).to_numpy()
    n_events, n = int(y.sum()), len(y)
    n_censored = int(ts[outcome].isna().sum())
    if n_events < cfg.min_events or n - n_events < cfg.min_events:
        raise TrainingRefused(
            f"{outcome}: too few events to train: {n_events} events and {n - n_events} non-events among {n} procedures "
            f"labelled at {cfg.horizon_months:g} months ({n_censored} censored before the horizon); at least "
            f"{cfg.min_events} of each are needed. Use a larger export or a longer horizon.")
    train, test = train_test_split_grouped(y, lab["patient_id"].astype(str).to_numpy(), cfg.test_size, cfg.seed)
    test_events = int(y[test].sum())
    if test_events < cfg.min_test_events or len(test) - test_events < cfg.min_test_events:
        raise TrainingRefused(
            f"{outcome}: too few events in the test split: {test_events} events among {len(test)} test procedures "
            f"({n_events} events among {n} overall); at least {cfg.min_test_events} are needed. Raise --test-size or "
            "use a larger export.")
    return lab, y, train, test


def cross_fitted_calibration(oof_raw: np.ndarray, y: np.ndarray, folds) -> np.ndarray:
    """Calibrated OOF probabilities: fold k's log-odds calibrated by Platt fitted on the other folds."""
    from training.calibration import Platt
    from training.candidates import expit
    from training.split import fold_ids

    ids = fold_ids(len(y), folds)
    out = np.empty(len(y))
    for k in range(len(folds)):
        mask = ids == k
        out[mask] = expit(Platt.fit(oof_raw[~mask], y[~mask])(oof_raw[mask]))
    return out


def select(results: dict[str, CandidateResult]) -> tuple[str, str]:
    """Apply the selection rule (module docstring) to CV metrics. Returns (model_type, note)."""
    best_auroc = max(results.values(), key=lambda r: r.cv_metrics["auroc"])
    floor = best_auroc.cv_metrics.get("auroc_ci_low", best_auroc.cv_metrics["auroc"])
    eligible = {k: r for k, r in results.items()
                if SLOPE_RANGE[0] <= r.cv_metrics["calibration_slope"] <= SLOPE_RANGE[1] and r.cv_metrics["auroc"] >= floor}
    pool = eligible or results
    chosen = min(pool, key=lambda k: pool[k].cv_metrics["log_loss"])
    if eligible:
        note = (f"Selected `{chosen}`: lowest cross-validated log loss ({results[chosen].cv_metrics['log_loss']:.4f}) among "
                f"{', '.join(f'`{k}`' for k in eligible)} (eligible: CV calibration slope in [0.8, 1.2] and CV AUROC ≥ "
                f"{floor:.3f}, the lower CI bound of `{best_auroc.model_type}`'s {best_auroc.cv_metrics['auroc']:.3f}).")
    else:
        note = (f"**No candidate met the eligibility criteria**; `{chosen}` has the lowest cross-validated log loss "
                "overall. Treat its calibration with caution.")
    return chosen, note


def fit_candidate(model_type: str, cfg: TrainConfig, outcome: str, X_train: pd.DataFrame, y_train: np.ndarray,
                  folds, X_test: pd.DataFrame, y_test: np.ndarray, info: dict[str, str], progress) -> CandidateResult:
    """Search, calibrate, refit and evaluate one candidate (no MLflow here)."""
    from training.calibration import Platt
    from training.candidates import make_scorer
    from training.evaluation import evaluate, replicates, with_ci
    from training.model import RefractureModel
    from training.search import search

    t0 = time.perf_counter()
    from training.search import FOREST_TRIAL_SHARE

    trials = 1 if model_type == "logistic" or cfg.search_trials == 0 else cfg.search_trials
    if model_type == "random_forest" and trials > 1:
        trials = max(1, int(round(trials * FOREST_TRIAL_SHARE)))
    task = progress.add_task(f"{outcome}: {model_type} search", total=trials)
    result = search(model_type, X_train, y_train, folds, outcome, cfg.seed, cfg.search_trials, cfg.n_jobs,
                    on_trial=lambda i, loss: progress.update(task, completed=i))
    progress.update(task, description=f"{outcome}: {model_type} refit + evaluation")
    calibration = Platt.fit(result.oof_raw, y_train)
    scorer = make_scorer(model_type, result.params, outcome, cfg.seed, cfg.n_jobs).fit(X_train, y_train)
    p_oof = cross_fitted_calibration(result.oof_raw, y_train, folds)
    point, reps = replicates(y_train, p_oof, n_boot=min(cfg.n_bootstrap, 300), seed=cfg.seed)
    cv_metrics = with_ci({k: point[k] for k in ("auroc", "log_loss", "brier", "calibration_slope",
                                                 "calibration_intercept", "auprc")}, reps)
    model = RefractureModel(scorer, calibration, outcome, cfg.feature_set, cfg.horizon_months, list(X_train.columns),
                            params=result.params, info=info)
    p_test = model.proba_from_features(X_test)
    test_metrics = evaluate(y_test, p_test, n_boot=cfg.n_bootstrap, seed=cfg.seed)
    model.metrics = {**test_metrics, "cv_log_loss": cv_metrics["log_loss"], "cv_auroc": cv_metrics["auroc"]}
    progress.update(task, completed=trials)
    progress.remove_task(task)
    return CandidateResult(model_type, result.params, model, test_metrics, cv_metrics, p_test,
                           seconds=time.perf_counter() - t0)


def pip_requirements() -> list[str]:
    """Exact versions of what the model needs at load time (skips MLflow's slow inference)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("mlflow", "numpy", "pandas", "scikit-learn", "xgboost-cpu", "shap", "scipy", "pyarrow", "cloudpickle"):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return out


def _log_figure(fig, name: str) -> None:
    import mlflow

    from training.plots import close

    mlflow.log_figure(fig, name)
    close(fig)


def _log_text(text: str, name: str) -> None:
    import mlflow

    mlflow.log_text(text, name)


def _clean(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}


def log_candidate(res: CandidateResult, cfg: TrainConfig, outcome: str, y_test: np.ndarray, X_test: pd.DataFrame,
                  example: pd.DataFrame, tags: dict[str, str], oracle_p: np.ndarray | None) -> None:
    """Child run: params, metrics, plots, SHAP, and the model (pyfunc RefractureModel)."""
    import mlflow

    from training import plots
    from training.model import record_signature

    mlflow.set_tags({**tags, "candidate": res.model_type})
    mlflow.log_params({f"hp_{k}": v for k, v in res.params.items()})
    mlflow.log_params({"platt_slope": round(res.model.calibration.slope, 6),
                       "platt_intercept": round(res.model.calibration.intercept, 6)})
    mlflow.log_metrics({**_clean(res.test_metrics, "test_"), **_clean(res.cv_metrics, "cv_"), "fit_seconds": res.seconds})
    curves = {res.model_type: (y_test, res.p_test)}
    if oracle_p is not None:
        curves["oracle (true risk)"] = (y_test, oracle_p)
    title = f"{outcome} ≤ {cfg.horizon_months:g} mo, test set"
    _log_figure(plots.roc_figure(curves, title), "plots/roc.png")
    _log_figure(plots.calibration_figure(curves, title), "plots/calibration.png")
    _log_figure(plots.decision_curve_figure(curves, title), "plots/decision_curve.png")
    expl = res.explanation
    _log_figure(plots.shap_beeswarm_figure(expl, f"{res.model_type}: SHAP, {outcome}"), "shap/beeswarm.png")
    _log_figure(plots.shap_bar_figure(expl, f"{res.model_type}: mean |SHAP|, {outcome}"), "shap/mean_abs_shap.png")
    mean_abs = pd.Series(np.abs(expl.values).mean(axis=0), index=expl.feature_names).sort_values(ascending=False)
    _log_text(mean_abs.to_frame("mean_abs_shap_logodds").to_csv(), "shap/mean_abs_shap.csv")
    if res.model_type == "xgboost":
        from training.candidates import monotone_constraints

        cons = dict(zip(res.model.feature_names, monotone_constraints(outcome, res.model.feature_names)))
        mlflow.log_dict({k: v for k, v in cons.items() if v}, "monotone_constraints.json")
    info = mlflow.pyfunc.log_model(
        name="model", python_model=res.model, signature=record_signature(res.model.feature_names),
        input_example=example, pip_requirements=pip_requirements(),
    )
    res.model_uri = info.model_uri


def constraints_description(outcome: str, feature_names: list[str]) -> str:
    """Markdown list of the XGBoost monotone constraints in use for ``outcome``."""
    from features.catalog import display_name
    from training.candidates import monotone_constraints

    cons = monotone_constraints(outcome, feature_names)
    up = [display_name(n) for n, c in zip(feature_names, cons) if c > 0]
    down = [display_name(n) for n, c in zip(feature_names, cons) if c < 0]
    return ("Risk may only rise with: " + (", ".join(up) or "–") + ".\n\nRisk may only fall with: " + (", ".join(down) or "–")
            + ".\n\nUnconstrained on purpose: cement volume and fill ratios (U-shaped, clinical-evidence §3), level, "
            "angles, technique, approach. Sources per constraint: `training/candidates.py` (`MONOTONE`). The random "
            "forest and linear models are unconstrained.")


def missing_description(model_type: str, prep: Prepared, feature_names: list[str], X: pd.DataFrame) -> str:
    """Missingness of the inputs in the development data and how the model handles it."""
    miss = X.isna().mean().sort_values(ascending=False)
    miss = miss[miss > 0]
    from features.catalog import display_name

    listing = ", ".join(f"{display_name(n)} {100 * v:.0f} %" for n, v in miss.head(12).items()) or "none"
    how = {
        "logistic": "replaced by the training median, with a 0/1 'not measured' indicator per feature so the model "
                    "learns the risk of an unmeasured value",
        "elastic_net": "replaced by the training median, with a 0/1 'not measured' indicator per feature",
        "random_forest": "kept missing; each tree split learned in training which side missing values go to",
        "xgboost": "kept missing; each split has a default direction for missing values learned in training",
    }[model_type]
    return (f"Missing values are kept as hospitals present them (e.g. no HU when no CT was taken); no row is dropped. "
            f"This model: {how}. Missing in the development data: {listing}. Missingness patterns at a new site "
            "that differ from these (e.g. no CT at all) are a source of miscalibration.")


def rescore_champion(outcome: str, records_test: pd.DataFrame, y_test: np.ndarray) -> tuple[str | None, float, str]:
    """(version, test log loss, note) of the current champion re-scored on this test set."""
    from training import registry

    mv = registry.current_version(outcome, registry.CHAMPION)
    if mv is None:
        return None, float("nan"), "no current champion"
    try:
        old = registry.load_version(outcome, mv.version)
        p = np.clip(old.predict_proba(records_test), 1e-15, 1 - 1e-15)
        loss = float(-np.mean(y_test * np.log(p) + (1 - y_test) * np.log1p(-p)))
        note = f"current champion v{mv.version} ({old.model_type}, {old.feature_set}, {old.horizon_months:g} months)"
        return str(mv.version), loss, note
    except Exception as exc:  # noqa: BLE001 - a champion that cannot be scored is reported, then replaced
        logger.warning("current champion v%s of %s could not be re-scored: %s", mv.version, outcome, exc)
        return str(mv.version), float("nan"), f"current champion v{mv.version} could not be re-scored ({type(exc).__name__})"


# ------------------------------------------------------------------------------------------
# One outcome
# ------------------------------------------------------------------------------------------
def train_outcome(cfg: TrainConfig, prep: Prepared, outcome: str, progress=None) -> OutcomeResult:
    """Train, evaluate, log and (at the end) register one outcome. See the module docstring."""
    import mlflow

    from features.catalog import feature_names as set_features
    from features.schema import SCHEMA_VERSION
    from training import plots, registry
    from training.evaluation import evaluate, paired_difference, subgroup_metrics
    from training.explain import METHODS
    from training.model import example_records
    from training.report import markdown_table, model_card, table_one
    from training.split import cv_folds
    from modelstore.tracking import get_or_create_experiment

    progress = progress or _NullProgress()
    t_start = time.perf_counter()
    out = OutcomeResult(outcome)
    names = set_features(cfg.feature_set)
    lab, y, train, test = labelled_rows(prep, outcome, cfg)
    X = lab[names]
    groups = lab["patient_id"].astype(str).to_numpy()
    X_train, y_train, X_test, y_test = X.iloc[train], y[train], X.iloc[test], y[test]
    folds = cv_folds(y_train, groups[train], cfg.cv_folds, cfg.seed)
    test_ids = X_test.index.astype(str)
    records = prep.records.set_index(prep.records["procedure_id"].astype(str), drop=False)
    records_test = records.loc[test_ids]
    example = example_records(prep.records)
    oracle_p = None
    if prep.truth is not None and f"p_{outcome}" in prep.truth.columns:
        if abs(cfg.horizon_months - 24.0) < 1e-9:
            oracle_p = prep.truth[f"p_{outcome}"].reindex(test_ids).to_numpy(dtype="float64")
            if np.isnan(oracle_p).any():
                logger.warning("truth.parquet lacks some test procedures: oracle metrics skipped")
                oracle_p = None
        else:
            logger.warning("truth.parquet holds 24-month risks; horizon is %g months: oracle metrics skipped", cfg.horizon_months)

    tags = {
        "outcome": outcome, "feature_set": cfg.feature_set, "horizon_months": f"{cfg.horizon_months:g}",
        "schema_version": SCHEMA_VERSION, "data_fingerprint": prep.fingerprint, "git_commit": prep.git_commit,
        "simulator_profile": prep.profile, "seed": str(cfg.seed), **cfg.tags,
    }
    info = {k: tags[k] for k in ("data_fingerprint", "schema_version", "git_commit", "simulator_profile")}
    experiment_id = get_or_create_experiment(f"{cfg.experiment_prefix}{outcome}")
    out.experiment_id = experiment_id
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    parent = mlflow.start_run(experiment_id=experiment_id, run_name=f"{outcome}-{cfg.feature_set}-{stamp}")
    out.parent_run_id = parent.info.run_id
    created_version = None
    try:
        mlflow.set_tags({**tags, "run_kind": "parent"})
        mlflow.log_params({
            "raw_dir": str(Path(cfg.raw_dir).resolve()), "feature_set": cfg.feature_set, "horizon_months": cfg.horizon_months,
            "seed": cfg.seed, "search_trials": cfg.search_trials, "test_size": cfg.test_size, "cv_folds": cfg.cv_folds,
            "n_bootstrap": cfg.n_bootstrap, "candidates": ",".join(cfg.candidates), "n_features": len(names),
        })
        mlflow.log_metrics({"n_labelled": len(y), "n_events": int(y.sum()), "n_train": len(train), "n_test": len(test),
                            "n_test_events": int(y_test.sum()), "n_censored": int(prep.training_set[outcome].isna().sum())})
        t1 = table_one(prep.training_set, outcome, names, cfg.horizon_months)
        _log_text(markdown_table(t1), "table1.md")
        _log_text(t1.to_csv(index=False), "table1.csv")

        candidates_task = progress.add_task(f"{outcome}: candidates", total=len(cfg.candidates))
        for model_type in cfg.candidates:
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"{model_type}", nested=True) as child:
                res = fit_candidate(model_type, cfg, outcome, X_train, y_train, folds, X_test, y_test, info, progress)
                rng = np.random.default_rng(cfg.seed)
                rows = np.sort(rng.choice(len(X_test), size=min(cfg.shap_rows, len(X_test)), replace=False))
                res.explanation = res.model.explain_features(X_test.iloc[rows])
                res.run_id = child.info.run_id
                log_candidate(res, cfg, outcome, y_test, X_test, example, tags, oracle_p)
                out.candidates[model_type] = res
            progress.advance(candidates_task)
        progress.remove_task(candidates_task)

        # Oracle and comparisons on the same test rows.
        curves = {k: (y_test, r.p_test) for k, r in out.candidates.items()}
        if oracle_p is not None:
            out.oracle_metrics = evaluate(y_test, oracle_p, n_boot=cfg.n_bootstrap, seed=cfg.seed)
            mlflow.log_metrics(_clean(out.oracle_metrics, "oracle_"))
            curves["oracle (true risk)"] = (y_test, oracle_p)
        title = f"{outcome} ≤ {cfg.horizon_months:g} mo, test set (n={len(test)}, {int(y_test.sum())} events)"
        _log_figure(plots.roc_figure(curves, title), "plots/roc_all.png")
        _log_figure(plots.calibration_figure(curves, title), "plots/calibration_all.png")
        _log_figure(plots.decision_curve_figure(curves, title), "plots/decision_curve_all.png")

        chosen, note = select(out.candidates)
        out.selected = chosen
        best = out.candidates[chosen]
        mlflow.set_tag("selected_candidate", chosen)
        mlflow.log_metrics(_clean(best.test_metrics, "selected_test_"))
        oracle_note = ""
        if oracle_p is not None:
            diff = paired_difference(y_test, best.p_test, oracle_p, ("auroc", "log_loss", "calibration_slope"),
                                     n_boot=cfg.n_bootstrap, seed=cfg.seed)
            mlflow.log_metrics(_clean(diff, "selected_minus_oracle_"))
            oracle_note = (f"Oracle = the simulator's true risks on the same test rows. Selected minus oracle: AUROC "
                           f"{diff['auroc_diff']:+.3f} ({diff['auroc_diff_ci_low']:+.3f} to {diff['auroc_diff_ci_high']:+.3f}), "
                           f"log loss {diff['log_loss_diff']:+.4f} ({diff['log_loss_diff_ci_low']:+.4f} to "
                           f"{diff['log_loss_diff_ci_high']:+.4f}).")

        sub = prep.subgroups.reindex(test_ids)
        subgroups = subgroup_metrics(y_test, best.p_test, sub, n_boot=min(cfg.n_bootstrap, 300), seed=cfg.seed)
        _log_text(subgroups.to_csv(index=False), "subgroups.csv")
        sub_show = subgroups[[c for c in subgroups.columns if not c.endswith(("_ci_low", "_ci_high"))]]
        if oracle_p is not None:
            sub_oracle = subgroup_metrics(y_test, oracle_p, sub, n_boot=min(cfg.n_bootstrap, 300), seed=cfg.seed)
            _log_text(sub_oracle.to_csv(index=False), "subgroups_oracle.csv")

        cand_rows = []
        for k, r in out.candidates.items():
            cand_rows.append({"candidate": k, "CV log loss": r.cv_metrics["log_loss"], "CV AUROC": r.cv_metrics["auroc"],
                              "CV slope": r.cv_metrics["calibration_slope"], "test AUROC": r.test_metrics["auroc"],
                              "test log loss": r.test_metrics["log_loss"], "test Brier": r.test_metrics["brier"],
                              "test slope": r.test_metrics["calibration_slope"], "fit s": r.seconds})
        if out.oracle_metrics:
            om = out.oracle_metrics
            cand_rows.append({"candidate": "oracle (true risk)", "CV log loss": float("nan"), "CV AUROC": float("nan"),
                              "CV slope": float("nan"), "test AUROC": om["auroc"], "test log loss": om["log_loss"],
                              "test Brier": om["brier"], "test slope": om["calibration_slope"], "fit s": float("nan")})
        cand_table = pd.DataFrame(cand_rows)
        _log_text(cand_table.to_csv(index=False), "candidates.csv")

        # Champion vs current champion, re-scored on this test set.
        old_version, old_loss, old_note = rescore_champion(outcome, records_test, y_test) if cfg.register else (None, float("nan"), "")
        new_loss = best.test_metrics["log_loss"]
        alias = registry.CHAMPION if registry.beats(new_loss, old_loss) else registry.CHALLENGER
        if old_version is None:
            reason = f"first version: selected {chosen} (test log loss {new_loss:.4f})"
        elif np.isfinite(old_loss):
            reason = (f"test log loss {new_loss:.4f} vs {old_loss:.4f} for {old_note} on the same {len(test)} test procedures; "
                      f"{'beats' if alias == registry.CHAMPION else 'does not beat'} it")
        else:
            reason = f"{old_note}; selected {chosen} (test log loss {new_loss:.4f})"
        if cfg.register:
            if np.isfinite(old_loss):
                mlflow.log_metric("current_champion_test_log_loss", old_loss)
            mlflow.set_tag("alias_decision", f"{alias}: {reason}"[:5000])

        performance_columns = {f"{chosen} (selected)": best.test_metrics}
        if out.oracle_metrics:
            performance_columns["oracle (true risk)"] = out.oracle_metrics
        ctx = {
            "outcome": outcome, "horizon_months": cfg.horizon_months, "model_type": chosen, "feature_set": cfg.feature_set,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "parent_run_id": out.parent_run_id,
            "run_id": best.run_id, "data_fingerprint": prep.fingerprint, "schema_version": SCHEMA_VERSION,
            "profile": prep.profile, "git_commit": prep.git_commit, "metrics": best.test_metrics,
            "n_censored": int(prep.training_set[outcome].isna().sum()), "n_labelled": len(y), "n_events": int(y.sum()),
            "n_train": len(train), "n_train_events": int(y_train.sum()), "n_test": len(test),
            "n_test_events": int(y_test.sum()), "test_size": cfg.test_size, "seed": cfg.seed,
            "feature_names": names, "model_description": DESCRIPTIONS[chosen],
            "search_description": ("no search (fixed baseline)" if chosen == "logistic" or cfg.search_trials == 0 else
                                   f"{cfg.search_trials if chosen != 'random_forest' else max(1, round(cfg.search_trials / 2))} "
                                   f"optuna TPE trials (seed {cfg.seed}), {cfg.cv_folds}-fold grouped "
                                   "stratified CV on the development part, objective: calibrated CV log loss"),
            "params": json.dumps(best.params), "explain_method": METHODS[chosen],
            "platt_slope": best.model.calibration.slope, "platt_intercept": best.model.calibration.intercept,
            "n_boot": cfg.n_bootstrap, "performance_columns": performance_columns, "oracle_note": oracle_note,
            "candidate_table": cand_table, "selection_rule": SELECTION_RULE,
            "selection_note": note + (f" Registry: {alias} ({reason})." if cfg.register else " Not registered (--no-register)."),
            "subgroup_table": sub_show, "missing_description": missing_description(chosen, prep, names, X_train),
            "constraints_description": constraints_description(outcome, names),
        }
        out.card = model_card(ctx)
        _log_text(out.card, "model_card.md")
        with mlflow.start_run(run_id=best.run_id, nested=True):
            _log_text(out.card, "model_card.md")

        # Registry: the very last step.
        if cfg.register:
            mv = registry.register(best.model_uri, outcome, {
                **tags, "model_type": chosen, "run_id": best.run_id, "parent_run_id": out.parent_run_id,
                **{f"test_{k}": f"{best.test_metrics[k]:.4f}" for k in registry.KEY_METRICS},
                "test_auroc_ci": f"{best.test_metrics['auroc_ci_low']:.3f}-{best.test_metrics['auroc_ci_high']:.3f}",
            }, description=note)
            created_version = mv.version
            registry.set_alias(outcome, mv.version, alias, f"refracture train: {reason}", who=None)
            out.registered_version, out.alias = str(mv.version), alias
            mlflow.set_tags({"registered_model": registry.model_name(outcome), "registered_version": str(mv.version),
                             "registered_alias": alias})
        out.seconds = time.perf_counter() - t_start
        mlflow.log_metric("total_seconds", out.seconds)
        mlflow.end_run("FINISHED")
        return out
    except BaseException as exc:
        if created_version is not None:
            try:
                registry.delete_version(outcome, created_version)
            except Exception:  # noqa: BLE001
                logger.exception("could not remove half-registered version %s", created_version)
        while mlflow.active_run() is not None:
            mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


def run(cfg: TrainConfig, progress=None) -> list[OutcomeResult]:
    """Train every outcome of ``cfg``. Too-few-event outcomes are refused (``refused`` set)
    and the others still trained; data and tracking problems raise."""
    from modelstore.tracking import check_tracking, configure_tracking

    uri = configure_tracking(cfg.store_dir)
    check_tracking(uri)
    prep = prepare(cfg)
    results = []
    for outcome in cfg.outcomes:
        try:
            results.append(train_outcome(cfg, prep, outcome, progress))
        except TrainingRefused as exc:
            if len(cfg.outcomes) == 1:
                raise
            logger.warning("%s", exc)
            results.append(OutcomeResult(outcome, refused=str(exc)))
    return results
