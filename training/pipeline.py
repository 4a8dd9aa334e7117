"""Orchestration of ``refracture train``, in the README's steps.

Per outcome: one MLflow experiment (``<prefix><outcome>``), one parent run per invocation
and one child run per candidate.

1. **data** (``training.data``): read and validate the export once; per outcome every
   procedure with its follow-up time and status, the crude labels at every horizon with
   their censoring weights, a grouped held-out split and folds;
2. **candidates** (``training.fitting``): search, horizon calibration, refit, CV and test
   metrics, SHAP; each logged in its own run (``training.run_log``);
3. **selection** (``training.selection``): the documented rule on CV metrics, then the
   comparison with the current champion on this run's test set;
4. **card** (``training.card``): the model card from the run's numbers;
5. **registry** (``training.registry``), the very last step: the new version with its
   estimand and horizons as tags, and its alias. A failure before that marks the runs
   FAILED and leaves the registry untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import mlflow
import numpy as np
import pandas as pd

from features.drift import build_reference
from features.exclusion import VALIDATION_ARTIFACT, CheckedExport
from features.schema import SCHEMA_VERSION
from training import registry
from training.card import CardInputs, candidate_table, model_card
from training.config import TrainConfig
from training.data import OutcomeData, Prepared, TrainingRefused, outcome_data, prepare, truth_curves
from modelstore.estimand import estimand_of, horizons_text
from training.evaluation import subgroup_metrics, weighted_log_loss
from training.fitting import CandidateResult, fit_candidate
from training.horizon_metrics import calibration_tables, decision_curve, flat_metrics, net_benefit_metrics
from modelstore.drift_reference import REFERENCE_TAG, log_reference
from modelstore.model import example_records
from modelstore.runs import close_active_runs, end_status, process_tags, tracked_run
from training.report import markdown_table, table_one
from training.progress import NullProgress, Progress
from training.run_log import clean, log_candidate, log_comparison, log_setup, log_text
from training.selection import SELECTION_RULE, decide_alias, select
from modelstore.tracking import check_tracking, configure_tracking, get_or_create_experiment

__all__ = ["TrainingRefused", "run", "train_outcome", "OutcomeResult"]

logger = logging.getLogger(__name__)


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


def run_tags(cfg: TrainConfig, prep: Prepared, outcome: str) -> dict[str, str]:
    """Tags of every run and of the registered version (estimand and horizons included;
    death, the context model, has its own estimand and the pre-operative feature set; the
    export's exclusion counts and report fingerprint, ``features.exclusion``; how far the
    export ascertained deaths and fractures, which the labels followed)."""
    validation = prep.validation.summary() if prep.validation is not None else {}
    return {**validation,
        "outcome": outcome, "feature_set": cfg.feature_set_for(outcome), "horizon_months": f"{cfg.horizon_months:g}",
        "horizons_months": horizons_text(cfg.horizons_months), "estimand": estimand_of(outcome),
        "schema_version": SCHEMA_VERSION, "data_fingerprint": prep.fingerprint, "git_commit": prep.git_commit,
        "simulator_profile": prep.profile, "seed": str(cfg.seed), **prep.ascertainment.tags(),
        "censoring_model": cfg.censoring_model, **cfg.tags,
    }


def train_candidates(cfg: TrainConfig, data: OutcomeData, truth, tags: dict[str, str], example: pd.DataFrame,
                     experiment_id: str, progress: Progress) -> dict[str, CandidateResult]:
    """Fit, explain and log every candidate, each in its own child run."""
    info = {k: tags[k] for k in ("data_fingerprint", "schema_version", "git_commit", "simulator_profile")}
    rng = np.random.default_rng(cfg.seed)
    shap_rows = np.sort(rng.choice(len(data.test), size=min(cfg.shap_rows, len(data.test)), replace=False))
    X_explain = data.X.iloc[data.test[shap_rows]]
    results: dict[str, CandidateResult] = {}
    for model_type in cfg.candidates:
        with tracked_run(experiment_id=experiment_id, run_name=model_type, nested=True) as child:
            res = fit_candidate(model_type, cfg, data, truth, info, progress)
            progress.step(f"{data.outcome}: {model_type}: SHAP, figures and the model into MLflow")
            res.explanation = res.model.explain_features(X_explain)
            res.run_id = child.info.run_id
            log_candidate(res, cfg, data, example, tags, truth)
            results[model_type] = res
    return results


def compare_on_test(best: CandidateResult, data: OutcomeData, cfg: TrainConfig, truth):
    """Calibration by decile at every horizon and the decision curve at the headline, for the
    selected model and (when known) the oracle on the same test rows."""
    te = data.test
    t, s = data.time_days[te], data.status[te]
    n_boot = min(cfg.n_bootstrap, 200)
    calibration = {best.model_type: calibration_tables(t, s, best.curve_test, data.horizons_months, n_boot, cfg.seed)}
    decision = {best.model_type: decision_curve(t, s, best.p_test, cfg.horizon_months, n_boot, cfg.seed)}
    if truth is not None:
        oracle_curve = pd.DataFrame({c: truth[h][te] for h, c in zip(data.horizons_months, best.curve_test.columns)})
        calibration["oracle (true risk)"] = calibration_tables(t, s, oracle_curve, data.horizons_months, n_boot, cfg.seed)
        decision["oracle (true risk)"] = decision_curve(t, s, truth[cfg.horizon_months][te], cfg.horizon_months,
                                                        n_boot, cfg.seed)
    return calibration, decision


def oracle_metrics(best: CandidateResult, data: OutcomeData, truth, cfg: TrainConfig) -> dict[str, float] | None:
    """The oracle's flat metrics at the headline horizon (same rows and resamples as the model)."""
    if truth is None:
        return None
    out = flat_metrics(best.test_table, cfg.horizon_months, prefix="oracle_")
    y, w = data.headline(data.test)
    out["log_loss"] = weighted_log_loss(y, truth[cfg.horizon_months][data.test], w)
    return out


