"""The prediction log's commands: ``outcomes`` (link a later export), ``performance``
(realized performance), and ``predictions migrate|prune|status``.

The store and its settings come from the environment (``predictionlog.settings``:
``REFRACTURE_PREDICTION_DB``, the site secret, retention), as for the service.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from modelstore.errors import ConfigError
from modelstore.estimand import DEFAULT_HORIZONS_MONTHS, HEADLINE_HORIZON_MONTHS
from features.ascertainment import EXPORT_METADATA_FILE
from predictionlog.linkage import data_cut_of, link_outcomes
from predictionlog.settings import PredictionLogSettings
from predictionlog.store import PredictionStore, SchemaOutOfDate
from refracture.commands.data import load_ascertainment, load_checked
from refracture.commands.training import _exit_if_tracking_lost, _tracking_or_exit
from training.provenance import data_fingerprint
from training.realized import calibration_alerts, gauge_rows, realized_performance, summary_records
from training.realized_run import build_result, log_realized
from training.site_run import write_report

console = Console(stderr=True)

def _settings(need_secret: bool) -> PredictionLogSettings:
    try:
        return PredictionLogSettings.from_env(need_secret=need_secret)
    except ConfigError as exc:
        console.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(code=1) from None


def _store(settings: PredictionLogSettings, current: bool = True) -> PredictionStore:
    """The configured store; exit 1 with the reason when it cannot be reached or is not
    at the newest migration (``current``)."""
    store = PredictionStore(settings.url, create=not current)
    if current and not store.exists():
        console.print(f"[red]error[/red]: no prediction store at {store.path}: create it with `refracture predictions "
                      "migrate` (or set REFRACTURE_PREDICTION_DB)")
        raise typer.Exit(code=1)
    try:
        if current:
            store.require_current()
        else:
            store.revision()
    except SchemaOutOfDate as exc:
        console.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(code=1) from None
    except SQLAlchemyError as exc:
        console.print(f"[red]error[/red]: the prediction store {store!r} cannot be reached ({type(exc).__name__}: "
                      f"{str(exc.orig or exc).splitlines()[0][:200]})")
        raise typer.Exit(code=1) from None
    return store


def migrate() -> None:
    """Create the prediction store or bring it to the newest schema (Alembic migrations)."""
    store = _store(_settings(need_secret=False), current=False)
    before = store.revision()
    after = store.migrate()
    console.print(f"[green]prediction store[/green] {store!r}: migration {before or '(empty)'} -> {after}")


def prune(*, older_than_days: int | None) -> None:
    """``refracture predictions prune``: delete what is older than ``older_than_days`` (default: the retention)."""
    settings = _settings(need_secret=False)
    days = older_than_days or settings.retention_days  # the settings hold the retention to its minimum
    store = _store(settings)
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    n = store.prune(before)
    console.print(f"[green]pruned[/green] {n} prediction(s) logged before {before:%Y-%m-%d %H:%M} UTC ({days} days)")


def status() -> None:
    """Counts in the store: predictions, scores, linked outcomes."""
    store = _store(_settings(need_secret=False))
    table = Table(title=f"prediction store {store!r}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name in ("predictions", "prediction_scores", "linked_outcomes", "horizon_outcomes"):
        table.add_row(name, f"{store.count(name):,}")
    Console().print(table)


def outcomes(*, raw: Path, data_cut: dt.datetime | None) -> None:
    """``refracture outcomes``: link a later export's outcomes to the logged predictions."""
    settings = _settings(need_secret=True)
    tables = load_checked(raw).tables  # the contract's own errors, as `refracture validate` prints them
    ascertainment = load_ascertainment(raw, tables)  # export.yaml: how far deaths and fractures were followed
    store = _store(settings)
    stated = ascertainment.data_cut if ascertainment.source == EXPORT_METADATA_FILE else None
    cut = data_cut.date() if data_cut else stated or data_cut_of(tables)
    try:
        summary = link_outcomes(store, tables, settings.secret, cut, data_fingerprint(raw), ascertainment=ascertainment)
    except ValueError as exc:
        console.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(code=1) from None
    console.print(f"[green]linked[/green] {summary.predictions} prediction(s) of {summary.procedures_predicted} "
                  f"procedure(s), out of {summary.procedures} in the export (data cut {cut})"
                  + (f"; {summary.kept_newer} kept the follow-up of a later export" if summary.kept_newer else "")
                  + (f"; {summary.surgery_date_differs} logged with another surgery date than the export's (the "
                     "export's is used)" if summary.surgery_date_differs else ""))
    if len(summary.statuses):
        pivot = summary.statuses.pivot_table(index=["outcome", "horizon_months"], columns="status",
                                             values="predictions", fill_value=0)
        table = Table(title="status at each horizon (predictions)")
        table.add_column("outcome")
        table.add_column("horizon")
        for c in pivot.columns:
            table.add_column(c, justify="right")
        for (o, h), row in pivot.iterrows():
            table.add_row(o, f"{h:g} months", *(str(int(v)) for v in row))
        console.print(table)


def performance(*, out: Path, site: str, as_json: bool, bootstrap: int, band: str, store: Path | None) -> None:
    """``refracture performance``: the realized report, MLflow run, /metrics gauges and alerts."""
    low, high = (float(x) for x in band.split(","))  # checked by the options
    pstore = _store(_settings(need_secret=False))
    scores, linked = pstore.scores_frame(), pstore.outcomes_frame()
    realized = realized_performance(scores, linked, DEFAULT_HORIZONS_MONTHS, HEADLINE_HORIZON_MONTHS, n_boot=bootstrap)
    result = build_result(realized, site, HEADLINE_HORIZON_MONTHS)
    write_report(result, out)
    now = dt.datetime.now(dt.timezone.utc)
    pstore.replace_performance(gauge_rows(realized, scores, now))
    _tracking_or_exit(store)
    with _exit_if_tracking_lost("logging the realized performance"):
        run_id = log_realized(out, realized, site)
    alerts = calibration_alerts(realized.metrics, (low, high))
    for _, a in alerts.iterrows():
        console.print(f"[yellow]alert[/yellow] {a['outcome']} v{a['model_version']} ({a['role']}) by "
                      f"{a['horizon_months']:g} months: {a['alert'].replace('_', ' ')}, {a['value']:.2f} "
                      f"({a['ci_low']:.2f} to {a['ci_high']:.2f})")
    n = int(realized.metrics["matured"].sum()) if len(realized.metrics) else 0
    console.print(f"[green]wrote[/green] {out / 'report.html'} ({n} matured prediction-horizons); MLflow run {run_id} "
                  "in experiment refracture-realized-performance")
    if as_json:
        payload = {"generated_at": now.isoformat(timespec="seconds"), "mlflow_run_id": run_id,
                   "performance": summary_records(realized),
                   "alerts": json.loads(alerts.to_json(orient="records")),
                   "paired": json.loads(realized.paired.to_json(orient="records")) if len(realized.paired) else []}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
