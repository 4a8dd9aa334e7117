"""Training commands: train, models, promote, ui (options and help: ``refracture.options.training``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import mlflow
import typer
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.labels import TARGETS
from features.validate import RawDataError
from modelstore.errors import ConfigError
from modelstore.tracking import (
    TrackingUnavailable,
    check_tracking,
    configure_tracking,
    connection_lost,
    local_store,
    lost_connection_reason,
)
from refracture.commands.data import _report_violations
from training import registry
from training.config import TrainConfig
from training.pipeline import TrainingRefused, run

console = Console(stderr=True)
logger = logging.getLogger(__name__)


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


def train(*, raw: Path, outcome: str, feature_set: str, horizon_months: float, seed: int, search_trials: int,
          test_size: float, cv_folds: int, candidates: str, bootstrap: int, experiment_prefix: str, register: bool,
          n_jobs: int, store: Path | None, shap_method: str) -> None:
    """``refracture train``: the configuration checked once, then ``training.pipeline.run`` with a progress display."""
    try:
        cfg = TrainConfig(raw_dir=raw, outcomes=_outcomes(outcome), feature_set=feature_set, horizon_months=horizon_months,
                          seed=seed, search_trials=search_trials, test_size=test_size, cv_folds=cv_folds,
                          candidates=tuple(c.strip() for c in candidates.split(",") if c.strip()), n_bootstrap=bootstrap,
                          experiment_prefix=experiment_prefix, register=register, n_jobs=n_jobs, store_dir=store,
                          shap_method=shap_method)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=console, transient=True)
    try:
        with progress, _exit_if_tracking_lost(f"training {outcome}", _TRAINING_INTERRUPTED):
            results = run(cfg, progress)
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


def models(*, store: Path | None) -> None:
    """``refracture models``: the registry as a table."""
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


def promote(*, outcome: str, version: int, alias: str, reason: str, store: Path | None) -> None:
    """``refracture promote``: move ``alias`` of ``outcome``'s model to ``version``, recorded with ``reason``."""
    (name,) = _outcomes(outcome)
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
        registry.set_alias(name, str(version), alias, f"refracture promote: {reason}")
    console.print(f"[green]moved[/green] {alias} of {registry.model_name(name)} to v{version}")


def ui(*, port: int, host: str, store: Path | None, workers: int) -> None:
    """``refracture ui``: run ``mlflow ui`` on the local store until Ctrl-C."""
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
