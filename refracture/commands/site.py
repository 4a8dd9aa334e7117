"""Site commands: site-report (local validation and drift) and recalibrate (challenger for a site);
options and help: ``refracture.options.site``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from features.labels import OUTCOMES
from modelstore.drift_reference import ReferenceMissing
from modelstore.naming import ALIASES, CHAMPION
from refracture.commands.data import announce_report, load_ascertainment, load_checked
from refracture.interrupts import terminate_as_interrupt
from training.site_eval import site_data
from training.site_run import build_site_report, choose_versions, log_report, recalibrate_outcome, write_report
from refracture.commands.training import _exit_if_tracking_lost, _outcomes, _tracking_or_exit

console = Console(stderr=True)


def site_report(*, raw: Path, out: Path, alias: str, version: int | None, outcome: str, site: str | None,
                bootstrap: int, store: Path | None, exclude_invalid: bool) -> None:
    """``refracture site-report``: the report of ``raw`` scored by the chosen versions, written to ``out`` and logged."""
    if alias not in ALIASES:
        raise typer.BadParameter(f"choose one of {', '.join(ALIASES)}", param_hint="--alias")
    outcomes = _outcomes(outcome)
    checked = load_checked(raw, exclude_invalid)  # the contract's own errors, exactly as `refracture validate` prints them
    ascertainment = load_ascertainment(raw, checked.tables)
    _tracking_or_exit(store)
    name = site or Path(raw).resolve().name
    with terminate_as_interrupt(), _exit_if_tracking_lost("writing the site report"):
        try:
            chosen = choose_versions(None if version is not None else alias,
                                     None if version is None else str(version), outcomes)
            result = build_site_report(site_data(checked.tables, ascertainment), chosen, name, n_boot=bootstrap)
        except (ValueError, ReferenceMissing) as exc:
            console.print(f"[red]error[/red]: {exc}")
            raise typer.Exit(code=1) from None
        write_report(result, out, {"exclusions.csv": checked.report.csv_bytes()})
        announce_report(checked.report, out / "exclusions.csv")
        run_id = log_report(out, chosen, name, result, checked.report.summary())
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.stages.items())
    console.print(f"[green]wrote[/green] {out / 'report.html'} ({result.seconds:.1f} s: {stages}); MLflow run {run_id} in "
                  "experiment refracture-site-reports (`refracture ui`)")


def recalibrate(*, raw: Path, site: str, outcome: str, pooled_with: Path | None, store: Path | None,
                exclude_invalid: bool) -> None:
    """``refracture recalibrate``: a challenger for every champion, by the rule in the help."""
    checked = load_checked(raw, exclude_invalid)
    ascertainment = load_ascertainment(raw, checked.tables)
    _tracking_or_exit(store)
    data = site_data(checked.tables, ascertainment)
    pools: dict[Path, object] = {}

    def load_pool(folder: Path):
        # Read once for every outcome; a bad export gets validate's own errors.
        key = Path(folder).resolve()
        if key not in pools:
            console.print(f"option (iii): reading the training export {folder}")
            pool = load_checked(folder, exclude_invalid)
            pools[key] = site_data(pool.tables, load_ascertainment(folder, pool.tables))
        return pools[key]
    with terminate_as_interrupt(), _exit_if_tracking_lost("recalibrating"):
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
