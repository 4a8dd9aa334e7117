"""Options of the training commands: train, models, promote, ui (work: ``refracture.commands.training``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refracture.options.data import EXCLUDE_HELP

STORE_HELP = "Local MLflow store folder (default ./mlflow or $REFRACTURE_MLFLOW_DIR); ignored when MLFLOW_TRACKING_URI is set."


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
    store: Annotated[Path | None, typer.Option("--store", help=STORE_HELP)] = None,
    shap_method: Annotated[str, typer.Option("--shap-method", help="How XGBoost models are explained: path_dependent "
                                             "(XGBoost's own TreeSHAP, fast; default) or interventional (against a training background, ~30x slower).")] = "path_dependent",
    censoring_model: Annotated[str, typer.Option("--censoring-model", help="Censoring model of the training weights: km "
                                                 "(one Kaplan-Meier for everyone; default) or cox (given age, sex, frailty and "
                                                 "comorbidity: when the clinic loses frail patients more often). docs/estimand.md.")] = "km",
    exclude_invalid: Annotated[bool, typer.Option("--exclude-invalid", help=EXCLUDE_HELP + " The report is logged "
                                                  "with every outcome's parent run (validation/exclusions.csv); its "
                                                  "count and SHA-256 are tags of the runs and the registered versions.")] = False,
) -> None:
    """Train all candidate models, calibrate and evaluate them, log to MLflow, register the best.

    The search's size (candidates, trials, folds, bootstrap resamples) can also be set for
    every run of a machine through REFRACTURE_TRAIN_*; an option given on the command line wins.
    """


def models(
    store: Annotated[Path | None, typer.Option("--store", help=STORE_HELP)] = None,
) -> None:
    """List registered models: versions, aliases and key test metrics."""


def promote(
    outcome: Annotated[str, typer.Option("--outcome", help="cemented_refracture, adjacent_fracture, remote_fracture or death.")],
    version: Annotated[int, typer.Option("--version", help="Registered version to move the alias to.")],
    alias: Annotated[str, typer.Option("--alias", help="champion or challenger.")] = "champion",
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded with the move).")] = "promoted by hand",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Move without asking for confirmation.")] = False,
    store: Annotated[Path | None, typer.Option("--store", help=STORE_HELP)] = None,
) -> None:
    """Move an alias (champion/challenger) to a version by hand; the move is recorded.

    Moving the champion first shows the realized comparison of the current champion and
    the candidate on the linked outcomes of the prediction log (the candidate scored in
    shadow as the challenger: O/E, slope and AUROC with 95 % CIs, the number of matured
    outcomes behind them), asks for confirmation unless --yes, and records that evidence
    on the version (tag ``promotion_evidence``)."""
    if outcome == "all":
        raise typer.BadParameter("promote one outcome at a time", param_hint="--outcome")


def close_runs(
    run_ids: Annotated[list[str], typer.Argument(help="Run ids, as `refracture models` prints them; their nested runs "
                                                 "are closed with them.", show_default=False)],
    status: Annotated[str, typer.Option("--status", help="FAILED (a crash, a lost store) or KILLED (stopped on purpose).")] = "FAILED",
    force: Annotated[bool, typer.Option("--force", help="Close a run even if its process still runs on this machine.")] = False,
    store: Annotated[Path | None, typer.Option("--store", help=STORE_HELP)] = None,
) -> None:
    """Mark runs left RUNNING by a crash, a kill or a lost tracking store as FAILED or KILLED."""
    if status.upper() not in ("FAILED", "KILLED"):
        raise typer.BadParameter("choose FAILED or KILLED", param_hint="--status")


def ui(
    port: Annotated[int, typer.Option("--port", help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (127.0.0.1 = this machine only).")] = "127.0.0.1",
    store: Annotated[Path | None, typer.Option("--store", help="Local MLflow store folder (default ./mlflow).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="UI server processes (1 is plenty on a 2-core machine).", min=1, max=4)] = 1,
) -> None:
    """Open the MLflow UI on the local store (runs, plots, model cards, registry)."""
