"""Site commands: site-report (local validation and drift) and recalibrate (challenger for a site)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from features.labels import OUTCOMES
from modelstore.drift_reference import ReferenceMissing
from modelstore.naming import ALIASES, CHAMPION
from refracture.commands.data import EXCLUDE_HELP, announce_report, load_checked
from training.site_eval import site_data
from training.site_run import build_site_report, choose_versions, log_report, recalibrate_outcome, write_report
from refracture.commands.training import _STORE_HELP, _exit_if_tracking_lost, _outcomes, _tracking_or_exit

console = Console(stderr=True)


def site_report(
    raw: Annotated[Path, typer.Option("--raw", help="The site's labelled raw export (same contract as training).")],
    out: Annotated[Path, typer.Option("--out", help="Report folder (report.html, figures/, CSVs); replaced if it exists.")],
    alias: Annotated[str, typer.Option("--alias", help="Versions to report: champion or challenger.")] = CHAMPION,
    version: Annotated[int | None, typer.Option("--version", help="A version number instead of an alias (with --outcome).")] = None,
    outcome: Annotated[str, typer.Option("--outcome", help="One outcome or all.")] = "all",
    site: Annotated[str | None, typer.Option("--site", help="Site name shown in the report (default: the folder name).")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for 95 % CIs.", min=0)] = 200,
    store: Annotated[Path | None, typer.Option("--store", help=_STORE_HELP)] = None,
    exclude_invalid: Annotated[bool, typer.Option("--exclude-invalid", help=EXCLUDE_HELP + " The report is written "
                                                  "into --out (exclusions.csv) and logged with the MLflow run, its "
                                                  "count and SHA-256 as tags.")] = False,
) -> None:
    """Validate a site's export, score it with the registered versions and write the local
    validation and drift report (HTML, figures, CSVs), also logged to MLflow."""

    if alias not in ALIASES:
        raise typer.BadParameter(f"choose one of {', '.join(ALIASES)}", param_hint="--alias")
    outcomes = _outcomes(outcome)
    if version is not None and len(outcomes) != 1:
        raise typer.BadParameter("--version needs one --outcome (version numbers differ per outcome)", param_hint="--version")
    checked = load_checked(raw, exclude_invalid)  # the contract's own errors, exactly as `refracture validate` prints them
    _tracking_or_exit(store)
    name = site or Path(raw).resolve().name
    with _exit_if_tracking_lost("writing the site report"):
        try:
            chosen = choose_versions(None if version is not None else alias,
                                     None if version is None else str(version), outcomes)
            result = build_site_report(site_data(checked.tables), chosen, name, n_boot=bootstrap)
        except (ValueError, ReferenceMissing) as exc:
            console.print(f"[red]error[/red]: {exc}")
            raise typer.Exit(code=1) from None
        write_report(result, out, {"exclusions.csv": checked.report.csv_bytes()})
        announce_report(checked.report, out / "exclusions.csv")
        run_id = log_report(out, chosen, name, result, checked.report.summary())
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.stages.items())
    console.print(f"[green]wrote[/green] {out / 'report.html'} ({result.seconds:.1f} s: {stages}); MLflow run {run_id} in "
                  "experiment refracture-site-reports (`refracture ui`)")


def recalibrate(
    raw: Annotated[Path, typer.Option("--raw", help="The site's labelled raw export.")],
    site: Annotated[str, typer.Option("--site", help="Site name recorded in the new versions' lineage tags.")],
    outcome: Annotated[str, typer.Option("--outcome", help="One outcome or all.")] = "all",
    pooled_with: Annotated[Path | None, typer.Option(
        "--pooled-with", help="The champions' training export, for option (iii) (refit on the pooled data), when the "
        "folder recorded at training time has moved; by default the recorded folder is used.")] = None,
    store: Annotated[Path | None, typer.Option("--store", help=_STORE_HELP)] = None,
    exclude_invalid: Annotated[bool, typer.Option("--exclude-invalid", help=EXCLUDE_HELP + " Applies to the site's "
                                                  "export and to the training export of option (iii); the site's report "
                                                  "is logged with every new version's run, its count and SHA-256 as "
                                                  "tags.")] = False,
) -> None:
    """Update every champion for a site by the documented rule (no update, (i) intercept,
    (ii) intercept and slope by closed testing; (iii) refit on the training export plus the
    site when the site has >= 100 events and the refit is better on held-out site folds)
    and register the result as `challenger`; promote it with `refracture promote`."""

    checked = load_checked(raw, exclude_invalid)
    if pooled_with is not None and not Path(pooled_with).is_dir():
        raise typer.BadParameter(f"{pooled_with} is not a folder", param_hint="--pooled-with")
    _tracking_or_exit(store)
    data = site_data(checked.tables)
    pools: dict[Path, object] = {}

    def load_pool(folder: Path):
        # Read once for every outcome; a bad export gets validate's own errors.
        key = Path(folder).resolve()
        if key not in pools:
            console.print(f"option (iii): reading the training export {folder}")
            pools[key] = site_data(load_checked(folder, exclude_invalid).tables)
        return pools[key]
    with _exit_if_tracking_lost("recalibrating"):
        try:
            chosen = choose_versions(CHAMPION, None, _outcomes(outcome))
        except ValueError as exc:
            console.print(f"[red]error[/red]: {exc}")
            raise typer.Exit(code=1) from None
        for c in chosen:
            d, new = recalibrate_outcome(data, c, site, pooled_with, load_pool, validation=checked.report)
            what = f"registered v{new} as challenger" if new else "no new version"
            console.print(f"{c.outcome} v{c.version}: [bold]{d.choice}[/bold] ({d.n} procedures, {d.events} events; "
                          f"{d.note}); {what}")
