"""Training commands: train, models, promote, ui (options and help: ``refracture.options.training``)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import typer
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from features.labels import TARGETS
from features.validate import RawDataError
from modelstore import runs as modelstore_runs
from modelstore.errors import ConfigError
from modelstore.estimand import DEFAULT_HORIZONS_MONTHS
from modelstore.runs import LeftRunning, StillRunning, left_running
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
from refracture.commands.data import _report_violations, load_checked
from refracture.interrupts import Terminated, exit_code, stop_at_checkpoints
from refracture.progress import TrainingDisplay
from training import registry
from training.config import TrainConfig
from training.pipeline import TrainingRefused, run
from training.realized import promotion_evidence

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
_TRAINING_INTERRUPTED = ("This training stopped; its runs could not all be marked FAILED, so some show as RUNNING: once the "
                         "store is back, `refracture models` lists them with the command that closes them. The registry is changed only "
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
          n_jobs: int, store: Path | None, shap_method: str, censoring_model: str, exclude_invalid: bool) -> None:
    """``refracture train``: the configuration checked once, then ``training.pipeline.run`` with a progress display."""
    try:
        cfg = TrainConfig(raw_dir=raw, outcomes=_outcomes(outcome), feature_set=feature_set, horizon_months=horizon_months,
                          seed=seed, search_trials=search_trials, test_size=test_size, cv_folds=cv_folds,
                          candidates=tuple(c.strip() for c in candidates.split(",") if c.strip()), n_bootstrap=bootstrap,
                          experiment_prefix=experiment_prefix, register=register, n_jobs=n_jobs, store_dir=store,
                          shap_method=shap_method, censoring_model=censoring_model, exclude_invalid=exclude_invalid)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    export = load_checked(raw, exclude_invalid)  # errors printed as `refracture validate` prints them; nothing run
    try:
        with stop_at_checkpoints() as checkpoint, TrainingDisplay(console, checkpoint=checkpoint) as progress, \
                _exit_if_tracking_lost(f"training {outcome}", _TRAINING_INTERRUPTED):
            results = run(cfg, progress, export)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the runs were marked KILLED on the way out
        console.print(f"[yellow]stopped[/yellow] ({'SIGTERM' if isinstance(exc, Terminated) else 'interrupted'}): "
                      "this training's runs are marked KILLED and a version it was registering is removed; "
                      "`refracture models` lists any run still marked RUNNING")
        raise typer.Exit(code=exit_code(exc)) from None
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
    """``refracture models``: the registry as a table, then the runs still marked RUNNING."""
    _tracking_or_exit(store)
    with _exit_if_tracking_lost("listing the registered models"):
        rows = registry.list_models()
        running = left_running()
    if not rows:
        console.print("no registered models yet: run `refracture train`")
    else:
        table = Table(title="Registered models (test-set metrics)")
        for col in ("model", "version", "aliases", "type", "features", "horizon", *registry.KEY_METRICS, "created",
                    "run"):
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
    _report_left_running(running)


def _report_left_running(running: list[LeftRunning]) -> None:
    """The runs marked RUNNING: those whose process is gone, with the command that closes
    them; those that may still run (elsewhere, or here)."""
    ids = {r.run_id for r in running}
    outer = [r for r in running if r.parent_run_id not in ids]  # closing one closes its nested runs

    def where(r: LeftRunning) -> str:
        return (f"{r.experiment} / {r.name} ({r.run_id}), started {r.started:%Y-%m-%d %H:%M} UTC"
                + (f" on {r.host} (pid {r.pid})" if r.host else ""))
    for alive, says in ((False, "their process is gone (a crash, a kill, or a tracking store that stopped answering)"),
                        (None, "on another machine or from an older version: check that they are not running"),
                        (True, "their process still runs on this machine")):
        group = [r for r in outer if r.alive is alive]
        if not group:
            continue
        console.print(f"[yellow]{len(group)} run(s) marked RUNNING[/yellow], {says}:", highlight=False)
        for r in group:
            console.print(f"  {where(r)}", markup=False, highlight=False)
        if alive is not True:
            console.print(f"  close them: refracture close-runs {' '.join(r.run_id for r in group)}",
                          markup=False, highlight=False)


def close_runs(*, run_ids: list[str], status: str, force: bool, store: Path | None) -> None:
    """``refracture close-runs``: mark the runs (and their nested runs) FAILED or KILLED."""
    _tracking_or_exit(store)
    with _exit_if_tracking_lost("closing runs"):
        try:
            closed = modelstore_runs.close_runs(run_ids, status.upper(), force=force)
        except StillRunning as exc:
            console.print(f"[red]refused[/red]: {exc}")
            raise typer.Exit(code=1) from None
        except MlflowException as exc:
            if lost_connection_reason(exc) is not None:
                raise
            console.print(f"[red]error[/red]: {str(exc).splitlines()[0]}")
            raise typer.Exit(code=1) from None
    if not closed:
        console.print("nothing to close: none of these runs is marked RUNNING")
        return
    console.print(f"[green]closed[/green] {len(closed)} run(s) as {status.upper()}: {', '.join(closed)}", highlight=False)


def promote(*, outcome: str, version: int, alias: str, reason: str, yes: bool, store: Path | None) -> None:
    """``refracture promote``: move ``alias`` of ``outcome``'s model to ``version``, recorded with ``reason``;
    the champion's move shows the realized comparison first and asks unless ``yes``."""
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
