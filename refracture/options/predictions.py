"""Options of the prediction log's commands: outcomes, performance, and the ``predictions``
group (migrate, prune, status) (work: ``refracture.commands.predictions``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from refracture.lazy_group import Command, Subcommands
from refracture.options.training import STORE_HELP

#: The default calibration band of ``performance --band`` (``training.realized.OE_BAND``;
#: tests/refracture/test_cli_commands.py keeps them equal).
OE_BAND_TEXT = "0.8,1.25"
#: The youngest predictions ``predictions prune`` may delete: a 24-month outcome needs them.
MIN_PRUNE_DAYS = 731


def outcomes(
    raw: Annotated[Path, typer.Option("--raw", help="A later export of the site (the same raw contract: follow-up, "
                                                    "events, deaths).")],
    data_cut: Annotated[datetime | None, typer.Option(
        "--data-cut", formats=["%Y-%m-%d"],
        help="The date the export was drawn (YYYY-MM-DD); default: the data cut its export.yaml states, else the "
             "latest date in it.")] = None,
) -> None:
    """Link the outcomes of a later export to the logged predictions (by the keyed hash of
    the procedure key) and store each one's status at every horizon that has matured."""


def performance(
    out: Annotated[Path, typer.Option("--out", help="Report folder (report.html, figures/, CSVs); replaced.")] = Path(
        "reports/performance"),
    site: Annotated[str, typer.Option("--site", help="Site name shown in the report.")] = "this site",
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on standard output.")] = False,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for 95 % CIs.", min=0)] = 200,
    band: Annotated[str, typer.Option("--band", help="LOW,HIGH: realized O/E outside it, with an interval excluding 1 "
                                                     "on >= 100 matured predictions, is an alert (as the Prometheus "
                                                     "rules decide).")] = OE_BAND_TEXT,
    store: Annotated[Path | None, typer.Option("--store", help=STORE_HELP)] = None,
) -> None:
    """Realized performance of every model version on its matured predictions: O/E,
    calibration slope, AUROC (95 % CIs), by month, champion vs shadow challenger; HTML
    report, MLflow run on the versions, and the figures the service exports on /metrics."""
    try:
        low, high = (float(x) for x in band.split(","))
        assert 0 < low < 1 < high
    except (ValueError, AssertionError):
        raise typer.BadParameter("two numbers LOW,HIGH with 0 < LOW < 1 < HIGH, e.g. 0.8,1.25", param_hint="--band") from None


def migrate() -> None:
    """Create the prediction store or bring it to the newest schema (Alembic migrations)."""


def prune(
    older_than_days: Annotated[int | None, typer.Option(
        "--older-than-days", help="Delete predictions logged more than this many days ago (default: the retention "
        "period, REFRACTURE_PREDICTION_RETENTION_DAYS, 1096 days).", min=1)] = None,
) -> None:
    """Delete the predictions older than the retention period, with their scores and outcomes."""
    if older_than_days is not None and older_than_days < MIN_PRUNE_DAYS:
        raise typer.BadParameter(f"at least {MIN_PRUNE_DAYS} days: younger predictions may still get their 24-month "
                                 "outcome", param_hint="--older-than-days")


def status() -> None:
    """Counts in the store: predictions, scores, linked outcomes."""


#: ``refracture predictions ...``: the group's own registry (``refracture.lazy_group``).
PREDICTIONS = Subcommands(
    "The prediction log's store: migrate its schema, prune old predictions, counts.",
    Command("migrate", "refracture.options.predictions:migrate", "refracture.commands.predictions:migrate",
            "Create the prediction store or bring it to the newest schema (Alembic migrations)."),
    Command("prune", "refracture.options.predictions:prune", "refracture.commands.predictions:prune",
            "Delete the predictions older than the retention period, with their scores and outcomes."),
    Command("status", "refracture.options.predictions:status", "refracture.commands.predictions:status",
            "Counts in the store: predictions, scores, linked outcomes."),
)
