"""Training commands: train, models, promote, ui."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import mlflow
import pandas as pd
import typer
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from features.labels import TARGETS
from features.validate import RawDataError
from modelstore.errors import ConfigError
from modelstore.estimand import DEFAULT_HORIZONS_MONTHS
from modelstore.tracking import (
    TrackingUnavailable,
    check_tracking,
    configure_tracking,
    connection_lost,
    local_store,
    lost_connection_reason,
)
from predictionlog.settings import PredictionLogSettings
from predictionlog.store import PredictionStore, SchemaOutOfDate
from refracture.commands.data import EXCLUDE_HELP, _report_violations, load_checked
from training import registry
from training.config import TrainConfig
from training.pipeline import TrainingRefused, run
from training.realized import promotion_evidence

console = Console(stderr=True)
logger = logging.getLogger(__name__)

_STORE_HELP = "Local MLflow store folder (default ./mlflow or $REFRACTURE_MLFLOW_DIR); ignored when MLFLOW_TRACKING_URI is set."


def _outcomes(value: str) -> tuple[str, ...]:
    if value == "all":
        return TARGETS
    if value not in TARGETS:
        raise typer.BadParameter(f"choose one of {', '.join(TARGETS)} or all", param_hint="--outcome")
    return (value,)


#: What a user should know after the tracking store went away mid-training (the pipeline
#: touches the registry only in its last step, after every run has been logged).
_TRAINING_INTERRUPTED = ("This training stopped; its runs may show as RUNNING or FAILED. The registry is changed only "
                         "in the last step of training (register, then move the alias), so unless it got that far the "
                         "earlier versions and aliases are as they were: check with `refracture models` once the store "
                         "is back, then train again.")


@contextmanager
def _exit_if_tracking_lost(doing: str, consequence: str = ""):
    """Turn a tracking store that stops answering mid-command into one clear message naming
    its URI (exit 1) instead of a traceback; any other error propagates."""
    try:
        yield
    except TrackingUnavailable:
        raise  # the start-up check's own message ("unreachable"), reported by the caller
    except Exception as exc:
        lost = connection_lost(exc, mlflow.get_tracking_uri(), doing, consequence)
        if lost is None:
            raise
        console.print(f"[red]error[/red]: {lost}")
        raise typer.Exit(code=1) from None


def _tracking_or_exit(store: Path | None) -> str:
    uri = configure_tracking(store)
    try:
        check_tracking(uri)
    except TrackingUnavailable as exc:
        console.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(code=1) from None
    return uri


def train(
    raw: Annotated[Path, typer.Option("--raw", help="Raw export folder (a simulated cohort may also hold truth.parquet).")],
    outcome: Annotated[str, typer.Option("--outcome", help="cemented_refracture, adjacent_fracture, remote_fracture, death (the context model: probability of death by the horizon) or all (the three outcomes and death).")] = "all",
    feature_set: Annotated[str, typer.Option("--feature-set", help="preop or postop.")] = "postop",
    horizon_months: Annotated[float, typer.Option("--horizon-months", help="Outcome horizon in months.")] = 24.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of split, folds, search and bootstrap.")] = 0,
    search_trials: Annotated[int, typer.Option("--search-trials", envvar="REFRACTURE_TRAIN_SEARCH_TRIALS", help="Optuna trials per searched candidate (0 = defaults).")] = 20,
    test_size: Annotated[float, typer.Option("--test-size", help="Held-out test fraction (grouped by patient).")] = 0.2,
    cv_folds: Annotated[int, typer.Option("--cv-folds", envvar="REFRACTURE_TRAIN_CV_FOLDS", help="Cross-validation folds on the training part.")] = 4,
    candidates: Annotated[str, typer.Option("--candidates", envvar="REFRACTURE_TRAIN_CANDIDATES", help="Comma-separated subset of logistic,elastic_net,random_forest,xgboost.")] = "logistic,elastic_net,random_forest,xgboost",
    bootstrap: Annotated[int, typer.Option("--bootstrap", envvar="REFRACTURE_TRAIN_BOOTSTRAP", help="Bootstrap resamples for 95 % CIs.")] = 1000,
    experiment_prefix: Annotated[str, typer.Option("--experiment-prefix", help="MLflow experiment = prefix + outcome.")] = "refracture-",
    register: Annotated[bool, typer.Option("--register/--no-register", help="Register the selected model (default) or only log runs.")] = True,
    n_jobs: Annotated[int, typer.Option("--n-jobs", help="Threads for forests/boosting (1-2).")] = 2,
    store: Annotated[Path | None, typer.Option("--store", help=_STORE_HELP)] = None,
    shap_method: Annotated[str, typer.Option("--shap-method", help="How XGBoost models are explained: path_dependent "
                                             "(XGBoost's own TreeSHAP, fast; default) or interventional (against a training background, ~30x slower).")] = "path_dependent",
    exclude_invalid: Annotated[bool, typer.Option("--exclude-invalid", help=EXCLUDE_HELP + " The report is logged "
                                                  "with every outcome's parent run (validation/exclusions.csv); its "
                                                  "count and SHA-256 are tags of the runs and the registered versions.")] = False,
) -> None:
    """Train all candidate models, calibrate and evaluate them, log to MLflow, register the best.

    The search's size (candidates, trials, folds, bootstrap resamples) can also be set for
    every run of a machine through REFRACTURE_TRAIN_*; an option given on the command line wins.
    """
    try:
        cfg = TrainConfig(raw_dir=raw, outcomes=_outcomes(outcome), feature_set=feature_set, horizon_months=horizon_months,
                          seed=seed, search_trials=search_trials, test_size=test_size, cv_folds=cv_folds,
                          candidates=tuple(c.strip() for c in candidates.split(",") if c.strip()), n_bootstrap=bootstrap,
                          experiment_prefix=experiment_prefix, register=register, n_jobs=n_jobs, store_dir=store,
                          shap_method=shap_method, exclude_invalid=exclude_invalid)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    export = load_checked(raw, exclude_invalid)  # errors printed as `refracture validate` prints them; nothing run
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=console, transient=True)
    try:
        with progress, _exit_if_tracking_lost(f"training {outcome}", _TRAINING_INTERRUPTED):
            results = run(cfg, progress, export)
    except RawDataError as exc:
        _report_violations(exc)
        raise typer.Exit(code=1) from None
    except (TrainingRefused, TrackingUnavailable) as exc:
        console.print(f"[red]refused[/red]: {exc}")
        raise typer.Exit(code=1) from None
    refused = False
    for res in results:
        if res.refused:
            refused = True
            console.print(f"[yellow]skipped[/yellow] {res.outcome}: {res.refused}")
            continue
        table = Table(title=f"{res.outcome}: test set (95 % CI)", show_lines=False)
        for col in ("candidate", "AUROC", "log loss", "Brier", "cal. slope", "CV log loss"):
            table.add_column(col)
        rows = list(res.candidates.items())
        if res.oracle_metrics:
            rows.append(("oracle (true risk)", None))
        for name, r in rows:
            m = r.test_metrics if r else res.oracle_metrics
            mark = " ★" if name == res.selected else ""
            table.add_row(name + mark, f"{m['auroc']:.3f} ({m['auroc_ci_low']:.3f}–{m['auroc_ci_high']:.3f})",
                          f"{m['log_loss']:.4f}", f"{m['brier']:.4f}", f"{m['calibration_slope']:.2f}",
                          f"{r.cv_metrics['log_loss']:.4f}" if r else "–")
        console.print(table)
        where = (f"registered [bold]refracture-{res.outcome}[/bold] v{res.registered_version} as [bold]{res.alias}[/bold]"
                 if res.registered_version else "not registered")
        console.print(f"{res.outcome}: selected [bold]{res.selected}[/bold]; {where}; parent run {res.parent_run_id} "
                      f"({res.seconds:.0f} s)")
    if refused:
        raise typer.Exit(code=1)


def models(
    store: Annotated[Path | None, typer.Option("--store", help=_STORE_HELP)] = None,
) -> None:
    """List registered models: versions, aliases and key test metrics."""
    _tracking_or_exit(store)
    with _exit_if_tracking_lost("listing the registered models"):
        rows = registry.list_models()
    if not rows:
        console.print("no registered models yet: run `refracture train`")
        return
    table = Table(title="Registered models (test-set metrics)")
    for col in ("model", "version", "aliases", "type", "features", "horizon", *registry.KEY_METRICS, "created", "run"):
        table.add_column(col, overflow="fold")
    for r in rows:
        t = r["tags"]
        table.add_row(r["name"], str(r["version"]), ", ".join(r["aliases"]) or "–", t.get("model_type", "?"),
                      t.get("feature_set", "?"), t.get("horizon_months", "?"),
                      *(t.get(f"test_{k}", "–") for k in registry.KEY_METRICS),
                      r["created"].strftime("%Y-%m-%d %H:%M"), (r["run_id"] or "")[:8])
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)  # files and pipes: do not squeeze the table to 80 columns
    out.print(table)


def promote(
    outcome: Annotated[str, typer.Option("--outcome", help="cemented_refracture, adjacent_fracture, remote_fracture or death.")],
    version: Annotated[int, typer.Option("--version", help="Registered version to move the alias to.")],
    alias: Annotated[str, typer.Option("--alias", help="champion or challenger.")] = "champion",
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded with the move).")] = "promoted by hand",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Move without asking for confirmation.")] = False,
    store: Annotated[Path | None, typer.Option("--store", help=_STORE_HELP)] = None,
) -> None:
    """Move an alias (champion/challenger) to a version by hand; the move is recorded.

    Moving the champion first shows the realized comparison of the current champion and
    the candidate on the linked outcomes of the prediction log (the candidate scored in
    shadow as the challenger: O/E, slope and AUROC with 95 % CIs, the number of matured
    outcomes behind them), asks for confirmation unless --yes, and records that evidence
    on the version (tag ``promotion_evidence``)."""
    (name,) = _outcomes(outcome) if outcome != "all" else (None,)
    if name is None:
        raise typer.BadParameter("promote one outcome at a time", param_hint="--outcome")
    if alias not in registry.ALIASES:
        raise typer.BadParameter(f"choose one of {', '.join(registry.ALIASES)}", param_hint="--alias")
    _tracking_or_exit(store)
    with _exit_if_tracking_lost(f"moving {alias} of {registry.model_name(name)}"):
        try:
            MlflowClient().get_model_version(registry.model_name(name), str(version))
        except MlflowException as exc:
            if lost_connection_reason(exc) is not None:
                raise
            console.print(f"[red]error[/red]: {registry.model_name(name)} has no version {version} (see `refracture models`)")
            raise typer.Exit(code=1) from None
        evidence, summary = pd.DataFrame(), "no realized comparison"
        current = registry.current_version(name, alias)
        if alias == registry.CHAMPION and current is not None and str(current.version) != str(version):
            evidence, summary = _realized_evidence(name, str(current.version), str(version))
        if not yes and not typer.confirm(f"Move {alias} of {registry.model_name(name)} "
                                         f"{'from v' + str(current.version) + ' ' if current else ''}to v{version}?"):
            console.print("not moved")
            raise typer.Exit(code=1)
        registry.set_alias(name, str(version), alias, f"refracture promote: {reason}")
        if alias == registry.CHAMPION:
            MlflowClient().set_model_version_tag(registry.model_name(name), str(version), "promotion_evidence",
                                                 _evidence_tag(evidence, summary))
    console.print(f"[green]moved[/green] {alias} of {registry.model_name(name)} to v{version}")


def _realized_evidence(outcome: str, current: str, candidate: str) -> tuple[pd.DataFrame, str]:
    """The realized comparison from the prediction log (printed), and a one-line summary;
    an empty frame and the reason when there is none."""
    try:
        settings = PredictionLogSettings.from_env(need_secret=False)
    except ConfigError as exc:
        return pd.DataFrame(), f"prediction log not usable ({exc})"
    if not settings.enabled:
        return pd.DataFrame(), "prediction log off (REFRACTURE_PREDICTION_LOG=0)"
    store = PredictionStore(settings.url, create=False)
    if not store.exists():
        console.print(f"[yellow]no realized comparison[/yellow]: no prediction store at {store.path}")
        return pd.DataFrame(), "no prediction store"
    try:
        store.require_current()
        scores, linked = store.scores_frame(), store.outcomes_frame()
    except (SchemaOutOfDate, SQLAlchemyError) as exc:
        console.print(f"[yellow]no realized comparison[/yellow]: the prediction store is not readable ({type(exc).__name__})")
        return pd.DataFrame(), "prediction store not readable"
    finally:
        store.dispose()
    evidence = promotion_evidence(scores, linked, outcome, current, candidate, DEFAULT_HORIZONS_MONTHS) \
        if len(scores) and len(linked) else pd.DataFrame()
    if evidence.empty:
        console.print(f"[yellow]no realized comparison[/yellow]: v{candidate} was not scored in shadow on predictions of "
                      f"v{current} whose outcome has matured (0 matured outcomes). The decision rests on the "
                      "site report and the registry's figures.")
        return evidence, "0 matured outcomes: v{candidate} not scored in shadow on matured predictions".format(
            candidate=candidate)
    table = Table(title=f"{outcome}: champion v{current} and candidate v{candidate} on the same patients (realized)")
    for col in ("horizon", "matured", "events", f"O/E v{current}", f"O/E v{candidate}", f"slope v{current}",
                f"slope v{candidate}", f"AUROC v{current}", f"AUROC v{candidate}", "AUROC difference"):
        table.add_column(col, justify="right")
    ci = lambda r, k: f"{r[k]:.2f} ({r[k + '_ci_low']:.2f}-{r[k + '_ci_high']:.2f})"  # noqa: E731
    for _, r in evidence.iterrows():
        table.add_row(f"{r['horizon_months']:g} months", str(int(r["matured"])), str(int(r["events"])),
                      ci(r, "champion_observed_expected"), ci(r, "challenger_observed_expected"),
                      ci(r, "champion_calibration_slope"), ci(r, "challenger_calibration_slope"),
                      ci(r, "champion_td_auroc"), ci(r, "challenger_td_auroc"), ci(r, "td_auroc_diff"))
    Console(width=200).print(table)
    last = evidence.sort_values("horizon_months").iloc[-1]
    return evidence, (f"{int(last['matured'])} matured outcomes by {last['horizon_months']:g} months "
                      f"({int(last['events'])} events)")


def _evidence_tag(evidence: pd.DataFrame, summary: str) -> str:
    """The evidence as a compact JSON tag value (MLflow tags hold up to 5,000 characters)."""
    rows = []
    for _, r in evidence.iterrows():
        row = {"horizon_months": float(r["horizon_months"]), "matured": int(r["matured"]), "events": int(r["events"])}
        for k in ("observed_expected", "td_auroc"):
            for who in ("champion", "challenger"):
                row[f"{who}_{k}"] = [round(float(r[f"{who}_{k}{s}"]), 4) for s in ("", "_ci_low", "_ci_high")]
        row["td_auroc_diff"] = [round(float(r[f"td_auroc_diff{s}"]), 4) for s in ("", "_ci_low", "_ci_high")]
        rows.append(row)
    return json.dumps({"summary": summary, "by_horizon": rows}, separators=(",", ":"))[:5000]


def ui(
    port: Annotated[int, typer.Option("--port", help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (127.0.0.1 = this machine only).")] = "127.0.0.1",
    store: Annotated[Path | None, typer.Option("--store", help="Local MLflow store folder (default ./mlflow).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="UI server processes (1 is plenty on a 2-core machine).", min=1, max=4)] = 1,
) -> None:
    """Open the MLflow UI on the local store (runs, plots, model cards, registry)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        console.print(f"MLFLOW_TRACKING_URI is set: open {os.environ['MLFLOW_TRACKING_URI']} in a browser instead.")
        raise typer.Exit(code=0)
    uri, artifacts, _ = local_store(store)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root", artifacts,
           "--host", host, "--port", str(port), "--workers", str(workers)]
    console.print(f"MLflow UI on http://{host}:{port} (store {uri}); Ctrl-C to stop")
    try:
        raise typer.Exit(code=subprocess.call(cmd))
    except KeyboardInterrupt:
        raise typer.Exit(code=0) from None
