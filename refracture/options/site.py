"""Options of the site commands: site-report, recalibrate (work: ``refracture.commands.site``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refracture.options.data import EXCLUDE_HELP
from refracture.options.training import STORE_HELP


def site_report(
    raw: Annotated[Path, typer.Option("--raw", help="The site's labelled raw export (same contract as training).")],
    out: Annotated[Path, typer.Option("--out", help="Report folder (report.html, figures/, CSVs); replaced if it exists.")],
    alias: Annotated[str, typer.Option("--alias", help="Versions to report: champion or challenger.")] = "champion",
    version: Annotated[int | None, typer.Option("--version", help="A version number instead of an alias (with --outcome).")] = None,
    outcome: Annotated[str, typer.Option("--outcome", help="One outcome or all.")] = "all",
    site: Annotated[str | None, typer.Option("--site", help="Site name shown in the report (default: the folder name).")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for 95 % CIs.", min=0)] = 200,
    store: Annotated[Path | None, typer.Option("--store", help=STORE_HELP)] = None,
    exclude_invalid: Annotated[bool, typer.Option("--exclude-invalid", help=EXCLUDE_HELP + " The report is written "
                                                  "into --out (exclusions.csv) and logged with the MLflow run, its "
                                                  "count and SHA-256 as tags.")] = False,
) -> None:
    """Validate a site's export, score it with the registered versions and write the local
    validation and drift report (HTML, figures, CSVs), also logged to MLflow."""
    if version is not None and outcome == "all":
        raise typer.BadParameter("--version needs one --outcome (version numbers differ per outcome)", param_hint="--version")


def recalibrate(
    raw: Annotated[Path, typer.Option("--raw", help="The site's labelled raw export.")],
    site: Annotated[str, typer.Option("--site", help="Site name recorded in the new versions' lineage tags.")],
    outcome: Annotated[str, typer.Option("--outcome", help="One outcome or all.")] = "all",
    pooled_with: Annotated[Path | None, typer.Option(
        "--pooled-with", help="The champions' training export, for option (iii) (refit on the pooled data), when the "
        "folder recorded at training time has moved; by default the recorded folder is used.")] = None,
    store: Annotated[Path | None, typer.Option("--store", help=STORE_HELP)] = None,
    exclude_invalid: Annotated[bool, typer.Option("--exclude-invalid", help=EXCLUDE_HELP + " Applies to the site's "
                                                  "export and to the training export of option (iii); the site's report "
                                                  "is logged with every new version's run, its count and SHA-256 as "
                                                  "tags.")] = False,
) -> None:
    """Update every champion for a site by the documented rule (no update, (i) intercept,
    (ii) intercept and slope by closed testing; (iii) refit on the training export plus the
    site when the site has >= 100 events and the refit is better on held-out site folds)
    and register the result as `challenger`; promote it with `refracture promote`."""
    if pooled_with is not None and not pooled_with.is_dir():
        raise typer.BadParameter(f"{pooled_with} is not a folder", param_hint="--pooled-with")