def train_outcome(cfg: TrainConfig, prep: Prepared, outcome: str, progress: Progress | None = None) -> OutcomeResult:
    """Train, evaluate, log and (at the end) register one outcome. See the module docstring."""
    progress = progress or NullProgress()
    t_start = time.perf_counter()
    out = OutcomeResult(outcome)
    data = outcome_data(prep, outcome, cfg)                                       # 1. data
    counts = data.counts()
    progress.step(f"{outcome}: {counts['n']:,} procedures, {counts['events']:,} events by {cfg.horizon_months:g} "
                  f"months; {len(data.train):,} to train, {len(data.test):,} to test")
    truth = truth_curves(prep, outcome, data.ids, cfg.horizons_months)
    tags = run_tags(cfg, prep, outcome)
    records = prep.records.set_index(prep.records["procedure_id"].astype(str), drop=False)
    records_test = records.loc[data.ids[data.test]]
    out.experiment_id = get_or_create_experiment(f"{cfg.experiment_prefix}{outcome}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    parent = mlflow.start_run(experiment_id=out.experiment_id, run_name=f"{outcome}-{cfg.feature_set_for(outcome)}-{stamp}",
                              tags=process_tags())
    out.parent_run_id = parent.info.run_id
    created_version = None
    try:
        log_setup(cfg, data, tags)
        if prep.validation is not None:
            log_text(prep.validation.csv_bytes().decode("utf-8"), VALIDATION_ARTIFACT)
        t1 = table_one(prep.training_set.loc[data.ids], outcome, list(data.X.columns), cfg.horizon_months)
        log_text(markdown_table(t1), "table1.md")
        if prep.followup_notes:  # e.g. deaths after the last contact that do not compete (features.ascertainment)
            log_text("\n".join(prep.followup_notes) + "\n", "followup_notes.txt")
        log_text(t1.to_csv(index=False), "table1.csv")

        out.candidates = train_candidates(cfg, data, truth, tags, example_records(prep.records),   # 2. candidates
                                          out.experiment_id, progress)

        progress.step(f"{outcome}: selection, the comparison with the champion, figures, model card")
        chosen, note = select(out.candidates)                                      # 3. selection
        out.selected = chosen
        best = out.candidates[chosen]
        mlflow.set_tag("selected_candidate", chosen)
        mlflow.log_metrics(clean(best.test_metrics, "selected_test_"))
        # The training rows' input distributions (aggregates of >= 10 rows, no record),
        # stored with the model so a site report and serving compare against them.
        reference_uri = log_reference(build_reference(records.loc[data.ids[data.train]]), best.run_id)
        mlflow.set_tag(REFERENCE_TAG, reference_uri)
        out.oracle_metrics = oracle_metrics(best, data, truth, cfg)
        if out.oracle_metrics:
            mlflow.log_metrics(clean(out.oracle_metrics, "oracle_"))
        calibration, decision = compare_on_test(best, data, cfg, truth)
        mlflow.log_metrics(clean(net_benefit_metrics(decision[chosen]), "selected_test_"))
        log_comparison(out.candidates, data, cfg, truth, calibration, decision)

        y, w = data.headline(data.test)
        sub = prep.subgroups.reindex(data.ids[data.test])
        subgroups = subgroup_metrics(y, best.p_test, sub, n_boot=min(cfg.n_bootstrap, 300), seed=cfg.seed, weight=w)
        log_text(subgroups.to_csv(index=False), "subgroups.csv")
        cand_table = candidate_table(out.candidates, out.oracle_metrics)
        log_text(cand_table.to_csv(index=False), "candidates.csv")

        decision_alias = decide_alias(best, chosen, outcome, records_test, data, compare=cfg.register)
        if cfg.register:
            if np.isfinite(decision_alias.old_log_loss):
                mlflow.log_metric("current_champion_test_log_loss", decision_alias.old_log_loss)
            mlflow.set_tag("alias_decision", f"{decision_alias.alias}: {decision_alias.reason}"[:5000])

        out.card = model_card(CardInputs(                                          # 4. card
            cfg=cfg, prep=prep, data=data, best=best, parent_run_id=out.parent_run_id, candidate_table=cand_table,
            decision_curves=decision, subgroup_table=subgroups[[c for c in subgroups.columns
                                                                if not c.endswith(("_ci_low", "_ci_high"))]],
            selection_note=note + (f" Registry: {decision_alias.alias} ({decision_alias.reason})." if cfg.register
                                   else " Not registered (--no-register)."),
            selection_rule=SELECTION_RULE, schema_version=SCHEMA_VERSION))
        log_text(out.card, "model_card.md")
        with tracked_run(run_id=best.run_id, nested=True):
            log_text(out.card, "model_card.md")

        if cfg.register:                                                           # 5. registry
            progress.step(f"{outcome}: registering {chosen}")
            mv = registry.register(best.model_uri, outcome, {
                **tags, "model_type": chosen, "run_id": best.run_id, "parent_run_id": out.parent_run_id,
                REFERENCE_TAG: reference_uri,
                **{f"test_{k}": f"{best.test_metrics[k]:.4f}" for k in registry.KEY_METRICS},
                "test_auroc_ci": f"{best.test_metrics['auroc_ci_low']:.3f}-{best.test_metrics['auroc_ci_high']:.3f}",
            }, description=note)
            created_version = mv.version
            registry.set_alias(outcome, mv.version, decision_alias.alias, f"refracture train: {decision_alias.reason}",
                               who=None)
            out.registered_version, out.alias = str(mv.version), decision_alias.alias
            mlflow.set_tags({"registered_model": registry.model_name(outcome), "registered_version": str(mv.version),
                             "registered_alias": decision_alias.alias})
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
        close_active_runs(end_status(exc))  # KILLED by an interrupt, else FAILED; a lost store is logged
        raise


def run(cfg: TrainConfig, progress: Progress | None = None, export: CheckedExport | None = None) -> list[OutcomeResult]:
    """Train every outcome of ``cfg``. Too-few-event outcomes are refused (``refused`` set)
    and the others still trained; data and tracking problems raise. ``export``: the export
    already read and checked (``training.data.prepare``)."""
    progress = progress or NullProgress()
    uri = configure_tracking(cfg.store_dir)
    progress.step(f"tracking store {uri}")
    check_tracking(uri)  # creates a new local store: its tables take seconds
    if export is None:
        progress.step(f"reading and checking {cfg.raw_dir}")
    prep = prepare(cfg, export)
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
